//! A bounded cache of match results in front of one trie.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

use crate::matches::Matches;
use crate::trie::Trie;

/// A bounded cache of match results in front of one trie, invalidated by the trie's generation.
/// Meant to be owned by one publisher (no locking inside): each publishing connection keeps one.
///
/// Two-way set associative: a topic hashes to a set of two slots and, on a miss, replaces the
/// less recently used one. There is no sweep and no growth; a replaced slot keeps the capacity of
/// its topic string and result vectors, so a warm cache allocates nothing. A slot is valid only
/// for the trie (and the generation of that trie) it was computed from.
///
/// Cached results hold clones of the trie's values until their slot is replaced or the cache is
/// cleared or dropped.
pub struct MatchCache<K, V> {
    slots: Box<[Slot<K, V>]>,
    /// Per set, the way (0 or 1) used last.
    recent: Box<[u8]>,
    set_mask: usize,
    hasher: RandomState,
    hits: u64,
    misses: u64,
}

struct Slot<K, V> {
    topic: String,
    /// Id of the trie the result came from; 0 while the slot is empty.
    trie: u64,
    generation: u64,
    matches: Matches<K, V>,
}

impl<K: Copy + Eq + Hash, V: Clone> MatchCache<K, V> {
    /// `capacity` entries (rounded up to a power of two, at least 2).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| Slot {
                topic: String::new(),
                trie: 0,
                generation: 0,
                matches: Matches::new(),
            })
            .collect();
        Self {
            slots,
            recent: vec![0; capacity / 2].into_boxed_slice(),
            set_mask: capacity / 2 - 1,
            hasher: RandomState::default(),
            hits: 0,
            misses: 0,
        }
    }

    /// Returns the matches for `topic`, computing them with `trie.match_into` on a miss.
    pub fn lookup<'a>(&'a mut self, trie: &Trie<K, V>, topic: &str) -> &'a Matches<K, V> {
        let set = (self.hasher.hash_one(topic) as usize) & self.set_mask;
        let base = set * 2;
        let (id, generation) = (trie.id(), trie.generation());
        let fresh = |s: &Slot<K, V>| s.trie == id && s.generation == generation;
        let hit = (0..2).find(|&w| {
            let s = &self.slots[base + w];
            fresh(s) && s.topic == topic
        });
        let way = match hit {
            Some(way) => {
                self.hits += 1;
                way
            }
            None => {
                self.misses += 1;
                // Refresh a stale copy of the same topic rather than keep two of it.
                let way = (0..2)
                    .find(|&w| self.slots[base + w].topic == topic)
                    .unwrap_or(1 - usize::from(self.recent[set]));
                let slot = &mut self.slots[base + way];
                slot.topic.clear();
                slot.topic.push_str(topic);
                slot.trie = id;
                slot.generation = generation;
                trie.match_into(topic, &mut slot.matches);
                way
            }
        };
        self.recent[set] = way as u8;
        &self.slots[base + way].matches
    }

    /// Number of lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Number of lookups that had to match against the trie.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Forgets every cached result, releasing the values they hold; keeps the capacity.
    pub fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.topic.clear();
            slot.trie = 0;
            slot.matches.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Filter;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    fn keys(m: &Matches<u32, u32>) -> Vec<u32> {
        let mut k: Vec<u32> = m.subscribers().iter().map(|(k, _)| *k).collect();
        k.sort();
        k
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let mut trie = Trie::new();
        trie.insert(&f("a/*"), None, 1, 10);
        let mut cache = MatchCache::new(4);
        assert_eq!(cache.capacity(), 4);
        assert_eq!(keys(cache.lookup(&trie, "a/b")), [1]);
        assert_eq!(keys(cache.lookup(&trie, "a/b")), [1]);
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        trie.insert(&f("a/b"), None, 2, 20);
        assert_eq!(
            keys(cache.lookup(&trie, "a/b")),
            [1, 2],
            "generation changed"
        );
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
        trie.remove(&f("a/*"), None, 1);
        assert_eq!(keys(cache.lookup(&trie, "a/b")), [2]);
        assert_eq!(keys(cache.lookup(&trie, "a/c")), Vec::<u32>::new());
        cache.clear();
        assert_eq!(keys(cache.lookup(&trie, "a/b")), [2]);
        assert_eq!(cache.hits(), 1);
    }

    #[test]
    fn replaced_value_is_seen() {
        let mut trie = Trie::new();
        trie.insert(&f("a"), None, 1, 10);
        let mut cache = MatchCache::new(2);
        assert_eq!(cache.lookup(&trie, "a").subscribers(), &[(1, 10)]);
        assert!(!trie.insert(&f("a"), None, 1, 11));
        assert_eq!(cache.lookup(&trie, "a").subscribers(), &[(1, 11)]);
    }

    #[test]
    fn another_trie_never_hits() {
        let mut t1 = Trie::new();
        let mut t2 = Trie::new();
        t1.insert(&f("a"), None, 1, 1);
        t2.insert(&f("a"), None, 2, 2);
        assert_eq!(t1.generation(), t2.generation());
        let mut cache = MatchCache::new(8);
        assert_eq!(cache.lookup(&t1, "a").subscribers(), &[(1, 1)]);
        assert_eq!(cache.lookup(&t2, "a").subscribers(), &[(2, 2)]);
        assert_eq!(cache.hits(), 0);
    }

    #[test]
    fn bounded_under_many_topics() {
        let mut trie = Trie::new();
        trie.insert(&f(">"), None, 1, 1);
        let mut cache = MatchCache::new(5);
        assert_eq!(cache.capacity(), 8);
        for i in 0..1000 {
            let topic = format!("t/{i}");
            assert_eq!(cache.lookup(&trie, &topic).subscribers(), &[(1, 1)]);
        }
        assert_eq!(cache.misses(), 1000);
        // The two most recent topics of a set survive: the last one always hits.
        assert_eq!(cache.lookup(&trie, "t/999").subscribers(), &[(1, 1)]);
        assert_eq!(cache.hits(), 1);
    }
}
