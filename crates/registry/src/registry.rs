//! The registry state machine: this node's entry, what it knows of the others, local changes,
//! links, gossip in and the periodic work. The rest of it lives one concept per file around it:
//! `delta.rs` (deltas applied and sent), `digest.rs` (digests and anti-entropy), `expiry.rs`
//! (reachability, expiry and tombstones) and `view.rs` (the change feed and the views).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use meshgate_topic::Filter;

use crate::digest::Neighbour;
use crate::entry::{self, Entry, Item, LINK, ROLE};
use crate::expiry::{Expired, Tombstone};
use crate::routes::Routes;
use crate::{Change, Gossip, RegistryConfig, Runtime};

pub(crate) type FixedMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// The gossiped registry of one node: its own entry and what it knows of every other entry.
///
/// Local changes ([`add_interest`](Self::add_interest), [`set_attr`](Self::set_attr)) take
/// effect at once in this node's entry and are pushed to neighbours by [`flush`](Self::flush)
/// (also called by [`tick`](Self::tick), [`link_up`](Self::link_up) and
/// [`link_down`](Self::link_down)). The IO layer feeds it gossip ([`on_gossip`](Self::on_gossip)),
/// calls [`tick`](Self::tick) about every second, and mirrors [`take_changes`](Self::take_changes)
/// into its subscription trie (call it after each `on_gossip` and `tick`).
#[derive(Debug)]
pub struct Registry {
    pub(crate) cfg: RegistryConfig,
    pub(crate) me: Arc<str>,
    /// Every entry held, this node's own included.
    pub(crate) entries: BTreeMap<Arc<str>, Entry>,
    /// Local interest with reference counts: (filter, group) → count.
    interest: HashMap<(String, Option<String>), usize>,
    /// Own version up to which local changes were pushed to neighbours.
    flushed: u64,
    pub(crate) neighbours: BTreeMap<Arc<str>, Neighbour>,
    pub(crate) routes: Routes,
    /// The link graph changed since `routes` was computed.
    pub(crate) dirty: bool,
    /// Remote nodes whose interest the change feed has announced (reachable at the last
    /// route computation).
    pub(crate) routable: HashSet<Arc<str>>,
    pub(crate) changes: Vec<Change>,
    /// Tombstones in the order they were recorded, for garbage collection.
    pub(crate) tombstones: VecDeque<Tombstone>,
    /// Entries deleted after staying unreachable, remembered against resurrection.
    pub(crate) expired: FixedMap<Arc<str>, Expired>,
    /// The time of the last call that brought a runtime.
    pub(crate) now: u64,
    /// [`summary`](Self::summary) of the entries held, while they are unchanged.
    pub(crate) summary: Option<u64>,
    /// Counts the changes of the digest (entries created, replaced, advanced or expired).
    pub(crate) generation: u64,
}

impl Registry {
    /// A registry holding only this node's entry (with its `role` item when set).
    pub fn new(cfg: RegistryConfig) -> Self {
        let me: Arc<str> = Arc::from(cfg.name.as_str());
        let mut entries = BTreeMap::new();
        entries.insert(me.clone(), Entry::new(cfg.incarnation));
        let role = cfg.role.clone();
        let mut registry = Self {
            routes: Routes::new(me.clone()),
            cfg,
            me,
            entries,
            interest: HashMap::new(),
            flushed: 0,
            neighbours: BTreeMap::new(),
            dirty: false,
            routable: HashSet::new(),
            changes: Vec::new(),
            tombstones: VecDeque::new(),
            expired: FixedMap::default(),
            now: 0,
            summary: None,
            generation: 0,
        };
        if !role.is_empty() {
            registry.set_own(ROLE, Some(&role));
        }
        registry
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.me
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// The entries, for the simulation's checks.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn entries(&self) -> &BTreeMap<Arc<str>, Entry> {
        &self.entries
    }

    // ---- Local changes ------------------------------------------------------------------------

    /// Counts one more local subscriber of (`filter`, `group`); true on 0→1, when the interest is
    /// advertised. A filter that does not parse, or a group that is empty or holds a `/`, is
    /// refused (false, nothing counted).
    pub fn add_interest(&mut self, filter: &str, group: Option<&str>) -> bool {
        if Filter::parse(filter).is_err() || group.is_some_and(|g| !entry::valid_group(g)) {
            return false;
        }
        let count = self
            .interest
            .entry((filter.to_owned(), group.map(str::to_owned)))
            .or_insert(0);
        *count += 1;
        if *count > 1 {
            return false;
        }
        self.set_own(&entry::interest_key(filter, group), Some(""));
        true
    }

    /// Counts one local subscriber of (`filter`, `group`) less; true on N→0, when the interest
    /// is withdrawn. False if it was not counted.
    pub fn remove_interest(&mut self, filter: &str, group: Option<&str>) -> bool {
        let key = (filter.to_owned(), group.map(str::to_owned));
        let Some(count) = self.interest.get_mut(&key) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.interest.remove(&key);
        self.set_own(&entry::interest_key(filter, group), None);
        true
    }

    /// Local reference count of (`filter`, `group`).
    pub fn interest_count(&self, filter: &str, group: Option<&str>) -> usize {
        self.interest
            .get(&(filter.to_owned(), group.map(str::to_owned)))
            .copied()
            .unwrap_or(0)
    }

