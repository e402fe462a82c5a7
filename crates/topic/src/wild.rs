//! The tree of wildcard filters: nodes in one arena, edges in one hash table.
//!
//! A match visits a handful of nodes per topic level (the literal child, the `*` child, the
//! `prefix*` children), so each visit must be cheap. Every node sits in one `Vec`; every
//! literal and `prefix*` edge sits in one table keyed by (parent, kind, hash of the level) with
//! integer keys. A topic level is hashed once per node visit and the child's label, stored inline
//! in the node for short levels, confirms the edge: no string comparison through a pointer.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use foldhash::fast::RandomState;

use crate::entry::Entry;
use crate::filter::{Filter, Level};
use crate::matches::Matches;
use crate::topic::split_level;

const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;

/// How a node hangs from its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Root,
    Literal,
    Prefix,
    Star,
}

/// A level's text: inline when short (most levels), boxed otherwise.
#[derive(Clone, Debug)]
enum Label {
    Inline { len: u8, bytes: [u8; 22] },
    Boxed(Box<[u8]>),
}

impl Label {
    fn new(text: &str) -> Self {
        let b = text.as_bytes();
        if b.len() <= 22 {
            let mut bytes = [0; 22];
            bytes[..b.len()].copy_from_slice(b);
            Label::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            Label::Boxed(b.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Label::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Label::Boxed(b) => b,
        }
    }
}

/// Key of a literal or prefix edge. Two labels with the same hash under one parent chain
/// through `Node::next_same`, so a hash collision costs a step, never a wrong answer.
#[derive(Clone, Copy, PartialEq, Eq)]
struct EdgeKey {
    parent: u32,
    prefix: bool,
    hash: u64,
}

impl Hash for EdgeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `hash` is already a keyed hash of the level; mixing in the parent is enough.
        let parent = (u64::from(self.parent) << 1) | u64::from(self.prefix);
        state.write_u64(self.hash ^ parent.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
}

/// Passes an [`EdgeKey`]'s already mixed hash through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `EdgeKey`; fold anything else in for completeness.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Node<K, V> {
    label: Label,
    /// Hash of `label`, to find the node's edge again when unlinking it.
    hash: u64,
    parent: u32,
    kind: Kind,
    star: u32,
    /// The next child of `parent` with the same kind and label hash (a collision chain).
    next_same: u32,
    /// Number of literal and prefix children.
    children: u32,
    /// Distinct lengths of `prefix*` children, ascending, with their counts.
    prefix_lens: Vec<(usize, u32)>,
    /// Filters ending in `>` at this level.
    rest: Option<Box<Entry<K, V>>>,
    /// Filters whose last level leads to this node.
    entry: Option<Box<Entry<K, V>>>,
}

impl<K, V> Node<K, V> {
    fn new(kind: Kind, parent: u32, label: &str, hash: u64) -> Self {
        Self {
            label: Label::new(label),
            hash,
            parent,
            kind,
            star: NONE,
            next_same: NONE,
            children: 0,
            prefix_lens: Vec::new(),
            rest: None,
            entry: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children == 0 && self.star == NONE && self.rest.is_none() && self.entry.is_none()
    }
}

/// The wildcard filters of a trie.
pub(crate) struct WildTree<K, V> {
    nodes: Vec<Node<K, V>>,
    free: Vec<u32>,
    edges: HashMap<EdgeKey, u32, BuildHasherDefault<PassThrough>>,
    hasher: RandomState,
}

impl<K: Copy + Eq + Hash, V: Clone> WildTree<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            nodes: vec![Node::new(Kind::Root, NONE, "", 0)],
            free: Vec::new(),
            edges: HashMap::default(),
            hasher: RandomState::default(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes[ROOT as usize].is_empty()
    }

    #[inline]
    fn hash(&self, level: &str) -> u64 {
        self.hasher.hash_one(level)
    }

    /// The child of `parent` along a literal (or prefix) edge labelled `label`.
    #[inline]
    fn child(&self, parent: u32, prefix: bool, hash: u64, label: &str) -> u32 {
        let key = EdgeKey {
            parent,
            prefix,
            hash,
        };
        let mut at = self.edges.get(&key).copied().unwrap_or(NONE);
        while at != NONE {
            let node = &self.nodes[at as usize];
            if node.label.as_bytes() == label.as_bytes() {
                return at;
            }
            at = node.next_same;
        }
        NONE
    }

