//! Configuration: one tree of serde structs with documented defaults, read from a TOML file,
//! then `MESHGATE_<SECTION>__<KEY>` environment variables, then command-line flags (each layer
//! overrides the one before). Unknown keys are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} not found")]
    Missing(PathBuf),
    /// Syntax errors, unknown keys, wrong types (figment names the key and the source).
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// A value that parses but cannot work.
    #[error("{key}: {msg}")]
    Invalid {
        /// Dotted path of the offending key.
        key: &'static str,
        /// What is wrong with it.
        msg: String,
    },
}

/// The whole configuration of a node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and storage of the node.
    pub node: NodeConfig,
    /// The MQTT listener.
    pub mqtt: MqttConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// Mesh links to other nodes.
    pub mesh: MeshConfig,
    /// The store of guaranteed events and persistent sessions.
    pub store: StoreConfig,
    /// Limits that apply to every protocol.
    pub limits: LimitsConfig,
    /// Flow control: how publishers wait for slower consumers.
    pub flow: FlowConfig,
    /// Logging.
    pub log: LogConfig,
    /// Kafka clusters with their sources and sinks (`[[kafka]]`, `[[kafka.source]]`,
    /// `[[kafka.sink]]`).
    pub kafka: Vec<KafkaConfig>,
    /// AMQP 0-9-1 brokers with their sources and sinks (`[[amqp]]`, `[[amqp.source]]`,
    /// `[[amqp.sink]]`).
    pub amqp: Vec<AmqpConfig>,
    /// AsyncAPI specs that govern who may publish and read what.
    pub governance: GovernanceConfig,
    /// Metering of every app's traffic.
    pub chargeback: ChargebackConfig,
}

/// `[chargeback]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChargebackConfig {
    /// Minutes of per-minute history `GET /v1/chargeback` can answer from.
    pub retention_minutes: u64,
}

impl Default for ChargebackConfig {
    fn default() -> Self {
        Self {
            retention_minutes: 24 * 60,
        }
    }
}

/// `[governance]`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// Directory of AsyncAPI specs (SpecMesh dialect, AsyncAPI 2.6 or 3.0). Unset: the node is
    /// open (every authenticated or anonymous client may publish and read everything). Set:
    /// closed by default; only what the specs allow. Reloaded on SIGHUP and
    /// `POST /v1/catalog/reload`.
    pub specs_dir: Option<PathBuf>,
}

/// One `[[http.tokens]]` entry: a REST bearer token and the app id it authenticates as.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpToken {
    /// The token clients send as `Authorization: Bearer <token>`, as written (prefer
    /// `token_sha256`).
    pub token: Option<String>,
    /// The token's SHA-256 in lowercase hex (`meshgate passwd --token`).
    pub token_sha256: Option<String>,
    /// The app id.
    pub app_id: String,
}

impl HttpToken {
    /// The digest the node looks presented tokens up by.
    pub fn digest(&self) -> String {
        match (&self.token_sha256, &self.token) {
            (Some(d), _) => d.to_ascii_lowercase(),
            (None, Some(t)) => meshgate_auth::token_digest(t.as_bytes()),
            (None, None) => String::new(),
        }
    }
}

#[cfg(feature = "amqp")]
pub use meshgate_amqp::AmqpConfig;
/// This build has no AMQP bridge: any `[[amqp]]` table is refused at validation.
#[cfg(not(feature = "amqp"))]
pub type AmqpConfig = serde_json::Value;

#[cfg(feature = "kafka")]
pub use meshgate_kafka::KafkaConfig;
/// This build has no Kafka bridge: any `[[kafka]]` table is refused at validation.
#[cfg(not(feature = "kafka"))]
pub type KafkaConfig = serde_json::Value;

/// `[node]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of the node, unique in the mesh: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Directory for durable state: guaranteed queues and persistent MQTT sessions (created
    /// when needed). Give each node its own.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "meshgate".into(),
            data_dir: "data".into(),
        }
    }
}

