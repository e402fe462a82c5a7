//! The subscription trie: literal filters in one flat map, wildcard filters in a level tree.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::fast::RandomState;

use crate::entry::Entry;
use crate::filter::Filter;
use crate::matches::Matches;
use crate::wild::WildTree;

/// Distinguishes tries, so that a cache never mistakes one trie's generation for another's.
static NEXT_TRIE_ID: AtomicU64 = AtomicU64::new(1);

/// A subscription trie mapping filters to subscribers `(K, V)`: K identifies the subscriber
/// (one entry per (filter, group, K)), V is data returned with it (options, a handle...).
///
/// Literal filters (no wildcard) live in one flat hash map keyed by the whole filter, so a topic
/// that only literal filters name costs one hash lookup whatever the number of subscriptions.
/// Filters with a wildcard live in a tree of levels (see `wild.rs`) whose nodes have literal
/// children, a `*` child, `prefix*` children and the filters ending in `>`; a match walks it
/// once, level by level, visiting each node at most once.
pub struct Trie<K, V> {
    /// Keyed by the filter's shared text: the trie stores no copy of it.
    literals: HashMap<Arc<str>, Entry<K, V>, RandomState>,
    wild: WildTree<K, V>,
    len: usize,
    filters: usize,
    generation: u64,
    id: u64,
}

impl<K: Copy + Eq + Hash, V: Clone> Trie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            literals: HashMap::default(),
            wild: WildTree::new(),
            len: 0,
            filters: 0,
            generation: 0,
            id: NEXT_TRIE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Adds or replaces (same filter, group, key) the entry. Returns true if it was new.
    pub fn insert(&mut self, filter: &Filter, group: Option<&str>, key: K, value: V) -> bool {
        // A replaced value changes what a match returns, so it bumps the generation too.
        self.generation += 1;
        let entry = if filter.is_literal() {
            self.literals
                .entry(filter.shared_text().clone())
                .or_insert_with(|| Entry::new(filter.shared_text().clone()))
        } else {
            self.wild.entry_or_insert(filter)
        };
        if entry.is_empty() {
            self.filters += 1;
        }
        let new = entry.insert(group, key, value);
        self.len += usize::from(new);
        new
    }

    /// Removes the entry; returns its value if it existed. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &Filter, group: Option<&str>, key: K) -> Option<V> {
        let mut filter_gone = false;
        let value = if filter.is_literal() {
            let entry = self.literals.get_mut(filter.as_str())?;
            let value = entry.remove(group, key)?;
            if entry.is_empty() {
                self.literals.remove(filter.as_str());
                filter_gone = true;
            }
            value
        } else {
            self.wild.remove(filter, group, key, &mut filter_gone)?
        };
        self.generation += 1;
        self.len -= 1;
        self.filters -= usize::from(filter_gone);
        Some(value)
    }

    /// Number of entries (filter, group, key).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the trie holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters (with at least one entry).
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Bumped by every insert/remove that changes the trie; caches compare it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Identifies this trie among all tries of the process (caches compare it too).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Clears `out` and fills it with every entry whose filter matches `topic`.
    /// Allocation-free once `out` has grown to its working size. `topic` must be valid.
    pub fn match_into(&self, topic: &str, out: &mut Matches<K, V>) {
        out.clear();
        if let Some(entry) = self.literals.get(topic) {
            entry.add_to(out);
        }
        if !self.wild.is_empty() {
            self.wild.match_into(topic, out);
        }
    }

    /// A trie whose level hashes keep only the bits of `mask`, so that they collide.
    #[cfg(test)]
    pub(crate) fn with_narrow_hashes(mask: u64) -> Self {
        let mut trie = Self::new();
        trie.wild.narrow_hashes(mask);
        trie
    }

    /// Visits every (filter, group, key, value) entry (for admin listings, mesh digests).
    pub fn for_each(&self, mut f: impl FnMut(&str, Option<&str>, K, &V)) {
        for entry in self.literals.values() {
            entry.for_each(&mut f);
        }
        self.wild.for_each(&mut f);
    }
}

