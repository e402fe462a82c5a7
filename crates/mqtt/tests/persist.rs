//! Guaranteed delivery over MQTT: acknowledgements after durability, the disk quota, and
//! persistent sessions that survive a restart. A "restart" is a whole Tokio runtime dropped (every
//! task and connection with it) and a new broker, disk and server opened over the same directory.
//! Waits are conditions with deadlines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_auth::StaticAuth;
use meshgate_broker::{Broker, BrokerConfig};
use meshgate_mqtt::{MqttConfig, MqttServer, RestoreReport};
use meshgate_store::{Commit, Disk};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

const LIMIT: Duration = Duration::from_secs(60);

struct Node {
    addr: SocketAddr,
    disk: Disk,
    report: RestoreReport,
    _shutdown: watch::Sender<bool>,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Broker + disk + MQTT server storing sessions under `dir/sessions`, restored, listening.
async fn start(dir: &Path, commit: Commit, quota: u64, max_queued: usize) -> Node {
    let broker = Broker::new(BrokerConfig::default());
    let disk = Disk::new(commit, quota);
    broker.set_disk(disk.clone());
    let config = MqttConfig {
        max_queued_messages: max_queued,
        ..Default::default()
    };
    let auth = Arc::new(StaticAuth::new(true, []));
    let server = MqttServer::new(broker, auth, config).with_store(dir.join("sessions"));
    let report = server.restore().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move { server.serve(listener, rx).await });
    Node {
        addr,
        disk,
        report,
        _shutdown: tx,
    }
}

fn session_dir(dir: &Path, client_id: &str) -> PathBuf {
    let hex: String = client_id.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join("sessions").join(hex)
}

fn meta(dir: &Path, client_id: &str) -> Option<serde_json::Value> {
    let bytes = std::fs::read(session_dir(dir, client_id).join("session.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The session's metadata says its client is gone.
fn offline(dir: &Path, client_id: &str) -> bool {
    meta(dir, client_id).is_some_and(|m| m["disconnected_at"].is_u64())
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An MQTT 5 client whose incoming packets arrive on a channel; `None` once the connection ended.
async fn v5(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
) -> (
    rumqttc::v5::AsyncClient,
    mpsc::UnboundedReceiver<Option<Packet>>,
) {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", addr.port());
    o.set_clean_start(clean);
    o.set_session_expiry_interval(expiry);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = rumqttc::v5::AsyncClient::new(o, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p)) => {
                    if tx.send(Some(p)).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(None);
                    break;
                }
            }
        }
    });
    (c, rx)
}

/// The next packet matching `f`, skipping others.
async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<Option<Packet>>,
    mut f: impl FnMut(Packet) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Some(p))) => {
                if let Some(t) = f(p) {
                    return t;
                }
            }
            Ok(_) => panic!("connection ended"),
            Err(_) => panic!("timed out waiting for a packet"),
        }
    }
}

async fn connack(rx: &mut mpsc::UnboundedReceiver<Option<Packet>>) -> bool {
    next(rx, |p| match p {
        Packet::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await
}

async fn suback(rx: &mut mpsc::UnboundedReceiver<Option<Packet>>) {
    next(rx, |p| matches!(p, Packet::SubAck(_)).then_some(())).await
}

async fn puback(
    rx: &mut mpsc::UnboundedReceiver<Option<Packet>>,
) -> (PubAckReason, Option<String>) {
    next(rx, |p| match p {
        Packet::PubAck(a) => Some((a.reason, a.properties.and_then(|p| p.reason_string))),
        _ => None,
    })
    .await
}

/// A persistent subscriber (session expiry 3600) to `filter` at QoS 1 that then disconnects.
async fn park_subscriber(node: &Node, dir: &Path, id: &str, filter: &str) {
    let (c, mut rx) = v5(node.addr, id, false, Some(3600)).await;
    connack(&mut rx).await;
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    suback(&mut rx).await;
    assert!(
        meta(dir, id).is_some_and(|m| m["subscriptions"][0]["filter"] == filter),
        "metadata written before the SUBACK: {:?}",
        meta(dir, id)
    );
    c.disconnect().await.unwrap();
    wait_until("subscriber offline", LIMIT, || offline(dir, id)).await;
}

/// Publishes `n` QoS 1 events numbered from 0 (big-endian u32 payload) and waits for every PUBACK.
async fn publish_numbered(addr: SocketAddr, topic: &str, n: u32) {
    let (c, mut rx) = v5(addr, "numbered-publisher", true, None).await;
    connack(&mut rx).await;
    let topic = topic.to_string();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            c.publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
        }
        c
    });
    for _ in 0..n {
        assert_eq!(puback(&mut rx).await.0, PubAckReason::Success);
    }
    let c = sender.await.unwrap();
    let _ = c.disconnect().await;
}

