//! Bridge workloads (`benches/run-bridges.sh`): records through a meshgate node's Kafka and AMQP
//! bridges against the same broker's own client reading or writing directly, in the same run.
//!
//! - `loadgen bridge-recv`: receives `--count` records, from Kafka or AMQP either directly (an
//!   rdkafka `StreamConsumer` in a consumer group from `earliest`; a lapin consumer with manual
//!   acks, one `multiple` ack per batch of at most `--prefetch`, like the bridge) or through a
//!   node (a raw MQTT 3.1.1 subscriber on `--filter`). First it writes a probe record into the
//!   source (Kafka topic, AMQP queue) every 100 ms until one arrives, so the consumer is
//!   assigned and the subscription in place; then it prints `ready` on stdout and times the
//!   workload records from the first to the last that arrives (`rate` = (distinct − 1) / that
//!   time). Then one JSON line.
//! - `loadgen bridge-send`: writes `--count` records into Kafka (an rdkafka `FutureProducer`,
//!   returns when Kafka acknowledged every one), AMQP (lapin, publisher confirms off, returns
//!   when every publish is written to the socket) or a node over MQTT (QoS 1, at most
//!   `--inflight` unacknowledged; with `--http` and `--sink` it also waits until the node's sink
//!   reports in `GET /v1/bridges` that Kafka acknowledged all of them). One JSON line.
//! - `loadgen bridge-setup`: declares the AMQP queue of a run.
//! - `loadgen bridge-table`: markdown tables of medians and same-run ratios from those lines.
//!
//! Payloads are `--payload` bytes starting with the record's sequence number (little endian);
//! probes carry `u64::MAX` and are never counted.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, ValueEnum};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::table::{self, median, rate, spread};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::mqtt::{self, Packet};
use crate::procstat::{self, CpuClock};

/// Sequence number of a probe record.
const PROBE: u64 = u64::MAX;

/// The receiver gives up when nothing new arrived for this long after the first record.
const IDLE: Duration = Duration::from_secs(10);

/// Where records come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// A Kafka topic.
    Kafka,
    /// An AMQP queue.
    Amqp,
}

/// How the receiver reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The source broker's own client.
    Direct,
    /// An MQTT subscriber of a meshgate node whose bridge consumes the source.
    Mqtt,
}

/// Where `bridge-send` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A Kafka topic (rdkafka FutureProducer).
    Kafka,
    /// An AMQP queue through the default exchange (lapin).
    Amqp,
    /// An MQTT topic of a node (QoS 1).
    Mqtt,
}

/// What every bridge command records about its run.
#[derive(Parser, Debug, Clone)]
pub struct RunInfo {
    /// Scenario in the output (e.g. `kafka-to-mqtt`).
    #[arg(long)]
    scenario: String,
    /// Setup in the output (`meshgate`, `direct`).
    #[arg(long)]
    setup: String,
    /// Mode in the output (`live`, `backlog`).
    #[arg(long, default_value = "live")]
    mode: String,
    /// Repetition number in the output.
    #[arg(long, default_value_t = 1)]
    rep: u32,
    /// Records in the measurement.
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Payload bytes per record (at least 8).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// `NAME=PID` of a process whose CPU in the measured window is reported (repeatable).
    #[arg(long, value_parser = parse_named_pid)]
    cpu: Vec<(String, u32)>,
    /// Seconds the whole command may take.
    #[arg(long, default_value_t = 180.0)]
    timeout: f64,
}

fn parse_named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))?;
    Ok((name.to_string(), pid))
}

/// Options of `loadgen bridge-recv`.
#[derive(Parser, Debug)]
pub struct RecvOpts {
    #[command(flatten)]
    run: RunInfo,
    /// The broker the records are written to (and probes).
    #[arg(long, value_enum)]
    from: Source,
    /// Read them directly, or from a node over MQTT.
    #[arg(long, value_enum)]
    via: Via,
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Kafka topic.
    #[arg(long)]
    topic: Option<String>,
    /// Consumer group of the direct Kafka consumer.
    #[arg(long, default_value = "bench-direct")]
    group: String,
    /// `KEY=VALUE` librdkafka property of the direct Kafka consumer (repeatable).
    #[arg(long)]
    kafka_property: Vec<String>,
    /// The direct Kafka consumer reads like the bridge's source: batches of at most this many
    /// records (what librdkafka holds already, never waiting for more), offsets stored by hand
    /// after each batch (`enable.auto.offset.store` false). 0: plain `recv` and automatic
    /// offset store.
    #[arg(long, default_value_t = 0)]
    bridge_batch: usize,
    /// AMQP url, `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[arg(long)]
    amqp_url: Option<String>,
    /// AMQP queue.
    #[arg(long)]
    queue: Option<String>,
    /// basic.qos of the direct AMQP consumer, and its largest batch per ack.
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// MQTT address of the node (`--via mqtt`).
    #[arg(long)]
    mqtt: Option<String>,
    /// MQTT filter the subscriber subscribes to.
    #[arg(long, default_value = "bench/#")]
    filter: String,
    /// QoS the MQTT subscriber asks for (1: every delivery is PUBACKed in the batch it came in).
    #[arg(long, default_value_t = 0)]
    sub_qos: u8,
}

