//! Feeds arbitrary UTF-8 to the topic and filter parsers and checks their invariants.
//!
//! An input containing a newline is also read as `filter\ntopic`: when both parse, the trie,
//! the retained tree and `Filter::matches` must agree on whether the filter matches the topic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_topic::{
    Filter, MatchCache, Matches, RetainTree, Trie, parse_mqtt_filter, validate_topic,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    parse_one(text);
    if let Some((filter, topic)) = text.split_once('\n') {
        parse_one(filter);
        parse_one(topic);
        match_pair(filter, topic);
    }
});

fn parse_one(text: &str) {
    let topic_ok = validate_topic(text).is_ok();
    let filter = Filter::parse(text);
    if let Ok(f) = &filter {
        assert_eq!(
            Filter::parse(f.as_str()).as_ref(),
            Ok(f),
            "reparse {text:?}"
        );
        assert_eq!(f.to_string(), text);
        // Matching any text, even an invalid topic, must not panic.
        let _ = f.matches(text);
    }
    if topic_ok {
        let f = filter
            .as_ref()
            .expect("a valid topic is a valid literal filter");
        assert!(f.is_literal(), "{text:?}");
        assert!(f.matches(text), "{text:?} matches itself");
        assert!(matched_by_trie(f, text));
    }
    if let Ok(m) = parse_mqtt_filter(text) {
        assert!(matches!(m.filters.len(), 1 | 2), "{text:?}");
        assert_eq!(m.group.is_some(), text.starts_with("$share/"), "{text:?}");
        for f in &m.filters {
            assert_eq!(Filter::parse(f.as_str()).as_ref(), Ok(f));
        }
    }
}

fn matched_by_trie(filter: &Filter, topic: &str) -> bool {
    let mut trie = Trie::new();
    trie.insert(filter, None, 1u8, ());
    trie.insert(filter, Some("g"), 2u8, ());
    let mut out = Matches::new();
    trie.match_into(topic, &mut out);
    let plain = !out.subscribers().is_empty();
    assert_eq!(plain, out.groups().count() == 1);
    let mut cache = MatchCache::new(2);
    assert_eq!(cache.lookup(&trie, topic).is_empty(), !plain);
    assert_eq!(trie.remove(filter, None, 1), Some(()));
    assert_eq!(trie.remove(filter, Some("g"), 2), Some(()));
    assert!(trie.is_empty());
    plain
}

fn match_pair(filter: &str, topic: &str) {
    let Ok(f) = Filter::parse(filter) else {
        return;
    };
    let mut trie = Trie::new();
    trie.insert(&f, None, 0u8, ());
    let mut out = Matches::new();
    // Invalid topics must not panic either.
    trie.match_into(topic, &mut out);
    if validate_topic(topic).is_err() {
        return;
    }
    let want = f.matches(topic);
    assert_eq!(!out.is_empty(), want, "trie: {filter:?} on {topic:?}");
    let mut retained = RetainTree::new();
    retained.insert(topic, ());
    let mut found = false;
    retained.for_each_match(&f, |t, _| found = t == topic);
    assert_eq!(found, want, "retained: {filter:?} on {topic:?}");
    assert_eq!(retained.remove(topic), Some(()));
    assert!(retained.is_empty());
    if let Ok(m) = parse_mqtt_filter(filter) {
        // An MQTT filter without wildcards means the same as the native one.
        if m.group.is_none() && !filter.contains(['+', '#']) {
            assert_eq!(m.filters, vec![f]);
        }
    }
}
