//! Mesh links of a meshgate node (DESIGN.md section 3): QUIC connections with mutual TLS to
//! peer nodes, gossip of the subscription registry over them, and forwarding of events one copy
//! per link along the shortest-path tree.
//!
//! The decisions (registry, versions, reachability, shortest paths) live in the pure
//! `meshgate-registry` crate; this crate moves bytes and keeps counters. The router
//! (`meshgate-broker`) sees the mesh through [`MeshHook`]: local interest goes out through it,
//! remote interest comes back as entries in the router's own trie, so one match finds local
//! subscribers and remote nodes alike.

mod dedup;
pub mod frame;
mod guaranteed;
mod link;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshgate_broker::{Broker, MeshHook, Publisher, RemoteDest};
use meshgate_proto::v1::{Frame, Hello, Ping, Pong, frame::Body};
use meshgate_proto::{Envelope, LINK_PROTOCOL_VERSION};
use meshgate_registry::{Change, Gossip, HOP_LIMIT, Registry, RegistryConfig, Routes};
use meshgate_topic::{Filter, validate_topic};
use parking_lot::{Mutex, RwLock};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

pub use frame::{Dests, FrameError, OutDest, OutEvent};
pub use link::{Link, LinkError, LinkStats};
pub use tls::{MeshTls, TlsError};

/// One subscription as the registry names it: (filter, queue group).
type Interest = (String, Option<String>);

/// Links by peer name.
type LinkMap = HashMap<Arc<str>, Arc<Link>, foldhash::fast::RandomState>;

/// Destination node → link to its next hop: what forwarding needs, in one lookup and without a
/// lock. Rebuilt when routes or links change.
type HopTable = HashMap<Arc<str>, Arc<Link>, foldhash::fast::RandomState>;

/// Settings of the mesh side of a node.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// This node's name (its certificate names it).
    pub name: String,
    /// "edge" or "core".
    pub role: String,
    /// UDP address to accept links on.
    pub listen: SocketAddr,
    /// Addresses (`host:port`) to dial and keep dialling.
    pub peers: Vec<String>,
    /// Certificates.
    pub tls: MeshTls,
    /// Largest frame accepted from a peer, bytes.
    pub max_frame_bytes: usize,
    /// Events queued per link before new ones are dropped (direct class).
    pub link_queue: usize,
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
            role: "edge".into(),
            listen,
            peers: Vec::new(),
            tls,
            max_frame_bytes: 16 << 20,
            link_queue: 65_536,
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

/// State of one configured dial target, for the admin view.
#[derive(Clone, Debug, Default)]
struct DialState {
    /// Name of the node behind the address, once known.
    peer: Option<Arc<str>>,
    connected: bool,
    attempts: u64,
    last_error: Option<String>,
}

struct Inner {
    cfg: MeshConfig,
    name: Arc<str>,
    incarnation: u64,
    started: Instant,
    broker: Broker,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    registry: Mutex<Registry>,
    routes: RwLock<Routes>,
    links: RwLock<LinkMap>,
    hops: arc_swap::ArcSwap<HopTable>,
    /// Local interest changes waiting for the registry task: (filter, group, added).
    pending: Mutex<Vec<(String, Option<String>, bool)>>,
    wake: Notify,
    recent: Mutex<dedup::Dedup>,
    dials: Mutex<HashMap<String, DialState>>,
    counters: Counters,
    /// Store and forward of guaranteed events, when the node has a store.
    outbox: Option<guaranteed::Outbox>,
    /// Interest of unreachable nodes kept in the router for guaranteed events, by node.
    held: Mutex<HashMap<Arc<str>, HashSet<Interest>>>,
}

#[derive(Default)]
struct Counters {
    unroutable: std::sync::atomic::AtomicU64,
    hop_limit: std::sync::atomic::AtomicU64,
    duplicates: std::sync::atomic::AtomicU64,
    refused_links: std::sync::atomic::AtomicU64,
    bad_events: std::sync::atomic::AtomicU64,
}

