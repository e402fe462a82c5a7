//! The invariant of the simulation: once faults stop and links are quiet, every node holds the
//! same registry as the owners for its connected component, its change feed mirrors exactly the
//! interest of the other nodes of its component, and an event routed hop by hop with
//! [`Routes::split`](crate::Routes::split) reaches exactly the interested nodes, once each, one
//! copy per link, and exactly one member of each matching queue group.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use meshgate_topic::{Filter, Matches};

use super::Sim;
use crate::HOP_LIMIT;
use crate::entry::Entry;

/// What one checked publication did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Destination nodes chosen at the origin (plain interest and one per queue group).
    pub destinations: usize,
    /// Copies of the event sent over links.
    pub link_copies: usize,
    /// The most copies sent over one link (1 once routes agree).
    pub max_copies_per_link: u32,
    /// Links crossed by the longest path.
    pub max_hops: u32,
}

/// A digest of an entry: incarnation, version and live items.
fn fingerprint(entry: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    entry.incarnation.hash(&mut h);
    entry.max_version.hash(&mut h);
    for (key, item) in entry.live() {
        (key, &item.value, item.version).hash(&mut h);
    }
    h.finish()
}

impl Sim {
    /// Connected components over the links that are up, among live nodes: a component number
    /// per node (`usize::MAX` for a dead node).
    pub fn components(&self) -> Vec<usize> {
        let mut comp = vec![usize::MAX; self.nodes.len()];
        let mut next = 0;
        for start in 0..self.nodes.len() {
            if comp[start] != usize::MAX || !self.nodes[start].alive {
                continue;
            }
            comp[start] = next;
            let mut stack = vec![start];
            while let Some(u) = stack.pop() {
                for &l in &self.nodes[u].links {
                    let link = &self.links[l];
                    let v = if link.a == u { link.b } else { link.a };
                    if link.up && comp[v] == usize::MAX {
                        comp[v] = next;
                        stack.push(v);
                    }
                }
            }
            next += 1;
        }
        comp
    }

    /// Cheap test of convergence: every live node holds, for exactly the nodes of its component,
    /// the (incarnation, max_version) of the owner.
    pub fn digests_agree(&self) -> bool {
        let comp = self.components();
        let sizes = component_sizes(&comp);
        self.nodes.iter().enumerate().all(|(i, node)| {
            if !node.alive {
                return true;
            }
            let entries = node.registry.entries();
            entries.len() == sizes[comp[i]]
                && entries.iter().all(|(name, entry)| {
                    let Some(&j) = self.index.get(name) else {
                        return false;
                    };
                    let own = &self.nodes[j].registry.entries()[name];
                    comp[j] == comp[i]
                        && (own.incarnation, own.max_version)
                            == (entry.incarnation, entry.max_version)
                })
        })
    }

