//! A source: Kafka topics into the mesh, offsets stored only after the node stored the events.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use meshgate_bridge::template::{Output, RecordVars, Template, dots_to_levels};
use meshgate_bridge::{
    Backoff, BridgeContext, BridgeStatus, Ingress, IngressError, SourceError, origin, retry_later,
};
use meshgate_proto::{Envelope, Header};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::Ctx;
use crate::batch::BatchQueue;
use crate::config::{KafkaConfig, KafkaSource, SOURCE_VARS};

/// Maps Kafka records to envelopes: the topic template and what it needs.
///
/// Per record it allocates only what the envelope owns (topic, payload, key, headers): the
/// partition and offset are formatted only for a template that names them, and a template
/// that depends on nothing but the Kafka topic and partition (`{topic}`, `bench/{partition}`)
/// is rendered once per partition.
pub(crate) struct Mapper {
    template: Template,
    uses_partition: bool,
    uses_offset: bool,
    /// For a template of `{topic}`, `{partition}` and literals: the last Kafka topic and
    /// partition, and their mesh topic.
    per_partition: Option<(String, i32, String)>,
    topic: String,
    partition: String,
    offset: String,
}

impl Mapper {
    pub(crate) fn new(template: &str) -> Result<Self, String> {
        let template = Template::parse(template, SOURCE_VARS).map_err(|e| e.to_string())?;
        Ok(Self {
            uses_partition: template.uses("partition"),
            uses_offset: template.uses("offset"),
            per_partition: template
                .only_names(&["topic", "partition"])
                .then(Default::default),
            template,
            topic: String::new(),
            partition: String::new(),
            offset: String::new(),
        })
    }

    /// The envelope of `m`, or `None` if a sink of the mesh wrote it (loop rule).
    pub(crate) fn envelope<M: Message>(&mut self, m: &M) -> Option<Envelope> {
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(h) = m.headers() {
            for hd in h.iter() {
                headers.push((hd.key, hd.value.unwrap_or_default()));
            }
        }
        if origin::came_from_mesh(headers.iter().map(|(k, _)| *k)) {
            return None;
        }
        let payload = m.payload().unwrap_or_default();
        let topic = match &self.per_partition {
            Some((t, p, to)) if *p == m.partition() && t == m.topic() => to.as_str(),
            _ => self.render(m, &headers, payload),
        };
        Some(Envelope {
            topic: topic.to_string(),
            key: m.key().map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(k, v)| Header {
                    name: (*k).to_string(),
                    value: Bytes::copy_from_slice(v),
                })
                .collect(),
            payload: Bytes::copy_from_slice(payload),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0).max(0) as u64,
            ..Default::default()
        })
    }

    /// Renders the mesh topic of `m` (and remembers it when it depends on topic and
    /// partition alone).
    fn render<M: Message>(&mut self, m: &M, headers: &[(&str, &[u8])], payload: &[u8]) -> &str {
        use std::fmt::Write;
        let json = if self.template.needs_payload() {
            serde_json::from_slice::<serde_json::Value>(payload).ok()
        } else {
            None
        };
        self.partition.clear();
        if self.uses_partition {
            let _ = write!(self.partition, "{}", m.partition());
        }
        self.offset.clear();
        if self.uses_offset {
            let _ = write!(self.offset, "{}", m.offset());
        }
        let names = [
            ("partition", Cow::Borrowed(self.partition.as_str())),
            ("offset", Cow::Borrowed(self.offset.as_str())),
        ];
        let kafka_topic = dots_to_levels(m.topic());
        let vars = RecordVars {
            topic: &kafka_topic,
            names: &names,
            key: m.key(),
            headers,
            json: json.as_ref(),
            levels: None,
        };
        self.template
            .render(&vars, Output::MeshTopic, &mut self.topic);
        match &mut self.per_partition {
            Some((t, p, to)) => {
                t.clear();
                t.push_str(m.topic());
                *p = m.partition();
                std::mem::swap(to, &mut self.topic);
                to
            }
            None => &self.topic,
        }
    }
}

/// The next offset to commit per partition: a short list (a source reads few partitions), so
/// noting a record allocates nothing and hashes nothing.
#[derive(Default)]
struct Positions(Vec<(String, i32, i64)>);

