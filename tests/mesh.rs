//! The mesh with real processes on loopback: QUIC links with certificates made by
//! `meshgate cert`, gossip, routing across transit nodes, one copy per link, refusals.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{NodeProc, certs, free_udp, wait_until};
use meshgate_api::{LinkState, LinkView, MeshView};
use rumqttc::{AsyncClient, Packet, QoS};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const WAIT: Duration = Duration::from_secs(20);

/// A mesh node dialling `peers`.
fn node(dir: &Path, name: &str, role: &str, peers: &[SocketAddr]) -> NodeProc {
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--mesh".into(),
        "127.0.0.1:0".into(),
        "--tls-dir".into(),
        dir.display().to_string(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProc::start_env(
        &args,
        &[
            ("MESHGATE_MESH__ROLE", role),
            ("MESHGATE_MESH__GOSSIP_INTERVAL_SECS", "0.2"),
            ("MESHGATE_MESH__IDLE_TIMEOUT_SECS", "3"),
            ("MESHGATE_MESH__MAX_BACKOFF_SECS", "0.5"),
        ],
    )
}

fn addr(n: &NodeProc) -> SocketAddr {
    n.mesh.expect("node runs the mesh")
}

fn nodes_of(v: &MeshView) -> HashSet<String> {
    v.nodes.iter().cloned().collect()
}

fn wait_nodes(all: &[&NodeProc], names: &[&str]) {
    let want: HashSet<String> = names.iter().map(|s| s.to_string()).collect();
    for n in all {
        wait_until("every node to see the whole mesh", WAIT, || {
            nodes_of(&n.mesh_view()) == want
        });
    }
}

/// The counter `field` of the link from `n` to `peer`.
fn link(n: &NodeProc, peer: &str, field: fn(&LinkView) -> u64) -> u64 {
    let v = n.mesh_view();
    let l = v
        .links
        .iter()
        .find(|l| l.peer == peer && l.state == LinkState::Up)
        .unwrap_or_else(|| panic!("no link up to {peer}: {v:?}"));
    field(l)
}

/// Interest count of `node` in `at`'s registry view.
fn interest(at: &NodeProc, node: &str) -> Option<u64> {
    at.mesh_view()
        .registry
        .iter()
        .find(|e| e.node == node && e.reachable)
        .map(|e| e.interest)
}

/// A clean-session MQTT 3.1.1 client of `n`.
async fn client(n: &NodeProc, id: &str) -> (AsyncClient, UnboundedReceiver<Packet>) {
    common::mqtt_v4(n, id, true).await
}

async fn subscribe(
    n: &NodeProc,
    id: &str,
    filter: &str,
) -> (AsyncClient, UnboundedReceiver<Packet>) {
    let (c, mut rx) = client(n, id).await;
    c.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Packet::SubAck(_)) = rx.recv().await {
                break;
            }
        }
    })
    .await
    .expect("suback");
    (c, rx)
}

/// Counts publishes on `rx` until `want` arrived or `limit` passed; returns the payloads.
async fn collect(rx: &mut UnboundedReceiver<Packet>, want: usize, limit: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        while got.len() < want {
            match rx.recv().await {
                Some(Packet::Publish(p)) => got.push(p.payload.to_vec()),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    got
}

/// Publishes a fence on `topic` (which every `rxs` subscribes to) and reads each of `rxs` up to
/// it: what `publisher` sent before (probes still on their way) is gone from them then, since
/// one publisher's events reach a subscriber in order. Returns the publishes read before the
/// fence on each, in order.
async fn fence(
    publisher: &AsyncClient,
    topic: &str,
    rxs: &mut [&mut UnboundedReceiver<Packet>],
) -> Vec<Vec<Packet>> {
    publisher
        .publish(topic, QoS::AtMostOnce, false, b"fence".to_vec())
        .await
        .unwrap();
    let mut out = Vec::new();
    for rx in rxs.iter_mut() {
        let mut before = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                match rx.recv().await {
                    Some(Packet::Publish(p)) if p.topic == topic && &p.payload[..] == b"fence" => {
                        return;
                    }
                    Some(p @ Packet::Publish(_)) => before.push(p),
                    Some(_) => {}
                    None => panic!("subscriber gone before the fence"),
                }
            }
        })
        .await
        .expect("the fence arrives");
        out.push(before);
    }
    out
}

