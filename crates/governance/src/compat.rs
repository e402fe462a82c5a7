//! Consumer compatibility between two versions of the catalog (`spec validate --previous`).
//!
//! Events must stay consumer-compatible: data written with the new schema must be readable by
//! consumers built against the previous one.
//!
//! - Avro: `apache-avro`'s schema resolution ([`SchemaCompatibility::can_read`] with the new
//!   schema as writer and the previous one as reader).
//! - JSON Schema: a structural subset, applied at the root and recursively to the properties
//!   both versions declare and to `items`:
//!   1. the allowed `type`s may only shrink (`integer` counts as a `number`; dropping `type`
//!      where the previous version had one is a change);
//!   2. every property the previous version `required` stays required;
//!   3. a previous `enum` (or `const`) stays, and may only lose values;
//!   4. a previous `additionalProperties: false` stays, and no property is added.
//!
//!   Not checked: numeric and string bounds, `pattern`, `format`, `allOf`/`anyOf`/`oneOf`,
//!   `$ref`, and schemas under `additionalProperties`.
//! - A channel's schema format may not change, and a schema may not be dropped.
//! - A removed channel and a smaller partition count are problems.

use std::collections::{BTreeSet, HashMap};

use apache_avro::schema_compatibility::SchemaCompatibility;
use serde_json::Value;

use crate::catalog::Catalog;
use crate::date::Date;
use crate::model::{Channel, MessageSchema, SchemaFormat};
use crate::problem::Problem;

/// Least notice, in days, between the day a channel is deprecated and its EOL (Galapagos asks
/// for at least three months).
pub const MIN_EOL_NOTICE_DAYS: i64 = 90;

/// Problems that would break consumers of `previous` if `next` replaced it.
pub fn check_compatible(previous: &Catalog, next: &Catalog) -> Vec<Problem> {
    compare(previous, next, None)
}

/// As [`check_compatible`], on day `today`: a channel removed after its EOL is fine, and a
/// channel newly deprecated must give at least [`MIN_EOL_NOTICE_DAYS`] days of notice.
pub fn check_compatible_at(previous: &Catalog, next: &Catalog, today: Date) -> Vec<Problem> {
    compare(previous, next, Some(today))
}

fn compare(previous: &Catalog, next: &Catalog, today: Option<Date>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let next_by_topic: HashMap<&str, &Channel> = next
        .channels()
        .iter()
        .map(|c| (c.kafka_topic.as_str(), c))
        .collect();
    for old in previous.channels() {
        let Some(new) = next_by_topic.get(old.kafka_topic.as_str()) else {
            let retired = matches!((old.eol, today), (Some(eol), Some(t)) if t > eol);
            if !retired {
                problems.push(Problem::new(
                    &old.file,
                    old.line,
                    format!(
                        "channel {:?} was removed (deprecate it with an EOL first)",
                        old.address
                    ),
                ));
            }
            continue;
        };
        let at = |message: String| Problem::new(&new.file, new.line, message);
        if let (Some(before), Some(after)) = (old.kafka.partitions, new.kafka.partitions)
            && after < before
        {
            problems.push(at(format!(
                "channel {:?}: partitions cannot shrink from {before} to {after}",
                new.address
            )));
        }
        if let (None, Some(eol), Some(today)) = (old.eol, new.eol, today)
            && eol.unix_days() - today.unix_days() < MIN_EOL_NOTICE_DAYS
        {
            problems.push(at(format!(
                "channel {:?}: EOL {eol} gives less than {MIN_EOL_NOTICE_DAYS} days of notice",
                new.address
            )));
        }
        let old_schemas: Vec<(Option<&str>, &MessageSchema)> = old
            .messages
            .iter()
            .filter_map(|m| m.schema.as_ref().map(|s| (m.name.as_deref(), s)))
            .collect();
        let new_schemas: Vec<(Option<&str>, &MessageSchema)> = new
            .messages
            .iter()
            .filter_map(|m| m.schema.as_ref().map(|s| (m.name.as_deref(), s)))
            .collect();
        if !old_schemas.is_empty() && new_schemas.is_empty() {
            problems.push(at(format!(
                "channel {:?}: the schema was removed",
                new.address
            )));
            continue;
        }
        for (i, (name, after)) in new_schemas.iter().enumerate() {
            // Pair by message name, else by position.
            let before = old_schemas
                .iter()
                .find(|(n, _)| n.is_some() && n == name)
                .or_else(|| old_schemas.get(i))
                .map(|(_, s)| *s);
            let Some(before) = before else {
                continue;
            };
            for e in schema_changes(before, after) {
                problems.push(at(format!("channel {:?}: {e}", new.address)));
            }
        }
    }
    problems
}

