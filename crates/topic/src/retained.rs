//! Retained messages by concrete topic, searchable by filter.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::str::Split;

use crate::filter::{Filter, Level};
use crate::topic::split_level;

/// Retained messages by concrete topic, searchable by filter.
///
/// A tree of levels with children in sorted maps: a literal filter level is one lookup, a
/// `prefix*` level one range scan, and only `*` and `>` visit every child of a node. The cost of a
/// search follows the filter's shape and the topics it matches, not the number of stored topics.
pub struct RetainTree<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: BTreeMap<Box<str>, Node<V>>,
    /// The topic ending here and its value.
    value: Option<(Box<str>, V)>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Self {
            children: BTreeMap::new(),
            value: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.value.is_none()
    }
}

impl<V> RetainTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }

    /// Stores (replacing) the value for `topic`. Returns the previous one.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            if !node.children.contains_key(level) {
                node.children.insert(Box::from(level), Node::new());
            }
            // The key was inserted just above if it was missing.
            node = node.children.get_mut(level).expect("child exists");
        }
        match &mut node.value {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            empty => {
                *empty = Some((Box::from(topic), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value stored for `topic`, pruning the levels left empty.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let value = remove_at(&mut self.root, topic)?;
        self.len -= 1;
        Some(value)
    }

    /// Number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no topic is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(topic, value)` for each stored topic matched by `filter` (with the `$` rule).
    /// Cost follows the filter's shape, not the number of stored topics.
    pub fn for_each_match(&self, filter: &Filter, mut f: impl FnMut(&str, &V)) {
        matching(&self.root, filter.as_str().split('/'), true, &mut f);
    }

    /// Calls `f(topic, value)` for every stored topic, in topic order level by level.
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        every(&self.root, &mut f);
    }
}

fn remove_at<V>(node: &mut Node<V>, topic: &str) -> Option<V> {
    let (level, tail) = split_level(topic);
    let child = node.children.get_mut(level)?;
    let value = match tail {
        Some(rest) => remove_at(child, rest)?,
        None => child.value.take()?.1,
    };
    if child.is_empty() {
        node.children.remove(level);
    }
    Some(value)
}

fn matching<V>(
    node: &Node<V>,
    mut levels: Split<'_, char>,
    first: bool,
    f: &mut impl FnMut(&str, &V),
) {
    let Some(text) = levels.next() else {
        if let Some((topic, value)) = &node.value {
            f(topic, value);
        }
        return;
    };
    let visible = |name: &str| !(first && name.starts_with('$'));
    match Level::of(text) {
        Level::Literal(name) => {
            if let Some(child) = node.children.get(name) {
                matching(child, levels, false, f);
            }
        }
        Level::Prefix(prefix) => {
            let from = (Bound::Included(prefix), Bound::Unbounded);
            for (name, child) in node.children.range::<str, _>(from) {
                if !name.starts_with(prefix) {
                    break;
                }
                matching(child, levels.clone(), false, f);
            }
        }
        Level::Star => {
            for (_, child) in node.children.iter().filter(|(n, _)| visible(n)) {
                matching(child, levels.clone(), false, f);
            }
        }
        Level::Rest => {
            for (_, child) in node.children.iter().filter(|(n, _)| visible(n)) {
                every(child, f);
            }
        }
    }
}

fn every<V>(node: &Node<V>, f: &mut impl FnMut(&str, &V)) {
    if let Some((topic, value)) = &node.value {
        f(topic, value);
    }
    for child in node.children.values() {
        every(child, f);
    }
}

impl<V> Default for RetainTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(tree: &RetainTree<u32>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(&Filter::parse(filter).unwrap(), |t, _| {
            out.push(t.to_string())
        });
        out.sort();
        out
    }

    fn tree() -> RetainTree<u32> {
        let mut t = RetainTree::new();
        for (i, topic) in ["a", "a/b", "a/b/c", "a/bc", "a/x", "$SYS/up", "$SYS", "b/é"]
            .into_iter()
            .enumerate()
        {
            assert_eq!(t.insert(topic, i as u32), None);
        }
        t
    }

    #[test]
    fn insert_replace_remove() {
        let mut t = tree();
        assert_eq!(t.len(), 8);
        assert_eq!(t.insert("a/b", 99), Some(1));
        assert_eq!(t.len(), 8);
        assert_eq!(t.remove("a/b"), Some(99));
        assert_eq!(t.remove("a/b"), None);
        assert_eq!(t.remove("a/b/c/d"), None);
        assert_eq!(t.remove("nope"), None);
        assert_eq!(
            found(&t, "a/b/c"),
            ["a/b/c"],
            "the parent's removal kept the child"
        );
        assert_eq!(t.remove("a/b/c"), Some(2));
        assert!(!t.root.children["a"].children.contains_key("b"), "pruned");
        assert_eq!(t.len(), 6);
        for topic in ["a", "a/bc", "a/x", "$SYS/up", "$SYS", "b/é"] {
            assert!(t.remove(topic).is_some());
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty());
    }

    #[test]
    fn searches_by_filter() {
        let t = tree();
        assert_eq!(found(&t, "a/b"), ["a/b"]);
        assert_eq!(found(&t, "a/*"), ["a/b", "a/bc", "a/x"]);
        assert_eq!(found(&t, "a/b*"), ["a/b", "a/bc"]);
        assert_eq!(found(&t, "a/>"), ["a/b", "a/b/c", "a/bc", "a/x"]);
        assert_eq!(found(&t, "a/*/c"), ["a/b/c"]);
        assert_eq!(found(&t, "*"), ["a"]);
        assert_eq!(found(&t, ">").len(), 6, "every non-$ topic");
        assert_eq!(found(&t, "$SYS/>"), ["$SYS/up"]);
        assert_eq!(found(&t, "$SYS*"), ["$SYS"]);
        assert_eq!(found(&t, "b/é*"), ["b/é"]);
        assert_eq!(found(&t, "c/>"), Vec::<String>::new());
        let mut all = 0;
        t.for_each(|_, _| all += 1);
        assert_eq!(all, 8);
    }
}
