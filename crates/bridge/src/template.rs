//! Templates that build a name from a record: the mesh topic of a Kafka record
//! (`orders/{header.region}/{key}`), the Kafka topic or AMQP routing key of a mesh event
//! (`{topic}`, `mesh.{level.0}`).
//!
//! A template is literal text with placeholders in braces:
//! - `{NAME}`: a value the protocol knows by name: `topic` (the source's topic or routing key
//!   with `.` turned into `/`, or on the way out the mesh topic with `/` turned into `.`),
//!   `partition`, `offset`, `key`, `exchange`, ...;
//! - `{header.NAME}`: a header (Kafka header, AMQP header, MQTT 5 user property);
//! - `{payload.a.b}`: a field of a JSON payload (numbers and booleans as written);
//! - `{level.N}`: level N (from 0) of the mesh topic.
//!
//! Values are made safe for where they go ([`Output`]): inside a mesh topic a value is one level
//! (`/` and wildcard characters become `_`), except `{topic}`, which keeps its levels; a missing
//! or empty value is written `_`, so a record is never dropped for lack of a header. Kafka topic
//! names keep only `[A-Za-z0-9._-]`.

use std::borrow::Cow;
use std::fmt;

use thiserror::Error;

/// One placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// A value the protocol knows by name (`topic`, `key`, `partition`, ...).
    Name(String),
    /// A header by name.
    Header(String),
    /// A field of a JSON payload, by path.
    Payload(Vec<String>),
    /// A level of the mesh topic.
    Level(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// Where a rendered template goes; decides which characters a value may keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A mesh topic (levels separated by `/`).
    MeshTopic,
    /// A Kafka topic name: `[A-Za-z0-9._-]`, at most 249 bytes.
    KafkaTopic,
    /// An AMQP routing key: any text, at most 255 bytes.
    RoutingKey,
}

/// A template that does not parse, or names a placeholder the protocol does not have.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// Braces that do not pair up.
    #[error("template {0:?}: unbalanced braces")]
    Braces(String),
    /// A placeholder this protocol has no value for.
    #[error("template {template:?}: unknown placeholder {{{var}}} (known here: {known})")]
    Unknown {
        /// The template.
        template: String,
        /// The placeholder.
        var: String,
        /// What would be understood.
        known: String,
    },
    /// The template is empty.
    #[error("template is empty")]
    Empty,
}

/// Values for the placeholders of one record.
pub trait Vars {
    /// The value of `var`, if the record has one.
    fn get(&self, var: &Var) -> Option<Cow<'_, str>>;
}

/// A parsed template.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.text)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which placeholders a protocol offers, for [`Template::parse`].
#[derive(Clone, Copy, Debug)]
pub struct Known<'a> {
    /// Plain names (`topic`, `key`, ...).
    pub names: &'a [&'a str],
    /// Whether `{header.NAME}` is offered.
    pub headers: bool,
    /// Whether `{payload.PATH}` is offered.
    pub payload: bool,
    /// Whether `{level.N}` is offered.
    pub levels: bool,
}

impl Known<'_> {
    fn describe(&self) -> String {
        let mut v: Vec<String> = self.names.iter().map(|n| format!("{{{n}}}")).collect();
        if self.headers {
            v.push("{header.NAME}".into());
        }
        if self.payload {
            v.push("{payload.FIELD}".into());
        }
        if self.levels {
            v.push("{level.N}".into());
        }
        v.join(", ")
    }
}

