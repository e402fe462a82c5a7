//! A sink: a journaled mesh subscription published into an exchange on a channel in confirm
//! mode. A batch is reported written only after the broker confirmed every message of it.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use meshgate_bridge::template::{Output, RecordVars, Template, levels_to_dots};
use meshgate_bridge::{
    BridgeContext, BridgeStatus, SinkError, SinkSpec, SinkTarget, StartError, origin, run_sink,
};
use meshgate_proto::Envelope;
use meshgate_store::Journal;
use meshgate_topic::Filter;
use tokio::task::JoinHandle;

use crate::config::{AmqpConfig, AmqpSink, SINK_VARS};
use crate::{close, connect};

/// Events held in the sink's mailbox; the journal holds the rest.
const MAILBOX: usize = 4096;

/// Longest wait for the confirms of one batch before the connection is given up.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Delivery mode of every message written: persistent.
const PERSISTENT: u8 = 2;

/// Starts one sink: a first connection attempt (so its state shows before any event arrives)
/// and the journaled driver.
pub(crate) fn start(
    ctx: &BridgeContext,
    cfg: &AmqpConfig,
    sink: &AmqpSink,
    status: Arc<BridgeStatus>,
    journal: Option<Journal>,
) -> Result<JoinHandle<()>, StartError> {
    let filter = Filter::parse(&sink.filter).map_err(|e| StartError::Config(e.to_string()))?;
    let template = Template::parse(&sink.routing_key_template, SINK_VARS)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let url = cfg.url.clone();
    let label = format!("meshgate {} amqp {}/{}", ctx.node, cfg.name, sink.name);
    let probe = {
        let (url, label, status) = (url.clone(), label.clone(), status.clone());
        tokio::spawn(async move {
            let link = Link::open(&url, label).await;
            match &link {
                Ok(_) => status.up(),
                Err(e) => status.down(e),
            }
            link
        })
    };
    let target = Target {
        url,
        label,
        exchange: ShortString::from(sink.exchange.as_str()),
        template,
        node: ctx.node.clone(),
        link: None,
        probe: Some(probe),
        key: String::new(),
    };
    let spec = SinkSpec {
        protocol: "amqp",
        member: cfg.name.clone(),
        filter,
        batch: sink.batch,
        mailbox: MAILBOX,
        journal,
        app_id: cfg.app_id().to_string(),
    };
    Ok(tokio::spawn(run_sink(
        ctx.broker.clone(),
        spec,
        status,
        target,
        ctx.shutdown.clone(),
    )))
}

/// A connection and its channel in confirm mode.
struct Link {
    conn: Connection,
    channel: Channel,
}

impl Link {
    async fn open(url: &str, label: String) -> Result<Self, String> {
        let conn = connect(url, label).await?;
        let channel = match conn.create_channel().await {
            Ok(c) => c,
            Err(e) => {
                close(&conn).await;
                return Err(format!("open a channel: {e}"));
            }
        };
        if let Err(e) = channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
        {
            close(&conn).await;
            return Err(format!("confirm.select: {e}"));
        }
        Ok(Self { conn, channel })
    }

