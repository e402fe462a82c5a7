//! Governance of the mesh: the catalog of data products read from AsyncAPI specs, and the rules
//! that decide who may publish and subscribe to what (see `GOVERNANCE.md`).
//!
//! It is pure: no network IO, no tokio, no clock (callers pass the date). Only [`load`] reads
//! files, to fill [`Sources`]; everything else works on in-memory text.
//!
//! - [`Catalog::build`] reads specs in three dialects ([`Dialect`]) into one model and reports
//!   [`Problem`]s with file and line; [`validate`] only reports.
//! - [`Catalog::check_publish`], [`Catalog::check_subscribe`], [`Catalog::may_read`],
//!   [`Catalog::advertisable`] apply the rules; a [`Refusal`] carries the MQTT and HTTP codes.
//! - [`validate_payload`] checks payloads against compiled schemas; [`check_compatible`] checks
//!   that a new catalog keeps consumers of the previous one working.
//! - [`plan`] computes the Kafka topic changes for `spec plan`/`spec apply`.
//!
//! # For the node
//!
//! Keep the current catalog behind an `Arc` (e.g. `arc-swap`) and build a new one on reload with
//! a new [`Catalog::version`]. At delivery, [`Catalog::may_read`] is the whole check: two or three
//! hash lookups, no allocation, so it can run per event per subscriber. A subscriber may cache
//! its answer per `(catalog version, topic)` or per [`ChannelId`] (ids are only valid for the
//! catalog version they came from); a new version invalidates the cache, which is how a revoked
//! grant stops delivery at once and a new readable channel is picked up without resubscribing.
//! Retained messages and replays go through the same check. When a reload changes the version,
//! re-run [`Catalog::check_subscribe`] for live subscriptions only to refresh what is advertised
//! ([`SubscribeGrant::advertise`]); an accepted subscription is never refused later, its delivery
//! is just filtered.

mod app;
mod catalog;
mod compat;
mod date;
pub mod load;
mod model;
mod parse;
mod plan;
mod problem;
mod rules;
mod schema;
mod sources;
mod yaml;

pub use app::{AppId, AppIdError};
pub use catalog::{Catalog, validate};
pub use compat::{MIN_EOL_NOTICE_DAYS, check_compatible, check_compatible_at};
pub use date::{Date, DateError};
pub use model::{
    Access, Channel, ChannelId, ChannelKind, DataProduct, Dialect, KafkaBinding, Message,
    MessageSchema, ParamSource, Parameter, SchemaFormat,
};
pub use plan::{ConfigChange, ExistingTopic, PartitionChange, Plan, PlannedTopic, plan};
pub use problem::Problem;
pub use rules::{Accepted, Denial, Refusal, RefusalKind, SubscribeGrant, group_allowed};
pub use schema::validate_payload;
pub use sources::Sources;
