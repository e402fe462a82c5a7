//! A seeded, deterministic simulation of a mesh of registries on virtual time (feature `sim`).
//!
//! [`Sim`] holds N nodes, each a [`Registry`] with its ground-truth local interest and a mirror
//! of its change feed (a [`Trie`] over node indices, as the IO layer keeps), linked by a random
//! connected topology. Gossip messages are delayed, reordered, duplicated and lost at
//! configurable rates; links are cut and restored (both ends see `link_down`/`link_up`),
//! partitions come and heal, nodes restart with a higher incarnation and an empty state.
//! `check.rs` holds the invariant checks: converged registries, mirrors equal to the truth, and
//! events routed hop by hop reaching exactly the interested nodes, once, one copy per link.

mod check;
mod rng;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use meshgate_topic::{Filter, Trie};

use crate::{Change, Gossip, RecentIds, Registry, RegistryConfig, Runtime};

pub use check::PublishReport;
pub use rng::{SimRng, filter, group, topic};

/// Parameters of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Random links added to the random spanning tree.
    pub extra_links: usize,
    /// Link costs are drawn in `1..=max_cost` (small, so that equal-cost paths abound).
    pub max_cost: u32,
    /// Each node ticks this often (with a random phase).
    pub tick_ms: u64,
    /// One-way message delay range.
    pub delay_ms: (u64, u64),
    /// Message faults in force at the start.
    pub faults: Faults,
    /// Passed to every registry.
    pub expire_unreachable_ms: u64,
    /// Passed to every registry.
    pub tombstone_gc_ms: u64,
    /// Passed to every registry.
    pub max_items_per_delta: usize,
}

impl SimConfig {
    /// `nodes` nodes, as many extra links as half the nodes, 1 s ticks, 5–50 ms delays, no
    /// faults; entries expire after 20 s unreachable, tombstones after 60 s.
    pub fn new(seed: u64, nodes: usize) -> Self {
        Self {
            seed,
            nodes,
            extra_links: nodes / 2,
            max_cost: 3,
            tick_ms: 1000,
            delay_ms: (5, 50),
            faults: Faults::default(),
            expire_unreachable_ms: 20_000,
            tombstone_gc_ms: 60_000,
            max_items_per_delta: 4096,
        }
    }
}

/// Rates of message faults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message may overtake earlier ones on its link (otherwise a link is
    /// FIFO, like a QUIC stream).
    pub reorder: f64,
}

/// Rates of the random events of [`Sim::chaos`], per step (probabilities, except
/// `interest_ops`, the mean number of interest changes per step).
#[derive(Clone, Copy, Debug)]
pub struct Chaos {
    /// Virtual time between steps.
    pub step_ms: u64,
    /// Mean number of random add/remove of interest per step.
    pub interest_ops: f64,
    /// A random link is cut.
    pub cut: f64,
    /// A random cut link is restored.
    pub restore: f64,
    /// A random node restarts (new incarnation, empty state).
    pub restart: f64,
    /// A random node goes down (until a `revive` or the final heal).
    pub kill: f64,
    /// A random dead node comes back (new incarnation).
    pub revive: f64,
    /// The mesh splits in two random halves.
    pub partition: f64,
    /// The partition heals.
    pub heal: f64,
}

impl Default for Chaos {
    fn default() -> Self {
        Self {
            step_ms: 200,
            interest_ops: 2.0,
            cut: 0.05,
            restore: 0.05,
            restart: 0.01,
            kill: 0.01,
            revive: 0.02,
            partition: 0.005,
            heal: 0.02,
        }
    }
}

/// Traffic counters of a simulation.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Encoded gossip bytes sent, per node (lost messages included).
    pub bytes_sent: Vec<u64>,
    /// Encoded gossip bytes received, per node.
    pub bytes_received: Vec<u64>,
    /// Gossip messages sent.
    pub messages: u64,
    /// Bytes of digests sent.
    pub digest_bytes: u64,
    /// Bytes of deltas sent.
    pub delta_bytes: u64,
    /// Messages lost, or dropped because their link went down.
    pub dropped: u64,
}

