//! Flow control (meshgate_broker::flow) with real processes: a publisher that writes as fast as
//! TCP lets it loses nothing to a subscriber that reads as fast as it can, on one node and
//! across a mesh link; a stuck subscriber or a paused node is cut loose after the stall time
//! without freezing the others; a REST publish against a full queue is told to come back.
//!
//! The clients are raw MQTT 3.1.1 on blocking sockets: the publisher writes pre-encoded
//! batches of QoS 0 PUBLISH packets, each payload starting with its sequence number, and the
//! subscriber checks that every number arrives once, in order.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{NodeProc, certs, free_udp, http_request_with, wait_until};

/// Events of the flood tests.
const FLOOD: u64 = 1_000_000;
/// Payload bytes of the flood tests (the sequence number and padding).
const PAYLOAD: usize = 16;
/// Resident memory a node may reach while it carries a flood with the default queue sizes.
const RSS_LIMIT: u64 = 400 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// The remaining-length bytes of an MQTT fixed header.
fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A raw MQTT 3.1.1 connection (clean session, keep-alive off).
fn connect(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    put_str(&mut body, client_id);
    let mut p = vec![0x10];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    s.write_all(&p).unwrap();
    let mut ack = [0u8; 4];
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.read_exact(&mut ack).expect("connack");
    assert_eq!(ack, [0x20, 2, 0, 0], "connack");
    s
}

/// Subscribes `s` to `filter` at QoS 0 and waits for the SUBACK.
fn subscribe(s: &mut TcpStream, filter: &str) {
    let mut body = vec![0, 1];
    put_str(&mut body, filter);
    body.push(0);
    let mut p = vec![0x82];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    s.write_all(&p).unwrap();
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack).expect("suback");
    assert_eq!(ack, [0x90, 3, 0, 1, 0], "suback");
}

/// Writes `count` QoS 0 publishes to `topic` as fast as TCP takes them, in batches; returns
/// the time from the first write to the last.
fn flood(mut s: TcpStream, topic: &str, count: u64) -> Duration {
    let mut packet = vec![0x30];
    put_len(&mut packet, 2 + topic.len() + PAYLOAD);
    put_str(&mut packet, topic);
    let at = packet.len();
    packet.resize(at + PAYLOAD, 0);
    let mut buf = Vec::with_capacity(64 * 1024 + packet.len());
    let start = Instant::now();
    for seq in 0..count {
        packet[at..at + 8].copy_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&packet);
        if buf.len() >= 64 * 1024 {
            s.write_all(&buf).expect("publisher writes");
            buf.clear();
        }
    }
    s.write_all(&buf).expect("publisher writes");
    let took = start.elapsed();
    // DISCONNECT, so the node reads every publish before the connection ends.
    let _ = s.write_all(&[0xE0, 0]);
    took
}

/// Publishes `count` QoS 1 events on `topic` and waits for every PUBACK.
fn publish_qos1(addr: SocketAddr, client_id: &str, topic: &str, count: u16) {
    let mut s = connect(addr, client_id);
    let mut buf = Vec::new();
    for id in 1..=count {
        let mut body = Vec::new();
        put_str(&mut body, topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&u64::from(id).to_be_bytes());
        buf.push(0x32);
        put_len(&mut buf, body.len());
        buf.extend_from_slice(&body);
    }
    s.write_all(&buf).unwrap();
    let mut acks = 0;
    let mut ack = [0u8; 4];
    while acks < count {
        s.read_exact(&mut ack).expect("puback");
        assert_eq!(ack[0], 0x40, "puback");
        acks += 1;
    }
}

/// What a subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    events: u64,
    /// The first sequence number that was not the one expected (a loss or a reordering).
    first_gap: Option<(u64, u64)>,
}

/// Reads publishes from `s` until `count` arrived or the connection ends; `stop` ends it
/// early. Counts them in `progress` as they come.
fn receive(
    s: TcpStream,
    count: u64,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Seen> {
    receive_with_hiccup(s, count, progress, stop, None)
}

/// [`receive`], pausing for a while after a number of events (`hiccup`): a subscriber that is
/// merely slower than its publisher for a moment.
fn receive_with_hiccup(
    s: TcpStream,
    count: u64,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    hiccup: Option<(u64, Duration)>,
) -> JoinHandle<Seen> {
    std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut r = BufReader::with_capacity(256 * 1024, s);
        let mut seen = Seen::default();
        let mut header = [0u8; 1];
        while seen.events < count && !stop.load(Ordering::Relaxed) {
            match r.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => break,
            }
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let mut b = [0u8; 1];
                read_fully(&mut r, &mut b);
                len |= ((b[0] & 0x7f) as usize) << shift;
                shift += 7;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            read_fully(&mut r, &mut body);
            if header[0] & 0xF0 != 0x30 {
                continue;
            }
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let payload = &body[2 + topic_len..];
            let seq = u64::from_be_bytes(payload[..8].try_into().unwrap());
            if seen.first_gap.is_none() && seq != seen.events {
                seen.first_gap = Some((seen.events, seq));
            }
            seen.events += 1;
            progress.store(seen.events, Ordering::Relaxed);
            if let Some((after, pause)) = hiccup
                && seen.events == after
            {
                std::thread::sleep(pause);
            }
        }
        seen
    })
}