impl Positions {
    fn note<M: Message>(&mut self, m: &M) {
        let (t, p, next) = (m.topic(), m.partition(), m.offset() + 1);
        match self.0.iter_mut().find(|(tt, pp, _)| *pp == p && tt == t) {
            Some(e) => e.2 = next,
            None => self.0.push((t.to_string(), p, next)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The noted offsets, emptying the list.
    fn take(&mut self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in self.0.drain(..) {
            if let Err(e) = tpl.add_partition_offset(&t, p, Offset::Offset(o)) {
                warn!(error = %e, "cannot note an offset");
            }
        }
        tpl
    }
}

/// Runs one source until the node stops; reconnects with backoff.
pub(crate) async fn run(
    ctx: BridgeContext,
    cfg: Arc<KafkaConfig>,
    src: KafkaSource,
    status: Arc<BridgeStatus>,
    kctx: Ctx,
) {
    let mut backoff = Backoff::default();
    let mut shutdown = ctx.shutdown.clone();
    while let Err(e) = consume(&ctx, &cfg, &src, &status, &kctx).await {
        if !e.is_retryable() {
            warn!(error = %e, "a Kafka source is refused; it asks again at the longest backoff");
            backoff.exhaust();
        }
        if !retry_later(&status, &mut backoff, &mut shutdown, &e.to_string()).await {
            break;
        }
    }
    status.stopped();
}

/// Consumes until shutdown (`Ok`) or an error the consumer cannot go on after.
async fn consume(
    ctx: &BridgeContext,
    cfg: &KafkaConfig,
    src: &KafkaSource,
    status: &Arc<BridgeStatus>,
    kctx: &Ctx,
) -> Result<(), SourceError> {
    let consumer = subscribe(cfg, src, kctx)?;
    // Before the first poll, so that no record of these partitions is in the consumer's queue.
    let parts = split_partitions(&consumer, &src.topics)
        .await
        .map_err(SourceError::Unavailable)?;
    let mut intake = Intake {
        ingress: Ingress::new(
            &ctx.broker,
            "kafka",
            &cfg.name,
            cfg.app_id(),
            status.clone(),
        ),
        mapper: Mapper::new(&src.topic_template).map_err(SourceError::Rejected)?,
        positions: Positions::default(),
        backoff: Backoff::default(),
        shutdown: ctx.shutdown.clone(),
    };
    let mut shutdown = ctx.shutdown.clone();
    // One stream for the life of the consumer: `recv()` registers and drops a waker per call.
    // It serves the consumer's events and brings the records of partitions not split off.
    let mut stream = consumer.stream();
    // The split partitions: the first record of a batch wakes the task through a stream, the
    // rest is taken in one call.
    let mut split = futures_util::stream::select_all(parts.iter().map(|p| p.queue.stream()));
    let mut batches: Vec<(String, i32, BatchQueue)> = Vec::new();
    for p in &parts {
        if let Some(q) = BatchQueue::partition(&consumer, &p.topic, p.partition) {
            batches.push((p.topic.clone(), p.partition, q));
        }
    }
    let mut raw = Vec::new();
    let result = loop {
        let (first, from_split) = tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            m = stream.next() => (m.expect("a Kafka stream never ends"), false),
            Some(m) = split.next(), if !parts.is_empty() => (m, true),
        };
        let mut n = 0;
        let mut batch = None;
        let mut step = match first {
            Ok(m) => {
                n += 1;
                if from_split {
                    batch = batches
                        .iter_mut()
                        .find(|(t, p, _)| *p == m.partition() && t == m.topic())
                        .map(|(_, _, q)| q);
                }
                intake.take(&m).await
            }
            Err(e) => Step::Failed(e.to_string()),
        };
        // Whatever librdkafka has fetched already joins the batch; never wait for more.
        'batch: while matches!(step, Step::Next) && n < src.batch {
            let Some(q) = batch.as_deref_mut() else {
                // A partition not split off (a topic pattern, a partition added later): one
                // record at a time from the consumer's stream.
                let Some(m) = stream.next().now_or_never().flatten() else {
                    break;
                };
                match m {
                    Ok(m) => {
                        n += 1;
                        step = intake.take(&m).await;
                    }
                    Err(e) => step = Step::Failed(e.to_string()),
                }
                continue;
            };
            q.take(src.batch - n, &mut raw);
            if raw.is_empty() {
                break;
            }
            for m in raw.drain(..) {
                if let Some(e) = m.error() {
                    // Consumer errors (a broker gone, a partition's end) are reports, not
                    // records; the records after one are taken as usual.
                    status.error(format!("consume: {e}"));
                    continue;
                }
                n += 1;
                step = intake.take(&m).await;
                if matches!(step, Step::Stopped) {
                    break 'batch;
                }
            }
        }
        // Only when the node stops are records left here: dropped unpublished, their offsets
        // not stored, so that they are read again after a restart.
        raw.clear();
        status.consumed.fetch_add(n as u64, Ordering::Relaxed);
        let stop = match step {
            Step::Next => false,
            Step::Stopped => true,
            Step::Failed(e) => {
                status.error(format!("consume: {e}"));
                false
            }
        };
        store_offsets(&mut intake, &consumer, status).await;
        if stop {
            break Ok(());
        }
        // The subscribers woken by this batch wait in this worker's LIFO slot until the task
        // yields; without this a busy source starves them (and their mailboxes overflow).
        tokio::task::yield_now().await;
    };
    // Commit what is stored before leaving, so a restart resumes exactly there (closing the
    // consumer commits too; this starts it early).
    let _ = consumer.commit_consumer_state(CommitMode::Async);
    result
}

/// Once the batch's events are durable, stores the offsets after them for the next commit.
async fn store_offsets(intake: &mut Intake, consumer: &StreamConsumer<Ctx>, status: &BridgeStatus) {
    if intake.positions.is_empty() {
        return;
    }
    intake.ingress.durable().await;
    let tpl = intake.positions.take();
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A partition revoked meanwhile: its new owner starts from the last commit.
        status.error(format!("store offsets: {e}"));
    }
}

