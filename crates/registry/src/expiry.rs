//! Reachability and expiry: routes recomputed when the link graph changes (interest announced
//! or withdrawn as nodes become reachable or not), entries deleted after staying unreachable and
//! remembered against resurrection, tombstones garbage-collected.

use std::sync::Arc;

use crate::Change;
use crate::registry::Registry;
use crate::routes::Routes;
use crate::view::interest_change;

/// A deleted item (ours or a peer's), remembered until it is garbage-collected.
#[derive(Debug)]
pub(crate) struct Tombstone {
    pub(crate) at: u64,
    pub(crate) node: Arc<str>,
    pub(crate) incarnation: u64,
    pub(crate) version: u64,
    pub(crate) key: String,
}

/// What we held of an entry deleted after staying unreachable, and when it was deleted.
#[derive(Debug)]
pub(crate) struct Expired {
    pub(crate) incarnation: u64,
    pub(crate) max_version: u64,
    pub(crate) at: u64,
}

impl Registry {
    /// Recomputes routes if the link graph changed, and announces interest of nodes that became
    /// reachable or unreachable.
    pub(crate) fn refresh_routes(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let routes = Routes::compute(&self.me, &self.entries);
        if routes != self.routes {
            self.changes.push(Change::TopologyChanged);
        }
        self.routes = routes;
        for (name, entry) in &self.entries {
            if *name == self.me {
                continue;
            }
            let now = self.routes.is_reachable(name);
            if now == self.routable.contains(name) {
                continue;
            }
            if now {
                self.routable.insert(name.clone());
            } else {
                self.routable.remove(name);
            }
            for (filter, group) in entry.interest() {
                self.changes.push(interest_change(now, name, filter, group));
            }
        }
    }

    /// Notes which entries are unreachable (as of the last route computation) and expires those
    /// unreachable for `expire_unreachable_ms`; forgets expired entries after
    /// `max(tombstone_gc_ms, 2 * expire_unreachable_ms)`.
    pub(crate) fn expire_unreachable(&mut self, now: u64) {
        let mut expire = Vec::new();
        for (name, entry) in self.entries.iter_mut() {
            if self.routes.is_reachable(name) {
                entry.unreachable_since = None;
                continue;
            }
            let since = *entry.unreachable_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.cfg.expire_unreachable_ms {
                expire.push(name.clone());
            }
        }
        for name in expire {
            // Unreachable, hence not routable: its interest was withdrawn already.
            if let Some(entry) = self.entries.remove(&name) {
                let record = Expired {
                    incarnation: entry.incarnation,
                    max_version: entry.max_version,
                    at: now,
                };
                self.expired.insert(name, record);
                self.summary = None;
                self.generation += 1;
            }
        }
        let horizon = self
            .cfg
            .tombstone_gc_ms
            .max(self.cfg.expire_unreachable_ms.saturating_mul(2));
        self.expired
            .retain(|_, e| now.saturating_sub(e.at) < horizon);
    }

    /// Drops tombstones older than `tombstone_gc_ms`; raises the entry's `gc_floor` so that a
    /// peer further behind gets a reset.
    pub(crate) fn collect_tombstones(&mut self, now: u64) {
        while let Some(t) = self.tombstones.front() {
            if now.saturating_sub(t.at) < self.cfg.tombstone_gc_ms {
                break;
            }
            let Some(t) = self.tombstones.pop_front() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&t.node) else {
                continue;
            };
            if entry.incarnation != t.incarnation {
                continue;
            }
            // Only if the key is still that tombstone (not set again, not replaced by a reset).
            if entry
                .items
                .get(&t.key)
                .is_some_and(|i| i.deleted && i.version == t.version)
            {
                entry.items.remove(&t.key);
                entry.gc_floor = entry.gc_floor.max(t.version);
            }
        }
    }
}