/// Publishes probes on `topic` from `publisher` until `rx` sees one (other messages on `rx` are
/// skipped); returns the time taken.
async fn until_routed(
    publisher: &AsyncClient,
    topic: &str,
    rx: &mut UnboundedReceiver<Packet>,
) -> Duration {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < WAIT,
            "no probe on {topic} arrived in {WAIT:?}"
        );
        publisher
            .publish(topic, QoS::AtMostOnce, false, b"probe".to_vec())
            .await
            .unwrap();
        let wait = tokio::time::sleep(Duration::from_millis(10));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(Packet::Publish(p)) if p.topic == topic => return start.elapsed(),
                    Some(_) => {}
                    None => panic!("subscriber gone"),
                },
                _ = &mut wait => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_four_carries_one_copy_per_link_and_fans_out_at_the_destination() {
    let d = tempfile::tempdir().unwrap();
    let names = ["edge-a", "core-1", "core-2", "edge-b"];
    certs(d.path(), &names);
    let core1 = node(d.path(), "core-1", "core", &[]);
    let core2 = node(d.path(), "core-2", "core", &[addr(&core1)]);
    let edge_b = node(d.path(), "edge-b", "edge", &[addr(&core2)]);
    let edge_a = node(d.path(), "edge-a", "edge", &[addr(&core1)]);
    let all = [&edge_a, &core1, &core2, &edge_b];
    wait_nodes(&all, &names);

    // Ten subscribers behind edge-b, one wildcard filter.
    let mut subs = Vec::new();
    for i in 0..10 {
        subs.push(subscribe(&edge_b, &format!("sub-{i}"), "orders/+/us/#").await);
    }
    let (publisher, _prx) = client(&edge_a, "pub").await;
    // The subscription reaches edge-a through two transit nodes: measure how long it takes.
    let took = until_routed(&publisher, "orders/probe/us/x", &mut subs[0].1).await;
    eprintln!("subscription on edge-b served to a publisher on edge-a after {took:?}");
    // MQTT `#` also matches the parent: `orders/+/us/#` is two native filters.
    wait_until("edge-a to see edge-b's interest", WAIT, || {
        interest(&edge_a, "edge-b") == Some(2)
    });
    // Every subscriber reads past the probes still on their way before counting.
    let mut rxs: Vec<_> = subs.iter_mut().map(|(_, rx)| rx).collect();
    fence(&publisher, "orders/fence/us/x", &mut rxs).await;
    let path = [(&edge_a, "core-1"), (&core1, "core-2"), (&core2, "edge-b")];
    let before: Vec<u64> = path
        .iter()
        .map(|(n, p)| link(n, p, |l| l.tx_events))
        .collect();
    let fanout_before = link(&edge_b, "core-2", |l| l.rx_fanout_copies);

    for i in 0..1000u32 {
        publisher
            .publish(
                format!("orders/{}/us/store-{}", i % 7, i % 3),
                QoS::AtMostOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
        // Nobody subscribes to these: they never leave edge-a.
        if i % 2 == 0 {
            publisher
                .publish("orders/1/eu/x", QoS::AtMostOnce, false, b"no".to_vec())
                .await
                .unwrap();
        }
    }
    for (i, (_, rx)) in subs.iter_mut().enumerate() {
        let got = collect(rx, 1000, WAIT).await;
        assert_eq!(got.len(), 1000, "subscriber {i} got {} of 1000", got.len());
        let distinct: HashSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 1000, "subscriber {i} got duplicates");
    }
    let after: Vec<u64> = path
        .iter()
        .map(|(n, p)| link(n, p, |l| l.tx_events))
        .collect();
    for (k, ((n, p), (b, a))) in path.iter().zip(before.iter().zip(&after)).enumerate() {
        let name = n.mesh_view().node;
        assert_eq!(
            a - b,
            1000,
            "hop {k}: link {name} -> {p} carried {} events for 1000 published",
            a - b
        );
    }
    let fanout = link(&edge_b, "core-2", |l| l.rx_fanout_copies) - fanout_before;
    assert_eq!(
        fanout, 10_000,
        "ten local copies per event at the destination"
    );
    // Nothing went the other way except gossip.
    assert_eq!(link(&edge_b, "core-2", |l| l.tx_events), 0);
    // The same counters in Prometheus form.
    let (_, metrics) = common::http_get(edge_a.http, "/metrics").unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("meshgate_link_tx_events_total{peer=\"core-1\"}"))
        .unwrap_or_else(|| panic!("no link series in:\n{metrics}"));
    let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, after[0]);
    assert!(metrics.contains("meshgate_mesh_nodes 4"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_routes_between_edges_and_a_restarted_node_rejoins_without_its_old_interest() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), &["hub", "e1", "e2", "e3"]);
    let hub = node(d.path(), "hub", "core", &[]);
    let e1 = node(d.path(), "e1", "edge", &[addr(&hub)]);
    let mut e2 = node(d.path(), "e2", "edge", &[addr(&hub)]);
    let e3 = node(d.path(), "e3", "edge", &[addr(&hub)]);
    wait_nodes(&[&hub, &e1, &e2, &e3], &["hub", "e1", "e2", "e3"]);

    let (_c1, mut r1) = subscribe(&e1, "s1", "plant/#").await;
    let (_c2, mut r2) = subscribe(&e2, "s2", "plant/+/temp").await;
    let (publisher, _p) = client(&e3, "pub").await;
    until_routed(&publisher, "plant/7/temp", &mut r1).await;
    until_routed(&publisher, "plant/7/temp", &mut r2).await;
    fence(&publisher, "plant/fence/temp", &mut [&mut r1, &mut r2]).await;
    for i in 0..100u32 {
        publisher
            .publish(
                "plant/1/temp",
                QoS::AtMostOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
        publisher
            .publish(
                "plant/1/power",
                QoS::AtMostOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
    }
    assert_eq!(collect(&mut r1, 200, WAIT).await.len(), 200);
    assert_eq!(collect(&mut r2, 100, WAIT).await.len(), 100);
    assert!(
        collect(&mut r2, 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "e2 gets only the temperature"
    );

    // e2 dies hard with its subscription; a new e2 (new incarnation) starts without one.
    let old_inc = e2.mesh_view().incarnation;
    e2.kill();
    drop(r2);
    let e2 = node(d.path(), "e2", "edge", &[addr(&hub)]);
    let new_inc = e2.mesh_view().incarnation;
    assert!(new_inc > old_inc);
    wait_until(
        "the new e2 to replace the old one in e3's registry",
        WAIT,
        || {
            let v = e3.mesh_view();
            v.registry
                .iter()
                .any(|e| e.node == "e2" && e.incarnation == new_inc && e.reachable)
        },
    );
    assert_eq!(
        interest(&e3, "e2"),
        Some(0),
        "the old e2's interest does not linger"
    );
    let before = link(&hub, "e2", |l| l.tx_events);
    let e3_before = link(&e3, "hub", |l| l.tx_events);
    for _ in 0..50 {
        publisher
            .publish("plant/2/temp", QoS::AtMostOnce, false, b"x".to_vec())
            .await
            .unwrap();
    }
    assert_eq!(collect(&mut r1, 50, WAIT).await.len(), 50);
    assert_eq!(link(&e3, "hub", |l| l.tx_events) - e3_before, 50);
    assert_eq!(
        link(&hub, "e2", |l| l.tx_events),
        before,
        "nothing goes to the new e2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_across_nodes_gets_each_event_once() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), &["a", "b", "c"]);
    let a = node(d.path(), "a", "core", &[]);
    let b = node(d.path(), "b", "edge", &[addr(&a)]);
    let c = node(d.path(), "c", "edge", &[addr(&a)]);
    wait_nodes(&[&a, &b, &c], &["a", "b", "c"]);
    // Two members on b, one on c; none on a where the publisher is.
    let mut members = [
        subscribe(&b, "w1", "$share/workers/jobs/#").await,
        subscribe(&b, "w2", "$share/workers/jobs/#").await,
        subscribe(&c, "w3", "$share/workers/jobs/#").await,
    ];
    wait_until("a to see the group on b and c", WAIT, || {
        interest(&a, "b") == Some(2) && interest(&a, "c") == Some(2)
    });
    let (publisher, _p) = client(&a, "pub").await;
    // Each member also reads a plain `fence` topic: once every member saw the fence published
    // after the jobs, no job is still on its way to any of them.
    for (c, rx) in members.iter_mut() {
        c.subscribe("fence", QoS::AtMostOnce).await.unwrap();
        until_routed(&publisher, "fence", rx).await;
    }
    for i in 0..300u32 {
        publisher
            .publish("jobs/x", QoS::AtMostOnce, false, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut rxs: Vec<_> = members.iter_mut().map(|(_, rx)| rx).collect();
    let all: Vec<Vec<u8>> = fence(&publisher, "fence", &mut rxs)
        .await
        .into_iter()
        .flatten()
        .filter_map(|p| match p {
            Packet::Publish(p) if p.topic == "jobs/x" => Some(p.payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(
        all.len(),
        300,
        "each event to exactly one member of the group"
    );
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_and_garbage_are_refused_and_change_nothing() {
    let good = tempfile::tempdir().unwrap();
    let evil = tempfile::tempdir().unwrap();
    certs(good.path(), &["core", "edge"]);
    certs(evil.path(), &["mallory"]);
    let mut core = node(good.path(), "core", "core", &[]);
    let edge = node(good.path(), "edge", "edge", &[addr(&core)]);
    wait_nodes(&[&core, &edge], &["core", "edge"]);

    // Garbage datagrams on the mesh port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 1200 + 1)).map(|k| (k * 31 + i) as u8).collect();
        sock.send_to(&junk, addr(&core)).unwrap();
    }
    // A node with a certificate from another CA dials the core.
    let mallory = node(evil.path(), "mallory", "edge", &[addr(&core)]);
    // Twice: mallory dialled again after its first refusal, and that changed nothing either.
    wait_until("the core to refuse mallory twice", WAIT, || {
        core.mesh_view().refused_links >= 2
    });
    let v = core.mesh_view();
    assert_eq!(
        nodes_of(&v),
        HashSet::from(["core".into(), "edge".into()]),
        "{v:?}"
    );
    assert!(
        !v.registry.iter().any(|e| e.node == "mallory"),
        "mallory never enters the registry: {v:?}"
    );
    assert_eq!(
        nodes_of(&mallory.mesh_view()),
        HashSet::from(["mallory".into()])
    );
    // The real link still works.
    let (_s, mut rx) = subscribe(&edge, "s", "t/#").await;
    let (p, _pr) = client(&core, "p").await;
    until_routed(&p, "t/1", &mut rx).await;
    core.assert_serving();
}

/// 100k filters on one node reach a node that joins later: how long and how many bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_learns_100k_filters_quickly_and_compactly() {
    const N: usize = 100_000;
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), &["big", "new"]);
    let big = node(d.path(), "big", "core", &[]);
    let (c, mut rx) = client(&big, "many").await;
    for chunk in 0..N / 100 {
        let filters = (0..100).map(|i| {
            rumqttc::SubscribeFilter::new(format!("site/{chunk}/sensor-{i}/value"), QoS::AtMostOnce)
        });
        c.subscribe_many(filters).await.unwrap();
    }
    let mut acks = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while acks < N / 100 {
            if let Some(Packet::SubAck(_)) = rx.recv().await {
                acks += 1;
            }
        }
    })
    .await
    .expect("every SUBACK");
    wait_until("big to advertise its interest", WAIT, || {
        interest(&big, "big") == Some(N as u64)
    });
    let start = Instant::now();
    let new = node(d.path(), "new", "edge", &[addr(&big)]);
    wait_until(
        "the new node to learn every filter",
        Duration::from_secs(60),
        || interest(&new, "big") == Some(N as u64),
    );
    let took = start.elapsed();
    let bytes = link(&new, "big", |l| l.rx_control_bytes);
    eprintln!(
        "{N} filters reached a new node {took:?} after its start (process start included), {bytes} bytes of control frames"
    );
    assert!(bytes < 5_000_000, "{bytes} bytes for {N} filters");
}

/// Two paths between the edges: when the core on the shorter one dies, routes move to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_move_to_the_remaining_path_when_a_node_dies() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), &["a", "c1", "c2", "b"]);
    let c1 = node(d.path(), "c1", "core", &[]);
    let c2 = node(d.path(), "c2", "core", &[]);
    let a = node(d.path(), "a", "edge", &[addr(&c1), addr(&c2)]);
    let b = node(d.path(), "b", "edge", &[addr(&c1), addr(&c2)]);
    wait_nodes(&[&a, &b, &c1, &c2], &["a", "b", "c1", "c2"]);
    let (_s, mut rx) = subscribe(&b, "s", "r/#").await;
    let (p, _pr) = client(&a, "p").await;
    until_routed(&p, "r/1", &mut rx).await;
    // Which core carries a's events now?
    let via = |core: &str| link(&a, core, |l| l.tx_events);
    let (n1, n2) = (via("c1"), via("c2"));
    let (mut dead, alive) = if n1 >= n2 { (c1, c2) } else { (c2, c1) };
    let alive_name = if n1 >= n2 { "c2" } else { "c1" };
    let dead_name = if n1 >= n2 { "c1" } else { "c2" };
    dead.kill();
    // Once the link loss is noticed (idle timeout 3 s here), events flow through the other core.
    let t = until_routed(&p, "r/2", &mut rx).await;
    eprintln!("rerouted around {dead_name} after {t:?}");
    assert!(link(&a, alive_name, |l| l.tx_events) > 0);
    // Once b noticed too, nobody advertises a link to the dead core: it is unreachable.
    wait_until("the dead core to leave a's reachable nodes", WAIT, || {
        !nodes_of(&a.mesh_view()).contains(dead_name)
    });
    drop(alive);
}

fn up_links(n: &NodeProc) -> Vec<String> {
    n.mesh_view()
        .links
        .into_iter()
        .filter(|l| l.state == LinkState::Up)
        .map(|l| l.peer)
        .collect()
}

/// Nodes that dial each other before either is up: the dials retry until the peer starts, and
/// the two connections collapse to one link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_retry_until_the_peer_starts_and_mutual_dials_make_one_link() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path(), &["p", "q"]);
    let (pa, qa) = (free_udp(), free_udp());
    let start = |name: &str, at: SocketAddr, peer: SocketAddr| {
        let args = [
            "--name".to_string(),
            name.into(),
            "--mesh".into(),
            at.to_string(),
            "--tls-dir".into(),
            d.path().display().to_string(),
            "--peer".into(),
            peer.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProc::start_env(&args, &[("MESHGATE_MESH__MAX_BACKOFF_SECS", "0.5")])
    };
    let p = start("p", pa, qa);
    // p dials an address where nothing listens yet (each attempt ends at the 5 s handshake
    // timeout), and keeps trying.
    wait_until("p to have tried", WAIT, || {
        p.mesh_view().dialling.first().map_or(0, |d| d.attempts) >= 1
    });
    assert!(up_links(&p).is_empty());
    let q = start("q", qa, pa);
    let t = Instant::now();
    wait_until("the link", WAIT, || {
        up_links(&p) == ["q"] && up_links(&q) == ["p"]
    });
    eprintln!("linked {:?} after q started", t.elapsed());
    // Both dialled; the pair keeps the connection p dialled (the smaller name), so q's dial
    // ends and its loop stays idle while that link is up.
    let dial_up = |n: &NodeProc| n.mesh_view().dialling.first().is_some_and(|d| d.connected);
    wait_until("the duplicate collapsed", WAIT, || {
        dial_up(&p) && !dial_up(&q)
    });
    assert_eq!(up_links(&p), ["q"]);
    assert_eq!(up_links(&q), ["p"]);
    let (_s, mut rx) = subscribe(&q, "s", "x").await;
    let (c, _r) = client(&p, "c").await;
    let routed = tokio::time::timeout(
        WAIT - Duration::from_secs(1),
        until_routed(&c, "x", &mut rx),
    )
    .await;
    assert!(
        routed.is_ok(),
        "no route from p to q's subscriber\np: {:#?}\nq: {:#?}\np log:\n{}\nq log:\n{}",
        p.mesh_view(),
        q.mesh_view(),
        p.log_text(),
        q.log_text()
    );
    let (ps, qs) = (p.mesh_view(), q.mesh_view());
    let dialled = |v: &MeshView| v.links[0].dialled;
    assert_ne!(
        dialled(&ps),
        dialled(&qs),
        "one connection: dialled by one side only"
    );
}

/// What a publisher sets travels with the event across the mesh: the event id the HTTP API
/// answered, content type, CloudEvents headers as MQTT 5 user properties, QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_qos_survive_the_link() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Opts5};
    use std::io::{Read, Write};

    let d = tempfile::tempdir().unwrap();
    certs(d.path(), &["a", "b"]);
    let a = node(d.path(), "a", "core", &[]);
    let b = node(d.path(), "b", "edge", &[addr(&a)]);
    wait_nodes(&[&a, &b], &["a", "b"]);

    let mut o = Opts5::new("sub5", "127.0.0.1", b.mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (sub, mut ev) = Client5::new(o, 100);
    let (tx, mut rx) = unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let Event5::Incoming(P5::Publish(p)) = e
                && tx.send(p).is_err()
            {
                break;
            }
        }
    });
    sub.subscribe("sensors/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_until("a to see b's interest", WAIT, || {
        interest(&a, "b") == Some(2)
    });

    // HTTP publish on a, with a content type and a CloudEvents header.
    let body = br#"{"t":21}"#;
    let mut s = std::net::TcpStream::connect(a.http).unwrap();
    write!(
        s,
        "POST /v1/publish/sensors/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nce-source: plant-7\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let p = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&p.topic[..], b"sensors/1");
    assert_eq!(&p.payload[..], body);
    let props = p.properties.expect("properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert!(
        props
            .user_properties
            .contains(&("ce-source".to_string(), "plant-7".to_string())),
        "{:?}",
        props.user_properties
    );

    // MQTT 5 publish on a at QoS 1 with a user property: QoS 1 and the property arrive on b.
    let mut o = Opts5::new("pub5", "127.0.0.1", a.mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (publisher, mut pev) = Client5::new(o, 100);
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    let props = PublishProperties {
        user_properties: vec![("line".into(), "4".into())],
        ..Default::default()
    };
    publisher
        .publish_with_properties(
            "sensors/2",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
            props,
        )
        .await
        .unwrap();
    let p = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&p.topic[..], b"sensors/2");
    assert_eq!(p.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    assert!(
        p.properties
            .unwrap()
            .user_properties
            .contains(&("line".to_string(), "4".to_string()))
    );
}
