//! MQTT 3.1.1 and 5.0 front end of a meshgate node.
//!
//! Owns MQTT sessions (clean and persistent), keep-alive, last will, topic aliases and the
//! packet-level rules; every publish and subscribe goes through the node's
//! [`meshgate_broker::Broker`]. Each connection is one task that reads, routes and writes: what it
//! has to send after a wakeup leaves in one write.
//!
//! # Guaranteed delivery
//! When the broker has a store ([`Broker::disk`]):
//! - A QoS 1 publish is acknowledged (PUBACK; PUBREC for QoS 2) only once every stored copy of it
//!   is durable: the connection keeps the acknowledgements in order and sends them when the
//!   disk's commit cycle reaches them. At the disk quota a QoS 1 or 2 publish is refused: MQTT 5
//!   gets reason code 0x97 (quota exceeded), an MQTT 3.1.1 client, which has no negative
//!   acknowledgement, is disconnected. QoS 0 is never refused for quota.
//! - With [`MqttServer::with_store`], sessions with a session expiry (3.1.1 `clean_session =
//!   false`, 5 expiry > 0) live on disk (see the `persist` module): their metadata, and a journal
//!   holding every QoS 1 delivery for them, written before the publisher is acknowledged. The
//!   connection takes deliveries from the in-memory mailbox and, when the mailbox overflowed or
//!   after a restart, reads them back from the journal in order, so nothing is lost however
//!   many queue up. [`MqttServer::restore`] brings the sessions back at startup. Delivery is
//!   at least once: after a restart, events acknowledged by the client since the journal's last
//!   release (at most ~250 ms of acknowledgements) are delivered again.
//!
//! Without a store, sessions live in memory only and a persistent session's queue is bounded by
//! [`MqttConfig::max_queued_messages`].

mod codec;
mod conn;
mod connect;
mod delivery;
mod persist;
mod publish;
mod reason;
mod session;
mod subscribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshgate_auth::Authenticator;
use meshgate_broker::Broker;
use meshgate_broker::flow::{Limits, SlowPolicy};
use metrics::{Counter, Gauge, counter, gauge};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use persist::RestoreReport;
use session::{Session, SessionStore};

/// Limits of the MQTT listener.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// Largest packet accepted from a client, in bytes (announced in the v5 CONNACK).
    pub max_packet_size: u32,
    /// Events queued in memory per session above which publishers wait for the subscriber
    /// (see meshgate_broker::flow); an offline session's queue stops there. A stored session's
    /// QoS 1 events are never dropped: beyond this they wait in its journal (see
    /// [`MqttServer::with_store`]).
    pub max_queued_messages: usize,
    /// The same in bytes.
    pub max_queued_bytes: u64,
    /// What happens to a subscriber that takes nothing while publishers wait for it.
    pub slow_consumer: SlowPolicy,
    /// QoS 1 deliveries in flight per connection (capped by a v5 client's receive maximum).
    pub max_inflight: u16,
    /// Topic aliases a v5 client may use towards the node.
    pub topic_alias_max: u16,
    /// Upper bound for session expiry; also the lifetime of MQTT 3.1.1 persistent sessions.
    pub max_session_expiry_secs: u32,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Time a write to a client may take before the connection is dropped.
    pub write_timeout: Duration,
}

