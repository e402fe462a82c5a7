//! A source: a queue consumed into the mesh. Deliveries are acknowledged (one multiple ack per
//! batch) only after the node stored their events durably.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, Connection};
use meshgate_bridge::template::{Output, RecordVars, Template, dots_to_levels};
use meshgate_bridge::{
    Backoff, BridgeContext, BridgeStatus, Ingress, IngressError, SourceError, origin, retry_later,
};
use meshgate_proto::{Envelope, Header};
use tokio::sync::watch;
use tracing::warn;

use crate::config::{AmqpConfig, AmqpSource, SOURCE_VARS};
use crate::{close, connect};

/// Maps deliveries to envelopes: the topic template and what it needs.
pub(crate) struct Mapper {
    template: Template,
    topic: String,
}

impl Mapper {
    pub(crate) fn new(template: &str) -> Result<Self, String> {
        Ok(Self {
            template: Template::parse(template, SOURCE_VARS).map_err(|e| e.to_string())?,
            topic: String::new(),
        })
    }

    /// The envelope of delivery `d` from `queue`, whose body was taken out as `payload`.
    pub(crate) fn envelope(&mut self, d: &Delivery, queue: &str, payload: Bytes) -> Envelope {
        let p = &d.properties;
        let headers: Vec<Header> = p
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(Header {
                            name: k.as_str().to_string(),
                            value: header_value(v)?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let json = if self.template.needs_payload() {
            serde_json::from_slice::<serde_json::Value>(&payload).ok()
        } else {
            None
        };
        let routing_key = dots_to_levels(d.routing_key.as_str());
        let names = [
            ("exchange", Cow::Borrowed(d.exchange.as_str())),
            ("queue", Cow::Borrowed(queue)),
        ];
        let vars: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.name.as_str(), &h.value[..]))
            .collect();
        let vars = RecordVars {
            topic: &routing_key,
            names: &names,
            key: None,
            headers: &vars,
            json: json.as_ref(),
            levels: None,
        };
        self.template
            .render(&vars, Output::MeshTopic, &mut self.topic);
        Envelope {
            topic: self.topic.clone(),
            headers,
            content_type: p
                .content_type()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            correlation_data: p
                .correlation_id()
                .as_ref()
                .map(|c| Bytes::copy_from_slice(c.as_str().as_bytes())),
            // AMQP timestamps are seconds; none: the node stamps the time of the publish.
            timestamp_ms: p.timestamp().map_or(0, |s| s.saturating_mul(1000)),
            payload,
            ..Default::default()
        }
    }
}

/// Whether a meshgate sink wrote `d` (loop rule).
pub(crate) fn from_mesh(d: &Delivery) -> bool {
    d.properties
        .headers()
        .as_ref()
        .is_some_and(|t| origin::came_from_mesh(t.inner().keys().map(ShortString::as_str)))
}

/// A header value as bytes: strings and byte arrays as they are, numbers and booleans as
/// written in text. Nested arrays and tables are left out.
fn header_value(v: &AMQPValue) -> Option<Bytes> {
    let text = match v {
        AMQPValue::LongString(s) => return Some(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::ShortString(s) => return Some(Bytes::copy_from_slice(s.as_str().as_bytes())),
        AMQPValue::ByteArray(b) => return Some(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => return Some(Bytes::new()),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => return None,
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => decimal(d.value, d.scale),
    };
    Some(Bytes::from(text))
}

/// `value / 10^scale` in decimal notation.
fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{int}.{frac}")
}

/// Runs one source until the node stops; reconnects with backoff.
pub(crate) async fn run(
    ctx: BridgeContext,
    cfg: Arc<AmqpConfig>,
    src: AmqpSource,
    status: Arc<BridgeStatus>,
) {
    let mut backoff = Backoff::default();
    let mut shutdown = ctx.shutdown.clone();
    let mut ingress = Ingress::new(&ctx.broker, "amqp", &cfg.name, cfg.app_id(), status.clone());
    loop {
        if *shutdown.borrow() {
            break;
        }
        let label = format!("meshgate {} amqp {}/{}", ctx.node, cfg.name, src.name);
        let conn = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            c = connect(&cfg.url, label) => c,
        };
        let stop = match conn {
            Ok(conn) => {
                let r = consume(
                    &conn,
                    &src,
                    &ctx.node,
                    &mut ingress,
                    &status,
                    &mut shutdown,
                    &mut backoff,
                )
                .await;
                close(&conn).await;
                r
            }
            Err(e) => Err(SourceError::Unavailable(e)),
        };
        match stop {
            Ok(()) => break,
            Err(e) => {
                if !e.is_retryable() {
                    warn!(error = %e, "an AMQP source is refused; it asks again at the longest backoff");
                    backoff.exhaust();
                }
                if !retry_later(&status, &mut backoff, &mut shutdown, &e.to_string()).await {
                    break;
                }
            }
        }
    }
    status.stopped();
}

