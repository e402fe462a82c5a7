//! `quinn_raw`: the baseline for meshgate's two-node throughput. Moves messages (1 KiB by
//! default, each behind a 4-byte length) over ONE quinn 0.11 unidirectional stream on loopback,
//! in large writes, between two endpoints that each run on their own thread and
//! single-threaded tokio runtime (like two processes), and prints one JSON line in the format of
//! `loadgen run` (label `quinn-raw`, workload `one-to-one`), so that `loadgen summarize` puts it
//! next to the brokers' one-to-one rows.
//!
//! With `--pingpong N` it measures round trips instead: N messages of `--payload` bytes (64
//! recommended), each written on one bidirectional stream, echoed by the other endpoint and
//! read back before the next is sent (closed loop); it prints p50 / p99 / p99.9 in the same
//! JSON format (workload `rtt`, no rate).
//!
//! TLS 1.3 with rustls' ring provider and a self-signed rcgen certificate; the transport windows
//! are meshgate's (8 MiB per stream, 32 MiB per connection and for sending).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Raw quinn throughput on loopback.
#[derive(Parser, Debug)]
#[command(name = "quinn_raw", version, about)]
struct Opts {
    /// Message size in bytes (each is written behind a 4-byte length).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Bytes per `write_all` call.
    #[arg(long, default_value_t = 256 * 1024)]
    write: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Name in the output.
    #[arg(long, default_value = "quinn-raw")]
    label: String,
    /// Closed-loop round trips to time instead of measuring throughput (after 1,000 unmeasured
    /// ones).
    #[arg(long, default_value_t = 0)]
    pingpong: u64,
    /// With `--pingpong`: sleep 1 ms (tokio timer) between round trips, so that both endpoints
    /// go idle between messages as the nodes do in the paced `rtt` workload.
    #[arg(long)]
    idle: bool,
}

const ALPN: &[u8] = b"quinn-raw";

fn transport() -> Arc<quinn::TransportConfig> {
    // The same windows as meshgate's mesh links.
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20);
    Arc::new(t)
}

fn configs() -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server)?,
    ));
    sc.transport_config(transport());
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client)?,
    ));
    cc.transport_config(transport());
    Ok((sc, cc))
}

