//! Native (Solace-style) subscription filters: `*`, `prefix*` and `>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::TopicError;
use crate::topic::{MAX_TOPIC_BYTES, check_levels, split_level};

/// A parsed, valid native filter.
///
/// Levels are separated by `/`. A level that is exactly `*` matches exactly one level; a level
/// `abc*` matches one level starting with `abc`; `>` as the last level matches one or more levels.
/// A filter whose first level is `*` or `>` never matches a system (`$`) topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    /// The filter text, shared with the trie and with match results without copying.
    text: Arc<str>,
    literal: bool,
}

/// One level of a valid filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level<'a> {
    /// Matches this exact level.
    Literal(&'a str),
    /// `*`: matches any one level.
    Star,
    /// `abc*`: matches one level starting with the (non-empty) prefix.
    Prefix(&'a str),
    /// `>`: matches one or more levels; only ever last.
    Rest,
}

impl<'a> Level<'a> {
    /// Classifies one level of a filter already known to be valid.
    #[inline]
    pub(crate) fn of(level: &'a str) -> Self {
        match level {
            "*" => Level::Star,
            ">" => Level::Rest,
            _ => match level.strip_suffix('*') {
                Some(prefix) => Level::Prefix(prefix),
                None => Level::Literal(level),
            },
        }
    }

    /// Does this level match one topic level? `first` is true for the topic's first level, where
    /// `*` and `>` refuse system (`$`) topics. `>` matches here as the start of its run.
    #[inline]
    pub(crate) fn matches(self, level: &str, first: bool) -> bool {
        match self {
            Level::Literal(l) => l == level,
            Level::Star | Level::Rest => !(first && level.starts_with('$')),
            Level::Prefix(p) => level.starts_with(p),
        }
    }
}

impl Filter {
    /// Parses a native filter.
    pub fn parse(text: &str) -> Result<Filter, TopicError> {
        let literal = check(text)?;
        Ok(Filter {
            text: Arc::from(text),
            literal,
        })
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the filter has no wildcard level (it names exactly one topic).
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Does this filter match this (valid) topic? The reference semantics; O(levels).
    pub fn matches(&self, topic: &str) -> bool {
        let mut filter = self.text.split('/');
        let mut topic_levels = topic.split('/');
        let mut first = true;
        loop {
            match (filter.next(), topic_levels.next()) {
                (None, None) => return true,
                (Some(f), Some(t)) => {
                    let level = Level::of(f);
                    if !level.matches(t, first) {
                        return false;
                    }
                    if level == Level::Rest {
                        return true;
                    }
                }
                _ => return false,
            }
            first = false;
        }
    }

    /// The levels of the filter, first to last.
    pub(crate) fn levels(&self) -> impl Iterator<Item = Level<'_>> {
        self.text.split('/').map(Level::of)
    }

    /// The shared filter text.
    pub(crate) fn shared_text(&self) -> &Arc<str> {
        &self.text
    }
}

/// Validates a native filter; returns true when it has no wildcard.
fn check(text: &str) -> Result<bool, TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: text.len() });
    }
    let mut literal = true;
    let mut index = 0;
    let mut rest = Some(text);
    while let Some(r) = rest {
        let (level, tail) = split_level(r);
        rest = tail;
        if level.is_empty() {
            return Err(TopicError::EmptyLevel { index });
        }
        for b in level.bytes() {
            match b {
                0 => return Err(TopicError::Nul),
                b'+' | b'#' => return Err(TopicError::MqttWildcard { index }),
                _ => {}
            }
        }
        let wildcard = match level {
            "*" => true,
            ">" if tail.is_none() => true,
            _ => {
                let body = level.strip_suffix('*').unwrap_or(level);
                if body.contains(['*', '>']) {
                    return Err(TopicError::InvalidWildcard { index });
                }
                body.len() != level.len()
            }
        };
        literal &= !wildcard;
        index += 1;
    }
    check_levels(index)?;
    Ok(literal)
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Filter {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Filter::parse(s)
    }
}

impl AsRef<str> for Filter {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    #[test]
    fn design_example() {
        let filter = f("orders/*/us/>");
        assert!(filter.matches("orders/17/us/ny/store-4"));
        assert!(filter.matches("orders/17/us/ny"));
        assert!(!filter.matches("orders/17/us"));
        assert!(!filter.matches("orders/17/eu/x"));
        assert!(!filter.is_literal());
    }

