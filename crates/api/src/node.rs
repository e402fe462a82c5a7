//! `GET /v1/node`: counts of what the node holds.

use serde::{Deserialize, Serialize};

/// `GET /v1/node`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    /// The node's name.
    pub node: String,
    /// The meshgate version.
    pub version: String,
    /// Live sessions (MQTT sessions, SSE and WebSocket streams).
    pub sessions: u64,
    /// Subscriptions, local and remote.
    pub subscriptions: u64,
    /// Distinct filters.
    pub filters: u64,
    /// Retained events.
    pub retained: u64,
}

/// The answer to `POST /v1/publish/{topic}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublishAnswer {
    /// The event id the node minted.
    pub id: String,
    /// Local subscribers (mailboxes) it reached.
    pub routed: u64,
    /// Remote nodes it was sent towards (one copy per next-hop link carries them).
    pub remote: u64,
    /// `direct` or `guaranteed`.
    pub delivery: String,
}
