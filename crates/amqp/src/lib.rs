//! AMQP 0-9-1 brokers (RabbitMQ) as members of the mesh, over lapin (rustls with ring).
//!
//! - A **source** consumes a queue (optionally declared and bound) with manual acks and
//!   publishes every delivery as a guaranteed event on a topic built by a template (`{topic}` is
//!   the routing key with `.` turned into `/`); headers, content type, correlation id and
//!   timestamp travel in the envelope.
//! - A **sink** is a journaled subscription ([`meshgate_bridge::sink`]) published into an
//!   exchange as persistent messages, on a channel in confirm mode, with a routing key built by a
//!   template (`{topic}` is the mesh topic with `/` turned into `.`).
//! - **Loops**: every message a sink writes carries `meshgate-origin`, which sources never take
//!   (they acknowledge and count it); a sink never writes an event back into the broker it came
//!   from.
//!
//! # At least once, both ways
//!
//! - **Into the mesh: ack after durable.** A source publishes a batch of deliveries (all those
//!   the client holds, up to `prefetch`), waits until the node stored every event durably, and
//!   only then acknowledges the broker with one `basic.ack` (multiple) up to the batch's last
//!   delivery tag. If the connection drops or the node stops first, the broker redelivers the
//!   unacknowledged messages: an event may enter the mesh twice, never zero times. A full store
//!   makes the source wait on the same delivery; a message the mesh can never accept (invalid
//!   topic, too large) is logged with its delivery tag, counted as refused and acknowledged.
//! - **Out of the mesh: confirm before release.** A sink's events wait in its journal. A batch
//!   is published and the sink waits for the broker's publisher confirm of every message; only
//!   a fully confirmed batch is released from the journal. A nack, a closed channel or a lost
//!   connection fails the batch: the connection is dropped and the whole batch is published
//!   again on a new one after a backoff, so the exchange may see a message twice (the event id
//!   is the `message_id`, for consumers that deduplicate). A message the exchange cannot route
//!   is dropped by the broker and confirmed, as AMQP defines.
//!
//! Connections are not recovered by lapin: a bridge that loses its connection opens a new one
//! with backoff, its state `down` with the error in `GET /v1/bridges` meanwhile.

mod config;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use meshgate_bridge::{BridgeContext, BridgeStatus, StartError};
use tokio::task::JoinHandle;

pub use config::{AmqpConfig, AmqpSink, AmqpSource, Binding};

/// Longest wait for a connection (TCP, TLS and the AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a polite close before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the sources and sinks of one broker; their statuses are registered in `ctx.bridges`.
pub fn start(ctx: &BridgeContext, cfg: &AmqpConfig) -> Result<Vec<JoinHandle<()>>, StartError> {
    cfg.validate().map_err(StartError::Config)?;
    let cfg = Arc::new(cfg.clone());
    let mut tasks = Vec::new();
    for s in &cfg.source {
        let status = BridgeStatus::new("amqp", &cfg.name, &s.name, "source", s.queue.clone());
        ctx.bridges.add(status.clone());
        tasks.push(tokio::spawn(source::run(
            ctx.clone(),
            cfg.clone(),
            s.clone(),
            status,
        )));
    }
    for s in &cfg.sink {
        let status = BridgeStatus::new("amqp", &cfg.name, &s.name, "sink", s.filter.clone());
        ctx.bridges.add(status.clone());
        let journal = ctx.sink_journal("amqp", &cfg.name, &s.name)?;
        tasks.push(sink::start(ctx, &cfg, s, status, journal)?);
    }
    Ok(tasks)
}

/// Opens a connection named `label` (shown by `rabbitmqctl list_connections client_properties`).
/// Errors never contain the url (it may hold a password).
async fn connect(url: &str, label: String) -> Result<Connection, String> {
    let uri = config::parse_url(url)?;
    let where_ = format!(
        "{}:{} vhost {:?}",
        uri.authority.host, uri.authority.port, uri.vhost
    );
    let props = ConnectionProperties::default().with_connection_name(label.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect to {where_}: {e}")),
        Err(_) => Err(format!(
            "connect to {where_}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Closes `conn` politely if it still answers (the broker requeues what was not acknowledged).
async fn close(conn: &Connection) {
    if conn.status().connected() {
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "meshgate closes".into())).await;
    }
}
