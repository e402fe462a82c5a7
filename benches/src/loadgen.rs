//! `loadgen`: the end-to-end load harness. `loadgen run` drives ONE already-running broker (MQTT
//! 3.1.1 or NATS) with one workload and prints one JSON line of results; `loadgen summarize`
//! turns the lines of many runs into markdown tables. `benches/run-load.sh` starts the brokers
//! and calls both. With `--pub-addr` and `--sub-addr` the publisher and the subscribers use two
//! linked brokers (nodes of a mesh); `loadgen probe` and `loadgen propagation` measure across
//! nodes too, and `benches/run-mesh.sh` drives them.
//!
//! The clients are hand-rolled on raw TCP (batched writes) so that the load generator spends far
//! less CPU per message than any broker it measures; `--client rumqttc` cross-checks the MQTT
//! numbers with a real client library. The workloads are QoS 0, except `qos1` and the
//! `qos1-*` commands (guaranteed delivery; `benches/run-qos1.sh` and
//! `benches/run-guaranteed-mesh.sh` drive them), and `loadgen table` tabulates those runs. The
//! `bridge-*` commands measure a node's Kafka and AMQP bridges against those brokers' own
//! clients (`benches/run-bridges.sh`).

mod bridges;
mod client;
mod flood;
mod inbuf;
mod latency;
mod mqtt;
mod nats;
mod procstat;
mod propagation;
mod qos1;
mod report;
mod rumqttc_check;
mod summary;
mod table;
mod throughput;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::client::Proto;
use crate::procstat::CpuClock;
use crate::report::Report;
use crate::throughput::Topics;

/// Load generator for MQTT brokers and nats-server.
#[derive(Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload against one running broker and print one JSON line.
    Run(Opts),
    /// Open loop: publish `--count` messages as fast as the socket takes them and count what
    /// every subscriber receives, in order; print one JSON line with the delivered share.
    Flood(flood::FloodOpts),
    /// Markdown tables of the JSON lines of `loadgen flood`: per workload, every run, the
    /// median rate and lowest delivered share per broker, same-run ratios to `--baseline`.
    FloodTable {
        /// Files of JSON lines written by `loadgen flood`.
        #[arg(required = true)]
        files: Vec<String>,
        /// Broker whose median the others are compared with.
        #[arg(long, default_value = "nats-server")]
        baseline: String,
        /// Row order, comma separated.
        #[arg(long, value_delimiter = ',')]
        order: Vec<String>,
    },
    /// Wait until a message published at `--pub-addr` reaches a subscriber at `--sub-addr`
    /// (e.g. across two linked nodes); print the seconds it took.
    Probe(propagation::ProbeOpts),
    /// Subscription propagation: subscribe at one address while publishers at the others
    /// publish continuously; time from SUBACK to each publisher's first delivery. MQTT only.
    Propagation(propagation::PropagationOpts),
    /// Publish `--count` QoS 1 messages and return when all are acknowledged; print one JSON
    /// line (to fill a backlog).
    Qos1Publish(qos1::PublishOpts),
    /// Make a persistent QoS 1 subscription and leave it; print the seconds the probe took.
    Qos1Subscribe(qos1::SubscribeOpts),
    /// Reconnect to a persistent session (retrying until the broker answers) and receive until
    /// every one of `--count` messages arrived; print one JSON line with wall-clock times.
    Qos1Receive(qos1::ReceiveOpts),
    /// Markdown table, one row per label, of JSON lines of `loadgen run`, with same-run ratios
    /// to the `--ratio-to` labels.
    Table {
        /// Files of JSON lines written by `loadgen run`.
        #[arg(required = true)]
        files: Vec<String>,
        /// Row order, comma separated.
        #[arg(long, value_delimiter = ',')]
        order: Vec<String>,
        /// Labels to compare every row with (one column each).
        #[arg(long, value_delimiter = ',')]
        ratio_to: Vec<String>,
    },
    /// Receive `--count` records from Kafka or AMQP, directly or through a node over MQTT,
    /// after a probe came through (`ready` on stdout); print one JSON line.
    BridgeRecv(bridges::RecvOpts),
    /// Write `--count` records into Kafka, AMQP, or a node over MQTT (optionally until its sink
    /// forwarded them); print one JSON line.
    BridgeSend(bridges::SendOpts),
    /// Declare the AMQP queue of a bridge run.
    BridgeSetup(bridges::SetupOpts),
    /// Markdown tables of the JSON lines of `bridge-recv` and `bridge-send`: medians per
    /// scenario, mode and setup, same-run ratios meshgate / direct.
    BridgeTable {
        /// Files of JSON lines.
        #[arg(required = true)]
        files: Vec<String>,
        /// `SCENARIO=RATIO` targets shown beside the ratios (repeatable).
        #[arg(long)]
        target: Vec<String>,
    },
    /// Markdown table of the JSON lines that `loadgen propagation` printed.
    PropagationSummary {
        /// Files of JSON lines written by `loadgen propagation`.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Read JSON lines (files, or stdin with `-`) and print markdown tables of medians.
    Summarize {
        /// Files of JSON lines written by `loadgen run`.
        #[arg(required = true)]
        files: Vec<String>,
        /// Broker whose same-run ratios against every other broker are shown.
        #[arg(long, default_value = "meshgate")]
        baseline: String,
        /// Column order, comma separated.
        #[arg(long, value_delimiter = ',')]
        order: Vec<String>,
        /// Also show payload bytes per second (MB/s) for one-to-one.
        #[arg(long)]
        bytes: bool,
    },
}

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// 1 publisher, 1 subscriber, one topic.
    OneToOne,
    /// 1 publisher, `--subscribers` subscribers on one topic.
    FanOut,
    /// 1 subscriber holding `--subscriptions` literal subscriptions; each message goes to a
    /// random one of them.
    ManySubs,
    /// Open loop at `--rate` messages per second; latency percentiles.
    Latency,
    /// Round trip: open loop at `--rate` from `--pub-addr`, echoed by a client at `--sub-addr`
    /// on another topic back to a subscriber at `--pub-addr`; latency percentiles.
    Rtt,
    /// 1 publisher, 1 subscriber, one topic, QoS 1 both ways: at most `--inflight` publishes
    /// unacknowledged, every delivery acknowledged; PUBACK latency percentiles. MQTT only.
    Qos1,
}