/// The mesh side of a node. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl Mesh {
    /// Binds the mesh socket, connects the router, and starts accepting and dialling.
    pub async fn start(
        broker: Broker,
        cfg: MeshConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Mesh, MeshError> {
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(cfg.tls.server.clone())
                .map_err(|e| MeshError::Tls(e.to_string()))?;
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(cfg.tls.client.clone())
                .map_err(|e| MeshError::Tls(e.to_string()))?;
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
            .send_window(32 << 20);
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
        let incarnation = meshgate_broker::now_ms();
        let mut rc = RegistryConfig::new(cfg.name.clone(), incarnation);
        rc.role = cfg.role.clone();
        rc.expire_unreachable_ms = cfg.expire_unreachable.as_millis() as u64;
        let mut registry = Registry::new(rc);
        let routes = registry.routes().clone();
        let outbox = match (&cfg.store_dir, broker.disk()) {
            (Some(dir), Some(disk)) => Some(
                guaranteed::Outbox::open(disk.clone(), dir.clone(), cfg.name.as_str().into())
                    .map_err(|e| MeshError::Store(e.to_string()))?,
            ),
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
            cfg,
        });
        broker.set_mesh(Arc::new(Hook(inner.clone())));
        info!(
            node = %inner.name,
            addr = ?inner.endpoint.local_addr().ok(),
            incarnation,
            "mesh listening"
        );
        tokio::spawn(accept_loop(inner.clone(), shutdown.clone()));
        tokio::spawn(registry_loop(inner.clone(), shutdown.clone()));
        if inner.outbox.is_some() {
            tokio::spawn(outbox_loop(inner.clone(), shutdown.clone()));
        }
        for p in inner.cfg.peers.clone() {
            inner.dials.lock().insert(p.clone(), DialState::default());
            tokio::spawn(dial_loop(inner.clone(), p, shutdown.clone()));
        }
        Ok(Mesh { inner })
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

    /// `GET /v1/mesh`: the contract's fields plus the registry view.
    pub fn view(&self) -> Value {
        let i = &self.inner;
        let mut links: Vec<Value> = i
            .links
            .read()
            .values()
            .map(|l| {
                let s = &l.stats;
                let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                json!({
                    "peer": &*l.peer,
                    "state": "up",
                    "dialled": l.dialled,
                    "remote": l.remote.to_string(),
                    "incarnation": l.incarnation,
                    "role": l.role,
                    "rtt_us": g(&s.rtt_us),
                    "tx_events": g(&s.tx_events),
                    "tx_bytes": g(&s.tx_bytes),
                    "rx_events": g(&s.rx_events),
                    "rx_bytes": g(&s.rx_bytes),
                    "rx_fanout_copies": g(&s.rx_fanout),
                    "dropped": g(&s.dropped),
                    "tx_control_bytes": g(&s.tx_control_bytes),
                    "rx_control_bytes": g(&s.rx_control_bytes),
                })
            })
            .collect();
        let up: Vec<Arc<str>> = i.links.read().keys().cloned().collect();
        let dials: Vec<Value> = i
            .dials
            .lock()
            .iter()
            .map(|(addr, d)| {
                if let Some(p) = &d.peer
                    && !d.connected
                    && !up.contains(p)
                {
                    links.push(json!({
                        "peer": &**p, "state": "down", "remote": addr,
                        "tx_events": 0, "tx_bytes": 0, "rx_events": 0, "rx_bytes": 0,
                    }));
                }
                json!({
                    "address": addr,
                    "peer": d.peer.as_deref(),
                    "connected": d.connected,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                })
            })
            .collect();
        links.sort_by(|a, b| a["peer"].as_str().cmp(&b["peer"].as_str()));
        let reg = i.registry.lock();
        let views = reg.nodes();
        let mut nodes: Vec<String> = views
            .iter()
            .filter(|n| n.reachable)
            .map(|n| n.name.to_string())
            .collect();
        if !nodes.iter().any(|n| **n == *i.name) {
            nodes.push(i.name.to_string());
        }
        nodes.sort();
        let registry: Vec<Value> = views
            .iter()
            .map(|n| {
                json!({
                    "node": &*n.name,
                    "incarnation": n.incarnation,
                    "version": n.max_version,
                    "role": n.role,
                    "reachable": n.reachable,
                    "interest": n.interest,
                    "links": n.links,
                })
            })
            .collect();
        let c = &i.counters;
        json!({
            "node": &*i.name,
            "incarnation": i.incarnation,
            "role": i.cfg.role,
            "listen": self.local_addr().to_string(),
            "links": links,
            "nodes": nodes,
            "registry": registry,
            "dialling": dials,
            "dropped": {
                "unroutable": c.unroutable.load(Ordering::Relaxed),
                "hop_limit": c.hop_limit.load(Ordering::Relaxed),
                "duplicates": c.duplicates.load(Ordering::Relaxed),
                "invalid": c.bad_events.load(Ordering::Relaxed),
            },
            "refused_links": c.refused_links.load(Ordering::Relaxed),
            "guaranteed": self.backlog(),
        })
    }

    /// The guaranteed queues: backlog per next hop (events, bytes, age of the oldest) and the
    /// store's use of its quota. `null` without a store.
    pub fn backlog(&self) -> Value {
        match &self.inner.outbox {
            Some(o) => o.view(),
            None => Value::Null,
        }
    }

    /// Copies the link counters into the `metrics` recorder (called before each scrape).
    pub fn export_metrics(&self) {
        for l in self.inner.links.read().values() {
            let s = &l.stats;
            let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            for (name, value) in [
                ("meshgate_link_tx_events_total", &s.tx_events),
                ("meshgate_link_tx_bytes_total", &s.tx_bytes),
                ("meshgate_link_rx_events_total", &s.rx_events),
                ("meshgate_link_rx_bytes_total", &s.rx_bytes),
                ("meshgate_link_rx_fanout_copies_total", &s.rx_fanout),
                ("meshgate_link_dropped_total", &s.dropped),
            ] {
                metrics::counter!(name, "peer" => l.peer.to_string()).absolute(g(value));
            }
            metrics::gauge!("meshgate_link_rtt_seconds", "peer" => l.peer.to_string())
                .set(g(&s.rtt_us) as f64 / 1e6);
        }
        if let Some(o) = &self.inner.outbox {
            o.export_metrics();
        }
        metrics::gauge!("meshgate_mesh_links").set(self.inner.links.read().len() as f64);
        metrics::gauge!("meshgate_mesh_nodes").set(
            self.inner
                .registry
                .lock()
                .nodes()
                .iter()
                .filter(|n| n.reachable)
                .count() as f64,
        );
    }
}

