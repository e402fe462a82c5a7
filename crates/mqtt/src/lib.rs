//! MQTT 3.1.1 and 5.0 front end of a meshgate node.
//!
//! Owns MQTT sessions (clean and persistent, in memory), keep-alive, last will, topic aliases and
//! the packet-level rules; every publish and subscribe goes through the node's
//! [`meshgate_broker::Broker`]. Each connection is one task that reads, routes and writes: what it
//! has to send after a wakeup leaves in one write.

mod codec;
mod conn;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshgate_broker::{Authenticator, Broker};
use metrics::{Counter, Gauge, counter, gauge};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use session::SessionStore;

/// Limits of the MQTT listener.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// Largest packet accepted from a client, in bytes (announced in the v5 CONNACK).
    pub max_packet_size: u32,
    /// Events queued per session before new ones are dropped (slow or offline consumer).
    pub max_queued_messages: usize,
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

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024 + 1024,
            max_queued_messages: 10_000,
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

    /// Number of MQTT sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.ctx.sessions.len()
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
        tokio::spawn(conn::run(ctx, stream, peer, shutdown));
    }
}

pub(crate) fn now_secs() -> u64 {
    meshgate_broker::now_ms() / 1000
}
