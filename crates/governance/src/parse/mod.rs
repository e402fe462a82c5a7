//! Reading one AsyncAPI document, in any of the three dialects, into the model.
//!
//! Only the subset of AsyncAPI that governance uses is read; every other field is ignored.

use meshgate_topic::{Filter, validate_topic};
use serde_json::Value;

use crate::app::AppId;
use crate::date::Date;
use crate::model::{
    Access, Channel, ChannelId, ChannelKind, DataProduct, Dialect, Message, ParamSource, Parameter,
};
use crate::problem::Problem;
use crate::sources::Sources;
use crate::yaml::{Doc, push_escaped};

mod parts;

use parts::split_address;

/// Most `$ref` hops (and nested inlined references) followed before giving up.
const MAX_REF_DEPTH: usize = 32;

/// True when the document is an AsyncAPI spec (has a top-level `asyncapi` key).
pub(crate) fn is_spec(doc: &Doc) -> bool {
    doc.root.get("asyncapi").is_some()
}

/// Reads one spec file. Broken channels are left out and reported; `None` when the file as a
/// whole cannot be read (unknown dialect, missing or invalid `id`).
pub(crate) fn parse_spec(
    file: &str,
    doc: &Doc,
    sources: &Sources,
    problems: &mut Vec<Problem>,
) -> Option<(DataProduct, Vec<Channel>)> {
    let mut cx = Cx {
        file,
        doc,
        sources,
        problems,
    };
    cx.spec()
}

struct Cx<'a> {
    file: &'a str,
    doc: &'a Doc,
    sources: &'a Sources,
    problems: &'a mut Vec<Problem>,
}

/// A node and its JSON pointer (for line numbers).
#[derive(Clone, Copy)]
struct Node<'a> {
    value: &'a Value,
    ptr: &'a str,
}

