//! The subscribers of one filter: plain entries and queue groups.

use std::hash::Hash;
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::matches::Matches;

/// Above this many members a key index replaces the linear scan, so that a filter with many
/// subscribers (every device on `fleet/+/cmd`) still inserts and removes in O(1).
const INDEX_ABOVE: usize = 16;

type KeyIndex<K> = std::collections::HashMap<K, u32, RandomState>;

/// A list of `(key, value)` with at most one entry per key, kept contiguous so that a match
/// copies it with one `extend_from_slice`.
#[derive(Debug)]
pub(crate) struct Members<K, V> {
    items: Vec<(K, V)>,
    /// Position of each key in `items`, once the list is long.
    index: Option<Box<KeyIndex<K>>>,
}

impl<K: Copy + Eq + Hash, V> Members<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            items: Vec::new(),
            index: None,
        }
    }

    pub(crate) fn items(&self) -> &[(K, V)] {
        &self.items
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn position(&self, key: K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&key).map(|&i| i as usize),
            None => self.items.iter().position(|(k, _)| *k == key),
        }
    }

    /// Adds or replaces; returns true if the key is new.
    pub(crate) fn insert(&mut self, key: K, value: V) -> bool {
        if let Some(i) = self.position(key) {
            self.items[i].1 = value;
            return false;
        }
        self.items.push((key, value));
        let last = self.items.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(key, last as u32);
            }
            None if self.items.len() > INDEX_ABOVE => {
                let index = self
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (*k, i as u32))
                    .collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        true
    }

    pub(crate) fn remove(&mut self, key: K) -> Option<V> {
        let i = self.position(key)?;
        let (_, value) = self.items.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&key);
            if let Some((moved, _)) = self.items.get(i) {
                index.insert(*moved, i as u32);
            }
            if self.items.len() <= INDEX_ABOVE / 2 {
                self.index = None;
            }
        }
        Some(value)
    }
}

/// The members of one queue group on one filter.
#[derive(Debug)]
pub(crate) struct Group<K, V> {
    pub(crate) name: Arc<str>,
    pub(crate) members: Members<K, V>,
}

/// Everything subscribed to one filter.
#[derive(Debug)]
pub(crate) struct Entry<K, V> {
    /// The filter text, shared with every match result.
    pub(crate) text: Arc<str>,
    pub(crate) plain: Members<K, V>,
    pub(crate) groups: Vec<Group<K, V>>,
}

impl<K: Copy + Eq + Hash, V: Clone> Entry<K, V> {
    pub(crate) fn new(text: Arc<str>) -> Self {
        Self {
            text,
            plain: Members::new(),
            groups: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    /// Adds or replaces; returns true if the (group, key) is new.
    pub(crate) fn insert(&mut self, group: Option<&str>, key: K, value: V) -> bool {
        let Some(name) = group else {
            return self.plain.insert(key, value);
        };
        if let Some(g) = self.groups.iter_mut().find(|g| &*g.name == name) {
            return g.members.insert(key, value);
        }
        let mut members = Members::new();
        members.insert(key, value);
        self.groups.push(Group {
            name: Arc::from(name),
            members,
        });
        true
    }

    pub(crate) fn remove(&mut self, group: Option<&str>, key: K) -> Option<V> {
        let Some(name) = group else {
            return self.plain.remove(key);
        };
        let i = self.groups.iter().position(|g| &*g.name == name)?;
        let value = self.groups[i].members.remove(key);
        if self.groups[i].members.is_empty() {
            self.groups.swap_remove(i);
        }
        value
    }

    /// Appends every subscriber of this filter to a match result.
    #[inline]
    pub(crate) fn add_to(&self, out: &mut Matches<K, V>) {
        out.push_plain(self.plain.items());
        for g in &self.groups {
            out.push_group(&g.name, &self.text, g.members.items());
        }
    }

    pub(crate) fn for_each(&self, f: &mut impl FnMut(&str, Option<&str>, K, &V)) {
        for (k, v) in self.plain.items() {
            f(&self.text, None, *k, v);
        }
        for g in &self.groups {
            for (k, v) in g.members.items() {
                f(&self.text, Some(&g.name), *k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_index_stays_consistent() {
        let mut m = Members::new();
        for k in 0..100u32 {
            assert!(m.insert(k, k * 10));
        }
        assert!(m.index.is_some());
        assert!(!m.insert(5, 55));
        assert_eq!(m.items().len(), 100);
        for k in (0..100u32).step_by(3) {
            let want = if k == 5 { 55 } else { k * 10 };
            assert_eq!(m.remove(k), Some(want));
            assert_eq!(m.remove(k), None);
        }
        for k in 0..100u32 {
            let present = m.items().iter().any(|(x, _)| *x == k);
            assert_eq!(present, k % 3 != 0, "{k}");
            assert_eq!(m.position(k).is_some(), present);
        }
        while let Some(&(k, _)) = m.items().first() {
            m.remove(k);
        }
        assert!(m.index.is_none());
        assert!(m.is_empty());
    }

    #[test]
    fn entry_groups() {
        let mut e = Entry::new(Arc::from("a/*"));
        assert!(e.insert(None, 1, 'a'));
        assert!(e.insert(Some("g"), 1, 'b'));
        assert!(!e.insert(Some("g"), 1, 'c'));
        assert!(e.insert(Some("h"), 2, 'd'));
        assert_eq!(e.remove(Some("g"), 2), None);
        assert_eq!(e.remove(Some("x"), 1), None);
        assert_eq!(e.remove(Some("g"), 1), Some('c'));
        assert_eq!(e.groups.len(), 1);
        assert_eq!(e.remove(None, 1), Some('a'));
        assert!(!e.is_empty());
        assert_eq!(e.remove(Some("h"), 2), Some('d'));
        assert!(e.is_empty());
    }
}
