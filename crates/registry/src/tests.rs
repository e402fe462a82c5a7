//! Unit tests of the registry rules, on a tiny synchronous network.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use meshgate_proto::v1;
use proptest::prelude::*;

use crate::{Change, Gossip, Registry, RegistryConfig, Runtime};

#[derive(Default)]
struct Rt {
    now: u64,
    sent: Vec<(String, Gossip)>,
}

impl Runtime for Rt {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn send(&mut self, to: &str, msg: Gossip) {
        self.sent.push((to.to_owned(), msg));
    }
}

fn config(name: &str, incarnation: u64) -> RegistryConfig {
    let mut cfg = RegistryConfig::new(name, incarnation);
    cfg.expire_unreachable_ms = 10_000;
    cfg.tombstone_gc_ms = 30_000;
    cfg
}

/// Registries exchanging messages in order, with no loss unless a test drops some.
struct Net {
    regs: BTreeMap<String, Registry>,
    now: u64,
    wire: VecDeque<(String, String, Gossip)>,
}

impl Net {
    fn new(names: &[&str]) -> Self {
        let regs = names
            .iter()
            .map(|n| (n.to_string(), Registry::new(config(n, 1))))
            .collect();
        Net {
            regs,
            now: 0,
            wire: VecDeque::new(),
        }
    }

    fn reg(&mut self, name: &str) -> &mut Registry {
        self.regs.get_mut(name).unwrap()
    }

    fn call(&mut self, who: &str, f: impl FnOnce(&mut Registry, &mut Rt)) {
        let mut rt = Rt {
            now: self.now,
            sent: Vec::new(),
        };
        f(self.regs.get_mut(who).unwrap(), &mut rt);
        for (to, msg) in rt.sent {
            self.wire.push_back((who.to_owned(), to, msg));
        }
    }

    fn link(&mut self, a: &str, b: &str, cost: u32) {
        self.call(a, |r, rt| r.link_up(b, cost, rt));
        self.call(b, |r, rt| r.link_up(a, cost, rt));
    }

    fn unlink(&mut self, a: &str, b: &str) {
        self.wire
            .retain(|(f, t, _)| !((f == a && t == b) || (f == b && t == a)));
        self.call(a, |r, rt| r.link_down(b, rt));
        self.call(b, |r, rt| r.link_down(a, rt));
    }

    /// Delivers until no message is left.
    fn run(&mut self) {
        while let Some((from, to, msg)) = self.wire.pop_front() {
            self.call(&to, |r, rt| r.on_gossip(&from, msg, rt));
        }
    }

    fn tick_all(&mut self) {
        let names: Vec<String> = self.regs.keys().cloned().collect();
        for n in names {
            self.call(&n, |r, rt| r.tick(rt));
        }
    }

    fn settle(&mut self) {
        for _ in 0..3 {
            self.run();
            self.tick_all();
        }
        self.run();
    }

    fn held(&self, holder: &str, node: &str) -> Option<(u64, u64)> {
        let e = self.regs[holder].entries().get(node)?;
        Some((e.incarnation, e.max_version))
    }

    fn own_version(&self, node: &str) -> u64 {
        self.held(node, node).unwrap().1
    }
}

fn added(node: &str, filter: &str, group: Option<&str>) -> Change {
    Change::InterestAdded {
        node: Arc::from(node),
        filter: filter.to_owned(),
        group: group.map(str::to_owned),
    }
}

fn removed(node: &str, filter: &str, group: Option<&str>) -> Change {
    Change::InterestRemoved {
        node: Arc::from(node),
        filter: filter.to_owned(),
        group: group.map(str::to_owned),
    }
}

fn interest_changes(r: &mut Registry) -> Vec<Change> {
    r.take_changes()
        .into_iter()
        .filter(|c| *c != Change::TopologyChanged)
        .collect()
}

