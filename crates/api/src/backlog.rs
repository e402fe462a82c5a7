//! `GET /v1/backlog`, and the guaranteed queues `GET /v1/mesh` also shows.

use serde::{Deserialize, Serialize};

/// `GET /v1/backlog`: the store and what waits in it, per link queue, persistent session and
/// bridge sink. A node without a data directory has no store and nothing waiting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BacklogView {
    /// The store; `None` without a data directory.
    pub store: Option<StoreView>,
    /// The guaranteed queues of the mesh, per next hop (`held`: no route now).
    pub links: Vec<QueueView>,
    /// Stored MQTT sessions.
    pub sessions: SessionsBacklog,
    /// Bridge sinks with a journal.
    pub bridges: Vec<BridgeBacklog>,
}

/// The store of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreView {
    /// Bytes all journals use.
    pub used_bytes: u64,
    /// The quota.
    pub quota_bytes: u64,
    /// `group`, `always` or `os`.
    pub commit: String,
    /// Commit cycles completed.
    pub commit_cycles: u64,
    /// fsyncs that failed.
    pub sync_errors: u64,
    /// Why the store stopped acknowledging, after a failed fsync.
    pub failed: Option<String>,
}

/// One guaranteed queue: a next hop, or `held`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueView {
    /// The peer, or `held`.
    pub queue: String,
    /// Events not acknowledged by the peer yet.
    pub events: u64,
    /// Events in the queue's files (acknowledged ones wait for their release).
    pub stored_events: u64,
    /// Bytes of the queue's files.
    pub bytes: u64,
    /// Age of the oldest event not acknowledged, milliseconds.
    pub oldest_age_ms: Option<u64>,
    /// Events sent from the queue (resends included).
    pub sent: u64,
    /// The peer acknowledged up to this sequence number.
    pub acked_up_to: u64,
}

/// The store's use of its quota, as the mesh view shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreUse {
    /// Bytes all journals use.
    pub used_bytes: u64,
    /// The quota.
    pub quota_bytes: u64,
}

/// The guaranteed side of the mesh (`guaranteed` of `GET /v1/mesh`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuaranteedView {
    /// Every queue, by name.
    pub queues: Vec<QueueView>,
    /// The store's use of its quota.
    pub store: StoreUse,
    /// Guaranteed events that arrived twice and were dropped.
    pub duplicates_dropped: u64,
    /// Events whose destinations all expired while they waited.
    pub expired: u64,
}

/// Stored MQTT sessions and what waits in their journals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionsBacklog {
    /// Events waiting, all sessions.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The 1,000 largest sessions.
    pub sessions: Vec<SessionBacklog>,
}

/// One stored session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionBacklog {
    /// Its client id.
    pub client_id: String,
    /// Whether a client is connected to it.
    pub online: bool,
    /// Events waiting.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Age of the oldest, milliseconds.
    pub oldest_age_ms: Option<u64>,
}

/// A bridge sink's journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeBacklog {
    /// `kafka` or `amqp`.
    pub kind: String,
    /// The cluster or broker.
    pub member: String,
    /// The sink's name.
    pub name: String,
    /// Events waiting.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
}
