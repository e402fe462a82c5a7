//! Closed-loop throughput workloads (`one-to-one`, `fan-out`, `many-subs`): one publisher pushes
//! QoS 0 messages as fast as the slowest subscriber takes them, and the subscribers count what
//! arrives.
//!
//! Flow control is end to end: each payload starts with a sequence number, each subscriber
//! publishes the highest one it has seen, and the publisher keeps at most `window` messages
//! beyond the slowest subscriber. Without it a QoS 0 publisher only measures how fast the broker
//! can accept (and drop) messages. A dropped message does not leak window (the highest sequence
//! seen moves past gaps); if the window stays full with no progress for [`STALL`], the publisher
//! counts a stall and sends a few more messages as probes: if the broker dropped the tail of the
//! window, the probes get through and restart the flow; if it is only slow, the probes add
//! little to its backlog.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::client::Conn;
use crate::report::Report;
use crate::{Opts, Snapshot};

/// How long a full window may see no progress before it is reset.
const STALL: Duration = Duration::from_millis(200);

/// How long the publisher may stay blocked in a write after the run ends.
const PUBLISHER_GRACE: Duration = Duration::from_secs(5);

/// Bytes encoded per write by the publisher.
const WRITE_BATCH: usize = 64 * 1024;

/// Sequence number of readiness probes (publisher and subscribers on different brokers):
/// subscribers count them apart and never as deliveries.
pub const PROBE_SEQ: u64 = u64::MAX;

/// How often a readiness probe is sent until one arrives.
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// Where the publisher sends each message.
pub enum Topics {
    /// Always the same topic.
    Fixed(Vec<u8>),
    /// `prefix` followed by a uniformly random number below `count`.
    Random {
        /// Topic up to the number, separator included.
        prefix: Vec<u8>,
        /// How many distinct topics.
        count: u64,
    },
}

impl Topics {
    fn next<'a>(&'a self, rng: &mut SmallRng, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match self {
            Topics::Fixed(topic) => topic,
            Topics::Random { prefix, count } => {
                buf.clear();
                buf.extend_from_slice(prefix);
                // Writing to a Vec cannot fail.
                let _ = write!(buf, "{}", rng.random_range(0..*count));
                buf
            }
        }
    }

    /// A topic that reaches a subscription (for readiness probes).
    fn probe(&self) -> Vec<u8> {
        match self {
            Topics::Fixed(topic) => topic.clone(),
            Topics::Random { prefix, .. } => [prefix.as_slice(), b"0"].concat(),
        }
    }

    fn max_len(&self) -> usize {
        match self {
            Topics::Fixed(topic) => topic.len(),
            Topics::Random { prefix, .. } => prefix.len() + 20,
        }
    }
}

/// Per-subscriber counters, written by its task only.
#[derive(Default)]
struct SubStats {
    delivered: AtomicU64,
    /// Highest sequence number seen, plus one.
    next_seq: AtomicU64,
    /// Readiness probes seen.
    probes: AtomicU64,
}

struct Shared {
    subs: Vec<SubStats>,
    progress: Notify,
    sent: AtomicU64,
    stalls: AtomicU64,
    stop: AtomicBool,
    /// Payload size every message must arrive with.
    payload_len: usize,
    /// Messages that arrived with another size.
    malformed: AtomicU64,
}

impl Shared {
    fn delivered(&self) -> u64 {
        self.subs.iter().map(|s| s.delivered.load(Relaxed)).sum()
    }
}

/// Runs one throughput workload: `filters[i]` are the subscriptions of subscriber connection `i`.
pub async fn run(
    opts: &Opts,
    workload: &str,
    filters: Vec<Vec<String>>,
    topics: Topics,
) -> anyhow::Result<Report> {
    let pid = std::process::id();
    let shared = Arc::new(Shared {
        subs: filters.iter().map(|_| SubStats::default()).collect(),
        progress: Notify::new(),
        sent: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        payload_len: opts.payload,
        malformed: AtomicU64::new(0),
    });

    let subscribe_started = Instant::now();
    let mut subscribers = Vec::new();
    for (i, topics) in filters.iter().enumerate() {
        let mut conn =
            Conn::connect(opts.proto, opts.sub_addr(), &format!("lg-s{i}-{pid}")).await?;
        let limit = opts.subscribe_timeout();
        tokio::time::timeout(limit, conn.subscribe(topics, opts.sub_batch))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "subscribing {} filters did not finish within {} s",
                    topics.len(),
                    limit.as_secs()
                )
            })?
            .context("subscribe")?;
        subscribers.push(tokio::spawn(subscriber(conn, i, shared.clone())));
    }
    let subscribe_s = subscribe_started.elapsed().as_secs_f64();

    let mut conn = Conn::connect(opts.proto, opts.pub_addr(), &format!("lg-p-{pid}")).await?;
    // Across brokers the subscriptions reach the publisher's broker some time after they were
    // acknowledged: wait until a probe gets through to every subscriber before loading.
    let ready_s = if opts.cross() {
        Some(wait_for_probes(&mut conn, &shared, &topics, opts).await?)
    } else {
        None
    };
    let publisher = tokio::spawn(publisher(
        conn,
        shared.clone(),
        opts.window,
        opts.payload,
        topics,
    ));

    let snap = |s: &Shared| Snapshot::take(opts, s.sent.load(Relaxed), s.delivered());
    tokio::time::sleep(opts.warmup()).await;
    let before = snap(&shared)?;
    tokio::time::sleep(opts.duration()).await;
    let after = snap(&shared)?;
    shared.stop.store(true, Relaxed);
    shared.progress.notify_one();
    // Keep the publisher's socket open until the drain is over: closing it early could reset
    // the connection before the broker has read everything.
    // A broker that stops reading leaves the publisher blocked in a write: give up on it after
    // a few seconds and report what was delivered, with a note.
    let mut note = None;
    let mut publisher = publisher;
    let publisher_conn = match tokio::time::timeout(PUBLISHER_GRACE, &mut publisher).await {
        Ok(joined) => Some(joined.context("publisher task")?.context("publisher")?),
        Err(_) => {
            publisher.abort();
            note = Some(format!(
                "publisher blocked: the broker read nothing from it for {} s",
                PUBLISHER_GRACE.as_secs()
            ));
            None
        }
    };

    let sent_total = shared.sent.load(Relaxed);
    let expected = sent_total * filters.len() as u64;
    let delivered_total = drain(&shared, &subscribers, expected).await?;
    for task in &subscribers {
        task.abort();
    }
    drop(publisher_conn);

    let mut report = after.report_since(&before, opts, workload);
    report.subscribers = filters.len();
    report.subscriptions = filters.iter().map(Vec::len).sum();
    report.sent_total = sent_total;
    report.delivered_total = delivered_total;
    report.lost = expected.saturating_sub(delivered_total);
    report.stalls = shared.stalls.load(Relaxed);
    report.malformed = shared.malformed.load(Relaxed);
    report.note = note;
    report.window = opts.window;
    report.subscribe_s = Some(subscribe_s);
    report.ready_s = ready_s;
    Ok(report)
}