/// Receives `n` publishes and checks they are numbered 0..n in order.
async fn receive_numbered(rx: &mut mpsc::UnboundedReceiver<Option<Packet>>, n: u32) {
    for want in 0..n {
        let got = next(rx, |p| match p {
            Packet::Publish(p) => Some(u32::from_be_bytes(p.payload[..4].try_into().unwrap())),
            _ => None,
        })
        .await;
        assert_eq!(got, want, "in order, no loss, no duplicate");
    }
}

#[test]
fn stored_session_survives_a_restart_with_a_backlog_beyond_the_mailbox() {
    const N: u32 = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let commit = Commit::Group(Duration::from_millis(2));

    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, commit, u64::MAX, 1000).await;
        assert_eq!(node.report, RestoreReport::default());
        park_subscriber(&node, dir, "keeper", "ev/#").await;
        publish_numbered(node.addr, "ev/x", N).await;
        assert!(node.disk.used_bytes() > 0);
    });
    rt.shutdown_timeout(Duration::from_secs(10));

    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, commit, u64::MAX, 1000).await;
        assert_eq!(node.report.restored, 1, "{:?}", node.report);
        let (c, mut rx) = v5(node.addr, "keeper", false, Some(3600)).await;
        assert!(connack(&mut rx).await, "session present after the restart");
        receive_numbered(&mut rx, N).await;
        // Everything acknowledged: the journal is released and its segments deleted.
        let disk = node.disk.clone();
        wait_until("journal released", LIMIT, || disk.used_bytes() == 0).await;
        let _ = c.disconnect().await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn backlog_beyond_the_mailbox_is_read_back_without_a_restart() {
    const N: u32 = 5_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, Commit::Os(Duration::from_millis(50)), u64::MAX, 100).await;
        park_subscriber(&node, dir, "keeper", "ev/#").await;
        publish_numbered(node.addr, "ev/x", N).await;
        let (c, mut rx) = v5(node.addr, "keeper", false, Some(3600)).await;
        assert!(connack(&mut rx).await);
        receive_numbered(&mut rx, N).await;
        // And live traffic afterwards, through the mailbox again.
        let (p, mut prx) = v5(node.addr, "late", true, None).await;
        connack(&mut prx).await;
        p.publish("ev/late", QoS::AtLeastOnce, false, N.to_be_bytes().to_vec())
            .await
            .unwrap();
        receive_numbered_from(&mut rx, N, 1).await;
        let _ = c.disconnect().await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

async fn receive_numbered_from(
    rx: &mut mpsc::UnboundedReceiver<Option<Packet>>,
    from: u32,
    n: u32,
) {
    for want in from..from + n {
        let got = next(rx, |p| match p {
            Packet::Publish(p) => Some(u32::from_be_bytes(p.payload[..4].try_into().unwrap())),
            _ => None,
        })
        .await;
        assert_eq!(got, want);
    }
}