/// The source's consumer, subscribed to its topics (group of its app id, offsets stored by
/// hand after the events are durable).
fn subscribe(
    cfg: &KafkaConfig,
    src: &KafkaSource,
    kctx: &Ctx,
) -> Result<Arc<StreamConsumer<Ctx>>, SourceError> {
    let mut cc = cfg.client_config();
    // librdkafka pauses fetching for fetch.queue.backoff.ms (default 1 s) whenever its local
    // queue is above its threshold; a bridge drains that queue in bursts, so a second-long pause
    // starved it (measured: fetches 0.3 to 1.2 s apart with the node idle). A configured value
    // wins.
    if !cfg.properties.contains_key("fetch.queue.backoff.ms") {
        cc.set("fetch.queue.backoff.ms", "10");
    }
    cc.set("group.id", cfg.group_of(src));
    cc.set("enable.auto.commit", "true");
    cc.set("auto.commit.interval.ms", "1000");
    // Offsets are stored by hand, after the events are durable.
    cc.set("enable.auto.offset.store", "false");
    cc.set("auto.offset.reset", &src.start);
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        cc.create_with_context(kctx.clone())
            .map_err(|e| SourceError::Rejected(format!("cannot create the consumer: {e}")))?,
    );
    let topics: Vec<&str> = src.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| SourceError::Rejected(format!("cannot subscribe to {topics:?}: {e}")))?;
    Ok(consumer)
}

/// A partition whose records are read from a queue of their own.
struct Part {
    topic: String,
    partition: i32,
    queue: StreamPartitionQueue<Ctx>,
}

/// Splits the partitions of the named topics off the consumer's queue, so that their records
/// can be taken in batches (see batch.rs). Topic patterns, and partitions the metadata does not
/// list (a topic not created yet, partitions added later), stay on the consumer's queue. An
/// error when the cluster cannot be reached (the source retries with backoff).
async fn split_partitions(
    consumer: &Arc<StreamConsumer<Ctx>>,
    topics: &[String],
) -> Result<Vec<Part>, String> {
    let names: Vec<String> = topics
        .iter()
        .filter(|t| !t.starts_with('^'))
        .cloned()
        .collect();
    let c = consumer.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let mut listed = Vec::new();
        for t in names {
            match c.fetch_metadata(Some(&t), Duration::from_secs(5)) {
                Ok(md) => {
                    for mt in md.topics().iter().filter(|mt| mt.error().is_none()) {
                        listed.extend(mt.partitions().iter().map(|p| (t.clone(), p.id())));
                    }
                }
                Err(e) => return Err(format!("cannot read the metadata of topic {t:?}: {e}")),
            }
        }
        Ok(listed)
    })
    .await
    .map_err(|e| format!("metadata: {e}"))??;
    Ok(listed
        .into_iter()
        .filter_map(|(topic, partition)| {
            let queue = consumer.split_partition_queue(&topic, partition)?;
            Some(Part {
                topic,
                partition,
                queue,
            })
        })
        .collect())
}

/// What the batch does after a record.
enum Step {
    /// Go on with the next record.
    Next,
    /// The node stops before the record was taken.
    Stopped,
    /// The consumer reported an error: end the batch.
    Failed(String),
}

/// What a source needs to take records: its way into the mesh, the topic mapping, the offsets
/// to store after the batch, and the wait for a full store.
struct Intake {
    ingress: Ingress,
    mapper: Mapper,
    positions: Positions,
    backoff: Backoff,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Intake {
    /// Takes one record: publishes it, or counts it as a mesh sink's (loop rule); either way
    /// its offset is noted for storing once the batch is durable. Waits out a full store (never
    /// skips a record for it); the envelope is built again on a retry (rare) rather than
    /// cloned for every record.
    async fn take<M: Message>(&mut self, m: &M) -> Step {
        loop {
            let Some(env) = self.mapper.envelope(m) else {
                let status = self.ingress.status();
                status.skipped_loop.fetch_add(1, Ordering::Relaxed);
                break;
            };
            match self.ingress.publish(env) {
                Ok(()) => {
                    self.backoff.reset();
                    break;
                }
                Err(IngressError::Refused(err)) => {
                    warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %err, "record refused by the mesh, skipped");
                    break;
                }
                Err(IngressError::Full(err)) => {
                    warn!(error = %err, "store full: the source waits");
                    let room = self
                        .ingress
                        .wait_for_room(&mut self.backoff, &mut self.shutdown)
                        .await;
                    if !room {
                        return Step::Stopped;
                    }
                }
            }
        }
        self.positions.note(m);
        Step::Next
    }
}
