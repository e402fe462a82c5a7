//! The registry state machine: this node's entry, what it knows of the others, gossip in and
//! out, reachability, expiry and the change feed for the IO layer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use meshgate_proto::v1;
use meshgate_topic::Filter;

use crate::entry::{self, Entry, Item, LINK, ROLE};
use crate::routes::Routes;
use crate::{Change, Gossip, RegistryConfig, Runtime};

type FixedMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

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
    cfg: RegistryConfig,
    me: Arc<str>,
    /// Every entry held, this node's own included.
    entries: BTreeMap<Arc<str>, Entry>,
    /// Local interest with reference counts: (filter, group) → count.
    interest: HashMap<(String, Option<String>), usize>,
    /// Own version up to which local changes were pushed to neighbours.
    flushed: u64,
    neighbours: BTreeMap<Arc<str>, Neighbour>,
    routes: Routes,
    /// The link graph changed since `routes` was computed.
    dirty: bool,
    /// Remote nodes whose interest the change feed has announced (reachable at the last
    /// route computation).
    routable: HashSet<Arc<str>>,
    changes: Vec<Change>,
    /// Tombstones in the order they were recorded, for garbage collection.
    tombstones: VecDeque<Tombstone>,
    /// Entries deleted after staying unreachable, remembered against resurrection.
    expired: FixedMap<Arc<str>, Expired>,
    /// The time of the last call that brought a runtime.
    now: u64,
    /// [`summary`](Self::summary) of the entries held, while they are unchanged.
    summary: Option<u64>,
    /// Counts the changes of the digest (entries created, replaced, advanced or expired).
    generation: u64,
}

/// A neighbour and what we believe it holds: node → (incarnation, max_version), from its last
/// digest, the deltas it sent us and the ones we sent it.
#[derive(Debug)]
struct Neighbour {
    cost: u32,
    known: FixedMap<Arc<str>, (u64, u64)>,
    /// Its last digest or summary differed from ours (or the link just came up): it gets our
    /// full digest at each tick, not the summary, until one of its digests or summaries matches.
    differs: bool,
    /// Our `generation` when its summary last matched ours and `known` was set to our digest.
    synced: Option<u64>,
}

#[derive(Debug)]
struct Tombstone {
    at: u64,
    node: Arc<str>,
    incarnation: u64,
    version: u64,
    key: String,
}

#[derive(Debug)]
struct Expired {
    incarnation: u64,
    max_version: u64,
    at: u64,
}

/// One entry as shown by the admin API (`GET /v1/mesh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub name: Arc<str>,
    /// True for this node.
    pub is_self: bool,
    /// The incarnation held.
    pub incarnation: u64,
    /// The version held.
    pub max_version: u64,
    /// The `role` attribute, if any.
    pub role: Option<String>,
    /// Reachable at the last route computation (always true for this node).
    pub reachable: bool,
    /// Shortest-path cost at the last route computation.
    pub distance: Option<u64>,
    /// Next hop at the last route computation.
    pub next_hop: Option<String>,
    /// Number of live (filter, group) interests.
    pub interest: usize,
    /// Live links as advertised by the node: (peer, cost).
    pub links: Vec<(String, u32)>,
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

    fn on_digest(&mut self, from: &str, digest: v1::Digest, rt: &mut impl Runtime) {
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

    fn on_delta(&mut self, from: &str, delta: v1::Delta, rt: &mut impl Runtime) {
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
    fn send_deltas(
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

    // ---- Periodic work ------------------------------------------------------------------------

    /// Periodic work (about every second): pushes pending local changes, notes which entries
    /// are unreachable and expires those unreachable for `expire_unreachable_ms`, drops old
    /// tombstones, and sends every neighbour our digest (anti-entropy): the summary alone to a
    /// neighbour that was in sync, the full digest to one whose last digest or summary differed.
    pub fn tick(&mut self, rt: &mut impl Runtime) {
        self.flush(rt);
        let now = self.now;
        self.refresh_routes();

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
        self.collect_tombstones(now);

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

    /// Drops tombstones older than `tombstone_gc_ms`; raises the entry's `gc_floor` so that a
    /// peer further behind gets a reset.
    fn collect_tombstones(&mut self, now: u64) {
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

    // ---- Views --------------------------------------------------------------------------------

    /// Changes of routable remote interest since the last call, in order (see [`Change`]).
    /// Replaying them from the start gives exactly the live interest of the remote nodes
    /// reachable at the last route computation.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.refresh_routes();
        std::mem::take(&mut self.changes)
    }

    /// Shortest-path routes from this node, recomputed if the link graph changed.
    pub fn routes(&mut self) -> &Routes {
        self.refresh_routes();
        &self.routes
    }

    /// Every entry held, in name order, with reachability as of the last route computation.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.entries
            .iter()
            .map(|(name, entry)| NodeView {
                name: name.clone(),
                is_self: *name == self.me,
                incarnation: entry.incarnation,
                max_version: entry.max_version,
                role: entry.value(ROLE).map(str::to_owned),
                reachable: self.routes.is_reachable(name),
                distance: self.routes.distance(name),
                next_hop: self.routes.next_hop(name).map(str::to_owned),
                interest: entry.interest().count(),
                links: entry
                    .links()
                    .filter_map(|(peer, cost)| Some((peer.to_owned(), cost.parse().ok()?)))
                    .collect(),
            })
            .collect()
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

    fn compute_summary(&self) -> u64 {
        summary_of(
            self.entries
                .iter()
                .map(|(name, e)| (&**name, e.incarnation, e.max_version)),
        )
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

    /// A live attribute (or any live item) of a node's entry.
    pub fn attr(&self, node: &str, key: &str) -> Option<&str> {
        self.entries.get(node)?.value(key)
    }

    /// Live (filter, group) interest of a node's entry as held here, in key order.
    pub fn holds(&self, node: &str) -> bool {
        self.entries.contains_key(node)
    }

    /// Interest of `node` as (filter, group) pairs.
    pub fn interest_of(&self, node: &str) -> Vec<(String, Option<String>)> {
        self.entries.get(node).map_or_else(Vec::new, |e| {
            e.interest()
                .map(|(f, g)| (f.to_owned(), g.map(str::to_owned)))
                .collect()
        })
    }

    /// Number of entries held, this node's own included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: the registry holds at least this node's entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, for the simulation's checks.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn entries(&self) -> &BTreeMap<Arc<str>, Entry> {
        &self.entries
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

    /// Recomputes routes if the link graph changed, and announces interest of nodes that became
    /// reachable or unreachable.
    fn refresh_routes(&mut self) {
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

/// Notes that a neighbour holds (at least) what `nd` brings.
fn note_known(known: &mut FixedMap<Arc<str>, (u64, u64)>, nd: &v1::NodeDelta) {
    let has = (nd.incarnation, nd.to_version);
    match known.get_mut(nd.node.as_str()) {
        Some(h) => *h = (*h).max(has),
        None => {
            known.insert(Arc::from(nd.node.as_str()), has);
        }
    }
}

fn interest_change(added: bool, node: &Arc<str>, filter: &str, group: Option<&str>) -> Change {
    let (node, filter, group) = (node.clone(), filter.to_owned(), group.map(str::to_owned));
    if added {
        Change::InterestAdded {
            node,
            filter,
            group,
        }
    } else {
        Change::InterestRemoved {
            node,
            filter,
            group,
        }
    }
}
