//! Across brokers (nodes of a mesh): `loadgen probe` waits until a message published on one
//! node reaches a subscriber on another, and `loadgen propagation` measures how long a new
//! subscription takes to reach publishers on every other node.
//!
//! Propagation, per round: the publishers (one MQTT connection per other node) publish QoS 0
//! probes continuously, every `--interval-ms`, on topics of that round (`bench/prop/R/I` for
//! publisher I), so that nothing from an earlier round can be mistaken for a delivery; the
//! subscriber SUBSCRIBEs to `bench/prop/R/+` on its node; the time from its SUBACK to the first
//! delivery of each publisher's probes is that publisher's sample. Then it UNSUBSCRIBEs, waits
//! for the UNSUBACK, and pauses before the next round. The samples include up to one publish
//! interval of waiting for the next probe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::client::{Conn, Proto};
use crate::mqtt::{self, Packet};

/// Options of `loadgen probe`.
#[derive(Parser, Debug)]
pub struct ProbeOpts {
    /// Protocol to speak.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Where the probe is published, HOST:PORT.
    #[arg(long)]
    pub_addr: String,
    /// Where it must arrive, HOST:PORT.
    #[arg(long)]
    sub_addr: String,
    /// Seconds to wait at most.
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
}

/// Subscribes at `--sub-addr`, publishes a probe at `--pub-addr` every 5 ms until one arrives;
/// returns the seconds from the subscription's acknowledgement to the arrival.
pub async fn probe(opts: &ProbeOpts) -> anyhow::Result<f64> {
    let pid = std::process::id();
    let topic = opts.proto.topic(&["bench", "probe", &pid.to_string()]);
    let mut sub = Conn::connect(opts.proto, &opts.sub_addr, &format!("lg-qs-{pid}")).await?;
    sub.subscribe(std::slice::from_ref(&topic), 1).await?;
    let started = Instant::now();
    let mut publisher = Conn::connect(opts.proto, &opts.pub_addr, &format!("lg-qp-{pid}")).await?;
    let limit = Duration::from_secs_f64(opts.timeout.max(0.001));
    loop {
        if started.elapsed() > limit {
            bail!(
                "no probe published at {} arrived at {} within {} s",
                opts.pub_addr,
                opts.sub_addr,
                opts.timeout
            );
        }
        publisher.push_publish(topic.as_bytes(), b"probe");
        publisher.flush().await?;
        let mut seen = false;
        if let Ok(read) = tokio::time::timeout(
            Duration::from_millis(5),
            sub.read(|_, p| seen |= p == b"probe"),
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

/// Options of `loadgen propagation`.
#[derive(Parser, Debug)]
pub struct PropagationOpts {
    /// MQTT address of the node where the subscriber subscribes.
    #[arg(long)]
    sub_addr: String,
    /// MQTT addresses of the other nodes, one publisher each (comma separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub_addrs: Vec<String>,
    /// Hops from the subscriber's node to each publisher's node, for the report (comma
    /// separated, same order as `--pub-addrs`).
    #[arg(long, value_delimiter = ',')]
    hops: Vec<u32>,
    /// Subscribe/unsubscribe rounds.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Milliseconds between two probes of one publisher.
    #[arg(long, default_value_t = 1.0)]
    interval_ms: f64,
    /// Milliseconds between an UNSUBACK and the next SUBSCRIBE.
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// Seconds a round may wait for every publisher's first delivery.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Name of the setup in the output (e.g. `meshgate-chain-3`).
    #[arg(long, default_value = "mesh")]
    label: String,
    /// Topology, for the report (e.g. `chain`).
    #[arg(long, default_value = "chain")]
    topology: String,
}

/// One publisher's samples.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PublisherResult {
    /// Its node's MQTT address.
    pub addr: String,
    /// Hops from the subscriber's node, if given.
    pub hops: Option<u32>,
    /// Milliseconds from SUBACK to the first delivery, one per round that saw one.
    pub samples_ms: Vec<f64>,
    /// Rounds in which nothing from this publisher arrived before the timeout.
    pub missing: usize,
}

/// The JSON line `loadgen propagation` prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PropagationReport {
    /// `--label`.
    pub label: String,
    /// `--topology`.
    pub topology: String,
    /// Nodes in the mesh (the subscriber's and the publishers').
    pub nodes: usize,
    /// Rounds run.
    pub rounds: usize,
    /// Milliseconds between probes of one publisher.
    pub interval_ms: f64,
    /// Milliseconds from SUBSCRIBE written to SUBACK read, one per round.
    pub suback_ms: Vec<f64>,
    /// Per publisher.
    pub publishers: Vec<PublisherResult>,
    /// Median over every publisher's samples, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank) over every publisher's samples, milliseconds.
    pub p99_ms: f64,
    /// Largest sample, milliseconds.
    pub max_ms: f64,
}

/// Nearest-rank percentile of `values` (sorted or not); 0 for none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs the rounds and returns the report.
pub async fn run(opts: &PropagationOpts) -> anyhow::Result<PropagationReport> {
    let pid = std::process::id();
    // The round the publishers publish for; u64::MAX stops them.
    let round = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(opts.interval_ms.max(0.01) / 1000.0);
    let mut publishers = Vec::new();
    for (i, addr) in opts.pub_addrs.iter().enumerate() {
        let mut conn = mqtt::Conn::connect(addr, &format!("lg-pp{i}-{pid}")).await?;
        let round = round.clone();
        publishers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let r = round.load(Relaxed);
                if r == u64::MAX {
                    return anyhow::Ok(());
                }
                conn.push_publish(format!("bench/prop/{r}/{i}").as_bytes(), b"probe");
                conn.flush().await?;
            }
        }));
    }
    let mut sub = mqtt::Conn::connect(&opts.sub_addr, &format!("lg-ps-{pid}")).await?;
    let n = opts.pub_addrs.len();
    let mut results: Vec<PublisherResult> = opts
        .pub_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| PublisherResult {
            addr: addr.clone(),
            hops: opts.hops.get(i).copied(),
            ..PublisherResult::default()
        })
        .collect();
    let mut suback_ms = Vec::new();
    let limit = Duration::from_secs_f64(opts.timeout.max(0.001));
    for r in 0..opts.rounds {
        round.store(r as u64, Relaxed);
        tokio::time::sleep(Duration::from_millis(opts.pause_ms)).await;
        for p in &publishers {
            if p.is_finished() {
                bail!("a publisher connection ended (see the node's log)");
            }
        }
        let filter = vec![format!("bench/prop/{r}/+")];
        let prefix = format!("bench/prop/{r}/");
        let id = (r % 65_000 + 1) as u16;
        let subscribed = Instant::now();
        sub.push_subscribe(id, &filter);
        sub.flush().await?;
        let mut acked: Option<Instant> = None;
        let mut first: Vec<Option<Instant>> = vec![None; n];
        let mut refused = false;
        while acked.is_none() || first.iter().any(Option::is_none) {
            let Some(left) = limit.checked_sub(subscribed.elapsed()) else {
                break;
            };
            let read = sub.read_packets(|p| {
                let now = Instant::now();
                match p {
                    Packet::SubAck(_, codes) => {
                        refused |= codes.iter().any(|c| *c >= 0x80);
                        acked = Some(now);
                    }
                    Packet::Publish { topic, .. } => {
                        let idx = topic
                            .strip_prefix(prefix.as_bytes())
                            .and_then(|t| std::str::from_utf8(t).ok())
                            .and_then(|t| t.parse::<usize>().ok());
                        if let Some(slot) = idx.and_then(|i| first.get_mut(i)) {
                            slot.get_or_insert(now);
                        }
                    }
                    _ => {}
                }
            });
            match tokio::time::timeout(left, read).await {
                Ok(result) => result.context("subscriber")?,
                Err(_) => break,
            }
        }
        if refused {
            bail!("SUBACK refused {}", filter[0]);
        }
        let Some(acked) = acked else {
            bail!("no SUBACK within {} s", opts.timeout);
        };
        suback_ms.push((acked - subscribed).as_secs_f64() * 1e3);
        for (res, t) in results.iter_mut().zip(&first) {
            match t {
                Some(t) => res
                    .samples_ms
                    .push(t.saturating_duration_since(acked).as_secs_f64() * 1e3),
                None => res.missing += 1,
            }
        }
        sub.push_unsubscribe(id, &filter);
        sub.flush().await?;
        let mut done = false;
        while !done {
            tokio::time::timeout(
                limit,
                sub.read_packets(|p| done |= matches!(p, Packet::UnsubAck(_))),
            )
            .await
            .context("no UNSUBACK")?
            .context("subscriber")?;
        }
    }
    round.store(u64::MAX, Relaxed);
    for p in publishers {
        p.await.context("publisher task")??;
    }
    let all: Vec<f64> = results
        .iter()
        .flat_map(|r| r.samples_ms.iter().copied())
        .collect();
    Ok(PropagationReport {
        label: opts.label.clone(),
        topology: opts.topology.clone(),
        nodes: n + 1,
        rounds: opts.rounds,
        interval_ms: opts.interval_ms,
        suback_ms,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.iter().copied().fold(0.0, f64::max),
        publishers: results,
    })
}

