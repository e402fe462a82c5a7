//! A source: Kafka topics into the mesh, offsets stored only after the node stored the events.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use meshgate_bridge::template::{Output, RecordVars, Template, dots_to_levels};
use meshgate_bridge::{
    Backoff, BridgeContext, BridgeStatus, Ingress, IngressError, origin, retry_later,
};
use meshgate_proto::{Envelope, Header};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::Ctx;
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
    pub(crate) fn envelope(&mut self, m: &BorrowedMessage<'_>) -> Option<Envelope> {
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
    fn render(
        &mut self,
        m: &BorrowedMessage<'_>,
        headers: &[(&str, &[u8])],
        payload: &[u8],
    ) -> &str {
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
    fn note(&mut self, m: &BorrowedMessage<'_>) {
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
        if !retry_later(&status, &mut backoff, &mut shutdown, &e).await {
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
) -> Result<(), String> {
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
    let consumer: StreamConsumer<Ctx> = cc
        .create_with_context(kctx.clone())
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let topics: Vec<&str> = src.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
    let mut mapper = Mapper::new(&src.topic_template)?;
    let mut ingress = Ingress::new(
        &ctx.broker,
        "kafka",
        &cfg.name,
        cfg.app_id(),
        status.clone(),
    );
    let mut shutdown = ctx.shutdown.clone();
    let mut positions = Positions::default();
    // One stream for the life of the consumer: `recv()` registers and drops a waker per call.
    let mut stream = consumer.stream();
    let mut backoff = Backoff::default();
    let result = loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            m = stream.next() => m.expect("a Kafka stream never ends"),
        };
        let mut next = Some(first);
        let mut n = 0;
        let mut stop = false;
        while let Some(m) = next.take() {
            match m {
                Ok(m) => {
                    n += 1;
                    match publish(&mut ingress, &mut mapper, &m, &mut backoff, &mut shutdown).await
                    {
                        Taken::Loop => {
                            status.skipped_loop.fetch_add(1, Ordering::Relaxed);
                        }
                        Taken::Yes => {}
                        Taken::Stopped => {
                            stop = true;
                            break;
                        }
                    }
                    positions.note(&m);
                }
                Err(e) => {
                    status.error(format!("consume: {e}"));
                    break;
                }
            }
            if n >= src.batch {
                break;
            }
            // Whatever librdkafka has fetched already joins the batch; never wait for more.
            next = stream.next().now_or_never().flatten();
        }
        status.consumed.fetch_add(n as u64, Ordering::Relaxed);
        if positions.is_empty() {
            if stop {
                break Ok(());
            }
            continue;
        }
        ingress.durable().await;
        let tpl = positions.take();
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile: its new owner starts from the last commit.
            status.error(format!("store offsets: {e}"));
        }
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

/// What became of a record.
enum Taken {
    /// Published (or refused by the mesh, logged and counted).
    Yes,
    /// Written by a meshgate sink: not taken back (loop rule).
    Loop,
    /// The node stops before the record was taken.
    Stopped,
}

/// Publishes one record; waits out a full store (never skips a record for it). The envelope is
/// built again on a retry (rare) rather than cloned for every record.
async fn publish(
    ingress: &mut Ingress,
    mapper: &mut Mapper,
    m: &BorrowedMessage<'_>,
    backoff: &mut Backoff,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Taken {
    loop {
        let Some(env) = mapper.envelope(m) else {
            return Taken::Loop;
        };
        match ingress.publish(env) {
            Ok(()) => {
                backoff.reset();
                return Taken::Yes;
            }
            Err(IngressError::Refused(err)) => {
                warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %err, "record refused by the mesh, skipped");
                return Taken::Yes;
            }
            Err(IngressError::Full(err)) => {
                warn!(error = %err, "store full: the source waits");
                if !ingress.wait_for_room(backoff, shutdown).await {
                    return Taken::Stopped;
                }
            }
        }
    }
}
