//! Topics, filters and the subscription trie of meshgate.
//!
//! This crate holds the topic grammar (concrete topics, native `*`/`prefix*`/`>` filters and
//! MQTT `+`/`#`/`$share` filters translated to them), the wildcard subscription [`Trie`], the
//! per-publisher [`MatchCache`] in front of it, and the [`RetainTree`] of retained messages.
//!
//! It is pure: no tokio, no IO, no clock, no threads. Everything is driven by its callers, so a
//! simulation can use it on virtual time.

mod cache;
mod children;
mod entry;
mod error;
mod filter;
mod matches;
mod mqtt;
mod naive;
mod retained;
mod topic;
mod trie;
mod wild;

pub use cache::MatchCache;
pub use error::TopicError;
pub use filter::Filter;
pub use matches::{GroupMatch, Matches};
pub use mqtt::{MqttFilter, parse_mqtt_filter};
pub use naive::NaiveMatcher;
pub use retained::RetainTree;
pub use topic::{MAX_LEVELS, MAX_TOPIC_BYTES, is_system_topic, validate_topic};
pub use trie::Trie;