impl MqttConfig {
    /// The limits of a session's mailbox.
    pub(crate) fn queue_limits(&self) -> Limits {
        Limits {
            events: self.max_queued_messages.max(1),
            bytes: self.max_queued_bytes.max(1),
            slow: self.slow_consumer,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024 + 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 32 << 20,
            slow_consumer: SlowPolicy::Drop,
            max_inflight: 64,
            topic_alias_max: 64,
            max_session_expiry_secs: 7 * 24 * 3600,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything connections share.
pub(crate) struct Context {
    broker: Broker,
    auth: Arc<dyn Authenticator>,
    sessions: SessionStore,
    config: MqttConfig,
    stats: MqttStats,
}

/// Prometheus series of the MQTT front end.
struct MqttStats {
    connected: Gauge,
    connections: Counter,
    received: Counter,
    sent: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
}

impl MqttStats {
    fn register() -> Self {
        Self {
            connected: gauge!("meshgate_mqtt_connections"),
            connections: counter!("meshgate_mqtt_connections_total"),
            received: counter!("meshgate_mqtt_packets_received_total"),
            sent: counter!("meshgate_mqtt_publishes_sent_total"),
            sent_bytes: counter!("meshgate_mqtt_sent_bytes_total"),
            received_bytes: counter!("meshgate_mqtt_received_bytes_total"),
        }
    }
}

/// Counts one refused or broken client; `reason` is one of a small fixed set.
pub(crate) fn protocol_error(reason: &'static str) {
    counter!("meshgate_mqtt_protocol_errors_total", "reason" => reason).increment(1);
}

/// The MQTT listener of a node.
pub struct MqttServer {
    ctx: Arc<Context>,
}

impl MqttServer {
    /// A server routing through `broker` and authenticating with `auth`.
    pub fn new(broker: Broker, auth: Arc<dyn Authenticator>, config: MqttConfig) -> Self {
        Self {
            ctx: Arc::new(Context {
                broker,
                auth,
                sessions: SessionStore::default(),
                config,
                stats: MqttStats::register(),
            }),
        }
    }

    /// Stores sessions with a session expiry under `dir` (the node passes
    /// `<data_dir>/sessions`), with their journals on the broker's disk, so that they survive a
    /// restart. Call after [`Broker::set_disk`] and before serving; then call
    /// [`MqttServer::restore`]. Without a disk on the broker this logs a warning and sessions
    /// stay in memory.
    pub fn with_store(self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        match self.ctx.broker.disk() {
            Some(disk) => self
                .ctx
                .sessions
                .set_persist(persist::Persist::new(dir, disk.clone())),
            None => warn!(
                dir = %dir.display(),
                "the broker has no store: MQTT sessions are kept in memory only"
            ),
        }
        self
    }

    /// Brings back the sessions stored under the [`MqttServer::with_store`] directory: deletes
    /// those whose expiry passed, recreates the others offline (journal, subscriptions back in
    /// the broker, so their interest is advertised again) and starts their expiry timers for the
    /// time they have left. A directory that cannot be read is reported and skipped. Call once,
    /// inside the Tokio runtime, before the node accepts MQTT or mesh traffic. Fails only if the
    /// directory itself cannot be created or listed; without a store it restores nothing.
    pub fn restore(&self) -> std::io::Result<RestoreReport> {
        let Some(p) = self.ctx.sessions.persist().cloned() else {
            return Ok(RestoreReport::default());
        };
        let now = now_secs();
        let max_expiry = self.ctx.config.max_session_expiry_secs;
        let (loaded, mut report) = p.load(now, max_expiry)?;
        for l in loaded {
            let crashed = l.meta.disconnected_at.is_none();
            let left = l.meta.expiry_secs;
            let since = l.disconnected_at;
            let limits = self.ctx.config.queue_limits();
            let Some(s) = self.ctx.sessions.restore(&self.ctx.broker, limits, l) else {
                report.skipped += 1;
                continue;
            };
            if crashed {
                // Its client was connected when the node stopped: its expiry runs from now.
                drop(p.save(&s)); // written in the background
            }
            if left != u32::MAX {
                let remaining = (since + u64::from(left)).saturating_sub(now);
                schedule_expiry(&self.ctx, s, 1, Duration::from_secs(remaining));
            }
            report.restored += 1;
        }
        info!(
            dir = %p.root().display(),
            restored = report.restored,
            expired = report.expired,
            skipped = report.skipped,
            "mqtt sessions restored"
        );
        Ok(report)
    }

    /// Number of MQTT sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.ctx.sessions.len()
    }

    /// Stored sessions and what waits in their journals (events, bytes, age of the oldest), the
    /// 1000 largest first, for `GET /v1/backlog`; also sets the `meshgate_session_backlog_*`
    /// gauges (totals: a label per client id would be unbounded).
    pub fn backlog(&self) -> meshgate_api::SessionsBacklog {
        let all = self.ctx.sessions.backlog();
        let events: u64 = all.iter().map(|s| s.2).sum();
        let bytes: u64 = all.iter().map(|s| s.3).sum();
        gauge!("meshgate_session_backlog_events").set(events as f64);
        gauge!("meshgate_session_backlog_bytes").set(bytes as f64);
        gauge!("meshgate_stored_sessions").set(all.len() as f64);
        let sessions = all
            .into_iter()
            .take(1000)
            .map(
                |(client_id, online, events, bytes, oldest_age_ms)| meshgate_api::SessionBacklog {
                    client_id,
                    online,
                    events,
                    bytes,
                    oldest_age_ms,
                },
            )
            .collect();
        meshgate_api::SessionsBacklog {
            events,
            bytes,
            sessions,
        }
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn serve(&self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let addr = listener.local_addr().ok();
        info!(addr = ?addr, "mqtt listening");
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => self.spawn(stream, peer, shutdown.clone()),
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
    }

    fn spawn(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let ctx = self.ctx.clone();
        tokio::spawn(conn::run(ctx, stream, peer, None, shutdown));
    }

    /// Accepts MQTT over TLS until `shutdown` turns true. With client authentication in
    /// `tls`, a client certificate's name (`app_of`, e.g. its DNS name) is the client's app id.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
        app_of: fn(&[u8]) -> Option<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let addr = listener.local_addr().ok();
        info!(addr = ?addr, "mqtt over tls listening");
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let ctx = self.ctx.clone();
                        let acceptor = acceptor.clone();
                        let shutdown = shutdown.clone();
                        let handshake = ctx.config.connect_timeout;
                        tokio::spawn(async move {
                            let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    protocol_error("tls_handshake");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let certificate = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| app_of(c.as_ref()));
                            conn::run(ctx, tls, peer, certificate, shutdown).await;
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// Ends `session` after `after` unless a connection takes it over (bumps its generation) first.
pub(crate) fn schedule_expiry(
    ctx: &Arc<Context>,
    session: Arc<Session>,
    generation: u64,
    after: Duration,
) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        ctx.sessions
            .end_if_current(&ctx.broker, &session, generation);
    });
}

pub(crate) fn now_secs() -> u64 {
    meshgate_broker::now_ms() / 1000
}