impl Stats {
    /// Zeroes the counters.
    pub fn reset(&mut self) {
        let n = self.bytes_sent.len();
        *self = Stats {
            bytes_sent: vec![0; n],
            bytes_received: vec![0; n],
            ..Stats::default()
        };
    }
}

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) registry: Registry,
    pub(crate) alive: bool,
    incarnation: u64,
    partition: u32,
    /// Ground truth: local interest with reference counts.
    pub(crate) interest: BTreeMap<(String, Option<String>), usize>,
    /// The change feed replayed, plus local 0→1 / N→0 transitions: the IO layer's trie.
    pub(crate) mirror: Trie<u32, ()>,
    pub(crate) mirror_set: HashSet<(u32, String, Option<String>)>,
    pub(crate) recent: RecentIds,
    links: Vec<usize>,
}

pub(crate) struct Link {
    pub(crate) a: usize,
    pub(crate) b: usize,
    cost: u32,
    admin_up: bool,
    pub(crate) up: bool,
    epoch: u64,
    /// Latest arrival time scheduled in each direction (a→b, b→a), for FIFO delivery.
    last_arrival: [u64; 2],
}

struct Queued {
    at: u64,
    seq: u64,
    what: What,
}

enum What {
    Deliver {
        link: usize,
        epoch: u64,
        from: usize,
        to: usize,
        msg: Gossip,
    },
    Tick(usize),
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Collects what a registry sends during one call.
struct Outbox {
    now: u64,
    out: Vec<(String, Gossip)>,
}

impl Runtime for Outbox {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn send(&mut self, to: &str, msg: Gossip) {
        self.out.push((to.to_owned(), msg));
    }
}

/// A simulated mesh on virtual time.
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    rng: SimRng,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize>,
    pub(crate) links: Vec<Link>,
    link_of: HashMap<(usize, usize), usize>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    faults: Faults,
    /// Traffic counters.
    pub stats: Stats,
    /// Inconsistencies seen in change feeds (a removal of what was not there...).
    pub(crate) errors: Vec<String>,
    pub(crate) events: u64,
}

impl Sim {
    /// Builds the nodes and a random connected topology (a random tree plus extra links), and
    /// brings every link up at time 0.
    pub fn new(cfg: SimConfig) -> Self {
        let mut sim = Sim {
            now: 0,
            rng: SimRng::new(cfg.seed),
            nodes: Vec::new(),
            names: Vec::new(),
            index: HashMap::new(),
            links: Vec::new(),
            link_of: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            faults: cfg.faults,
            stats: Stats::default(),
            errors: Vec::new(),
            events: 0,
            cfg,
        };
        for _ in 0..sim.cfg.nodes {
            sim.add_node();
        }
        for i in 1..sim.cfg.nodes {
            let j = sim.rng.below(i);
            let cost = sim.random_cost();
            sim.add_link(i, j, cost);
        }
        let mut extra = 0;
        let mut attempts = 0;
        while extra < sim.cfg.extra_links && sim.cfg.nodes > 2 && attempts < 100 * sim.cfg.nodes {
            attempts += 1;
            let (a, b) = (sim.rng.below(sim.cfg.nodes), sim.rng.below(sim.cfg.nodes));
            if a != b && !sim.link_of.contains_key(&(a.min(b), a.max(b))) {
                let cost = sim.random_cost();
                sim.add_link(a, b, cost);
                extra += 1;
            }
        }
        sim
    }

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

    /// Adds a link (administratively up) between two nodes and brings it up if it can be.
    pub fn add_link(&mut self, a: usize, b: usize, cost: u32) {
        let key = (a.min(b), a.max(b));
        if a == b || self.link_of.contains_key(&key) {
            return;
        }
        let l = self.links.len();
        self.links.push(Link {
            a: key.0,
            b: key.1,
            cost,
            admin_up: true,
            up: false,
            epoch: 0,
            last_arrival: [0; 2],
        });
        self.link_of.insert(key, l);
        self.nodes[a].links.push(l);
        self.nodes[b].links.push(l);
        self.refresh_link(l);
    }

    fn new_registry(&self, i: usize, incarnation: u64) -> Registry {
        let mut cfg = RegistryConfig::new(&*self.names[i], incarnation);
        cfg.role = if i.is_multiple_of(10) { "core" } else { "edge" }.to_owned();
        cfg.expire_unreachable_ms = self.cfg.expire_unreachable_ms;
        cfg.tombstone_gc_ms = self.cfg.tombstone_gc_ms;
        cfg.max_items_per_delta = self.cfg.max_items_per_delta;
        Registry::new(cfg)
    }