/// CPU seconds (user + system) of this process, from `/proc/self/stat` (100 ticks per second).
fn own_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = &stat[stat.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Busy CPU seconds of the whole machine, from `/proc/stat`.
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle) as f64 / 100.0)
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Round trips of `opts.payload` bytes on one bidirectional stream, echoed by the server.
fn pingpong(opts: &Opts) -> anyhow::Result<()> {
    let (server_cfg, client_cfg) = configs()?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let size = opts.payload;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        current_thread()?.block_on(async move {
            let endpoint = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
            addr_tx.send(endpoint.local_addr()?)?;
            let conn = endpoint.accept().await.context("no connection")?.await?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut buf = vec![0u8; size];
            while recv.read_exact(&mut buf).await.is_ok() {
                send.write_all(&buf).await?;
            }
            endpoint.wait_idle().await;
            anyhow::Ok(())
        })
    });
    let server_addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let total = opts.pingpong;
    let idle = opts.idle;
    let hist = current_thread()?.block_on(async move {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(client_cfg);
        let conn = endpoint.connect(server_addr, "localhost")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut buf = vec![0u8; size];
        for i in 0..total + 1000 {
            let t = Instant::now();
            send.write_all(&buf).await?;
            recv.read_exact(&mut buf).await?;
            if i >= 1000 {
                hist.saturating_record(t.elapsed().as_nanos() as u64);
            }
            if idle {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        send.finish()?;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        anyhow::Ok(hist)
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let line = serde_json::json!({
        "label": opts.label,
        "workload": "rtt",
        "payload_bytes": opts.payload,
        "subscribers": 1,
        "subscriptions": 1,
        "seconds": 1.0,
        "delivered": hist.len(),
        "sent_total": hist.len(),
        "delivered_total": hist.len(),
        "latency": {
            "count": hist.len(),
            "p50_us": us(0.5),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "max_us": hist.max() as f64 / 1000.0,
        },
        "idle_ms_between": if idle { 1 } else { 0 },
    });
    println!("{line}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    anyhow::ensure!(opts.payload > 0, "--payload must be positive");
    if opts.pingpong > 0 {
        return pingpong(&opts);
    }
    let (server_cfg, client_cfg) = configs()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();

    // Receiving endpoint: its own thread and runtime.
    let rx_bytes = received.clone();
    let receiver = std::thread::spawn(move || -> anyhow::Result<()> {
        current_thread()?.block_on(async move {
            let endpoint = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
            addr_tx.send(endpoint.local_addr()?)?;
            let conn = endpoint.accept().await.context("no connection")?.await?;
            let mut recv = conn.accept_uni().await?;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                rx_bytes.fetch_add(chunk.bytes.len() as u64, Relaxed);
            }
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            anyhow::Ok(())
        })
    });

    // Sending endpoint: another thread and runtime.
    let server_addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let tx_stop = stop.clone();
    let frame = 4 + opts.payload;
    let write = opts.write.max(frame);
    let sender = std::thread::spawn(move || -> anyhow::Result<u64> {
        current_thread()?.block_on(async move {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            endpoint.set_default_client_config(client_cfg);
            let conn = endpoint.connect(server_addr, "localhost")?.await?;
            let mut send = conn.open_uni().await?;
            let mut buf = Vec::with_capacity(write);
            while buf.len() + frame <= write {
                buf.extend_from_slice(&(opts.payload as u32).to_be_bytes());
                buf.resize(buf.len() + opts.payload, 0xab);
            }
            let buf = bytes::Bytes::from(buf);
            let mut sent = 0u64;
            while !tx_stop.load(Relaxed) {
                send.write_chunk(buf.clone()).await?;
                sent += buf.len() as u64;
            }
            send.finish()?;
            send.stopped().await?;
            endpoint.wait_idle().await;
            anyhow::Ok(sent)
        })
    });

    std::thread::sleep(Duration::from_secs_f64(opts.warmup.max(0.0)));
    let (t0, b0, c0, m0) = (
        Instant::now(),
        received.load(Relaxed),
        own_cpu_seconds()?,
        machine_busy_seconds()?,
    );
    std::thread::sleep(Duration::from_secs_f64(opts.duration.max(0.001)));
    let (t1, b1, c1, m1) = (
        Instant::now(),
        received.load(Relaxed),
        own_cpu_seconds()?,
        machine_busy_seconds()?,
    );
    stop.store(true, Relaxed);
    let sent_bytes = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let total = received.load(Relaxed);

    let seconds = (t1 - t0).as_secs_f64();
    let delivered = (b1 - b0) / frame as u64;
    let cpu = c1 - c0;
    let line = serde_json::json!({
        "label": opts.label,
        "workload": "one-to-one",
        "payload_bytes": opts.payload,
        "subscribers": 1,
        "subscriptions": 1,
        "seconds": seconds,
        "sent": delivered,
        "delivered": delivered,
        "sent_per_s": delivered as f64 / seconds,
        "delivered_per_s": delivered as f64 / seconds,
        "sent_total": sent_bytes / frame as u64,
        "delivered_total": total / frame as u64,
        "lost": (sent_bytes - total) / frame as u64,
        // Both endpoints are this process: its CPU is the "broker" CPU of the comparison.
        "broker_cpu_s": cpu,
        "delivered_per_broker_cpu_s": if cpu > 0.0 { Some(delivered as f64 / cpu) } else { None },
        "loadgen_cpu_s": 0.0,
        "other_cpu_s": (m1 - m0 - cpu).max(0.0),
        "cross_node": true,
        "write_bytes": write / frame * frame,
        "stream_bytes_per_s": (b1 - b0) as f64 / seconds,
    });
    println!("{line}");
    Ok(())
}
