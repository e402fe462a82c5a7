//! A bounded set of recently seen event ids, for destination-side dedup of routed events.

use std::collections::HashSet;

/// The most recent `capacity` event ids (`id_hi`, `id_lo`): O(1) insert and lookup, fixed
/// memory; once full, each insert evicts the oldest id.
#[derive(Debug)]
pub struct RecentIds {
    set: HashSet<(u64, u64), foldhash::fast::RandomState>,
    /// Ids in insertion order, used as a ring once full.
    ring: Vec<(u64, u64)>,
    /// Next slot of `ring` to overwrite once full.
    next: usize,
    capacity: usize,
}

impl RecentIds {
    /// An empty set holding at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            set: HashSet::with_capacity_and_hasher(capacity, Default::default()),
            ring: Vec::with_capacity(capacity),
            next: 0,
            capacity,
        }
    }

    /// Records `id`; returns true if it was not among the recent ids (first sighting).
    pub fn insert(&mut self, id: (u64, u64)) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.ring.len() < self.capacity {
            self.ring.push(id);
            return true;
        }
        let old = std::mem::replace(&mut self.ring[self.next], id);
        self.set.remove(&old);
        self.next = (self.next + 1) % self.capacity;
        true
    }

    /// True if `id` is among the recent ids.
    pub fn contains(&self, id: (u64, u64)) -> bool {
        self.set.contains(&id)
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The most ids held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_once_full() {
        let mut r = RecentIds::new(3);
        assert!(r.insert((0, 1)));
        assert!(!r.insert((0, 1)));
        assert!(r.insert((0, 2)));
        assert!(r.insert((0, 3)));
        assert_eq!(r.len(), 3);
        assert!(r.insert((0, 4)));
        assert!(!r.contains((0, 1)));
        assert!(r.contains((0, 2)) && r.contains((0, 3)) && r.contains((0, 4)));
        assert!(r.insert((0, 5)));
        assert!(!r.contains((0, 2)));
        assert_eq!(r.len(), 3);
        // A re-sighting does not refresh an id: eviction is by first sighting.
        assert!(!r.insert((0, 3)));
        assert!(r.insert((0, 6)));
        assert!(!r.contains((0, 3)));
        assert_eq!(r.capacity(), 3);
        assert!(RecentIds::new(0).insert((1, 1)));
    }
}
