//! The node harness of the simulation: a registry per node with its ground-truth local interest
//! and the mirror of its change feed, nodes added, killed, revived and restarted, and local
//! interest changed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use meshgate_topic::{Filter, Trie};

use super::rng::{filter, group};
use super::{Sim, What};
use crate::{Change, RecentIds, Registry, RegistryConfig};

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) registry: Registry,
    pub(crate) alive: bool,
    pub(super) incarnation: u64,
    pub(super) partition: u32,
    /// Ground truth: local interest with reference counts.
    pub(crate) interest: BTreeMap<(String, Option<String>), usize>,
    /// The change feed replayed, plus local 0→1 / N→0 transitions: the IO layer's trie.
    pub(crate) mirror: Trie<u32, ()>,
    pub(crate) mirror_set: HashSet<(u32, String, Option<String>)>,
    pub(crate) recent: RecentIds,
    pub(super) links: Vec<usize>,
}

impl Sim {
    /// Adds a node (no links yet); returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let name: Arc<str> = Arc::from(format!("n{i:04}"));
        self.names.push(name.clone());
        self.index.insert(name, i);
        let registry = self.new_registry(i, 1);
        self.nodes.push(SimNode {
            registry,
            alive: true,
            incarnation: 1,
            partition: 0,
            interest: BTreeMap::new(),
            mirror: Trie::new(),
            mirror_set: HashSet::new(),
            recent: RecentIds::new(4096),
            links: Vec::new(),
        });
        self.stats.bytes_sent.push(0);
        self.stats.bytes_received.push(0);
        let phase = self.rng.range(0, self.cfg.tick_ms - 1);
        self.schedule(self.now + phase, What::Tick(i));
        i
    }

    fn new_registry(&self, i: usize, incarnation: u64) -> Registry {
        let mut cfg = RegistryConfig::new(&*self.names[i], incarnation);
        cfg.role = if i.is_multiple_of(10) { "core" } else { "edge" }.to_owned();
        cfg.expire_unreachable_ms = self.cfg.expire_unreachable_ms;
        cfg.tombstone_gc_ms = self.cfg.tombstone_gc_ms;
        cfg.max_items_per_delta = self.cfg.max_items_per_delta;
        Registry::new(cfg)
    }

    /// Node `i` goes down: its links drop; it loses all state.
    pub fn kill(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        self.nodes[i].alive = false;
        for l in self.nodes[i].links.clone() {
            self.refresh_link(l);
        }
    }

    /// Node `i` comes back with a higher incarnation and an empty state.
    pub fn revive(&mut self, i: usize) {
        if self.nodes[i].alive {
            return;
        }
        let incarnation = self.nodes[i].incarnation + 1;
        let registry = self.new_registry(i, incarnation);
        let node = &mut self.nodes[i];
        node.incarnation = incarnation;
        node.registry = registry;
        node.interest.clear();
        node.mirror = Trie::new();
        node.mirror_set.clear();
        node.recent = RecentIds::new(4096);
        node.alive = true;
        for l in self.nodes[i].links.clone() {
            self.refresh_link(l);
        }
    }

    /// Node `i` restarts at once.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.revive(i);
    }

    /// One more local subscriber of (`filter`, `group`) at node `i`; flushes now or leaves it to
    /// the next tick.
    pub fn subscribe(&mut self, i: usize, filter: &str, group: Option<&str>, flush: bool) {
        let key = (filter.to_owned(), group.map(str::to_owned));
        let node = &mut self.nodes[i];
        let count = node.interest.entry(key).or_insert(0);
        *count += 1;
        let first = *count == 1;
        if node.registry.add_interest(filter, group) != first {
            self.errors
                .push(format!("{}: add_interest({filter}) != 0→1", self.names[i]));
        }
        if first {
            let parsed = Filter::parse(filter).expect("the simulation draws valid filters");
            node.mirror.insert(&parsed, group, i as u32, ());
            node.mirror_set
                .insert((i as u32, filter.to_owned(), group.map(str::to_owned)));
        }
        if flush {
            self.call(i, |r, rt| r.flush(rt));
        }
    }

    /// One local subscriber of (`filter`, `group`) less at node `i`.
    pub fn unsubscribe(&mut self, i: usize, filter: &str, group: Option<&str>, flush: bool) {
        let key = (filter.to_owned(), group.map(str::to_owned));
        let node = &mut self.nodes[i];
        let Some(count) = node.interest.get_mut(&key) else {
            return;
        };
        *count -= 1;
        let last = *count == 0;
        if last {
            node.interest.remove(&key);
            let parsed = Filter::parse(filter).expect("the simulation draws valid filters");
            node.mirror.remove(&parsed, group, i as u32);
            node.mirror_set
                .remove(&(i as u32, filter.to_owned(), group.map(str::to_owned)));
        }
        if node.registry.remove_interest(filter, group) != last {
            self.errors.push(format!(
                "{}: remove_interest({filter}) != N→0",
                self.names[i]
            ));
        }
        if flush {
            self.call(i, |r, rt| r.flush(rt));
        }
    }

    /// A random interest change at a random live node.
    pub fn random_interest_op(&mut self) {
        let i = self.rng.below(self.nodes.len());
        if !self.nodes[i].alive {
            return;
        }
        let flush = self.rng.chance(0.5);
        let held = self.nodes[i].interest.len();
        if held > 0 && self.rng.chance(0.4) {
            let k = self.rng.below(held);
            let Some((filter, group)) = self.nodes[i].interest.keys().nth(k).cloned() else {
                return;
            };
            self.unsubscribe(i, &filter, group.as_deref(), flush);
        } else {
            let filter = filter(&mut self.rng);
            let group = group(&mut self.rng);
            self.subscribe(i, &filter, group.as_deref(), flush);
        }
    }

    /// Gives node `i` `count` distinct literal filters at once (one flush).
    pub fn bulk_interest(&mut self, i: usize, count: usize) {
        for k in 0..count {
            let filter = format!("bulk/{}/f{k}", self.names[i]);
            self.subscribe(i, &filter, None, false);
        }
        self.call(i, |r, rt| r.flush(rt));
    }

    /// Replays node `i`'s change feed into its mirror, noting any inconsistency.
    pub(crate) fn drain(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        for change in node.registry.take_changes() {
            let (added, name, filter, group) = match change {
                Change::TopologyChanged => continue,
                Change::InterestAdded {
                    node,
                    filter,
                    group,
                } => (true, node, filter, group),
                Change::InterestRemoved {
                    node,
                    filter,
                    group,
                } => (false, node, filter, group),
            };
            let Some(&j) = self.index.get(&name) else {
                self.errors
                    .push(format!("{}: change for unknown {name}", self.names[i]));
                continue;
            };
            if j == i {
                self.errors
                    .push(format!("{}: change for its own interest", self.names[i]));
                continue;
            }
            let Ok(parsed) = Filter::parse(&filter) else {
                self.errors
                    .push(format!("{}: invalid filter {filter}", self.names[i]));
                continue;
            };
            let key = (j as u32, filter, group);
            let consistent = if added {
                node.mirror.insert(&parsed, key.2.as_deref(), key.0, ());
                node.mirror_set.insert(key.clone())
            } else {
                node.mirror.remove(&parsed, key.2.as_deref(), key.0);
                node.mirror_set.remove(&key)
            };
            if !consistent {
                self.errors.push(format!(
                    "{}: {} of {key:?} does not match the feed so far",
                    self.names[i],
                    if added { "addition" } else { "removal" }
                ));
            }
        }
    }

    /// Replays every node's change feed.
    pub fn drain_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive {
                self.drain(i);
            }
        }
    }

    /// What node `holder` holds of `node`'s entry: (incarnation, max_version).
    pub fn held(&self, holder: usize, node: usize) -> Option<(u64, u64)> {
        let entry = self.nodes[holder]
            .registry
            .entries()
            .get(&*self.names[node])?;
        Some((entry.incarnation, entry.max_version))
    }
}
