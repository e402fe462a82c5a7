//! Message schemas: compiled once per catalog, then used to check payloads.
//!
//! JSON Schema payloads are JSON documents checked with the `jsonschema` crate. Avro channels
//! take the **Avro JSON encoding** of a datum (the JSON form defined by the Avro specification:
//! records as objects, unions as `null` or `{"<branch type>": value}`, bytes and fixed as
//! strings of code points 0-255), checked against the Avro schema; binary Avro is not accepted
//! on the mesh.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema as AvroSchema;
use apache_avro::schema::{Name, ResolvedSchema, UuidSchema};
use serde_json::Value;

use crate::model::{Channel, SchemaFormat};

/// A schema ready to check payloads.
pub(crate) enum CompiledSchema {
    /// A JSON Schema.
    Json(Box<jsonschema::Validator>),
    /// An Avro schema and its named types.
    Avro {
        schema: AvroSchema,
        names: HashMap<Name, AvroSchema>,
    },
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompiledSchema::Json(_) => f.write_str("CompiledSchema::Json"),
            CompiledSchema::Avro { schema, .. } => write!(f, "CompiledSchema::Avro({schema:?})"),
        }
    }
}

impl CompiledSchema {
    /// Compiles a schema document.
    pub(crate) fn compile(format: SchemaFormat, document: &Value) -> Result<Self, String> {
        match format {
            SchemaFormat::JsonSchema => jsonschema::validator_for(document)
                .map(|v| CompiledSchema::Json(Box::new(v)))
                .map_err(|e| format!("invalid JSON Schema: {e}")),
            SchemaFormat::Avro => {
                let schema =
                    AvroSchema::parse(document).map_err(|e| format!("invalid Avro schema: {e}"))?;
                let names = ResolvedSchema::try_from(&schema)
                    .map_err(|e| format!("invalid Avro schema: {e}"))?
                    .get_names()
                    .iter()
                    .map(|(name, schema)| (name.clone(), (*schema).clone()))
                    .collect();
                Ok(CompiledSchema::Avro { schema, names })
            }
        }
    }

    /// Checks one JSON value.
    pub(crate) fn check(&self, value: &Value) -> Result<(), String> {
        match self {
            CompiledSchema::Json(validator) => validator.validate(value).map_err(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            }),
            CompiledSchema::Avro { schema, names } => {
                avro_check(schema, names, value, &mut String::new(), 0)
            }
        }
    }

    /// The Avro schema, if this is one.
    pub(crate) fn avro(&self) -> Option<&AvroSchema> {
        match self {
            CompiledSchema::Avro { schema, .. } => Some(schema),
            CompiledSchema::Json(_) => None,
        }
    }
}

