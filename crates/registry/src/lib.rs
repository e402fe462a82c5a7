//! The gossiped mesh registry of meshgate and the routing decisions taken from it.
//!
//! Each node owns one versioned entry (its interest, its links, its role and free attributes);
//! entries spread by Scuttlebutt-style gossip: deltas pushed to neighbours, digests compared on
//! link-up and at each tick (anti-entropy; at a tick only a 64-bit summary of the digest while
//! neighbours agree). From the links of every entry, the [`Routes`] give the
//! shortest-path next hop towards any node, split a destination set per next hop and pick the
//! nearest member of a queue group. See `docs/REGISTRY.md` for the rules and the invariant.
//!
//! This crate is pure: no tokio, no sockets, no clock, no threads, no randomness. It talks to the
//! world only through the small [`Runtime`] trait (the time and a way to send a [`Gossip`]
//! message to a neighbour), so that a seeded simulation (feature `sim`) drives a thousand nodes
//! on virtual time.

mod delta;
mod digest;
mod entry;
mod expiry;
mod recent;
mod registry;
mod routes;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;
mod view;

use std::sync::Arc;

use meshgate_proto::v1;

pub use recent::RecentIds;
pub use registry::Registry;
pub use routes::{Routes, Split};
pub use view::NodeView;

/// Links an event may cross before it is dropped (a guard against loops while routes converge).
pub const HOP_LIMIT: u32 = 16;

/// The small runtime the registry needs: the time and a way to reach a neighbour.
///
/// The IO layer implements it over QUIC links; the simulation over a virtual network.
pub trait Runtime {
    /// Milliseconds on a monotonic clock (any origin; only differences matter).
    fn now_ms(&self) -> u64;
    /// Queues `msg` for the neighbour `to`. Best effort: a lost message is repaired by
    /// anti-entropy.
    fn send(&mut self, to: &str, msg: Gossip);
}

/// A registry gossip message, as carried in a link `Frame`.
#[derive(Clone, Debug, PartialEq)]
pub enum Gossip {
    /// Every entry the sender holds: (node, incarnation, max_version); or, with `summary_only`,
    /// only a 64-bit hash of that list (see [`Registry::summary`]).
    Digest(v1::Digest),
    /// Items of some entries.
    Delta(v1::Delta),
}

impl Gossip {
    /// Encoded size of the message body in bytes (without the frame around it).
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            Gossip::Digest(d) => d.encoded_len(),
            Gossip::Delta(d) => d.encoded_len(),
        }
    }
}

/// Settings of one node's registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// This node's name, unique in the mesh.
    pub name: String,
    /// Grows at each start of the node (the start time in milliseconds is a good value).
    pub incarnation: u64,
    /// "edge" or "core"; advertised as the `role` item (nothing when empty).
    pub role: String,
    /// An entry whose node stays unreachable this long is deleted (default 60 s).
    pub expire_unreachable_ms: u64,
    /// Items per `Delta` message; larger sets are sent in several messages (default 4096).
    pub max_items_per_delta: usize,
    /// Tombstones are dropped after this long (default 10 min); a peer that is further behind
    /// then receives the whole live entry (`reset`). Expired entries are remembered for
    /// `max(tombstone_gc_ms, 2 * expire_unreachable_ms)` against resurrection.
    pub tombstone_gc_ms: u64,
}

impl RegistryConfig {
    /// A configuration with the default timings.
    pub fn new(name: impl Into<String>, incarnation: u64) -> Self {
        Self {
            name: name.into(),
            incarnation,
            role: String::new(),
            expire_unreachable_ms: 60_000,
            max_items_per_delta: 4096,
            tombstone_gc_ms: 600_000,
        }
    }
}

/// A change of the routable remote interest, for the IO layer to mirror into its trie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A reachable remote node now has interest in `filter` (in queue `group` if set).
    InterestAdded {
        /// The node.
        node: Arc<str>,
        /// A valid native filter.
        filter: String,
        /// The queue group, or `None` for plain interest.
        group: Option<String>,
    },
    /// A remote node no longer has this interest, or is no longer reachable.
    InterestRemoved {
        /// The node.
        node: Arc<str>,
        /// A valid native filter.
        filter: String,
        /// The queue group, or `None` for plain interest.
        group: Option<String>,
    },
    /// Routes changed (next hops or distances): cached routing decisions are stale.
    TopologyChanged,
}
