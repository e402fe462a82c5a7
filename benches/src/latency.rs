//! Open-loop latency workload: one publisher sends at a fixed rate on its own thread, whatever
//! the broker does, with send timestamps in the payload; one subscriber records, per message, how
//! long it took from the publisher's socket through the broker to the subscriber.
//!
//! With `echo` (the `rtt` workload) the path is a round trip: the publisher's broker, an echo
//! client on the subscribers' broker that republishes every message on a second topic, and
//! back to a recording subscriber on the publisher's broker. When the two brokers differ, a
//! probe must make the whole trip before the paced publisher starts.
//!
//! The publisher paces itself with `thread::sleep` (a tokio timer is 1 ms coarse) and, when it
//! falls behind its schedule, sends what is due in one write instead of skipping, so a slow
//! broker cannot lower the offered rate.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;

use crate::client::{self, Conn, Proto};
use crate::report::{Latency, Report};
use crate::throughput::PROBE_SEQ;
use crate::{Opts, Snapshot};

/// Payload header: sequence number, scheduled send time, actual send time (ns since anchor).
const HEADER: usize = 24;

struct Recorder {
    from_send: Histogram<u64>,
    from_schedule: Histogram<u64>,
    received: u64,
}

/// Runs the latency workload at `rate` messages per second; with `echo`, round trips.
pub async fn run(opts: &Opts, rate: u64, echo: bool) -> anyhow::Result<Report> {
    if opts.payload < HEADER {
        bail!("latency needs a payload of at least {HEADER} bytes");
    }
    if rate == 0 {
        bail!("rate must be positive");
    }
    let pid = std::process::id();
    let topic = opts.proto.topic(&["bench", "lat"]);
    let back = opts.proto.topic(&["bench", "lat-back"]);
    let anchor = Instant::now();
    let record_from_ns = Arc::new(AtomicU64::new(u64::MAX));

    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3);
    let recorder = Arc::new(Mutex::new(Recorder {
        from_send: new_histogram()?,
        from_schedule: new_histogram()?,
        received: 0,
    }));
    // Without echo the recorder subscribes to `topic` where the subscribers go; with echo it
    // subscribes to `back` where the publisher is, and the echo client sits in between.
    let (rec_addr, rec_topic) = if echo {
        (opts.pub_addr(), &back)
    } else {
        (opts.sub_addr(), &topic)
    };
    let mut sub = Conn::connect(opts.proto, rec_addr, &format!("lg-ls-{pid}")).await?;
    sub.subscribe(std::slice::from_ref(rec_topic), 1)
        .await
        .context("subscribe")?;
    let echo_task = if echo {
        let mut conn = Conn::connect(opts.proto, opts.sub_addr(), &format!("lg-le-{pid}")).await?;
        conn.subscribe(std::slice::from_ref(&topic), 1)
            .await
            .context("subscribe (echo)")?;
        Some(tokio::spawn(echoer(conn, back.clone().into_bytes())))
    } else {
        None
    };
    let mut publisher = Conn::connect(opts.proto, opts.pub_addr(), &format!("lg-lp-{pid}")).await?;
    let ready_s = if opts.cross() || echo {
        Some(wait_for_probe(&mut publisher, &mut sub, topic.as_bytes(), opts).await?)
    } else {
        None
    };
    let sub_task = tokio::spawn(subscriber(
        sub,
        anchor,
        record_from_ns.clone(),
        recorder.clone(),
    ));

    let stream = publisher.into_std()?;
    // A broker that stops reading must fail the run, not hang it.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let total = rate * (opts.warmup() + opts.duration()).as_millis() as u64 / 1000;
    let (proto, payload) = (opts.proto, opts.payload);
    let paced = tokio::task::spawn_blocking(move || {
        paced_publisher(
            stream,
            proto,
            topic.as_bytes(),
            payload,
            rate,
            total,
            anchor,
        )
    });

    tokio::time::sleep(opts.warmup()).await;
    let before = Snapshot::take(opts, 0, 0)?;
    record_from_ns.store(nanos_since(anchor), Relaxed);
    tokio::time::sleep(opts.duration()).await;
    let after = Snapshot::take(opts, 0, 0)?;
    let (sent_total, max_late) = paced.await.context("publisher thread")??;

    // Drain: wait for stragglers, at most a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    while lock(&recorder).received < sent_total && Instant::now() < deadline {
        if sub_task.is_finished() {
            bail!("the subscriber connection ended during the run (see the broker's log)");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sub_task.abort();
    if let Some(task) = echo_task {
        if task.is_finished() {
            bail!("the echo connection ended during the run (see the broker's log)");
        }
        task.abort();
    }

    let rec = lock(&recorder);
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut report = after.report_since(&before, opts, if echo { "rtt" } else { "latency" });
    report.ready_s = ready_s;
    let in_window = rec.from_send.len();
    report.sent = in_window.min(sent_total);
    report.sent_per_s = rate as f64;
    report.delivered = in_window;
    report.delivered_per_s = in_window as f64 / report.seconds;
    report.subscribers = 1;
    report.subscriptions = 1;
    report.sent_total = sent_total;
    report.delivered_total = rec.received;
    report.lost = sent_total.saturating_sub(rec.received);
    report.rate = Some(rate);
    report.delivered_per_broker_cpu_s = report.broker_cpu_s.map(|cpu| in_window as f64 / cpu);
    report.latency = Some(Latency {
        count: in_window,
        p50_us: us(&rec.from_send, 0.5),
        p99_us: us(&rec.from_send, 0.99),
        p999_us: us(&rec.from_send, 0.999),
        max_us: rec.from_send.max() as f64 / 1000.0,
        p99_from_schedule_us: us(&rec.from_schedule, 0.99),
        p999_from_schedule_us: us(&rec.from_schedule, 0.999),
        sender_max_late_us: max_late.as_nanos() as f64 / 1000.0,
    });
    Ok(report)
}

