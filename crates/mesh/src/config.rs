//! Settings of the mesh side of a node, and why the mesh could not start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use meshgate_tls::MeshTls;

/// What a node is in the mesh. Every node runs the same code; the role is advertised in the
/// registry and shown in the admin views (edges usually dial cores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node at a site (store, factory, ship): usually dials the cores.
    #[default]
    Edge,
    /// A node in a data centre that edges and other cores link to.
    Core,
}

impl Role {
    /// The name the registry, the Hello and the admin views carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Core => "core",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the mesh side of a node.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// This node's name (its certificate names it).
    pub name: String,
    /// Edge or core.
    pub role: Role,
    /// UDP address to accept links on.
    pub listen: SocketAddr,
    /// Addresses (`host:port`) to dial and keep dialling.
    pub peers: Vec<String>,
    /// Certificates.
    pub tls: MeshTls,
    /// Largest frame accepted from a peer, bytes.
    pub max_frame_bytes: usize,
    /// Direct events queued per link above which publishers wait (see
    /// meshgate_broker::flow); twice this is the hard limit.
    pub link_queue: usize,
    /// The same in bytes.
    pub link_queue_bytes: u64,
    /// Period of anti-entropy digests, pings and expiry checks.
    pub gossip_interval: Duration,
    /// How long the entry of an unreachable node is kept.
    pub expire_unreachable: Duration,
    /// Cost this node gives each of its links.
    pub link_cost: u32,
    /// Longest wait between two dials of an unreachable peer.
    pub max_backoff: Duration,
    /// QUIC idle timeout: a silent peer is declared gone after this long.
    pub idle_timeout: Duration,
    /// Directory of the guaranteed queues (store and forward); `None` = guaranteed events are
    /// forwarded like direct ones. Uses the router's [`meshgate_store::Disk`].
    pub store_dir: Option<PathBuf>,
}

impl MeshConfig {
    /// Defaults for everything but identity, address and certificates.
    pub fn new(name: String, listen: SocketAddr, tls: MeshTls) -> Self {
        Self {
            name,
            role: Role::Edge,
            listen,
            peers: Vec::new(),
            tls,
            max_frame_bytes: 16 << 20,
            link_queue: 65_536,
            link_queue_bytes: 64 << 20,
            gossip_interval: Duration::from_secs(1),
            expire_unreachable: Duration::from_secs(60),
            link_cost: 10,
            max_backoff: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            store_dir: None,
        }
    }
}

/// Why the mesh could not start.
#[derive(Debug, Error)]
pub enum MeshError {
    /// The UDP socket could not be bound.
    #[error("cannot listen for mesh links on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// The TLS configuration does not suit QUIC.
    #[error("mesh TLS: {0}")]
    Tls(String),
    /// The guaranteed queues could not be opened.
    #[error("mesh store: {0}")]
    Store(String),
}
