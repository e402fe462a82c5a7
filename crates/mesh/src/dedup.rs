//! Destination-side dedup of routed events: a fixed table of recent event ids.
//!
//! Each id hashes to a bucket of two slots; a sighting of an id already in its bucket is a
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
        let h = (id.0 ^ id.1.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = &mut self.slots[(h >> 50) as usize & (BUCKETS - 1)];
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
        for i in 1..=10_000u64 {
            assert!(d.insert((i << 16, 7)), "first sighting of {i}");
        }
        // The last thousand ids are still known.
        let caught = (9_001..=10_000u64)
            .filter(|i| !d.insert((i << 16, 7)))
            .count();
        assert!(caught > 950, "caught {caught} of 1000");
        assert!(!d.insert((10_000 << 16, 7)));
    }
}