#[test]
fn quota_refuses_guaranteed_publishes_until_the_subscriber_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = runtime();
    rt.block_on(async {
        let node = start(
            dir,
            Commit::Group(Duration::from_millis(1)),
            64 * 1024,
            1000,
        )
        .await;
        park_subscriber(&node, dir, "slow", "q/#").await;
        // An online QoS 0 watcher of the same topics.
        let (w, mut wrx) = v5(node.addr, "watch", true, None).await;
        connack(&mut wrx).await;
        w.subscribe("q/#", QoS::AtMostOnce).await.unwrap();
        suback(&mut wrx).await;

        let (p, mut prx) = v5(node.addr, "p5", true, None).await;
        connack(&mut prx).await;
        let mut stored = 0;
        let mut refused = None;
        for _ in 0..200 {
            p.publish("q/big", QoS::AtLeastOnce, false, vec![7u8; 1000])
                .await
                .unwrap();
            match puback(&mut prx).await {
                (PubAckReason::Success, _) => {
                    assert!(refused.is_none(), "no success after the quota is reached");
                    stored += 1;
                }
                (PubAckReason::QuotaExceeded, text) => refused = Some(text),
                other => panic!("{other:?}"),
            }
        }
        assert!(stored > 10 && stored < 64, "stored {stored}");
        let text = refused.expect("refused at the quota").unwrap_or_default();
        assert!(text.contains("quota"), "reason string: {text}");

        // QoS 0 still flows.
        p.publish("q/zero", QoS::AtMostOnce, false, b"z".to_vec())
            .await
            .unwrap();
        next(&mut wrx, |pk| match pk {
            Packet::Publish(m) if &m.topic[..] == b"q/zero" => Some(()),
            _ => None,
        })
        .await;

        // MQTT 3.1.1 has no negative PUBACK: its publisher is disconnected instead.
        let mut o = rumqttc::MqttOptions::new("p4", "127.0.0.1", node.addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        let (c4, mut ev4) = rumqttc::AsyncClient::new(o, 10);
        c4.publish("q/v4", rumqttc::QoS::AtLeastOnce, false, vec![1u8; 2000])
            .await
            .unwrap();
        let closed = tokio::time::timeout(LIMIT, async {
            loop {
                match ev4.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        panic!("a 3.1.1 publish beyond the quota was acknowledged")
                    }
                    Ok(_) => {}
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("the 3.1.1 publisher is disconnected");
        drop(closed);

        // The subscriber drains its journal; its release gives the quota back.
        let (s, mut srx) = v5(node.addr, "slow", false, Some(3600)).await;
        assert!(connack(&mut srx).await);
        for _ in 0..stored {
            next(&mut srx, |pk| {
                matches!(pk, Packet::Publish(_)).then_some(())
            })
            .await;
        }
        let disk = node.disk.clone();
        wait_until("journal released", LIMIT, || disk.used_bytes() == 0).await;
        p.publish("q/big", QoS::AtLeastOnce, false, vec![7u8; 1000])
            .await
            .unwrap();
        assert_eq!(puback(&mut prx).await.0, PubAckReason::Success);
        let _ = s.disconnect().await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn a_failed_fsync_stops_acknowledgements_and_refuses_guaranteed_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, Commit::Group(Duration::ZERO), 1 << 30, 1000).await;
        park_subscriber(&node, dir, "keep", "f/#").await;
        let (p, mut prx) = v5(node.addr, "pf", true, None).await;
        connack(&mut prx).await;
        p.publish("f/1", QoS::AtLeastOnce, false, b"one".to_vec())
            .await
            .unwrap();
        assert_eq!(puback(&mut prx).await.0, PubAckReason::Success);

        // The next fsync fails: the publish it covers is never acknowledged, and since
        // acknowledgements go in order, the connection is closed for the client to retry.
        node.disk.inject_sync_failure();
        p.publish("f/2", QoS::AtLeastOnce, false, b"two".to_vec())
            .await
            .unwrap();
        // (rumqttc reports the server's DISCONNECT as the end of the connection.)
        tokio::time::timeout(LIMIT, async {
            while let Some(Some(pk)) = prx.recv().await {
                if let Packet::PubAck(a) = pk {
                    panic!("acknowledged after a failed fsync: {a:?}");
                }
            }
        })
        .await
        .expect("the publisher is disconnected");
        assert!(node.disk.failure().is_some());

        // A new connection: its guaranteed publishes are refused with the reason, QoS 0 ones
        // still flow.
        let (p, mut prx) = v5(node.addr, "pf2", true, None).await;
        connack(&mut prx).await;
        p.publish("f/3", QoS::AtLeastOnce, false, b"three".to_vec())
            .await
            .unwrap();
        let (reason, text) = puback(&mut prx).await;
        assert_eq!(reason, PubAckReason::UnspecifiedError);
        let text = text.unwrap_or_default();
        assert!(text.contains("store failed"), "reason string: {text}");
        let (w, mut wrx) = v5(node.addr, "watch", true, None).await;
        connack(&mut wrx).await;
        w.subscribe("f/#", QoS::AtMostOnce).await.unwrap();
        suback(&mut wrx).await;
        p.publish("f/zero", QoS::AtMostOnce, false, b"z".to_vec())
            .await
            .unwrap();
        next(&mut wrx, |pk| match pk {
            Packet::Publish(m) if &m.topic[..] == b"f/zero" => Some(()),
            _ => None,
        })
        .await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn restore_skips_corrupt_sessions_and_deletes_expired_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let commit = Commit::Group(Duration::from_millis(1));
    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, commit, u64::MAX, 1000).await;
        park_subscriber(&node, dir, "a", "c/a").await;
        park_subscriber(&node, dir, "b", "c/b").await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));

    // b's metadata is torn, a directory has none, and one session expired long ago.
    std::fs::write(
        session_dir(dir, "b").join("session.json"),
        b"{\"version\":1,\"cli",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("sessions").join("zz")).unwrap();
    let old = session_dir(dir, "old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("session.json"),
        br#"{"version":1,"client_id":"old","expiry_secs":10,"disconnected_at":1000,"subscriptions":[]}"#,
    )
    .unwrap();

    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, commit, u64::MAX, 1000).await;
        assert_eq!(
            node.report,
            RestoreReport {
                restored: 1,
                expired: 1,
                skipped: 2
            }
        );
        assert!(!old.exists(), "expired session deleted");
        assert!(
            session_dir(dir, "b").exists(),
            "corrupt session left for inspection"
        );
        // a's subscription is back: an event published while it is offline is kept for it.
        let (p, mut prx) = v5(node.addr, "p", true, None).await;
        connack(&mut prx).await;
        p.publish("c/a", QoS::AtLeastOnce, false, b"for a".to_vec())
            .await
            .unwrap();
        assert_eq!(puback(&mut prx).await.0, PubAckReason::Success);
        let (_a, mut arx) = v5(node.addr, "a", false, Some(3600)).await;
        assert!(connack(&mut arx).await);
        let got = next(&mut arx, |pk| match pk {
            Packet::Publish(m) => Some(m.payload),
            _ => None,
        })
        .await;
        assert_eq!(&got[..], b"for a");
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn puback_waits_until_the_event_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = runtime();
    rt.block_on(async {
        let node = start(
            dir,
            Commit::Group(Duration::from_millis(200)),
            u64::MAX,
            1000,
        )
        .await;
        park_subscriber(&node, dir, "d", "d/#").await;
        let (p, mut prx) = v5(node.addr, "p", true, None).await;
        connack(&mut prx).await;
        let durable = node.disk.durable();
        let before = *durable.borrow();
        // A lone event is committed at once; the next cycle may start only a window (200 ms)
        // after that one, so the second PUBACK cannot come before it.
        let t = Instant::now();
        let first = t;
        p.publish("d/0", QoS::AtLeastOnce, false, b"first".to_vec())
            .await
            .unwrap();
        assert_eq!(puback(&mut prx).await.0, PubAckReason::Success);
        assert!(*durable.borrow() > before, "a commit cycle completed first");
        let after_first = *durable.borrow();
        p.publish(
            "d/1",
            QoS::AtLeastOnce,
            false,
            b"unique-payload-4711".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(puback(&mut prx).await.0, PubAckReason::Success);
        let waited = t.elapsed();
        assert!(
            *durable.borrow() > after_first,
            "another commit cycle completed first"
        );
        assert!(
            waited >= Duration::from_millis(190),
            "acknowledged after {waited:?}"
        );
        let journal = session_dir(dir, "d").join("journal");
        let stored = std::fs::read_dir(&journal)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .any(|e| {
                let bytes = std::fs::read(e.path()).unwrap();
                bytes.windows(19).any(|w| w == b"unique-payload-4711")
            });
        assert!(
            stored,
            "the event is in the journal when its PUBACK arrives"
        );

        // Nothing stored for this one: acknowledged without waiting for a commit.
        let t = Instant::now();
        p.publish("free/1", QoS::AtLeastOnce, false, b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(puback(&mut prx).await.0, PubAckReason::Success);
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );

        // QoS 2: the PUBREC waits the same way, for a third cycle. The window runs from the
        // start of the second cycle, which is at least 200 ms after the first publish (not
        // after this one: the second PUBACK and the publish above came in between).
        let before_third = *durable.borrow();
        p.publish("d/2", QoS::ExactlyOnce, false, b"two".to_vec())
            .await
            .unwrap();
        next(&mut prx, |pk| matches!(pk, Packet::PubRec(_)).then_some(())).await;
        assert!(
            *durable.borrow() > before_third,
            "a third cycle completed first"
        );
        assert!(
            first.elapsed() >= Duration::from_millis(390),
            "{:?}",
            first.elapsed()
        );
        next(&mut prx, |pk| {
            matches!(pk, Packet::PubComp(_)).then_some(())
        })
        .await;

        // Acknowledgements keep the order of the publishes: one that need not wait for the disk
        // does not overtake one that does.
        p.publish("d/3", QoS::AtLeastOnce, false, b"slow".to_vec())
            .await
            .unwrap();
        p.publish("free/2", QoS::AtLeastOnce, false, b"fast".to_vec())
            .await
            .unwrap();
        let pkid = |pk| match pk {
            Packet::PubAck(a) => Some(a.pkid),
            _ => None,
        };
        let first = next(&mut prx, pkid).await;
        let second = next(&mut prx, pkid).await;
        assert_eq!(second, first.wrapping_add(1), "in order: {first}, {second}");
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

#[test]
fn ended_sessions_lose_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = runtime();
    rt.block_on(async {
        let node = start(dir, Commit::Group(Duration::from_millis(1)), u64::MAX, 1000).await;
        // Clean start over a stored session ends it.
        park_subscriber(&node, dir, "x", "x/#").await;
        let (c, mut rx) = v5(node.addr, "x", true, None).await;
        assert!(!connack(&mut rx).await);
        let x = session_dir(dir, "x");
        wait_until("x deleted", LIMIT, || !x.exists()).await;
        let _ = c.disconnect().await;
        // Expiry ends it too.
        let (c, mut rx) = v5(node.addr, "y", false, Some(1)).await;
        connack(&mut rx).await;
        let y = session_dir(dir, "y");
        assert!(y.join("session.json").exists(), "stored before the CONNACK");
        c.disconnect().await.unwrap();
        wait_until("y expired and deleted", Duration::from_secs(10), || {
            !y.exists()
        })
        .await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}