#[test]
fn interest_is_reference_counted() {
    let mut r = Registry::new(config("a", 1));
    let v0 = r.digest().nodes[0].max_version;
    assert!(r.add_interest("x/*", None));
    assert!(!r.add_interest("x/*", None));
    assert!(
        r.add_interest("x/*", Some("g")),
        "a group is another interest"
    );
    assert_eq!(r.digest().nodes[0].max_version, v0 + 2);
    assert_eq!(r.interest_count("x/*", None), 2);
    assert!(!r.remove_interest("x/*", None));
    assert!(r.remove_interest("x/*", None));
    assert!(!r.remove_interest("x/*", None));
    assert_eq!(r.digest().nodes[0].max_version, v0 + 3);
    assert!(!r.add_interest("x/>/y", None), "invalid filter refused");
    assert!(!r.add_interest("x", Some("a/b")), "invalid group refused");
    assert!(!r.add_interest("x", Some("")), "invalid group refused");
    assert_eq!(
        r.interest_of("a"),
        [("x/*".to_owned(), Some("g".to_owned()))]
    );
    assert!(
        r.take_changes().is_empty(),
        "own interest is never a change"
    );
}

#[test]
fn flush_pushes_one_delta_per_neighbour() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("a", "c", 1);
    net.settle();
    net.reg("a").add_interest("x", None);
    net.reg("a").add_interest("y", None);
    net.reg("a").set_attr("mqtt", "1.2.3.4:1883");
    net.reg("a").set_attr("link/zz", "1"); // reserved: ignored
    net.call("a", |r, rt| r.flush(rt));
    let sent: Vec<_> = net
        .wire
        .iter()
        .map(|(_, to, m)| (to.clone(), m.clone()))
        .collect();
    assert_eq!(sent.len(), 2);
    for (_, msg) in &sent {
        let Gossip::Delta(d) = msg else {
            panic!("a delta")
        };
        assert_eq!(d.nodes.len(), 1);
        assert_eq!(d.nodes[0].items.len(), 3);
    }
    net.run();
    assert_eq!(net.regs["b"].attr("a", "mqtt"), Some("1.2.3.4:1883"));
    assert_eq!(net.held("c", "a"), net.held("a", "a"));
    // b passes nothing back to c: c has it already.
    assert!(net.wire.is_empty());
    let mut b_changes = interest_changes(net.reg("b"));
    b_changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(b_changes, [added("a", "x", None), added("a", "y", None)]);
}

#[test]
fn a_gap_is_ignored_then_filled_by_anti_entropy() {
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.settle();
    let before = net.held("b", "a");
    net.reg("a").add_interest("x", None);
    net.call("a", |r, rt| r.flush(rt));
    net.wire.clear(); // lost
    net.reg("a").add_interest("y", None);
    net.call("a", |r, rt| r.flush(rt));
    net.run();
    assert_eq!(net.held("b", "a"), before, "a delta after a gap is ignored");
    assert!(interest_changes(net.reg("b")).is_empty());
    net.tick_all();
    net.run();
    assert_eq!(net.held("b", "a"), net.held("a", "a"));
    assert_eq!(interest_changes(net.reg("b")).len(), 2);
}

#[test]
fn a_delta_is_applied_once() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("b", "c", 1);
    net.settle();
    net.reg("a").add_interest("x", None);
    net.call("a", |r, rt| r.flush(rt));
    let (from, to, msg) = net.wire.pop_front().unwrap();
    net.call(&to, |r, rt| r.on_gossip(&from, msg.clone(), rt));
    assert_eq!(net.wire.len(), 1, "b pushes the new part on to c");
    net.run();
    assert_eq!(interest_changes(net.reg("b")), [added("a", "x", None)]);
    net.call(&to, |r, rt| r.on_gossip(&from, msg, rt));
    assert!(net.wire.is_empty(), "a duplicate is not pushed on");
    assert!(interest_changes(net.reg("b")).is_empty());
    assert_eq!(interest_changes(net.reg("c")), [added("a", "x", None)]);
}

#[test]
fn removals_travel_as_tombstones_and_are_collected() {
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.reg("a").add_interest("x", None);
    net.settle();
    interest_changes(net.reg("b"));
    net.reg("a").remove_interest("x", None);
    net.call("a", |r, rt| r.flush(rt));
    net.run();
    assert_eq!(interest_changes(net.reg("b")), [removed("a", "x", None)]);
    let tombstone = |net: &Net, holder: &str| {
        net.regs[holder].entries()["a"]
            .items
            .get("sub/x")
            .is_some_and(|i| i.deleted)
    };
    assert!(tombstone(&net, "a") && tombstone(&net, "b"));
    net.now += 30_000;
    net.tick_all();
    assert!(!tombstone(&net, "a") && !tombstone(&net, "b"));
    assert!(net.regs["a"].entries()["a"].gc_floor > 0);
}