/// Reads exactly `buf.len()` bytes, riding out read timeouts.
fn read_fully(r: &mut impl Read, buf: &mut [u8]) {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => panic!("connection closed inside a packet"),
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Samples the resident memory of `nodes` until `stop`; returns the highest of each.
fn watch_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut max = vec![0u64; pids.len()];
        while !stop.load(Ordering::Relaxed) {
            for (m, pid) in max.iter_mut().zip(&pids) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map_or(0, |kb| kb * 1024);
                *m = (*m).max(rss);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        max
    })
}

/// Every drop counter of `n` is zero.
fn assert_nothing_dropped(n: &NodeProc, name: &str) {
    for reason in ["queue_full", "slow_consumer"] {
        let dropped = n.metric(
            "meshgate_events_dropped_total",
            &[&format!("reason=\"{reason}\"")],
        );
        assert_eq!(dropped, 0.0, "{name} dropped events ({reason})");
    }
    assert_eq!(n.metric("meshgate_link_dropped_total", &[]), 0.0, "{name}");
}

/// One publisher on `pub_node` floods `flood/t`, `sub` (subscribed to it) reads, pausing for
/// 200 ms (less than the stall time) after 100,000 events: without flow control what the
/// publisher wrote meanwhile would overflow the subscriber's queue.
fn flood_through(pub_node: &NodeProc, sub: TcpStream, nodes: &[&NodeProc]) {
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hiccup = Some((100_000, Duration::from_millis(200)));
    let reader = receive_with_hiccup(sub, FLOOD, progress.clone(), stop.clone(), hiccup);
    let rss_stop = Arc::new(AtomicBool::new(false));
    let rss = watch_rss(nodes.iter().map(|n| n.pid()).collect(), rss_stop.clone());
    let publisher = connect(pub_node.mqtt, "pub");
    let start = Instant::now();
    let wrote = flood(publisher, "flood/t", FLOOD);
    // Not timed: a deadline far above any machine's need, only so that a loss cannot hang.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (0, Instant::now());
    while progress.load(Ordering::Relaxed) < FLOOD && Instant::now() < deadline {
        if reader.is_finished() {
            break;
        }
        // Nothing more for a long while once the publisher is done: what is missing is lost.
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    rss_stop.store(true, Ordering::Relaxed);
    let peaks = rss.join().unwrap();
    eprintln!(
        "{FLOOD} events written in {wrote:?}, {} received in {:?}; peak RSS {:?} MiB",
        seen.events,
        start.elapsed(),
        peaks.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
    let state = |n: &NodeProc| {
        format!(
            "dropped queue_full {} slow_consumer {}, slow consumers {}, stalls {}, links {:?}",
            n.metric("meshgate_events_dropped_total", &["reason=\"queue_full\""]),
            n.metric(
                "meshgate_events_dropped_total",
                &["reason=\"slow_consumer\""]
            ),
            n.metric("meshgate_slow_consumers_total", &[]),
            n.metric("meshgate_publisher_stalls_total", &[]),
            n.mesh_view().links,
        )
    };
    let states: Vec<String> = nodes.iter().map(|n| state(n)).collect();
    assert_eq!(
        seen.first_gap, None,
        "every event once, in order (expected, got); {states:#?}"
    );
    assert_eq!(seen.events, FLOOD, "every event arrives; {states:#?}");
    for (n, peak) in nodes.iter().zip(&peaks) {
        assert_nothing_dropped(n, "a node");
        assert!(
            *peak < RSS_LIMIT,
            "a node reached {} MiB, above the bound of {} MiB",
            peak >> 20,
            RSS_LIMIT >> 20
        );
    }
}

#[test]
fn a_fast_publisher_loses_nothing_to_a_fast_subscriber_on_one_node() {
    let n = NodeProc::start(&[]);
    let mut sub = connect(n.mqtt, "sub");
    subscribe(&mut sub, "flood/t");
    flood_through(&n, sub, &[&n]);
}

/// Two nodes linked over QUIC, `a` dialling `b`, with extra environment for both.
fn two_nodes(dir: &std::path::Path, env: &[(&str, &str)]) -> (NodeProc, NodeProc) {
    certs(dir, &["a", "b"]);
    let tls = dir.display().to_string();
    let (ma, mb) = (free_udp(), free_udp());
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("MESHGATE_MESH__GOSSIP_INTERVAL_SECS", "0.2"));
    let b = NodeProc::start_env(
        &["--name", "b", "--mesh", &mb.to_string(), "--tls-dir", &tls],
        &env,
    );
    let a = NodeProc::start_env(
        &[
            "--name",
            "a",
            "--mesh",
            &ma.to_string(),
            "--tls-dir",
            &tls,
            "--peer",
            &mb.to_string(),
        ],
        &env,
    );
    (a, b)
}

/// Waits until `at` routes to `node`'s interest.
fn wait_interest(at: &NodeProc, node: &str) {
    wait_until("interest to cross the link", WAIT, || {
        at.mesh_view()
            .registry
            .iter()
            .any(|e| e.node == node && e.reachable && e.interest > 0)
    });
}

#[test]
fn a_fast_publisher_loses_nothing_across_a_mesh_link() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), &[]);
    let mut sub = connect(b.mqtt, "sub");
    subscribe(&mut sub, "flood/t");
    wait_interest(&a, "b");
    flood_through(&a, sub, &[&a, &b]);
}

