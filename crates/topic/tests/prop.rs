//! Property tests: the trie and its cache against the naive matcher, the retained tree against
//! filtering every stored topic.

use meshgate_topic::{Filter, MatchCache, Matches, NaiveMatcher, RetainTree, Trie, validate_topic};
use proptest::prelude::*;
use proptest::sample::select;

/// Level names shared by topics and filters so that matches actually happen.
const TOPIC_FIRST: &[&str] = &["a", "b", "ab", "$sys", "$s"];
const TOPIC_LEVELS: &[&str] = &["a", "b", "ab", "abc", "x", "$a"];
const FILTER_FIRST: &[&str] = &["a", "b", "ab", "$sys", "*", "a*", "ab*", "$s*", ">"];
const FILTER_LEVELS: &[&str] = &["a", "b", "ab", "abc", "*", "a*", "ab*", ">"];

fn topic() -> impl Strategy<Value = String> {
    (
        select(TOPIC_FIRST),
        prop::collection::vec(select(TOPIC_LEVELS), 0..4),
    )
        .prop_map(|(first, rest)| {
            let mut t = first.to_string();
            for level in rest {
                t.push('/');
                t.push_str(level);
            }
            t
        })
}

fn filter() -> impl Strategy<Value = Filter> {
    (
        select(FILTER_FIRST),
        prop::collection::vec(select(FILTER_LEVELS), 0..4),
    )
        .prop_map(|(first, rest)| {
            let mut levels = vec![first];
            levels.extend(rest);
            let last = levels.len() - 1;
            // `>` only ends a filter.
            let text: Vec<&str> = levels
                .iter()
                .enumerate()
                .map(|(i, l)| if *l == ">" && i != last { "*" } else { l })
                .collect();
            Filter::parse(&text.join("/")).expect("generated filters are valid")
        })
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        filter: usize,
        group: Option<u8>,
        key: u8,
    },
    Remove {
        filter: usize,
        group: Option<u8>,
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let group = prop::option::of(0u8..2);
    (any::<bool>(), 0usize..16, group, 0u8..3).prop_map(|(insert, filter, group, key)| {
        if insert {
            Op::Insert { filter, group, key }
        } else {
            Op::Remove { filter, group, key }
        }
    })
}

type Entry = (u8, u32);
type Normal = (Vec<Entry>, Vec<(String, String, Vec<Entry>)>);

/// A match result as sorted multisets, comparable whatever the order of discovery.
fn normal(m: &Matches<u8, u32>) -> Normal {
    let mut plain = m.subscribers().to_vec();
    plain.sort_unstable();
    let mut groups: Vec<_> = m
        .groups()
        .map(|g| {
            let mut members = g.members.to_vec();
            members.sort_unstable();
            (g.group.to_string(), g.filter.to_string(), members)
        })
        .collect();
    groups.sort();
    (plain, groups)
}

const GROUPS: [&str; 2] = ["g1", "g2"];

proptest! {
    #[test]
    fn trie_and_cache_equal_the_naive_matcher(
        filters in prop::collection::vec(filter(), 1..16),
        topics in prop::collection::vec(topic(), 1..10),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut trie = Trie::new();
        let mut naive = NaiveMatcher::new();
        // A one-set cache evicts all the time; a larger one mostly hits.
        let mut tiny = MatchCache::new(2);
        let mut roomy = MatchCache::new(64);
        let (mut got, mut want) = (Matches::new(), Matches::new());
        for (stamp, op) in ops.into_iter().enumerate() {
            let stamp = stamp as u32;
            match op {
                Op::Insert { filter, group, key } => {
                    let filter = &filters[filter % filters.len()];
                    let group = group.map(|g| GROUPS[g as usize]);
                    let new = trie.insert(filter, group, key, stamp);
                    prop_assert_eq!(new, naive.insert(filter, group, key, stamp));
                }
                Op::Remove { filter, group, key } => {
                    let filter = &filters[filter % filters.len()];
                    let group = group.map(|g| GROUPS[g as usize]);
                    prop_assert_eq!(trie.remove(filter, group, key), naive.remove(filter, group, key));
                }
            }
            prop_assert_eq!(trie.len(), naive.len());
            prop_assert_eq!(trie.filter_count(), naive.filter_count());
            prop_assert_eq!(trie.is_empty(), naive.is_empty());
            for topic in &topics {
                prop_assert_eq!(validate_topic(topic), Ok(()));
                naive.match_into(topic, &mut want);
                trie.match_into(topic, &mut got);
                let want = normal(&want);
                prop_assert_eq!(&normal(&got), &want, "trie, topic {}", topic);
                prop_assert_eq!(&normal(tiny.lookup(&trie, topic)), &want, "tiny cache, topic {}", topic);
                for _ in 0..2 {
                    prop_assert_eq!(&normal(roomy.lookup(&trie, topic)), &want, "cache, topic {}", topic);
                }
            }
        }
        let mut listed = Vec::new();
        trie.for_each(|f, g, k, v| listed.push((f.to_string(), g.map(String::from), k, *v)));
        prop_assert_eq!(listed.len(), trie.len());
        listed.sort();
        listed.dedup();
        prop_assert_eq!(listed.len(), trie.len(), "for_each visits each entry once");
        prop_assert!(roomy.hits() > 0);
    }

    #[test]
    fn retained_search_equals_filtering(
        stored in prop::collection::vec((topic(), any::<bool>()), 0..40),
        filters in prop::collection::vec(filter(), 1..10),
    ) {
        let mut tree = RetainTree::new();
        let mut reference: Vec<(String, usize)> = Vec::new();
        for (i, (topic, keep)) in stored.into_iter().enumerate() {
            if keep {
                let old = reference.iter().position(|(t, _)| *t == topic).map(|p| reference.remove(p).1);
                prop_assert_eq!(tree.insert(&topic, i), old);
                reference.push((topic, i));
            } else {
                let old = reference.iter().position(|(t, _)| *t == topic).map(|p| reference.remove(p).1);
                prop_assert_eq!(tree.remove(&topic), old);
            }
            prop_assert_eq!(tree.len(), reference.len());
        }
        for filter in &filters {
            let mut got = Vec::new();
            tree.for_each_match(filter, |t, v| got.push((t.to_string(), *v)));
            got.sort();
            let mut want: Vec<_> = reference.iter().filter(|(t, _)| filter.matches(t)).cloned().collect();
            want.sort();
            prop_assert_eq!(got, want, "filter {}", filter);
        }
    }
}