    #[test]
    fn literal_filters() {
        let filter = f("a/b/c");
        assert!(filter.is_literal());
        assert!(filter.matches("a/b/c"));
        assert!(!filter.matches("a/b"));
        assert!(!filter.matches("a/b/c/d"));
        assert!(!filter.matches("a/b/cd"));
        assert!(f("$SYS/x").matches("$SYS/x"));
    }

    #[test]
    fn star_matches_exactly_one_level() {
        let filter = f("a/*/c");
        assert!(filter.matches("a/b/c"));
        assert!(!filter.matches("a/c"));
        assert!(!filter.matches("a/b/b/c"));
        assert!(f("*").matches("a"));
        assert!(!f("*").matches("a/b"));
        assert!(
            f("a/*").matches("a/$b"),
            "`$` only matters in the first level"
        );
    }

    #[test]
    fn prefix_star_matches_one_level_by_prefix() {
        let filter = f("a/ab*/c");
        assert!(!filter.is_literal());
        assert!(
            filter.matches("a/ab/c"),
            "the rest of the level may be empty"
        );
        assert!(filter.matches("a/abc/c"));
        assert!(!filter.matches("a/a/c"));
        assert!(!filter.matches("a/ba/c"));
        assert!(!filter.matches("a/abc/d/c"));
        assert!(
            f("$SYS*/x").matches("$SYS-1/x"),
            "a `$` prefix names system topics"
        );
        assert!(f("é*").matches("éa"));
    }

    #[test]
    fn rest_needs_at_least_one_level() {
        let filter = f("a/>");
        assert!(filter.matches("a/b"));
        assert!(filter.matches("a/b/c/d"));
        assert!(!filter.matches("a"));
        assert!(!filter.matches("b/c"));
        assert!(f(">").matches("a"));
        assert!(f(">").matches("a/b/c"));
    }

    #[test]
    fn first_level_wildcards_skip_system_topics() {
        for filter in [">", "*", "*/b", "*/>"] {
            let filter = f(filter);
            assert!(!filter.matches("$SYS"), "{filter}");
            assert!(!filter.matches("$SYS/b"), "{filter}");
        }
        assert!(f("$SYS/>").matches("$SYS/b"));
        assert!(f("$SYS/*").matches("$SYS/b"));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Filter::parse(""), Err(TopicError::Empty));
        assert_eq!(
            Filter::parse("a//b"),
            Err(TopicError::EmptyLevel { index: 1 })
        );
        assert_eq!(
            Filter::parse("a/"),
            Err(TopicError::EmptyLevel { index: 1 })
        );
        assert_eq!(Filter::parse("/"), Err(TopicError::EmptyLevel { index: 0 }));
        assert_eq!(Filter::parse("a\0"), Err(TopicError::Nul));
        for (text, index) in [
            ("a/>/b", 1),
            ("a*b", 0),
            ("a/**", 1),
            ("*a", 0),
            ("a>", 0),
            (">a", 0),
            ("a/>>", 1),
            ("a/b*>", 1),
        ] {
            assert_eq!(
                Filter::parse(text),
                Err(TopicError::InvalidWildcard { index }),
                "{text}"
            );
        }
        for (text, index) in [("a/+", 1), ("#", 0), ("a/b#", 1), ("+x", 0)] {
            assert_eq!(
                Filter::parse(text),
                Err(TopicError::MqttWildcard { index }),
                "{text}"
            );
        }
    }

    #[test]
    fn limits() {
        assert!(Filter::parse(&"x".repeat(250)).is_ok());
        assert_eq!(
            Filter::parse(&"x".repeat(251)),
            Err(TopicError::TooLong { len: 251 })
        );
        let many = vec!["*"; 125].join("/");
        assert!(Filter::parse(&many).is_ok());
        let too_many = vec!["*"; 128].join("/");
        assert_eq!(
            Filter::parse(&too_many),
            Err(TopicError::TooLong { len: 255 })
        );
    }

    #[test]
    fn text_round_trips() {
        let filter: Filter = "orders/us*/>".parse().unwrap();
        assert_eq!(filter.as_str(), "orders/us*/>");
        assert_eq!(filter.to_string(), "orders/us*/>");
        assert_eq!(Filter::parse(filter.as_str()), Ok(filter.clone()));
        assert_eq!(
            filter.levels().collect::<Vec<_>>(),
            [Level::Literal("orders"), Level::Prefix("us"), Level::Rest]
        );
    }
}
