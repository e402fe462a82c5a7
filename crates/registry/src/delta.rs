//! Deltas: the new parts of a delta applied to the entries held (created, advanced or replaced;
//! stale, malformed or expired ones refused) and pushed on, and deltas packed for a neighbour
//! without what it is known to hold.

use std::collections::HashSet;
use std::sync::Arc;

use meshgate_proto::v1;

use crate::entry::{self, Entry, Item, LINK};
use crate::expiry::Tombstone;
use crate::registry::{FixedMap, Registry};
use crate::view::interest_change;
use crate::{Gossip, Runtime};

impl Registry {
    /// Applies a delta from `from` and pushes its new parts on (see
    /// [`on_gossip`](Self::on_gossip)).
    pub(crate) fn on_delta(&mut self, from: &str, delta: v1::Delta, rt: &mut impl Runtime) {
        let mut forward = Vec::new();
        for nd in delta.nodes {
            if let Some(n) = self.neighbours.get_mut(from) {
                note_known(&mut n.known, &nd);
            }
            if let Some(applied) = self.apply(nd) {
                forward.push(applied);
            }
        }
        if forward.is_empty() {
            return;
        }
        let peers: Vec<Arc<str>> = self
            .neighbours
            .keys()
            .filter(|p| ***p != *from)
            .cloned()
            .collect();
        for peer in peers {
            self.send_deltas(rt, &peer, forward.iter().cloned());
        }
    }

    /// Applies one node delta; returns the part that was new to us (to push on), if any.
    fn apply(&mut self, mut nd: v1::NodeDelta) -> Option<v1::NodeDelta> {
        if nd.node == *self.me || !entry::well_formed(&nd) {
            return None;
        }
        let full = nd.reset || nd.from_version == 0;
        let Some((name, held)) = self.entries.get_key_value(nd.node.as_str()) else {
            if !full || !self.may_return(&nd) {
                return None;
            }
            self.expired.remove(nd.node.as_str());
            let name: Arc<str> = Arc::from(nd.node.as_str());
            self.replace(name, Entry::from_delta(&nd));
            return Some(nd);
        };
        let name = name.clone();
        if nd.incarnation < held.incarnation {
            return None;
        }
        if nd.incarnation > held.incarnation || nd.reset {
            // A new incarnation replaces what we hold; so does a reset that brings us further.
            if !full || (nd.incarnation == held.incarnation && nd.to_version <= held.max_version) {
                return None;
            }
            self.replace(name, Entry::from_delta(&nd));
            return Some(nd);
        }
        if nd.to_version <= held.max_version || nd.from_version > held.max_version {
            return None; // nothing new, or a gap that anti-entropy will fill
        }
        // Each (origin, version) is applied once: skip what we already hold.
        let old = held.max_version;
        nd.items.retain(|kv| kv.version > old);
        nd.from_version = old;
        let routable = self.routable.contains(&name);
        let entry = self.entries.get_mut(&name)?; // held above
        for kv in &nd.items {
            let item = Item::from(kv);
            let previous = entry.items.insert(kv.key.clone(), item.clone());
            let was_live = previous.as_ref().is_some_and(|p| !p.deleted);
            if kv.deleted {
                self.tombstones.push_back(Tombstone {
                    at: self.now,
                    node: name.clone(),
                    incarnation: entry.incarnation,
                    version: kv.version,
                    key: kv.key.clone(),
                });
            }
            if kv.key.starts_with(LINK) {
                let before = previous.filter(|p| !p.deleted).map(|p| p.value);
                let after = (!kv.deleted).then_some(&item.value);
                self.dirty |= before.as_ref() != after;
            } else if routable
                && was_live == kv.deleted
                && let Some((filter, group)) = entry::parse_interest(&kv.key)
            {
                self.changes
                    .push(interest_change(!kv.deleted, &name, filter, group));
            }
        }
        entry.max_version = nd.to_version;
        self.summary = None;
        self.generation += 1;
        Some(nd)
    }

