//! The smaller parts of a channel: parameters, Kafka bindings, message schemas, the address.

use std::sync::Arc;

use serde_json::Value;

use super::{Cx, MAX_REF_DEPTH, child, text};
use crate::model::{KafkaBinding, MessageSchema, ParamSource, SchemaFormat};
use crate::schema::CompiledSchema;
use crate::sources::resolve_path;
use crate::yaml::Doc;

impl Cx<'_> {
    pub(super) fn param_source(&mut self, decl: &Value, ptr: &str) -> ParamSource {
        if decl.get("x-location").and_then(Value::as_str) == Some("key") {
            return ParamSource::Key;
        }
        let Some(location) = decl.get("location").and_then(Value::as_str) else {
            return ParamSource::Unspecified;
        };
        if location == "$message.key" {
            return ParamSource::Key;
        }
        if let Some(h) = location.strip_prefix("$message.header#/") {
            return ParamSource::Header(h.to_string());
        }
        if let Some(p) = location.strip_prefix("$message.payload#") {
            return ParamSource::Payload(p.to_string());
        }
        self.problem(
            &child(ptr, "location"),
            format!(
                "invalid parameter location {location:?}: expected `$message.key`, `$message.header#/<name>` or `$message.payload#/<pointer>`"
            ),
        );
        ParamSource::Unspecified
    }

    pub(super) fn kafka(
        &mut self,
        binding: Option<&Value>,
        ch_ptr: &str,
        kafka_topic: &str,
    ) -> KafkaBinding {
        let mut out = KafkaBinding::default();
        let Some(b) = binding else { return out };
        let ptr = child(&child(ch_ptr, "bindings"), "kafka");
        if let Some(v) = b.get("partitions") {
            match v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
            {
                Some(n) => out.partitions = Some(n),
                None => self.problem(
                    &child(&ptr, "partitions"),
                    format!("invalid partitions {v}: expected a positive integer"),
                ),
            }
        }
        if let Some(v) = b.get("replicas") {
            match v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n >= 1)
            {
                Some(n) => out.replicas = Some(n),
                None => self.problem(
                    &child(&ptr, "replicas"),
                    format!("invalid replicas {v}: expected a positive integer"),
                ),
            }
        }
        if let Some(t) = b.get("topic")
            && t.as_str() != Some(kafka_topic)
        {
            self.problem(
                &child(&ptr, "topic"),
                format!("binding topic {t} differs from the channel's Kafka topic {kafka_topic:?}"),
            );
        }
        for key in ["configs", "topicConfiguration"] {
            let Some(configs) = b.get(key) else { continue };
            let Some(configs) = configs.as_object() else {
                self.problem(&child(&ptr, key), format!("`{key}` must be a mapping"));
                continue;
            };
            for (k, v) in configs {
                let value = match v {
                    Value::Array(items) => {
                        items.iter().filter_map(text).collect::<Vec<_>>().join(",")
                    }
                    other => match text(other) {
                        Some(t) => t,
                        None => {
                            self.problem(
                                &child(&child(&ptr, key), k),
                                format!("config {k:?} must be a scalar or a list"),
                            );
                            continue;
                        }
                    },
                };
                out.configs.insert(k.clone(), value);
            }
        }
        out
    }

    /// Reads a message payload schema.
    pub(super) fn schema(
        &mut self,
        payload: &Value,
        ptr: &str,
        hint: Option<&str>,
    ) -> Option<MessageSchema> {
        let mut payload = payload.clone();
        let mut ptr = ptr.to_string();
        let mut hint = hint.map(str::to_string);
        // AsyncAPI 3 multi-format schema object.
        if let (Some(f), Some(s)) = (payload.get("schemaFormat"), payload.get("schema")) {
            hint = f.as_str().map(str::to_string);
            let s = s.clone();
            ptr = child(&ptr, "schema");
            payload = s;
        }
        let avro_hint = hint.as_deref().is_some_and(|h| h.contains("avro"));
        let external = payload
            .get("$ref")
            .and_then(Value::as_str)
            .filter(|r| !r.starts_with('#'))
            .map(str::to_string);
        let problem_ptr = if external.is_some() {
            child(&ptr, "$ref")
        } else {
            ptr.clone()
        };
        let (format, file, document) = match external {
            Some(reference) => {
                let ref_ptr = child(&ptr, "$ref");
                let (path, fragment) = reference.split_once('#').unwrap_or((&reference, ""));
                let Some(path) = resolve_path(self.file, path) else {
                    self.problem(
                        &ref_ptr,
                        format!("schema reference {reference:?} leaves the specs directory"),
                    );
                    return None;
                };
                let format = if path.ends_with(".avsc") || avro_hint {
                    SchemaFormat::Avro
                } else if [".json", ".yml", ".yaml"].iter().any(|e| path.ends_with(e)) {
                    SchemaFormat::JsonSchema
                } else {
                    self.problem(&ref_ptr, format!("schema {path:?}: unsupported file type (expected .avsc, .json, .yml or .yaml)"));
                    return None;
                };
                let Some(text) = self.sources.get(&path) else {
                    self.problem(&ref_ptr, format!("schema file {path:?} not found"));
                    return None;
                };
                let doc = match Doc::parse(text) {
                    Ok(d) => d,
                    Err(e) => {
                        self.problem(
                            &ref_ptr,
                            format!(
                                "schema file {path:?} is unreadable: line {}: {}",
                                e.line, e.message
                            ),
                        );
                        return None;
                    }
                };
                let document = if fragment.is_empty() {
                    doc.root
                } else {
                    match doc.root.pointer(fragment) {
                        Some(v) => v.clone(),
                        None => {
                            self.problem(
                                &ref_ptr,
                                format!("schema file {path:?} has no {fragment:?}"),
                            );
                            return None;
                        }
                    }
                };
                (format, Some(path), document)
            }
            None => {
                let format = if avro_hint {
                    SchemaFormat::Avro
                } else {
                    SchemaFormat::JsonSchema
                };
                let document = match self.inline(&payload, 0) {
                    Ok(d) => d,
                    Err(e) => {
                        self.problem(&ptr, e);
                        return None;
                    }
                };
                (format, None, document)
            }
        };
        match CompiledSchema::compile(format, &document) {
            Ok(compiled) => Some(MessageSchema {
                format,
                file,
                document,
                compiled: Arc::new(compiled),
            }),
            Err(e) => {
                let what = file
                    .as_deref()
                    .map(|f| format!("schema {f:?}: "))
                    .unwrap_or_default();
                self.problem(&problem_ptr, format!("{what}{e}"));
                None
            }
        }
    }

    /// Replaces internal references (`#/components/...`) of an inline schema by their targets,
    /// since the schema is compiled on its own.
    fn inline(&self, value: &Value, depth: usize) -> Result<Value, String> {
        if depth > MAX_REF_DEPTH {
            return Err("schema references nest too deeply (recursive schema?)".into());
        }
        Ok(match value {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str)
                    && let Some(target) = r.strip_prefix('#')
                {
                    let found = self
                        .doc
                        .root
                        .pointer(target)
                        .ok_or_else(|| format!("unresolved reference {r:?}"))?;
                    return self.inline(found, depth + 1);
                }
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(k.clone(), self.inline(v, depth + 1)?);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.inline(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// Splits an address into its dotted name and its parameter names:
/// `_public.orders/{region}/{store}` is `("_public.orders", ["region", "store"])`.
pub(super) fn split_address(address: &str) -> Result<(String, Vec<String>), String> {
    let mut levels = address.split('/');
    let name = levels.next().unwrap_or_default();
    if name.is_empty() {
        return Err("empty channel name".into());
    }
    for segment in name.split('.') {
        let ok = !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "invalid name segment {segment:?} (letters, digits, `-` and `_`, separated by `.`)"
            ));
        }
    }
    let mut params = Vec::new();
    for level in levels {
        let p = level
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .filter(|p| !p.is_empty() && !p.contains(['{', '}']))
            .ok_or_else(|| format!("level {level:?} after the name must be a `{{parameter}}`"))?;
        if params.iter().any(|q| q == p) {
            return Err(format!("parameter {p:?} appears twice"));
        }
        params.push(p.to_string());
    }
    Ok((name.to_string(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("_public.orders/{region}/{store}").unwrap(),
            (
                "_public.orders".to_string(),
                vec!["region".to_string(), "store".to_string()]
            )
        );
        assert_eq!(split_address("_public.a").unwrap().1.len(), 0);
        for bad in [
            "",
            "_public..a",
            "_public.a/eu",
            "_public.a/{}",
            "_public.a/{x}/{x}",
            "a b",
            "a+b",
            "a/{x",
            "_public.a*",
        ] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }
}
