//! MQTT subscription filters (`+`, `#`, `$share/<group>/...`) translated to native filters.

use crate::error::TopicError;
use crate::filter::Filter;
use crate::topic::{MAX_TOPIC_BYTES, check_levels, split_level};

/// One MQTT SUBSCRIBE filter translated to the native grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttFilter {
    /// Native filters: one, or two for `a/#` (`a` and `a/>`).
    pub filters: Vec<Filter>,
    /// The queue group of a `$share/<group>/...` subscription.
    pub group: Option<String>,
}

/// Parses an MQTT subscription filter (`+`, `#`, `$share/<group>/<filter>`).
///
/// `+` becomes `*`; `a/#` becomes both `a` and `a/>` (MQTT's `#` also matches the parent level);
/// `#` alone becomes `>`, which matches every non-system topic. `*` and `>` are refused: they are
/// the native wildcards and would not mean in MQTT what a user expects.
pub fn parse_mqtt_filter(text: &str) -> Result<MqttFilter, TopicError> {
    let (group, filter) = match text.strip_prefix("$share") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let (group, filter) = shared(rest)?;
            (Some(group.to_string()), filter)
        }
        _ => (None, text),
    };
    Ok(MqttFilter {
        filters: translate(filter)?,
        group,
    })
}

/// Splits `/<group>/<filter>` (what follows `$share`).
fn shared(rest: &str) -> Result<(&str, &str), TopicError> {
    let (group, filter) = rest
        .strip_prefix('/')
        .and_then(|r| r.split_once('/'))
        .ok_or(TopicError::InvalidSharedSubscription)?;
    let bad_group = group.is_empty()
        || group.len() > MAX_TOPIC_BYTES
        || group.contains(['+', '#', '*', '>', '\0']);
    if bad_group || filter.is_empty() {
        return Err(TopicError::InvalidSharedSubscription);
    }
    Ok((group, filter))
}

/// Translates the filter part of an MQTT subscription.
fn translate(text: &str) -> Result<Vec<Filter>, TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: text.len() });
    }
    let mut native = String::with_capacity(text.len());
    let mut multi = false;
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
                b'*' | b'>' => return Err(TopicError::NativeWildcardInMqtt { index }),
                _ => {}
            }
        }
        if index > 0 {
            native.push('/');
        }
        match level {
            "+" => native.push('*'),
            "#" if tail.is_none() => {
                native.push('>');
                multi = true;
            }
            _ if level.contains(['+', '#']) => {
                return Err(TopicError::InvalidWildcard { index });
            }
            _ => native.push_str(level),
        }
        index += 1;
    }
    check_levels(index)?;
    let all = Filter::parse(&native)?;
    if !multi || index == 1 {
        return Ok(vec![all]);
    }
    // `a/#` also matches `a` itself: drop the trailing `/>`.
    let parent = Filter::parse(&native[..native.len() - 2])?;
    Ok(vec![parent, all])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(text: &str) -> Vec<String> {
        let m = parse_mqtt_filter(text).unwrap();
        m.filters.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn translates_wildcards() {
        assert_eq!(native("a/b"), ["a/b"]);
        assert_eq!(native("a/+/c"), ["a/*/c"]);
        assert_eq!(native("+"), ["*"]);
        assert_eq!(native("a/#"), ["a", "a/>"]);
        assert_eq!(native("a/+/#"), ["a/*", "a/*/>"]);
        assert_eq!(native("+/#"), ["*", "*/>"]);
        assert_eq!(native("#"), [">"]);
        assert_eq!(native("$SYS/#"), ["$SYS", "$SYS/>"]);
        assert_eq!(parse_mqtt_filter("a/b").unwrap().group, None);
    }

    #[test]
    fn hash_matches_the_parent_and_skips_system_topics() {
        let m = parse_mqtt_filter("sport/#").unwrap();
        let any = |t: &str| m.filters.iter().any(|f| f.matches(t));
        assert!(any("sport"));
        assert!(any("sport/tennis/player1"));
        assert!(!any("sports"));
        let all = parse_mqtt_filter("#").unwrap();
        assert!(all.filters[0].matches("a/b/c"));
        assert!(!all.filters[0].matches("$SYS/uptime"));
        let plus = parse_mqtt_filter("+/x").unwrap();
        assert!(!plus.filters[0].matches("$SYS/x"));
    }

    #[test]
    fn refuses_misplaced_wildcards() {
        for (text, index) in [
            ("a/#/b", 1),
            ("#/a", 0),
            ("a+", 0),
            ("a/b#", 1),
            ("a/+b/c", 1),
        ] {
            assert_eq!(
                parse_mqtt_filter(text),
                Err(TopicError::InvalidWildcard { index }),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_native_wildcards() {
        for (text, index) in [("a/*", 1), ("a/>", 1), ("ab*", 0), ("a/b>c", 1)] {
            assert_eq!(
                parse_mqtt_filter(text),
                Err(TopicError::NativeWildcardInMqtt { index }),
                "{text}"
            );
        }
    }

    #[test]
    fn grammar_errors() {
        assert_eq!(parse_mqtt_filter(""), Err(TopicError::Empty));
        assert_eq!(
            parse_mqtt_filter("a//#"),
            Err(TopicError::EmptyLevel { index: 1 })
        );
        assert_eq!(
            parse_mqtt_filter("/a"),
            Err(TopicError::EmptyLevel { index: 0 })
        );
        assert_eq!(parse_mqtt_filter("a\0"), Err(TopicError::Nul));
        assert!(parse_mqtt_filter(&"x".repeat(250)).is_ok());
        assert_eq!(
            parse_mqtt_filter(&"x".repeat(251)),
            Err(TopicError::TooLong { len: 251 })
        );
        let deep = format!("{}/#", vec!["+"; 124].join("/"));
        assert_eq!(native(&deep).len(), 2);
    }

    #[test]
    fn shared_subscriptions() {
        let m = parse_mqtt_filter("$share/workers/jobs/#").unwrap();
        assert_eq!(m.group.as_deref(), Some("workers"));
        assert_eq!(native("$share/workers/jobs/#"), ["jobs", "jobs/>"]);
        assert_eq!(native("$share/g/+"), ["*"]);
        assert_eq!(native("$share/g/$SYS/x"), ["$SYS/x"]);
        let long = format!("$share/g/{}", "x".repeat(250));
        assert!(
            parse_mqtt_filter(&long).is_ok(),
            "the limit is on the filter part"
        );
        // Not a shared subscription, just a system topic filter.
        assert_eq!(native("$shared/x"), ["$shared/x"]);
        assert_eq!(parse_mqtt_filter("$shared/x").unwrap().group, None);
    }

    #[test]
    fn shared_subscription_errors() {
        for text in [
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/g+/a",
            "$share/g#/a",
            "$share/+/a",
            "$share/g*/a",
            "$share/g>/a",
        ] {
            assert_eq!(
                parse_mqtt_filter(text),
                Err(TopicError::InvalidSharedSubscription),
                "{text}"
            );
        }
        assert_eq!(
            parse_mqtt_filter("$share/g/a/#/b"),
            Err(TopicError::InvalidWildcard { index: 1 })
        );
        assert_eq!(
            parse_mqtt_filter("$share/g/a//b"),
            Err(TopicError::EmptyLevel { index: 1 })
        );
    }
}
