//! Guaranteed delivery with real processes and real kills: QoS 1 events acknowledged by a node
//! reach a persistent subscriber on another node through cores that are SIGKILLed and
//! restarted, while the publisher's own node is killed, while the subscriber is away; a full
//! store refuses new guaranteed events and recovers; a damaged store is reported at start.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{NodeProc, certs, free_udp, http_get, http_request, wait_until};
use meshgate_api::BacklogView;
use rumqttc::{AsyncClient, Packet, QoS};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(30);

/// A mesh node on a fixed mesh address with its own data directory, so that it can be killed
/// and started again on the same address and data.
fn node(
    certs: &Path,
    data: &Path,
    name: &str,
    mesh: SocketAddr,
    peers: &[SocketAddr],
    env: &[(&str, &str)],
) -> NodeProc {
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--mesh".into(),
        mesh.to_string(),
        "--tls-dir".into(),
        certs.display().to_string(),
        "--data-dir".into(),
        data.join(name).display().to_string(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec![
        ("MESHGATE_MESH__GOSSIP_INTERVAL_SECS", "0.2"),
        ("MESHGATE_MESH__IDLE_TIMEOUT_SECS", "2"),
        ("MESHGATE_MESH__MAX_BACKOFF_SECS", "0.3"),
    ];
    all.extend_from_slice(env);
    NodeProc::start_env(&args, &all)
}

/// A persistent MQTT 3.1.1 client with room for many QoS 1 messages in flight.
async fn persistent(n: &NodeProc, id: &str) -> (AsyncClient, UnboundedReceiver<Packet>) {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", n.mqtt.port());
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 10_000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let rumqttc::Event::Incoming(p) = e
                && tx.send(p).is_err()
            {
                break;
            }
        }
    });
    (c, rx)
}

async fn subscribe_q1(
    n: &NodeProc,
    id: &str,
    filter: &str,
) -> (AsyncClient, UnboundedReceiver<Packet>) {
    let (c, mut rx) = persistent(n, id).await;
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while !matches!(rx.recv().await, Some(Packet::SubAck(_))) {}
    })
    .await
    .expect("suback");
    (c, rx)
}

/// Whether `at` holds interest of `node` in its registry (reachable or not).
fn knows_interest(at: &NodeProc, node: &str) -> bool {
    at.mesh_view()
        .registry
        .iter()
        .any(|e| e.node == node && e.interest > 0)
}

fn backlog(n: &NodeProc) -> BacklogView {
    let (status, body) = http_get(n.http, "/v1/backlog").expect("GET /v1/backlog");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Events waiting in every link queue of `n`.
fn waiting(n: &NodeProc) -> u64 {
    backlog(n).links.iter().map(|q| q.events).sum()
}

/// Publishes `range` as QoS 1 events `"{i}"` on `topic`, and returns once each is acknowledged.
async fn publish_acked(
    c: &AsyncClient,
    rx: &mut UnboundedReceiver<Packet>,
    topic: &str,
    range: std::ops::Range<u64>,
) {
    let want = range.end - range.start;
    let mut acked = 0u64;
    let mut sent = range.start;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < want {
        assert!(Instant::now() < deadline, "{acked} of {want} acknowledged");
        // Keep at most a few thousand unacknowledged, so the acks are read as they come.
        while sent < range.end && sent - range.start - acked < 5_000 {
            c.publish(topic, QoS::AtLeastOnce, false, sent.to_string())
                .await
                .unwrap();
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Packet::PubAck(_))) => acked += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("publisher connection gone"),
            Err(_) => panic!("no acknowledgement for 10 s ({acked} of {want})"),
        }
    }
}