    fn random_cost(&mut self) -> u32 {
        self.rng.range(1, u64::from(self.cfg.max_cost.max(1))) as u32
    }

    /// The virtual time.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True without nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of links (up or down).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The registry of node `i`.
    pub fn registry(&self, i: usize) -> &Registry {
        &self.nodes[i].registry
    }

    /// The name of node `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Sets the message fault rates.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The random generator (for callers that pick origins, topics...).
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    fn schedule(&mut self, at: u64, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            what,
        }));
    }

    /// Runs the network for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.queue.peek().is_some_and(|Reverse(q)| q.at <= end) {
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            self.now = q.at;
            match q.what {
                What::Tick(i) => {
                    if self.nodes[i].alive {
                        self.call(i, |r, rt| r.tick(rt));
                        self.drain(i);
                    }
                    self.schedule(self.now + self.cfg.tick_ms, What::Tick(i));
                }
                What::Deliver {
                    link,
                    epoch,
                    from,
                    to,
                    msg,
                } => {
                    let l = &self.links[link];
                    if !l.up || l.epoch != epoch {
                        self.stats.dropped += 1;
                        continue;
                    }
                    self.stats.bytes_received[to] += msg.encoded_len() as u64;
                    let from = self.names[from].clone();
                    self.call(to, |r, rt| r.on_gossip(&from, msg, rt));
                }
            }
        }
        self.now = end;
    }

    /// Calls into node `i`'s registry and sends what it sent.
    fn call(&mut self, i: usize, f: impl FnOnce(&mut Registry, &mut Outbox)) {
        let mut outbox = Outbox {
            now: self.now,
            out: Vec::new(),
        };
        f(&mut self.nodes[i].registry, &mut outbox);
        for (to, msg) in outbox.out {
            self.transmit(i, &to, msg);
        }
    }

    /// Puts a message on the wire, with the configured faults.
    fn transmit(&mut self, from: usize, to: &str, msg: Gossip) {
        let Some(&to) = self.index.get(to) else {
            self.errors
                .push(format!("{} sent to unknown {to}", self.names[from]));
            return;
        };
        let Some(&link) = self.link_of.get(&(from.min(to), from.max(to))) else {
            self.errors
                .push(format!("{} sent to non-neighbour {to}", self.names[from]));
            return;
        };
        let len = msg.encoded_len() as u64;
        self.stats.messages += 1;
        self.stats.bytes_sent[from] += len;
        match msg {
            Gossip::Digest(_) => self.stats.digest_bytes += len,
            Gossip::Delta(_) => self.stats.delta_bytes += len,
        }
        if !self.links[link].up || self.rng.chance(self.faults.loss) {
            self.stats.dropped += 1;
            return;
        }
        let dir = usize::from(from != self.links[link].a);
        if self.rng.chance(self.faults.duplicate) {
            let at = self.arrival(link, dir);
            self.deliver_at(at, link, from, to, msg.clone());
        }
        let at = self.arrival(link, dir);
        self.deliver_at(at, link, from, to, msg);
    }

    /// When a message sent now on `link` in direction `dir` arrives: a random delay, and after
    /// the previous message unless this one may be reordered.
    fn arrival(&mut self, link: usize, dir: usize) -> u64 {
        let mut at = self.now + self.rng.range(self.cfg.delay_ms.0, self.cfg.delay_ms.1);
        if !self.rng.chance(self.faults.reorder) {
            at = at.max(self.links[link].last_arrival[dir]);
            self.links[link].last_arrival[dir] = at;
        }
        at
    }

    fn deliver_at(&mut self, at: u64, link: usize, from: usize, to: usize, msg: Gossip) {
        let epoch = self.links[link].epoch;
        self.schedule(
            at,
            What::Deliver {
                link,
                epoch,
                from,
                to,
                msg,
            },
        );
    }

    /// Brings a link up or down at both ends when its effective state changes.
    fn refresh_link(&mut self, l: usize) {
        let link = &self.links[l];
        let (a, b) = (link.a, link.b);
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        let up = link.admin_up && na.alive && nb.alive && na.partition == nb.partition;
        if up == link.up {
            return;
        }
        let cost = link.cost;
        let link = &mut self.links[l];
        link.up = up;
        link.epoch += 1;
        link.last_arrival = [0; 2];
        let (name_a, name_b) = (self.names[a].clone(), self.names[b].clone());
        for (me, peer) in [(a, name_b), (b, name_a)] {
            if !self.nodes[me].alive {
                continue;
            }
            if up {
                self.call(me, |r, rt| r.link_up(&peer, cost, rt));
            } else {
                self.call(me, |r, rt| r.link_down(&peer, rt));
            }
        }
    }

    /// Cuts the link between `a` and `b` (administratively).
    pub fn cut(&mut self, a: usize, b: usize) {
        if let Some(&l) = self.link_of.get(&(a.min(b), a.max(b))) {
            self.links[l].admin_up = false;
            self.refresh_link(l);
        }
    }

    /// Restores the link between `a` and `b`.
    pub fn restore(&mut self, a: usize, b: usize) {
        if let Some(&l) = self.link_of.get(&(a.min(b), a.max(b))) {
            self.links[l].admin_up = true;
            self.refresh_link(l);
        }
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

    /// Splits the mesh: nodes in `side` can no longer reach the others.
    pub fn partition(&mut self, side: &[usize]) {
        for node in &mut self.nodes {
            node.partition = 0;
        }
        for &i in side {
            self.nodes[i].partition = 1;
        }
        for l in 0..self.links.len() {
            self.refresh_link(l);
        }
    }

    /// Ends every fault: no message faults, no partition, every link restored, every node up.
    pub fn heal_all(&mut self) {
        self.faults = Faults::default();
        for node in &mut self.nodes {
            node.partition = 0;
        }
        for link in &mut self.links {
            link.admin_up = true;
        }
        for i in 0..self.nodes.len() {
            self.revive(i);
        }
        for l in 0..self.links.len() {
            self.refresh_link(l);
        }
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

    /// Random faults and interest changes for `duration_ms`, one step every `chaos.step_ms`.
    pub fn chaos(&mut self, duration_ms: u64, chaos: Chaos) {
        let end = self.now + duration_ms;
        let n = self.nodes.len();
        while self.now < end {
            let mut ops = chaos.interest_ops.floor() as usize;
            ops += usize::from(self.rng.chance(chaos.interest_ops.fract()));
            for _ in 0..ops {
                self.random_interest_op();
            }
            if self.rng.chance(chaos.cut) {
                let l = self.rng.below(self.links.len().max(1));
                if let Some(link) = self.links.get(l) {
                    let (a, b) = (link.a, link.b);
                    self.cut(a, b);
                }
            }
            if self.rng.chance(chaos.restore) {
                let down: Vec<usize> = (0..self.links.len())
                    .filter(|&l| !self.links[l].admin_up)
                    .collect();
                if !down.is_empty() {
                    let l = *self.rng.pick(&down);
                    let (a, b) = (self.links[l].a, self.links[l].b);
                    self.restore(a, b);
                }
            }
            if self.rng.chance(chaos.restart) {
                let i = self.rng.below(n);
                self.restart(i);
            }
            if self.rng.chance(chaos.kill) {
                let i = self.rng.below(n);
                self.kill(i);
            }
            if self.rng.chance(chaos.revive) {
                let dead: Vec<usize> = (0..n).filter(|&i| !self.nodes[i].alive).collect();
                if !dead.is_empty() {
                    let i = *self.rng.pick(&dead);
                    self.revive(i);
                }
            }
            if self.rng.chance(chaos.partition) {
                let side: Vec<usize> = (0..n).filter(|_| self.rng.chance(0.5)).collect();
                self.partition(&side);
            }
            if self.rng.chance(chaos.heal) {
                self.partition(&[]);
            }
            self.run_for(chaos.step_ms);
        }
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

    /// Gives node `i` `count` distinct literal filters at once (one flush).
    pub fn bulk_interest(&mut self, i: usize, count: usize) {
        for k in 0..count {
            let filter = format!("bulk/{}/f{k}", self.names[i]);
            self.subscribe(i, &filter, None, false);
        }
        self.call(i, |r, rt| r.flush(rt));
    }

    /// What node `holder` holds of `node`'s entry: (incarnation, max_version).
    pub fn held(&self, holder: usize, node: usize) -> Option<(u64, u64)> {
        let entry = self.nodes[holder]
            .registry
            .entries()
            .get(&*self.names[node])?;
        Some((entry.incarnation, entry.max_version))
    }

    /// Inconsistencies seen so far in change feeds and local interest accounting.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }
}
