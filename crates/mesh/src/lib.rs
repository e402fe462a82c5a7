//! Mesh links of a meshgate node (DESIGN.md section 3): QUIC connections with mutual TLS to
//! peer nodes, gossip of the subscription registry over them, and forwarding of events one copy
//! per link along the shortest-path tree.
//!
//! The decisions (registry, versions, reachability, shortest paths) live in the pure
//! `meshgate-registry` crate; this crate moves bytes and keeps counters. The router
//! (`meshgate-broker`) sees the mesh through [`MeshHook`](meshgate_broker::MeshHook): local
//! interest goes out through it, remote interest comes back as entries in the router's own
//! trie, so one match finds local subscribers and remote nodes alike.
//!
//! The files, around the shared state of `state.rs` (as quinn-proto's `connection/` folder):
//! `config` (settings, role), `handshake` (Hello, checks, accept and dial loops), `run` (one
//! link's streams, control loop and teardown), `forward` (receive and forward), `gossip` (the
//! registry and outbox loops), `hook` (the router's side), `view` (admin views and metrics),
//! `shutdown` (the signal and the drain), and below them `link`, `frame`, `guaranteed` and
//! `dedup`. Certificates are `meshgate-tls`'s.

mod config;
mod dedup;
mod forward;
pub mod frame;
mod gossip;
mod guaranteed;
mod handshake;
mod hook;
mod link;
mod run;
mod shutdown;
mod state;
mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_broker::Broker;
use meshgate_registry::{Registry, RegistryConfig};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tracing::info;

pub use config::{MeshConfig, MeshError, Role};
pub use frame::{Dests, FrameError, OutDest, OutEvent};
pub use link::{Link, LinkError, LinkStats};
pub use meshgate_tls::{self as tls, MeshTls, TlsError};

use crate::state::{Counters, DialState, HopTable, Inner, LinkMap};

/// The mesh side of a node. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl Mesh {
    /// Binds the mesh socket, connects the router, and starts accepting and dialling. Every
    /// task it starts ends once `shutdown` turns true; [`Mesh::drain`] waits for them.
    pub async fn start(
        broker: Broker,
        cfg: MeshConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Mesh, MeshError> {
        let (endpoint, client) = quic_endpoint(&cfg)?;
        let incarnation = meshgate_broker::now_ms();
        let mut rc = RegistryConfig::new(cfg.name.clone(), incarnation);
        rc.role = cfg.role.as_str().to_string();
        rc.expire_unreachable_ms = cfg.expire_unreachable.as_millis() as u64;
        let mut registry = Registry::new(rc);
        let routes = registry.routes().clone();
        let outbox = match (&cfg.store_dir, broker.disk()) {
            (Some(dir), Some(disk)) => Some(Arc::new(
                guaranteed::Outbox::open(disk.clone(), dir.clone(), cfg.name.as_str().into())
                    .map_err(|e| MeshError::Store(e.to_string()))?,
            )),
            _ => None,
        };
        let inner = Arc::new(Inner {
            name: cfg.name.as_str().into(),
            incarnation,
            started: Instant::now(),
            broker: broker.clone(),
            endpoint,
            client,
            registry: Mutex::new(registry),
            routes: RwLock::new(routes),
            links: RwLock::new(LinkMap::default()),
            hops: arc_swap::ArcSwap::from_pointee(HopTable::default()),
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            recent: Mutex::new(dedup::Dedup::new()),
            dials: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            outbox,
            held: Mutex::new(HashMap::new()),
            tasks: shutdown::Tasks::new(shutdown),
            cfg,
        });
        broker.set_mesh(Arc::new(hook::Hook(inner.clone())));
        info!(
            node = %inner.name,
            addr = ?inner.endpoint.local_addr().ok(),
            incarnation,
            "mesh listening"
        );
        let tasks = &inner.tasks;
        tasks.spawn(handshake::accept_loop(inner.clone(), tasks.shutdown()));
        tasks.spawn(gossip::registry_loop(inner.clone(), tasks.shutdown()));
        if let Some(outbox) = &inner.outbox {
            tasks.spawn(gossip::outbox_loop(
                inner.clone(),
                outbox.clone(),
                tasks.shutdown(),
            ));
        }
        for p in inner.cfg.peers.clone() {
            inner.dials.lock().insert(p.clone(), DialState::default());
            tasks.spawn(handshake::dial_loop(inner.clone(), p, tasks.shutdown()));
        }
        Ok(Mesh { inner })
    }

    /// After the shutdown signal: waits until every task of the mesh ended (links closed,
    /// peers told), at most `limit`. False if some task was still running then.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.inner.tasks.drain(limit).await
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or(self.inner.cfg.listen)
    }

    /// The node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Names of the peers with a link up.
    pub fn linked_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .links
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }
}

/// The QUIC endpoint (accepting links) and the client configuration (dialling them).
fn quic_endpoint(cfg: &MeshConfig) -> Result<(quinn::Endpoint, quinn::ClientConfig), MeshError> {
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(cfg.tls.server.clone())
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg.tls.client.clone())
        .map_err(|e| MeshError::Tls(e.to_string()))?;
    // Search up to the largest UDP payload: a path with jumbo frames (or loopback) carries
    // several times fewer packets, each one encrypted and acknowledged once; elsewhere the
    // search stops at the path's MTU.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(65527);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            cfg.idle_timeout
                .try_into()
                .map_err(|_| MeshError::Tls("idle timeout out of range".into()))?,
        ))
        .keep_alive_interval(Some(cfg.idle_timeout / 4))
        .max_concurrent_uni_streams(8u32.into())
        .max_concurrent_bidi_streams(4u32.into())
        // Room for bursts of event batches on one stream.
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20)
        .mtu_discovery_config(Some(mtu));
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    let endpoint =
        quinn::Endpoint::server(server, cfg.listen).map_err(|source| MeshError::Bind {
            addr: cfg.listen,
            source,
        })?;
    Ok((endpoint, client))
}
