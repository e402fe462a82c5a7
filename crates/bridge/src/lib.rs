//! What every bridge of a meshgate node shares, whatever protocol it speaks (Kafka, AMQP).
//!
//! - [`template`]: topic and name templates (`orders/{header.region}/{key}`), pure.
//! - [`origin`]: the loop rules: a record that came out of the mesh never goes back in, and an
//!   event is never produced back into the member it came from.
//! - [`status`]: state, last error and counters of each bridge, for `GET /v1/bridges` and
//!   `/metrics`.
//! - [`sink`]: drives a subscription into a protocol's producer: journaled, in order, released
//!   only after the far side acknowledged, retried with backoff.
//! - [`ingress`]: publishes a protocol's records as guaranteed events and says when they are
//!   durable, so the source acknowledges (commits offsets, acks deliveries) only then.
//!
//! Protocol crates (`meshgate-kafka`, `meshgate-amqp`) stay thin: they map records to
//! envelopes and back, and talk to their client libraries.

pub mod backoff;
mod error;
pub mod ingress;
pub mod origin;
pub mod sink;
pub mod status;
pub mod template;

pub use backoff::{Backoff, retry_later};
pub use error::{SinkError, SourceError, StartError};
pub use ingress::{Ingress, IngressError};
pub use sink::{SinkSpec, SinkTarget, run_sink, spawn_sink};
pub use status::{BridgeStatus, Bridges, State};
pub use template::{Template, TemplateError, Vars};

use std::path::PathBuf;

use meshgate_broker::Broker;
use meshgate_store::Journal;
use tokio::sync::watch;

/// Segment size of a sink journal.
const SINK_SEGMENT_BYTES: u64 = 4 << 20;

/// What a protocol crate gets to start its sources and sinks.
#[derive(Clone)]
pub struct BridgeContext {
    /// The node's router.
    pub broker: Broker,
    /// The node's name (stamped into the origin header of written records).
    pub node: String,
    /// `DATA_DIR/bridges` when the node has a store; sinks keep their journals there.
    pub dir: Option<PathBuf>,
    /// Where statuses are registered.
    pub bridges: Bridges,
    /// Turns true when the node stops.
    pub shutdown: watch::Receiver<bool>,
}

impl BridgeContext {
    /// Opens (recovering) the journal of sink `name` of `member`, or `None` without a store.
    pub fn sink_journal(
        &self,
        kind: &str,
        member: &str,
        name: &str,
    ) -> Result<Option<Journal>, StartError> {
        let (Some(dir), Some(disk)) = (&self.dir, self.broker.disk()) else {
            return Ok(None);
        };
        let dir = dir.join(format!("{kind}-{member}-{name}"));
        let (journal, report) = disk
            .open(&dir, SINK_SEGMENT_BYTES)
            .map_err(|e| StartError::Journal(format!("sink {}: {e}", dir.display())))?;
        if report.truncated_bytes > 0 || !report.corrupt.is_empty() {
            tracing::warn!(
                dir = %dir.display(),
                truncated_bytes = report.truncated_bytes,
                corrupt = ?report.corrupt,
                "sink journal recovered with damage"
            );
        }
        Ok(Some(journal))
    }
}