    /// Full test of convergence: every live node holds the same entries as their owners (same
    /// incarnation, version and live items) for exactly the nodes of its component.
    pub fn check_converged(&self) -> Result<(), String> {
        let comp = self.components();
        let sizes = component_sizes(&comp);
        let truth: Vec<u64> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| fingerprint(&n.registry.entries()[&*self.names[j]]))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            let entries = node.registry.entries();
            for (name, entry) in entries {
                let j = self.index[name];
                if comp[j] != comp[i] {
                    return Err(format!(
                        "{} holds {name} of another component",
                        self.names[i]
                    ));
                }
                if fingerprint(entry) != truth[j] {
                    let own = &self.nodes[j].registry.entries()[name];
                    return Err(format!(
                        "{} holds {name} at ({}, {}), its owner is at ({}, {}) (or items differ)",
                        self.names[i],
                        entry.incarnation,
                        entry.max_version,
                        own.incarnation,
                        own.max_version
                    ));
                }
            }
            if entries.len() != sizes[comp[i]] {
                return Err(format!(
                    "{} holds {} entries, its component has {} nodes",
                    self.names[i],
                    entries.len(),
                    sizes[comp[i]]
                ));
            }
        }
        Ok(())
    }

    /// Runs until [`check_converged`](Self::check_converged) holds (tested every 100 ms of
    /// virtual time) or `max_ms` passed; returns the virtual time it took.
    pub fn run_until_converged(&mut self, max_ms: u64) -> Option<u64> {
        let start = self.now_ms();
        loop {
            if self.digests_agree() && self.check_converged().is_ok() {
                return Some(self.now_ms() - start);
            }
            if self.now_ms() - start >= max_ms {
                return None;
            }
            self.run_for(100);
        }
    }

    /// Every live node's mirror of its change feed (plus its own interest) equals the interest
    /// of the nodes of its component.
    pub fn check_mirrors(&mut self) -> Result<(), String> {
        self.drain_all();
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        let comp = self.components();
        let mut expected: HashMap<usize, HashSet<(u32, String, Option<String>)>> = HashMap::new();
        for (j, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            let set = expected.entry(comp[j]).or_default();
            for (filter, group) in node.interest.keys() {
                set.insert((j as u32, filter.clone(), group.clone()));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            let want = &expected[&comp[i]];
            if let Some(x) = want.iter().find(|x| !node.mirror_set.contains(*x)) {
                return Err(format!("{}'s mirror lacks {x:?}", self.names[i]));
            }
            if let Some(x) = node.mirror_set.iter().find(|x| !want.contains(*x)) {
                return Err(format!("{}'s mirror has stale {x:?}", self.names[i]));
            }
        }
        Ok(())
    }

    /// Publishes an event on `topic` at `origin` and routes it hop by hop: the origin matches
    /// the topic against its mirror, picks the nearest member of each matching queue group
    /// (rotating among equals), and every hop splits the destinations with its own routes,
    /// delivers locally once (dedup by event id) and forwards the rest. Checks that exactly the
    /// interested nodes of the origin's component got it, once each, one copy per link, and
    /// one member of each matching (group, filter).
    pub fn publish(&mut self, origin: usize, topic: &str) -> Result<PublishReport, String> {
        self.drain(origin);
        self.events += 1;
        let id = (origin as u64, self.events);
        let rr = self.events as usize;

        // At the origin: destinations from the mirror.
        let mut matches: Matches<u32, ()> = Matches::new();
        self.nodes[origin].mirror.match_into(topic, &mut matches);
        let mut dests: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
        for &(k, ()) in matches.subscribers() {
            dests.entry(k as usize).or_default();
        }
        let routes = self.nodes[origin].registry.routes();
        for g in matches.groups() {
            let candidates: Vec<&str> = g
                .members
                .iter()
                .map(|&(k, ())| &*self.names[k as usize])
                .collect();
            let Some(chosen) = routes.nearest(&candidates, rr) else {
                return Err(format!("no reachable member of {}/{}", g.group, g.filter));
            };
            let best = candidates.iter().filter_map(|c| routes.distance(c)).min();
            if routes.distance(chosen) != best {
                return Err(format!("{chosen} is not the nearest of {candidates:?}"));
            }
            let groups = dests.entry(self.index[chosen]).or_default();
            groups.push((g.group.to_owned(), g.filter.to_owned()));
        }
        let mut report = PublishReport {
            destinations: dests.len(),
            ..PublishReport::default()
        };

        // Hop by hop.
        let mut arrivals: BTreeMap<usize, u32> = BTreeMap::new();
        let mut served: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut copies: HashMap<(usize, usize), u32> = HashMap::new();
        let mut queue = VecDeque::from([(origin, dests.into_iter().collect::<Vec<_>>(), 0u32)]);
        while let Some((x, dests, hops)) = queue.pop_front() {
            report.max_hops = report.max_hops.max(hops);
            let node = &mut self.nodes[x];
            let routes = node.registry.routes();
            let split = routes.split(dests.iter().map(|(d, _)| &*self.names[*d]));
            if let Some(d) = split.unreachable.first() {
                return Err(format!("{} has no route to {d}", self.names[x]));
            }
            if split.local {
                *arrivals.entry(x).or_default() += 1;
                if node.recent.insert(id) {
                    let (_, groups) = dests.iter().find(|(d, _)| *d == x).expect("listed");
                    for key in groups {
                        served.entry(key.clone()).or_default().push(x);
                    }
                }
            }
            for (hop, names) in &split.per_hop {
                let h = self.index[&**hop];
                let link = self.link_of.get(&(x.min(h), x.max(h)));
                if !link.is_some_and(|&l| self.links[l].up) {
                    return Err(format!(
                        "{} forwards over a link that is down",
                        self.names[x]
                    ));
                }
                *copies.entry((x, h)).or_default() += 1;
                report.link_copies += 1;
                if hops + 1 > HOP_LIMIT {
                    return Err(format!("hop limit reached at {}", self.names[x]));
                }
                let sub: Vec<(usize, Vec<(String, String)>)> = names
                    .iter()
                    .map(|n| {
                        let d = self.index[*n];
                        let groups = dests.iter().find(|(x, _)| *x == d).expect("listed");
                        (d, groups.1.clone())
                    })
                    .collect();
                queue.push_back((h, sub, hops + 1));
            }
        }
        report.max_copies_per_link = copies.values().copied().max().unwrap_or(0);

        // The truth: every live node of the origin's component, from its local interest.
        let comp = self.components();
        let mut plain = BTreeSet::new();
        let mut groups: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
        for (j, node) in self.nodes.iter().enumerate() {
            if comp[j] != comp[origin] {
                continue;
            }
            for (filter, group) in node.interest.keys() {
                if !Filter::parse(filter).is_ok_and(|f| f.matches(topic)) {
                    continue;
                }
                match group {
                    None => {
                        plain.insert(j);
                    }
                    Some(g) => {
                        groups
                            .entry((g.clone(), filter.clone()))
                            .or_default()
                            .insert(j);
                    }
                }
            }
        }
        if let Some((x, n)) = arrivals.iter().find(|(_, n)| **n != 1) {
            return Err(format!("{} received the event {n} times", self.names[*x]));
        }
        let group_nodes: BTreeSet<usize> = served.values().flatten().copied().collect();
        let delivered: BTreeSet<usize> = arrivals.keys().copied().collect();
        let wanted: BTreeSet<usize> = plain.union(&group_nodes).copied().collect();
        if delivered != wanted {
            let missing: Vec<_> = wanted
                .difference(&delivered)
                .map(|&i| self.name(i))
                .collect();
            let extra: Vec<_> = delivered
                .difference(&wanted)
                .map(|&i| self.name(i))
                .collect();
            return Err(format!(
                "event on {topic} from {}: missing {missing:?}, unexpected {extra:?}",
                self.names[origin]
            ));
        }
        for (key, members) in &groups {
            match served.get(key).map(Vec::as_slice) {
                Some([one]) if members.contains(one) => {}
                other => {
                    return Err(format!("group {key:?} of {members:?} served by {other:?}"));
                }
            }
        }
        if let Some(key) = served.keys().find(|k| !groups.contains_key(*k)) {
            return Err(format!("group {key:?} served but not wanted"));
        }
        if report.max_copies_per_link > 1 {
            return Err(format!(
                "{} copies of one event on one link",
                report.max_copies_per_link
            ));
        }
        Ok(report)
    }
}

fn component_sizes(comp: &[usize]) -> Vec<usize> {
    let mut sizes = vec![0; comp.len() + 1];
    for &c in comp.iter().filter(|&&c| c != usize::MAX) {
        sizes[c] += 1;
    }
    sizes
}
