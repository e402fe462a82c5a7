//! QoS 1 (guaranteed delivery) workloads, MQTT 3.1.1 only.
//!
//! - `loadgen run --workload qos1`: one publisher, one subscriber, one topic. The publisher sends
//!   QoS 1 PUBLISH packets with packet ids and keeps at most `--inflight` of them unacknowledged
//!   (PUBACK), and besides at most `--window` messages beyond the subscriber (the same end-to-end
//!   flow control as the QoS 0 workloads, so that a broker's queue for a slow subscriber cannot
//!   overflow); the subscriber subscribes at QoS 1 with a clean or persistent session
//!   (`--session`) and PUBACKs every delivery in the batch it was read in. Reported: messages
//!   delivered per second end to end, PUBACKs per second, and the PUBACK latency (socket write of
//!   the PUBLISH to the read of its PUBACK) percentiles.
//! - `loadgen qos1-publish`: publishes a fixed number of QoS 1 messages with nobody necessarily
//!   subscribed and returns when every one is acknowledged (to fill a backlog).
//! - `loadgen qos1-subscribe`: creates a persistent QoS 1 subscription and leaves it (optionally
//!   after a probe from another node has crossed to it).
//! - `loadgen qos1-receive`: reconnects to that persistent session (retrying until the broker is
//!   up) and receives until every one of `--count` messages has arrived; prints wall-clock times.
//!
//! Payloads start with the message's sequence number (little endian), as in the QoS 0 workloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::mqtt::{Conn, Packet};
use crate::report::{Latency, Report};
use crate::throughput::PROBE_SEQ;
use crate::{Opts, Snapshot};

/// Topic of the `qos1` workload.
const TOPIC: &str = "bench/q1";

/// How long the window may stay full with no progress before it counts as a stall.
const STALL: Duration = Duration::from_millis(200);

/// How long to wait for the last PUBACKs after the run.
const ACK_GRACE: Duration = Duration::from_secs(10);

/// Bytes encoded per write by the publisher.
const WRITE_BATCH: usize = 64 * 1024;

/// A connection that read nothing for this long sends a PINGREQ.
const IDLE_PING: Duration = Duration::from_secs(20);

/// MQTT session of the QoS 1 subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Session {
    /// Clean session: nothing of it outlives the connection.
    Clean,
    /// Persistent session (clean session off): the broker keeps it, and its QoS 1 deliveries,
    /// across disconnections.
    Persistent,
}

struct Shared {
    /// Deliveries of workload messages (duplicates included).
    delivered: AtomicU64,
    /// Highest sequence number seen, plus one.
    next_seq: AtomicU64,
    /// Deliveries whose sequence number was below the highest seen (redeliveries).
    duplicates: AtomicU64,
    probes: AtomicU64,
    malformed: AtomicU64,
    progress: Notify,
    sent: AtomicU64,
    acked: AtomicU64,
    stalls: AtomicU64,
    stop: AtomicBool,
    /// Record PUBACK latencies (the measured window).
    measuring: AtomicBool,
    payload_len: usize,
}

