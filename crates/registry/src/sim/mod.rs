//! A seeded, deterministic simulation of a mesh of registries on virtual time (feature `sim`).
//!
//! [`Sim`] holds N nodes, each a [`Registry`] with its ground-truth local interest and a mirror
//! of its change feed (a [`Trie`](meshgate_topic::Trie) over node indices, as the IO layer
//! keeps), linked by a random connected topology. Gossip messages are delayed, reordered,
//! duplicated and lost at configurable rates; links are cut and restored (both ends see
//! `link_down`/`link_up`), partitions come and heal, nodes restart with a higher incarnation and
//! an empty state. This file is the driver: the configuration, the event queue on virtual time
//! and the chaos loop. `net.rs` holds the network model (links, faults, partitions, traffic
//! counters), `node.rs` the node harness (interest, change feed mirrors, restarts), `check.rs`
//! the invariant checks: converged registries, mirrors equal to the truth, and events routed hop
//! by hop reaching exactly the interested nodes, once, one copy per link.

mod check;
mod net;
mod node;
mod rng;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use self::net::Link;
use self::node::SimNode;
use crate::{Gossip, Registry};

pub use check::PublishReport;
pub use net::{Faults, Stats};
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

    /// Inconsistencies seen so far in change feeds and local interest accounting.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }
}
