//! `--client rumqttc`: the one-to-one workload driven by rumqttc 0.25 (MQTT 3.1.1) instead of
//! the raw client, with the same sequence-number flow control. It cross-checks the raw client's
//! numbers and shows what a typical client library costs; it is not the harness's default
//! because its per-message event-loop work can cap throughput below what a broker delivers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Notify;

use crate::report::Report;
use crate::{Opts, Snapshot};

struct Progress {
    delivered: AtomicU64,
    next_seq: AtomicU64,
    sent: AtomicU64,
    stop: AtomicBool,
    notify: Notify,
}

fn options(addr: &str, id: String) -> anyhow::Result<MqttOptions> {
    let (host, port) = addr
        .rsplit_once(':')
        .context("addresses must be HOST:PORT")?;
    let mut o = MqttOptions::new(id, host, port.parse::<u16>().context("port")?);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    Ok(o)
}

/// Runs one-to-one with rumqttc clients on both ends.
pub async fn one_to_one(opts: &Opts) -> anyhow::Result<Report> {
    let pid = std::process::id();
    let topic = "bench/one";
    let progress = Arc::new(Progress {
        delivered: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        notify: Notify::new(),
    });

    let (sub, mut sub_loop) =
        AsyncClient::new(options(opts.sub_addr(), format!("lg-rs-{pid}"))?, 1024);
    sub.subscribe(topic, QoS::AtMostOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.context("subscriber")? {
            break;
        }
    }
    let sub_task = tokio::spawn(subscriber(sub_loop, progress.clone()));

    let (publisher, mut pub_loop) =
        AsyncClient::new(options(opts.pub_addr(), format!("lg-rp-{pid}"))?, 1024);
    let pub_loop_task = tokio::spawn(async move {
        loop {
            pub_loop.poll().await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let pub_task = {
        let progress = progress.clone();
        let (window, payload_len) = (opts.window, opts.payload);
        tokio::spawn(async move {
            let mut payload = vec![0u8; payload_len];
            let mut seq = 0u64;
            let mut forgotten = 0u64;
            while !progress.stop.load(Relaxed) {
                let acked = progress.next_seq.load(Relaxed).max(forgotten);
                if seq.saturating_sub(acked) >= window {
                    let waited = tokio::time::timeout(
                        Duration::from_millis(200),
                        progress.notify.notified(),
                    )
                    .await;
                    if waited.is_err() {
                        forgotten = seq;
                    }
                    continue;
                }
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                publisher
                    .publish(topic, QoS::AtMostOnce, false, payload.clone())
                    .await?;
                seq += 1;
                progress.sent.store(seq, Relaxed);
            }
            anyhow::Ok(())
        })
    };

    let snap = |p: &Progress| Snapshot::take(opts, p.sent.load(Relaxed), p.delivered.load(Relaxed));
    tokio::time::sleep(opts.warmup()).await;
    let before = snap(&progress)?;
    tokio::time::sleep(opts.duration()).await;
    let after = snap(&progress)?;
    progress.stop.store(true, Relaxed);
    progress.notify.notify_one();
    pub_task.await??;
    let sent_total = progress.sent.load(Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while progress.delivered.load(Relaxed) < sent_total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sub_task.abort();
    pub_loop_task.abort();

    let mut report = after.report_since(&before, opts, "one-to-one");
    report.label = format!("{} (rumqttc)", opts.label);
    report.subscribers = 1;
    report.subscriptions = 1;
    report.sent_total = sent_total;
    report.delivered_total = progress.delivered.load(Relaxed);
    report.lost = sent_total.saturating_sub(report.delivered_total);
    report.window = opts.window;
    Ok(report)
}

async fn subscriber(mut events: EventLoop, progress: Arc<Progress>) -> anyhow::Result<()> {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = events.poll().await? {
            if let Some(seq) = p.payload.first_chunk::<8>() {
                progress
                    .next_seq
                    .fetch_max(u64::from_le_bytes(*seq) + 1, Relaxed);
            }
            progress.delivered.fetch_add(1, Relaxed);
            progress.notify.notify_one();
        }
    }
}
