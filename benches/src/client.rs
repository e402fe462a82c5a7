//! One connection of either protocol behind one small interface, so that every workload is
//! written once and drives MQTT brokers and nats-server alike.

use clap::ValueEnum;

use crate::{mqtt, nats};

/// Wire protocol spoken to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// MQTT 3.1.1 (mosquitto, rumqttd, meshgate).
    Mqtt,
    /// NATS text protocol (nats-server).
    Nats,
}

impl Proto {
    /// Joins topic levels with the protocol's separator (`/` for MQTT, `.` for NATS).
    pub fn topic(self, levels: &[&str]) -> String {
        levels.join(self.separator())
    }

    /// The level separator.
    pub fn separator(self) -> &'static str {
        match self {
            Proto::Mqtt => "/",
            Proto::Nats => ".",
        }
    }
}

/// A connected client of either protocol.
pub enum Conn {
    /// MQTT 3.1.1.
    Mqtt(mqtt::Conn),
    /// NATS.
    Nats(nats::Conn),
}

impl Conn {
    /// Connects (and completes the protocol handshake).
    pub async fn connect(proto: Proto, addr: &str, client_id: &str) -> anyhow::Result<Self> {
        Ok(match proto {
            Proto::Mqtt => Conn::Mqtt(mqtt::Conn::connect(addr, client_id).await?),
            Proto::Nats => Conn::Nats(nats::Conn::connect(addr).await?),
        })
    }

    /// Subscribes to every topic and returns once the broker has confirmed all of them.
    pub async fn subscribe(&mut self, topics: &[String], per_packet: usize) -> anyhow::Result<()> {
        match self {
            Conn::Mqtt(c) => c.subscribe(topics, per_packet).await,
            Conn::Nats(c) => c.subscribe(topics).await,
        }
    }

    /// Queues one publish (QoS 0 for MQTT).
    pub fn push_publish(&mut self, topic: &[u8], payload: &[u8]) {
        match self {
            Conn::Mqtt(c) => c.push_publish(topic, payload),
            Conn::Nats(c) => c.push_publish(topic, payload),
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Conn::Mqtt(c) => c.flush().await,
            Conn::Nats(c) => c.flush().await,
        }
    }

    /// Waits for one read, then calls `on_msg(topic, payload)` for each message it completed.
    pub async fn read(&mut self, on_msg: impl FnMut(&[u8], &[u8])) -> anyhow::Result<()> {
        match self {
            Conn::Mqtt(c) => c.read_publishes(on_msg).await,
            Conn::Nats(c) => c.read_msgs(on_msg).await,
        }
    }

    /// Hands over the socket as a blocking std stream (its handshake is done).
    pub fn into_std(self) -> anyhow::Result<std::net::TcpStream> {
        match self {
            Conn::Mqtt(c) => c.into_std(),
            Conn::Nats(c) => c.into_std(),
        }
    }
}

/// Encodes one publish into `out` without a connection (for the blocking paced publisher).
pub fn encode_publish(proto: Proto, out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    match proto {
        Proto::Mqtt => mqtt::encode_publish(out, topic, payload),
        Proto::Nats => nats::encode_pub(out, topic, payload),
    }
}