/// `[mqtt]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// TCP address of the MQTT listener.
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: u32,
    /// Events queued per session above which publishers wait for the subscriber (its connection
    /// stops reading them); an offline session's queue stops here (QoS 1 beyond it waits in the
    /// session's journal when the node has a store). Twice this is the hard limit.
    pub max_queued_messages: usize,
    /// The same in bytes.
    pub max_queued_bytes: u64,
    /// What happens to a subscriber that takes nothing for `flow.stall_ms` while publishers wait
    /// for it: `drop` (new events for it are dropped and counted until it drained to half its
    /// queue) or `disconnect` (MQTT 5 clients get DISCONNECT 0x97).
    pub slow_consumer: SlowConsumer,
    /// QoS 1 deliveries in flight per connection.
    pub max_inflight: u16,
    /// Topic aliases a v5 client may set.
    pub topic_alias_max: u16,
    /// Longest session expiry granted; also how long MQTT 3.1.1 persistent sessions live.
    pub max_session_expiry_secs: u32,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Seconds a write to a client may block before the client is dropped.
    pub write_timeout_secs: u64,
    /// Accept clients without a user name.
    pub allow_anonymous: bool,
    /// Users with passwords, each acting as an app id.
    pub users: Vec<MqttUser>,
    /// TCP address of a second listener speaking MQTT over TLS (e.g. 127.0.0.1:8883); unset:
    /// none. Needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain the TLS listener presents.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA of client certificates. Set: every TLS client must present a certificate signed
    /// by it, and the certificate's name (its first DNS name, as `meshgate cert issue --name
    /// APP_ID` writes it) is the client's app id, whatever user name it sends.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 1883).into(),
            max_packet_size: 1024 * 1024 + 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 32 << 20,
            slow_consumer: SlowConsumer::Drop,
            max_inflight: 64,
            topic_alias_max: 64,
            max_session_expiry_secs: 7 * 24 * 3600,
            connect_timeout_secs: 10,
            write_timeout_secs: 30,
            allow_anonymous: true,
            users: Vec::new(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// One `[[mqtt.users]]` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    /// User name the client presents.
    pub username: String,
    /// Password the client presents, as written (prefer `password_hash`).
    pub password: Option<String>,
    /// The password's argon2 hash (PHC format, from `meshgate passwd`).
    pub password_hash: Option<String>,
    /// App id the user acts as; defaults to the user name.
    pub app_id: Option<String>,
}

impl MqttUser {
    /// The password as the authenticator keeps it.
    pub fn secret(&self) -> meshgate_auth::Secret {
        match (&self.password_hash, &self.password) {
            (Some(h), _) => meshgate_auth::Secret::Argon2(h.clone()),
            (None, Some(p)) => meshgate_auth::Secret::Plain(p.clone()),
            (None, None) => meshgate_auth::Secret::Plain(String::new()),
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP address of the HTTP API.
    pub listen: SocketAddr,
    /// Events queued per SSE or WebSocket stream above which publishers wait for it. Twice
    /// this is the hard limit.
    pub sse_queue: usize,
    /// The same in bytes.
    pub sse_queue_bytes: u64,
    /// What happens to a stream that takes nothing for `flow.stall_ms` while publishers wait
    /// for it: `drop` or `disconnect` (the stream ends).
    pub slow_consumer: SlowConsumer,
    /// Milliseconds a REST publish waits for congested subscribers before it is answered 503
    /// with `Retry-After` (and not published).
    pub publish_wait_ms: u64,
    /// Bearer tokens of REST clients (`[[http.tokens]]`).
    pub tokens: Vec<HttpToken>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            sse_queue: 10_000,
            sse_queue_bytes: 32 << 20,
            slow_consumer: SlowConsumer::Drop,
            publish_wait_ms: 2_000,
            tokens: Vec::new(),
        }
    }
}

/// `[mesh]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// UDP address for QUIC mesh links.
    pub listen: SocketAddr,
    /// Nodes to dial, as `host:port`.
    pub peers: Vec<String>,
    /// Directory holding `ca.pem`, `<name>.pem` and `<name>.key`. The mesh runs only when set.
    pub tls_dir: Option<PathBuf>,
    /// `edge` or `core`.
    pub role: meshgate_mesh::Role,
    /// Cost this node gives each of its links in shortest-path routing.
    pub link_cost: u32,
    /// Seconds between anti-entropy digests and pings on each link.
    pub gossip_interval_secs: f64,
    /// Seconds a silent link stays up before it is declared down.
    pub idle_timeout_secs: f64,
    /// Seconds the registry keeps the entry of a node that is unreachable. Direct events for
    /// it are dropped (and counted) as soon as it is unreachable; guaranteed events for it are
    /// stored until it returns or this time has passed.
    pub expire_unreachable_secs: u64,
    /// Longest wait, in seconds, between two dials of a peer that does not answer.
    pub max_backoff_secs: f64,
    /// Largest frame accepted from a peer, in bytes.
    pub max_frame_bytes: usize,
    /// Direct events queued per link above which publishers (and the links that feed it) wait
    /// for it. A link that takes nothing for `flow.stall_ms` is declared slow: new direct events
    /// for it are dropped and counted until its queue drained to half. Twice this is the hard
    /// limit.
    pub link_queue: usize,
    /// The same in bytes.
    pub link_queue_bytes: u64,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7400).into(),
            peers: Vec::new(),
            tls_dir: None,
            role: meshgate_mesh::Role::Edge,
            link_cost: 10,
            gossip_interval_secs: 1.0,
            idle_timeout_secs: 10.0,
            expire_unreachable_secs: 24 * 3600,
            max_backoff_secs: 5.0,
            max_frame_bytes: 16 * 1024 * 1024,
            link_queue: 65536,
            link_queue_bytes: 64 << 20,
        }
    }
}

