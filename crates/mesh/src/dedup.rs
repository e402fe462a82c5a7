//! Destination-side dedup of routed events: a fixed table of recent event ids.
//!
//! Each id has a bucket of two slots, chosen by its origin's sequence number offset by a hash of
//! the origin's id bits: one origin's consecutive events take consecutive buckets, so the table
//! is walked in order (a cache line holds two buckets) instead of one cache miss per event; a sighting of an id already in its bucket is a
//! duplicate, a new id replaces the older slot. Constant time, no allocation, 512 KiB. It is
//! lossy on purpose: a duplicate that arrives after two other ids took its bucket is not caught.
//! Duplicates only occur while routes converge (forwarding follows one tree otherwise), within
//! milliseconds of the first copy, so this catches them at a fraction of the cost of an exact
//! set (measured: an exact hash set with eviction, `meshgate_registry::RecentIds`, took 11 % of a
//! receiving node's CPU; the simulation keeps using that exact one, as its checker).

const BUCKETS: usize = 1 << 14;

pub(crate) struct Dedup {
    slots: Box<[[(u64, u64); 2]]>,
}

impl Dedup {
    pub(crate) fn new() -> Self {
        Self {
            slots: vec![[(0, 0); 2]; BUCKETS].into_boxed_slice(),
        }
    }

    /// Records `id`; true on its first sighting.
    pub(crate) fn insert(&mut self, id: (u64, u64)) -> bool {
        // `id.0` is the mint time (ms) above 16 origin bits, `id.1` the origin's sequence.
        let origin = (id.0 & 0xffff).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50;
        let b = &mut self.slots[id.1.wrapping_add(origin) as usize & (BUCKETS - 1)];
        if b[0] == id || b[1] == id {
            return false;
        }
        b[1] = b[0];
        b[0] = id;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_recent_duplicates() {
        let mut d = Dedup::new();
        // Two origins interleaved, as ids are minted: time above origin bits, then a sequence.
        let id = |origin: u64, seq: u64| (((1_700_000_000_000 + seq / 100) << 16) | origin, seq);
        for i in 1..=10_000u64 {
            assert!(d.insert(id(0xa1, i)), "first sighting of a{i}");
            assert!(d.insert(id(0xb2, i + 500)), "first sighting of b{i}");
        }
        // The last thousand ids of each are still known.
        let caught = (9_001..=10_000u64)
            .filter(|&i| !d.insert(id(0xa1, i)) && !d.insert(id(0xb2, i + 500)))
            .count();
        assert!(caught > 950, "caught {caught} of 1000");
        assert!(!d.insert(id(0xa1, 10_000)));
        // Another origin's event with the same sequence is not a duplicate.
        assert!(d.insert(id(0xc3, 10_000)));
    }
}