/// Why data written with `after` may not be readable by consumers of `before`.
fn schema_changes(before: &MessageSchema, after: &MessageSchema) -> Vec<String> {
    if before.format != after.format {
        return vec![format!(
            "schema format changed from {:?} to {:?}",
            before.format, after.format
        )];
    }
    match before.format {
        SchemaFormat::Avro => {
            let (Some(old), Some(new)) = (before.compiled.avro(), after.compiled.avro()) else {
                return Vec::new();
            };
            match SchemaCompatibility::can_read(new, old) {
                Ok(_) => Vec::new(),
                Err(e) => vec![format!(
                    "Avro schema is not readable by consumers of the previous one: {e}"
                )],
            }
        }
        SchemaFormat::JsonSchema => {
            let mut out = Vec::new();
            json_changes(
                &before.document,
                &after.document,
                &mut String::new(),
                &mut out,
            );
            out
        }
    }
}

fn types(schema: &Value) -> Option<BTreeSet<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some([t.as_str()].into()),
        Value::Array(list) => Some(list.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn json_changes(old: &Value, new: &Value, path: &mut String, out: &mut Vec<String>) {
    let at = |p: &str| {
        if p.is_empty() {
            "/".to_string()
        } else {
            p.to_string()
        }
    };
    if let Some(old_types) = types(old) {
        match types(new) {
            None => out.push(format!("{}: `type` {old_types:?} was dropped", at(path))),
            Some(new_types) => {
                let widened: Vec<&str> = new_types
                    .iter()
                    .filter(|t| {
                        !(old_types.contains(*t)
                            || (**t == "integer" && old_types.contains("number")))
                    })
                    .copied()
                    .collect();
                if !widened.is_empty() {
                    out.push(format!(
                        "{}: type changed from {old_types:?} to {new_types:?}",
                        at(path)
                    ));
                }
            }
        }
    }
    let required = |s: &Value| -> BTreeSet<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let new_required = required(new);
    for r in required(old) {
        if !new_required.contains(&r) {
            out.push(format!(
                "{}: property {r:?} is no longer required",
                at(path)
            ));
        }
    }
    for key in ["enum", "const"] {
        let Some(old_values) = old.get(key) else {
            continue;
        };
        let as_list = |v: &Value| match v {
            Value::Array(l) if key == "enum" => l.clone(),
            other => vec![other.clone()],
        };
        match new.get(key) {
            None => out.push(format!("{}: `{key}` was dropped", at(path))),
            Some(new_values) => {
                let old_list = as_list(old_values);
                if as_list(new_values).iter().any(|v| !old_list.contains(v)) {
                    out.push(format!("{}: `{key}` gained values", at(path)));
                }
            }
        }
    }
    let props = |s: &Value| {
        s.get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (old_props, new_props) = (props(old), props(new));
    if old.get("additionalProperties") == Some(&Value::Bool(false)) {
        if new.get("additionalProperties") != Some(&Value::Bool(false)) {
            out.push(format!(
                "{}: `additionalProperties: false` was dropped",
                at(path)
            ));
        }
        for k in new_props.keys().filter(|k| !old_props.contains_key(*k)) {
            out.push(format!(
                "{}: property {k:?} was added where additional properties are refused",
                at(path)
            ));
        }
    }
    for (k, old_p) in &old_props {
        if let Some(new_p) = new_props.get(k) {
            let len = path.len();
            path.push_str("/properties/");
            path.push_str(k);
            json_changes(old_p, new_p, path, out);
            path.truncate(len);
        }
    }
    if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items"))
        && old_items.is_object()
        && new_items.is_object()
    {
        let len = path.len();
        path.push_str("/items");
        json_changes(old_items, new_items, path, out);
        path.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn changes(old: Value, new: Value) -> Vec<String> {
        let mut out = Vec::new();
        json_changes(&old, &new, &mut String::new(), &mut out);
        out
    }

    #[test]
    fn json_rules() {
        let base = json!({"type": "object", "required": ["id"],
            "properties": {"id": {"type": "string"}, "n": {"type": "number"},
                           "kind": {"enum": ["a", "b"]}}});
        // Adding an optional property, narrowing a type, dropping an enum value: compatible.
        let ok = json!({"type": "object", "required": ["id", "x"],
            "properties": {"id": {"type": "string"}, "n": {"type": "integer"},
                           "kind": {"enum": ["a"]}, "x": {"type": "string"}}});
        assert_eq!(changes(base.clone(), ok), Vec::<String>::new());
        let bad = json!({"type": "object", "required": [],
            "properties": {"id": {"type": ["string", "null"]}, "n": {"type": "string"},
                           "kind": {"enum": ["a", "b", "c"]}}});
        let found = changes(base, bad);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found
                .iter()
                .any(|e| e.contains("\"id\" is no longer required"))
        );
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("/properties/n: type changed"))
        );
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("/properties/kind: `enum` gained"))
        );
        let closed =
            json!({"type": "object", "additionalProperties": false, "properties": {"a": {}}});
        let opened = json!({"type": "object", "additionalProperties": false, "properties": {"a": {}, "b": {}}});
        assert_eq!(changes(closed, opened).len(), 1);
    }
}
