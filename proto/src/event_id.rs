//! Time-ordered 16-byte event ids.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A 16-byte event id: 48 bits of milliseconds since the Unix epoch, 16 bits naming the node's
/// incarnation at random, then a 64-bit counter. Ids from one generator sort in minting order;
/// ids from different nodes sort by time first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId(u128);

impl EventId {
    /// Builds an id from its two wire halves.
    pub fn from_parts(hi: u64, lo: u64) -> Self {
        Self(((hi as u128) << 64) | lo as u128)
    }

    /// The two wire halves (`id_hi`, `id_lo`).
    pub fn parts(self) -> (u64, u64) {
        ((self.0 >> 64) as u64, self.0 as u64)
    }

    /// Milliseconds since the Unix epoch when the id was minted.
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    /// The raw 16 bytes, big-endian.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for EventId {
    /// 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for EventId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(Self)
    }
}

/// Mints event ids. Shared by all publishers of a node; one atomic add per id.
#[derive(Debug)]
pub struct EventIdGen {
    node_bits: u64,
    counter: AtomicU64,
}

impl EventIdGen {
    /// A generator whose ids carry `node_bits` (16 bits, e.g. random per incarnation) and whose
    /// counter starts at `start`.
    pub fn new(node_bits: u16, start: u64) -> Self {
        Self {
            node_bits: node_bits as u64,
            counter: AtomicU64::new(start),
        }
    }

    /// Mints the next id for the given wall-clock time.
    pub fn next(&self, now_ms: u64) -> EventId {
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let hi = (now_ms << 16) | self.node_bits;
        EventId::from_parts(hi, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_round_trip() {
        let g = EventIdGen::new(0xabcd, 7);
        let a = g.next(1_700_000_000_000);
        let b = g.next(1_700_000_000_000);
        let c = g.next(1_700_000_000_001);
        assert!(a < b && b < c);
        assert_eq!(a.timestamp_ms(), 1_700_000_000_000);
        let (hi, lo) = c.parts();
        assert_eq!(EventId::from_parts(hi, lo), c);
        assert_eq!(c.to_string().parse::<EventId>().unwrap(), c);
        assert_eq!(c.to_string().len(), 32);
    }
}