/// Publishes a probe every [`PROBE_EVERY`] until every subscriber has seen one; returns the
/// seconds that took.
async fn wait_for_probes(
    conn: &mut Conn,
    shared: &Shared,
    topics: &Topics,
    opts: &Opts,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let topic = topics.probe();
    let mut payload = vec![0u8; opts.payload.max(8)];
    payload[..8].copy_from_slice(&PROBE_SEQ.to_le_bytes());
    while !shared.subs.iter().all(|s| s.probes.load(Relaxed) > 0) {
        if started.elapsed() > opts.ready_timeout() {
            bail!(
                "no probe published at {} reached the subscribers at {} within {} s",
                opts.pub_addr(),
                opts.sub_addr(),
                opts.ready_timeout
            );
        }
        conn.push_publish(&topic, &payload);
        conn.flush().await?;
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until every copy has arrived, or nothing has arrived for a second (ten seconds at
/// most); fails if a
/// subscriber connection died.
async fn drain(
    shared: &Shared,
    subscribers: &[JoinHandle<anyhow::Result<()>>],
    expected: u64,
) -> anyhow::Result<u64> {
    let mut last = shared.delivered();
    let started = Instant::now();
    let mut last_change = started;
    loop {
        for task in subscribers {
            if task.is_finished() {
                bail!("a subscriber connection ended during the run (see the broker's log)");
            }
        }
        let now = shared.delivered();
        if now >= expected
            || last_change.elapsed() > Duration::from_secs(1)
            || started.elapsed() > Duration::from_secs(10)
        {
            return Ok(now);
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn subscriber(mut conn: Conn, index: usize, shared: Arc<Shared>) -> anyhow::Result<()> {
    let stats = &shared.subs[index];
    let mut next_seq = 0u64;
    loop {
        let mut count = 0u64;
        let mut malformed = 0u64;
        let mut probes = 0u64;
        conn.read(|_topic, payload| match payload.first_chunk::<8>() {
            Some(seq) if payload.len() == shared.payload_len => {
                let seq = u64::from_le_bytes(*seq);
                if seq == PROBE_SEQ {
                    probes += 1;
                } else {
                    count += 1;
                    next_seq = next_seq.max(seq + 1);
                }
            }
            _ => {
                count += 1;
                malformed += 1;
            }
        })
        .await?;
        if probes > 0 {
            stats.probes.fetch_add(probes, Relaxed);
        }
        if malformed > 0 {
            shared.malformed.fetch_add(malformed, Relaxed);
        }
        if count > 0 {
            stats.delivered.fetch_add(count, Relaxed);
            stats.next_seq.store(next_seq, Relaxed);
            shared.progress.notify_one();
        }
    }
}

async fn publisher(
    mut conn: Conn,
    shared: Arc<Shared>,
    window: u64,
    payload_len: usize,
    topics: Topics,
) -> anyhow::Result<Conn> {
    let mut payload = vec![0u8; payload_len.max(8)];
    let mut topic_buf = Vec::with_capacity(64);
    let mut rng = SmallRng::seed_from_u64(0x6d65_7368);
    let per_message = payload.len() + topics.max_len() + 16;
    let batch = ((WRITE_BATCH / per_message) as u64).clamp(1, (window / 4).max(1));
    let mut seq = 0u64;
    // Extra messages allowed beyond the window after stalls; reset by any progress.
    let mut probes = 0u64;
    let mut last_acked = 0u64;
    while !shared.stop.load(Relaxed) {
        let acked = shared
            .subs
            .iter()
            .map(|s| s.next_seq.load(Relaxed))
            .min()
            .unwrap_or(seq);
        if acked != last_acked {
            last_acked = acked;
            probes = 0;
        }
        let in_flight = seq.saturating_sub(acked);
        let limit = window + probes;
        if in_flight >= limit {
            let waited = tokio::time::timeout(STALL, shared.progress.notified()).await;
            if waited.is_err() && !shared.stop.load(Relaxed) {
                shared.stalls.fetch_add(1, Relaxed);
                probes += batch.min(64);
            }
            continue;
        }
        for _ in 0..batch.min(limit - in_flight) {
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            conn.push_publish(topics.next(&mut rng, &mut topic_buf), &payload);
            seq += 1;
        }
        conn.flush().await?;
        shared.sent.store(seq, Relaxed);
    }
    Ok(conn)
}
