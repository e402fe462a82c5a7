//! The network model of the simulation: links with their cost, delay, loss, duplication and
//! reordering, cut and restored links, partitions, the runtime through which a registry sends,
//! and the traffic counters.

use super::{Sim, What};
use crate::{Gossip, Registry, Runtime};

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

/// A link between two nodes (`a < b`), carrying gossip both ways.
pub(crate) struct Link {
    pub(crate) a: usize,
    pub(crate) b: usize,
    pub(super) cost: u32,
    pub(super) admin_up: bool,
    pub(crate) up: bool,
    pub(super) epoch: u64,
    /// Latest arrival time scheduled in each direction (a→b, b→a), for FIFO delivery.
    pub(super) last_arrival: [u64; 2],
}

/// Collects what a registry sends during one call.
pub(super) struct Outbox {
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

impl Sim {
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

    pub(super) fn random_cost(&mut self) -> u32 {
        self.rng.range(1, u64::from(self.cfg.max_cost.max(1))) as u32
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

    /// Brings a link up or down at both ends when its effective state changes.
    pub(super) fn refresh_link(&mut self, l: usize) {
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

    /// Calls into node `i`'s registry and sends what it sent.
    pub(super) fn call(&mut self, i: usize, f: impl FnOnce(&mut Registry, &mut Outbox)) {
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
}