/// The router's view of the mesh. It holds the mesh strongly (the router and the mesh live as
/// long as the node): no upgrade of a weak pointer per forwarded event.
struct Hook(Arc<Inner>);

impl MeshHook for Hook {
    fn interest(&self, filter: &Filter, group: Option<&str>, added: bool) {
        self.0.pending.lock().push((
            filter.as_str().to_string(),
            group.map(str::to_string),
            added,
        ));
        self.0.wake.notify_one();
    }

    fn forward(&self, event: &Arc<Envelope>, dests: &[RemoteDest]) -> u64 {
        let dests = dests.iter().map(|d| OutDest::Shared {
            node: d.node.clone(),
            groups: d.groups.clone(),
        });
        if let Some(outbox) = &self.0.outbox
            && event.delivery == meshgate_proto::DeliveryClass::Guaranteed as i32
        {
            match outbox.forward(event, dests.clone(), 0) {
                Ok(ticket) => return ticket,
                Err(e) => warn!(error = %e, "cannot store a guaranteed event; sent as direct"),
            }
        }
        self.0.forward(event, dests, 0);
        0
    }

    fn nearest(&self, candidates: &[&str], rr: usize) -> Option<usize> {
        let routes = self.0.routes.read();
        let pick = routes.nearest(candidates, rr)?;
        candidates.iter().position(|c| *c == pick)
    }

    fn next_hops(&self, dests: &[RemoteDest], out: &mut Vec<Arc<str>>) {
        let table = self.0.hops.load();
        for d in dests {
            if let Some(link) = table.get(&d.node)
                && !out.iter().any(|p| *p == link.peer)
            {
                out.push(link.peer.clone());
            }
        }
    }
}

/// The runtime the registry runs on: the clock and the control streams of the links.
struct Rt<'a> {
    links: &'a LinkMap,
    now: u64,
}

