//! Application ids: the owners, producers and readers of channels.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A valid application id such as `acme.lifestyle.onboarding`.
///
/// Dot-separated segments, each non-empty, made of ASCII letters, digits, `-` and `_`, and not
/// starting with `_` (such segments are the `_public`/`_protected`/`_private` markers of channel
/// names). Each segment becomes one mesh topic level.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppId(Box<str>);

/// Why an application id was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "invalid app id {0:?}: expected dot-separated segments of letters, digits, `-` and `_`, not starting with `_`"
)]
pub struct AppIdError(pub String);

impl AppId {
    /// Parses an application id.
    pub fn parse(text: &str) -> Result<AppId, AppIdError> {
        let valid_segment = |s: &str| {
            !s.is_empty()
                && !s.starts_with('_')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if text.len() > 200 || !text.split('.').all(valid_segment) {
            return Err(AppIdError(text.to_string()));
        }
        Ok(AppId(text.into()))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments of the id, first to last.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The id as mesh topic levels: `acme.sales` is `acme/sales`.
    pub fn mesh_prefix(&self) -> String {
        self.0.replace('.', "/")
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AppId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AppId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for AppId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl Serialize for AppId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AppId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        AppId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_ids() {
        for ok in [
            "acme",
            "acme.lifestyle.onboarding",
            "some.other.domain.root",
            "a-b.c_d.E9",
        ] {
            assert!(AppId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "acme.",
            ".acme",
            "acme..x",
            "acme/x",
            "acme.*",
            "acme._public",
            "a b",
            "acme.>",
            "é",
        ] {
            assert!(AppId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(AppId::parse("a.b.c").unwrap().mesh_prefix(), "a/b/c");
    }
}