    fn alloc(&mut self, node: Node<K, V>) -> u32 {
        match self.free.pop() {
            Some(at) => {
                self.nodes[at as usize] = node;
                at
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// The child along a literal or prefix edge, created if missing.
    fn child_or_insert(&mut self, parent: u32, prefix: bool, label: &str) -> u32 {
        let hash = self.hash(label);
        let found = self.child(parent, prefix, hash, label);
        if found != NONE {
            return found;
        }
        let kind = if prefix { Kind::Prefix } else { Kind::Literal };
        let at = self.alloc(Node::new(kind, parent, label, hash));
        let key = EdgeKey {
            parent,
            prefix,
            hash,
        };
        if let Some(head) = self.edges.insert(key, at) {
            self.nodes[at as usize].next_same = head;
        }
        let p = &mut self.nodes[parent as usize];
        p.children += 1;
        if prefix {
            let len = label.len();
            match p.prefix_lens.binary_search_by_key(&len, |&(l, _)| l) {
                Ok(i) => p.prefix_lens[i].1 += 1,
                Err(i) => p.prefix_lens.insert(i, (len, 1)),
            }
        }
        at
    }

    /// Finds or creates the entry of a wildcard filter.
    pub(crate) fn entry_or_insert(&mut self, filter: &Filter) -> &mut Entry<K, V> {
        let text = filter.shared_text();
        let mut at = ROOT;
        for level in filter.levels() {
            at = match level {
                Level::Literal(l) => self.child_or_insert(at, false, l),
                Level::Prefix(p) => self.child_or_insert(at, true, p),
                Level::Star => match self.nodes[at as usize].star {
                    NONE => {
                        let star = self.alloc(Node::new(Kind::Star, at, "", 0));
                        self.nodes[at as usize].star = star;
                        star
                    }
                    star => star,
                },
                Level::Rest => {
                    return self.nodes[at as usize]
                        .rest
                        .get_or_insert_with(|| Box::new(Entry::new(text.clone())));
                }
            };
        }
        self.nodes[at as usize]
            .entry
            .get_or_insert_with(|| Box::new(Entry::new(text.clone())))
    }

    /// Removes an entry; `filter_gone` tells whether its filter lost its last entry.
    pub(crate) fn remove(
        &mut self,
        filter: &Filter,
        group: Option<&str>,
        key: K,
        filter_gone: &mut bool,
    ) -> Option<V> {
        let mut at = ROOT;
        let mut rest = false;
        for level in filter.levels() {
            at = match level {
                Level::Literal(l) => self.child(at, false, self.hash(l), l),
                Level::Prefix(p) => self.child(at, true, self.hash(p), p),
                Level::Star => self.nodes[at as usize].star,
                Level::Rest => {
                    rest = true;
                    break;
                }
            };
            if at == NONE {
                return None;
            }
        }
        let node = &mut self.nodes[at as usize];
        let slot = if rest {
            &mut node.rest
        } else {
            &mut node.entry
        };
        let entry = slot.as_deref_mut()?;
        let value = entry.remove(group, key)?;
        if entry.is_empty() {
            *slot = None;
            *filter_gone = true;
            self.prune(at);
        }
        Some(value)
    }

    /// Unlinks and frees `at` and its ancestors while they are empty.
    fn prune(&mut self, mut at: u32) {
        while at != ROOT && self.nodes[at as usize].is_empty() {
            let node = &self.nodes[at as usize];
            let (parent, kind, hash, next) = (node.parent, node.kind, node.hash, node.next_same);
            match kind {
                Kind::Star => self.nodes[parent as usize].star = NONE,
                Kind::Literal | Kind::Prefix => {
                    let prefix = kind == Kind::Prefix;
                    let key = EdgeKey {
                        parent,
                        prefix,
                        hash,
                    };
                    let head = self.edges.get(&key).copied().unwrap_or(NONE);
                    if head == at {
                        match next {
                            NONE => self.edges.remove(&key),
                            next => self.edges.insert(key, next),
                        };
                    } else {
                        let mut prev = head;
                        while prev != NONE && self.nodes[prev as usize].next_same != at {
                            prev = self.nodes[prev as usize].next_same;
                        }
                        if prev != NONE {
                            self.nodes[prev as usize].next_same = next;
                        }
                    }
                    let len = self.nodes[at as usize].label.as_bytes().len();
                    let p = &mut self.nodes[parent as usize];
                    p.children -= 1;
                    if prefix {
                        if let Ok(i) = p.prefix_lens.binary_search_by_key(&len, |&(l, _)| l) {
                            p.prefix_lens[i].1 -= 1;
                            if p.prefix_lens[i].1 == 0 {
                                p.prefix_lens.remove(i);
                            }
                        }
                    }
                }
                Kind::Root => return,
            }
            // Drop the label's box, if any, now rather than at reuse.
            self.nodes[at as usize] = Node::new(Kind::Root, NONE, "", 0);
            self.free.push(at);
            at = parent;
        }
    }

    /// Adds every wildcard filter matching `topic` to `out`.
    pub(crate) fn match_into(&self, topic: &str, out: &mut Matches<K, V>) {
        let (level, tail) = split_level(topic);
        self.walk(ROOT, level, tail, true, out);
    }

    /// Adds the filters below `at` that match topic level `level` followed by `tail`.
    fn walk(&self, at: u32, level: &str, tail: Option<&str>, first: bool, out: &mut Matches<K, V>) {
        let node = &self.nodes[at as usize];
        let system = first && level.starts_with('$');
        if !system {
            if let Some(entry) = &node.rest {
                entry.add_to(out);
            }
            if node.star != NONE {
                self.step(node.star, tail, out);
            }
        }
        if node.children == 0 {
            return;
        }
        let literal = self.child(at, false, self.hash(level), level);
        if literal != NONE {
            self.step(literal, tail, out);
        }
        for &(len, _) in &node.prefix_lens {
            if len > level.len() {
                break;
            }
            if !level.is_char_boundary(len) {
                continue;
            }
            let prefix = &level[..len];
            let child = self.child(at, true, self.hash(prefix), prefix);
            if child != NONE {
                self.step(child, tail, out);
            }
        }
    }

    /// Continues a walk in `at` after one topic level was consumed.
    #[inline]
    fn step(&self, at: u32, tail: Option<&str>, out: &mut Matches<K, V>) {
        match tail {
            None => {
                if let Some(entry) = &self.nodes[at as usize].entry {
                    entry.add_to(out);
                }
            }
            Some(rest) => {
                let (level, tail) = split_level(rest);
                self.walk(at, level, tail, false, out);
            }
        }
    }

    pub(crate) fn for_each(&self, f: &mut impl FnMut(&str, Option<&str>, K, &V)) {
        for node in &self.nodes {
            for entry in [&node.entry, &node.rest].into_iter().flatten() {
                entry.for_each(f);
            }
        }
    }

    /// Number of live nodes, the root included (for tests).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}
