//! The normalised model: data products (one per spec file) and their channels.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use meshgate_topic::Filter;
use serde::Serialize;

use crate::app::AppId;
use crate::date::Date;
use crate::schema::CompiledSchema;

/// The AsyncAPI dialect a spec file was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// SpecMesh: AsyncAPI 2.0 to 2.5, where `publish` means "the owner writes here".
    SpecMesh,
    /// Plain AsyncAPI 2.6 (or any 2.x with `x-dialect: asyncapi-2`): `subscribe` means "the
    /// owner writes here" (others subscribe), `publish` means "the owner reads here".
    AsyncApi2,
    /// AsyncAPI 3.x: `send` and `receive` operations that reference channels.
    AsyncApi3,
}

impl Dialect {
    /// The name used by `x-dialect` and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::SpecMesh => "specmesh",
            Dialect::AsyncApi2 => "asyncapi-2",
            Dialect::AsyncApi3 => "asyncapi-3",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One data product: the channels that one application owns, read from one spec file.
#[derive(Clone, Debug, Serialize)]
pub struct DataProduct {
    /// The owning application (`id: urn:<app>`).
    pub app: AppId,
    /// The spec file, relative to the specs directory.
    pub file: String,
    /// The dialect the file was read in.
    pub dialect: Dialect,
    /// The `asyncapi` version string of the file.
    pub asyncapi: String,
    /// `info.title`.
    pub title: Option<String>,
    /// `info.version`.
    pub version: Option<String>,
    /// `info.description`.
    pub description: Option<String>,
    /// The product's channels, in file order.
    pub channels: Vec<ChannelId>,
}

/// The position of a channel in its [`Catalog`](crate::Catalog); valid for that catalog version
/// only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ChannelId(pub(crate) u32);

impl ChannelId {
    /// The index in [`Catalog::channels`](crate::Catalog::channels).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Who may read a channel (the owner always may).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// `_public`: every application reads.
    Public,
    /// `_protected` (or no marker with grants): the owner and the granted applications read.
    Protected,
    /// `_private` (or no marker and no grant): the owner only.
    Private,
}

impl Access {
    /// The marker text: `public`, `protected` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Protected => "protected",
            Access::Private => "private",
        }
    }
}

/// `x-type` of a channel (Galapagos topic types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Business events (the default).
    #[default]
    Event,
    /// Company-wide data, usually compacted.
    Data,
    /// Commands to the owning application.
    Command,
    /// Internal to the owning application.
    Internal,
}

/// Where the value of one channel parameter (one extra mesh level) comes from on the Kafka side.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "from", content = "name")]
pub enum ParamSource {
    /// The record key (`x-location: key` or `location: $message.key`).
    Key,
    /// A record header (`location: $message.header#/<name>`).
    Header(String),
    /// A payload field, as a JSON pointer (`location: $message.payload#/<pointer>`).
    Payload(String),
    /// No location given.
    Unspecified,
}

/// One channel parameter: one `{name}` level of the channel address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Parameter {
    /// The parameter name.
    pub name: String,
    /// Where its value comes from.
    pub source: ParamSource,
    /// Its description, if any.
    pub description: Option<String>,
}

/// Kafka settings of a channel (`bindings.kafka`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KafkaBinding {
    /// `partitions`.
    pub partitions: Option<u32>,
    /// `replicas`.
    pub replicas: Option<u16>,
    /// `configs` (SpecMesh) or `topicConfiguration` (AsyncAPI), values as strings (lists joined
    /// with `,`).
    pub configs: BTreeMap<String, String>,
}

/// The format of a message schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaFormat {
    /// JSON Schema (also AsyncAPI's own schema format).
    JsonSchema,
    /// Apache Avro.
    Avro,
}

/// A message schema, compiled once when the catalog is built.
#[derive(Clone, Debug, Serialize)]
pub struct MessageSchema {
    /// The format.
    pub format: SchemaFormat,
    /// The referenced file (relative to the specs directory), or `None` when inline.
    pub file: Option<String>,
    /// The schema document as JSON.
    pub document: serde_json::Value,
    #[serde(skip)]
    pub(crate) compiled: Arc<CompiledSchema>,
}

/// One message a channel carries.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    /// `name` of the message, if any.
    pub name: Option<String>,
    /// Its payload schema, if declared.
    pub schema: Option<MessageSchema>,
}

/// One channel: one Kafka topic and a pattern of mesh topics.
#[derive(Clone, Debug, Serialize)]
pub struct Channel {
    /// Its position in the catalog.
    pub id: ChannelId,
    /// The owning application.
    pub owner: AppId,
    /// The dotted channel name without parameters, e.g. `_public.orders`.
    pub name: String,
    /// The address as written in the spec, e.g. `_public.orders/{region}/{store}`.
    pub address: String,
    /// The Kafka topic: `<owner>.<name>`.
    pub kafka_topic: String,
    /// The literal mesh levels: `acme/sales/_public/orders`.
    pub mesh_base: String,
    /// The mesh topics of the channel as a native filter: the base plus one `*` per parameter
    /// (`acme/sales/_public/orders/*/*`; MQTT spelling: [`Channel::mqtt_pattern`]).
    #[serde(serialize_with = "filter_text")]
    pub pattern: Filter,
    /// The parameters, one mesh level each, in address order.
    pub parameters: Vec<Parameter>,
    /// Who reads besides the owner.
    pub access: Access,
    /// The applications granted read access (`grant-access:<app>` tags) of a protected channel.
    pub grants: Vec<AppId>,
    /// Extra writers (`x-producers`); ignored on private channels.
    pub producers: Vec<AppId>,
    /// End of life (`x-deprecated: {eol: DATE}`): publishing is refused after this day.
    pub eol: Option<Date>,
    /// `x-type`.
    pub kind: ChannelKind,
    /// The owner declares that it sends on this channel.
    pub owner_sends: bool,
    /// The owner declares that it receives from this channel.
    pub owner_receives: bool,
    /// Kafka settings.
    pub kafka: KafkaBinding,
    /// The messages the channel carries; a payload must match one of their schemas.
    pub messages: Vec<Message>,
    /// Tag names of the channel and its operations.
    pub tags: Vec<String>,
    /// The spec file.
    pub file: String,
    /// The line of the channel in the spec file.
    pub line: u32,
}

fn filter_text<S: serde::Serializer>(filter: &Filter, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(filter.as_str())
}

impl Channel {
    /// The pattern in MQTT spelling: `+` for each parameter level.
    pub fn mqtt_pattern(&self) -> String {
        let mut out = self.mesh_base.clone();
        for _ in &self.parameters {
            out.push_str("/+");
        }
        out
    }

    /// May `app` read this channel? The owner; everyone if public; granted apps if protected.
    #[inline]
    pub fn is_readable_by(&self, app: &str) -> bool {
        if self.owner == *app {
            return true;
        }
        match self.access {
            Access::Public => true,
            Access::Protected => self.grants.iter().any(|g| *g == *app),
            Access::Private => false,
        }
    }

    /// May `app` write this channel? The owner; apps in `x-producers` unless private.
    #[inline]
    pub fn is_writable_by(&self, app: &str) -> bool {
        self.owner == *app
            || (self.access != Access::Private && self.producers.iter().any(|p| *p == *app))
    }

    /// True when at least one message declares a schema.
    pub fn has_schema(&self) -> bool {
        self.messages.iter().any(|m| m.schema.is_some())
    }

    /// Number of mesh levels of the channel's topics.
    pub fn levels(&self) -> usize {
        self.mesh_base.split('/').count() + self.parameters.len()
    }
}