/// Options of `loadgen bridge-send`.
#[derive(Parser, Debug)]
pub struct SendOpts {
    #[command(flatten)]
    run: RunInfo,
    /// Where to write.
    #[arg(long, value_enum)]
    to: Target,
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Kafka topic, or MQTT topic.
    #[arg(long)]
    topic: Option<String>,
    /// librdkafka `linger.ms` of the producer.
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// Idempotent Kafka producer (`enable.idempotence`), as the bridge's sink uses by default.
    #[arg(long)]
    idempotent: bool,
    /// AMQP url.
    #[arg(long)]
    amqp_url: Option<String>,
    /// AMQP queue (published to through the default exchange).
    #[arg(long)]
    queue: Option<String>,
    /// Publishes in flight at once (AMQP: futures not yet written).
    #[arg(long, default_value_t = 1024)]
    inflight: usize,
    /// MQTT address of the node (`--to mqtt`).
    #[arg(long)]
    mqtt: Option<String>,
    /// HTTP address of the node: wait until sink `--sink` reports `--count` more forwarded.
    #[arg(long)]
    http: Option<String>,
    /// Name of the node's sink (`GET /v1/bridges`).
    #[arg(long)]
    sink: Option<String>,
}

/// Options of `loadgen bridge-setup`.
#[derive(Parser, Debug)]
pub struct SetupOpts {
    /// AMQP url.
    #[arg(long)]
    amqp_url: String,
    /// Queue to declare: durable, deleted by RabbitMQ `--expires-ms` after its last consumer
    /// left (`x-expires`).
    #[arg(long)]
    queue: String,
    /// `x-expires` of the queue.
    #[arg(long, default_value_t = 120_000)]
    expires_ms: u32,
}

/// One JSON line of a bridge command.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeReport {
    /// `kafka-to-mqtt`, `mqtt-to-kafka`, `amqp-to-mqtt`.
    pub scenario: String,
    /// `meshgate` or `direct`.
    pub setup: String,
    /// `live` or `backlog`.
    pub mode: String,
    /// Repetition.
    pub rep: u32,
    /// `recv` (records received) or `send` (records written).
    pub role: String,
    /// Records in the measurement.
    pub count: u64,
    /// Payload bytes per record.
    pub payload_bytes: usize,
    /// Distinct records received (`recv`), or acknowledged (`send`).
    pub received: u64,
    /// Records received more than once.
    pub duplicates: u64,
    /// Records that never arrived (or were never acknowledged).
    pub lost: u64,
    /// Records whose payload had the wrong size or sequence number.
    pub malformed: u64,
    /// Measured window: first to last record received (`recv`); first write to the last
    /// acknowledgement, or to the sink's last forward (`send`).
    pub seconds: f64,
    /// Records per second in the window.
    pub rate: f64,
    /// `send`: Unix time of the first write. `recv`: when the records could start to flow,
    /// set by the runner script (the writer's first write in live mode, the consumer's SIGCONT
    /// in backlog mode); the scenario's rate is then `received / (last_unix - start_unix)`.
    pub start_unix: Option<f64>,
    /// `recv`: Unix time of the first record received.
    pub first_unix: Option<f64>,
    /// `recv`: Unix time of the last new record received.
    pub last_unix: Option<f64>,
    /// `recv`: seconds until the first probe arrived.
    pub ready_s: Option<f64>,
    /// `send` over MQTT: seconds until the last PUBACK.
    pub acked_s: Option<f64>,
    /// Cores used in the window by each process named with `--cpu`.
    pub cores: BTreeMap<String, f64>,
    /// Cores used in the window by this command itself.
    pub own_cores: f64,
    /// Busy cores of the whole machine in the window.
    pub machine_cores: f64,
    /// What the numbers alone do not say.
    pub note: Option<String>,
    /// Why the run failed (written by the runner script).
    pub error: Option<String>,
}

impl BridgeReport {
    /// The run's rate: from `start_unix` to the last record for a receiver that has both,
    /// else `rate`.
    pub fn measured(&self) -> f64 {
        match (self.role.as_str(), self.start_unix, self.last_unix) {
            ("recv", Some(s), Some(l)) if l > s => self.received as f64 / (l - s),
            _ => self.rate,
        }
    }

    fn new(run: &RunInfo, role: &str) -> Self {
        Self {
            scenario: run.scenario.clone(),
            setup: run.setup.clone(),
            mode: run.mode.clone(),
            rep: run.rep,
            role: role.into(),
            count: run.count,
            payload_bytes: run.payload,
            ..Self::default()
        }
    }
}

/// CPU clocks of the named processes, this one and the machine at one instant.
struct CpuSnap {
    at: Instant,
    each: Vec<(String, f64)>,
    own: f64,
    machine: f64,
}