/// `[store]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Store guaranteed events and persistent sessions in `node.data_dir`. Off: QoS 1 and
    /// guaranteed REST publishes are acknowledged once routed, and held in memory only.
    pub enabled: bool,
    /// When a guaranteed event counts as stored, and so when its publisher is acknowledged:
    /// `group` (fsync once per group-commit window for everything written in it; safe),
    /// `always` (fsync every event; safe, slowest), `os` (written to the operating system;
    /// survives a killed process but not a power loss or kernel crash).
    pub commit: CommitPolicy,
    /// Least time between two group commits in milliseconds (`commit = "group"`), or the
    /// background fsync interval (`commit = "os"`, at least 1). 0 (the default) = fsync as soon
    /// as anything is written, batching whatever arrives during the previous fsync.
    pub group_commit_ms: u64,
    /// Disk quota of the store in bytes. When full, guaranteed publishes are refused (MQTT v5
    /// reason 0x97, HTTP 507) and direct traffic keeps flowing.
    pub quota_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            commit: CommitPolicy::Group,
            group_commit_ms: 0,
            quota_bytes: 1 << 30,
        }
    }
}

/// `store.commit`
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CommitPolicy {
    /// Group commit.
    Group,
    /// Fsync per event.
    Always,
    /// Page cache only.
    Os,
}

/// `[limits]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest event payload in bytes, for every protocol.
    pub max_payload_bytes: usize,
    /// Retained messages held at most.
    pub max_retained_messages: usize,
    /// Match-cache slots per publishing connection.
    pub match_cache_slots: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_retained_messages: 100_000,
            match_cache_slots: 256,
        }
    }
}

/// What happens to a consumer that takes nothing while publishers wait for it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// New events for it are dropped and counted until it drained to half its queue.
    #[default]
    Drop,
    /// It is disconnected.
    Disconnect,
}

impl From<SlowConsumer> for meshgate_broker::flow::SlowPolicy {
    fn from(s: SlowConsumer) -> Self {
        match s {
            SlowConsumer::Drop => Self::Drop,
            SlowConsumer::Disconnect => Self::Disconnect,
        }
    }
}