/// Checks a payload against the channel's schemas: it must be JSON and match at least one of the
/// declared message schemas. A channel without schemas accepts any payload.
///
/// For Avro schemas the payload is the Avro JSON encoding of the datum (see the module docs).
pub fn validate_payload(channel: &Channel, payload: &[u8]) -> Result<(), String> {
    let mut schemas = channel.messages.iter().filter_map(|m| m.schema.as_ref());
    let Some(first) = schemas.next() else {
        return Ok(());
    };
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let mut error = match first.compiled.check(&value) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    for schema in schemas {
        match schema.compiled.check(&value) {
            Ok(()) => return Ok(()),
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// Deepest nesting of Avro values we follow (recursive types are allowed, unbounded data is not).
const MAX_DEPTH: usize = 64;

fn avro_check(
    schema: &AvroSchema,
    names: &HashMap<Name, AvroSchema>,
    value: &Value,
    path: &mut String,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested too deeply"));
    }
    let fail = |what: &str| Err(format!("{}: expected {what}, found {value}", at(path)));
    match schema {
        AvroSchema::Null => value
            .is_null()
            .then_some(())
            .map_or_else(|| fail("null"), Ok),
        AvroSchema::Boolean => value
            .is_boolean()
            .then_some(())
            .map_or_else(|| fail("boolean"), Ok),
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => match value.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => Ok(()),
            _ => fail("int"),
        },
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => {
            value.as_i64().map(|_| ()).map_or_else(|| fail("long"), Ok)
        }
        AvroSchema::Float | AvroSchema::Double => value
            .as_f64()
            .map(|_| ())
            .map_or_else(|| fail("number"), Ok),
        AvroSchema::Bytes | AvroSchema::BigDecimal => byte_string(value, None)
            .map_or_else(|| fail("bytes (a string of code points 0-255)"), Ok),
        AvroSchema::Decimal(_) => {
            byte_string(value, None).map_or_else(|| fail("decimal bytes"), Ok)
        }
        AvroSchema::String => value
            .is_string()
            .then_some(())
            .map_or_else(|| fail("string"), Ok),
        AvroSchema::Uuid(inner) => match inner {
            UuidSchema::Fixed(f) => {
                byte_string(value, Some(f.size)).map_or_else(|| fail("uuid"), Ok)
            }
            UuidSchema::Bytes | UuidSchema::String => value
                .is_string()
                .then_some(())
                .map_or_else(|| fail("uuid"), Ok),
        },
        AvroSchema::Fixed(f) | AvroSchema::Duration(f) => byte_string(value, Some(f.size))
            .map_or_else(|| fail(&format!("fixed of {} bytes", f.size)), Ok),
        AvroSchema::Enum(e) => match value.as_str() {
            Some(s) if e.symbols.iter().any(|sym| sym == s) => Ok(()),
            _ => fail(&format!("one of {:?}", e.symbols)),
        },
        AvroSchema::Array(a) => {
            let Some(items) = value.as_array() else {
                return fail("array");
            };
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                avro_check(&a.items, names, item, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        AvroSchema::Map(m) => {
            let Some(entries) = value.as_object() else {
                return fail("map (object)");
            };
            for (k, v) in entries {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                avro_check(&m.types, names, v, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        AvroSchema::Record(r) => {
            let Some(fields) = value.as_object() else {
                return fail(&format!("record {}", r.name.name()));
            };
            for field in &r.fields {
                let len = path.len();
                path.push('/');
                path.push_str(&field.name);
                match fields.get(&field.name) {
                    Some(v) => avro_check(&field.schema, names, v, path, depth + 1)?,
                    None if field.default.is_some() => {}
                    None => return Err(format!("{}: missing field", at(path))),
                }
                path.truncate(len);
            }
            if let Some(unknown) = fields
                .keys()
                .find(|k| !r.fields.iter().any(|f| &f.name == *k))
            {
                return Err(format!("{}: unknown field {unknown:?}", at(path)));
            }
            Ok(())
        }
        AvroSchema::Union(u) => {
            if value.is_null() {
                return match u.variants().iter().any(|v| matches!(v, AvroSchema::Null)) {
                    true => Ok(()),
                    false => fail("a non-null union branch"),
                };
            }
            let branch = value
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next());
            let Some((name, inner)) = branch else {
                return fail("a union branch as {\"<type>\": value}");
            };
            let Some(variant) = u.variants().iter().find(|v| branch_name(v) == *name) else {
                return Err(format!(
                    "{}: {name:?} is not a branch of the union",
                    at(path)
                ));
            };
            avro_check(variant, names, inner, path, depth + 1)
        }
        AvroSchema::Ref { name } => match names.get(name) {
            Some(s) => avro_check(s, names, value, path, depth + 1),
            None => Err(format!("{}: unknown named type {}", at(path), name.name())),
        },
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

/// Avro JSON encodes bytes as a string whose code points are all below 256.
fn byte_string(value: &Value, size: Option<usize>) -> Option<()> {
    let s = value.as_str()?;
    if !s.chars().all(|c| (c as u32) < 256) {
        return None;
    }
    match size {
        Some(n) if s.chars().count() != n => None,
        _ => Some(()),
    }
}

/// The name of a union branch in the Avro JSON encoding.
fn branch_name(schema: &AvroSchema) -> String {
    match schema {
        AvroSchema::Null => "null".into(),
        AvroSchema::Boolean => "boolean".into(),
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => "int".into(),
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => "long".into(),
        AvroSchema::Float => "float".into(),
        AvroSchema::Double => "double".into(),
        AvroSchema::Bytes | AvroSchema::BigDecimal | AvroSchema::Decimal(_) => "bytes".into(),
        AvroSchema::String => "string".into(),
        AvroSchema::Uuid(UuidSchema::Fixed(f)) => f.name.fullname(None),
        AvroSchema::Uuid(UuidSchema::Bytes) => "bytes".into(),
        AvroSchema::Uuid(UuidSchema::String) => "string".into(),
        AvroSchema::Array(_) => "array".into(),
        AvroSchema::Map(_) => "map".into(),
        AvroSchema::Union(_) => "union".into(),
        AvroSchema::Record(r) => r.name.fullname(None),
        AvroSchema::Enum(e) => e.name.fullname(None),
        AvroSchema::Fixed(f) | AvroSchema::Duration(f) => f.name.fullname(None),
        AvroSchema::Ref { name } => name.fullname(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn avro(schema: Value) -> CompiledSchema {
        CompiledSchema::compile(SchemaFormat::Avro, &schema).unwrap()
    }

    #[test]
    fn avro_json_encoding() {
        let s = avro(json!({
            "type": "record", "name": "User", "namespace": "acme",
            "fields": [
                {"name": "id", "type": "string"},
                {"name": "age", "type": "int"},
                {"name": "email", "type": ["null", "string"], "default": null},
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "friend", "type": ["null", "User"], "default": null}
            ]
        }));
        assert_eq!(s.check(&json!({"id": "a", "age": 3, "tags": []})), Ok(()));
        assert_eq!(
            s.check(&json!({"id": "a", "age": 3, "tags": [], "email": {"string": "x@y"}})),
            Ok(())
        );
        assert_eq!(
            s.check(&json!({"id": "a", "age": 3, "tags": [],
                "friend": {"acme.User": {"id": "b", "age": 1, "tags": ["t"]}}})),
            Ok(())
        );
        assert!(
            s.check(&json!({"id": "a", "age": "3", "tags": []}))
                .is_err()
        );
        assert!(s.check(&json!({"id": "a", "tags": []})).is_err());
        assert!(
            s.check(&json!({"id": "a", "age": 3, "tags": [], "x": 1}))
                .is_err()
        );
        assert!(
            s.check(&json!({"id": "a", "age": 3, "tags": [], "email": "bare"}))
                .is_err()
        );
        assert!(
            s.check(&json!({"id": "a", "age": 4_000_000_000i64, "tags": []}))
                .is_err()
        );
    }

    #[test]
    fn json_schema() {
        let s = CompiledSchema::compile(
            SchemaFormat::JsonSchema,
            &json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
        )
        .unwrap();
        assert_eq!(s.check(&json!({"id": "x"})), Ok(()));
        let err = s.check(&json!({"id": 1})).unwrap_err();
        assert!(err.contains("/id"), "{err}");
        assert!(CompiledSchema::compile(SchemaFormat::JsonSchema, &json!({"type": 12})).is_err());
        assert!(CompiledSchema::compile(SchemaFormat::Avro, &json!({"type": "nope"})).is_err());
    }
}