#[test]
fn a_peer_behind_collected_tombstones_gets_a_reset() {
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.reg("a").add_interest("x", None);
    net.settle();
    assert_eq!(interest_changes(net.reg("b")), [added("a", "x", None)]);
    net.unlink("a", "b");
    net.reg("a").add_interest("y", None);
    net.reg("a").remove_interest("x", None);
    net.now += 30_000;
    net.call("a", |r, rt| r.tick(rt)); // collects the tombstone of x (b does not tick)
    assert_eq!(interest_changes(net.reg("b")), [removed("a", "x", None)]);
    net.link("a", "b", 1);
    let mut saw_reset = false;
    while let Some((from, to, msg)) = net.wire.pop_front() {
        saw_reset |=
            matches!(&msg, Gossip::Delta(d) if d.nodes.iter().any(|n| n.reset && n.node == "a"));
        net.call(&to, |r, rt| r.on_gossip(&from, msg, rt));
    }
    assert!(saw_reset, "b is behind a's collected tombstones");
    assert_eq!(net.held("b", "a"), net.held("a", "a"));
    assert_eq!(net.regs["b"].interest_of("a"), [("y".to_owned(), None)]);
    assert_eq!(interest_changes(net.reg("b")), [added("a", "y", None)]);
}

#[test]
fn a_new_incarnation_replaces_the_entry() {
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.reg("a").add_interest("old", None);
    net.reg("a").add_interest("both", Some("g"));
    net.settle();
    interest_changes(net.reg("b"));
    let stale = net.regs["a"].entries()["a"].deltas("a", 0, 100);
    // a restarts: higher incarnation, empty state. While the link is down a is unreachable.
    net.unlink("a", "b");
    let mut changes = interest_changes(net.reg("b"));
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        changes,
        [removed("a", "both", Some("g")), removed("a", "old", None)]
    );
    net.regs.insert("a".into(), Registry::new(config("a", 2)));
    net.reg("a").add_interest("new", None);
    net.reg("a").add_interest("both", Some("g"));
    net.link("a", "b", 1);
    net.settle();
    assert_eq!(net.held("b", "a"), Some((2, net.own_version("a"))));
    let mut changes = interest_changes(net.reg("b"));
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        changes,
        [added("a", "both", Some("g")), added("a", "new", None)]
    );
    // The old incarnation is ignored from now on.
    let held = net.held("b", "a");
    net.call("b", |r, rt| {
        r.on_gossip("a", Gossip::Delta(v1::Delta { nodes: stale }), rt)
    });
    assert_eq!(net.held("b", "a"), held);
    assert_eq!(net.regs["b"].interest_of("a").len(), 2);
}

#[test]
fn a_restart_seen_while_reachable_is_announced_as_a_difference() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("b", "c", 1);
    net.reg("a").add_interest("old", None);
    net.reg("a").add_interest("both", None);
    net.settle();
    interest_changes(net.reg("c"));
    // c learns a's new incarnation directly in one full delta while a stays reachable.
    let mut fresh = Registry::new(config("a", 2));
    fresh.add_interest("both", None);
    fresh.add_interest("new", None);
    fresh.link_up("b", 1, &mut Rt::default());
    let full = fresh.entries()["a"].deltas("a", 0, 100);
    net.call("c", |r, rt| {
        r.on_gossip("b", Gossip::Delta(v1::Delta { nodes: full }), rt)
    });
    assert_eq!(
        interest_changes(net.reg("c")),
        [removed("a", "old", None), added("a", "new", None)]
    );
}