/// `[flow]`: how publishers wait for slower consumers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Milliseconds a consumer (a subscriber, an SSE stream, a mesh link) may take nothing while
    /// publishers wait for its full queue before it is declared slow; until then publishers
    /// wait, and lose nothing.
    pub stall_ms: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self { stall_ms: 500 }
    }
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `meshgate_mqtt=debug,info`; `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Values given on the command line; each overrides the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--name`
    pub name: Option<String>,
    /// `--mqtt`
    pub mqtt: Option<SocketAddr>,
    /// `--http`
    pub http: Option<SocketAddr>,
    /// `--mesh`
    pub mesh: Option<SocketAddr>,
    /// `--peer` (repeatable; replaces the file's list when given)
    pub peers: Vec<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--tls-dir`
    pub tls_dir: Option<PathBuf>,
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment, then `overrides`, and
    /// validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Missing(f.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only sectioned names (`MESHGATE_MQTT__LISTEN`) are configuration, so unrelated
        // variables that happen to start with MESHGATE_ are left alone.
        fig = fig.merge(
            Env::prefixed("MESHGATE_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let o = overrides;
        if let Some(v) = &o.name {
            fig = fig.merge(Serialized::default("node.name", v));
        }
        if let Some(v) = &o.mqtt {
            fig = fig.merge(Serialized::default("mqtt.listen", v));
        }
        if let Some(v) = &o.http {
            fig = fig.merge(Serialized::default("http.listen", v));
        }
        if let Some(v) = &o.mesh {
            fig = fig.merge(Serialized::default("mesh.listen", v));
        }
        if !o.peers.is_empty() {
            fig = fig.merge(Serialized::default("mesh.peers", &o.peers));
        }
        if let Some(v) = &o.data_dir {
            fig = fig.merge(Serialized::default("node.data_dir", v));
        }
        if let Some(v) = &o.tls_dir {
            fig = fig.merge(Serialized::default("mesh.tls_dir", v));
        }
        let config: Config = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, msg: String| Err(ConfigError::Invalid { key, msg });
        for (key, zero) in [
            ("flow.stall_ms", self.flow.stall_ms == 0),
            (
                "mqtt.max_queued_messages",
                self.mqtt.max_queued_messages == 0,
            ),
            ("mqtt.max_queued_bytes", self.mqtt.max_queued_bytes == 0),
            ("http.sse_queue", self.http.sse_queue == 0),
            ("http.sse_queue_bytes", self.http.sse_queue_bytes == 0),
            ("mesh.link_queue", self.mesh.link_queue == 0),
            ("mesh.link_queue_bytes", self.mesh.link_queue_bytes == 0),
        ] {
            if zero {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.mqtt.tls_listen.is_some()
            && (self.mqtt.tls_cert.is_none() || self.mqtt.tls_key.is_none())
        {
            return bad(
                "mqtt.tls_listen",
                "needs mqtt.tls_cert and mqtt.tls_key".into(),
            );
        }
        for (i, u) in self.mqtt.users.iter().enumerate() {
            if u.password.is_some() == u.password_hash.is_some() {
                return bad(
                    "mqtt.users",
                    format!(
                        "[{i}] {:?}: give password or password_hash, not both or neither",
                        u.username
                    ),
                );
            }
            if let Err(e) = u.secret().check() {
                return bad(
                    "mqtt.users",
                    format!("[{i}] {:?}: password_hash: {e}", u.username),
                );
            }
        }
        for (i, t) in self.http.tokens.iter().enumerate() {
            if t.token.is_some() == t.token_sha256.is_some() {
                return bad(
                    "http.tokens",
                    format!("[{i}]: give token or token_sha256, not both or neither"),
                );
            }
            let d = t.digest();
            if d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                return bad(
                    "http.tokens",
                    format!("[{i}]: token_sha256 must be 64 hex digits"),
                );
            }
        }
        let name = &self.node.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(
                "node.name",
                format!("invalid name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
        for (i, p) in self.mesh.peers.iter().enumerate() {
            let ok = p
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "mesh.peers",
                    msg: format!("[{i}]: invalid address {p:?}, expected host:port"),
                });
            }
        }
        if self.mesh.link_cost == 0 {
            return bad("mesh.link_cost", "must be at least 1".into());
        }
        for (key, v) in [
            ("mesh.gossip_interval_secs", self.mesh.gossip_interval_secs),
            ("mesh.idle_timeout_secs", self.mesh.idle_timeout_secs),
            ("mesh.max_backoff_secs", self.mesh.max_backoff_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 86_400.0) {
                return bad(key, format!("{v}: use a number of seconds above 0"));
            }
        }
        if self.mesh.max_frame_bytes < 64 * 1024 + self.limits.max_payload_bytes {
            return bad(
                "mesh.max_frame_bytes",
                format!(
                    "{} is too small for limits.max_payload_bytes ({}) plus 64 KiB",
                    self.mesh.max_frame_bytes, self.limits.max_payload_bytes
                ),
            );
        }
        if self.store.group_commit_ms > 10_000 {
            return bad(
                "store.group_commit_ms",
                format!("{}: use at most 10000", self.store.group_commit_ms),
            );
        }
        if self.store.quota_bytes < 1 << 20 {
            return bad(
                "store.quota_bytes",
                format!("{}: use at least 1048576 (1 MiB)", self.store.quota_bytes),
            );
        }
        #[cfg(feature = "kafka")]
        for k in &self.kafka {
            k.validate()
                .map_err(|msg| ConfigError::Invalid { key: "kafka", msg })?;
        }
        #[cfg(not(feature = "kafka"))]
        if let Some(k) = self.kafka.first() {
            return bad(
                "kafka",
                format!("this build has no Kafka bridge (feature \"kafka\"): {k}"),
            );
        }
        #[cfg(feature = "amqp")]
        for a in &self.amqp {
            a.validate()
                .map_err(|msg| ConfigError::Invalid { key: "amqp", msg })?;
        }
        #[cfg(not(feature = "amqp"))]
        if let Some(a) = self.amqp.first() {
            return bad(
                "amqp",
                format!("this build has no AMQP bridge (feature \"amqp\"): {a}"),
            );
        }
        if self.mesh.link_queue == 0 {
            return bad("mesh.link_queue", "must be at least 1".into());
        }
        if self.limits.max_payload_bytes == 0 {
            return bad("limits.max_payload_bytes", "must be at least 1".into());
        }
        if (self.mqtt.max_packet_size as usize)
            < self.limits.max_payload_bytes.min(u32::MAX as usize)
        {
            return bad(
                "mqtt.max_packet_size",
                format!(
                    "{} is smaller than limits.max_payload_bytes ({}); MQTT clients could not send payloads the node accepts elsewhere",
                    self.mqtt.max_packet_size, self.limits.max_payload_bytes
                ),
            );
        }
        if self.mqtt.max_inflight == 0 {
            return bad("mqtt.max_inflight", "must be at least 1".into());
        }
        if self.mqtt.max_queued_messages == 0 {
            return bad("mqtt.max_queued_messages", "must be at least 1".into());
        }
        if self.http.sse_queue == 0 {
            return bad("http.sse_queue", "must be at least 1".into());
        }
        if self.limits.match_cache_slots == 0 {
            return bad("limits.match_cache_slots", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