/// Which MQTT client library drives the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// The hand-rolled batched client (both protocols).
    Raw,
    /// rumqttc 0.25 (MQTT, `one-to-one` only): a cross-check of the raw client.
    Rumqttc,
}

/// Options of `loadgen run`.
#[derive(Parser, Debug)]
pub struct Opts {
    /// Protocol to speak.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Broker address, HOST:PORT (of publishers and subscribers unless overridden below).
    #[arg(long, required_unless_present_all = ["pub_addr", "sub_addr"])]
    addr: Option<String>,
    /// Address the publisher connects to (default `--addr`): publish on one node...
    #[arg(long)]
    pub_addr: Option<String>,
    /// ...and subscribe on another (default `--addr`). When the two differ, every run first
    /// waits (up to `--ready-timeout`) until a probe message crosses from one to the other.
    #[arg(long)]
    sub_addr: Option<String>,
    /// Seconds allowed for the first probe to cross from `--pub-addr` to `--sub-addr`.
    #[arg(long, default_value_t = 15.0)]
    ready_timeout: f64,
    /// Workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Payload size in bytes (at least 8; 24 for latency).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Messages allowed in flight beyond the slowest subscriber (throughput workloads).
    #[arg(long, default_value_t = 8192)]
    window: u64,
    /// QoS 1 publishes allowed unacknowledged (`qos1`).
    #[arg(long, default_value_t = 256)]
    inflight: u64,
    /// Session of the QoS 1 subscriber (`qos1`).
    #[arg(long, value_enum, default_value_t = qos1::Session::Clean)]
    session: qos1::Session,
    /// Subscriber connections for fan-out.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Subscriptions for many-subs.
    #[arg(long, default_value_t = 100_000)]
    subscriptions: usize,
    /// Topic filters per MQTT SUBSCRIBE packet.
    #[arg(long, default_value_t = 100)]
    sub_batch: usize,
    /// Seconds allowed for subscribing (many-subs on a slow broker can take minutes).
    #[arg(long, default_value_t = 120)]
    subscribe_timeout: u64,
    /// Messages per second for latency.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// PID of the broker, to report its CPU seconds; several (comma separated) are summed,
    /// e.g. both nodes of a two-node mesh.
    #[arg(long, value_delimiter = ',')]
    broker_pid: Vec<u32>,
    /// Name of the broker in the output.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Client implementation.
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    client: ClientKind,
}