/// Markdown table of propagation reports: one row per setup and hop distance (samples of
/// several lines with the same label are pooled), and one for all publishers of a setup.
pub fn summarize(text: &str) -> anyhow::Result<String> {
    // (label, hops) -> (samples, missing); label -> (nodes, topology, rounds, interval)
    let mut rows: BTreeMap<(String, Option<u32>), (Vec<f64>, usize)> = BTreeMap::new();
    let mut setups: Vec<(String, usize, String, usize, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: PropagationReport =
            serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        match setups.iter_mut().find(|s| s.0 == r.label) {
            Some(s) => s.3 += r.rounds,
            None => setups.push((
                r.label.clone(),
                r.nodes,
                r.topology.clone(),
                r.rounds,
                r.interval_ms,
            )),
        }
        for p in &r.publishers {
            for key in [(r.label.clone(), p.hops), (r.label.clone(), None)] {
                let e = rows.entry(key).or_default();
                e.0.extend(&p.samples_ms);
                e.1 += p.missing;
            }
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| setup | nodes | publishers | rounds | samples | p50 (ms) | p99 (ms) | max (ms) | missing |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for (label, nodes, topology, rounds, interval) in &setups {
        let mut keys: Vec<&(String, Option<u32>)> = rows.keys().filter(|k| &k.0 == label).collect();
        // Per hop distance first, then all.
        keys.sort_by_key(|k| k.1.map_or(u32::MAX, |h| h));
        for key in keys {
            let (samples, missing) = &rows[key];
            let who = match key.1 {
                Some(1) => "1 hop away".to_string(),
                Some(h) => format!("{h} hops away"),
                None => "all".to_string(),
            };
            let max = samples.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                md,
                "| {label} ({topology}, probes every {interval} ms) | {nodes} | {who} | {rounds} | {} | {:.2} | {:.2} | {max:.2} | {missing} |",
                samples.len(),
                percentile(samples, 0.5),
                percentile(samples, 0.99),
            );
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn summary_pools_lines_by_label_and_hops() {
        let line = |s: f64| {
            serde_json::to_string(&PropagationReport {
                label: "m3".into(),
                topology: "chain".into(),
                nodes: 3,
                rounds: 1,
                interval_ms: 1.0,
                publishers: vec![
                    PublisherResult {
                        hops: Some(1),
                        samples_ms: vec![s],
                        ..Default::default()
                    },
                    PublisherResult {
                        hops: Some(2),
                        samples_ms: vec![2.0 * s],
                        missing: 1,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
            .unwrap()
        };
        let md = summarize(&format!("{}\n{}\n", line(1.0), line(3.0))).unwrap();
        assert!(
            md.contains("| 1 hop away | 2 | 2 | 1.00 | 3.00 | 3.00 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 hops away | 2 | 2 | 2.00 | 6.00 | 6.00 | 2 |"),
            "{md}"
        );
        assert!(
            md.contains("| all | 2 | 4 | 2.00 | 6.00 | 6.00 | 2 |"),
            "{md}"
        );
    }
}