impl Template {
    /// Parses `text`, accepting only the placeholders in `known`.
    pub fn parse(text: &str, known: Known<'_>) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Lit(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(TemplateError::Braces(text.into()));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Lit(rest[..i].to_string()));
                    }
                    let close = rest[i..]
                        .find('}')
                        .ok_or_else(|| TemplateError::Braces(text.into()))?;
                    let name = &rest[i + 1..i + close];
                    if name.contains('{') {
                        return Err(TemplateError::Braces(text.into()));
                    }
                    let unknown = || TemplateError::Unknown {
                        template: text.into(),
                        var: name.into(),
                        known: known.describe(),
                    };
                    let var = if let Some(h) = name.strip_prefix("header.") {
                        if !known.headers || h.is_empty() {
                            return Err(unknown());
                        }
                        Var::Header(h.into())
                    } else if let Some(p) = name.strip_prefix("payload.") {
                        if !known.payload || p.is_empty() || p.split('.').any(str::is_empty) {
                            return Err(unknown());
                        }
                        Var::Payload(p.split('.').map(String::from).collect())
                    } else if let Some(n) = name.strip_prefix("level.") {
                        match n.parse() {
                            Ok(n) if known.levels => Var::Level(n),
                            _ => return Err(unknown()),
                        }
                    } else if known.names.contains(&name) {
                        Var::Name(name.into())
                    } else {
                        return Err(unknown());
                    };
                    parts.push(Part::Var(var));
                    rest = &rest[i + close + 1..];
                }
            }
        }
        Ok(Self {
            text: text.into(),
            parts,
        })
    }

    /// Whether rendering reads the payload as JSON (so a caller parses it only then).
    pub fn needs_payload(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::Payload(_))))
    }

    /// Whether the template uses the plain name `name` (`{partition}`, `{offset}`, ...), so
    /// a caller formats that value only then.
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::Name(n)) if n == name))
    }

    /// Whether the rendered text depends on nothing but the plain names in `names` (and
    /// literal text): a caller may render once per combination of their values and reuse it.
    pub fn only_names(&self, names: &[&str]) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Lit(_) => true,
            Part::Var(Var::Name(n)) => names.contains(&n.as_str()),
            Part::Var(_) => false,
        })
    }

    /// Whether the template is exactly `{topic}`: the name maps one to one.
    pub fn is_topic(&self) -> bool {
        matches!(&self.parts[..], [Part::Var(Var::Name(n))] if n == "topic")
    }

    /// Renders the template for one record into `out` (cleared first).
    pub fn render(&self, vars: &impl Vars, output: Output, out: &mut String) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => {
                    let value = vars.get(v);
                    let value = value.as_deref().unwrap_or("");
                    let multi = matches!(v, Var::Name(n) if n == "topic");
                    push_value(out, value, output, multi);
                }
            }
        }
        let max = match output {
            Output::MeshTopic => usize::MAX,
            Output::KafkaTopic => 249,
            Output::RoutingKey => 255,
        };
        if out.len() > max {
            let mut cut = max;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
    }
}

fn push_value(out: &mut String, value: &str, output: Output, multi: bool) {
    match output {
        Output::MeshTopic => {
            if multi {
                // Keep the levels; an empty level (`a..b`) becomes `_`.
                for (i, level) in value.split('/').enumerate() {
                    if i > 0 {
                        out.push('/');
                    }
                    push_level(out, level);
                }
            } else {
                push_level(out, value);
            }
        }
        Output::KafkaTopic => {
            if value.is_empty() {
                out.push('_');
            }
            out.extend(value.chars().map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            }));
        }
        Output::RoutingKey => out.push_str(value),
    }
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('_');
        return;
    }
    out.extend(level.chars().map(|c| match c {
        '/' | '*' | '>' | '+' | '#' | '\0' => '_',
        c => c,
    }));
}