impl Shared {
    fn new(payload_len: usize) -> Self {
        Self {
            delivered: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            progress: Notify::new(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            payload_len,
        }
    }
}

/// What the publisher is allowed to do.
struct PubLimits {
    /// Unacknowledged QoS 1 publishes, at most.
    inflight: u64,
    /// Messages beyond the subscriber's highest sequence number, at most (`None`: no subscriber).
    window: Option<u64>,
    /// Messages to publish in all (`None`: until stopped).
    count: Option<u64>,
}

/// What the publisher returns.
struct PubResult {
    conn: Conn,
    hist: Histogram<u64>,
    /// Publishes never acknowledged within [`ACK_GRACE`] after the end.
    unacked: u64,
    /// PUBACKs for packet ids not in flight.
    stray_acks: u64,
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Option<Latency> {
    if h.is_empty() {
        return None;
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Some(Latency {
        count: h.len(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1000.0,
        ..Latency::default()
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The QoS 1 publisher: packet ids 1..=65535 in turn, an id reused only once acknowledged.
async fn publisher(
    mut conn: Conn,
    shared: Arc<Shared>,
    limits: PubLimits,
    topic: Vec<u8>,
) -> anyhow::Result<PubResult> {
    let base = Instant::now();
    let mut hist = new_histogram();
    let mut payload = vec![0u8; shared.payload_len.max(8)];
    // Send time of each packet id in ns since `base`, plus one; 0 = free, MAX = not yet written.
    let mut slots = vec![0u64; 65_536];
    let mut pending: Vec<u16> = Vec::new();
    let per_message = payload.len() + topic.len() + 8;
    let batch = ((WRITE_BATCH / per_message) as u64).clamp(1, (limits.inflight / 4).max(1));
    let mut next_pkid: u16 = 1;
    let mut inflight = 0u64;
    let mut seq = 0u64;
    let mut acked = 0u64;
    let mut stray_acks = 0u64;
    let mut probes = 0u64;
    let mut last_sub = 0u64;
    let mut stopped_at: Option<Instant> = None;
    let mut last_read = Instant::now();
    loop {
        let done = shared.stop.load(Relaxed) || limits.count.is_some_and(|c| seq >= c);
        if done {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if inflight == 0 || since.elapsed() > ACK_GRACE {
                break;
            }
        }
        let mut room = if done {
            0
        } else {
            limits.inflight.saturating_sub(inflight)
        };
        let mut window_full = false;
        if let Some(w) = limits.window {
            let sub = shared.next_seq.load(Relaxed);
            if sub != last_sub {
                last_sub = sub;
                probes = 0;
            }
            let e2e = (w + probes).saturating_sub(seq.saturating_sub(sub));
            window_full = e2e == 0;
            room = room.min(e2e);
        }
        if let Some(c) = limits.count {
            room = room.min(c.saturating_sub(seq));
        }
        room = room.min(batch);
        let mut queued = 0u64;
        while queued < room && slots[usize::from(next_pkid)] == 0 {
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            conn.push_publish_qos1(&topic, next_pkid, &payload);
            slots[usize::from(next_pkid)] = u64::MAX;
            pending.push(next_pkid);
            next_pkid = if next_pkid == u16::MAX {
                1
            } else {
                next_pkid + 1
            };
            seq += 1;
            inflight += 1;
            queued += 1;
        }
        if queued > 0 {
            conn.flush().await?;
            let t = base.elapsed().as_nanos() as u64 + 1;
            for id in pending.drain(..) {
                slots[usize::from(id)] = t;
            }
            shared.sent.store(seq, Relaxed);
        }
        let measuring = shared.measuring.load(Relaxed);
        let mut got = 0u64;
        let mut on_packet = |p: &Packet<'_>| {
            if let Packet::PubAck(id) = p {
                let slot = &mut slots[usize::from(*id)];
                if *slot == 0 || *slot == u64::MAX {
                    stray_acks += 1;
                    return;
                }
                if measuring {
                    let now = base.elapsed().as_nanos() as u64 + 1;
                    let _ = hist.record(now.saturating_sub(*slot).max(1));
                }
                *slot = 0;
                got += 1;
            }
        };
        if queued > 0 {
            // Take the acknowledgements that are already there, without waiting.
            if let Ok(r) =
                tokio::time::timeout(Duration::ZERO, conn.read_packets(&mut on_packet)).await
            {
                r?;
            }
        } else {
            tokio::select! {
                r = conn.read_packets(&mut on_packet) => r?,
                () = shared.progress.notified(), if limits.window.is_some() => {}
                () = tokio::time::sleep(STALL) => {
                    if !done {
                        shared.stalls.fetch_add(1, Relaxed);
                        if window_full {
                            // As in the QoS 0 workloads: if the broker dropped the window's tail,
                            // a few more messages get the flow going again.
                            probes += batch.min(64);
                        }
                    }
                    if last_read.elapsed() > IDLE_PING {
                        conn.push_ping();
                        conn.flush().await?;
                        last_read = Instant::now();
                    }
                }
            }
        }
        if got > 0 {
            inflight -= got;
            acked += got;
            shared.acked.store(acked, Relaxed);
            last_read = Instant::now();
        }
    }
    Ok(PubResult {
        conn,
        hist,
        unacked: inflight,
        stray_acks,
    })
}

/// The QoS 1 subscriber: counts deliveries and PUBACKs each one in the batch it arrived in.
async fn subscriber(mut conn: Conn, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut next_seq = 0u64;
    let mut acks: Vec<u16> = Vec::new();
    loop {
        let mut count = 0u64;
        let mut dups = 0u64;
        let mut malformed = 0u64;
        let mut probes = 0u64;
        let mut unexpected = None;
        let read = tokio::time::timeout(
            IDLE_PING,
            conn.read_packets(|p| match p {
                Packet::Publish {
                    payload, qos, pkid, ..
                } => {
                    if *qos == 1 {
                        acks.push(*pkid);
                    }
                    match payload.first_chunk::<8>() {
                        Some(s) if payload.len() == shared.payload_len => {
                            let s = u64::from_le_bytes(*s);
                            if s == PROBE_SEQ {
                                probes += 1;
                            } else {
                                count += 1;
                                if s < next_seq {
                                    dups += 1;
                                } else {
                                    next_seq = s + 1;
                                }
                            }
                        }
                        _ => {
                            count += 1;
                            malformed += 1;
                        }
                    }
                }
                Packet::PingResp => {}
                other => unexpected = Some(format!("{other:?}")),
            }),
        )
        .await;
        match read {
            Ok(r) => r?,
            Err(_) => conn.push_ping(),
        }
        if let Some(u) = unexpected {
            bail!("subscriber: unexpected packet {u}");
        }
        for id in acks.drain(..) {
            conn.push_puback(id);
        }
        if conn.queued() > 0 {
            conn.flush().await?;
        }
        if probes > 0 {
            shared.probes.fetch_add(probes, Relaxed);
        }
        if malformed > 0 {
            shared.malformed.fetch_add(malformed, Relaxed);
        }
        if dups > 0 {
            shared.duplicates.fetch_add(dups, Relaxed);
        }
        if count > 0 {
            shared.delivered.fetch_add(count, Relaxed);
            shared.next_seq.store(next_seq, Relaxed);
            shared.progress.notify_one();
        }
    }
}

/// Publishes QoS 0 probes at `topic` every 5 ms until `arrived()` says one got through.
async fn probe_until(
    conn: &mut Conn,
    topic: &[u8],
    payload_len: usize,
    limit: Duration,
    what: &str,
    arrived: impl Fn() -> bool,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut payload = vec![0u8; payload_len.max(8)];
    payload[..8].copy_from_slice(&PROBE_SEQ.to_le_bytes());
    while !arrived() {
        if started.elapsed() > limit {
            bail!("no probe reached {what} within {} s", limit.as_secs_f64());
        }
        conn.push_publish(topic, &payload);
        conn.flush().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `loadgen run --workload qos1`.
pub async fn run(opts: &Opts) -> anyhow::Result<Report> {
    let pid = std::process::id();
    let shared = Arc::new(Shared::new(opts.payload));
    let clean = opts.session == Session::Clean;
    let sub_id = format!("lg-q1s-{pid}");
    let (mut sub, _) = Conn::connect_session(opts.sub_addr(), &sub_id, clean).await?;
    let granted = tokio::time::timeout(
        opts.subscribe_timeout(),
        sub.subscribe_qos(&[TOPIC.to_string()], 1, 1),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no SUBACK"))??;
    if granted != 1 {
        bail!("the broker granted QoS {granted}, not 1");
    }
    let sub_task = tokio::spawn(subscriber(sub, shared.clone()));

    let mut conn = Conn::connect(opts.pub_addr(), &format!("lg-q1p-{pid}")).await?;
    let ready_s = if opts.cross() {
        let s = shared.clone();
        Some(
            probe_until(
                &mut conn,
                TOPIC.as_bytes(),
                opts.payload,
                opts.ready_timeout(),
                &format!("the subscriber at {}", opts.sub_addr()),
                move || s.probes.load(Relaxed) > 0,
            )
            .await?,
        )
    } else {
        None
    };
    let publisher = tokio::spawn(publisher(
        conn,
        shared.clone(),
        PubLimits {
            inflight: opts.inflight.max(1),
            window: Some(opts.window.max(1)),
            count: None,
        },
        TOPIC.as_bytes().to_vec(),
    ));

    let delivered = |s: &Shared| s.delivered.load(Relaxed) - s.duplicates.load(Relaxed);
    tokio::time::sleep(opts.warmup()).await;
    shared.measuring.store(true, Relaxed);
    let acked_before = shared.acked.load(Relaxed);
    let before = Snapshot::take(opts, shared.sent.load(Relaxed), delivered(&shared))?;
    tokio::time::sleep(opts.duration()).await;
    let after = Snapshot::take(opts, shared.sent.load(Relaxed), delivered(&shared))?;
    let acked_after = shared.acked.load(Relaxed);
    shared.measuring.store(false, Relaxed);
    shared.stop.store(true, Relaxed);
    shared.progress.notify_one();

    let result = tokio::time::timeout(ACK_GRACE + Duration::from_secs(5), publisher)
        .await
        .map_err(|_| anyhow::anyhow!("publisher blocked after the run"))?
        .context("publisher task")?
        .context("publisher")?;
    let sent_total = shared.sent.load(Relaxed);
    // Wait for the last deliveries: all of them, or a second with nothing new (10 s at most).
    let started = Instant::now();
    let mut last = delivered(&shared);
    let mut last_change = Instant::now();
    while delivered(&shared) < sent_total
        && last_change.elapsed() < Duration::from_secs(1)
        && started.elapsed() < Duration::from_secs(10)
    {
        if sub_task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = delivered(&shared);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    if sub_task.is_finished() {
        let r = sub_task.await.context("subscriber task")?;
        r.context("subscriber connection ended during the run")?;
        bail!("subscriber ended");
    }
    sub_task.abort();
    drop(result.conn);
    if !clean {
        // Remove the persistent session, so that it does not keep collecting in later runs.
        if let Ok((c, _)) = Conn::connect_session(opts.sub_addr(), &sub_id, true).await {
            let _ = c.disconnect().await;
        }
    }
    let delivered_total = delivered(&shared);

    let mut report = after.report_since(&before, opts, "qos1");
    report.subscribers = 1;
    report.subscriptions = 1;
    report.sent_total = sent_total;
    report.delivered_total = delivered_total;
    report.lost = sent_total.saturating_sub(delivered_total);
    report.stalls = shared.stalls.load(Relaxed);
    report.malformed = shared.malformed.load(Relaxed);
    report.window = opts.window;
    report.ready_s = ready_s;
    report.qos = Some(1);
    report.inflight = Some(opts.inflight);
    report.session = Some(opts.session);
    let acked = acked_after - acked_before;
    report.acked = Some(acked);
    report.acked_per_s = Some(acked as f64 / report.seconds);
    report.duplicates = shared.duplicates.load(Relaxed);
    report.unacked = result.unacked;
    report.puback = percentiles(&result.hist);
    let mut notes = Vec::new();
    if result.unacked > 0 {
        notes.push(format!(
            "{} publishes never acknowledged within {} s",
            result.unacked,
            ACK_GRACE.as_secs()
        ));
    }
    if result.stray_acks > 0 {
        notes.push(format!(
            "{} PUBACKs for ids not in flight",
            result.stray_acks
        ));
    }
    report.note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(report)
}

/// Options of `loadgen qos1-publish`.
#[derive(Parser, Debug)]
pub struct PublishOpts {
    /// Broker address, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Messages to publish.
    #[arg(long)]
    count: u64,
    /// Payload size in bytes (at least 8).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Unacknowledged publishes, at most.
    #[arg(long, default_value_t = 256)]
    inflight: u64,
    /// Topic.
    #[arg(long, default_value = "bench/drain")]
    topic: String,
    /// Name in the output.
    #[arg(long, default_value = "broker")]
    label: String,
}

/// Output of `loadgen qos1-publish`.
#[derive(Serialize)]
pub struct PublishReport {
    label: String,
    count: u64,
    payload_bytes: usize,
    inflight: u64,
    acked: u64,
    unacked: u64,
    seconds: f64,
    acked_per_s: f64,
    puback: Option<Latency>,
}

/// `loadgen qos1-publish`: `--count` QoS 1 messages, returns when all are acknowledged.
pub async fn publish(opts: &PublishOpts) -> anyhow::Result<PublishReport> {
    if opts.payload < 8 {
        bail!("--payload must be at least 8 bytes");
    }
    let shared = Arc::new(Shared::new(opts.payload));
    shared.measuring.store(true, Relaxed);
    let conn = Conn::connect(&opts.addr, &format!("lg-q1f-{}", std::process::id())).await?;
    let started = Instant::now();
    let result = publisher(
        conn,
        shared.clone(),
        PubLimits {
            inflight: opts.inflight.max(1),
            window: None,
            count: Some(opts.count),
        },
        opts.topic.as_bytes().to_vec(),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let acked = shared.acked.load(Relaxed);
    let _ = result.conn.disconnect().await;
    if result.unacked > 0 || acked < opts.count {
        bail!(
            "{} of {} publishes acknowledged ({} still unacknowledged after {} s)",
            acked,
            opts.count,
            result.unacked,
            ACK_GRACE.as_secs()
        );
    }
    Ok(PublishReport {
        label: opts.label.clone(),
        count: opts.count,
        payload_bytes: opts.payload,
        inflight: opts.inflight,
        acked,
        unacked: result.unacked,
        seconds,
        acked_per_s: acked as f64 / seconds,
        puback: percentiles(&result.hist),
    })
}

/// Options of `loadgen qos1-subscribe`.
#[derive(Parser, Debug)]
pub struct SubscribeOpts {
    /// Broker address of the subscriber, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Client id of the persistent session.
    #[arg(long)]
    client_id: String,
    /// Topic filter.
    #[arg(long, default_value = "bench/drain")]
    topic: String,
    /// Before leaving, publish QoS 0 probes here (another node) until one arrives.
    #[arg(long)]
    probe_from: Option<String>,
    /// Seconds allowed for the probe.
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
}

/// `loadgen qos1-subscribe`: a persistent QoS 1 subscription, left in place; prints the seconds
/// the probe took (0 without `--probe-from`).
pub async fn subscribe(opts: &SubscribeOpts) -> anyhow::Result<f64> {
    let (mut sub, _) = Conn::connect_session(&opts.addr, &opts.client_id, false).await?;
    let granted = sub
        .subscribe_qos(std::slice::from_ref(&opts.topic), 1, 1)
        .await?;
    if granted != 1 {
        bail!("the broker granted QoS {granted}, not 1");
    }
    let mut seconds = 0.0;
    if let Some(from) = &opts.probe_from {
        let mut publisher =
            Conn::connect(from, &format!("lg-q1probe-{}", std::process::id())).await?;
        let seen = Arc::new(AtomicBool::new(false));
        let flag = seen.clone();
        let reader = tokio::spawn(async move {
            loop {
                let mut any = false;
                sub.read_packets(|p| any |= matches!(p, Packet::Publish { .. }))
                    .await?;
                if any {
                    flag.store(true, Relaxed);
                    return anyhow::Ok(sub);
                }
            }
        });
        let topic = opts.topic.trim_end_matches(['#', '/']).to_string();
        let topic = if topic.is_empty() {
            "probe".into()
        } else {
            topic
        };
        let probed = probe_until(
            &mut publisher,
            topic.as_bytes(),
            8,
            Duration::from_secs_f64(opts.timeout.max(0.001)),
            &format!("the subscriber at {}", opts.addr),
            || seen.load(Relaxed),
        )
        .await;
        let _ = publisher.disconnect().await;
        seconds = probed?;
        sub = reader.await.context("reader")??;
    }
    sub.disconnect().await?;
    Ok(seconds)
}

/// Options of `loadgen qos1-receive`.
#[derive(Parser, Debug)]
pub struct ReceiveOpts {
    /// Broker address, HOST:PORT (connection retried until it answers).
    #[arg(long)]
    addr: String,
    /// Client id of the persistent session made by `qos1-subscribe`.
    #[arg(long)]
    client_id: String,
    /// Messages expected: sequence numbers 0..count.
    #[arg(long)]
    count: u64,
    /// Seconds to keep retrying the connection.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Seconds allowed from the connection to the last message.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Print progress to stderr every this many seconds (0: never).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
}

/// Output of `loadgen qos1-receive` (times are Unix seconds).
#[derive(Serialize)]
pub struct ReceiveReport {
    count: u64,
    distinct: u64,
    received: u64,
    duplicates: u64,
    session_present: bool,
    complete: bool,
    connected_unix: f64,
    first_unix: Option<f64>,
    all_unix: Option<f64>,
    /// From the connection to the last new message.
    seconds: f64,
}

/// `loadgen qos1-receive`.
pub async fn receive(opts: &ReceiveOpts) -> anyhow::Result<ReceiveReport> {
    let started = Instant::now();
    let (mut conn, present) = loop {
        match Conn::connect_session(&opts.addr, &opts.client_id, false).await {
            Ok(c) => break c,
            Err(e) if started.elapsed().as_secs_f64() > opts.connect_timeout => {
                return Err(e).context("connecting to the persistent session");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let connected = Instant::now();
    let connected_unix = unix_now();
    let n = opts.count;
    let mut seen = vec![0u64; n.div_ceil(64) as usize];
    let mut distinct = 0u64;
    let mut received = 0u64;
    let mut first_unix = None;
    let mut all_unix = None;
    let mut last_new = connected;
    let mut acks: Vec<u16> = Vec::new();
    let mut next_progress = Instant::now();
    let limit = Duration::from_secs_f64(opts.timeout.max(0.001));
    while distinct < n && connected.elapsed() < limit {
        let mut unexpected = None;
        let mut new = 0u64;
        let mut got = 0u64;
        match tokio::time::timeout(
            Duration::from_secs(1),
            conn.read_packets(|p| match p {
                Packet::Publish {
                    payload, qos, pkid, ..
                } => {
                    if *qos == 1 {
                        acks.push(*pkid);
                    }
                    let Some(s) = payload.first_chunk::<8>().map(|s| u64::from_le_bytes(*s)) else {
                        return;
                    };
                    if s >= n {
                        return; // probes
                    }
                    got += 1;
                    let (w, b) = ((s / 64) as usize, s % 64);
                    if seen[w] & (1 << b) == 0 {
                        seen[w] |= 1 << b;
                        new += 1;
                    }
                }
                Packet::PingResp => {}
                other => unexpected = Some(format!("{other:?}")),
            }),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => conn.push_ping(),
        }
        if let Some(u) = unexpected {
            bail!("unexpected packet {u}");
        }
        for id in acks.drain(..) {
            conn.push_puback(id);
        }
        if conn.queued() > 0 {
            conn.flush().await?;
        }
        received += got;
        if new > 0 {
            if first_unix.is_none() {
                first_unix = Some(unix_now());
            }
            distinct += new;
            last_new = Instant::now();
            if distinct >= n {
                all_unix = Some(unix_now());
            }
        }
        if opts.progress > 0.0 && Instant::now() >= next_progress {
            eprintln!(
                "qos1-receive: {distinct} of {n} after {:.1} s",
                connected.elapsed().as_secs_f64()
            );
            next_progress = Instant::now() + Duration::from_secs_f64(opts.progress);
        }
    }
    let complete = distinct >= n;
    // Leave the session with nothing unacknowledged.
    let _ = conn.disconnect().await;
    Ok(ReceiveReport {
        count: n,
        distinct,
        received,
        duplicates: received - distinct,
        session_present: present,
        complete,
        connected_unix,
        first_unix,
        all_unix,
        seconds: (last_new - connected).as_secs_f64(),
    })
}