#[test]
fn a_stuck_subscriber_is_dropped_for_and_the_others_keep_receiving() {
    let n = NodeProc::start_env(&[], &[("MESHGATE_FLOW__STALL_MS", "200")]);
    // Connected, subscribed, never reads: once its socket buffers are full, its queue fills.
    let mut stuck = connect(n.mqtt, "stuck");
    subscribe(&mut stuck, "flood/t");
    let mut fast = connect(n.mqtt, "fast");
    subscribe(&mut fast, "flood/t");
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = receive(fast, FLOOD, progress.clone(), stop.clone());
    flood(connect(n.mqtt, "pub"), "flood/t", FLOOD);
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.load(Ordering::Relaxed) < FLOOD && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert_eq!(seen.first_gap, None, "the fast subscriber misses nothing");
    assert_eq!(seen.events, FLOOD);
    assert!(n.metric("meshgate_slow_consumers_total", &[]) >= 1.0);
    assert!(
        n.metric(
            "meshgate_events_dropped_total",
            &["reason=\"slow_consumer\""]
        ) > 0.0,
        "events for the stuck subscriber are dropped and counted"
    );
    assert!(n.metric("meshgate_publisher_stalls_total", &[]) >= 1.0);
    drop(stuck);
}

#[test]
fn a_stuck_subscriber_is_disconnected_under_the_disconnect_policy() {
    let n = NodeProc::start_env(
        &[],
        &[
            ("MESHGATE_FLOW__STALL_MS", "200"),
            ("MESHGATE_MQTT__SLOW_CONSUMER", "disconnect"),
        ],
    );
    let mut stuck = connect(n.mqtt, "stuck");
    subscribe(&mut stuck, "flood/t");
    let mut fast = connect(n.mqtt, "fast");
    subscribe(&mut fast, "flood/t");
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = receive(fast, FLOOD, progress.clone(), stop.clone());
    flood(connect(n.mqtt, "pub"), "flood/t", FLOOD);
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.load(Ordering::Relaxed) < FLOOD && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert_eq!(seen.first_gap, None);
    assert_eq!(seen.events, FLOOD);
    wait_until("the stuck subscriber disconnected", WAIT, || {
        n.log_text().contains("disconnecting a slow consumer")
    });
    assert!(n.metric("meshgate_slow_consumers_total", &[]) >= 1.0);
    // Its connection is closed: once the buffered events are read, the stream ends.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = [0u8; 64 * 1024];
    let closed = loop {
        match stuck.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "the node closed the stuck subscriber's connection");
}