/// Receives publishes until `want` distinct payloads arrived; returns them in arrival order
/// (duplicates included).
async fn receive(rx: &mut UnboundedReceiver<Packet>, want: usize, limit: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    let _ = tokio::time::timeout(limit, async {
        while distinct.len() < want {
            match rx.recv().await {
                Some(Packet::Publish(p)) => {
                    let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                    distinct.insert(n);
                    got.push(n);
                }
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    got
}

struct Mesh3 {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    data: PathBuf,
    addr: [SocketAddr; 3],
}

impl Mesh3 {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        certs(&certs_dir, &["edge-a", "core", "edge-b"]);
        Self {
            certs: certs_dir,
            data: dir.path().join("data"),
            _dir: dir,
            addr: [free_udp(), free_udp(), free_udp()],
        }
    }

    fn core(&self) -> NodeProc {
        node(
            &self.certs,
            &self.data,
            "core",
            self.addr[1],
            &[],
            &[("MESHGATE_MESH__ROLE", "core")],
        )
    }

    fn edge(&self, name: &str, env: &[(&str, &str)]) -> NodeProc {
        let i = if name == "edge-a" { 0 } else { 2 };
        node(
            &self.certs,
            &self.data,
            name,
            self.addr[i],
            &[self.addr[1]],
            env,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_events_survive_a_core_killed_mid_stream_and_arrive_once_in_order() {
    let m = Mesh3::new();
    let mut core = m.core();
    let b = m.edge("edge-b", &[]);
    let a = m.edge("edge-a", &[]);
    let (_sub, mut srx) = subscribe_q1(&b, "sub-b", "g/#").await;
    wait_until("edge-a learns edge-b's interest", WAIT, || {
        knows_interest(&a, "edge-b")
    });

    const N: u64 = 100_000;
    let (publisher, mut prx) = persistent(&a, "pub-a").await;
    publish_acked(&publisher, &mut prx, "g/x", 0..N / 3).await;
    // Kill the core mid-stream: edge-a keeps acknowledging (its queue holds the events).
    core.kill();
    publish_acked(&publisher, &mut prx, "g/x", N / 3..2 * N / 3).await;
    assert!(
        waiting(&a) > 0,
        "edge-a holds events while the core is down"
    );
    let _core = m.core();
    publish_acked(&publisher, &mut prx, "g/x", 2 * N / 3..N).await;

    let got = receive(&mut srx, N as usize, Duration::from_secs(180)).await;
    let distinct: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(distinct.len() as u64, N, "every acknowledged event arrives");
    assert_eq!(got.len() as u64, N, "each exactly once");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in publish order");
    wait_until("edge-a's queues drain", WAIT, || waiting(&a) == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_acknowledged_while_the_core_is_down_survive_a_kill_of_the_edge() {
    let m = Mesh3::new();
    let mut core = m.core();
    let b = m.edge("edge-b", &[]);
    let mut a = m.edge("edge-a", &[]);
    let (_sub, mut srx) = subscribe_q1(&b, "sub-b", "g/#").await;
    wait_until("edge-a learns edge-b's interest", WAIT, || {
        knows_interest(&a, "edge-b")
    });
    core.kill();

    const N: u64 = 5_000;
    let (publisher, mut prx) = persistent(&a, "pub-a").await;
    publish_acked(&publisher, &mut prx, "g/y", 0..N).await;
    drop(publisher);
    a.kill();
    let a = m.edge("edge-a", &[]);
    assert!(
        a.log_text().contains("guaranteed backlog recovered"),
        "{}",
        a.log_text()
    );
    let core = m.core();
    let got = receive(&mut srx, N as usize, Duration::from_secs(60)).await;
    let distinct: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(
        distinct.len() as u64,
        N,
        "every acknowledged event arrives; edge-a {:?} core {:?} edge-b {:?}\n{}\n{}",
        backlog(&a),
        backlog(&core),
        backlog(&b),
        a.log_text(),
        core.log_text()
    );
    wait_until("edge-a's queues drain", WAIT, || waiting(&a) == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_gets_what_arrived_while_it_was_away_even_across_a_restart() {
    let m = Mesh3::new();
    let _core = m.core();
    let mut b = m.edge("edge-b", &[]);
    let a = m.edge("edge-a", &[]);
    let (sub, mut srx) = subscribe_q1(&b, "sub-b", "away/#").await;
    wait_until("edge-a learns edge-b's interest", WAIT, || {
        knows_interest(&a, "edge-b")
    });
    sub.disconnect().await.unwrap();
    while srx.recv().await.is_some() {}

    let (publisher, mut prx) = persistent(&a, "pub-a").await;
    publish_acked(&publisher, &mut prx, "away/1", 0..1_000).await;
    wait_until("edge-a's queue drains into edge-b", WAIT, || {
        waiting(&a) == 0
    });
    wait_until("edge-b shows the session's backlog", WAIT, || {
        let v = backlog(&b);
        v.sessions.sessions.first().is_some_and(|s| {
            s.client_id == "sub-b" && !s.online && s.events == 1_000 && s.oldest_age_ms.is_some()
        })
    });
    let (_, metrics) = http_get(b.http, "/metrics").unwrap();
    assert!(
        metrics.contains("meshgate_session_backlog_events 1000"),
        "{metrics}"
    );
    // The node holding the session is killed and restarted from its data.
    b.kill();
    let b = m.edge("edge-b", &[]);
    publish_acked(&publisher, &mut prx, "away/1", 1_000..2_000).await;

    let (_sub, mut srx) = persistent(&b, "sub-b").await;
    let got = receive(&mut srx, 2_000, Duration::from_secs(60)).await;
    let distinct: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        2_000,
        "queued while away, before and after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_guaranteed_publishes_and_recovers_when_the_link_drains() {
    let m = Mesh3::new();
    let mut core = m.core();
    let b = m.edge("edge-b", &[]);
    let a = m.edge("edge-a", &[("MESHGATE_STORE__QUOTA_BYTES", "1048576")]);
    let (_sub, mut srx) = subscribe_q1(&b, "sub-b", "q/#").await;
    wait_until("edge-a learns edge-b's interest", WAIT, || {
        knows_interest(&a, "edge-b")
    });
    core.kill();

    // Fill the store over REST: 2xx until full, then 507 with the reason.
    let payload = vec![b'x'; 4 * 1024];
    let mut accepted = 0;
    let refusal = loop {
        let (status, body) = http_request(
            a.http,
            "POST",
            "/v1/publish/q/big?delivery=guaranteed",
            &payload,
        )
        .unwrap();
        match status {
            200 => accepted += 1,
            507 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(accepted < 2_000, "the quota never filled");
    };
    assert!(refusal.contains("quota"), "{refusal}");
    assert!(accepted > 10, "{accepted} accepted before the quota");
    let st = backlog(&a).store.expect("a store");
    assert!(st.used_bytes > 0, "{st:?}");

    // MQTT v5 QoS 1 gets PUBACK 0x97; QoS 0 still flows.
    let mut o = rumqttc::v5::MqttOptions::new("pub-v5", "127.0.0.1", a.mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c5, mut ev5) = rumqttc::v5::AsyncClient::new(o, 100);
    c5.publish(
        "q/v5",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        payload.clone(),
    )
    .await
    .unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(
                ack,
            ))) = ev5.poll().await
            {
                return ack.reason;
            }
        }
    })
    .await
    .expect("a PUBACK");
    assert_eq!(
        code,
        rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded
    );
    let (status, body) = http_request(a.http, "POST", "/v1/publish/q/direct", b"d").unwrap();
    assert_eq!(status, 200, "direct traffic keeps flowing: {body}");

    // The core returns, the queue drains to edge-b, and guaranteed publishes work again.
    let _core = m.core();
    let mut got = 0;
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while got < accepted {
            match srx.recv().await {
                Some(Packet::Publish(p)) if p.topic == "q/big" => got += 1,
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    assert!(got >= accepted, "{got} of {accepted} arrived");
    wait_until("the store has room again", WAIT, || {
        http_request(
            a.http,
            "POST",
            "/v1/publish/q/again?delivery=guaranteed",
            b"1",
        )
        .is_some_and(|(s, _)| s == 200)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_reported_at_start_and_the_node_serves() {
    let m = Mesh3::new();
    let mut core = m.core();
    let b = m.edge("edge-b", &[]);
    let mut a = m.edge("edge-a", &[]);
    let (_sub, _srx) = subscribe_q1(&b, "sub-b", "d/#").await;
    wait_until("edge-a learns edge-b's interest", WAIT, || {
        knows_interest(&a, "edge-b")
    });
    core.kill();
    let (publisher, mut prx) = persistent(&a, "pub-a").await;
    publish_acked(&publisher, &mut prx, "d/1", 0..200).await;
    drop(publisher);
    a.kill();

    // Tear the last record and corrupt one in the middle of every queue segment.
    let mut damaged = 0;
    for seg in walk(&m.data.join("edge-a").join("mesh")) {
        if seg.extension().is_some_and(|e| e == "log") {
            let mut bytes = std::fs::read(&seg).unwrap();
            if bytes.len() < 1000 {
                continue;
            }
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            bytes.truncate(bytes.len() - 7);
            std::fs::write(&seg, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "a queue segment to damage");
    let mut a = m.edge("edge-a", &[]);
    a.assert_serving();
    let log = a.log_text();
    assert!(log.contains("recovered with damage"), "{log}");
    assert!(log.contains("truncated_bytes"), "{log}");
    let held: u64 = backlog(&a).links.iter().map(|q| q.stored_events).sum();
    assert!(held > 0 && held < 200, "kept what was valid: {held}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
