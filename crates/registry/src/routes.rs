//! Shortest paths from this node over the bidirectional link graph, and the per-event routing
//! decisions taken from them: split a destination set per next hop, pick the nearest member of a
//! queue group.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use crate::entry::{Entry, LINK};

/// Shortest-path next hops and distances from this node to every reachable node.
///
/// Paths are compared by total cost (the integer link costs, the larger of the two ends'
/// advertised costs, at least 1), then by the sum of a fixed hash of each edge, then by node
/// name. The hash makes shortest paths unique in practice, so every node picks the same path
/// between any two nodes and hop-by-hop forwarding follows one tree from the origin: one copy
/// of an event per link.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routes {
    me: Arc<str>,
    /// Reachable nodes, this node included (distance 0, no next hop).
    table: HashMap<Arc<str>, Route, foldhash::fast::FixedState>,
}

#[derive(Clone, Debug, PartialEq)]
struct Route {
    distance: u64,
    next_hop: Option<Arc<str>>,
}

/// A destination set partitioned by next hop (see [`Routes::split`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split<'a> {
    /// This node is one of the destinations.
    pub local: bool,
    /// One item per next hop (a neighbour): the destinations reached through it.
    pub per_hop: Vec<(Arc<str>, Vec<&'a str>)>,
    /// Destinations with no route.
    pub unreachable: Vec<&'a str>,
}

impl Split<'_> {
    /// Empties the split, keeping the capacity of its outer vectors.
    pub fn clear(&mut self) {
        self.local = false;
        self.per_hop.clear();
        self.unreachable.clear();
    }
}

impl Routes {
    /// Routes of a node that knows no other node.
    pub fn new(me: Arc<str>) -> Self {
        let mut table = HashMap::default();
        table.insert(
            me.clone(),
            Route {
                distance: 0,
                next_hop: None,
            },
        );
        Self { me, table }
    }

    /// The next hop (a neighbour) towards `dest`; `None` if unreachable or `dest` is this node.
    pub fn next_hop(&self, dest: &str) -> Option<&str> {
        self.table.get(dest)?.next_hop.as_deref()
    }

    /// Every reachable node other than this one, with its next hop.
    pub fn next_hops(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> {
        self.table
            .iter()
            .filter_map(|(dest, r)| r.next_hop.as_ref().map(|hop| (dest, hop)))
    }

    /// Cost of the shortest path to `dest` (0 for this node); `None` if unreachable.
    pub fn distance(&self, dest: &str) -> Option<u64> {
        self.table.get(dest).map(|r| r.distance)
    }

    /// True when `dest` is this node or reachable from it.
    pub fn is_reachable(&self, dest: &str) -> bool {
        self.table.contains_key(dest)
    }

    /// Number of reachable nodes, this node included.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Always false: this node reaches itself.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Partitions destination nodes by next hop (one copy of an event per link); this node and
    /// unreachable destinations are reported separately.
    pub fn split<'a>(&self, dests: impl IntoIterator<Item = &'a str>) -> Split<'a> {
        let mut out = Split::default();
        self.split_into(dests, &mut out);
        out
    }

    /// Like [`split`](Self::split), into `out` (cleared first) to reuse its allocations.
    pub fn split_into<'a>(&self, dests: impl IntoIterator<Item = &'a str>, out: &mut Split<'a>) {
        out.clear();
        for dest in dests {
            let Some(route) = self.table.get(dest) else {
                out.unreachable.push(dest);
                continue;
            };
            let Some(hop) = &route.next_hop else {
                out.local = true;
                continue;
            };
            // Few next hops per event: a linear scan beats a map. Hops share one Arc per name.
            match out.per_hop.iter_mut().find(|(h, _)| Arc::ptr_eq(h, hop)) {
                Some((_, list)) => list.push(dest),
                None => out.per_hop.push((hop.clone(), vec![dest])),
            }
        }
    }

    /// Among `candidates` (which may include this node, at distance 0), the nearest reachable
    /// one; among equally near ones, the `rr`-th (modulo their number) in name order, so that
    /// successive calls with `rr` counting up rotate over them.
    pub fn nearest<'a>(&self, candidates: &[&'a str], rr: usize) -> Option<&'a str> {
        let mut best = u64::MAX;
        let mut ties = 0usize;
        let mut first = None;
        for &c in candidates {
            let Some(d) = self.distance(c) else { continue };
            if d < best {
                (best, ties, first) = (d, 1, Some(c));
            } else if d == best && first != Some(c) {
                ties += 1;
            }
        }
        if ties <= 1 {
            return first;
        }
        let mut tied: Vec<&'a str> = candidates
            .iter()
            .copied()
            .filter(|c| self.distance(c) == Some(best))
            .collect();
        tied.sort_unstable();
        tied.dedup();
        Some(tied[rr % tied.len()])
    }

    /// Dijkstra from `me` over the links both ends advertise.
    pub(crate) fn compute(me: &Arc<str>, entries: &BTreeMap<Arc<str>, Entry>) -> Self {
        let names: Vec<&Arc<str>> = entries.keys().collect();
        let index: HashMap<&str, usize, foldhash::fast::FixedState> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (&***name, i))
            .collect();
        let Some(&source) = index.get(&**me) else {
            return Self::new(me.clone());
        };
        let adjacency = adjacency(&names, &index, entries);

        // Lexicographic (cost, edge-hash sum) distances; the node index (name order) breaks
        // what ties remain.
        let n = names.len();
        let mut best: Vec<Option<(u64, u128)>> = vec![None; n];
        let mut hop = vec![usize::MAX; n];
        let mut done = vec![false; n];
        let mut heap = BinaryHeap::new();
        best[source] = Some((0, 0));
        heap.push(Reverse((0u64, 0u128, source)));
        while let Some(Reverse((d, t, u))) = heap.pop() {
            if std::mem::replace(&mut done[u], true) {
                continue;
            }
            for &(v, cost, tie) in &adjacency[u] {
                if done[v] {
                    continue;
                }
                let candidate = (d.saturating_add(cost), t + u128::from(tie));
                if best[v].is_none_or(|b| candidate < b) {
                    best[v] = Some(candidate);
                    hop[v] = if u == source { v } else { hop[u] };
                    heap.push(Reverse((candidate.0, candidate.1, v)));
                }
            }
        }

        let mut table = HashMap::default();
        for (i, b) in best.iter().enumerate() {
            let Some((distance, _)) = b else { continue };
            let next_hop = (i != source).then(|| names[hop[i]].clone());
            table.insert(
                names[i].clone(),
                Route {
                    distance: *distance,
                    next_hop,
                },
            );
        }
        // Every route through one neighbour shares that neighbour's Arc (see `split_into`).
        Self {
            me: me.clone(),
            table,
        }
    }
}

