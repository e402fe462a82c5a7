//! The governance hook: who may publish on a topic, subscribe to a filter and read an event.
//!
//! The router asks a [`Policy`] (the node plugs in the AsyncAPI catalog) on every publish, and
//! for every local subscriber an event matches, so that a revoked grant stops delivery at once
//! and wildcard subscriptions receive only what their app may read. Without a policy the node
//! is open: everything is allowed.

use meshgate_topic::{Filter, MqttFilter};
use thiserror::Error;

/// A refusal by the policy: what the client is told and how it is counted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct Denied {
    /// Stable reason for metrics (`not_authorized`, `schema`, `past_eol`, ...). Unknown and
    /// forbidden topics are told apart here only, never to the client.
    pub reason: &'static str,
    /// The text for the client.
    pub message: String,
    /// What the refusal means; each front end maps it to its protocol's code.
    pub kind: DenyKind,
}

/// What a refusal means, whatever the protocol: `crates/mqtt` and `crates/http` map each kind
/// to their own code (MQTT 5 0x87 / 0x90 / 0x99, HTTP 403 / 400 / 422).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyKind {
    /// Unknown or forbidden (a client is never told which).
    NotAuthorized,
    /// The topic or filter is malformed.
    InvalidTopic,
    /// The payload does not match what the topic accepts.
    InvalidPayload,
}

/// Decides publish, subscribe and read rights by app id (`None`: an anonymous client).
pub trait Policy: Send + Sync + 'static {
    /// May `app` publish `payload` on the concrete topic `topic`?
    fn check_publish(&self, app: Option<&str>, topic: &str, payload: &[u8]) -> Result<(), Denied>;

    /// May `app` subscribe to `filter`? Accepted wildcard subscriptions are filtered per event
    /// by [`Policy::may_read`].
    fn check_subscribe(&self, app: Option<&str>, filter: &MqttFilter) -> Result<(), Denied>;

    /// May `app` read an event on `topic`? Runs per event per matched subscriber: keep it
    /// cheap and allocation-free.
    fn may_read(&self, app: Option<&str>, topic: &str) -> bool;

    /// Is an accepted subscription of `app` to `filter` announced to the mesh? Interest the app
    /// may read nothing through need not pull events across links. Asked at subscribe time and
    /// again by [`crate::Broker::refresh_advertised`].
    fn advertise(&self, app: Option<&str>, filter: &Filter) -> bool {
        let _ = (app, filter);
        true
    }
}
