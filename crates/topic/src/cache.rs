//! A bounded cache of match results in front of one trie.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

use crate::matches::Matches;
use crate::trie::Trie;

/// Ways per set: with four, a set thrashes only when five topics in steady use share it.
const WAYS: usize = 4;

/// A bounded cache of match results in front of one trie, invalidated by the trie's generation.
/// Meant to be owned by one publisher (no locking inside): each publishing connection keeps one.
///
/// Four-way set associative: a topic hashes to a set of four slots and, on a miss, replaces the
/// least recently used one. There is no sweep and no growth; a replaced slot keeps the capacity
/// of its topic string and result vectors, so a warm cache allocates nothing. A slot is valid
/// only for the trie, and the generation of that trie, it was computed from.
///
/// Cached results hold clones of the trie's values until their slot is replaced or the cache is
/// cleared or dropped.
pub struct MatchCache<K, V> {
    slots: Box<[Slot<K, V>]>,
    /// Per set, the hash of each way's topic (0: empty), so that a lookup reads one line to
    /// find its candidate.
    tags: Box<[[u64; WAYS]]>,
    /// Per set, when each way was last used (a lookup counter).
    used: Box<[[u64; WAYS]]>,
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
    /// `capacity` entries (rounded up to a power of two, at least 4).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(WAYS).next_power_of_two();
        let sets = capacity / WAYS;
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
            tags: vec![[0; WAYS]; sets].into_boxed_slice(),
            used: vec![[0; WAYS]; sets].into_boxed_slice(),
            set_mask: sets - 1,
            hasher: RandomState::default(),
            hits: 0,
            misses: 0,
        }
    }

    /// Returns the matches for `topic`, computing them with `trie.match_into` on a miss.
    pub fn lookup<'a>(&'a mut self, trie: &Trie<K, V>, topic: &str) -> &'a Matches<K, V> {
        // Never 0, which marks an empty way.
        let tag = self.hasher.hash_one(topic) | 1;
        let set = (tag >> 32) as usize & self.set_mask;
        let (id, generation) = (trie.id(), trie.generation());
        let same_topic = (0..WAYS)
            .find(|&w| self.tags[set][w] == tag && self.slots[set * WAYS + w].topic == topic);
        let way = match same_topic {
            Some(w) => {
                let slot = &self.slots[set * WAYS + w];
                if slot.trie == id && slot.generation == generation {
                    self.hits += 1;
                    self.touch(set, w);
                    return &self.slots[set * WAYS + w].matches;
                }
                // A stale copy of the same topic: refresh it in place.
                w
            }
            None => self.victim(set),
        };
        self.misses += 1;
        self.tags[set][way] = tag;
        self.touch(set, way);
        let slot = &mut self.slots[set * WAYS + way];
        slot.topic.clear();
        slot.topic.push_str(topic);
        slot.trie = id;
        slot.generation = generation;
        trie.match_into(topic, &mut slot.matches);
        &slot.matches
    }

    /// [`MatchCache::lookup`] for a caller that knows the trie's id and generation without
    /// holding it: a hit needs no trie (and so no lock on it); on a miss `fill` computes the
    /// matches (taking the trie then). A write to the trie after the generation was read is
    /// seen at the next lookup.
    pub fn lookup_with<'a>(
        &'a mut self,
        id: u64,
        generation: u64,
        topic: &str,
        fill: impl FnOnce(&str, &mut Matches<K, V>),
    ) -> &'a Matches<K, V> {
        let tag = self.hasher.hash_one(topic) | 1;
        let set = (tag >> 32) as usize & self.set_mask;
        let same_topic = (0..WAYS)
            .find(|&w| self.tags[set][w] == tag && self.slots[set * WAYS + w].topic == topic);
        let way = match same_topic {
            Some(w) => {
                let slot = &self.slots[set * WAYS + w];
                if slot.trie == id && slot.generation == generation {
                    self.hits += 1;
                    self.touch(set, w);
                    return &self.slots[set * WAYS + w].matches;
                }
                w
            }
            None => self.victim(set),
        };
        self.misses += 1;
        self.tags[set][way] = tag;
        self.touch(set, way);
        let slot = &mut self.slots[set * WAYS + way];
        slot.topic.clear();
        slot.topic.push_str(topic);
        slot.trie = id;
        slot.generation = generation;
        fill(topic, &mut slot.matches);
        &slot.matches
    }

    /// The least recently used way of a set (an empty one first).
    fn victim(&self, set: usize) -> usize {
        let used = &self.used[set];
        (0..WAYS).min_by_key(|&w| used[w]).unwrap_or(0)
    }

    fn touch(&mut self, set: usize, way: usize) {
        self.used[set][way] = self.hits + self.misses;
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
        self.tags.fill([0; WAYS]);
        self.used.fill([0; WAYS]);
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
        let mut cache = MatchCache::new(3);
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
        assert!(
            cache.slots.iter().all(|s| s.topic.capacity() > 0),
            "every slot in use"
        );
        // The most recent topics of a set survive: the last one always hits.
        assert_eq!(cache.lookup(&trie, "t/999").subscribers(), &[(1, 1)]);
        assert_eq!(cache.hits(), 1);
    }

    #[test]
    fn four_topics_of_one_set_all_stay() {
        let mut trie = Trie::new();
        trie.insert(&f(">"), None, 1, 1);
        // One set: four topics fit whatever their hashes, in any order of use.
        let mut cache = MatchCache::new(4);
        let topics = ["a", "b", "c", "d"];
        for _ in 0..3 {
            for t in topics {
                cache.lookup(&trie, t);
            }
        }
        assert_eq!((cache.hits(), cache.misses()), (8, 4));
        cache.lookup(&trie, "e");
        cache.lookup(&trie, "b");
        assert_eq!(
            cache.hits(),
            9,
            "the least recently used topic, a, made room"
        );
        cache.lookup(&trie, "a");
        assert_eq!(cache.misses(), 6);
    }
}
