//! The tree of wildcard filters, tuned for few cache misses and little work per visited node.
//!
//! A match visits a few nodes per topic level (the literal child, the `*` child, the `prefix*`
//! children). What keeps each visit cheap:
//! - a node's literal children sit inline in the buckets of its hash map (hashbrown: one group
//!   of control bytes answers "absent", the common case, from one cache line);
//! - the maps are keyed by the level's hash, computed once per topic level and match with the
//!   tree's seed, so a probe compares integers; the label, inline in the key for levels up to
//!   22 bytes (nearly all), confirms a hit without following a pointer;
//! - `*` children, `prefix*` children and the entries ending at a node are boxed: most nodes
//!   have none.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

use crate::children::Children;
use crate::entry::Entry;
use crate::filter::{Filter, Level};
use crate::matches::Matches;

/// The `prefix*` children of a node.
struct Prefixes<K, V> {
    children: Children<Node<K, V>>,
    /// Distinct prefix lengths in bytes, ascending, with how many prefixes have each: a topic
    /// level is looked up once per length present, not compared with every prefix.
    lens: Vec<(usize, u32)>,
}

/// Entries of the filters ending at a node.
struct Ends<K, V> {
    /// Filters ending in `>` at this level.
    rest: Option<Entry<K, V>>,
    /// Filters whose last level leads to this node.
    entry: Option<Entry<K, V>>,
}

/// A node: the filters sharing the levels that lead here, and where they go next.
struct Node<K, V> {
    literals: Children<Node<K, V>>,
    star: Option<Box<Node<K, V>>>,
    prefixes: Option<Box<Prefixes<K, V>>>,
    ends: Option<Box<Ends<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Self {
            literals: Children::new(),
            star: None,
            prefixes: None,
            ends: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.star.is_none()
            && self.prefixes.is_none()
            && self.ends.is_none()
    }
}

/// Hashes levels with the tree's seed.
struct LevelHasher {
    state: RandomState,
    /// Tests narrow hashes to force collisions.
    #[cfg(test)]
    mask: u64,
}

impl LevelHasher {
    fn new() -> Self {
        Self {
            state: RandomState::default(),
            #[cfg(test)]
            mask: u64::MAX,
        }
    }

    #[inline]
    fn hash(&self, level: &str) -> u64 {
        let hash = self.state.hash_one(level);
        #[cfg(test)]
        let hash = hash & self.mask;
        hash
    }
}

/// The hashes of a topic's first levels, computed once per match: the walk looks the same
/// level up in several nodes (below the literal child, below the `*` child...).
struct LevelHashes {
    known: u16,
    hashes: [u64; 16],
}

impl LevelHashes {
    #[inline]
    fn of(&mut self, depth: usize, level: &str, hasher: &LevelHasher) -> u64 {
        if depth >= self.hashes.len() {
            return hasher.hash(level);
        }
        if self.known & (1 << depth) == 0 {
            self.hashes[depth] = hasher.hash(level);
            self.known |= 1 << depth;
        }
        self.hashes[depth]
    }
}