/// Edges both ends advertise: per node, (other node, cost, tie-break hash).
fn adjacency(
    names: &[&Arc<str>],
    index: &HashMap<&str, usize, foldhash::fast::FixedState>,
    entries: &BTreeMap<Arc<str>, Entry>,
) -> Vec<Vec<(usize, u64, u64)>> {
    let mut adjacency = vec![Vec::new(); names.len()];
    for (i, (name, entry)) in entries.iter().enumerate() {
        let back = format!("{LINK}{name}");
        for (peer, cost) in entry.links() {
            let Some(&j) = index.get(peer) else { continue };
            // Each pair once, from its smaller end; it needs the other end's item too.
            if j <= i {
                continue;
            }
            let Some(back_cost) = entries[names[j]].value(&back) else {
                continue;
            };
            let (Ok(a), Ok(b)) = (cost.parse::<u32>(), back_cost.parse::<u32>()) else {
                continue;
            };
            let cost = u64::from(a.max(b).max(1));
            let tie = edge_hash(name, peer);
            adjacency[i].push((j, cost, tie));
            adjacency[j].push((i, cost, tie));
        }
    }
    adjacency
}

/// A fixed hash of an undirected edge, the same on every node and every build (FNV-1a, then a
/// splitmix64 finaliser).
fn edge_hash(a: &str, b: &str) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in lo.bytes().chain([0u8]).chain(hi.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Item;

    /// Entries for the given undirected edges; `one_way` edges are advertised by their first end
    /// only.
    fn graph(edges: &[(&str, &str, u32)], one_way: &[(&str, &str)]) -> BTreeMap<Arc<str>, Entry> {
        let mut entries: BTreeMap<Arc<str>, Entry> = BTreeMap::new();
        let mut link = |from: &str, to: &str, cost: u32| {
            let entry = entries
                .entry(Arc::from(from))
                .or_insert_with(|| Entry::new(1));
            entry.max_version += 1;
            entry.items.insert(
                format!("link/{to}"),
                Item {
                    value: cost.to_string(),
                    version: entry.max_version,
                    deleted: false,
                },
            );
        };
        for &(a, b, cost) in edges {
            link(a, b, cost);
            link(b, a, cost);
        }
        for &(a, b) in one_way {
            link(a, b, 1);
        }
        entries
    }

    fn routes(me: &str, entries: &BTreeMap<Arc<str>, Entry>) -> Routes {
        Routes::compute(&Arc::from(me), entries)
    }

    #[test]
    fn shortest_paths_and_distances() {
        let g = graph(
            &[("a", "b", 1), ("b", "c", 1), ("a", "c", 5), ("c", "d", 2)],
            &[],
        );
        let r = routes("a", &g);
        assert_eq!(r.next_hop("c"), Some("b"));
        assert_eq!(r.distance("c"), Some(2));
        assert_eq!(r.next_hop("d"), Some("b"));
        assert_eq!(r.distance("d"), Some(4));
        assert_eq!(r.next_hop("a"), None);
        assert_eq!(r.distance("a"), Some(0));
        assert_eq!(r.distance("zz"), None);
    }

    #[test]
    fn a_link_counts_only_when_both_ends_advertise_it() {
        let g = graph(&[("a", "b", 1)], &[("b", "c"), ("d", "a")]);
        let r = routes("a", &g);
        assert!(r.is_reachable("b"));
        assert!(!r.is_reachable("c"));
        assert!(!r.is_reachable("d"));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn costs_take_the_larger_end_and_at_least_one() {
        let mut g = graph(&[("a", "b", 0)], &[]);
        g.get_mut("b")
            .unwrap()
            .items
            .get_mut("link/a")
            .unwrap()
            .value = "7".into();
        assert_eq!(routes("a", &g).distance("b"), Some(7));
        assert_eq!(routes("b", &g).distance("a"), Some(7));
        g.get_mut("b")
            .unwrap()
            .items
            .get_mut("link/a")
            .unwrap()
            .value = "0".into();
        assert_eq!(routes("a", &g).distance("b"), Some(1));
        g.get_mut("b")
            .unwrap()
            .items
            .get_mut("link/a")
            .unwrap()
            .value = "x".into();
        assert!(!routes("a", &g).is_reachable("b"));
    }

    #[test]
    fn ties_are_broken_the_same_way_on_every_node() {
        // A square a-b-d, a-c-d of equal costs: two shortest paths between a and d.
        let g = graph(
            &[("a", "b", 1), ("a", "c", 1), ("b", "d", 1), ("c", "d", 1)],
            &[],
        );
        let ra = routes("a", &g);
        let rd = routes("d", &g);
        let via = ra.next_hop("d").unwrap();
        assert!(via == "b" || via == "c");
        // d's path back to a goes through the same middle node.
        assert_eq!(rd.next_hop("a"), Some(via));
        // And the middle node continues along that path.
        assert_eq!(routes(via, &g).next_hop("d"), Some("d"));
        assert_eq!(routes("a", &g), ra, "deterministic");
    }

    #[test]
    fn split_groups_destinations_by_next_hop() {
        let g = graph(&[("a", "b", 1), ("b", "c", 1), ("a", "d", 1)], &[]);
        let r = routes("a", &g);
        let s = r.split(["c", "a", "d", "b", "zz"]);
        assert!(s.local);
        assert_eq!(s.unreachable, ["zz"]);
        let mut per_hop: Vec<_> = s
            .per_hop
            .iter()
            .map(|(h, d)| (h.to_string(), d.clone()))
            .collect();
        per_hop.sort();
        assert_eq!(
            per_hop,
            [
                ("b".to_string(), vec!["c", "b"]),
                ("d".to_string(), vec!["d"])
            ]
        );
        let mut reuse = Split::default();
        r.split_into(["b"], &mut reuse);
        assert!(!reuse.local && reuse.per_hop.len() == 1 && reuse.unreachable.is_empty());
    }

    #[test]
    fn nearest_prefers_self_then_rotates_among_ties() {
        let g = graph(&[("a", "b", 1), ("a", "c", 1), ("a", "d", 2)], &[]);
        let r = routes("a", &g);
        assert_eq!(r.nearest(&["d", "a", "b"], 0), Some("a"));
        assert_eq!(r.nearest(&["d", "zz"], 3), Some("d"));
        assert_eq!(r.nearest(&["zz"], 0), None);
        assert_eq!(r.nearest(&[], 0), None);
        let picks: Vec<_> = (0..4).map(|rr| r.nearest(&["d", "c", "b"], rr)).collect();
        assert_eq!(picks, [Some("b"), Some("c"), Some("b"), Some("c")]);
        // The candidates' order does not matter.
        assert_eq!(r.nearest(&["b", "c", "d"], 1), Some("c"));
    }
}
