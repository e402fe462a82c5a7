//! `GET /v1/mesh`: the node, its links with their counters, and the registry.

use serde::{Deserialize, Serialize};

use crate::backlog::GuaranteedView;

/// `GET /v1/mesh`. The contract's fields are `node`, `links` and `nodes`; a node without mesh
/// certificates answers those three only (no links, itself as the only node).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshView {
    /// This node's name.
    pub node: String,
    /// This node's incarnation (grows at each start); 0 without a mesh.
    pub incarnation: u64,
    /// `edge` or `core`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The UDP address links are accepted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Links up, and configured peers that are down; by peer name.
    pub links: Vec<LinkView>,
    /// Reachable nodes of the mesh, this one included, by name.
    pub nodes: Vec<String>,
    /// Every node's registry entry as this node holds it.
    pub registry: Vec<RegistryNodeView>,
    /// The configured dial targets.
    pub dialling: Vec<DialView>,
    /// Events the mesh dropped, by reason.
    pub dropped: MeshDrops,
    /// Connections refused at the handshake (bad certificate, wrong name, bad Hello).
    pub refused_links: u64,
    /// The guaranteed queues; `None` without a store.
    pub guaranteed: Option<GuaranteedView>,
}

/// Whether a link is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Connected.
    #[default]
    Up,
    /// A configured peer that is not connected now.
    Down,
}

/// One link of `GET /v1/mesh`. `peer`, `state`, `tx_events`, `tx_bytes`, `rx_events` and
/// `rx_bytes` are the contract's (all delivery classes together); a link that is down shows
/// zeros.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkView {
    /// The peer's node name.
    pub peer: String,
    /// Up or down.
    pub state: LinkState,
    /// True if this node dialled the connection.
    pub dialled: bool,
    /// The peer's address.
    pub remote: String,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's role.
    pub role: String,
    /// Last measured round trip, microseconds (0: not yet).
    pub rtt_us: u64,
    /// Events sent.
    pub tx_events: u64,
    /// Bytes of event frames sent.
    pub tx_bytes: u64,
    /// Events received.
    pub rx_events: u64,
    /// Bytes of event frames received.
    pub rx_bytes: u64,
    /// Local subscriber copies made here from events received on this link: what a bridge
    /// per subscriber would have carried across it.
    pub rx_fanout_copies: u64,
    /// Direct events dropped for this link: its queue at the hard limit, or the link declared
    /// slow (its peer took nothing while publishers waited).
    pub dropped: u64,
    /// Direct events queued for the link now.
    pub queued_events: u64,
    /// Times a publisher found the link's queue above its high watermark and waited for it.
    pub congested: u64,
    /// Times the link was declared slow (publishers stopped waiting for it; new direct events
    /// for it were dropped until its queue drained).
    pub slow: u64,
    /// Control (gossip, pings) bytes sent.
    pub tx_control_bytes: u64,
    /// Control bytes received.
    pub rx_control_bytes: u64,
}

/// A node's registry entry as this node holds it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryNodeView {
    /// The node.
    pub node: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// The highest version of its entry held here.
    pub version: u64,
    /// Its role, once known.
    pub role: Option<String>,
    /// Whether a path to it exists over links both ends advertise.
    pub reachable: bool,
    /// How many (filter, queue group) interests it advertises.
    pub interest: u64,
    /// The links it advertises: (peer, cost).
    pub links: Vec<(String, u32)>,
}

/// A configured dial target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DialView {
    /// `host:port` as configured.
    pub address: String,
    /// The node behind it, once known.
    pub peer: Option<String>,
    /// Whether a link dialled to it is up.
    pub connected: bool,
    /// Dials so far.
    pub attempts: u64,
    /// Why the last dial failed.
    pub last_error: Option<String>,
}

/// Events the mesh dropped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshDrops {
    /// No route to a destination.
    pub unroutable: u64,
    /// Over the hop limit.
    pub hop_limit: u64,
    /// Direct events that arrived twice.
    pub duplicates: u64,
    /// Malformed events from a peer.
    pub invalid: u64,
}
