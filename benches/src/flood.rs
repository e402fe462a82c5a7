//! `loadgen flood`: the open-loop workload. One publisher writes `--count` QoS 0 messages as
//! fast as the socket takes them (no window, no pacing: only TCP and the broker slow it down),
//! the subscribers count what arrives and check its order. A broker either slows the publisher
//! (flow control) or drops what it cannot deliver: the report gives the delivered share of the
//! run next to the rate, so a faster number with lost messages is never mistaken for a faster
//! broker.
//!
//! The rate is the messages each subscriber received per second from the first publish to the
//! last receive (for fan-out, per subscriber: the publish rate the broker sustained while
//! delivering every copy).
//!
//! `loadgen flood-table` turns the JSON lines of many runs into one markdown table per
//! workload: every run listed, the median rate and the delivered share per broker, and the
//! same-run ratio of each broker's median to the baseline's.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::client::{Conn, Proto, encode_publish};

/// Sequence number of the readiness probes.
const PROBE: u64 = u64::MAX;

/// Options of `loadgen flood`.
#[derive(Parser, Debug)]
pub struct FloodOpts {
    /// Protocol to speak.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Where the publisher connects.
    #[arg(long)]
    pub_addr: String,
    /// Where the subscribers connect (default: `--pub-addr`).
    #[arg(long)]
    sub_addr: Option<String>,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Payload bytes (at least 8: the sequence number).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Subscriber connections (each gets every message).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Name of the broker or setup, copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Name of the workload, copied into the report.
    #[arg(long, default_value = "flood")]
    workload: String,
    /// Seconds without a new delivery after the publisher finished before the run ends with
    /// what arrived.
    #[arg(long, default_value_t = 3.0)]
    idle: f64,
    /// Seconds allowed for a probe to cross from the publisher to every subscriber.
    #[arg(long, default_value_t = 15.0)]
    ready_timeout: f64,
}

/// One run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FloodReport {
    /// The broker or setup.
    pub label: String,
    /// The workload.
    pub workload: String,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Messages published.
    pub published: u64,
    /// Copies received, all subscribers together.
    pub delivered: u64,
    /// `delivered / (published * subscribers)`.
    pub delivered_share: f64,
    /// Copies that arrived out of publish order (or twice).
    pub out_of_order: u64,
    /// Seconds the publisher took to write everything.
    pub write_s: f64,
    /// Seconds from the first publish to the last receive.
    pub seconds: f64,
    /// Messages per second each subscriber received: `delivered / subscribers / seconds`.
    pub rate: f64,
}

/// What one subscriber saw.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    out_of_order: AtomicU64,
    probes: AtomicU64,
    /// Nanoseconds since the run's start of the last delivery.
    last_ns: AtomicU64,
}

