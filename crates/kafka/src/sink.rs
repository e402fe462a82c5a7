//! A sink: a mesh subscription produced into Kafka by an idempotent producer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meshgate_bridge::template::{Output, RecordVars, Template, levels_to_dots};
use meshgate_bridge::{
    BridgeContext, BridgeStatus, SinkError, SinkSpec, SinkTarget, StartError, origin, spawn_sink,
};
use meshgate_proto::Envelope;
use meshgate_store::Journal;
use meshgate_topic::Filter;
use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::Ctx;
use crate::config::{KafkaConfig, KafkaSink, SINK_VARS};
use crate::produce::{self, Record, SinkProducer};

/// Longest wait for Kafka to acknowledge a batch before the producer is replaced and the batch
/// written again (it stays in the journal meanwhile).
const ACK_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn start(
    ctx: &BridgeContext,
    cfg: &KafkaConfig,
    sink: &KafkaSink,
    status: Arc<BridgeStatus>,
    kctx: Ctx,
    journal: Option<Journal>,
) -> Result<JoinHandle<()>, StartError> {
    let at =
        |e: String| StartError::Config(format!("kafka {:?} sink {:?}: {e}", cfg.name, sink.name));
    let mut pc = cfg.client_config();
    pc.set(
        "enable.idempotence",
        if sink.idempotent { "true" } else { "false" },
    );
    // Never give up on a record: while the cluster is away the producer keeps retrying and the
    // sink's journal holds the rest. Order per partition is kept by idempotence.
    pc.set("message.timeout.ms", "0");
    pc.set("linger.ms", "2");
    let pctx = SinkCtx {
        ctx: kctx,
        acks: Arc::new(Acks::default()),
    };
    let producer: ThreadedProducer<SinkCtx> = pc
        .create_with_context(pctx.clone())
        .map_err(|e| at(format!("cannot create the producer: {e}")))?;
    let partitioner = produce::partitioner(pc.get("partitioner"));
    let target = KafkaTarget {
        producer: SinkProducer::new(producer, partitioner),
        config: pc,
        pctx,
        next_batch: 0,
        per_topic: None,
        topic: Template::parse(&sink.topic_template, SINK_VARS).map_err(|e| at(e.to_string()))?,
        key: match &sink.key_template {
            Some(k) => Some(Template::parse(k, SINK_VARS).map_err(|e| at(e.to_string()))?),
            None => None,
        },
        node: ctx.node.clone(),
        scratch: String::new(),
        key_scratch: String::new(),
        origin_scratch: String::new(),
    };
    let spec = SinkSpec {
        protocol: "kafka",
        member: cfg.name.clone(),
        filter: Filter::parse(&sink.filter).map_err(|e| at(e.to_string()))?,
        batch: sink.batch,
        mailbox: 4096,
        journal,
        app_id: cfg.app_id().to_string(),
    };
    Ok(spawn_sink(
        ctx.broker.clone(),
        spec,
        status,
        target,
        ctx.shutdown.clone(),
    ))
}

/// Batches whose records Kafka has not all acknowledged yet: records left and the first error,
/// by batch number. Delivery reports (on librdkafka's polling thread) count down; the sink
/// waits on `done`. Records carry their batch number as the delivery opaque: no allocation,
/// channel or future per record.
#[derive(Default)]
struct Acks {
    batches: Mutex<HashMap<usize, (usize, Option<SinkError>)>>,
    done: Notify,
}

/// librdkafka callbacks of a sink's producer: errors to the statuses, deliveries to [`Acks`].
#[derive(Clone)]
pub(crate) struct SinkCtx {
    ctx: Ctx,
    acks: Arc<Acks>,
}

impl ClientContext for SinkCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.ctx.error(error, reason);
    }
}

impl ProducerContext for SinkCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        let mut batches = self.acks.batches.lock();
        let Some((left, error)) = batches.get_mut(&batch) else {
            return;
        };
        if let Err((e, _)) = result
            && error.is_none()
        {
            *error = Some(match e.rdkafka_error_code() {
                Some(code) => classify(code),
                None => SinkError::Unavailable(format!("produce: {e}")),
            });
        }
        *left = left.saturating_sub(1);
        if *left == 0 {
            drop(batches);
            self.acks.done.notify_waiters();
        }
    }
}

struct KafkaTarget {
    producer: SinkProducer,
    /// To make a new producer after a fatal error (e.g. the cluster lost the idempotent
    /// producer's state).
    config: rdkafka::ClientConfig,
    pctx: SinkCtx,
    next_batch: usize,
    /// For a topic template of literals and `{topic}`: the last mesh topic and its Kafka topic.
    per_topic: Option<(String, String)>,
    topic: Template,
    key: Option<Template>,
    node: String,
    scratch: String,
    key_scratch: String,
    /// The origin header's value of the record being produced.
    origin_scratch: String,
}

