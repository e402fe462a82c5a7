//! The result of matching a topic: plain subscribers and matching queue groups.

use std::sync::Arc;

/// The result of a match: plain subscribers plus, per matching queue group, its members.
///
/// Meant to be reused: [`Trie::match_into`](crate::Trie::match_into) clears it and refills it,
/// keeping the capacity of its vectors, and `clone_from` reuses the target's capacity too.
#[derive(Debug)]
pub struct Matches<K, V> {
    plain: Vec<(K, V)>,
    /// Members of every matching group, one run per group.
    members: Vec<(K, V)>,
    groups: Vec<GroupRun>,
}

/// One matching (filter, group) and where its members sit in `Matches::members`.
#[derive(Clone, Debug)]
struct GroupRun {
    group: Arc<str>,
    filter: Arc<str>,
    start: usize,
    end: usize,
}

/// A matching queue group: deliver to exactly one of `members`.
#[derive(Debug)]
pub struct GroupMatch<'a, K, V> {
    /// The queue group name.
    pub group: &'a str,
    /// The text of the filter the group subscribed with.
    pub filter: &'a str,
    /// The members of the group on that filter (never empty).
    pub members: &'a [(K, V)],
}

impl<K, V> Clone for GroupMatch<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for GroupMatch<'_, K, V> {}

impl<K, V> Matches<K, V> {
    /// An empty result.
    pub fn new() -> Self {
        Self {
            plain: Vec::new(),
            members: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Entries of plain (non-group) subscriptions, in no particular order.
    pub fn subscribers(&self) -> &[(K, V)] {
        &self.plain
    }

    /// One item per matching (filter, group): the group name, the filter text, the members.
    pub fn groups(&self) -> impl Iterator<Item = GroupMatch<'_, K, V>> {
        self.groups.iter().map(|g| GroupMatch {
            group: &g.group,
            filter: &g.filter,
            members: &self.members[g.start..g.end],
        })
    }

    /// Number of matching (filter, group) pairs.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// True when nothing matched: no subscribers and no groups.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    /// Empties the result, keeping its capacity.
    pub fn clear(&mut self) {
        self.plain.clear();
        self.members.clear();
        self.groups.clear();
    }
}

impl<K: Clone, V: Clone> Matches<K, V> {
    #[inline]
    pub(crate) fn push_plain(&mut self, entries: &[(K, V)]) {
        self.plain.extend_from_slice(entries);
    }

    #[inline]
    pub(crate) fn push_group(&mut self, group: &Arc<str>, filter: &Arc<str>, members: &[(K, V)]) {
        let start = self.members.len();
        self.members.extend_from_slice(members);
        self.groups.push(GroupRun {
            group: group.clone(),
            filter: filter.clone(),
            start,
            end: self.members.len(),
        });
    }
}

impl<K, V> Default for Matches<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone, V: Clone> Clone for Matches<K, V> {
    fn clone(&self) -> Self {
        let mut out = Self::new();
        out.clone_from(self);
        out
    }

    /// Reuses the capacity of `self`: no allocation once it has grown to the source's size.
    fn clone_from(&mut self, source: &Self) {
        self.plain.clone_from(&source.plain);
        self.members.clone_from(&source.members);
        self.groups.clone_from(&source.groups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_plain() {
        let mut m: Matches<u32, char> = Matches::new();
        assert!(m.is_empty());
        let (g, f) = (Arc::from("g"), Arc::from("a/*"));
        m.push_plain(&[(1, 'a'), (2, 'b')]);
        m.push_group(&g, &f, &[(3, 'c')]);
        m.push_group(&g, &Arc::from("a/>"), &[(4, 'd'), (5, 'e')]);
        assert_eq!(m.subscribers(), &[(1, 'a'), (2, 'b')]);
        let groups: Vec<_> = m.groups().map(|g| (g.group, g.filter, g.members)).collect();
        assert_eq!(
            groups,
            [
                ("g", "a/*", &[(3, 'c')][..]),
                ("g", "a/>", &[(4, 'd'), (5, 'e')][..])
            ]
        );
        assert_eq!(m.group_count(), 2);
        let mut copy = Matches::new();
        copy.clone_from(&m);
        assert_eq!(copy.subscribers(), m.subscribers());
        assert_eq!(copy.groups().count(), 2);
        let cap = m.plain.capacity();
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.plain.capacity(), cap);
        copy.clone_from(&m);
        assert!(copy.is_empty());
    }
}