    fn usable(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

/// The exchange a sink publishes to.
struct Target {
    url: String,
    label: String,
    exchange: ShortString,
    template: Template,
    node: String,
    link: Option<Link>,
    /// The first connection attempt, made at start.
    probe: Option<JoinHandle<Result<Link, String>>>,
    /// Routing key being rendered.
    key: String,
}

impl SinkTarget for Target {
    type Pending = Vec<(PublisherConfirm, String)>;

    async fn submit(&mut self, events: &[Arc<Envelope>]) -> Result<Self::Pending, SinkError> {
        let link = match self.link.take() {
            Some(l) if l.usable() => l,
            Some(l) => {
                close(&l.conn).await;
                self.connect().await.map_err(SinkError::Unavailable)?
            }
            None => self.connect().await.map_err(SinkError::Unavailable)?,
        };
        let link = self.link.insert(link);
        let mut confirms = Vec::with_capacity(events.len());
        for ev in events {
            render_key(&self.template, ev, &mut self.key);
            // A rendered routing key is at most 255 bytes (the template caps it).
            let key = ShortString::try_new(self.key.as_str())
                .map_err(|e| SinkError::Rejected(e.to_string()))?;
            let confirm = link
                .channel
                .basic_publish(
                    self.exchange.clone(),
                    key,
                    BasicPublishOptions::default(),
                    &ev.payload,
                    properties(&self.node, ev),
                )
                .await
                .map_err(|e| {
                    SinkError::Unavailable(format!(
                        "publish to exchange {:?}: {e}",
                        self.exchange.as_str()
                    ))
                })?;
            confirms.push((confirm, ev.event_id().to_string()));
        }
        Ok(confirms)
    }

    async fn wait(&mut self, pending: Self::Pending) -> Result<(), SinkError> {
        let wait = async {
            for (confirm, id) in pending {
                match confirm.await {
                    Ok(Confirmation::Ack(_)) => {}
                    Ok(Confirmation::Nack(_)) => {
                        return Err(SinkError::Rejected(format!(
                            "the broker refused event {id} (nack)"
                        )));
                    }
                    Ok(Confirmation::NotRequested) => {
                        return Err(SinkError::Unavailable(
                            "the channel is not in confirm mode".to_string(),
                        ));
                    }
                    Err(e) => {
                        return Err(SinkError::Unavailable(format!("publisher confirm: {e}")));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::Unavailable(format!(
                "no publisher confirms within {}s",
                CONFIRM_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn reset(&mut self) {
        // Whatever went wrong, the next attempt starts on a fresh connection.
        if let Some(link) = self.link.take() {
            close(&link.conn).await;
        }
    }
}

impl Target {
    async fn connect(&mut self) -> Result<Link, String> {
        if let Some(probe) = self.probe.take()
            && let Ok(Ok(link)) = probe.await
        {
            if link.usable() {
                return Ok(link);
            }
            close(&link.conn).await;
        }
        Link::open(&self.url, self.label.clone()).await
    }
}

/// The routing key of `ev`.
fn render_key(template: &Template, ev: &Envelope, out: &mut String) {
    let dotted = levels_to_dots(&ev.topic);
    if template.is_topic() {
        out.clear();
        out.push_str(&dotted);
        let mut cut = out.len().min(255);
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        return;
    }
    let headers: Vec<(&str, &[u8])> = ev
        .headers
        .iter()
        .map(|h| (h.name.as_str(), &h.value[..]))
        .collect();
    let vars = RecordVars {
        topic: &dotted,
        names: &[],
        key: ev.key.as_deref(),
        headers: &headers,
        json: None,
        levels: Some(&ev.topic),
    };
    template.render(&vars, Output::RoutingKey, out);
}

/// Properties of the message written for `ev`: persistent, its headers plus the origin header,
/// content type, timestamp (seconds), the event id as message id, the publishing app.
fn properties(node: &str, ev: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    for h in &ev.headers {
        // AMQP header names are short strings; a longer name cannot be written.
        if let Ok(name) = ShortString::try_new(h.name.as_str()) {
            headers.insert(name, AMQPValue::LongString(LongString::from(&h.value[..])));
        }
    }
    headers.insert(
        origin::ORIGIN_HEADER.into(),
        AMQPValue::LongString(origin::origin_value(node, ev).into()),
    );
    let mut p = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
        .with_message_id(ev.event_id().to_string().into());
    if let Ok(ct) = ShortString::try_new(ev.content_type.as_str())
        && !ev.content_type.is_empty()
    {
        p = p.with_content_type(ct);
    }
    if ev.timestamp_ms > 0 {
        p = p.with_timestamp(ev.timestamp_ms / 1000);
    }
    if let Ok(app) = ShortString::try_new(ev.publisher_app.as_str())
        && !ev.publisher_app.is_empty()
    {
        p = p.with_app_id(app);
    }
    if let Some(c) = &ev.correlation_data
        && let Ok(c) = std::str::from_utf8(c)
        && let Ok(c) = ShortString::try_new(c)
    {
        p = p.with_correlation_id(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use meshgate_proto::Header;

    #[test]
    fn routing_keys() {
        let ev = Envelope {
            topic: "orders/us/17".into(),
            headers: vec![Header {
                name: "region".into(),
                value: Bytes::from_static(b"west"),
            }],
            ..Default::default()
        };
        let mut out = String::new();
        let t = Template::parse("{topic}", SINK_VARS).unwrap();
        render_key(&t, &ev, &mut out);
        assert_eq!(out, "orders.us.17");
        let t = Template::parse("x.{level.1}.{header.region}.{header.none}", SINK_VARS).unwrap();
        render_key(&t, &ev, &mut out);
        assert_eq!(out, "x.us.west.");
        let long = Envelope {
            topic: "é".repeat(200),
            ..Default::default()
        };
        let t = Template::parse("{topic}", SINK_VARS).unwrap();
        render_key(&t, &long, &mut out);
        assert_eq!(out.len(), 254);
    }

    #[test]
    fn properties_carry_origin_and_metadata() {
        let ev = Envelope {
            topic: "a/b".into(),
            content_type: "application/json".into(),
            timestamp_ms: 1_700_000_000_123,
            publisher_app: "shop".into(),
            correlation_data: Some(Bytes::from_static(b"c-1")),
            headers: vec![Header {
                name: "h".into(),
                value: Bytes::from_static(b"v"),
            }],
            ..Default::default()
        };
        let p = properties("n1", &ev);
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(
            h.get(origin::ORIGIN_HEADER),
            Some(&AMQPValue::LongString("n1/client/".into()))
        );
        assert_eq!(h.get("h"), Some(&AMQPValue::LongString("v".into())));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "shop");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c-1");
        assert_eq!(p.message_id().as_ref().unwrap().as_str().len(), 32);
    }
}