/// Runs one flood and prints its JSON line.
pub async fn run(opts: FloodOpts) -> anyhow::Result<()> {
    let report = flood(&opts).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn flood(opts: &FloodOpts) -> anyhow::Result<FloodReport> {
    if opts.payload < 8 {
        bail!("--payload must be at least 8 bytes");
    }
    let pid = std::process::id();
    let topic = opts.proto.topic(&["flood", "t"]);
    let sub_addr = opts.sub_addr.as_deref().unwrap_or(&opts.pub_addr);
    let start = Instant::now();
    let counts: Arc<Vec<Counts>> =
        Arc::new((0..opts.subscribers).map(|_| Counts::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..opts.subscribers {
        let mut conn = Conn::connect(opts.proto, sub_addr, &format!("fl-s{i}-{pid}")).await?;
        conn.subscribe(std::slice::from_ref(&topic), 1).await?;
        let (counts, stop) = (counts.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let c = &counts[i];
            let mut next = 0u64;
            while !stop.load(Relaxed) {
                let (mut n, mut bad, mut probes) = (0u64, 0u64, 0u64);
                conn.read(|_, payload| {
                    let Some(seq) = payload.first_chunk::<8>().map(|s| u64::from_le_bytes(*s))
                    else {
                        return;
                    };
                    if seq == PROBE {
                        probes += 1;
                        return;
                    }
                    if seq != next {
                        bad += 1;
                    }
                    next = seq + 1;
                    n += 1;
                })
                .await?;
                if n > 0 {
                    c.delivered.fetch_add(n, Relaxed);
                    c.last_ns.store(start.elapsed().as_nanos() as u64, Relaxed);
                }
                if bad > 0 {
                    c.out_of_order.fetch_add(bad, Relaxed);
                }
                if probes > 0 {
                    c.probes.fetch_add(probes, Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut publisher = Conn::connect(opts.proto, &opts.pub_addr, &format!("fl-p-{pid}")).await?;
    // The subscriptions reach every broker on the way (another node) some time after they were
    // confirmed: probes until each subscriber saw one.
    let mut probe = vec![0u8; opts.payload];
    probe[..8].copy_from_slice(&PROBE.to_le_bytes());
    let ready = Instant::now();
    while !counts.iter().all(|c| c.probes.load(Relaxed) > 0) {
        if ready.elapsed().as_secs_f64() > opts.ready_timeout {
            bail!(
                "no probe reached every subscriber within {} s",
                opts.ready_timeout
            );
        }
        publisher.push_publish(topic.as_bytes(), &probe);
        publisher.flush().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Probes still on their way are not counted; give them a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The publisher: one blocking socket, batches of about 64 KiB, as fast as writes return.
    let mut socket = publisher.into_std()?;
    let (proto, payload_len, count) = (opts.proto, opts.payload, opts.count);
    let first_ns = start.elapsed().as_nanos() as u64;
    // Nanoseconds the writes took, once they are done (0 until then).
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    {
        let (written, failed) = (written.clone(), failed.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut payload = vec![0u8; payload_len];
            let mut buf = Vec::with_capacity(80 * 1024);
            for seq in 0..count {
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                encode_publish(proto, &mut buf, topic.as_bytes(), &payload);
                if buf.len() >= 64 * 1024 {
                    if socket.write_all(&buf).is_err() {
                        failed.store(true, Relaxed);
                        return;
                    }
                    buf.clear();
                }
            }
            if socket.write_all(&buf).is_err() {
                failed.store(true, Relaxed);
                return;
            }
            written.store(t.elapsed().as_nanos().max(1) as u64, Relaxed);
            // Keep the socket open until the process ends: closing it could reset what the
            // broker has not read yet.
            std::thread::sleep(Duration::from_secs(3600));
            drop(socket);
        });
    }
    let done = || written.load(Relaxed) > 0 || failed.load(Relaxed);
    let expected = count * opts.subscribers as u64;
    let delivered = || {
        counts
            .iter()
            .map(|c| c.delivered.load(Relaxed))
            .sum::<u64>()
    };
    let idle = Duration::from_secs_f64(opts.idle);
    let mut last = (delivered(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = delivered();
        if now >= expected {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if done() && last.1.elapsed() > idle {
            break;
        } else if last.1.elapsed() > idle * 20 {
            // A publisher blocked for good (the broker stopped reading): report what arrived.
            break;
        }
        if readers.iter().any(|r| r.is_finished()) {
            bail!("a subscriber connection ended during the run (see the broker's log)");
        }
    }
    stop.store(true, Relaxed);
    for r in &readers {
        r.abort();
    }
    if failed.load(Relaxed) {
        bail!("the publisher's connection failed (see the broker's log)");
    }
    // 0 when the publisher is still blocked in a write: the broker never read everything.
    let write_s = written.load(Relaxed) as f64 / 1e9;
    let delivered = delivered();
    let last_ns = counts
        .iter()
        .map(|c| c.last_ns.load(Relaxed))
        .max()
        .unwrap_or(0);
    let seconds = (last_ns.saturating_sub(first_ns)) as f64 / 1e9;
    let per_sub = delivered as f64 / opts.subscribers as f64;
    Ok(FloodReport {
        label: opts.label.clone(),
        workload: opts.workload.clone(),
        payload_bytes: opts.payload,
        subscribers: opts.subscribers,
        published: count,
        delivered,
        delivered_share: delivered as f64 / expected as f64,
        out_of_order: counts.iter().map(|c| c.out_of_order.load(Relaxed)).sum(),
        write_s,
        seconds,
        rate: if seconds > 0.0 {
            per_sub / seconds
        } else {
            0.0
        },
    })
}

/// `loadgen flood-table`: one markdown table per (workload, payload, subscribers): each
/// broker's runs in order, its median rate, its lowest delivered share, and the ratio of its
/// median to the baseline's median from the same runs.
pub fn table(files: &[String], baseline: &str, order: &[String]) -> anyhow::Result<()> {
    let mut runs: Vec<FloodReport> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {f}"))?;
        for line in text.lines().filter(|l| l.starts_with('{')) {
            runs.push(serde_json::from_str(line).with_context(|| format!("{f}: {line}"))?);
        }
    }
    let mut groups: BTreeMap<(String, usize, usize), BTreeMap<String, Vec<&FloodReport>>> =
        BTreeMap::new();
    for r in &runs {
        groups
            .entry((r.workload.clone(), r.payload_bytes, r.subscribers))
            .or_default()
            .entry(r.label.clone())
            .or_default()
            .push(r);
    }
    for ((workload, payload, subs), by_label) in &groups {
        println!("\n#### {workload}: {payload} B, 1 publisher, {subs} subscriber(s)\n");
        println!(
            "| broker | median msg/s per subscriber | ratio to {baseline} | delivered (lowest run) | runs (msg/s, delivered) |"
        );
        println!("|---|---|---|---|---|");
        let median = |rs: &[&FloodReport]| {
            let mut v: Vec<f64> = rs.iter().map(|r| r.rate).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let base = by_label.get(baseline).map(|rs| median(rs));
        let mut labels: Vec<&String> = by_label.keys().collect();
        labels.sort_by_key(|l| order.iter().position(|o| o == *l).unwrap_or(usize::MAX));
        for label in labels {
            let rs = &by_label[label];
            let m = median(rs);
            let ratio = match base {
                Some(b) if b > 0.0 => format!("{:.2}x", m / b),
                _ => "-".into(),
            };
            let lowest = rs
                .iter()
                .map(|r| r.delivered_share)
                .fold(f64::INFINITY, f64::min);
            let each: Vec<String> = rs
                .iter()
                .map(|r| {
                    let ooo = if r.out_of_order > 0 {
                        format!(", {} out of order", r.out_of_order)
                    } else {
                        String::new()
                    };
                    format!(
                        "{:.0}k ({:.1} %{ooo})",
                        r.rate / 1e3,
                        r.delivered_share * 100.0
                    )
                })
                .collect();
            println!(
                "| {label} | {:.0}k | {ratio} | {:.1} % | {} |",
                m / 1e3,
                lowest * 100.0,
                each.join(", ")
            );
        }
    }
    Ok(())
}