/// SIGSTOP or SIGCONT to a process.
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_paused_node_is_cut_loose_and_its_link_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), &[("MESHGATE_FLOW__STALL_MS", "300")]);
    let mut remote = connect(b.mqtt, "remote");
    subscribe(&mut remote, "flood/t");
    wait_interest(&a, "b");
    let mut local = connect(a.mqtt, "local");
    subscribe(&mut local, "flood/t");
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = receive(local, FLOOD, progress.clone(), stop.clone());
    // b stops; a's publisher floods: the local subscriber gets everything, the link to b is
    // declared slow and its direct events are dropped and counted.
    signal(b.pid(), "-STOP");
    let paused = Instant::now();
    flood(connect(a.mqtt, "pub"), "flood/t", FLOOD);
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.load(Ordering::Relaxed) < FLOOD && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    let link = |n: &NodeProc| {
        n.mesh_view()
            .links
            .into_iter()
            .find(|l| l.peer == "b")
            .expect("a keeps its link to b")
    };
    let l = link(&a);
    // Guaranteed events for the paused node are stored, not dropped: acknowledged at a and
    // waiting in its queue for b.
    publish_qos1(a.mqtt, "pub-q1", "flood/t", 100);
    let waiting_for_b = |n: &NodeProc| {
        let (_, body) = common::http_get(n.http, "/v1/backlog").unwrap();
        let v: meshgate_api::BacklogView = serde_json::from_str(&body).unwrap();
        v.links
            .iter()
            .filter(|q| q.queue == "b")
            .map(|q| q.events)
            .sum::<u64>()
    };
    assert!(waiting_for_b(&a) >= 100, "stored for b while it is paused");
    signal(b.pid(), "-CONT");
    wait_until(
        "the guaranteed events reach b after the pause",
        WAIT,
        || waiting_for_b(&a) == 0,
    );
    eprintln!(
        "local subscriber got {} events; link to b: {l:?} after {:?} paused",
        seen.events,
        paused.elapsed()
    );
    assert_eq!(seen.first_gap, None, "the local subscriber misses nothing");
    assert_eq!(seen.events, FLOOD);
    assert!(l.slow >= 1, "the link was declared slow");
    assert!(l.dropped > 0, "direct events for the paused node dropped");
    assert!(a.metric("meshgate_link_dropped_total", &["peer=\"b\""]) > 0.0);
    // After SIGCONT traffic flows again: a fresh event reaches b's subscriber.
    drop(remote);
    let mut again = connect(b.mqtt, "again");
    subscribe(&mut again, "flood/again");
    wait_until("b's new interest at a", WAIT, || {
        a.mesh_view()
            .registry
            .iter()
            .any(|e| e.node == "b" && e.reachable && e.interest >= 1)
    });
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = receive(again, 1000, progress.clone(), stop.clone());
    let publisher = connect(a.mqtt, "pub2");
    let deadline = Instant::now() + WAIT;
    // Routes may need a moment after the pause; publish until the first one crosses.
    let mut publisher = Some(publisher);
    while progress.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        if let Some(p) = publisher.take() {
            flood(p, "flood/again", 1000);
        }
        std::thread::sleep(Duration::from_millis(100));
        if progress.load(Ordering::Relaxed) == 0 {
            publisher = Some(connect(a.mqtt, "pub2"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert!(
        seen.events > 0,
        "traffic crosses the link again after the pause"
    );
}

#[test]
fn a_rest_publish_to_a_full_queue_is_answered_503_with_retry_after() {
    // A subscriber that is never declared slow (a long stall time) with a tiny queue.
    let n = NodeProc::start_env(
        &[],
        &[
            ("MESHGATE_FLOW__STALL_MS", "600000"),
            ("MESHGATE_HTTP__PUBLISH_WAIT_MS", "200"),
            ("MESHGATE_MQTT__MAX_QUEUED_MESSAGES", "10"),
        ],
    );
    let mut stuck = connect(n.mqtt, "stuck");
    subscribe(&mut stuck, "rest/t");
    let body = vec![b'x'; 60 * 1024];
    let mut accepted = 0;
    let answer = loop {
        assert!(accepted < 5_000, "no 503 after {accepted} publishes");
        let (status, headers, text) =
            http_request_with_headers(n.http, "/v1/publish/rest/t", &body);
        if status == 503 {
            break (headers, text);
        }
        assert_eq!(status, 200, "{text}");
        accepted += 1;
    };
    let (headers, text) = answer;
    assert!(
        headers.to_ascii_lowercase().contains("retry-after:"),
        "{headers}"
    );
    assert!(text.contains("congested"), "{text}");
    eprintln!("503 after {accepted} accepted publishes");
    // Nothing was dropped: what was accepted is queued (or on its way), the rest refused.
    assert_eq!(
        n.metric("meshgate_events_dropped_total", &[]),
        0.0,
        "never a silent drop"
    );
    drop(stuck);
    let _ = http_request_with;
}

/// POST `body` to `path`; (status, raw headers, body).
fn http_request_with_headers(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_string();
    let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, headers.to_string(), rest.to_string())
}
