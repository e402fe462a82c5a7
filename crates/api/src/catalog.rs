//! `GET /v1/catalog` and `POST /v1/catalog/reload`: the governance catalog with who produces
//! and subscribes now.

use serde::{Deserialize, Serialize};

/// `GET /v1/catalog`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CatalogView {
    /// The catalog's version (grows at each accepted reload).
    pub version: u64,
    /// The specs directory.
    pub specs_dir: String,
    /// One per spec file.
    pub products: Vec<ProductView>,
    /// Every channel of every product.
    pub channels: Vec<ChannelView>,
    /// The last reload that was refused (the catalog in force stayed).
    pub last_refused_reload: Option<RefusedReload>,
}

/// A data product: one spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProductView {
    /// The owning app id.
    pub app: String,
    /// The spec file.
    pub file: String,
    /// `specmesh`, `asyncapi-2` or `asyncapi-3`.
    pub dialect: String,
    /// The document's `asyncapi` version.
    pub asyncapi: String,
    /// `info.title`.
    pub title: Option<String>,
    /// `info.version`.
    pub version: Option<String>,
    /// Its channels' names.
    pub channels: Vec<String>,
}

/// A channel with its rules and its live producers and subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelView {
    /// The owning app id.
    pub owner: String,
    /// The name (address without parameters, `.`-separated).
    pub name: String,
    /// The address as written.
    pub address: String,
    /// `event`, `data`, `command` or `internal`.
    pub kind: String,
    /// The MQTT filter of its topics.
    pub topic: String,
    /// The Kafka topic.
    pub kafka_topic: String,
    /// `public`, `protected` or `private`.
    pub access: String,
    /// Apps granted read access (protected channels).
    pub grants: Vec<String>,
    /// Apps besides the owner that may write it.
    pub producers: Vec<String>,
    /// End of life of a deprecated channel, `YYYY-MM-DD`.
    pub eol: Option<String>,
    /// Whether a payload schema is checked at ingress.
    pub schema: bool,
    /// Kafka partitions the spec asks for.
    pub partitions: Option<u32>,
    /// Subscriptions (local and remote) that overlap it.
    pub subscribers: Vec<SubscriberView>,
    /// Apps that published to it in the last hour.
    pub producers_last_hour: Vec<ProducerView>,
}

/// A subscription overlapping a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriberView {
    /// The filter (native syntax).
    pub filter: String,
    /// Its queue group.
    pub group: Option<String>,
    /// The app of a local subscriber.
    pub app: Option<String>,
    /// The node of a remote one.
    pub node: Option<String>,
}

/// An app that published to a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProducerView {
    /// The app id.
    pub app: String,
    /// Events it published.
    pub messages: u64,
}

/// A reload that was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefusedReload {
    /// When, unix seconds.
    pub at: u64,
    /// Every problem, with file and line.
    pub problems: Vec<String>,
}

/// `POST /v1/catalog/reload` accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadOk {
    /// The catalog's version now.
    pub version: u64,
}

/// `POST /v1/catalog/reload` refused (422): the catalog in force stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadRefused {
    /// What happened, for a person.
    pub error: String,
    /// Every problem, with file and line.
    pub problems: Vec<String>,
}