impl Opts {
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup.max(0.0))
    }

    fn subscribe_timeout(&self) -> Duration {
        Duration::from_secs(self.subscribe_timeout)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.001))
    }

    /// Where the publisher connects.
    fn pub_addr(&self) -> &str {
        self.pub_addr
            .as_deref()
            .or(self.addr.as_deref())
            .unwrap_or_default()
    }

    /// Where the subscribers connect.
    fn sub_addr(&self) -> &str {
        self.sub_addr
            .as_deref()
            .or(self.addr.as_deref())
            .unwrap_or_default()
    }

    /// True when publisher and subscribers are on different brokers (nodes of a mesh).
    fn cross(&self) -> bool {
        self.pub_addr() != self.sub_addr()
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.ready_timeout.max(0.001))
    }
}

/// Counters and CPU clocks at one instant; two of them make a report.
pub struct Snapshot {
    at: Instant,
    sent: u64,
    delivered: u64,
    /// CPU seconds of each broker process, in `--broker-pid` order.
    broker_cpu: Vec<f64>,
    own_cpu: f64,
    machine_busy: f64,
}

impl Snapshot {
    /// Reads the clocks now.
    pub fn take(opts: &Opts, sent: u64, delivered: u64) -> anyhow::Result<Self> {
        let broker_cpu = opts
            .broker_pid
            .iter()
            .map(|pid| {
                CpuClock::new(Some(*pid))
                    .seconds()
                    .with_context(|| format!("CPU of broker {pid} (is it still running?)"))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        Ok(Self {
            at: Instant::now(),
            sent,
            delivered,
            broker_cpu,
            own_cpu: CpuClock::new(None).seconds()?,
            machine_busy: procstat::machine_busy_seconds()?,
        })
    }

    /// The report for the window from `before` to `self`.
    pub fn report_since(&self, before: &Snapshot, opts: &Opts, workload: &str) -> Report {
        let seconds = (self.at - before.at).as_secs_f64();
        let sent = self.sent - before.sent;
        let delivered = self.delivered - before.delivered;
        let each: Vec<f64> = self
            .broker_cpu
            .iter()
            .zip(&before.broker_cpu)
            .map(|(a, b)| a - b)
            .collect();
        let broker_cpu_s = (!each.is_empty()).then(|| each.iter().sum::<f64>());
        let loadgen_cpu_s = self.own_cpu - before.own_cpu;
        let machine = self.machine_busy - before.machine_busy;
        // Ticks are 10 ms: clamp the rounding noise at zero.
        let other_cpu_s = (machine - loadgen_cpu_s - broker_cpu_s.unwrap_or(0.0)).max(0.0);
        Report {
            label: opts.label.clone(),
            proto: Some(opts.proto),
            workload: workload.to_string(),
            payload_bytes: opts.payload,
            seconds,
            sent,
            delivered,
            sent_per_s: sent as f64 / seconds,
            delivered_per_s: delivered as f64 / seconds,
            broker_cpu_s,
            delivered_per_broker_cpu_s: broker_cpu_s
                .filter(|c| *c > 0.0)
                .map(|c| delivered as f64 / c),
            loadgen_cpu_s,
            other_cpu_s,
            broker_cpu_each_s: (each.len() > 1).then_some(each),
            cross_node: opts.cross(),
            ..Report::default()
        }
    }
}

async fn run(opts: Opts) -> anyhow::Result<Report> {
    if opts.payload < 8 {
        bail!("--payload must be at least 8 bytes (the sequence number)");
    }
    let p = opts.proto;
    if opts.client == ClientKind::Rumqttc {
        if p != Proto::Mqtt || opts.workload != Workload::OneToOne {
            bail!("--client rumqttc supports only --proto mqtt --workload one-to-one");
        }
        return rumqttc_check::one_to_one(&opts).await;
    }
    match opts.workload {
        Workload::OneToOne => {
            let topic = p.topic(&["bench", "one"]);
            throughput::run(
                &opts,
                "one-to-one",
                vec![vec![topic.clone()]],
                Topics::Fixed(topic.into_bytes()),
            )
            .await
        }
        Workload::FanOut => {
            let topic = p.topic(&["bench", "fan"]);
            let filters = vec![vec![topic.clone()]; opts.subscribers.max(1)];
            throughput::run(&opts, "fan-out", filters, Topics::Fixed(topic.into_bytes())).await
        }
        Workload::ManySubs => {
            let n = opts.subscriptions.max(1);
            let filters = (0..n)
                .map(|i| p.topic(&["bench", "sub", &i.to_string()]))
                .collect();
            let prefix = format!("{}{}", p.topic(&["bench", "sub"]), p.separator()).into_bytes();
            throughput::run(
                &opts,
                "many-subs",
                vec![filters],
                Topics::Random {
                    prefix,
                    count: n as u64,
                },
            )
            .await
        }
        Workload::Latency => latency::run(&opts, opts.rate, false).await,
        Workload::Rtt => latency::run(&opts, opts.rate, true).await,
        Workload::Qos1 => {
            if p != Proto::Mqtt {
                bail!("--workload qos1 is MQTT only");
            }
            qos1::run(&opts).await
        }
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        Ok(std::io::read_to_string(std::io::stdin())?)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {file}"))
    }
}

fn summarize(
    files: &[String],
    baseline: &str,
    order: &[String],
    bytes: bool,
) -> anyhow::Result<String> {
    let mut reports = Vec::new();
    for file in files {
        let text = read_input(file)?;
        reports.extend(summary::parse_lines(&text).with_context(|| format!("parse {file}"))?);
    }
    Ok(summary::render(&reports, order, baseline, bytes))
}

fn bridge_table(files: &[String], targets: &[String]) -> anyhow::Result<String> {
    let mut reports = Vec::new();
    for file in files {
        let text = read_input(file)?;
        reports.extend(bridges::parse_lines(&text).with_context(|| format!("parse {file}"))?);
    }
    let mut t = std::collections::BTreeMap::new();
    for s in targets {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--target {s}: expected SCENARIO=RATIO"))?;
        t.insert(
            k.to_string(),
            v.parse::<f64>().with_context(|| format!("--target {s}"))?,
        );
    }
    Ok(bridges::table(&reports, &t))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Summarize {
            files,
            baseline,
            order,
            bytes,
        } => summarize(&files, &baseline, &order, bytes).map(|md| print!("{md}")),
        Command::BridgeRecv(o) => runtime()
            .and_then(|rt| rt.block_on(bridges::recv(&o)))
            .and_then(|r| {
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }),
        Command::BridgeSend(o) => runtime()
            .and_then(|rt| rt.block_on(bridges::send(&o)))
            .and_then(|r| {
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }),
        Command::BridgeSetup(o) => runtime().and_then(|rt| rt.block_on(bridges::setup(&o))),
        Command::Flood(o) => runtime().and_then(|rt| rt.block_on(flood::run(o))),
        Command::FloodTable {
            files,
            baseline,
            order,
        } => flood::table(&files, &baseline, &order),
        Command::BridgeTable { files, target } => {
            bridge_table(&files, &target).map(|md| print!("{md}"))
        }
        Command::PropagationSummary { files } => files
            .iter()
            .map(|f| read_input(f))
            .collect::<anyhow::Result<Vec<String>>>()
            .and_then(|texts| propagation::summarize(&texts.concat()))
            .map(|md| print!("{md}")),
        Command::Table {
            files,
            order,
            ratio_to,
        } => files
            .iter()
            .map(|f| read_input(f).and_then(|t| summary::parse_lines(&t)))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|v| print!("{}", table::render(&v.concat(), &order, &ratio_to))),
        Command::Qos1Publish(p) => runtime()
            .and_then(|rt| rt.block_on(qos1::publish(&p)))
            .and_then(|r| {
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }),
        Command::Qos1Subscribe(p) => runtime()
            .and_then(|rt| rt.block_on(qos1::subscribe(&p)))
            .map(|s| println!("{s:.6}")),
        Command::Qos1Receive(p) => runtime()
            .and_then(|rt| rt.block_on(qos1::receive(&p)))
            .and_then(|r| {
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }),
        Command::Probe(p) => runtime()
            .and_then(|rt| rt.block_on(propagation::probe(&p)))
            .map(|s| println!("{s:.6}")),
        Command::Propagation(p) => runtime()
            .and_then(|rt| rt.block_on(propagation::run(&p)))
            .and_then(|r| {
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }),
        Command::Run(opts) => runtime()
            .and_then(|rt| rt.block_on(run(opts)))
            .and_then(|report| {
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