/// Splits off the first level, by hand: levels are short and `split_once` has a setup cost.
#[inline]
fn split(s: &str) -> (&str, Option<&str>) {
    match s.bytes().position(|b| b == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// The wildcard filters of a trie.
pub(crate) struct WildTree<K, V> {
    root: Node<K, V>,
    /// One seed for every level hash of this tree.
    hasher: LevelHasher,
}

impl<K: Copy + Eq + Hash, V: Clone> WildTree<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            root: Node::new(),
            hasher: LevelHasher::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// Keeps only the bits of `mask` of every level hash, to exercise collisions.
    #[cfg(test)]
    pub(crate) fn narrow_hashes(&mut self, mask: u64) {
        assert!(
            self.is_empty(),
            "hashes change only while the tree is empty"
        );
        self.hasher.mask = mask;
    }

    /// Finds or creates the entry of a wildcard filter.
    pub(crate) fn entry_or_insert(&mut self, filter: &Filter) -> &mut Entry<K, V> {
        let hasher = &self.hasher;
        let mut node = &mut self.root;
        let mut rest = false;
        for level in filter.levels() {
            node = match level {
                Level::Literal(l) => node.literals.get_or_insert(hasher.hash(l), l).0,
                Level::Prefix(p) => {
                    let ps = node.prefixes.get_or_insert_with(|| {
                        Box::new(Prefixes {
                            children: Children::new(),
                            lens: Vec::new(),
                        })
                    });
                    let (child, created) = ps.children.get_or_insert(hasher.hash(p), p);
                    if created {
                        match ps.lens.binary_search_by_key(&p.len(), |&(l, _)| l) {
                            Ok(i) => ps.lens[i].1 += 1,
                            Err(i) => ps.lens.insert(i, (p.len(), 1)),
                        }
                    }
                    child
                }
                Level::Star => node.star.get_or_insert_with(|| Box::new(Node::new())),
                Level::Rest => {
                    rest = true;
                    break;
                }
            };
        }
        let ends = node.ends.get_or_insert_with(|| {
            Box::new(Ends {
                rest: None,
                entry: None,
            })
        });
        let slot = if rest {
            &mut ends.rest
        } else {
            &mut ends.entry
        };
        slot.get_or_insert_with(|| Entry::new(filter.shared_text().clone()))
    }

    /// Removes an entry; `filter_gone` tells whether its filter lost its last entry.
    pub(crate) fn remove(
        &mut self,
        filter: &Filter,
        group: Option<&str>,
        key: K,
        filter_gone: &mut bool,
    ) -> Option<V> {
        let removal = Removal {
            hasher: &self.hasher,
            group,
            key,
        };
        removal.below(&mut self.root, filter.levels(), filter_gone)
    }

    /// Adds every wildcard filter matching `topic` to `out`.
    pub(crate) fn match_into(&self, topic: &str, out: &mut Matches<K, V>) {
        let (level, tail) = split(topic);
        let mut hashes = LevelHashes {
            known: 0,
            hashes: [0; 16],
        };
        self.walk(&self.root, 0, level, tail, &mut hashes, out);
    }

    /// Adds the filters below `node` that match topic level `level` (at `depth`) followed by
    /// `tail`.
    fn walk(
        &self,
        node: &Node<K, V>,
        depth: usize,
        level: &str,
        tail: Option<&str>,
        hashes: &mut LevelHashes,
        out: &mut Matches<K, V>,
    ) {
        // Look the literal child up before descending anywhere: its loads then overlap with
        // the work below instead of waiting for it.
        let literal = if node.literals.is_empty() {
            None
        } else {
            node.literals
                .get(hashes.of(depth, level, &self.hasher), level)
        };
        let system = depth == 0 && level.starts_with('$');
        if !system {
            if let Some(Ends { rest: Some(e), .. }) = node.ends.as_deref() {
                e.add_to(out);
            }
            if let Some(star) = &node.star {
                self.step(star, depth, tail, hashes, out);
            }
        }
        if let Some(child) = literal {
            self.step(child, depth, tail, hashes, out);
        }
        let Some(prefixes) = node.prefixes.as_deref() else {
            return;
        };
        for &(len, _) in &prefixes.lens {
            if len > level.len() {
                break;
            }
            if !level.is_char_boundary(len) {
                continue;
            }
            let prefix = &level[..len];
            if let Some(child) = prefixes.children.get(self.hasher.hash(prefix), prefix) {
                self.step(child, depth, tail, hashes, out);
            }
        }
    }

    /// Continues a walk in `node` after the topic level at `depth` was consumed.
    #[inline]
    fn step(
        &self,
        node: &Node<K, V>,
        depth: usize,
        tail: Option<&str>,
        hashes: &mut LevelHashes,
        out: &mut Matches<K, V>,
    ) {
        match tail {
            None => {
                if let Some(Ends { entry: Some(e), .. }) = node.ends.as_deref() {
                    e.add_to(out);
                }
            }
            Some(rest) => {
                let (level, tail) = split(rest);
                self.walk(node, depth + 1, level, tail, hashes, out);
            }
        }
    }

    pub(crate) fn for_each(&self, f: &mut impl FnMut(&str, Option<&str>, K, &V)) {
        visit(&self.root, f);
    }

    /// Number of nodes, the root included (for tests).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        fn count<K, V>(n: &Node<K, V>) -> usize {
            let prefixes = n.prefixes.iter().flat_map(|p| p.children.nodes());
            1 + n.literals.nodes().chain(prefixes).map(count).sum::<usize>()
                + n.star.as_deref().map_or(0, count)
        }
        count(&self.root)
    }
}

