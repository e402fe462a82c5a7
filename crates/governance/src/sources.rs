//! The files of a specs directory, in memory.

use std::collections::BTreeMap;

/// Spec and schema files by path relative to the specs directory (`/`-separated, no leading
/// `/`). Spec files are the YAML or JSON documents with a top-level `asyncapi` key; any other
/// file is only read when a spec references it as a schema.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    files: BTreeMap<String, String>,
}

impl Sources {
    /// No files.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Adds or replaces a file. A leading `/` or `./` of the path is dropped.
    pub fn insert(&mut self, path: impl Into<String>, text: impl Into<String>) -> &mut Sources {
        let path = path.into();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        self.files.insert(path, text.into());
        self
    }

    /// The text of a file.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// All files, ordered by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().map(|(p, t)| (p.as_str(), t.as_str()))
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there is no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Resolves a `$ref` file path against the referring file: a leading `/` is the specs
/// directory, anything else is relative to the referring file's folder. `None` if `..` climbs
/// out of the specs directory.
pub(crate) fn resolve_path(referrer: &str, reference: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if !reference.starts_with('/') {
        parts.extend(referrer.split('/'));
        parts.pop();
    }
    for part in reference.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            resolve_path("a/spec.yaml", "/schema/x.avsc").unwrap(),
            "schema/x.avsc"
        );
        assert_eq!(
            resolve_path("a/spec.yaml", "schema/x.avsc").unwrap(),
            "a/schema/x.avsc"
        );
        assert_eq!(
            resolve_path("a/spec.yaml", "./../s.json").unwrap(),
            "s.json"
        );
        assert_eq!(resolve_path("spec.yaml", "../s.json"), None);
    }
}