/// Consumes until shutdown (`Ok`) or an error the channel cannot go on after. Deliveries not
/// acknowledged by then are redelivered by the broker to the next consumer (at least once).
/// `shutdown` is the source's one receiver, so a change seen while connecting is not missed.
async fn consume(
    conn: &Connection,
    src: &AmqpSource,
    node: &str,
    ingress: &mut Ingress,
    status: &BridgeStatus,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), SourceError> {
    let mut consumer = open_consumer(conn, src, node).await?;
    status.up();
    backoff.reset();

    let mut mapper = Mapper::new(&src.topic_template).map_err(SourceError::Rejected)?;
    let mut waits = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let max = usize::from(src.prefetch);
    // Durable deliveries not yet acknowledged: the last one's tag covers them all.
    let mut held: Option<(u64, Acker)> = None;
    let mut unacked = 0;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                ack(held.take(), None).await?;
                return Ok(());
            }
            d = consumer.next() => d,
            _ = tokio::time::sleep(ACK_DELAY), if held.is_some() => {
                ack(held.take(), None).await?;
                unacked = 0;
                continue;
            }
        };
        let mut next = Some(first);
        let mut taken = 0;
        // The last delivery taken (published, refused or skipped): one ack covers the batch.
        let mut last: Option<(u64, Acker)> = None;
        let mut end = None;
        while let Some(item) = next.take() {
            let mut d = match item {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    end = Some(Err(format!("consume: {e}")));
                    break;
                }
                None => {
                    end = Some(Err(format!(
                        "the broker cancelled the consumer of queue {:?}",
                        src.queue
                    )));
                    break;
                }
            };
            taken += 1;
            status.consumed.fetch_add(1, Ordering::Relaxed);
            if from_mesh(&d) {
                status.skipped_loop.fetch_add(1, Ordering::Relaxed);
            } else {
                let payload = Bytes::from(std::mem::take(&mut d.data));
                let t = Taken {
                    d: &d,
                    queue: &src.queue,
                    payload,
                };
                if !publish(ingress, &mut mapper, t, status, &mut waits, shutdown).await {
                    end = Some(Ok(()));
                    break;
                }
            }
            last = Some((d.delivery_tag, d.acker));
            if taken >= max {
                break;
            }
            // What the client holds already joins the batch; never wait for more.
            next = consumer.next().now_or_never();
        }
        if last.is_some() {
            ingress.durable().await;
            held = last;
            unacked += taken;
        }
        // Half the prefetch window in one ack: the broker keeps sending meanwhile, and acks
        // are fewer than when every short batch is acknowledged on its own.
        if end.is_some() || unacked >= max.div_ceil(2) {
            ack(held.take(), end.as_ref()).await?;
            unacked = 0;
        }
        if let Some(end) = end {
            return end.map_err(SourceError::Unavailable);
        }
        if taken < COALESCE_BELOW {
            // A short batch: let deliveries gather for a moment rather than waking this task
            // (and a worker thread) for each one. Also lets the woken subscribers run.
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    ack(held.take(), None).await?;
                    return Ok(());
                }
                _ = tokio::time::sleep(COALESCE) => {}
            }
        } else {
            // Subscribers woken by this batch wait in this worker's LIFO slot until the task
            // yields.
            tokio::task::yield_now().await;
        }
    }
}