#[test]
fn an_unreachable_node_is_withdrawn_expired_and_not_resurrected() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("b", "c", 1);
    net.reg("c").add_interest("x", Some("g"));
    net.settle();
    assert_eq!(interest_changes(net.reg("a")), [added("c", "x", Some("g"))]);
    let stale = net.regs["b"].entries()["c"].deltas("c", 0, 100);
    net.unlink("b", "c");
    net.run();
    assert_eq!(
        interest_changes(net.reg("a")),
        [removed("c", "x", Some("g"))]
    );
    assert!(!net.reg("a").routes().is_reachable("c"));
    assert!(net.held("a", "c").is_some(), "kept until it expires");
    net.tick_all();
    net.now += 10_000;
    net.call("a", |r, rt| r.tick(rt));
    assert_eq!(net.held("a", "c"), None, "expired");
    // A stale copy (same incarnation and version) is refused.
    let stale_msg = Gossip::Delta(v1::Delta {
        nodes: stale.clone(),
    });
    net.call("a", |r, rt| r.on_gossip("b", stale_msg, rt));
    assert_eq!(net.held("a", "c"), None, "not resurrected");
    // A newer version is accepted (and stays unroutable while unreachable).
    let mut newer = stale;
    newer[0].to_version += 1;
    let version = newer[0].to_version;
    newer[0].items.push(v1::KeyValue {
        key: "sub/y".into(),
        value: String::new(),
        version,
        deleted: false,
    });
    net.call("a", |r, rt| {
        r.on_gossip("b", Gossip::Delta(v1::Delta { nodes: newer }), rt)
    });
    assert!(net.held("a", "c").is_some());
    assert!(interest_changes(net.reg("a")).is_empty());
}

#[test]
fn a_stale_copy_of_an_expired_node_is_accepted_once_it_is_connected_again() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("b", "c", 1);
    net.settle();
    net.unlink("a", "b");
    net.tick_all();
    net.now += 10_000;
    net.call("a", |r, rt| r.tick(rt));
    assert_eq!(net.held("a", "c"), None);
    assert_eq!(net.held("a", "b"), None);
    // The link heals: b's entry is new (link/a again), c's is unchanged yet connected to b.
    net.link("a", "b", 1);
    net.settle();
    assert_eq!(net.held("a", "c"), net.held("c", "c"));
    assert!(net.reg("a").routes().is_reachable("c"));
}

#[test]
fn links_count_only_when_both_ends_advertise_them() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("b", "c", 1);
    // c advertises a link to a that a does not: it does not count.
    net.call("c", |r, rt| r.link_up("a", 1, rt));
    net.settle();
    assert_eq!(net.regs["a"].attr("c", "link/a"), Some("1"));
    assert_eq!(net.reg("a").routes().distance("c"), Some(2));
    assert_eq!(net.reg("a").routes().next_hop("c"), Some("b"));
    // When a link goes down, its item becomes a tombstone at a new version.
    let v = net.own_version("b");
    net.unlink("a", "b");
    assert_eq!(net.own_version("b"), v + 1);
    assert!(net.regs["b"].attr("b", "link/a").is_none());
    assert!(!net.reg("a").routes().is_reachable("b"));
}

#[test]
fn our_own_entry_is_never_taken_from_others() {
    let mut r = Registry::new(config("a", 1));
    let mut rt = Rt::default();
    let forged = v1::NodeDelta {
        node: "a".into(),
        incarnation: 9,
        from_version: 0,
        to_version: 5,
        reset: true,
        items: vec![],
    };
    r.on_gossip(
        "b",
        Gossip::Delta(v1::Delta {
            nodes: vec![forged],
        }),
        &mut rt,
    );
    assert_eq!(r.digest().nodes[0].incarnation, 1);
    // Malformed items are refused too.
    let bad = v1::NodeDelta {
        node: "z".into(),
        incarnation: 1,
        from_version: 0,
        to_version: 1,
        reset: false,
        items: vec![v1::KeyValue {
            key: "sub/x".into(),
            value: String::new(),
            version: 2,
            deleted: false,
        }],
    };
    r.on_gossip("b", Gossip::Delta(v1::Delta { nodes: vec![bad] }), &mut rt);
    assert_eq!(r.len(), 1);
}

#[test]
fn large_entries_are_sent_in_chunks() {
    let mut net = Net::new(&["a", "b"]);
    for name in ["a", "b"] {
        let mut cfg = config(name, 1);
        cfg.max_items_per_delta = 10;
        net.regs.insert(name.into(), Registry::new(cfg));
    }
    for k in 0..95 {
        net.reg("a").add_interest(&format!("f/{k}"), None);
    }
    net.link("a", "b", 1);
    let mut deltas = 0;
    while let Some((from, to, msg)) = net.wire.pop_front() {
        if let Gossip::Delta(d) = &msg {
            deltas += 1;
            assert!(d.nodes.iter().map(|n| n.items.len()).sum::<usize>() <= 10);
        }
        net.call(&to, |r, rt| r.on_gossip(&from, msg, rt));
    }
    assert!(deltas >= 10);
    assert_eq!(net.held("b", "a"), net.held("a", "a"));
    assert_eq!(net.regs["b"].interest_of("a").len(), 95);
}

