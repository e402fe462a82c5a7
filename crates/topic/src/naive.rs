//! A naive matcher: the reference the trie is tested against.

use std::sync::Arc;

use crate::filter::Filter;
use crate::matches::Matches;

/// A list of subscriptions matched one by one with [`Filter::matches`]: O(subscriptions) per
/// match. The reference semantics for tests and benchmarks, never for serving.
#[derive(Clone, Debug)]
pub struct NaiveMatcher<K, V> {
    entries: Vec<(Filter, Option<Arc<str>>, K, V)>,
}

impl<K: Copy + Eq, V: Clone> NaiveMatcher<K, V> {
    /// An empty matcher.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn position(&self, filter: &Filter, group: Option<&str>, key: K) -> Option<usize> {
        self.entries
            .iter()
            .position(|(f, g, k, _)| f == filter && g.as_deref() == group && *k == key)
    }

    /// Adds or replaces (same filter, group, key) the entry. Returns true if it was new.
    pub fn insert(&mut self, filter: &Filter, group: Option<&str>, key: K, value: V) -> bool {
        match self.position(filter, group, key) {
            Some(i) => {
                self.entries[i].3 = value;
                false
            }
            None => {
                self.entries
                    .push((filter.clone(), group.map(Arc::from), key, value));
                true
            }
        }
    }

    /// Removes the entry; returns its value if it existed.
    pub fn remove(&mut self, filter: &Filter, group: Option<&str>, key: K) -> Option<V> {
        let i = self.position(filter, group, key)?;
        Some(self.entries.remove(i).3)
    }

    /// Number of entries (filter, group, key).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of distinct filters.
    pub fn filter_count(&self) -> usize {
        let mut filters: Vec<&str> = self.entries.iter().map(|e| e.0.as_str()).collect();
        filters.sort_unstable();
        filters.dedup();
        filters.len()
    }

    /// Clears `out` and fills it with every entry whose filter matches `topic`, one group item
    /// per matching (filter, group).
    pub fn match_into(&self, topic: &str, out: &mut Matches<K, V>) {
        out.clear();
        let mut groups: Vec<GroupHit<'_, K, V>> = Vec::new();
        for (filter, group, key, value) in &self.entries {
            if !filter.matches(topic) {
                continue;
            }
            let Some(group) = group else {
                out.push_plain(&[(*key, value.clone())]);
                continue;
            };
            match groups
                .iter_mut()
                .find(|(g, f, _)| *g == group && *f == filter)
            {
                Some((_, _, members)) => members.push((*key, value.clone())),
                None => groups.push((group, filter, vec![(*key, value.clone())])),
            }
        }
        for (group, filter, members) in groups {
            out.push_group(group, filter.shared_text(), &members);
        }
    }
}

/// A matching (group, filter) and its members, while a naive match collects them.
type GroupHit<'a, K, V> = (&'a Arc<str>, &'a Filter, Vec<(K, V)>);

impl<K: Copy + Eq, V: Clone> Default for NaiveMatcher<K, V> {
    fn default() -> Self {
        Self::new()
    }
}