/// A JSON payload field by path, as text (strings unquoted, other scalars as written).
pub fn json_field<'a>(json: &'a serde_json::Value, path: &[String]) -> Option<Cow<'a, str>> {
    let mut v = json;
    for p in path {
        v = match v {
            serde_json::Value::Object(m) => m.get(p)?,
            serde_json::Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match v {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        serde_json::Value::Null => None,
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => None,
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Kafka topic or AMQP routing key to mesh topic levels: `.` → `/`.
pub fn dots_to_levels(name: &str) -> Cow<'_, str> {
    if name.contains('.') {
        Cow::Owned(name.replace('.', "/"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Mesh topic to a Kafka topic or routing key: `/` → `.`.
pub fn levels_to_dots(topic: &str) -> Cow<'_, str> {
    if topic.contains('/') {
        Cow::Owned(topic.replace('/', "."))
    } else {
        Cow::Borrowed(topic)
    }
}

/// The placeholders of a record coming in (Kafka record, AMQP delivery) and of a mesh event
/// going out, in one place so every protocol offers the same ones.
pub struct RecordVars<'a> {
    /// `{topic}` as it is to be rendered (already converted).
    pub topic: &'a str,
    /// Further named values (`partition`, `offset`, `exchange`, ...).
    pub names: &'a [(&'a str, Cow<'a, str>)],
    /// `{key}`.
    pub key: Option<&'a [u8]>,
    /// Headers, first of a name wins.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The payload parsed as JSON, when the template needs it and it parses.
    pub json: Option<&'a serde_json::Value>,
    /// The mesh topic, for `{level.N}`.
    pub levels: Option<&'a str>,
}

impl Vars for RecordVars<'_> {
    fn get(&self, var: &Var) -> Option<Cow<'_, str>> {
        match var {
            Var::Name(n) if n == "topic" => Some(Cow::Borrowed(self.topic)),
            Var::Name(n) if n == "key" => self.key.map(String::from_utf8_lossy),
            Var::Name(n) => self
                .names
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| Cow::Borrowed(v.as_ref())),
            Var::Header(h) => self
                .headers
                .iter()
                .find(|(k, _)| k == h)
                .map(|(_, v)| String::from_utf8_lossy(v)),
            Var::Payload(path) => self.json.and_then(|j| json_field(j, path)),
            Var::Level(i) => self
                .levels
                .and_then(|t| t.split('/').nth(*i))
                .map(Cow::Borrowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KAFKA_IN: Known<'static> = Known {
        names: &["topic", "partition", "offset", "key"],
        headers: true,
        payload: true,
        levels: false,
    };

    fn vars<'a>(
        topic: &'a str,
        key: Option<&'a [u8]>,
        headers: &'a [(&'a str, &'a [u8])],
        json: Option<&'a serde_json::Value>,
    ) -> RecordVars<'a> {
        RecordVars {
            topic,
            names: &[],
            key,
            headers,
            json,
            levels: None,
        }
    }

    #[test]
    fn renders_the_issue_example() {
        let t = Template::parse("orders/{header.region}/{key}", KAFKA_IN).unwrap();
        let mut out = String::new();
        let h: &[(&str, &[u8])] = &[("region", b"us")];
        t.render(
            &vars("orders", Some(b"k17"), h, None),
            Output::MeshTopic,
            &mut out,
        );
        assert_eq!(out, "orders/us/k17");
        // Missing header and key: `_`, never a dropped record or an empty level.
        t.render(
            &vars("orders", None, &[], None),
            Output::MeshTopic,
            &mut out,
        );
        assert_eq!(out, "orders/_/_");
    }

    #[test]
    fn values_are_one_level_but_topic_keeps_its_levels() {
        let t = Template::parse("x/{topic}/{key}", KAFKA_IN).unwrap();
        let mut out = String::new();
        let topic = dots_to_levels("orders.created..v1");
        t.render(
            &vars(&topic, Some(b"a/b+#*>"), &[], None),
            Output::MeshTopic,
            &mut out,
        );
        assert_eq!(out, "x/orders/created/_/v1/a_b____");
        meshgate_topic::validate_topic(&out).unwrap();
    }

    #[test]
    fn payload_fields() {
        let t =
            Template::parse("o/{payload.addr.country}/{payload.n}/{payload.x}", KAFKA_IN).unwrap();
        assert!(t.needs_payload());
        assert!(!t.only_names(&["topic", "partition"]));
        let p = Template::parse("x/{topic}/{partition}", KAFKA_IN).unwrap();
        assert!(p.only_names(&["topic", "partition"]));
        assert!(!p.only_names(&["topic"]));
        assert!(Template::parse("x/{key}", KAFKA_IN).unwrap().uses("key"));
        assert!(!Template::parse("x/{key}", KAFKA_IN).unwrap().uses("topic"));
        let j: serde_json::Value =
            serde_json::from_str(r#"{"addr":{"country":"us"},"n":17}"#).unwrap();
        let mut out = String::new();
        t.render(&vars("o", None, &[], Some(&j)), Output::MeshTopic, &mut out);
        assert_eq!(out, "o/us/17/_");
    }

    #[test]
    fn kafka_topic_names_are_cleaned_and_capped() {
        let known = Known {
            names: &["topic"],
            headers: false,
            payload: false,
            levels: true,
        };
        let t = Template::parse("mesh.{level.1}.{topic}", known).unwrap();
        let mut out = String::new();
        let v = RecordVars {
            topic: &levels_to_dots("orders/ü s/x"),
            names: &[],
            key: None,
            headers: &[],
            json: None,
            levels: Some("orders/ü s/x"),
        };
        t.render(&v, Output::KafkaTopic, &mut out);
        assert_eq!(out, "mesh.__s.orders.__s.x");
        let long = "a".repeat(300);
        let v = RecordVars { topic: &long, ..v };
        t.render(&v, Output::KafkaTopic, &mut out);
        assert_eq!(out.len(), 249);
    }

    #[test]
    fn bad_templates_name_the_problem() {
        for (t, want) in [
            ("orders/{regin}", "unknown placeholder {regin}"),
            ("orders/{key", "unbalanced"),
            ("orders/key}", "unbalanced"),
            ("o/{level.1}", "unknown placeholder {level.1}"),
            ("o/{header.}", "unknown placeholder"),
            ("", "empty"),
        ] {
            let e = Template::parse(t, KAFKA_IN).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
        assert!(Template::parse("{topic}", KAFKA_IN).unwrap().is_topic());
    }

    proptest::proptest! {
        /// Whatever the record holds, a rendered mesh topic is a valid topic.
        #[test]
        fn rendered_mesh_topics_are_valid(
            topic in "[a-z.]{1,12}",
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
            region in ".{0,8}",
        ) {
            let t = Template::parse("o/{topic}/{header.region}/{key}", KAFKA_IN).unwrap();
            let mut out = String::new();
            let topic = dots_to_levels(&topic);
            let h: &[(&str, &[u8])] = &[("region", region.as_bytes())];
            t.render(&vars(&topic, Some(&key), h, None), Output::MeshTopic, &mut out);
            proptest::prop_assert!(meshgate_topic::validate_topic(&out).is_ok(), "{out:?}");
        }
    }
}