#[test]
fn nodes_view_shows_every_entry() {
    let mut net = Net::new(&["a", "b"]);
    net.reg("b").set_attr("role", "core");
    net.reg("b").add_interest("x", None);
    net.link("a", "b", 3);
    net.settle();
    net.reg("a").routes();
    let nodes = net.regs["a"].nodes();
    assert_eq!(nodes.len(), 2);
    let b = &nodes[1];
    assert_eq!(&*b.name, "b");
    assert!(!b.is_self && b.reachable);
    assert_eq!(b.role.as_deref(), Some("core"));
    assert_eq!((b.distance, b.next_hop.as_deref()), (Some(3), Some("b")));
    assert_eq!(b.interest, 1);
    assert_eq!(b.links, [("a".to_owned(), 3)]);
    assert!(nodes[0].is_self);
    assert_eq!(net.regs["a"].neighbours().collect::<Vec<_>>(), ["b"]);
    assert_eq!(net.regs["a"].link_cost("b"), Some(3));
}

/// Delivers until no message is left, returning what was delivered (sender, receiver, message).
fn run_logged(net: &mut Net) -> Vec<(String, String, Gossip)> {
    let mut log = Vec::new();
    while let Some((from, to, msg)) = net.wire.pop_front() {
        log.push((from.clone(), to.clone(), msg.clone()));
        net.call(&to, |r, rt| r.on_gossip(&from, msg, rt));
    }
    log
}

fn is_summary(msg: &Gossip) -> bool {
    matches!(msg, Gossip::Digest(d) if d.summary_only && d.nodes.is_empty())
}

fn is_full_digest(msg: &Gossip) -> bool {
    matches!(msg, Gossip::Digest(d) if !d.summary_only && !d.nodes.is_empty())
}

#[test]
fn the_summary_is_a_fixed_hash_of_the_digest() {
    // Pinned: every node must compute the same value (see `Digest` in link.proto).
    assert_eq!(
        Registry::new(config("a", 1)).summary(),
        0x9e5c_c11d_1481_468d
    );
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.settle();
    assert_eq!(net.regs["a"].summary(), net.regs["b"].summary());
    let mut digest = net.regs["a"].digest();
    assert_eq!(
        crate::digest::digest_summary(digest.nodes.iter()),
        net.regs["a"].summary()
    );
    digest.nodes.reverse();
    assert_eq!(
        crate::digest::digest_summary(digest.nodes.iter()),
        net.regs["a"].summary(),
        "a digest out of order is sorted first"
    );
    let before = net.regs["a"].summary();
    net.reg("a").add_interest("x", None);
    assert_ne!(net.regs["a"].summary(), before);
}

#[test]
fn equal_registries_exchange_only_summaries() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.link("a", "b", 1);
    net.link("b", "c", 2);
    net.reg("c").add_interest("x/*", None);
    net.settle();
    for _ in 0..3 {
        net.tick_all();
        let log = run_logged(&mut net);
        assert_eq!(
            log.len(),
            4,
            "one summary per neighbour and direction: {log:?}"
        );
        for (_, _, msg) in &log {
            assert!(is_summary(msg), "{msg:?}");
            assert_eq!(msg.encoded_len(), 11, "a few bytes, whatever the registry");
        }
    }
}