impl meshgate_registry::Runtime for Rt<'_> {
    fn now_ms(&self) -> u64 {
        self.now
    }

    fn send(&mut self, to: &str, msg: Gossip) {
        if let Some(l) = self.links.get(to) {
            let body = match msg {
                Gossip::Digest(d) => Body::Digest(d),
                Gossip::Delta(d) => Body::Delta(d),
            };
            if !l.send_control(Frame { body: Some(body) }) {
                // Anti-entropy resends whatever this loses.
                debug!(peer = to, "control queue full, gossip dropped");
            }
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` on the registry, then mirrors what changed into the router's trie and the
    /// route snapshot, under the same lock so that changes apply in order.
    fn with_registry<R>(&self, f: impl FnOnce(&mut Registry, &mut Rt<'_>) -> R) -> R {
        let mut reg = self.registry.lock();
        let links = self.links.read();
        let mut rt = Rt {
            links: &links,
            now: self.now_ms(),
        };
        let r = f(&mut reg, &mut rt);
        drop(links);
        let mut topology = false;
        for c in reg.take_changes() {
            match c {
                Change::InterestAdded {
                    node,
                    filter,
                    group,
                } => match Filter::parse(&filter) {
                    Ok(f) => {
                        if let Some(h) = self.held.lock().get_mut(&node) {
                            h.remove(&(filter.clone(), group.clone()));
                        }
                        self.broker.add_remote_interest(&node, &f, group.as_deref())
                    }
                    Err(e) => warn!(node = %node, filter, error = %e, "invalid filter in registry"),
                },
                Change::InterestRemoved {
                    node,
                    filter,
                    group,
                } => {
                    // A node that became unreachable keeps its interest here while the
                    // registry holds its entry, so guaranteed events for it are stored.
                    if self.outbox.is_some()
                        && reg.holds(&node)
                        && !reg.routes().is_reachable(&node)
                    {
                        self.held
                            .lock()
                            .entry(node)
                            .or_default()
                            .insert((filter, group));
                        continue;
                    }
                    if let Ok(f) = Filter::parse(&filter) {
                        self.broker
                            .remove_remote_interest(&node, &f, group.as_deref());
                    }
                }
                Change::TopologyChanged => topology = true,
            }
        }
        if topology {
            *self.routes.write() = reg.routes().clone();
            self.rebuild_hops();
        }
        r
    }

    /// Recomputes the hop table from the routes and the links that are up.
    fn rebuild_hops(&self) {
        let routes = self.routes.read();
        let links = self.links.read();
        let table: HopTable = routes
            .next_hops()
            .filter_map(|(dest, hop)| links.get(hop).map(|l| (dest.clone(), l.clone())))
            .collect();
        if let Some(outbox) = &self.outbox {
            let names = table
                .iter()
                .map(|(d, l)| (d.clone(), l.peer.clone()))
                .collect();
            outbox.set_routes(names, links.keys().cloned().collect());
        }
        self.hops.store(Arc::new(table));
    }

    /// Drops held interest of nodes that left the registry, and stale held interest of nodes
    /// that are reachable again (what they still have came back as new interest).
    fn prune_held(&self) {
        // Registry first, then `held`: the order `with_registry` takes them in.
        let mut reg = self.registry.lock();
        let mut held = self.held.lock();
        if held.is_empty() {
            return;
        }
        held.retain(|node, set| {
            let gone = !reg.holds(node);
            if !gone && !reg.routes().is_reachable(node) {
                return true;
            }
            for (filter, group) in set.drain() {
                if let Ok(f) = Filter::parse(&filter) {
                    self.broker
                        .remove_remote_interest(node, &f, group.as_deref());
                }
            }
            if gone {
                info!(node = %node, "unreachable node expired; its held interest is gone");
            }
            false
        });
    }

    /// Checks an event that arrived on a link and splits its destinations: this node's share
    /// (the queue groups it serves, if it is a destination) and the rest. A malformed event is
    /// counted and dropped.
    fn receive(&self, re: meshgate_proto::v1::RoutedEvent) -> Option<Received> {
        let Some(env) = re.event.filter(|e| validate_topic(&e.topic).is_ok()) else {
            self.counters.bad_events.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut mine = None;
        let mut rest = Vec::new();
        for d in re.destinations {
            if *d.node == *self.name {
                mine = Some(d.groups.into_iter().map(|g| (g.group, g.filter)).collect());
            } else {
                rest.push(d);
            }
        }
        Some(Received {
            env: Arc::new(env),
            hops: re.hops.saturating_add(1),
            mine,
            rest,
        })
    }

    /// Whether the rest of a received event may go on (it is under the hop limit).
    fn may_forward(&self, r: &Received) -> bool {
        if r.rest.is_empty() {
            return false;
        }
        if r.hops >= HOP_LIMIT {
            self.counters.hop_limit.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Handles one guaranteed event that arrived on a link: delivers the local share once
    /// (deduplicated by id), stores the rest for the next hops. Returns the local copies made
    /// and the commit ticket after which it may be acknowledged.
    fn on_guaranteed(
        &self,
        outbox: &guaranteed::Outbox,
        re: meshgate_proto::v1::RoutedEvent,
        publisher: &mut Publisher,
    ) -> Result<(u64, u64), meshgate_store::StoreError> {
        let Some(r) = self.receive(re) else {
            return Ok((0, 0));
        };
        let (mut fanout, mut ticket) = (0, 0);
        if let Some(groups) = &r.mine
            && !outbox.is_duplicate(&r.env)
        {
            let (n, t) = self.broker.deliver_from_mesh(publisher, &r.env, groups);
            fanout = n as u64;
            ticket = t;
        }
        if self.may_forward(&r) {
            let t = outbox.forward(&r.env, r.rest.into_iter().map(OutDest::Owned), r.hops)?;
            ticket = ticket.max(t);
        }
        Ok((fanout, ticket))
    }

    /// Sends one copy of `event` per next hop, each with the destinations behind that hop.
    /// One destination (or one next hop) allocates nothing and takes no lock.
    fn forward(&self, event: &Arc<Envelope>, dests: impl Iterator<Item = OutDest>, hops: u32) {
        let table = self.hops.load();
        let mut first: Option<(&Arc<Link>, Dests)> = None;
        let mut more: Vec<(&Arc<Link>, Dests)> = Vec::new();
        for d in dests {
            let Some(link) = table.get(d.node()) else {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match &mut first {
                None => first = Some((link, Dests::One(d))),
                Some((l, v)) if Arc::ptr_eq(l, link) => v.push(d),
                Some(_) => match more.iter_mut().find(|(l, _)| Arc::ptr_eq(l, link)) {
                    Some((_, v)) => v.push(d),
                    None => more.push((link, Dests::One(d))),
                },
            }
        }
        let Some(first) = first else { return };
        for (link, destinations) in std::iter::once(first).chain(more) {
            link.send_event(OutEvent {
                event: event.clone(),
                destinations,
                hops,
            });
        }
    }

    /// Handles one event that arrived on a link: delivers the local share once, forwards the
    /// rest. Returns the number of local copies made.
    fn on_event(&self, re: meshgate_proto::v1::RoutedEvent, publisher: &mut Publisher) -> u64 {
        let Some(r) = self.receive(re) else {
            return 0;
        };
        let mut fanout = 0;
        if let Some(groups) = &r.mine {
            if self.recent.lock().insert((r.env.id_hi, r.env.id_lo)) {
                fanout = self.broker.deliver_from_mesh(publisher, &r.env, groups).0 as u64;
            } else {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.may_forward(&r) {
            self.forward(&r.env, r.rest.into_iter().map(OutDest::Owned), r.hops);
        }
        fanout
    }

    fn hello(&self) -> Frame {
        Frame {
            body: Some(Body::Hello(Hello {
                node: self.name.to_string(),
                incarnation: self.incarnation,
                protocol_version: LINK_PROTOCOL_VERSION,
                capabilities: Vec::new(),
                role: self.cfg.role.clone(),
            })),
        }
    }

    /// Checks the peer's Hello against its certificate and this node.
    fn check_hello(&self, conn: &quinn::Connection, h: &Hello) -> Result<(), LinkError> {
        if h.protocol_version != LINK_PROTOCOL_VERSION {
            return Err(LinkError::Refused(format!(
                "unsupported link protocol version {} (this node speaks {LINK_PROTOCOL_VERSION})",
                h.protocol_version
            )));
        }
        if *h.node == *self.name {
            return Err(LinkError::Refused(format!(
                "the peer has this node's own name {:?}",
                h.node
            )));
        }
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
        let named = certs
            .as_ref()
            .and_then(|c| c.first())
            .is_some_and(|c| tls::cert_names(c, &h.node));
        if !named {
            return Err(LinkError::Refused(format!(
                "the peer's certificate does not name node {:?}",
                h.node
            )));
        }
        Ok(())
    }

    /// Adds a link, collapsing duplicates between the same pair of nodes: both ends keep the
    /// connection dialled by the node with the smaller name (or the newer incarnation of the
    /// peer). Returns false if this connection is the duplicate.
    fn register(&self, link: &Arc<Link>) -> bool {
        let mut links = self.links.write();
        if let Some(old) = links.get(&link.peer) {
            let replace = if link.incarnation != old.incarnation {
                link.incarnation > old.incarnation
            } else if link.dialled == old.dialled {
                false
            } else {
                // Keep the connection dialled by the smaller name.
                let new_dialler_is_me = link.dialled;
                let me_smaller = *self.name < *link.peer;
                new_dialler_is_me == me_smaller
            };
            if !replace {
                return false;
            }
            old.close("duplicate link");
        }
        links.insert(link.peer.clone(), link.clone());
        true
    }
}

/// Accepts incoming connections for the life of the node.
async fn accept_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = inner.endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    inner.counters.refused_links.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, error = %e, "mesh connection refused during the handshake");
                    return;
                }
            };
            if let Err(e) = serve_accepted(&inner, conn.clone()).await {
                inner.counters.refused_links.fetch_add(1, Ordering::Relaxed);
                warn!(%remote, error = %e, "mesh link refused");
                conn.close(1u32.into(), e.to_string().as_bytes());
            }
        });
    }
    inner.endpoint.close(0u32.into(), b"node shutting down");
}

async fn serve_accepted(inner: &Arc<Inner>, conn: quinn::Connection) -> Result<(), LinkError> {
    let timeout = Duration::from_secs(5);
    let (mut send, recv) = tokio::time::timeout(timeout, conn.accept_bi())
        .await
        .map_err(|_| LinkError::Timeout)??;
    let mut reader = link::FrameReader::new(recv, inner.cfg.max_frame_bytes);
    let hello = link::read_hello(&mut reader, timeout).await?;
    inner.check_hello(&conn, &hello)?;
    link::write_frame(&mut send, &inner.hello()).await?;
    run_link(inner.clone(), conn, hello, false, send, reader).await;
    Ok(())
}

/// Dials `addr` for the life of the node: retries with backoff and jitter, and dials again
/// when the link goes down.
async fn dial_loop(inner: Arc<Inner>, addr: String, mut shutdown: watch::Receiver<bool>) {
    let initial = Duration::from_millis(100);
    let mut backoff = initial;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // While a link to the same node is up (it dialled us), do not dial a duplicate.
        let known = inner.dials.lock().get(&addr).and_then(|d| d.peer.clone());
        if let Some(p) = &known
            && inner.links.read().contains_key(p)
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        let started = Instant::now();
        let result = dial_once(&inner, &addr).await;
        let error = match result {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        };
        {
            let mut dials = inner.dials.lock();
            let d = dials.entry(addr.clone()).or_default();
            d.connected = false;
            d.attempts += 1;
            if let Some(e) = &error {
                d.last_error = Some(e.clone());
            }
        }
        if let Some(e) = &error {
            debug!(%addr, error = %e, "dial failed");
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = initial;
        }
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        let wait = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(inner.cfg.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection attempt; returns when the link it made goes down.
async fn dial_once(inner: &Arc<Inner>, addr: &str) -> Result<(), LinkError> {
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| LinkError::Refused(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| LinkError::Refused(format!("{addr} resolves to nothing")))?;
    let connecting = inner
        .endpoint
        .connect_with(inner.client.clone(), target, "meshgate")
        .map_err(|e| LinkError::Refused(e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| LinkError::Timeout)??;
    let (mut send, recv) = conn.open_bi().await?;
    link::write_frame(&mut send, &inner.hello()).await?;
    let mut reader = link::FrameReader::new(recv, inner.cfg.max_frame_bytes);
    let hello = match link::read_hello(&mut reader, Duration::from_secs(5)).await {
        Ok(h) => h,
        Err(e) => {
            // The peer may have closed with a reason: report that one.
            if let Some(reason) = conn.close_reason() {
                return Err(LinkError::Connection(reason));
            }
            return Err(e);
        }
    };
    if let Err(e) = inner.check_hello(&conn, &hello) {
        inner.counters.refused_links.fetch_add(1, Ordering::Relaxed);
        warn!(%addr, error = %e, "mesh link refused");
        conn.close(1u32.into(), e.to_string().as_bytes());
        return Err(e);
    }
    {
        let mut dials = inner.dials.lock();
        let d = dials.entry(addr.to_string()).or_default();
        d.peer = Some(hello.node.as_str().into());
        d.connected = true;
        d.last_error = None;
    }
    run_link(inner.clone(), conn, hello, true, send, reader).await;
    Ok(())
}

/// Runs a link whose handshake is done, until it goes down.
async fn run_link(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    hello: Hello,
    dialled: bool,
    control_send: quinn::SendStream,
    mut control: link::FrameReader,
) {
    let (ctx, crx) = mpsc::channel(4096);
    let (etx, erx) = mpsc::channel(inner.cfg.link_queue.max(1));
    let peer: Arc<str> = hello.node.as_str().into();
    let link = Arc::new(Link {
        peer: peer.clone(),
        incarnation: hello.incarnation,
        role: hello.role.clone(),
        dialled,
        remote: conn.remote_address(),
        conn: conn.clone(),
        stats: LinkStats::default(),
        control: ctx,
        events: etx,
    });
    // Register and announce under the registry lock, so gossip for this link starts after it.
    let registered = {
        let _reg = inner.registry.lock();
        let ok = inner.register(&link);
        if ok {
            // A replaced duplicate leaves the table pointing at a closed link otherwise.
            inner.rebuild_hops();
        }
        ok
    };
    if !registered {
        info!(peer = %peer, "duplicate link closed");
        link.close("duplicate link");
        return;
    }
    info!(peer = %peer, remote = %link.remote, dialled, "mesh link up");
    tokio::spawn(link::control_writer(control_send, crx, link.clone()));
    let cost = inner.cfg.link_cost;
    inner.with_registry(|reg, rt| reg.link_up(&peer, cost, rt));

    // This side's event stream, and its guaranteed stream.
    {
        let (link, conn, inner) = (link.clone(), conn.clone(), inner.clone());
        tokio::spawn(async move {
            if let Ok(mut send) = conn.open_uni().await {
                let _ = send.set_priority(-1);
                if send.write_all(&[guaranteed::STREAM_DIRECT]).await.is_err() {
                    return;
                }
                link::event_writer(
                    send,
                    erx,
                    link,
                    inner.name.clone(),
                    inner.cfg.max_frame_bytes,
                )
                .await;
            }
        });
    }
    if let Some(outbox) = &inner.outbox {
        match outbox.queue(&peer) {
            Ok(queue) => {
                let (link, conn, max) = (link.clone(), conn.clone(), inner.cfg.max_frame_bytes);
                tokio::spawn(async move {
                    if let Ok(send) = conn.open_uni().await {
                        guaranteed::send_loop(queue, send, link, max).await;
                    }
                });
            }
            Err(e) => warn!(peer = %peer, error = %e, "cannot open the guaranteed queue"),
        }
    }
    // The peer's streams: the first byte says which kind.
    {
        let (link, conn, inner) = (link.clone(), conn.clone(), inner.clone());
        tokio::spawn(async move {
            for _ in 0..2 {
                let Ok(mut recv) = conn.accept_uni().await else {
                    return;
                };
                let mut kind = [0u8];
                if recv.read_exact(&mut kind).await.is_err() {
                    return;
                }
                let (link, inner) = (link.clone(), inner.clone());
                match kind[0] {
                    guaranteed::STREAM_DIRECT => {
                        tokio::spawn(read_direct(inner, link, recv));
                    }
                    guaranteed::STREAM_GUARANTEED if inner.outbox.is_some() => {
                        tokio::spawn(read_guaranteed(inner, link, recv));
                    }
                    other => {
                        close_with(&link, &format!("unexpected stream kind {other}"));
                        return;
                    }
                }
            }
        });
    }

    // The control stream, in this task.
    loop {
        match control.next().await {
            Ok(Some((f, size))) => {
                link.stats
                    .rx_control_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                match f.body {
                    Some(Body::Digest(d)) => {
                        inner.with_registry(|reg, rt| reg.on_gossip(&peer, Gossip::Digest(d), rt))
                    }
                    Some(Body::Delta(d)) => {
                        inner.with_registry(|reg, rt| reg.on_gossip(&peer, Gossip::Delta(d), rt))
                    }
                    Some(Body::Ping(p)) => {
                        link.send_control(Frame {
                            body: Some(Body::Pong(Pong { nonce: p.nonce })),
                        });
                    }
                    Some(Body::Pong(p)) => {
                        let now = inner.started.elapsed().as_micros() as u64;
                        link.stats
                            .rtt_us
                            .store(now.saturating_sub(p.nonce), Ordering::Relaxed);
                    }
                    Some(Body::Close(c)) => {
                        info!(peer = %peer, reason = c.reason, "peer closes the link");
                        break;
                    }
                    Some(Body::Ack(a)) => {
                        if let Some(outbox) = &inner.outbox
                            && let Ok(q) = outbox.queue(&peer)
                        {
                            q.ack(a.up_to);
                        }
                    }
                    Some(Body::Hello(_)) | Some(Body::Events(_)) | None => {
                        close_with(&link, "unexpected frame on the control stream");
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                close_with(&link, &e.to_string());
                break;
            }
        }
    }
    conn.close(0u32.into(), b"link closed");
    let reason = conn.closed().await;
    let removed = {
        let mut links = inner.links.write();
        if links.get(&peer).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            links.remove(&peer);
            true
        } else {
            false
        }
    };
    if removed {
        inner.rebuild_hops();
        info!(peer = %peer, reason = %reason, "mesh link down");
        inner.with_registry(|reg, rt| reg.link_down(&peer, rt));
    }
}

/// Reads the peer's direct event stream.
async fn read_direct(inner: Arc<Inner>, link: Arc<Link>, recv: quinn::RecvStream) {
    let mut reader = link::FrameReader::new(recv, inner.cfg.max_frame_bytes);
    let mut publisher = inner.broker.publisher("mesh", None);
    loop {
        match reader.next_raw().await {
            Ok(Some((body, size))) => {
                link.stats
                    .rx_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                let mut fanout = 0u64;
                let mut n = 0u64;
                let r = frame::for_each_event(body, |e| {
                    n += 1;
                    fanout += inner.on_event(e, &mut publisher);
                });
                publisher.flush(&inner.broker);
                link.stats.rx_events.fetch_add(n, Ordering::Relaxed);
                link.stats.rx_fanout.fetch_add(fanout, Ordering::Relaxed);
                if let Err(e) = r {
                    close_with(&link, &e.to_string());
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                close_with(&link, &e.to_string());
                return;
            }
        }
    }
}

/// Reads the peer's guaranteed stream: stores or delivers each batch, then acknowledges it
/// once durable. A full store stops reading (the peer keeps the events) until there is room.
async fn read_guaranteed(inner: Arc<Inner>, link: Arc<Link>, recv: quinn::RecvStream) {
    let Some(outbox) = &inner.outbox else { return };
    let mut reader = link::FrameReader::new(recv, inner.cfg.max_frame_bytes);
    let mut publisher = inner.broker.publisher("mesh", None);
    let (atx, mut arx) = mpsc::unbounded_channel::<(u64, u64)>();
    // Acknowledgements leave in order, each once its batch is durable.
    {
        let (link, disk) = (link.clone(), outbox.disk().clone());
        tokio::spawn(async move {
            while let Some((mut ticket, mut up_to)) = arx.recv().await {
                while let Ok((t, u)) = arx.try_recv() {
                    ticket = ticket.max(t);
                    up_to = up_to.max(u);
                }
                disk.wait(ticket).await;
                link.send_control(Frame {
                    body: Some(Body::Ack(meshgate_proto::v1::Ack { up_to })),
                });
            }
        });
    }
    loop {
        let (body, size) = match reader.next_raw().await {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                close_with(&link, &e.to_string());
                return;
            }
        };
        while !outbox.disk().has_room(size as u64 * 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        link.stats
            .rx_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        let (mut fanout, mut n, mut ticket) = (0u64, 0u64, 0u64);
        let mut failed = None;
        let r = frame::for_each_event(body, |e| {
            n += 1;
            match inner.on_guaranteed(outbox, e, &mut publisher) {
                Ok((f, t)) => {
                    fanout += f;
                    ticket = ticket.max(t);
                }
                Err(e) => failed = Some(e),
            }
        });
        publisher.flush(&inner.broker);
        link.stats.rx_events.fetch_add(n, Ordering::Relaxed);
        link.stats.rx_fanout.fetch_add(fanout, Ordering::Relaxed);
        match (r, failed) {
            (Err(e), _) => {
                close_with(&link, &e.to_string());
                return;
            }
            (_, Some(e)) => {
                // Not acknowledged: the peer sends the batch again on the next link.
                close_with(&link, &format!("cannot store guaranteed events: {e}"));
                return;
            }
            (Ok(up_to), None) => {
                if up_to > 0 {
                    let _ = atx.send((ticket, up_to));
                }
            }
        }
    }
}

/// Store-and-forward housekeeping: splits dead queues over new routes, releases what peers
/// acknowledged, and forgets held interest of nodes that expired.
async fn outbox_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reroute = Instant::now();
    loop {
        let reroute = tokio::select! {
            _ = inner.outbox.as_ref().expect("outbox").reroute.notified() => true,
            _ = tick.tick() => last_reroute.elapsed() > Duration::from_secs(10),
            _ = shutdown.changed() => break,
        };
        let i = inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Some(outbox) = &i.outbox else { return };
            if reroute {
                let known: HashSet<String> = {
                    let reg = i.registry.lock();
                    reg.nodes().iter().map(|n| n.name.to_string()).collect()
                };
                // A node missing from a registry younger than the expiry time may simply not
                // have been heard of yet (this node restarted): keep its events.
                let young = i.started.elapsed() < i.cfg.expire_unreachable;
                outbox.reroute_dead(|n| young || known.contains(n));
            }
            outbox.release_acked();
            i.prune_held();
        })
        .await;
        if reroute {
            last_reroute = Instant::now();
        }
    }
}

fn close_with(link: &Link, reason: &str) {
    warn!(peer = %link.peer, reason, "closing mesh link");
    link.close(reason);
}

/// Applies local interest changes, pushes deltas, and runs the periodic work.
async fn registry_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.cfg.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let periodic = tokio::select! {
            _ = inner.wake.notified() => false,
            _ = tick.tick() => true,
            _ = shutdown.changed() => break,
        };
        let pending = std::mem::take(&mut *inner.pending.lock());
        inner.with_registry(|reg, rt| {
            for (f, g, added) in &pending {
                if *added {
                    reg.add_interest(f, g.as_deref());
                } else {
                    reg.remove_interest(f, g.as_deref());
                }
            }
            reg.flush(rt);
            if periodic {
                reg.tick(rt);
            }
        });
        if periodic {
            let nonce = inner.started.elapsed().as_micros() as u64;
            for l in inner.links.read().values() {
                l.send_control(Frame {
                    body: Some(Body::Ping(Ping { nonce })),
                });
            }
        }
    }
    for l in inner.links.read().values() {
        l.send_control(Frame {
            body: Some(Body::Close(meshgate_proto::v1::Close {
                reason: "node shutting down".into(),
            })),
        });
    }
}

/// An event received on a link, checked and split by [`Inner::receive`].
struct Received {
    env: Arc<Envelope>,
    /// Links crossed, this one included.
    hops: u32,
    /// The queue groups this node serves, if it is a destination.
    mine: Option<Vec<(String, String)>>,
    /// The destinations behind this node.
    rest: Vec<meshgate_proto::v1::Destination>,
}