fn lock(recorder: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    // A poisoned lock only means a recording panicked; the counts are still usable.
    recorder.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes a probe (sequence [`PROBE_SEQ`]) every 5 ms until one arrives at `sub`; returns
/// the seconds that took. Probes still in flight afterwards are skipped by the recorder.
async fn wait_for_probe(
    publisher: &mut Conn,
    sub: &mut Conn,
    topic: &[u8],
    opts: &Opts,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut payload = vec![0u8; opts.payload];
    payload[..8].copy_from_slice(&PROBE_SEQ.to_le_bytes());
    loop {
        if started.elapsed() > opts.ready_timeout() {
            bail!(
                "no probe published at {} came back within {} s",
                opts.pub_addr(),
                opts.ready_timeout
            );
        }
        publisher.push_publish(topic, &payload);
        publisher.flush().await?;
        let mut seen = false;
        if let Ok(read) = tokio::time::timeout(
            Duration::from_millis(5),
            sub.read(|_, p| seen |= p.first_chunk::<8>() == Some(&PROBE_SEQ.to_le_bytes())),
        )
        .await
        {
            read?;
        }
        if seen {
            return Ok(started.elapsed().as_secs_f64());
        }
    }
}

/// Republishes every message it receives on `back`, one write per read.
async fn echoer(mut conn: Conn, back: Vec<u8>) -> anyhow::Result<()> {
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    loop {
        conn.read(|_, p| payloads.push(p.to_vec())).await?;
        if payloads.is_empty() {
            continue;
        }
        for p in payloads.drain(..) {
            conn.push_publish(&back, &p);
        }
        conn.flush().await?;
    }
}

fn nanos_since(anchor: Instant) -> u64 {
    anchor.elapsed().as_nanos() as u64
}

async fn subscriber(
    mut conn: Conn,
    anchor: Instant,
    record_from_ns: Arc<AtomicU64>,
    recorder: Arc<Mutex<Recorder>>,
) -> anyhow::Result<()> {
    let mut samples: Vec<[u64; 3]> = Vec::new();
    loop {
        conn.read(|_topic, payload| {
            let field = |i: usize| {
                payload
                    .get(i * 8..i * 8 + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            };
            if field(0) == Some(PROBE_SEQ) {
                return;
            }
            if let (Some(scheduled), Some(sent)) = (field(1), field(2)) {
                samples.push([scheduled, sent, nanos_since(anchor)]);
            }
        })
        .await?;
        let from = record_from_ns.load(Relaxed);
        let mut rec = lock(&recorder);
        for [scheduled, sent, now] in samples.drain(..) {
            rec.received += 1;
            if scheduled < from {
                continue;
            }
            rec.from_send
                .saturating_record(now.saturating_sub(sent).max(1));
            rec.from_schedule
                .saturating_record(now.saturating_sub(scheduled).max(1));
        }
    }
}

/// Publishes `total` messages at `rate` per second on a blocking socket; returns how many it
/// sent and how far it fell behind its schedule at worst.
fn paced_publisher(
    mut stream: std::net::TcpStream,
    proto: Proto,
    topic: &[u8],
    payload_len: usize,
    rate: u64,
    total: u64,
    anchor: Instant,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let start_ns = nanos_since(anchor);
    let mut payload = vec![0u8; payload_len];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut max_late = Duration::ZERO;
    let mut seq = 0u64;
    let scheduled = |seq: u64| Duration::from_nanos(seq * 1_000_000_000 / rate);
    while seq < total {
        let due = scheduled(seq);
        let elapsed = start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
        let now = start.elapsed();
        max_late = max_late.max(now.saturating_sub(due));
        // Everything due by now goes out in one write.
        while seq < total && scheduled(seq) <= now {
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            let scheduled_ns = start_ns + scheduled(seq).as_nanos() as u64;
            payload[8..16].copy_from_slice(&scheduled_ns.to_le_bytes());
            payload[16..24].copy_from_slice(&nanos_since(anchor).to_le_bytes());
            client::encode_publish(proto, &mut out, topic, &payload);
            seq += 1;
        }
        stream.write_all(&out).context("write to broker")?;
        out.clear();
    }
    stream.flush()?;
    Ok((seq, max_late))
}
