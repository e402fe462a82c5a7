//! The state every part of the mesh shares: one `Inner` per node, behind an `Arc` that each
//! task holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use meshgate_broker::Broker;
use meshgate_registry::{Registry, Routes};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::config::MeshConfig;
use crate::dedup::Dedup;
use crate::guaranteed::Outbox;
use crate::link::Link;
use crate::shutdown::Tasks;

/// One subscription as the registry names it: (filter, queue group).
pub(crate) type Interest = (String, Option<String>);

/// Links by peer name.
pub(crate) type LinkMap = HashMap<Arc<str>, Arc<Link>, foldhash::fast::RandomState>;

/// Destination node → link to its next hop: what forwarding needs, in one lookup and without a
/// lock. Rebuilt when routes or links change.
pub(crate) type HopTable = HashMap<Arc<str>, Arc<Link>, foldhash::fast::RandomState>;

/// State of one configured dial target, for the admin view.
#[derive(Clone, Debug, Default)]
pub(crate) struct DialState {
    /// Name of the node behind the address, once known.
    pub peer: Option<Arc<str>>,
    pub connected: bool,
    pub attempts: u64,
    pub last_error: Option<String>,
}

pub(crate) struct Inner {
    pub cfg: MeshConfig,
    pub name: Arc<str>,
    pub incarnation: u64,
    pub started: Instant,
    pub broker: Broker,
    pub endpoint: quinn::Endpoint,
    pub client: quinn::ClientConfig,
    pub registry: Mutex<Registry>,
    pub routes: RwLock<Routes>,
    pub links: RwLock<LinkMap>,
    pub hops: arc_swap::ArcSwap<HopTable>,
    /// Local interest changes waiting for the registry task: (filter, group, added).
    pub pending: Mutex<Vec<(String, Option<String>, bool)>>,
    pub wake: Notify,
    pub recent: Mutex<Dedup>,
    pub dials: Mutex<HashMap<String, DialState>>,
    pub counters: Counters,
    /// Store and forward of guaranteed events, when the node has a store.
    pub outbox: Option<Arc<Outbox>>,
    /// Interest of unreachable nodes kept in the router for guaranteed events, by node.
    pub held: Mutex<HashMap<Arc<str>, HashSet<Interest>>>,
    /// Every task of the mesh, and the shutdown signal they hold.
    pub tasks: Tasks,
}

/// Events and links the mesh refused, for `GET /v1/mesh`.
#[derive(Default)]
pub(crate) struct Counters {
    pub unroutable: AtomicU64,
    pub hop_limit: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused_links: AtomicU64,
    pub bad_events: AtomicU64,
}

impl Inner {
    /// Milliseconds since the mesh started: the registry's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