impl<K: Copy + Eq + Hash, V: Clone> Default for Trie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for Trie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .field("literal_filters", &self.literals.len())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    fn plain(trie: &Trie<u32, u32>, topic: &str) -> Vec<u32> {
        let mut out = Matches::new();
        trie.match_into(topic, &mut out);
        let mut keys: Vec<u32> = out.subscribers().iter().map(|(k, _)| *k).collect();
        keys.sort();
        keys
    }

    #[test]
    fn matches_literal_and_wildcard_filters() {
        let mut t = Trie::new();
        let filters = [
            "orders/17/us/ny",
            "orders/*/us/>",
            "orders/1*/us/ny",
            "orders/17/*/ny",
            "orders/>",
            ">",
            "*/17/us/ny",
            "orders/17/eu/>",
            "orders/17/us/ny/>",
        ];
        for (i, filter) in filters.iter().enumerate() {
            assert!(t.insert(&f(filter), None, i as u32, 0));
        }
        assert_eq!(plain(&t, "orders/17/us/ny"), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(plain(&t, "orders/17/us"), [4, 5]);
        assert_eq!(plain(&t, "orders"), [5]);
        assert_eq!(plain(&t, "orders/17/us/ny/store-4"), [1, 4, 5, 8]);
        assert_eq!(plain(&t, "$SYS/17/us/ny"), Vec::<u32>::new());
        assert_eq!(t.len(), 9);
        assert_eq!(t.filter_count(), 9);
    }

    #[test]
    fn prefix_lengths_are_tracked() {
        let mut t = Trie::new();
        t.insert(&f("a/b*"), None, 1, 0);
        t.insert(&f("a/bc*"), None, 2, 0);
        t.insert(&f("a/bcd*/x"), None, 3, 0);
        t.insert(&f("a/é*"), None, 4, 0);
        assert_eq!(plain(&t, "a/b"), [1]);
        assert_eq!(plain(&t, "a/bc"), [1, 2]);
        assert_eq!(plain(&t, "a/bcde"), [1, 2]);
        assert_eq!(plain(&t, "a/bcd/x"), [3]);
        assert_eq!(plain(&t, "a/éa"), [4]);
        assert_eq!(plain(&t, "a/ée"), [4], "no slicing inside a character");
        t.remove(&f("a/bc*"), None, 2);
        assert_eq!(plain(&t, "a/bcde"), [1]);
        t.remove(&f("a/b*"), None, 1);
        t.remove(&f("a/bcd*/x"), None, 3);
        t.remove(&f("a/é*"), None, 4);
        assert!(t.wild.is_empty());
        assert_eq!(t.wild.node_count(), 1, "every node but the root pruned");
    }

    #[test]
    fn entries_counts_and_generation() {
        let mut t: Trie<u32, u32> = Trie::default();
        assert!(t.is_empty());
        let g0 = t.generation();
        assert!(t.insert(&f("a/*"), None, 1, 10));
        assert!(t.insert(&f("a/*"), Some("g"), 1, 11));
        assert!(t.insert(&f("a/*"), Some("g"), 2, 12));
        assert!(!t.insert(&f("a/*"), None, 1, 13), "replaced");
        assert!(t.insert(&f("a/b"), None, 1, 14));
        assert_eq!((t.len(), t.filter_count()), (4, 2));
        assert!(t.generation() > g0);
        let g1 = t.generation();
        assert_eq!(t.remove(&f("a/*"), None, 9), None);
        assert_eq!(t.remove(&f("x/*"), None, 1), None);
        assert_eq!(t.remove(&f("a/b"), Some("g"), 1), None);
        assert_eq!(
            t.generation(),
            g1,
            "a remove that changes nothing keeps the generation"
        );
        assert_eq!(t.remove(&f("a/*"), None, 1), Some(13));
        assert_eq!((t.len(), t.filter_count()), (3, 2));
        assert_eq!(t.remove(&f("a/b"), None, 1), Some(14));
        assert_eq!((t.len(), t.filter_count()), (2, 1));
        assert!(t.generation() > g1);
        let mut seen = Vec::new();
        t.for_each(|filter, group, k, v| {
            seen.push((filter.to_string(), group.map(String::from), k, *v))
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                ("a/*".to_string(), Some("g".to_string()), 1, 11),
                ("a/*".to_string(), Some("g".to_string()), 2, 12)
            ]
        );
    }

    #[test]
    fn groups_are_per_filter_and_name() {
        let mut t = Trie::new();
        t.insert(&f("jobs/>"), Some("w"), 1, 0);
        t.insert(&f("jobs/>"), Some("w"), 2, 0);
        t.insert(&f("jobs/a"), Some("w"), 3, 0);
        t.insert(&f("jobs/*"), Some("v"), 4, 0);
        t.insert(&f("jobs/*"), None, 5, 0);
        let mut out = Matches::new();
        t.match_into("jobs/a", &mut out);
        assert_eq!(out.subscribers(), &[(5, 0)]);
        let mut groups: Vec<(String, String, Vec<u32>)> = out
            .groups()
            .map(|g| {
                let mut keys: Vec<u32> = g.members.iter().map(|(k, _)| *k).collect();
                keys.sort();
                (g.group.to_string(), g.filter.to_string(), keys)
            })
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                ("v".to_string(), "jobs/*".to_string(), vec![4]),
                ("w".to_string(), "jobs/>".to_string(), vec![1, 2]),
                ("w".to_string(), "jobs/a".to_string(), vec![3]),
            ]
        );
        t.match_into("other", &mut out);
        assert!(out.is_empty());
    }

    proptest::proptest! {
        /// Colliding level hashes (two bits left) must not change any answer.
        #[test]
        fn colliding_hashes_change_nothing(
            ops in proptest::collection::vec((0usize..12, proptest::option::of(0u8..2), 0u32..3, proptest::bool::ANY), 1..60),
        ) {
            const FILTERS: [&str; 12] = [
                "a/*", "a/b", "a/bc*", "a/b*", "*/b", "a/>", ">", "ab/*/c", "a/b/c", "b*/x", "abc*/>", "a/bb*/c",
            ];
            const TOPICS: [&str; 8] = ["a/b", "a/bc", "a/bcd", "ab/x/c", "a/b/c", "bb/x", "abcd/e/f", "a/bbb/c"];
            let mut trie = Trie::with_narrow_hashes(3);
            let mut naive = crate::NaiveMatcher::new();
            for (i, (f, g, k, insert)) in ops.into_iter().enumerate() {
                let filter = Filter::parse(FILTERS[f]).unwrap();
                let group = g.map(|g| ["g", "h"][g as usize]);
                if insert {
                    proptest::prop_assert_eq!(trie.insert(&filter, group, k, i as u32), naive.insert(&filter, group, k, i as u32));
                } else {
                    proptest::prop_assert_eq!(trie.remove(&filter, group, k), naive.remove(&filter, group, k));
                }
                let (mut got, mut want) = (Matches::new(), Matches::new());
                for topic in TOPICS {
                    trie.match_into(topic, &mut got);
                    naive.match_into(topic, &mut want);
                    let mut g: Vec<_> = got.subscribers().to_vec();
                    let mut w: Vec<_> = want.subscribers().to_vec();
                    g.sort();
                    w.sort();
                    proptest::prop_assert_eq!(g, w, "topic {}", topic);
                    proptest::prop_assert_eq!(got.group_count(), want.group_count());
                }
            }
            proptest::prop_assert_eq!(trie.len(), naive.len());
            proptest::prop_assert_eq!(trie.filter_count(), naive.filter_count());
        }
    }

    #[test]
    fn shareable_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Trie<u64, Arc<str>>>();
        shared::<crate::MatchCache<u64, Arc<str>>>();
        shared::<crate::RetainTree<Arc<str>>>();
    }

    #[test]
    fn invalid_topics_do_not_panic() {
        let mut t = Trie::new();
        for filter in ["*", ">", "a*", "*/*", "a/>"] {
            t.insert(&f(filter), None, 1, 0);
        }
        let mut out = Matches::new();
        for topic in ["", "/", "//", "a//", "*", "a/>", "é", "\0"] {
            t.match_into(topic, &mut out);
        }
    }
}
