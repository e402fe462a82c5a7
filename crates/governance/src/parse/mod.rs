//! Reading one AsyncAPI document, in any of the three dialects, into the model.
//!
//! Only the subset of AsyncAPI that governance uses is read; every other field is ignored.

use serde_json::Value;

use crate::app::AppId;
use crate::model::{Channel, DataProduct, Dialect};
use crate::problem::Problem;
use crate::sources::Sources;
use crate::yaml::{Doc, push_escaped};

mod channel;
mod parts;

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

pub(super) struct Cx<'a> {
    file: &'a str,
    doc: &'a Doc,
    sources: &'a Sources,
    problems: &'a mut Vec<Problem>,
}

/// A node and its JSON pointer (for line numbers).
#[derive(Clone, Copy)]
pub(super) struct Node<'a> {
    value: &'a Value,
    ptr: &'a str,
}

pub(super) fn child(ptr: &str, token: &str) -> String {
    let mut p = ptr.to_string();
    p.push('/');
    push_escaped(&mut p, token);
    p
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Cx<'_> {
    pub(super) fn problem(&mut self, ptr: &str, message: impl Into<String>) {
        let line = self.doc.line(ptr);
        self.problems.push(Problem::new(self.file, line, message));
    }

    /// Follows internal `$ref`s (`#/...`); returns the target and its pointer.
    pub(super) fn resolve(&mut self, value: &Value, ptr: &str) -> Option<(Value, String)> {
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
}