/// A channel consuming the source's queue (declared and bound first if configured), with the
/// prefetch window as its QoS.
async fn open_consumer(
    conn: &Connection,
    src: &AmqpSource,
    node: &str,
) -> Result<lapin::Consumer, SourceError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("open a channel: {e}"))?;
    let queue = ShortString::from(src.queue.as_str());
    if src.declare {
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.clone(), opts, FieldTable::default())
            .await
            .map_err(|e| SourceError::Rejected(format!("declare queue {:?}: {e}", src.queue)))?;
    }
    for b in &src.bindings {
        ch.queue_bind(
            queue.clone(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            SourceError::Rejected(format!(
                "bind queue {:?} to exchange {:?} with {:?}: {e}",
                src.queue, b.exchange, b.routing_key
            ))
        })?;
    }
    ch.basic_qos(src.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| format!("basic.qos: {e}"))?;
    let tag = ShortString::try_new(format!("meshgate-{node}-{}", src.name)).unwrap_or_default();
    let consumer = ch
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consume queue {:?}: {e}", src.queue))?;
    Ok(consumer)
}

/// A batch shorter than this is followed by a pause of [`COALESCE`] before the next read.
const COALESCE_BELOW: usize = 64;
/// Measured with benches/run-bridges.sh (AMQP -> MQTT, live): waking the consumer for every
/// delivery cost a node ~10 µs of CPU per message, most of it in thread switches.
const COALESCE: Duration = Duration::from_millis(1);

/// Longest time a durable delivery waits for its ack when no more deliveries come.
const ACK_DELAY: Duration = Duration::from_millis(2);

/// Acknowledges every delivery up to `held` (one multiple ack). `end` is the error that ended
/// the consumer, if any: it says more than the ack it made fail.
async fn ack(held: Option<(u64, Acker)>, end: Option<&Result<(), String>>) -> Result<(), String> {
    let Some((tag, acker)) = held else {
        return Ok(());
    };
    let failed = match acker.ack(BasicAckOptions { multiple: true }).await {
        Ok(true) => return Ok(()),
        Ok(false) => format!("channel closed before the ack of {tag}"),
        Err(e) => format!("ack deliveries up to {tag}: {e}"),
    };
    Err(match end {
        Some(Err(e)) => e.clone(),
        _ => failed,
    })
}

/// A delivery being published, its body taken out.
struct Taken<'a> {
    d: &'a Delivery,
    queue: &'a str,
    payload: Bytes,
}

/// Publishes one delivery's event; waits out a full store (never skips a delivery for it).
/// False: the node stops before the event was taken.
async fn publish(
    ingress: &mut Ingress,
    mapper: &mut Mapper,
    t: Taken<'_>,
    status: &BridgeStatus,
    waits: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        // Built again on a retry (rare) rather than cloned for every delivery.
        let env = mapper.envelope(t.d, t.queue, t.payload.clone());
        match ingress.publish(env) {
            Ok(()) => {
                waits.reset();
                return true;
            }
            Err(IngressError::Refused(err)) => {
                warn!(
                    delivery_tag = t.d.delivery_tag,
                    exchange = %t.d.exchange,
                    routing_key = %t.d.routing_key,
                    error = %err,
                    "message refused by the mesh, acknowledged and skipped"
                );
                return true;
            }
            Err(IngressError::Full(err)) => {
                warn!(error = %err, "store full: the source waits");
                status.error(&err);
                if !ingress.wait_for_room(waits, shutdown).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal(12345, 2), "123.45");
        assert_eq!(decimal(5, 3), "0.005");
        assert_eq!(decimal(7, 0), "7");
    }
}