    /// Sets a free attribute of this node's entry (`role`, listener addresses...). Keys with a
    /// meaning of their own (`sub/`, `q/`, `link/`) are refused (ignored).
    pub fn set_attr(&mut self, key: &str, value: &str) {
        if !key.is_empty() && !entry::is_reserved(key) {
            self.set_own(key, Some(value));
        }
    }

    /// Deletes a free attribute (same keys as [`set_attr`](Self::set_attr)).
    pub fn remove_attr(&mut self, key: &str) {
        if !entry::is_reserved(key) {
            self.set_own(key, None);
        }
    }

    /// Pushes local changes not yet sent to every neighbour, as one delta (several messages if
    /// larger than `max_items_per_delta`).
    pub fn flush(&mut self, rt: &mut impl Runtime) {
        self.now = rt.now_ms();
        let own = &self.entries[&self.me];
        if own.max_version <= self.flushed {
            return;
        }
        let deltas = own.deltas(&self.me, self.flushed, self.cfg.max_items_per_delta);
        self.flushed = own.max_version;
        let peers: Vec<Arc<str>> = self.neighbours.keys().cloned().collect();
        for peer in peers {
            self.send_deltas(rt, &peer, deltas.iter().cloned());
        }
    }

    // ---- Links --------------------------------------------------------------------------------

    /// A link to `peer` is up: advertises `link/<peer>` (pushed to the other neighbours) and sends
    /// our full digest to `peer`, which answers with what we lack (and sends us its digest).
    pub fn link_up(&mut self, peer: &str, cost: u32, rt: &mut impl Runtime) {
        self.now = rt.now_ms();
        if peer == &*self.me || peer.is_empty() {
            return;
        }
        self.set_own(&format!("{LINK}{peer}"), Some(&cost.to_string()));
        // Pushed before the peer counts as a neighbour: it gets everything from the digests.
        self.flush(rt);
        let peer: Arc<str> = Arc::from(peer);
        self.neighbours.insert(
            peer.clone(),
            Neighbour {
                cost,
                known: FixedMap::default(),
                // Full digests are under way in both directions: no need to answer the peer's
                // with ours again; its digest sets the flag.
                differs: true,
                synced: None,
            },
        );
        rt.send(&peer, Gossip::Digest(self.digest()));
    }

    /// The link to `peer` is down: deletes `link/<peer>` and pushes that to the other neighbours.
    pub fn link_down(&mut self, peer: &str, rt: &mut impl Runtime) {
        self.now = rt.now_ms();
        if self.neighbours.remove(peer).is_none() {
            return;
        }
        self.set_own(&format!("{LINK}{peer}"), None);
        self.flush(rt);
    }

    /// Neighbours with a link up, in name order.
    pub fn neighbours(&self) -> impl Iterator<Item = &str> {
        self.neighbours.keys().map(|k| &**k)
    }

    /// Cost of the link to a neighbour.
    pub fn link_cost(&self, peer: &str) -> Option<u32> {
        self.neighbours.get(peer).map(|n| n.cost)
    }

    // ---- Gossip -------------------------------------------------------------------------------

    /// Handles a gossip message from `from`. A full digest from a neighbour is answered with the
    /// deltas it lacks, a summary that differs from ours with our full digest (call
    /// [`link_up`](Self::link_up) before passing on a link's gossip: a digest from a node that is
    /// not a neighbour is ignored); the new parts of a delta, from anyone, are applied and pushed
    /// on to the other neighbours. Malformed or stale parts are ignored.
    pub fn on_gossip(&mut self, from: &str, msg: Gossip, rt: &mut impl Runtime) {
        self.now = rt.now_ms();
        match msg {
            Gossip::Digest(digest) => self.on_digest(from, digest, rt),
            Gossip::Delta(delta) => self.on_delta(from, delta, rt),
        }
    }

    // ---- Periodic work ------------------------------------------------------------------------

    /// Periodic work (about every second): pushes pending local changes, notes which entries
    /// are unreachable and expires those unreachable for `expire_unreachable_ms`, drops old
    /// tombstones, and sends every neighbour our digest (anti-entropy): the summary alone to a
    /// neighbour that was in sync, the full digest to one whose last digest or summary differed.
    pub fn tick(&mut self, rt: &mut impl Runtime) {
        self.flush(rt);
        let now = self.now;
        self.refresh_routes();
        self.expire_unreachable(now);
        self.collect_tombstones(now);
        self.send_digests(rt);
    }

    // ---- Internals ----------------------------------------------------------------------------

    /// Sets (`Some`) or deletes (`None`) an item of our own entry at the next version, unless it
    /// already holds that.
    fn set_own(&mut self, key: &str, value: Option<&str>) {
        let now = self.now;
        let Some(own) = self.entries.get_mut(&self.me) else {
            return; // our own entry is created in `new` and never removed
        };
        let current = own.items.get(key);
        let unchanged = match (current, value) {
            (Some(item), Some(v)) => !item.deleted && item.value == v,
            (Some(item), None) => item.deleted,
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if unchanged {
            return;
        }
        own.max_version += 1;
        let version = own.max_version;
        self.summary = None;
        self.generation += 1;
        own.items.insert(
            key.to_owned(),
            Item {
                value: value.unwrap_or_default().to_owned(),
                version,
                deleted: value.is_none(),
            },
        );
        if value.is_none() {
            self.tombstones.push_back(Tombstone {
                at: now,
                node: self.me.clone(),
                incarnation: own.incarnation,
                version,
                key: key.to_owned(),
            });
        }
        if key.starts_with(LINK) {
            self.dirty = true;
        }
    }
}