#[test]
fn a_summary_that_differs_brings_full_digests_and_deltas_both_ways() {
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.settle();
    // Each side changes, and both pushes are lost: a lacks y, b lacks x.
    net.reg("a").add_interest("x", None);
    net.reg("b").add_interest("y", None);
    net.call("a", |r, rt| r.flush(rt));
    net.call("b", |r, rt| r.flush(rt));
    net.wire.clear();
    interest_changes(net.reg("a"));
    interest_changes(net.reg("b"));

    // One tick of a alone repairs both directions: a's summary differs from b's, b answers with
    // its full digest, a sends what b lacks and (a first difference) its own full digest, and b
    // sends what a lacks.
    net.call("a", |r, rt| r.tick(rt));
    let log = run_logged(&mut net);
    let kinds: Vec<(&str, &str)> = log
        .iter()
        .map(|(from, _, msg)| {
            let kind = match msg {
                m if is_summary(m) => "summary",
                m if is_full_digest(m) => "digest",
                _ => "delta",
            };
            (from.as_str(), kind)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("a", "summary"),
            ("b", "digest"),
            ("a", "digest"),
            ("a", "delta"),
            ("b", "delta")
        ]
    );
    assert_eq!(net.held("b", "a"), net.held("a", "a"));
    assert_eq!(net.held("a", "b"), net.held("b", "b"));
    assert_eq!(interest_changes(net.reg("a")), [added("b", "y", None)]);
    assert_eq!(interest_changes(net.reg("b")), [added("a", "x", None)]);
    assert_eq!(net.regs["a"].summary(), net.regs["b"].summary());

    // Both still count the other as differing (its digest was older than the deltas): one more
    // full digest each, which match, then summaries again.
    net.tick_all();
    let log = run_logged(&mut net);
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|(_, _, m)| is_full_digest(m)), "{log:?}");
    net.tick_all();
    let log = run_logged(&mut net);
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|(_, _, m)| is_summary(m)), "{log:?}");
}

#[test]
fn a_lost_answer_to_a_summary_is_repaired_at_the_next_tick() {
    let mut net = Net::new(&["a", "b"]);
    net.link("a", "b", 1);
    net.settle();
    net.reg("b").add_interest("y", None);
    net.call("b", |r, rt| r.flush(rt));
    net.wire.clear(); // lost: a lacks y
    net.call("a", |r, rt| r.tick(rt));
    let (from, to, msg) = net.wire.pop_front().unwrap();
    assert!(is_summary(&msg));
    net.call(&to, |r, rt| r.on_gossip(&from, msg, rt));
    let (_, _, answer) = net.wire.pop_front().unwrap();
    assert!(is_full_digest(&answer), "b answers with its full digest");
    assert!(net.wire.is_empty());
    // That answer is lost; b now sends its full digest at its tick, and a its own in turn.
    net.call("b", |r, rt| r.tick(rt));
    let log = run_logged(&mut net);
    assert!(is_full_digest(&log[0].2), "{log:?}");
    assert_eq!(net.held("a", "b"), net.held("b", "b"));
}

proptest! {
    /// The owner's deltas, delivered in any order, duplicated or dropped, then one round of
    /// anti-entropy: the receiver holds exactly the owner's entry.
    #[test]
    fn deltas_in_any_order_converge(
        ops in proptest::collection::vec((0u8..3, 0u8..6), 1..40),
        order in proptest::collection::vec((any::<u16>(), 0u8..3), 1..60),
    ) {
        let mut owner = Registry::new(config("a", 1));
        let mut receiver = Registry::new(config("b", 1));
        let mut rt = Rt::default();
        owner.link_up("b", 1, &mut rt);
        receiver.link_up("a", 1, &mut rt);
        rt.sent.clear();
        let mut sent = Vec::new();
        for (op, f) in ops {
            let filter = format!("t/{f}");
            match op {
                0 => { owner.add_interest(&filter, None); }
                1 => { owner.remove_interest(&filter, None); }
                _ => owner.set_attr("attr", &filter),
            }
            owner.flush(&mut rt);
            sent.extend(rt.sent.drain(..).map(|(_, m)| m));
        }
        // Deliver a random selection: some messages twice, some never, in random order.
        for (pick, times) in order {
            if sent.is_empty() { break; }
            let msg = sent[pick as usize % sent.len()].clone();
            for _ in 0..times {
                receiver.on_gossip("a", msg.clone(), &mut rt);
            }
        }
        rt.sent.clear();
        receiver.on_gossip("a", Gossip::Digest(owner.digest()), &mut rt);
        owner.on_gossip("b", Gossip::Digest(receiver.digest()), &mut rt);
        for (to, msg) in std::mem::take(&mut rt.sent) {
            if to == "b" {
                receiver.on_gossip("a", msg, &mut rt);
            }
        }
        let held = &receiver.entries()["a"];
        let own = &owner.entries()["a"];
        prop_assert_eq!((held.incarnation, held.max_version), (own.incarnation, own.max_version));
        let live = |e: &crate::entry::Entry| {
            e.live().map(|(k, i)| (k.to_owned(), i.clone())).collect::<Vec<_>>()
        };
        prop_assert_eq!(live(held), live(own));
    }
}
