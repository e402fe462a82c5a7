//! Why a topic or a filter was refused.

use thiserror::Error;

use crate::topic::{MAX_LEVELS, MAX_TOPIC_BYTES};

/// Reasons why a topic, a native filter or an MQTT filter is invalid.
///
/// The messages speak of a "topic" for filters too: a filter is a topic with wildcards. Level
/// positions in the fields are 0-based; the messages count levels from 1, as a user would.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// The text is empty.
    #[error("topic is empty")]
    Empty,
    /// The text is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {len} bytes, the limit is {MAX_TOPIC_BYTES}")]
    TooLong {
        /// Length of the refused text in bytes.
        len: usize,
    },
    /// The text has more than [`MAX_LEVELS`] levels.
    #[error("topic has {levels} levels, the limit is {MAX_LEVELS}")]
    TooManyLevels {
        /// Number of levels of the refused text.
        levels: usize,
    },
    /// A level is empty (leading or trailing `/`, or `//`).
    #[error("level {} is empty (no leading or trailing `/`, no `//`)", index + 1)]
    EmptyLevel {
        /// 0-based position of the empty level.
        index: usize,
    },
    /// A published topic contains a wildcard character.
    #[error("a published topic cannot contain `*`, `>`, `+` or `#`")]
    WildcardInTopic,
    /// The text contains a NUL character.
    #[error("topic contains a NUL character")]
    Nul,
    /// A wildcard is misplaced in a filter.
    #[error(
        "misplaced wildcard in level {} (`*` alone or at the end of a level, `>` alone as the last level; MQTT: `+` alone in a level, `#` alone as the last level)",
        index + 1
    )]
    InvalidWildcard {
        /// 0-based position of the offending level.
        index: usize,
    },
    /// A native filter uses an MQTT wildcard (`+` or `#`).
    #[error("`+` and `#` are MQTT wildcards, native filters use `*` and `>` (level {})", index + 1)]
    MqttWildcard {
        /// 0-based position of the offending level.
        index: usize,
    },
    /// An MQTT filter uses a native wildcard character (`*` or `>`).
    #[error("`*` and `>` are not allowed in an MQTT filter, use `+` and `#` (level {})", index + 1)]
    NativeWildcardInMqtt {
        /// 0-based position of the offending level.
        index: usize,
    },
    /// A `$share/...` filter is malformed.
    #[error(
        "invalid shared subscription: expected `$share/<group>/<filter>` with a non-empty group without `/`, `+`, `#`, `*` or `>`"
    )]
    InvalidSharedSubscription,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_clear() {
        assert_eq!(
            TopicError::TooLong { len: 300 }.to_string(),
            "topic is 300 bytes, the limit is 250"
        );
        assert_eq!(
            TopicError::TooManyLevels { levels: 129 }.to_string(),
            "topic has 129 levels, the limit is 128"
        );
        assert!(
            TopicError::EmptyLevel { index: 0 }
                .to_string()
                .starts_with("level 1 is empty")
        );
        for e in [
            TopicError::Empty,
            TopicError::WildcardInTopic,
            TopicError::Nul,
            TopicError::InvalidWildcard { index: 2 },
            TopicError::MqttWildcard { index: 2 },
            TopicError::NativeWildcardInMqtt { index: 2 },
            TopicError::InvalidSharedSubscription,
        ] {
            let m = e.to_string();
            assert!(m.chars().next().is_some_and(|c| !c.is_uppercase()), "{m}");
            assert!(!m.ends_with('.'), "{m}");
        }
    }
}