impl CpuSnap {
    fn take(pids: &[(String, u32)]) -> Self {
        Self {
            at: Instant::now(),
            each: pids
                .iter()
                .map(|(n, p)| (n.clone(), CpuClock::new(Some(*p)).seconds().unwrap_or(0.0)))
                .collect(),
            own: CpuClock::new(None).seconds().unwrap_or(0.0),
            machine: procstat::machine_busy_seconds().unwrap_or(0.0),
        }
    }

    /// Fills the CPU fields of `r` for the window from `before` to `self`.
    fn fill(&self, before: &CpuSnap, r: &mut BridgeReport) {
        let s = (self.at - before.at).as_secs_f64().max(1e-9);
        for ((name, a), (_, b)) in self.each.iter().zip(&before.each) {
            r.cores.insert(name.clone(), (a - b) / s);
        }
        r.own_cores = (self.own - before.own) / s;
        r.machine_cores = (self.machine - before.machine) / s;
    }
}

/// Unix time of `at`.
fn unix(at: Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    now - at.elapsed().as_secs_f64()
}

/// The payload of record `seq`.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut p = vec![b'x'; len.max(8)];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

/// Distinct sequence numbers seen, first and last arrival, CPU at both.
struct Tally {
    count: u64,
    len: usize,
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    malformed: u64,
    probes: Arc<AtomicBool>,
    first: Option<CpuSnap>,
    last_new: Instant,
    pids: Vec<(String, u32)>,
}

impl Tally {
    fn new(run: &RunInfo, probes: Arc<AtomicBool>) -> Self {
        Self {
            count: run.count,
            len: run.payload.max(8),
            seen: vec![0; (run.count as usize).div_ceil(64)],
            distinct: 0,
            duplicates: 0,
            malformed: 0,
            probes,
            first: None,
            last_new: Instant::now(),
            pids: run.cpu.clone(),
        }
    }

    /// Counts one payload.
    fn on(&mut self, p: &[u8]) {
        let Some(seq) = p
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        else {
            self.malformed += 1;
            return;
        };
        if seq == PROBE {
            self.probes.store(true, Ordering::Relaxed);
            return;
        }
        if seq >= self.count || p.len() != self.len {
            self.malformed += 1;
            return;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.seen[w] & (1 << b) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[w] |= 1 << b;
        if self.first.is_none() {
            self.first = Some(CpuSnap::take(&self.pids));
        }
        self.distinct += 1;
        self.last_new = Instant::now();
    }

    fn done(&self) -> bool {
        self.distinct >= self.count
    }

    /// Nothing new for [`IDLE`] after the first record.
    fn idle(&self) -> bool {
        self.first.is_some() && self.last_new.elapsed() > IDLE
    }

    fn report(&self, run: &RunInfo, end: &CpuSnap) -> BridgeReport {
        let mut r = BridgeReport::new(run, "recv");
        r.received = self.distinct;
        r.duplicates = self.duplicates;
        r.malformed = self.malformed;
        r.lost = self.count - self.distinct;
        if let Some(first) = &self.first {
            // The window ends at the last new record, not at the end snapshot of an idle run.
            r.seconds = (self.last_new - first.at).as_secs_f64();
            r.first_unix = Some(unix(first.at));
            r.last_unix = Some(unix(self.last_new));
            if r.seconds > 0.0 {
                r.rate = (self.distinct.saturating_sub(1)) as f64 / r.seconds;
            }
            end.fill(first, &mut r);
        }
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

fn kafka_producer(
    bootstrap: &str,
    linger_ms: u32,
    idempotent: bool,
) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms.to_string())
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .create()
        .context("create the Kafka producer")
}

async fn amqp_connect(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("AMQP url {url:?}: {e}"))?;
    // amq-protocol-uri turns an IP host into "localhost" (see crates/amqp/src/config.rs):
    // take the host from the url (`scheme://[user:pass@]host[:port][/vhost]`).
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    if !host.is_empty() {
        uri.authority.host = host.to_string();
    }
    let conn = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let ch = conn.create_channel().await.context("open a channel")?;
    Ok((conn, ch))
}

async fn amqp_publish(ch: &Channel, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    ch.basic_publish(
        ShortString::from(""),
        ShortString::from(queue),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .context("basic.publish")?;
    Ok(())
}

fn need<'a>(v: &'a Option<String>, flag: &str) -> anyhow::Result<&'a str> {
    v.as_deref()
        .with_context(|| format!("{flag} is required here"))
}

// ---------------------------------------------------------------------------------------------
// bridge-setup

/// Declares the queue of a run.
pub async fn setup(o: &SetupOpts) -> anyhow::Result<()> {
    let (conn, ch) = amqp_connect(&o.amqp_url).await?;
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(o.expires_ms as i32));
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(o.queue.as_str().into(), opts, args)
        .await
        .with_context(|| format!("declare queue {}", o.queue))?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bridge-recv

