//! Digests and anti-entropy: what each neighbour is believed to hold, our full digest and its
//! 64-bit summary, and the answer to a neighbour's digest (the deltas it lacks, or ours).

use std::sync::Arc;

use meshgate_proto::v1;

use crate::registry::{FixedMap, Registry};
use crate::{Gossip, Runtime};

/// A neighbour and what we believe it holds: node → (incarnation, max_version), from its last
/// digest, the deltas it sent us and the ones we sent it.
#[derive(Debug)]
pub(crate) struct Neighbour {
    pub(crate) cost: u32,
    pub(crate) known: FixedMap<Arc<str>, (u64, u64)>,
    /// Its last digest or summary differed from ours (or the link just came up): it gets our
    /// full digest at each tick, not the summary, until one of its digests or summaries matches.
    pub(crate) differs: bool,
    /// Our `generation` when its summary last matched ours and `known` was set to our digest.
    pub(crate) synced: Option<u64>,
}

impl Registry {
    /// Handles a digest or summary from a neighbour (see [`on_gossip`](Self::on_gossip)).
    pub(crate) fn on_digest(&mut self, from: &str, digest: v1::Digest, rt: &mut impl Runtime) {
        let Some((peer, _)) = self.neighbours.get_key_value(from) else {
            return;
        };
        let peer = peer.clone();
        let ours = self.own_summary();
        if digest.summary_only {
            let differs = digest.summary != ours;
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.differs = differs;
                // It holds what we hold: pushes skip that (once per change of our digest).
                if !differs && n.synced != Some(self.generation) {
                    n.synced = Some(self.generation);
                    n.known.clear();
                    n.known.extend(
                        self.entries
                            .iter()
                            .map(|(name, e)| (name.clone(), (e.incarnation, e.max_version))),
                    );
                }
            }
            if differs {
                // It answers with the deltas we lack; ours (what it lacks) follow when its
                // answering digest reaches us, or at our next tick.
                rt.send(&peer, Gossip::Digest(self.digest()));
            }
            return;
        }
        // A full digest. A difference seen for the first time is answered with our full digest
        // at once, so that the peer sends what we lack as we send what it lacks; after that, the
        // full digest goes at each tick until the two match (never digest for digest, so no
        // ping-pong).
        let differs = digest_summary(digest.nodes.iter()) != ours;
        let newly = match self.neighbours.get_mut(&peer) {
            Some(n) => {
                let newly = differs && !n.differs;
                n.differs = differs;
                newly
            }
            None => false,
        };
        if newly {
            rt.send(&peer, Gossip::Digest(self.digest()));
        }
        let mut known: FixedMap<Arc<str>, (u64, u64)> = FixedMap::default();
        known.reserve(digest.nodes.len());
        for nd in digest.nodes {
            // Interned through our own entries where we hold them: fewer allocations.
            let name = match self.entries.get_key_value(nd.node.as_str()) {
                Some((name, _)) => name.clone(),
                None => Arc::from(nd.node),
            };
            known.insert(name, (nd.incarnation, nd.max_version));
        }
        let max_items = self.cfg.max_items_per_delta;
        let mut deltas = Vec::new();
        for (name, entry) in &self.entries {
            // Entries unreachable at the last tick are on their way out: not offered.
            if entry.unreachable_since.is_some() {
                continue;
            }
            let from_version = match known.get(name) {
                Some(&(inc, version)) if inc == entry.incarnation => version,
                Some(&(inc, _)) if inc > entry.incarnation => continue,
                _ => 0,
            };
            deltas.extend(entry.deltas(name, from_version, max_items));
        }
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.known = known;
            n.synced = None;
        }
        self.send_deltas(rt, &peer, deltas.into_iter());
    }

    /// Anti-entropy: sends every neighbour our digest, the summary alone to a neighbour that was
    /// in sync, the full digest to one whose last digest or summary differed.
    pub(crate) fn send_digests(&mut self, rt: &mut impl Runtime) {
        let summary = v1::Digest {
            summary: self.own_summary(),
            summary_only: true,
            ..v1::Digest::default()
        };
        let full = self
            .neighbours
            .values()
            .any(|n| n.differs)
            .then(|| self.digest());
        for (peer, n) in &self.neighbours {
            match &full {
                Some(full) if n.differs => rt.send(peer, Gossip::Digest(full.clone())),
                _ => rt.send(peer, Gossip::Digest(summary.clone())),
            }
        }
    }

    /// What we hold of every entry: (node, incarnation, max_version) — the full digest.
    pub fn digest(&self) -> v1::Digest {
        v1::Digest {
            nodes: self
                .entries
                .iter()
                .map(|(name, entry)| v1::NodeDigest {
                    node: name.to_string(),
                    incarnation: entry.incarnation,
                    max_version: entry.max_version,
                })
                .collect(),
            ..v1::Digest::default()
        }
    }

    /// The summary of our digest: a fixed 64-bit hash of (node, incarnation, max_version) of
    /// every entry held, in name order (see `Digest` in `link.proto`). Two registries with the
    /// same summary hold the same digest.
    pub fn summary(&self) -> u64 {
        self.summary.unwrap_or_else(|| self.compute_summary())
    }

    /// [`summary`](Self::summary), cached until the entries change.
    fn own_summary(&mut self) -> u64 {
        if let Some(summary) = self.summary {
            debug_assert_eq!(summary, self.compute_summary(), "stale summary cache");
            return summary;
        }
        let summary = self.compute_summary();
        self.summary = Some(summary);
        summary
    }

    fn compute_summary(&self) -> u64 {
        summary_of(
            self.entries
                .iter()
                .map(|(name, e)| (&**name, e.incarnation, e.max_version)),
        )
    }
}

/// The summary of a received full digest: as [`Registry::summary`], over its entries sorted by
/// name (as we send them; sorted here if a sender did not).
pub(crate) fn digest_summary<'a>(nodes: impl Iterator<Item = &'a v1::NodeDigest> + Clone) -> u64 {
    let key = |n: &'a v1::NodeDigest| (n.node.as_str(), n.incarnation, n.max_version);
    let mut sorted = nodes.clone().map(key);
    let mut prev: Option<&str> = None;
    let in_order = sorted.all(|(name, _, _)| {
        let ok = prev.is_none_or(|p| p < name);
        prev = Some(name);
        ok
    });
    if in_order {
        return summary_of(nodes.map(key));
    }
    let mut entries: Vec<(&str, u64, u64)> = nodes.map(key).collect();
    entries.sort_unstable();
    summary_of(entries.into_iter())
}

/// FNV-1a 64 over each (name, 0xff, incarnation LE, max_version LE), then the splitmix64
/// finaliser: fixed, so that every node computes the same value.
fn summary_of<'a>(entries: impl Iterator<Item = (&'a str, u64, u64)>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &byte in bytes {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, incarnation, max_version) in entries {
        eat(name.as_bytes());
        eat(&[0xff]);
        eat(&incarnation.to_le_bytes());
        eat(&max_version.to_le_bytes());
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
