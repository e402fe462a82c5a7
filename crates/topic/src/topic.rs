//! Concrete (publishable) topics: limits and validation.

use crate::error::TopicError;

/// Longest topic or filter, in bytes.
pub const MAX_TOPIC_BYTES: usize = 250;

/// Most levels in a topic or filter.
///
/// With [`MAX_TOPIC_BYTES`] at 250 a text holds at most 125 levels (one byte per level plus the
/// separators), so the byte limit is always hit first; the level limit stays as a second guard
/// should the byte limit ever be raised.
pub const MAX_LEVELS: usize = 128;

/// Checks a concrete (publishable) topic.
///
/// A topic is 1 to [`MAX_TOPIC_BYTES`] bytes of UTF-8, levels separated by `/`, at most
/// [`MAX_LEVELS`] levels, no empty level, and no `*`, `>`, `+`, `#` or NUL.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    let bytes = topic.as_bytes();
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    if bytes.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: bytes.len() });
    }
    let mut level = 0;
    let mut level_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                if i == level_start {
                    return Err(TopicError::EmptyLevel { index: level });
                }
                level += 1;
                level_start = i + 1;
            }
            b'*' | b'>' | b'+' | b'#' => return Err(TopicError::WildcardInTopic),
            0 => return Err(TopicError::Nul),
            _ => {}
        }
    }
    if level_start == bytes.len() {
        return Err(TopicError::EmptyLevel { index: level });
    }
    check_levels(level + 1)
}

/// True if the topic's first level starts with `$`.
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

/// Refuses more than [`MAX_LEVELS`] levels.
pub(crate) fn check_levels(levels: usize) -> Result<(), TopicError> {
    if levels > MAX_LEVELS {
        return Err(TopicError::TooManyLevels { levels });
    }
    Ok(())
}

/// Splits off the first level: `("a", Some("b/c"))` for `"a/b/c"`, `("a", None)` for `"a"`.
#[inline]
pub(crate) fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` levels of one byte each: `2n - 1` bytes.
    fn levels(n: usize) -> String {
        vec!["a"; n].join("/")
    }

    #[test]
    fn accepts_ordinary_topics() {
        for t in [
            "a",
            "orders/17/us/ny/store-4",
            "$SYS/broker/load",
            "é/ü/日本",
            "a b/c-d.e",
        ] {
            assert_eq!(validate_topic(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn byte_limit_is_exact() {
        assert_eq!(validate_topic(&"x".repeat(250)), Ok(()));
        assert_eq!(
            validate_topic(&"x".repeat(251)),
            Err(TopicError::TooLong { len: 251 })
        );
        // Multi-byte characters count in bytes: 125 two-byte characters are 250 bytes.
        assert_eq!(validate_topic(&"é".repeat(125)), Ok(()));
        assert_eq!(
            validate_topic(&"é".repeat(126)),
            Err(TopicError::TooLong { len: 252 })
        );
    }

    #[test]
    fn level_limit_is_implied_by_the_byte_limit() {
        assert_eq!(levels(125).len(), 249);
        assert_eq!(validate_topic(&levels(125)), Ok(()));
        assert_eq!(
            validate_topic(&levels(128)),
            Err(TopicError::TooLong { len: 255 })
        );
        assert_eq!(
            validate_topic(&levels(129)),
            Err(TopicError::TooLong { len: 257 })
        );
        assert_eq!(check_levels(128), Ok(()));
        assert_eq!(
            check_levels(129),
            Err(TopicError::TooManyLevels { levels: 129 })
        );
    }

    #[test]
    fn refuses_empty_levels() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic("/"),
            Err(TopicError::EmptyLevel { index: 0 })
        );
        assert_eq!(
            validate_topic("/a"),
            Err(TopicError::EmptyLevel { index: 0 })
        );
        assert_eq!(
            validate_topic("a/"),
            Err(TopicError::EmptyLevel { index: 1 })
        );
        assert_eq!(
            validate_topic("a//b"),
            Err(TopicError::EmptyLevel { index: 1 })
        );
    }

    #[test]
    fn refuses_wildcards_and_nul() {
        for t in [
            "*", "a/*", "a/b*", "a/>", ">", "a/+/b", "#", "a/#", "a>b", "x+",
        ] {
            assert_eq!(validate_topic(t), Err(TopicError::WildcardInTopic), "{t}");
        }
        assert_eq!(validate_topic("a/\0b"), Err(TopicError::Nul));
    }

    #[test]
    fn system_topics() {
        assert!(is_system_topic("$SYS/x"));
        assert!(is_system_topic("$share"));
        assert!(!is_system_topic("a/$SYS"));
        assert!(!is_system_topic("SYS"));
    }

    #[test]
    fn split_level_walks_levels() {
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("a"), ("a", None));
        assert_eq!(split_level("a/"), ("a", Some("")));
    }
}