impl KafkaTarget {
    /// Renders the Kafka topic (into `scratch`) and, if the event has no key, the key template
    /// (into `key_scratch`); returns whether a rendered key applies.
    fn names(&mut self, e: &Envelope) -> bool {
        if self.key.is_none()
            && let Some((from, to)) = &self.per_topic
            && *from == e.topic
        {
            self.scratch.clone_from(to);
            return false;
        }
        let dotted = levels_to_dots(&e.topic);
        let headers: Vec<(&str, &[u8])> = e
            .headers
            .iter()
            .map(|h| (h.name.as_str(), &h.value[..]))
            .collect();
        let vars = RecordVars {
            topic: &dotted,
            names: &[],
            key: e.key.as_deref(),
            headers: &headers,
            json: None,
            levels: Some(&e.topic),
        };
        self.topic
            .render(&vars, Output::KafkaTopic, &mut self.scratch);
        if self.topic.only_names(&["topic"]) {
            let cached = self.per_topic.get_or_insert_with(Default::default);
            cached.0.clone_from(&e.topic);
            cached.1.clone_from(&self.scratch);
        }
        match (&self.key, &e.key) {
            (Some(k), None) => {
                k.render(&vars, Output::RoutingKey, &mut self.key_scratch);
                true
            }
            _ => false,
        }
    }
}

impl SinkTarget for KafkaTarget {
    type Pending = usize;

    async fn submit(&mut self, events: &[Arc<Envelope>]) -> Result<Self::Pending, SinkError> {
        let batch = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        self.pctx
            .acks
            .batches
            .lock()
            .insert(batch, (events.len(), None));
        if let Err(e) = self.produce(batch, events).await {
            self.pctx.acks.batches.lock().remove(&batch);
            return Err(e);
        }
        Ok(batch)
    }

    async fn wait(&mut self, batch: Self::Pending) -> Result<(), SinkError> {
        let acks = self.pctx.acks.clone();
        let all = async {
            loop {
                let done = acks.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                {
                    let mut batches = acks.batches.lock();
                    match batches.get(&batch) {
                        Some((0, _)) => {
                            let (_, error) = batches.remove(&batch).unwrap_or_default();
                            return error.map_or(Ok(()), Err);
                        }
                        Some(_) => {}
                        // Never released on an unknown batch: it is written again.
                        None => {
                            return Err(SinkError::Unavailable(
                                "batch no longer tracked (producer replaced)".into(),
                            ));
                        }
                    }
                }
                done.await;
            }
        };
        match tokio::time::timeout(ACK_WAIT, all).await {
            Ok(r) => r,
            Err(_) => {
                self.pctx.acks.batches.lock().remove(&batch);
                Err(SinkError::Unavailable(format!(
                    "no acknowledgement from Kafka within {}s",
                    ACK_WAIT.as_secs()
                )))
            }
        }
    }

    async fn reset(&mut self) {
        // A fatal error ends a producer for good, and an idempotent producer can wedge when
        // the cluster lost its state: the batches are written again by a new producer. What
        // the old one still holds is purged (their reports end the batches in flight), so
        // dropping it does not wait.
        let old = self.producer.producer();
        let fatal = old.client().fatal_error();
        tracing::warn!(?fatal, "Kafka producer replaced");
        old.purge(PurgeConfig::default().queue().inflight());
        let partitioner = produce::partitioner(self.config.get("partitioner"));
        match self.config.create_with_context(self.pctx.clone()) {
            Ok(p) => self.producer = SinkProducer::new(p, partitioner),
            Err(e) => tracing::warn!(error = %e, "cannot make a new producer; keeping the old one"),
        }
        self.pctx.acks.batches.lock().clear();
    }
}

impl KafkaTarget {
    /// Enqueues `events` in librdkafka as batch `batch` (waiting while its queue is full).
    async fn produce(&mut self, batch: usize, events: &[Arc<Envelope>]) -> Result<(), SinkError> {
        self.producer.next_batch();
        for e in events {
            let rendered_key = self.names(e);
            origin::write_origin(&self.node, e, &mut self.origin_scratch);
            let record = Record {
                topic: &self.scratch,
                payload: &e.payload,
                key: if rendered_key {
                    Some(self.key_scratch.as_bytes())
                } else {
                    e.key.as_deref()
                },
                timestamp_ms: e.timestamp_ms as i64,
                headers: &e.headers,
                extra_header: (origin::ORIGIN_HEADER, self.origin_scratch.as_bytes()),
                opaque: batch,
            };
            loop {
                match self.producer.send(&record) {
                    Ok(()) => break,
                    Err(RDKafkaErrorCode::QueueFull) => {
                        // librdkafka's queue is full: let it drain, then try again.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => return Err(classify(e)),
                }
            }
        }
        Ok(())
    }
}

/// A produce error as the sink driver sees it: what the broker refuses for good is told apart
/// from what retrying soon may cure.
fn classify(code: RDKafkaErrorCode) -> SinkError {
    use RDKafkaErrorCode as C;
    let text = format!("produce: {}", KafkaError::MessageProduction(code));
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::PolicyViolation
        | C::UnsupportedForMessageFormat => SinkError::Rejected(text),
        _ => SinkError::Unavailable(text),
    }
}
