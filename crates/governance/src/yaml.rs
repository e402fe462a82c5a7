//! YAML and JSON documents as `serde_json` values, with the source line of every node.
//!
//! `saphyr` keeps a span on every node; we convert its tree into a [`Value`] (what the model is
//! read from) and a map from JSON pointer to line, so that a semantic problem found later can
//! name the line of the key it is about.

use std::collections::HashMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

/// A parsed document: its value and the 1-based line of each node, by JSON pointer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Doc {
    /// The document as JSON.
    pub(crate) root: Value,
    /// Line of each node (for a mapping entry: the line of its key), by JSON pointer (`""` for
    /// the root).
    lines: HashMap<String, u32>,
}

/// A syntax error: its 1-based line and the parser's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: u32,
    pub(crate) message: String,
}

impl Doc {
    /// Parses YAML 1.2 (which includes JSON). Only the first document of a stream is read.
    pub(crate) fn parse(text: &str) -> Result<Doc, SyntaxError> {
        let docs = MarkedYaml::load_from_str(text).map_err(|e| SyntaxError {
            line: to_line(e.marker().line()),
            message: e.info().to_string(),
        })?;
        let mut doc = Doc::default();
        let Some(first) = docs.first() else {
            return Ok(doc);
        };
        let mut pointer = String::new();
        doc.root = doc.convert(first, &mut pointer)?;
        Ok(doc)
    }

    /// The line of the node at `pointer`, or of its nearest ancestor that has one; 1 if none.
    pub(crate) fn line(&self, pointer: &str) -> u32 {
        let mut p = pointer;
        loop {
            if let Some(&line) = self.lines.get(p) {
                return line;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return 1,
            }
        }
    }

    fn convert(
        &mut self,
        node: &MarkedYaml<'_>,
        pointer: &mut String,
    ) -> Result<Value, SyntaxError> {
        self.lines
            .entry(pointer.clone())
            .or_insert(to_line(node.span.start.line()));
        Ok(match &node.data {
            YamlData::Value(scalar) => scalar_value(scalar),
            YamlData::Representation(text, _, _) => Value::String(text.to_string()),
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    out.push(self.convert(item, pointer)?);
                    pointer.truncate(len);
                }
                Value::Array(out)
            }
            YamlData::Mapping(map) => {
                let mut out = Map::new();
                for (key, value) in map {
                    let name = match &key.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(other) => scalar_value(other).to_string(),
                        _ => {
                            return Err(SyntaxError {
                                line: to_line(key.span.start.line()),
                                message: "mapping keys must be scalars".into(),
                            });
                        }
                    };
                    let len = pointer.len();
                    pointer.push('/');
                    push_escaped(pointer, &name);
                    // The key's line, not the value's: that is where a reader looks.
                    self.lines
                        .insert(pointer.clone(), to_line(key.span.start.line()));
                    let v = self.convert(value, pointer)?;
                    pointer.truncate(len);
                    out.insert(name, v);
                }
                Value::Object(out)
            }
            YamlData::Tagged(_, inner) => self.convert(inner, pointer)?,
            YamlData::Alias(_) => {
                return Err(SyntaxError {
                    line: to_line(node.span.start.line()),
                    message: "YAML aliases are not supported in specs".into(),
                });
            }
            YamlData::BadValue => {
                return Err(SyntaxError {
                    line: to_line(node.span.start.line()),
                    message: "invalid scalar value".into(),
                });
            }
        })
    }
}

/// Appends one JSON pointer token, escaped (RFC 6901: `~` as `~0`, `/` as `~1`).
pub(crate) fn push_escaped(pointer: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// A JSON pointer from tokens.
#[cfg(test)]
pub(crate) fn pointer(tokens: &[&str]) -> String {
    let mut p = String::new();
    for t in tokens {
        p.push('/');
        push_escaped(&mut p, t);
    }
    p
}

fn scalar_value(scalar: &Scalar<'_>) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner())
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

fn to_line(line: usize) -> u32 {
    u32::try_from(line.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_lines() {
        let text = "a: 1\nb:\n  c: [x, y]\n  'd/e': \"2\"\nf: 1.5\n";
        let doc = Doc::parse(text).unwrap();
        assert_eq!(
            doc.root,
            serde_json::json!({"a": 1, "b": {"c": ["x", "y"], "d/e": "2"}, "f": 1.5})
        );
        assert_eq!(doc.line("/a"), 1);
        assert_eq!(doc.line("/b/c"), 3);
        assert_eq!(doc.line(&pointer(&["b", "d/e"])), 4);
        assert_eq!(doc.line("/b/missing/deeper"), 2);
    }

    #[test]
    fn flow_sequences_of_single_pairs() {
        let doc = Doc::parse("tags: [\n  name: \"human\",\n  name: \"purchase\"\n]\n").unwrap();
        assert_eq!(
            doc.root,
            serde_json::json!({"tags": [{"name": "human"}, {"name": "purchase"}]})
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = Doc::parse("a: 1\nb: [\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        let err = Doc::parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
    }

    #[test]
    fn tab_indented_json() {
        let doc = Doc::parse("{\n\t\"a\": {\n\t\t\"b\": 1\n\t}\n}\n").unwrap();
        assert_eq!(doc.root, serde_json::json!({"a": {"b": 1}}));
        assert_eq!(doc.line("/a/b"), 3);
    }

    #[test]
    fn json_is_yaml() {
        let doc = Doc::parse("{\n  \"a\": {\n    \"b\": [1, true, null]\n  }\n}\n").unwrap();
        assert_eq!(doc.root, serde_json::json!({"a": {"b": [1, true, null]}}));
        assert_eq!(doc.line("/a/b"), 3);
    }
}