fn child(ptr: &str, token: &str) -> String {
    let mut p = ptr.to_string();
    p.push('/');
    push_escaped(&mut p, token);
    p
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Cx<'_> {
    fn problem(&mut self, ptr: &str, message: impl Into<String>) {
        let line = self.doc.line(ptr);
        self.problems.push(Problem::new(self.file, line, message));
    }

    /// Follows internal `$ref`s (`#/...`); returns the target and its pointer.
    fn resolve(&mut self, value: &Value, ptr: &str) -> Option<(Value, String)> {
        let mut value = value.clone();
        let mut ptr = ptr.to_string();
        for _ in 0..MAX_REF_DEPTH {
            let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
                return Some((value, ptr));
            };
            let Some(target) = reference.strip_prefix('#').map(str::to_string) else {
                return Some((value, ptr));
            };
            let Some(found) = self.doc.root.pointer(&target) else {
                let message = format!("unresolved reference {reference:?}");
                self.problem(&child(&ptr, "$ref"), message);
                return None;
            };
            value = found.clone();
            ptr = target;
        }
        self.problem(&ptr, "too many nested references");
        None
    }

    fn spec(&mut self) -> Option<(DataProduct, Vec<Channel>)> {
        let root = &self.doc.root;
        let Some(asyncapi) = root.get("asyncapi").and_then(text) else {
            self.problem("/asyncapi", "`asyncapi` must be a version string");
            return None;
        };
        let dialect = self.dialect(&asyncapi)?;
        let app = self.app_id()?;
        let info = root.get("info");
        let info_text = |k: &str| info.and_then(|i| i.get(k)).and_then(text);
        let product = DataProduct {
            app: app.clone(),
            file: self.file.to_string(),
            dialect,
            asyncapi,
            title: info_text("title"),
            version: info_text("version"),
            description: info_text("description"),
            channels: Vec::new(),
        };
        let mut channels = Vec::new();
        match root.get("channels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let ptr = child("/channels", key);
                    if let Some(c) = self.channel(&app, dialect, key, Node { value, ptr: &ptr }) {
                        channels.push(c);
                    }
                }
            }
            Some(_) => self.problem("/channels", "`channels` must be a mapping"),
        }
        Some((product, channels))
    }

    fn dialect(&mut self, asyncapi: &str) -> Option<Dialect> {
        let detected = if asyncapi.starts_with("3.") {
            Some(Dialect::AsyncApi3)
        } else if asyncapi.starts_with("2.6") {
            Some(Dialect::AsyncApi2)
        } else if ["2.0", "2.1", "2.2", "2.3", "2.4", "2.5"]
            .iter()
            .any(|v| asyncapi.starts_with(v))
        {
            Some(Dialect::SpecMesh)
        } else {
            None
        };
        let Some(explicit) = self.doc.root.get("x-dialect") else {
            if detected.is_none() {
                self.problem(
                    "/asyncapi",
                    format!(
                        "unknown dialect: asyncapi {asyncapi:?} (supported: 2.0-2.5 as SpecMesh, 2.6, 3.x)"
                    ),
                );
            }
            return detected;
        };
        let dialect = match explicit.as_str() {
            Some("specmesh") => Dialect::SpecMesh,
            Some("asyncapi-2") => Dialect::AsyncApi2,
            Some("asyncapi-3") => Dialect::AsyncApi3,
            _ => {
                self.problem(
                    "/x-dialect",
                    format!(
                        "unknown dialect {explicit}: expected `specmesh`, `asyncapi-2` or `asyncapi-3`"
                    ),
                );
                return None;
            }
        };
        let major_ok = match dialect {
            Dialect::AsyncApi3 => asyncapi.starts_with("3."),
            Dialect::SpecMesh | Dialect::AsyncApi2 => asyncapi.starts_with("2."),
        };
        if !major_ok {
            self.problem(
                "/x-dialect",
                format!("dialect {dialect} does not match asyncapi {asyncapi:?}"),
            );
            return None;
        }
        Some(dialect)
    }

    fn app_id(&mut self) -> Option<AppId> {
        let Some(id) = self.doc.root.get("id") else {
            self.problem("/asyncapi", "missing `id: urn:<app id>`");
            return None;
        };
        let Some(urn) = id.as_str().and_then(|s| s.strip_prefix("urn:")) else {
            self.problem("/id", format!("invalid id {id}: expected `urn:<app id>`"));
            return None;
        };
        match AppId::parse(urn) {
            Ok(app) => Some(app),
            Err(e) => {
                self.problem("/id", e.to_string());
                None
            }
        }
    }

    fn channel(
        &mut self,
        app: &AppId,
        dialect: Dialect,
        key: &str,
        node: Node<'_>,
    ) -> Option<Channel> {
        let (ch, ch_ptr) = self.resolve(node.value, node.ptr)?;
        let Some(map) = ch.as_object() else {
            self.problem(node.ptr, format!("channel {key:?} must be a mapping"));
            return None;
        };
        let address = match (dialect, map.get("address")) {
            (Dialect::AsyncApi3, Some(Value::String(a))) => a.clone(),
            _ => key.to_string(),
        };
        let (name, param_names) = match split_address(&address) {
            Ok(parts) => parts,
            Err(e) => {
                self.problem(node.ptr, format!("channel {address:?}: {e}"));
                return None;
            }
        };
        let kafka_topic = format!("{app}.{name}");
        let mesh_base = format!("{}/{}", app.mesh_prefix(), name.replace('.', "/"));
        let mut pattern_text = mesh_base.clone();
        let mut example = mesh_base.clone();
        for _ in &param_names {
            pattern_text.push_str("/*");
            example.push_str("/x");
        }
        let pattern = match validate_topic(&example).and_then(|()| Filter::parse(&pattern_text)) {
            Ok(p) => p,
            Err(e) => {
                self.problem(
                    node.ptr,
                    format!("channel {address:?} does not make a valid mesh topic: {e}"),
                );
                return None;
            }
        };
        if kafka_topic.len() > 249 {
            self.problem(
                node.ptr,
                format!("Kafka topic {kafka_topic:?} is longer than 249 bytes"),
            );
            return None;
        }

        // Operations: (owner sends, operation node, pointer).
        let mut ops: Vec<(bool, Value, String)> = Vec::new();
        match dialect {
            Dialect::SpecMesh | Dialect::AsyncApi2 => {
                for (op, owner_sends_if_specmesh) in [("publish", true), ("subscribe", false)] {
                    let Some(v) = map.get(op) else { continue };
                    let owner_sends = match dialect {
                        Dialect::SpecMesh => owner_sends_if_specmesh,
                        _ => !owner_sends_if_specmesh,
                    };
                    if let Some((v, p)) = self.resolve(v, &child(&ch_ptr, op)) {
                        ops.push((owner_sends, v, p));
                    }
                }
            }
            Dialect::AsyncApi3 => {
                let target = child("#/channels", key);
                if let Some(Value::Object(all)) = self.doc.root.get("operations") {
                    for (op_key, op) in all {
                        let ptr = child("/operations", op_key);
                        let Some((op, ptr)) = self.resolve(op, &ptr) else {
                            continue;
                        };
                        let refers = op
                            .get("channel")
                            .and_then(|c| c.get("$ref"))
                            .and_then(Value::as_str)
                            == Some(target.as_str());
                        if !refers {
                            continue;
                        }
                        match op.get("action").and_then(Value::as_str) {
                            Some("send") => ops.push((true, op, ptr)),
                            Some("receive") => ops.push((false, op, ptr)),
                            _ => {
                                self.problem(&ptr, "operation `action` must be `send` or `receive`")
                            }
                        }
                    }
                }
            }
        }
        let (owner_sends, owner_receives) = if ops.is_empty() {
            (true, false)
        } else {
            (ops.iter().any(|o| o.0), ops.iter().any(|o| !o.0))
        };

        // Tags and grants.
        let mut tags = Vec::new();
        let mut grants: Vec<AppId> = Vec::new();
        let mut tag_sources: Vec<(Value, String)> = Vec::new();
        if let Some(t) = map.get("tags") {
            tag_sources.push((t.clone(), child(&ch_ptr, "tags")));
        }
        for (_, op, ptr) in &ops {
            if let Some(t) = op.get("tags") {
                tag_sources.push((t.clone(), child(ptr, "tags")));
            }
        }
        for (list, ptr) in tag_sources {
            let Some(list) = list.as_array() else {
                self.problem(&ptr, "`tags` must be a list");
                continue;
            };
            for (i, tag) in list.iter().enumerate() {
                let tag_ptr = child(&ptr, &i.to_string());
                let name = tag
                    .get("name")
                    .and_then(Value::as_str)
                    .or_else(|| tag.as_str());
                let Some(name) = name else {
                    self.problem(&tag_ptr, "a tag needs a `name`");
                    continue;
                };
                if let Some(grantee) = name.strip_prefix("grant-access:") {
                    match AppId::parse(grantee) {
                        Ok(g) if !grants.contains(&g) => grants.push(g),
                        Ok(_) => {}
                        Err(e) => {
                            self.problem(&tag_ptr, format!("grant to a malformed app id: {e}"))
                        }
                    }
                }
                tags.push(name.to_string());
            }
        }

        // Access.
        let marker = name.split('.').next().unwrap_or_default();
        let access = match marker {
            "_public" => Access::Public,
            "_protected" => Access::Protected,
            "_private" => Access::Private,
            _ if grants.is_empty() => Access::Private,
            _ => Access::Protected,
        };
        if !grants.is_empty() && access != Access::Protected {
            self.problem(
                node.ptr,
                format!(
                    "channel {address:?} is {}: its grants have no effect",
                    access.as_str()
                ),
            );
        }
        if access != Access::Protected {
            grants.clear();
        }

        // Messages.
        let mut messages = Vec::new();
        let mut message_nodes: Vec<(Value, String, Option<String>)> = Vec::new();
        match dialect {
            Dialect::SpecMesh | Dialect::AsyncApi2 => {
                for (_, op, ptr) in &ops {
                    if let Some(m) = op.get("message") {
                        message_nodes.push((m.clone(), child(ptr, "message"), None));
                    }
                }
            }
            Dialect::AsyncApi3 => {
                if let Some(Value::Object(all)) = map.get("messages") {
                    let base = child(&ch_ptr, "messages");
                    for (k, m) in all {
                        message_nodes.push((m.clone(), child(&base, k), None));
                    }
                }
            }
        }
        let mut expanded = Vec::new();
        for (m, ptr, _) in message_nodes {
            let Some((m, ptr)) = self.resolve(&m, &ptr) else {
                continue;
            };
            match m.get("oneOf").and_then(Value::as_array) {
                Some(list) => {
                    for (i, item) in list.iter().enumerate() {
                        let item_ptr = child(&child(&ptr, "oneOf"), &i.to_string());
                        if let Some(r) = self.resolve(item, &item_ptr) {
                            expanded.push(r);
                        }
                    }
                }
                None => expanded.push((m, ptr)),
            }
        }
        for (m, ptr) in expanded {
            let schema = match m.get("payload") {
                Some(payload) => {
                    let hint = m.get("schemaFormat").and_then(Value::as_str);
                    self.schema(payload, &child(&ptr, "payload"), hint)
                }
                None => None,
            };
            messages.push(Message {
                name: m.get("name").and_then(text),
                schema,
            });
        }

        // Parameters.
        let declared = match map.get("parameters") {
            Some(Value::Object(p)) => p.clone(),
            Some(_) => {
                self.problem(
                    &child(&ch_ptr, "parameters"),
                    "`parameters` must be a mapping",
                );
                serde_json::Map::new()
            }
            None => serde_json::Map::new(),
        };
        let params_ptr = child(&ch_ptr, "parameters");
        for k in declared.keys() {
            if !param_names.iter().any(|n| n == k) {
                self.problem(
                    &child(&params_ptr, k),
                    format!("parameter {k:?} is not used in the address {address:?}"),
                );
            }
        }
        let mut parameters = Vec::new();
        for pname in &param_names {
            let ptr = child(&params_ptr, pname);
            let decl = match declared.get(pname) {
                Some(d) => self.resolve(d, &ptr).map(|r| r.0),
                None => None,
            };
            let source = decl
                .as_ref()
                .map(|d| self.param_source(d, &ptr))
                .unwrap_or(ParamSource::Unspecified);
            parameters.push(Parameter {
                name: pname.clone(),
                source,
                description: decl
                    .as_ref()
                    .and_then(|d| d.get("description"))
                    .and_then(text),
            });
        }

        // Extensions.
        let mut producers = Vec::new();
        if let Some(list) = map.get("x-producers") {
            let ptr = child(&ch_ptr, "x-producers");
            match list.as_array() {
                Some(list) => {
                    for (i, p) in list.iter().enumerate() {
                        match p.as_str().map(AppId::parse) {
                            Some(Ok(a)) => producers.push(a),
                            Some(Err(e)) => {
                                self.problem(&child(&ptr, &i.to_string()), e.to_string())
                            }
                            None => self.problem(
                                &child(&ptr, &i.to_string()),
                                "a producer must be an app id",
                            ),
                        }
                    }
                }
                None => self.problem(&ptr, "`x-producers` must be a list of app ids"),
            }
        }
        let eol = match map.get("x-deprecated") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(d) => {
                let ptr = child(&ch_ptr, "x-deprecated");
                match d.get("eol") {
                    Some(v) => match v.as_str().map(Date::parse) {
                        Some(Ok(date)) => Some(date),
                        _ => {
                            self.problem(
                                &child(&ptr, "eol"),
                                format!("invalid EOL date {v}: expected YYYY-MM-DD"),
                            );
                            None
                        }
                    },
                    None => {
                        self.problem(&ptr, "`x-deprecated` needs an `eol: YYYY-MM-DD` date");
                        None
                    }
                }
            }
        };
        let kind = match map.get("x-type") {
            None => ChannelKind::Event,
            Some(v) => match v.as_str() {
                Some("event") => ChannelKind::Event,
                Some("data") => ChannelKind::Data,
                Some("command") => ChannelKind::Command,
                Some("internal") => ChannelKind::Internal,
                _ => {
                    self.problem(
                        &child(&ch_ptr, "x-type"),
                        format!("invalid x-type {v}: expected event, data, command or internal"),
                    );
                    ChannelKind::Event
                }
            },
        };
        let kafka = self.kafka(
            map.get("bindings").and_then(|b| b.get("kafka")),
            &ch_ptr,
            &kafka_topic,
        );

        Some(Channel {
            id: ChannelId(0),
            owner: app.clone(),
            name,
            address,
            kafka_topic,
            mesh_base,
            pattern,
            parameters,
            access,
            grants,
            producers,
            eol,
            kind,
            owner_sends,
            owner_receives,
            kafka,
            messages,
            tags,
            file: self.file.to_string(),
            line: self.doc.line(node.ptr),
        })
    }
}
