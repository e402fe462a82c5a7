//! Kafka clusters as members of the mesh (rdkafka, bundled librdkafka).
//!
//! - A **source** consumes Kafka topics with a consumer group of the cluster's app id and
//!   publishes every record as a guaranteed event on a topic built by a template
//!   (`orders/{header.region}/{key}`); key, headers and timestamp travel in the envelope. A
//!   batch's offsets are stored for commit only after the node stored the batch durably (at
//!   least once); records of one partition are published in order.
//! - A **sink** is a journaled subscription ([`meshgate_bridge::sink`]) produced into a topic by
//!   an idempotent producer with key, headers and timestamp restored; the journal releases an
//!   event only after Kafka acknowledged it.
//! - **Loops**: every record a sink writes carries `meshgate-origin`, which sources never take;
//!   a sink never writes an event back into the cluster it came from.
//! - **Replay** republishes a time or offset range of a topic, filtered by a wildcard.
//! - One **probe** per cluster fetches metadata every 2 s: the state (`up`/`down`) and last error
//!   of every source and sink of the cluster in `GET /v1/bridges`. librdkafka itself reconnects
//!   with backoff; nothing is skipped while the cluster is away (sources resume from committed
//!   offsets, sinks keep their journal).

pub mod admin;
mod batch;
mod config;
mod produce;
mod replay;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use meshgate_bridge::{BridgeContext, BridgeStatus, StartError};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::task::JoinHandle;

pub use config::{KafkaConfig, KafkaSink, KafkaSource};
pub use meshgate_api::{ReplayReport, ReplayRequest};
pub use replay::replay;

/// How often the probe asks the cluster for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// librdkafka callbacks: errors go to the statuses of the cluster's sources and sinks.
#[derive(Clone)]
pub(crate) struct Ctx {
    statuses: Arc<Vec<Arc<BridgeStatus>>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        let all_down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        );
        for s in self.statuses.iter() {
            if all_down {
                s.down(format!("{error}: {reason}"));
            } else {
                s.error(format!("{error}: {reason}"));
            }
        }
    }
}

impl ConsumerContext for Ctx {}

/// Starts the sources, sinks and the probe of one cluster.
pub fn start(ctx: &BridgeContext, cfg: &KafkaConfig) -> Result<Vec<JoinHandle<()>>, StartError> {
    cfg.validate().map_err(StartError::Config)?;
    let cfg = Arc::new(cfg.clone());
    let mut statuses = Vec::new();
    for s in &cfg.source {
        statuses.push(BridgeStatus::new(
            "kafka",
            &cfg.name,
            &s.name,
            "source",
            s.topics.join(","),
        ));
    }
    for s in &cfg.sink {
        statuses.push(BridgeStatus::new(
            "kafka",
            &cfg.name,
            &s.name,
            "sink",
            s.filter.clone(),
        ));
    }
    for s in &statuses {
        ctx.bridges.add(s.clone());
    }
    let kctx = Ctx {
        statuses: Arc::new(statuses.clone()),
    };
    let mut tasks = Vec::new();
    let mut it = statuses.into_iter();
    for s in &cfg.source {
        let status = it.next().expect("one status per source");
        tasks.push(tokio::spawn(source::run(
            ctx.clone(),
            cfg.clone(),
            s.clone(),
            status,
            kctx.clone(),
        )));
    }
    for s in &cfg.sink {
        let status = it.next().expect("one status per sink");
        let journal = ctx.sink_journal("kafka", &cfg.name, &s.name)?;
        tasks.push(sink::start(ctx, &cfg, s, status, kctx.clone(), journal)?);
    }
    if !cfg.source.is_empty() || !cfg.sink.is_empty() {
        tasks.push(tokio::spawn(probe(ctx.clone(), cfg, kctx)));
    }
    Ok(tasks)
}

/// Asks the cluster for metadata every [`PROBE_EVERY`]: up when it answers, down with the
/// error when it does not.
async fn probe(ctx: BridgeContext, cfg: Arc<KafkaConfig>, kctx: Ctx) {
    let mut shutdown = ctx.shutdown.clone();
    let client: BaseConsumer<Ctx> = match cfg.client_config().create_with_context(kctx.clone()) {
        Ok(c) => c,
        Err(e) => {
            for s in kctx.statuses.iter() {
                s.down(format!("cannot create a Kafka client: {e}"));
            }
            return;
        }
    };
    let client = Arc::new(client);
    loop {
        let c = client.clone();
        let r = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            c.fetch_metadata(None, PROBE_EVERY)
                .map(|m| m.brokers().len())
        })
        .await;
        for s in kctx.statuses.iter() {
            match &r {
                Ok(Ok(_)) => s.up(),
                Ok(Err(e)) => s.down(format!("cluster unreachable: {e}")),
                Err(e) => s.down(format!("probe failed: {e}")),
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
