//! `POST /v1/bridges/kafka/{cluster}/replay`: a range of a Kafka topic published again.

use serde::{Deserialize, Serialize};

/// What to replay (`POST /v1/bridges/kafka/{cluster}/replay`, `meshgate kafka replay`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Kafka topic.
    pub topic: String,
    /// Only events whose mesh topic matches this filter (default: all, `>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// From this record timestamp (ms since the epoch), inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Up to this record timestamp, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// From this offset (every partition, or `partition`), inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_offset: Option<i64>,
    /// Up to this offset, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_offset: Option<i64>,
    /// Only this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplayReport {
    /// Records read from Kafka in the range.
    pub read: u64,
    /// Events published into the mesh.
    pub published: u64,
    /// Records outside the filter.
    pub filtered: u64,
    /// Records written by a meshgate sink (never taken back).
    pub skipped_loop: u64,
    /// Records the mesh refused (invalid topic, too large).
    pub refused: u64,
    /// Partitions read.
    pub partitions: u64,
}