/// One entry to remove, and the tree's hasher.
struct Removal<'a, K> {
    hasher: &'a LevelHasher,
    group: Option<&'a str>,
    key: K,
}

impl<K: Copy + Eq + Hash> Removal<'_, K> {
    /// Removes the entry below `node`, pruning the nodes left empty on the way back up.
    fn below<'f, V: Clone>(
        &self,
        node: &mut Node<K, V>,
        mut levels: impl Iterator<Item = Level<'f>>,
        filter_gone: &mut bool,
    ) -> Option<V> {
        let level = levels.next();
        let (label, prefix) = match level {
            None | Some(Level::Rest) => {
                let ends = node.ends.as_deref_mut()?;
                let slot = if level.is_none() {
                    &mut ends.entry
                } else {
                    &mut ends.rest
                };
                let entry = slot.as_mut()?;
                let value = entry.remove(self.group, self.key)?;
                if entry.is_empty() {
                    *slot = None;
                    *filter_gone = true;
                    if ends.rest.is_none() && ends.entry.is_none() {
                        node.ends = None;
                    }
                }
                return Some(value);
            }
            Some(Level::Star) => {
                let star = node.star.as_deref_mut()?;
                let value = self.below(star, levels, filter_gone)?;
                if star.is_empty() {
                    node.star = None;
                }
                return Some(value);
            }
            Some(Level::Literal(l)) => (l, false),
            Some(Level::Prefix(p)) => (p, true),
        };
        let hash = self.hasher.hash(label);
        let children = match &mut node.prefixes {
            Some(ps) if prefix => &mut ps.children,
            _ if prefix => return None,
            _ => &mut node.literals,
        };
        let child = children.get_mut(hash, label)?;
        let value = self.below(child, levels, filter_gone)?;
        if child.is_empty() {
            children.remove(hash, label);
            if prefix {
                forget_prefix(node, label.len());
            }
        }
        Some(value)
    }
}

/// Forgets one prefix of length `len` whose child was just removed.
fn forget_prefix<K, V>(node: &mut Node<K, V>, len: usize) {
    let Some(ps) = node.prefixes.as_deref_mut() else {
        return;
    };
    if let Ok(i) = ps.lens.binary_search_by_key(&len, |&(l, _)| l) {
        ps.lens[i].1 -= 1;
        if ps.lens[i].1 == 0 {
            ps.lens.remove(i);
        }
    }
    if ps.children.is_empty() {
        node.prefixes = None;
    }
}

fn visit<K: Copy + Eq + Hash, V: Clone>(
    node: &Node<K, V>,
    f: &mut impl FnMut(&str, Option<&str>, K, &V),
) {
    if let Some(ends) = node.ends.as_deref() {
        for entry in [&ends.entry, &ends.rest].into_iter().flatten() {
            entry.for_each(f);
        }
    }
    let prefixes = node.prefixes.iter().flat_map(|p| p.children.nodes());
    for child in node.literals.nodes().chain(prefixes) {
        visit(child, f);
    }
    if let Some(star) = &node.star {
        visit(star, f);
    }
}