    /// May an entry we do not hold be (re)created from `nd`? Not if we expired it and `nd`
    /// brings nothing newer, unless the node is connected to us again.
    fn may_return(&mut self, nd: &v1::NodeDelta) -> bool {
        let Some(old) = self.expired.get(nd.node.as_str()) else {
            return true;
        };
        if nd.incarnation != old.incarnation {
            return nd.incarnation > old.incarnation;
        }
        if nd.to_version > old.max_version {
            return true;
        }
        // A stale copy: accepted only if the node has a live link, advertised by both ends, to
        // a node we reach.
        self.refresh_routes();
        let back = format!("{LINK}{}", nd.node);
        nd.items
            .iter()
            .filter(|kv| !kv.deleted)
            .filter_map(|kv| kv.key.strip_prefix(LINK))
            .any(|peer| {
                self.routes.is_reachable(peer)
                    && self
                        .entries
                        .get(peer)
                        .is_some_and(|e| e.value(&back).is_some())
            })
    }

    /// Installs `entry` for `name`, replacing what we held; announces the difference in
    /// interest if the node is routable.
    fn replace(&mut self, name: Arc<str>, entry: Entry) {
        for (key, item) in entry.items.iter().filter(|(_, item)| item.deleted) {
            self.tombstones.push_back(Tombstone {
                at: self.now,
                node: name.clone(),
                incarnation: entry.incarnation,
                version: item.version,
                key: key.clone(),
            });
        }
        let old = self.entries.insert(name.clone(), entry);
        self.summary = None;
        self.generation += 1;
        self.dirty = true;
        if !self.routable.contains(&name) {
            return;
        }
        let new = &self.entries[&name];
        let before: HashSet<(&str, Option<&str>)> = old
            .as_ref()
            .map(|e| e.interest().collect())
            .unwrap_or_default();
        let after: HashSet<(&str, Option<&str>)> = new.interest().collect();
        // Removals first, in key order (deterministic), then additions.
        if let Some(old) = &old {
            for (filter, group) in old.interest().filter(|i| !after.contains(i)) {
                self.changes
                    .push(interest_change(false, &name, filter, group));
            }
        }
        for (filter, group) in new.interest().filter(|i| !before.contains(i)) {
            self.changes
                .push(interest_change(true, &name, filter, group));
        }
    }

    /// Sends deltas to one neighbour, packed into messages of at most `max_items_per_delta`
    /// items, skipping what it is known to hold already.
    pub(crate) fn send_deltas(
        &mut self,
        rt: &mut impl Runtime,
        peer: &Arc<str>,
        deltas: impl Iterator<Item = v1::NodeDelta>,
    ) {
        let Some(neighbour) = self.neighbours.get_mut(peer) else {
            return;
        };
        let max_items = self.cfg.max_items_per_delta.max(1);
        let mut batch = v1::Delta::default();
        let mut items = 0;
        for nd in deltas {
            let has = neighbour.known.get(nd.node.as_str()).copied();
            if has.is_some_and(|h| h >= (nd.incarnation, nd.to_version)) {
                continue;
            }
            if items > 0 && items + nd.items.len() > max_items {
                rt.send(peer, Gossip::Delta(std::mem::take(&mut batch)));
                items = 0;
            }
            note_known(&mut neighbour.known, &nd);
            items += nd.items.len();
            batch.nodes.push(nd);
        }
        if !batch.nodes.is_empty() {
            rt.send(peer, Gossip::Delta(batch));
        }
    }
}

/// Notes that a neighbour holds (at least) what `nd` brings.
pub(crate) fn note_known(known: &mut FixedMap<Arc<str>, (u64, u64)>, nd: &v1::NodeDelta) {
    let has = (nd.incarnation, nd.to_version);
    match known.get_mut(nd.node.as_str()) {
        Some(h) => *h = (*h).max(has),
        None => {
            known.insert(Arc::from(nd.node.as_str()), has);
        }
    }
}