/// Receives the records of one run; prints `ready` once a probe came through, then the report.
pub async fn recv(o: &RecvOpts) -> anyhow::Result<BridgeReport> {
    ensure!(o.run.payload >= 8, "--payload must be at least 8");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.run.timeout);
    let probes = Arc::new(AtomicBool::new(false));
    let tally = Tally::new(&o.run, probes.clone());

    // The receiver, running until every record arrived or it went idle.
    let receiver = match o.via {
        Via::Mqtt => {
            let addr = need(&o.mqtt, "--mqtt")?.to_string();
            let mut conn =
                mqtt::Conn::connect(&addr, &format!("bench-recv-{}", std::process::id())).await?;
            let granted = conn
                .subscribe_qos(std::slice::from_ref(&o.filter), 1, o.sub_qos)
                .await?;
            ensure!(
                granted == o.sub_qos,
                "the node granted QoS {granted}, asked {}",
                o.sub_qos
            );
            tokio::spawn(recv_mqtt(conn, tally))
        }
        Via::Direct => match o.from {
            Source::Kafka => {
                let mut cc = ClientConfig::new();
                cc.set("bootstrap.servers", need(&o.bootstrap, "--bootstrap")?)
                    .set("group.id", &o.group)
                    .set("auto.offset.reset", "earliest");
                if o.bridge_batch > 0 {
                    cc.set("enable.auto.offset.store", "false")
                        .set("auto.commit.interval.ms", "1000");
                }
                for kv in &o.kafka_property {
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--kafka-property {kv}: expected KEY=VALUE"))?;
                    cc.set(k, v);
                }
                let consumer: StreamConsumer = cc.create().context("create the Kafka consumer")?;
                let topic = need(&o.topic, "--topic")?;
                consumer.subscribe(&[topic]).context("subscribe")?;
                tokio::spawn(recv_kafka(consumer, o.bridge_batch, tally))
            }
            Source::Amqp => {
                let (conn, ch) = amqp_connect(need(&o.amqp_url, "--amqp-url")?).await?;
                ch.basic_qos(o.prefetch, BasicQosOptions::default())
                    .await
                    .context("basic.qos")?;
                let consumer = ch
                    .basic_consume(
                        need(&o.queue, "--queue")?.into(),
                        "bench-direct".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .context("basic.consume")?;
                tokio::spawn(recv_amqp(conn, consumer, usize::from(o.prefetch), tally))
            }
        },
    };

    // Probes into the source until one arrives.
    let ready_s = match o.from {
        Source::Kafka => {
            let p = kafka_producer(need(&o.bootstrap, "--bootstrap")?, 0, false)?;
            let topic = need(&o.topic, "--topic")?;
            let body = payload(PROBE, o.run.payload);
            while !probes.load(Ordering::Relaxed) {
                ensure!(
                    Instant::now() < deadline,
                    "no probe arrived before the timeout"
                );
                let r = FutureRecord::<(), _>::to(topic).payload(&body);
                if let Err((e, _)) = p.send(r, Duration::from_secs(5)).await {
                    eprintln!("loadgen: probe: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            started.elapsed().as_secs_f64()
        }
        Source::Amqp => {
            let (conn, ch) = amqp_connect(need(&o.amqp_url, "--amqp-url")?).await?;
            let queue = need(&o.queue, "--queue")?;
            let body = payload(PROBE, o.run.payload);
            while !probes.load(Ordering::Relaxed) {
                ensure!(
                    Instant::now() < deadline,
                    "no probe arrived before the timeout"
                );
                amqp_publish(&ch, queue, &body).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = conn.close(200, "done".into()).await;
            started.elapsed().as_secs_f64()
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let (tally, end) = tokio::time::timeout(left, receiver)
        .await
        .context("the records did not arrive before --timeout")?
        .context("receiver task")??;
    let mut r = tally.report(&o.run, &end);
    r.ready_s = Some(ready_s);
    if tally.idle() {
        r.note = Some(format!(
            "nothing new for {} s: {} of {} records arrived",
            IDLE.as_secs(),
            tally.distinct,
            tally.count
        ));
    }
    Ok(r)
}

async fn recv_mqtt(mut conn: mqtt::Conn, mut t: Tally) -> anyhow::Result<(Tally, CpuSnap)> {
    let mut acks: Vec<u16> = Vec::new();
    let mut err: Option<anyhow::Error> = None;
    while !t.done() && !t.idle() {
        let read = conn.read_packets(|p| match p {
            Packet::Publish {
                payload, qos, pkid, ..
            } => {
                t.on(payload);
                if *qos > 0 {
                    acks.push(*pkid);
                }
            }
            Packet::PingResp | Packet::SubAck(..) => {}
            other => {
                err.get_or_insert_with(|| anyhow::anyhow!("unexpected packet {other:?}"));
            }
        });
        match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(r) => r?,
            Err(_) => conn.push_ping(),
        }
        if let Some(e) = err.take() {
            return Err(e);
        }
        for a in acks.drain(..) {
            conn.push_puback(a);
        }
        if conn.queued() > 0 {
            conn.flush().await?;
        }
    }
    let end = CpuSnap::take(&t.pids);
    Ok((t, end))
}

async fn recv_kafka(
    consumer: StreamConsumer,
    batch: usize,
    mut t: Tally,
) -> anyhow::Result<(Tally, CpuSnap)> {
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    while !t.done() && !t.idle() {
        let first = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(m) => m,
            Err(_) => continue,
        };
        if batch == 0 {
            match first {
                Ok(m) => t.on(m.payload().unwrap_or_default()),
                Err(e) => eprintln!("loadgen: consume: {e}"),
            }
            continue;
        }
        // As the bridge's source does (crates/kafka/src/source.rs), minus the mesh.
        let mut next = Some(first);
        let mut n = 0;
        while let Some(m) = next.take() {
            match m {
                Ok(m) => {
                    t.on(m.payload().unwrap_or_default());
                    positions.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
                }
                Err(e) => {
                    eprintln!("loadgen: consume: {e}");
                    break;
                }
            }
            n += 1;
            if n >= batch {
                break;
            }
            next = consumer.recv().now_or_never();
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for ((topic, p), o) in std::mem::take(&mut positions) {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(o))
                .context("offset")?;
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            eprintln!("loadgen: store offsets: {e}");
        }
    }
    let end = CpuSnap::take(&t.pids);
    Ok((t, end))
}

async fn recv_amqp(
    conn: Connection,
    mut consumer: lapin::Consumer,
    max: usize,
    mut t: Tally,
) -> anyhow::Result<(Tally, CpuSnap)> {
    while !t.done() && !t.idle() {
        let first = match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
            Ok(d) => d,
            Err(_) => continue,
        };
        let mut next = Some(first);
        let mut taken = 0;
        let mut last = None;
        // Like the bridge: what the client holds already joins the batch, one ack covers it.
        while let Some(item) = next.take() {
            let d = item
                .context("the broker cancelled the consumer")?
                .context("consume")?;
            t.on(&d.data);
            taken += 1;
            last = Some(d.acker);
            if taken >= max {
                break;
            }
            next = consumer.next().now_or_never();
        }
        if let Some(acker) = last {
            let open = acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .context("ack")?;
            ensure!(open, "the channel closed before an ack");
        }
    }
    let end = CpuSnap::take(&t.pids);
    let _ = conn.close(200, "done".into()).await;
    Ok((t, end))
}

// ---------------------------------------------------------------------------------------------
// bridge-send

/// Writes the records of one run; returns when all are acknowledged (and forwarded).
pub async fn send(o: &SendOpts) -> anyhow::Result<BridgeReport> {
    ensure!(o.run.payload >= 8, "--payload must be at least 8");
    let deadline = Instant::now() + Duration::from_secs_f64(o.run.timeout);
    let mut r = BridgeReport::new(&o.run, "send");
    let (before, end) = match o.to {
        Target::Kafka => send_kafka(o, &mut r).await?,
        Target::Amqp => send_amqp(o, &mut r).await?,
        Target::Mqtt => send_mqtt(o, &mut r, deadline).await?,
    };
    r.seconds = (end.at - before.at).as_secs_f64();
    r.rate = r.received as f64 / r.seconds.max(1e-9);
    r.start_unix = Some(unix(before.at));
    r.lost = o.run.count - r.received;
    end.fill(&before, &mut r);
    Ok(r)
}

async fn send_kafka(o: &SendOpts, r: &mut BridgeReport) -> anyhow::Result<(CpuSnap, CpuSnap)> {
    let p = kafka_producer(
        need(&o.bootstrap, "--bootstrap")?,
        o.linger_ms,
        o.idempotent,
    )?;
    let topic = need(&o.topic, "--topic")?;
    // One probe record first, acknowledged before the clock starts: metadata, connections and
    // the idempotent producer's id are in place.
    let probe = payload(PROBE, o.run.payload);
    p.send(
        FutureRecord::<(), _>::to(topic).payload(&probe),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("warm-up record: {e}"))?;
    let before = CpuSnap::take(&o.run.cpu);
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut acked = 0u64;
    let mut body = payload(0, o.run.payload);
    for seq in 0..o.run.count {
        body[..8].copy_from_slice(&seq.to_le_bytes());
        loop {
            match p.send_result(FutureRecord::<(), _>::to(topic).payload(&body)) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's queue is full: wait for the oldest acknowledgement.
                    let f = pending
                        .pop_front()
                        .context("queue full with nothing pending")?;
                    acked += delivered(f).await?;
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
    }
    for f in pending {
        acked += delivered(f).await?;
    }
    let end = CpuSnap::take(&o.run.cpu);
    r.received = acked;
    Ok((before, end))
}

async fn delivered(f: DeliveryFuture) -> anyhow::Result<u64> {
    match f.await {
        Ok(Ok(_)) => Ok(1),
        Ok(Err((e, _))) => bail!("delivery: {e}"),
        Err(_) => bail!("the producer went away"),
    }
}

async fn send_amqp(o: &SendOpts, r: &mut BridgeReport) -> anyhow::Result<(CpuSnap, CpuSnap)> {
    let (conn, ch) = amqp_connect(need(&o.amqp_url, "--amqp-url")?).await?;
    let queue = need(&o.queue, "--queue")?;
    let before = CpuSnap::take(&o.run.cpu);
    let mut inflight = FuturesUnordered::new();
    let mut done = 0u64;
    for seq in 0..o.run.count {
        while inflight.len() >= o.inflight.max(1) {
            if let Some(res) = inflight.next().await {
                let () = res?;
                done += 1;
            }
        }
        let ch = ch.clone();
        let body = payload(seq, o.run.payload);
        inflight.push(async move { amqp_publish(&ch, queue, &body).await });
    }
    while let Some(res) = inflight.next().await {
        let () = res?;
        done += 1;
    }
    let end = CpuSnap::take(&o.run.cpu);
    r.received = done;
    let _ = conn.close(200, "done".into()).await;
    Ok((before, end))
}

/// The `forwarded` counter of sink `name` in the node's `GET /v1/bridges`.
async fn forwarded(http: &str, name: &str) -> anyhow::Result<u64> {
    let mut s = tokio::net::TcpStream::connect(http)
        .await
        .with_context(|| format!("connect to {http}"))?;
    let req = format!("GET /v1/bridges HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET /v1/bridges: {head}");
    // The body may be chunked: take the JSON array between the first '[' and the last ']'.
    let json = &body
        [body.find('[').context("no JSON array")?..=body.rfind(']').context("no JSON array")?];
    let v: serde_json::Value = serde_json::from_str(json).context("parse /v1/bridges")?;
    let b = v
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == name && b["role"] == "sink"))
        .with_context(|| format!("no sink {name:?} in /v1/bridges"))?;
    Ok(b["forwarded"].as_u64().unwrap_or(0))
}

async fn send_mqtt(
    o: &SendOpts,
    r: &mut BridgeReport,
    deadline: Instant,
) -> anyhow::Result<(CpuSnap, CpuSnap)> {
    let addr = need(&o.mqtt, "--mqtt")?;
    let topic = need(&o.topic, "--topic")?.as_bytes().to_vec();
    let sink = match (&o.http, &o.sink) {
        (Some(h), Some(s)) => Some((h.clone(), s.clone())),
        (None, None) => None,
        _ => bail!("--http and --sink go together"),
    };
    let mut conn = mqtt::Conn::connect(addr, &format!("bench-send-{}", std::process::id())).await?;
    // One probe first, acknowledged (and forwarded) before the clock starts.
    conn.push_publish_qos1(&topic, 1, &payload(PROBE, o.run.payload));
    conn.flush().await?;
    let mut probe_acked = false;
    while !probe_acked {
        ensure!(
            Instant::now() < deadline,
            "no PUBACK for the warm-up message"
        );
        conn.read_packets(|p| probe_acked |= matches!(p, Packet::PubAck(1)))
            .await?;
    }
    let base = match &sink {
        Some((h, s)) => {
            let mut f = forwarded(h, s).await?;
            while f < 1 {
                ensure!(
                    Instant::now() < deadline,
                    "the sink did not forward the warm-up message"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
                f = forwarded(h, s).await?;
            }
            f
        }
        None => 0,
    };

    let before = CpuSnap::take(&o.run.cpu);
    let count = o.run.count;
    let window = (o.inflight as u64).clamp(1, 65_000);
    let mut in_use = vec![false; 65_536];
    let mut next_id: u16 = 1;
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut body = payload(0, o.run.payload);
    let mut stray = 0u64;
    let mut acks: Vec<u16> = Vec::new();
    while acked < count {
        ensure!(
            Instant::now() < deadline,
            "{acked} of {count} PUBACKs before the timeout"
        );
        while sent < count && sent - acked < window && conn.queued() < 64 * 1024 {
            while in_use[next_id as usize] {
                next_id = next_id.checked_add(1).unwrap_or(1);
            }
            in_use[next_id as usize] = true;
            body[..8].copy_from_slice(&sent.to_le_bytes());
            conn.push_publish_qos1(&topic, next_id, &body);
            next_id = next_id.checked_add(1).unwrap_or(1);
            sent += 1;
        }
        if conn.queued() > 0 {
            conn.flush().await?;
        }
        let on_ack = |p: &Packet<'_>| {
            if let Packet::PubAck(id) = p {
                acks.push(*id);
            }
        };
        if sent < count && sent - acked < window {
            // Room to send more: take whatever acknowledgements are there, never wait.
            if let Some(r) = conn.read_packets(on_ack).now_or_never() {
                r?;
            }
        } else {
            conn.read_packets(on_ack).await?;
        }
        for id in acks.drain(..) {
            if std::mem::replace(&mut in_use[id as usize], false) {
                acked += 1;
            } else {
                stray += 1;
            }
        }
    }
    let acked_at = Instant::now();
    r.acked_s = Some((acked_at - before.at).as_secs_f64());
    let end = match &sink {
        Some((h, s)) => {
            loop {
                let f = forwarded(h, s).await?;
                if f >= base + count {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the sink forwarded {} of {count} before the timeout",
                    f - base
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            CpuSnap::take(&o.run.cpu)
        }
        None => CpuSnap::take(&o.run.cpu),
    };
    if stray > 0 {
        r.note = Some(format!("{stray} PUBACKs for packet ids not in flight"));
    }
    r.received = acked;
    let _ = conn.disconnect().await;
    Ok((before, end))
}

// ---------------------------------------------------------------------------------------------
// bridge-table

/// The role whose rate is the scenario's measurement.
fn measured_role(scenario: &str) -> &'static str {
    if scenario.ends_with("-to-mqtt") {
        "recv"
    } else {
        "send"
    }
}

/// Markdown tables of the lines of `bridge-recv` and `bridge-send`: one row per scenario and
/// mode with the median of each setup and the same-run ratio meshgate / direct, then the cores
/// of the processes named with `--cpu`.
pub fn table(reports: &[BridgeReport], targets: &BTreeMap<String, f64>) -> String {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in reports {
        let k = (r.scenario.clone(), r.mode.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let pick = |scenario: &str, mode: &str, setup: &str, role: &str| -> Vec<&BridgeReport> {
        reports
            .iter()
            .filter(|r| {
                r.scenario == scenario
                    && r.mode == mode
                    && r.setup == setup
                    && r.role == role
                    && r.error.is_none()
            })
            .collect()
    };
    let rates = |v: &[&BridgeReport]| v.iter().map(|r| r.measured()).collect::<Vec<f64>>();
    let per_run = |v: &[&BridgeReport]| {
        v.iter()
            .map(|r| rate(r.measured()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    out.push_str("| scenario | mode | meshgate (rec/s) | per run | direct (rec/s) | per run | meshgate / direct | target |\n");
    out.push_str("|---|---|---:|---|---:|---|---:|---:|\n");
    let mut notes = Vec::new();
    for (scenario, mode) in &keys {
        let role = measured_role(scenario);
        let mg = pick(scenario, mode, "meshgate", role);
        let di = pick(scenario, mode, "direct", role);
        let ratio = match (median(&rates(&mg)), median(&rates(&di))) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let target = targets
            .get(scenario)
            .map_or("–".into(), |t| format!("≥ {t:.1}×"));
        let _ = writeln!(
            out,
            "| {scenario} | {mode} | {} | {} | {} | {} | {ratio} | {target} |",
            spread(&rates(&mg)),
            per_run(&mg),
            spread(&rates(&di)),
            per_run(&di)
        );
        for r in reports
            .iter()
            .filter(|r| &r.scenario == scenario && &r.mode == mode)
        {
            let mut what = Vec::new();
            if let Some(e) = &r.error {
                what.push(format!("failed: {e}"));
            }
            if r.error.is_none() && r.lost > 0 {
                what.push(format!("{} of {} missing", r.lost, r.count));
            }
            if r.duplicates > 0 {
                what.push(format!("{} duplicates", r.duplicates));
            }
            if r.malformed > 0 {
                what.push(format!("{} malformed", r.malformed));
            }
            if let Some(n) = &r.note {
                what.push(n.clone());
            }
            if !what.is_empty() {
                notes.push(format!(
                    "- {scenario} {mode} {} rep {} ({}): {}",
                    r.setup,
                    r.rep,
                    r.role,
                    what.join("; ")
                ));
            }
        }
    }

    // Writers' rates and cores in the measured windows.
    out.push_str(
        "\nThe writer of each run and the cores busy in the measured window (medians):\n\n",
    );
    out.push_str(
        "| scenario | mode | setup | writer (rec/s) | first to last record (rec/s) | window (s) | cores busy in it |\n",
    );
    out.push_str("|---|---|---|---:|---:|---:|---|\n");
    for (scenario, mode) in &keys {
        let role = measured_role(scenario);
        for setup in ["meshgate", "direct"] {
            let measured = pick(scenario, mode, setup, role);
            if measured.is_empty() {
                continue;
            }
            let writer = if role == "recv" {
                spread(&rates(&pick(scenario, mode, setup, "send")))
            } else {
                spread(&rates(&measured))
            };
            let first_last = if role == "recv" {
                spread(&measured.iter().map(|r| r.rate).collect::<Vec<_>>())
            } else {
                "–".into()
            };
            let secs = median(&measured.iter().map(|r| r.seconds).collect::<Vec<_>>())
                .map_or("–".into(), |s| format!("{s:.2}"));
            let mut names: Vec<&str> = Vec::new();
            for r in &measured {
                for n in r.cores.keys() {
                    if !names.contains(&n.as_str()) {
                        names.push(n);
                    }
                }
            }
            let mut cores: Vec<String> = names
                .iter()
                .filter_map(|n| {
                    let v: Vec<f64> = measured
                        .iter()
                        .filter_map(|r| r.cores.get(*n).copied())
                        .collect();
                    median(&v).map(|m| format!("{n} {m:.2}"))
                })
                .collect();
            if let Some(m) = median(&measured.iter().map(|r| r.own_cores).collect::<Vec<_>>()) {
                cores.push(format!("loadgen ({role}) {m:.2}"));
            }
            if let Some(m) = median(&measured.iter().map(|r| r.machine_cores).collect::<Vec<_>>()) {
                cores.push(format!("machine {m:.2}"));
            }
            let _ = writeln!(
                out,
                "| {scenario} | {mode} | {setup} | {writer} | {first_last} | {secs} | {} |",
                cores.join(", ")
            );
        }
    }
    let others: Vec<f64> = reports
        .iter()
        .filter(|r| r.error.is_none() && r.role == measured_role(&r.scenario))
        .map(|r| other_cores(r, reports))
        .collect();
    if let Some(note) = table::other_work_note(&others) {
        notes.push(note);
        for r in reports
            .iter()
            .filter(|r| r.error.is_none() && r.role == measured_role(&r.scenario))
        {
            let o = other_cores(r, reports);
            if o > 0.25 {
                notes.push(format!(
                    "  - {} {} {} rep {}: {o:.2} cores of other work",
                    r.scenario, r.mode, r.setup, r.rep
                ));
            }
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

/// Cores busy in `r`'s measured window that none of its named processes, nor the command
/// itself, nor (for a receiver) the same run's writer used: other work on the machine.
fn other_cores(r: &BridgeReport, all: &[BridgeReport]) -> f64 {
    let mut other = r.machine_cores - r.cores.values().sum::<f64>() - r.own_cores;
    if r.role == "recv"
        && let (Some(first), Some(last)) = (r.first_unix, r.last_unix)
        && let Some(w) = all.iter().find(|w| {
            w.role == "send"
                && w.scenario == r.scenario
                && w.mode == r.mode
                && w.setup == r.setup
                && w.rep == r.rep
        })
        && let Some(start) = w.start_unix
    {
        // The writer's average cores over the part of the window it was running in.
        let overlap = (last.min(start + w.seconds) - first.max(start)).max(0.0);
        if last > first {
            other -= w.own_cores * overlap / (last - first);
        }
    }
    other.max(0.0)
}

/// Parses the JSON lines of bridge commands (other lines are skipped).
pub fn parse_lines(text: &str) -> anyhow::Result<Vec<BridgeReport>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let r: BridgeReport =
            serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(scenario: &str, setup: &str, role: &str, rate: f64) -> BridgeReport {
        BridgeReport {
            scenario: scenario.into(),
            setup: setup.into(),
            mode: "live".into(),
            role: role.into(),
            count: 10,
            received: 10,
            rate,
            seconds: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn ratios_use_the_measured_role() {
        let reports = vec![
            rep("kafka-to-mqtt", "meshgate", "recv", 80.0),
            rep("kafka-to-mqtt", "meshgate", "send", 500.0),
            rep("kafka-to-mqtt", "direct", "recv", 100.0),
            rep("kafka-to-mqtt", "direct", "send", 500.0),
            rep("mqtt-to-kafka", "meshgate", "send", 30.0),
            rep("mqtt-to-kafka", "direct", "send", 60.0),
        ];
        let targets = BTreeMap::from([("kafka-to-mqtt".to_string(), 0.8)]);
        let md = table(&reports, &targets);
        assert!(
            md.contains("| kafka-to-mqtt | live | 80 | 80 | 100 | 100 | 0.80× | ≥ 0.8× |"),
            "{md}"
        );
        assert!(
            md.contains("| mqtt-to-kafka | live | 30 | 30 | 60 | 60 | 0.50× | – |"),
            "{md}"
        );
    }

    #[test]
    fn tally_counts_distinct_duplicates_and_probes() {
        let run = RunInfo::parse_from([
            "x",
            "--scenario",
            "s",
            "--setup",
            "d",
            "--count",
            "3",
            "--payload",
            "10",
        ]);
        let probes = Arc::new(AtomicBool::new(false));
        let mut t = Tally::new(&run, probes.clone());
        t.on(&payload(PROBE, 10));
        assert!(probes.load(Ordering::Relaxed));
        t.on(&payload(0, 10));
        t.on(&payload(0, 10));
        t.on(&payload(2, 10));
        t.on(&payload(7, 10));
        t.on(&payload(1, 9));
        assert!(!t.done());
        t.on(&payload(1, 10));
        assert!(t.done());
        assert_eq!((t.distinct, t.duplicates, t.malformed), (3, 1, 2));
    }
}
