//! `GET /v1/bridges`: every source and sink.

use serde::{Deserialize, Serialize};

/// One source or sink of a bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeView {
    /// `kafka` or `amqp`.
    pub kind: String,
    /// The cluster or broker.
    pub member: String,
    /// The source's or sink's name.
    pub name: String,
    /// `source` or `sink`.
    pub role: String,
    /// What it reads: the Kafka topics or AMQP queue of a source, the filter of a sink.
    pub reads: String,
    /// `starting`, `up`, `down` or `stopped`.
    pub state: String,
    /// Seconds in that state.
    pub state_secs: u64,
    /// The last error.
    pub last_error: Option<String>,
    /// When it happened, milliseconds since the epoch.
    pub last_error_at_ms: Option<u64>,
    /// Records (source) or events (sink) taken.
    pub consumed: u64,
    /// Events published into the mesh (source) or acknowledged by the broker (sink).
    pub forwarded: u64,
    /// Records no subscriber wanted (dropped at the edge).
    pub unrouted: u64,
    /// Events not written back to the member they came from.
    pub skipped_loop: u64,
    /// Records the mesh refused.
    pub refused: u64,
    /// Reconnections and rewrites.
    pub retries: u64,
    /// Events waiting in a sink's journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_events: Option<u64>,
    /// Their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_bytes: Option<u64>,
}
