//! The router of a meshgate node: every subscriber, whatever its protocol, sits in one wildcard
//! trie; every publish, whatever its protocol, is matched once against it and handed to the
//! matching mailboxes.
//!
//! Front ends (MQTT, HTTP, later bridges and mesh links) call [`Broker::publish`] and
//! [`Broker::subscribe`]; they never see each other. This crate does no socket IO: a mailbox is a
//! bounded in-memory queue that the owning connection drains and writes in batches.

mod cursor;
pub mod flow;
mod mailbox;
mod meter;
mod policy;
mod publisher;
mod route;
mod router;
mod shared_trie;
mod stats;

pub use cursor::JournalCursor;
pub use mailbox::{Delivery, Mailbox, MailboxReceiver, Receiver, SessionId, TryRecvError};
pub use meter::{LocalMeter, Meter, MeterEntry, Metered};
pub use policy::{Denied, DenyKind, Policy};
pub use publisher::Publisher;
pub use router::{
    Broker, BrokerConfig, Interest, MeshHook, PublishError, PublishReport, RemoteDest, SubOptions,
};
pub use stats::BrokerStats;

/// Milliseconds since the Unix epoch, for event timestamps and ids.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
