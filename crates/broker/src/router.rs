//! The router: one trie of subscribers, matched once per publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshgate_proto::{Envelope, EventId, EventIdGen};
use meshgate_store::Disk;
use meshgate_topic::{
    Filter, MatchCache, MqttFilter, RetainTree, TopicError, Trie, validate_topic,
};
use parking_lot::{Mutex, RwLock};
use thiserror::Error;

use crate::mailbox::{Delivery, Mailbox, Refused, SessionId};
use crate::meter::{LocalMeter, Meter, Metered};
use crate::now_ms;
use crate::policy::{Denied, Policy};
use crate::stats::{BrokerStats, LocalTally};

/// Options of one subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS the subscriber accepts (0 or 1).
    pub qos: u8,
    /// MQTT 5 no-local: do not deliver the session's own publishes.
    pub no_local: bool,
    /// MQTT 5 retain-as-published: keep the retain flag on live deliveries.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    pub sub_id: Option<u32>,
}

/// A trie entry: where matching events go. Local subscribers and remote nodes of the mesh are
/// two kinds of target in one trie, so one match finds both.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A session of this node.
    Local {
        mailbox: Arc<Mailbox>,
        opts: SubOptions,
        /// Whether this subscription's interest was announced to the mesh (a governed node
        /// does not announce interest its app may read nothing through).
        advertised: bool,
    },
    /// Another node of the mesh whose interest matches.
    Remote { node: Arc<str> },
}

/// Trie keys of remote nodes have this bit set; local sessions count up from 1.
const REMOTE_KEY: u64 = 1 << 63;

/// One remote destination of an event: a node, and the queue groups it serves for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDest {
    /// Name of the destination node.
    pub node: Arc<str>,
    /// (group, filter) pairs this node was picked to serve, one member each.
    pub groups: Vec<(Arc<str>, Arc<str>)>,
}

/// How the router reaches the rest of the mesh. The mesh crate implements it; a single node
/// has none.
pub trait MeshHook: Send + Sync + 'static {
    /// A local subscription appeared (`added`) or went away. Called for every subscription,
    /// the mesh keeps the reference counts.
    fn interest(&self, filter: &Filter, group: Option<&str>, added: bool);
    /// Sends `event` towards remote destinations (called at most once per publish). A
    /// guaranteed event is stored for its next hops first; the result is the commit ticket that
    /// makes it durable (0 = nothing to wait for).
    fn forward(&self, event: &Arc<Envelope>, dests: &[RemoteDest]) -> u64;
    /// Index of the nearest of `candidates` (remote node names), rotating among equals by `rr`.
    fn nearest(&self, candidates: &[&str], rr: usize) -> Option<usize>;
    /// The peers of the links an event for `dests` leaves by, into `out` (for metering each
    /// app's share of every link).
    fn next_hops(&self, dests: &[RemoteDest], out: &mut Vec<Arc<str>>) {
        let _ = (dests, out);
    }
}

/// Limits and identity of the router.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Node name, stamped into every envelope minted here.
    pub node_name: String,
    /// Largest accepted payload in bytes.
    pub max_payload_bytes: usize,
    /// Largest number of retained messages held.
    pub max_retained: usize,
    /// Match-cache slots per publishing connection.
    pub match_cache_slots: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_name: "meshgate".into(),
            max_payload_bytes: 1024 * 1024,
            max_retained: 100_000,
            match_cache_slots: 256,
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The topic is not a valid concrete topic.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The payload is larger than the node accepts.
    #[error("payload is {len} bytes, the limit is {max}")]
    PayloadTooLarge {
        /// Size of the refused payload.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The node holds as many retained messages as it may.
    #[error("retained message limit of {0} reached")]
    RetainedFull(usize),
    /// The governance policy refused the publish (not a writer, unknown topic, schema, ...).
    #[error("{0}")]
    Denied(#[from] crate::policy::Denied),
    /// A guaranteed event cannot be stored: an fsync of the node's store failed, and it
    /// acknowledges nothing until the node restarts (see `meshgate_store::Disk::failure`).
    #[error("the store failed: {0}")]
    StoreFailed(String),
    /// A guaranteed event cannot be stored: the node's store is at its disk quota.
    #[error("quota exceeded: the store holds {used} of {max} bytes")]
    QuotaExceeded {
        /// Bytes used by the store.
        used: u64,
        /// The quota.
        max: u64,
    },
}

/// One subscription as [`Broker::interest`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    /// The filter (native syntax).
    pub filter: String,
    /// Its queue group, if any.
    pub group: Option<String>,
    /// The app id of a local subscriber.
    pub app: Option<String>,
    /// The node of a remote subscriber.
    pub node: Option<String>,
}

/// What happened to an accepted publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishReport {
    /// The id minted for the event.
    pub id: EventId,
    /// Mailboxes the event was queued in.
    pub routed: usize,
    /// Remote nodes it was sent towards.
    pub remote: usize,
    /// Commit ticket after which the event is stored durably on this node (guaranteed events
    /// with stored copies); acknowledge the publisher once the disk reaches it. 0 = now.
    pub ticket: u64,
}

struct Shared {
    config: BrokerConfig,
    ids: EventIdGen,
    trie: RwLock<Trie<SessionId, Target>>,
    retained: RwLock<RetainTree<Arc<Envelope>>>,
    next_session: AtomicU64,
    stats: BrokerStats,
    /// Live sessions by id, for admin listings.
    sessions: Mutex<HashMap<SessionId, Arc<Mailbox>>>,
    /// Trie keys of remote nodes.
    remote_keys: Mutex<HashMap<Arc<str>, SessionId>>,
    mesh: std::sync::OnceLock<Arc<dyn MeshHook>>,
    /// The store of guaranteed events, when the node has a data directory.
    disk: std::sync::OnceLock<Disk>,
    policy: std::sync::OnceLock<Arc<dyn Policy>>,
    meter: std::sync::OnceLock<Arc<dyn Meter>>,
}

/// Handle to the router; cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// Per-connection publishing state: its own match cache (no lock shared with other publishers)
/// and counters flushed in batches.
pub struct Publisher {
    session: Option<SessionId>,
    /// `meshgate_events_published_total{protocol}` and its bytes, resolved once per publisher.
    published: metrics::Counter,
    published_bytes: metrics::Counter,
    app_id: Option<Arc<str>>,
    cache: Option<MatchCache<SessionId, Target>>,
    tally: LocalTally,
    /// Round-robin position for queue groups.
    rr: usize,
    /// Wall clock (ms) set by the front end once per read batch; 0 = read the clock per event.
    clock_ms: u64,
    /// Reused scratch list (session, index into the match) to deliver once per session.
    order: Vec<(SessionId, u32)>,
    /// Reused list of remote destinations of the event being routed.
    remote: Vec<RemoteDest>,
    /// Highest commit ticket of the event being routed.
    ticket: u64,
    /// Chargeback tallies since the last flush (only when the node meters).
    meter: LocalMeter,
    /// Reused list of the links an event leaves by (metering).
    peers: Vec<Arc<str>>,
    /// Whether deliveries to journaled sessions are held until [`Broker::flush_held`].
    batched: bool,
    /// Deliveries held, in routing order.
    held: Vec<(Arc<Mailbox>, Delivery)>,
    /// Reused buffer of the journal records of held deliveries, and each record's span in it.
    scratch: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl Publisher {
    /// Flushes counters into the shared metrics, after storing and queueing what is held
    /// ([`Broker::flush_held`], whose ticket is dropped here: a caller that acknowledges
    /// publishes calls that first).
    pub fn flush(&mut self, broker: &Broker) {
        broker.flush_held(self);
        self.tally
            .flush(&broker.shared.stats, &self.published, &self.published_bytes);
        if let Some(m) = broker.shared.meter.get() {
            self.meter.flush(&**m);
        }
    }

    /// Sets the time stamped on the events published until the next call: a front end that
    /// publishes a batch read in one go reads the clock once per batch, not per event.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.clock_ms = now_ms;
    }

    /// Sets the app id stamped on published events.
    pub fn set_app_id(&mut self, app_id: Option<Arc<str>>) {
        self.app_id = app_id;
    }

    /// Holds the deliveries to journaled sessions (persistent MQTT sessions, bridge sinks)
    /// until [`Broker::flush_held`], which stores each session's share of a batch with one
    /// write: a front end that publishes a batch read in one go then pays one write syscall
    /// per batch, not per event. Such a front end must call `flush_held` after each batch and
    /// take its ticket into account before acknowledging any publish of the batch (a publish's
    /// own [`PublishReport::ticket`] does not cover what is held).
    pub fn set_batched(&mut self, batched: bool) {
        self.batched = batched;
    }

    /// Whether deliveries are held (so a publish routed now is not durable before the next
    /// [`Broker::flush_held`]).
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }
}

impl Broker {
    /// A router with the given limits. Registers its metrics with the current recorder.
    pub fn new(config: BrokerConfig) -> Self {
        let node_bits: u16 = rand::random();
        let start: u64 = rand::random::<u32>() as u64;
        Self {
            shared: Arc::new(Shared {
                config,
                ids: EventIdGen::new(node_bits, start),
                trie: RwLock::new(Trie::new()),
                retained: RwLock::new(RetainTree::new()),
                next_session: AtomicU64::new(1),
                stats: BrokerStats::register(),
                sessions: Mutex::new(HashMap::new()),
                remote_keys: Mutex::new(HashMap::new()),
                mesh: std::sync::OnceLock::new(),
                disk: std::sync::OnceLock::new(),
                policy: std::sync::OnceLock::new(),
                meter: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The router's limits.
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Creates a mailbox for a new session holding up to `capacity` queued events.
    pub fn new_mailbox(&self, capacity: usize) -> Arc<Mailbox> {
        let id = SessionId(self.shared.next_session.fetch_add(1, Ordering::Relaxed));
        let mb = Mailbox::new(id, capacity);
        self.shared.sessions.lock().insert(id, mb.clone());
        mb
    }

    /// Publishing state for one connection. `protocol` labels its metrics (a fixed small set:
    /// "mqtt", "http", bridge kinds); `session` enables MQTT no-local.
    pub fn publisher(&self, protocol: &'static str, session: Option<SessionId>) -> Publisher {
        Publisher {
            session,
            published: metrics::counter!("meshgate_events_published_total", "protocol" => protocol),
            published_bytes: metrics::counter!(
                "meshgate_events_published_bytes_total",
                "protocol" => protocol
            ),
            app_id: None,
            cache: None,
            tally: LocalTally::default(),
            rr: 0,
            clock_ms: 0,
            order: Vec::new(),
            remote: Vec::new(),
            ticket: 0,
            meter: LocalMeter::default(),
            peers: Vec::new(),
            batched: false,
            held: Vec::new(),
            scratch: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Stores and queues the deliveries a batched publisher held (see
    /// [`Publisher::set_batched`]): per session, the QoS 1 deliveries are appended to its journal
    /// with one write, and all of its held deliveries are queued in order while the journal's
    /// lock is held (so concurrent publishers queue in journal order). Returns the commit ticket
    /// after which all of them are durable (0: nothing to wait for).
    pub fn flush_held(&self, p: &mut Publisher) -> u64 {
        if p.held.is_empty() {
            return 0;
        }
        let mut held = std::mem::take(&mut p.held);
        // One run per session, each in routing order (a stable sort; usually one session).
        if held.windows(2).any(|w| w[0].0.id() != w[1].0.id()) {
            held.sort_by_key(|(mb, _)| mb.id());
        }
        let mut ticket = 0;
        let mut start = 0;
        while start < held.len() {
            let id = held[start].0.id();
            let len = held[start..]
                .iter()
                .position(|(mb, _)| mb.id() != id)
                .unwrap_or(held.len() - start);
            let run = &held[start..start + len];
            ticket = ticket.max(store_run(run, &mut p.scratch, &mut p.spans, &mut p.tally));
            start += len;
        }
        held.clear();
        p.held = held;
        ticket
    }

    /// Gives the router the node's store: guaranteed events are refused once it is at quota.
    pub fn set_disk(&self, disk: Disk) {
        let _ = self.shared.disk.set(disk);
    }

    /// The node's store, if it has one.
    pub fn disk(&self) -> Option<&Disk> {
        self.shared.disk.get()
    }

    /// Puts the node under a governance policy (set once, before clients connect): publishes,
    /// subscriptions and every delivery to a local subscriber are checked by it.
    pub fn set_policy(&self, policy: Arc<dyn Policy>) {
        let _ = self.shared.policy.set(policy);
    }

    /// Meters every app's traffic into `meter` (set once, before clients connect): produced
    /// and delivered copies per app and topic, handed over as publishers flush.
    pub fn set_meter(&self, meter: Arc<dyn Meter>) {
        let _ = self.shared.meter.set(meter);
    }

    /// The meter, when the node meters (the mesh adds what its links carry).
    pub fn meter(&self) -> Option<&Arc<dyn Meter>> {
        self.shared.meter.get()
    }

    /// Whether a policy governs this node.
    pub fn governed(&self) -> bool {
        self.shared.policy.get().is_some()
    }

    /// May `app` subscribe to `filter`? Always yes without a policy.
    pub fn check_subscribe(&self, app: Option<&str>, filter: &MqttFilter) -> Result<(), Denied> {
        match self.shared.policy.get() {
            Some(p) => p.check_subscribe(app, filter),
            None => Ok(()),
        }
    }

    /// May `app` read an event on `topic`? Always yes without a policy. Retained messages and
    /// replays go through this too.
    pub fn may_read(&self, app: Option<&str>, topic: &str) -> bool {
        match self.shared.policy.get() {
            Some(p) => p.may_read(app, topic),
            None => true,
        }
    }

    /// Connects the router to the mesh. Interest that exists already is announced to it.
    pub fn set_mesh(&self, hook: Arc<dyn MeshHook>) {
        if self.shared.mesh.set(hook.clone()).is_err() {
            return;
        }
        let trie = self.shared.trie.read();
        trie.for_each(|f, g, _, t| {
            if let (
                Target::Local {
                    advertised: true, ..
                },
                Ok(filter),
            ) = (t, Filter::parse(f))
            {
                hook.interest(&filter, g, true);
            }
        });
    }

    /// Adds the interest of remote node `node` in `filter` (from the mesh registry).
    pub fn add_remote_interest(&self, node: &Arc<str>, filter: &Filter, group: Option<&str>) {
        let key = self.remote_key(node);
        let mut trie = self.shared.trie.write();
        trie.insert(filter, group, key, Target::Remote { node: node.clone() });
        self.shared.stats.subscriptions.set(trie.len() as f64);
    }

    /// Removes what [`Broker::add_remote_interest`] added.
    pub fn remove_remote_interest(&self, node: &Arc<str>, filter: &Filter, group: Option<&str>) {
        let key = self.remote_key(node);
        let mut trie = self.shared.trie.write();
        trie.remove(filter, group, key);
        self.shared.stats.subscriptions.set(trie.len() as f64);
    }

    fn remote_key(&self, node: &Arc<str>) -> SessionId {
        let mut keys = self.shared.remote_keys.lock();
        let n = keys.len() as u64;
        *keys
            .entry(node.clone())
            .or_insert(SessionId(REMOTE_KEY | (n + 1)))
    }

    /// Delivers an event that arrived from the mesh to this node's own subscribers: every plain
    /// subscriber, and one member of each listed queue group. Never forwards. Returns the number
    /// of mailboxes it entered, and the commit ticket of the copies it stored.
    pub fn deliver_from_mesh(
        &self,
        p: &mut Publisher,
        event: &Arc<Envelope>,
        groups: &[(String, String)],
    ) -> (usize, u64) {
        if event.retain {
            let _ = self.retain(event);
        }
        let qos = u8::from(event.delivery == meshgate_proto::DeliveryClass::Guaranteed as i32);
        p.ticket = 0;
        let routed = self.route_inner(p, event, qos, Some(groups));
        p.tally.routed += routed as u64;
        (routed, p.ticket)
    }

    /// Accepts an event: validates it, mints its id, updates retained state, and queues it in
    /// every matching mailbox. `qos` is the publish QoS (capped per subscription).
    pub fn publish(
        &self,
        p: &mut Publisher,
        mut env: Envelope,
        qos: u8,
    ) -> Result<PublishReport, PublishError> {
        validate_topic(&env.topic)?;
        let max = self.shared.config.max_payload_bytes;
        if env.payload.len() > max {
            return Err(PublishError::PayloadTooLarge {
                len: env.payload.len(),
                max,
            });
        }
        if let Some(policy) = self.shared.policy.get() {
            policy.check_publish(p.app_id.as_deref(), &env.topic, &env.payload)?;
        }
        if qos > 0
            && let Some(disk) = self.shared.disk.get()
        {
            if let Some(why) = disk.failure() {
                return Err(PublishError::StoreFailed(why.to_string()));
            }
            if !disk.has_room(env.payload.len() as u64 + env.topic.len() as u64 + 256) {
                return Err(PublishError::QuotaExceeded {
                    used: disk.used_bytes(),
                    max: disk.max_bytes(),
                });
            }
        }
        let now = if p.clock_ms != 0 {
            p.clock_ms
        } else {
            now_ms()
        };
        let id = self.shared.ids.next(now);
        env.set_event_id(id);
        if qos > 0 {
            env.delivery = meshgate_proto::DeliveryClass::Guaranteed as i32;
        }
        if env.timestamp_ms == 0 {
            env.timestamp_ms = now;
        }
        // `origin_node` empty means "this node" and `provenance` unset means a plain client of
        // this node: both are filled in only where an event leaves the node, so a local publish
        // allocates nothing for them.
        if let Some(app) = &p.app_id {
            env.publisher_app = app.to_string();
        }
        let retain = env.retain;
        let event = Arc::new(env);
        if retain {
            self.retain(&event)?;
        }
        p.tally.published += 1;
        p.tally.published_bytes += event.payload.len() as u64;
        p.ticket = 0;
        if self.shared.meter.get().is_some() {
            p.meter.add(
                p.app_id.as_deref(),
                &event.topic,
                &Metered::Produced,
                event.payload.len() as u64,
            );
        }
        let routed = self.route(p, &event, qos);
        if routed == 0 && p.remote.is_empty() {
            p.tally.unrouted += 1;
        }
        p.tally.routed += routed as u64;
        Ok(PublishReport {
            id,
            routed,
            remote: p.remote.len(),
            ticket: p.ticket,
        })
    }

    fn retain(&self, event: &Arc<Envelope>) -> Result<(), PublishError> {
        let mut r = self.shared.retained.write();
        if event.payload.is_empty() {
            r.remove(&event.topic);
        } else {
            let limit = self.shared.config.max_retained;
            let replaced = r.insert(&event.topic, event.clone());
            if replaced.is_none() && r.len() > limit {
                r.remove(&event.topic);
                return Err(PublishError::RetainedFull(limit));
            }
        }
        self.shared.stats.retained.set(r.len() as f64);
        Ok(())
    }

    /// Matches and delivers; returns the number of mailboxes the event entered.
    fn route(&self, p: &mut Publisher, event: &Arc<Envelope>, qos: u8) -> usize {
        self.route_inner(p, event, qos, None)
    }

    /// `from_mesh`: the event came over a link; deliver to local subscribers only, and to the
    /// queue groups listed (the origin chose this node for them).
    fn route_inner(
        &self,
        p: &mut Publisher,
        event: &Arc<Envelope>,
        qos: u8,
        from_mesh: Option<&[(String, String)]>,
    ) -> usize {
        let policy = self.shared.policy.get();
        let metering = self.shared.meter.get().is_some();
        let trie = self.shared.trie.read();
        let slots = self.shared.config.match_cache_slots;
        let cache = p.cache.get_or_insert_with(|| MatchCache::new(slots));
        let m = cache.lookup(&trie, &event.topic);
        let mut routed = 0;
        let subs = m.subscribers();
        let order = &mut p.order;
        let remote = &mut p.remote;
        remote.clear();
        order.clear();
        order.extend(
            subs.iter()
                .enumerate()
                .map(|(i, (sid, _))| (*sid, i as u32)),
        );
        // One copy per session even when several of its filters match, at the highest QoS of
        // those filters (MQTT 5 §3.3.4). Sorting a reused scratch list keeps this O(n log n)
        // and allocation-free at any fan-out.
        if order.len() > 1 {
            order.sort_unstable();
        }
        let mut i = 0;
        while i < order.len() {
            let (sid, first) = order[i];
            let target = &subs[first as usize].1;
            i += 1;
            match target {
                Target::Remote { node } => {
                    while i < order.len() && order[i].0 == sid {
                        i += 1;
                    }
                    if from_mesh.is_none() {
                        remote.push(RemoteDest {
                            node: node.clone(),
                            groups: Vec::new(),
                        });
                    }
                }
                Target::Local { mailbox, opts, .. } => {
                    let mut q = opts.qos;
                    while i < order.len() && order[i].0 == sid {
                        if let Target::Local { opts, .. } = &subs[order[i].1 as usize].1 {
                            q = q.max(opts.qos);
                        }
                        i += 1;
                    }
                    if opts.no_local && p.session == Some(sid) {
                        continue;
                    }
                    if let Some(policy) = policy
                        && !policy.may_read(mailbox.app(), &event.topic)
                    {
                        p.tally.unreadable += 1;
                        continue;
                    }
                    if deliver(
                        mailbox,
                        opts,
                        event,
                        qos.min(q),
                        &mut p.tally,
                        &mut p.ticket,
                        p.batched.then_some(&mut p.held),
                    ) {
                        routed += 1;
                        if metering {
                            delivered(&mut p.meter, mailbox, event);
                        }
                    }
                }
            }
        }
        let mesh = self.shared.mesh.get();
        for g in m.groups() {
            if g.members.is_empty() {
                continue;
            }
            if let Some(listed) = from_mesh
                && !listed
                    .iter()
                    .any(|(name, f)| name == g.group && f == g.filter)
            {
                continue;
            }
            // Prefer a local member that is online, then the nearest remote node, then a local
            // member that is offline (its session queues the event).
            p.rr = p.rr.wrapping_add(1);
            let n = g.members.len();
            let start = p.rr % n;
            let locals = (0..n)
                .map(|k| &g.members[(start + k) % n])
                .filter_map(|(_, t)| match t {
                    Target::Local { mailbox, opts, .. } => Some((mailbox, opts)),
                    Target::Remote { .. } => None,
                })
                // A member whose app may not read the event is no candidate.
                .filter(|(mb, _)| policy.is_none_or(|pol| pol.may_read(mb.app(), &event.topic)));
            let mut online = None;
            let mut offline = None;
            for (mb, opts) in locals {
                if mb.is_online() {
                    online = Some((mb, opts));
                    break;
                }
                offline.get_or_insert((mb, opts));
            }
            if online.is_none()
                && from_mesh.is_none()
                && let Some(mesh) = mesh
            {
                let mut candidates: Vec<&str> = Vec::new();
                let mut nodes: Vec<&Arc<str>> = Vec::new();
                for (_, t) in g.members {
                    if let Target::Remote { node } = t {
                        candidates.push(node);
                        nodes.push(node);
                    }
                }
                if let Some(k) = mesh.nearest(&candidates, p.rr) {
                    let node = nodes[k];
                    let gref = (Arc::<str>::from(g.group), Arc::<str>::from(g.filter));
                    match remote.iter_mut().find(|d| &d.node == node) {
                        Some(d) => d.groups.push(gref),
                        None => remote.push(RemoteDest {
                            node: node.clone(),
                            groups: vec![gref],
                        }),
                    }
                    continue;
                }
            }
            if let Some((mb, opts)) = online.or(offline)
                && deliver(
                    mb,
                    opts,
                    event,
                    qos.min(opts.qos),
                    &mut p.tally,
                    &mut p.ticket,
                    p.batched.then_some(&mut p.held),
                )
            {
                routed += 1;
                if metering {
                    delivered(&mut p.meter, mb, event);
                }
            }
        }
        drop(trie);
        if !p.remote.is_empty()
            && let Some(mesh) = mesh
        {
            let ticket = mesh.forward(event, &p.remote);
            p.ticket = p.ticket.max(ticket);
            p.tally.forwarded += 1;
            if metering {
                let mut peers = std::mem::take(&mut p.peers);
                peers.clear();
                mesh.next_hops(&p.remote, &mut peers);
                let app = Some(event.publisher_app.as_str()).filter(|a| !a.is_empty());
                let bytes = prost::Message::encoded_len(&**event) as u64;
                for peer in &peers {
                    p.meter
                        .add(app, &event.topic, &Metered::Link(peer.clone()), bytes);
                }
                p.peers = peers;
            }
        }
        routed
    }

    /// Adds (or replaces) a subscription of `mailbox` to `filter`, in queue group `group` if any.
    /// Returns true if it is new.
    pub fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &Filter,
        group: Option<&str>,
        opts: SubOptions,
    ) -> bool {
        let advertised = self
            .shared
            .policy
            .get()
            .is_none_or(|p| p.advertise(mailbox.app(), filter));
        let target = Target::Local {
            mailbox: mailbox.clone(),
            opts,
            advertised,
        };
        let mut trie = self.shared.trie.write();
        let old = trie.remove(filter, group, mailbox.id());
        trie.insert(filter, group, mailbox.id(), target);
        self.shared.stats.subscriptions.set(trie.len() as f64);
        drop(trie);
        let was = matches!(
            old,
            Some(Target::Local {
                advertised: true,
                ..
            })
        );
        if was != advertised
            && let Some(mesh) = self.shared.mesh.get()
        {
            mesh.interest(filter, group, advertised);
        }
        old.is_none()
    }

    /// Removes a subscription. Returns true if it existed.
    pub fn unsubscribe(&self, session: SessionId, filter: &Filter, group: Option<&str>) -> bool {
        let mut trie = self.shared.trie.write();
        let removed = trie.remove(filter, group, session);
        self.shared.stats.subscriptions.set(trie.len() as f64);
        drop(trie);
        if let Some(Target::Local {
            advertised: true, ..
        }) = &removed
            && let Some(mesh) = self.shared.mesh.get()
        {
            mesh.interest(filter, group, false);
        }
        removed.is_some()
    }

    /// Decides again, after the policy changed (a catalog reload), which local subscriptions
    /// are announced to the mesh: interest an app may now read something through is announced,
    /// interest it may no longer read anything through is withdrawn. Returns the number of
    /// subscriptions whose announcement changed.
    pub fn refresh_advertised(&self) -> usize {
        let Some(policy) = self.shared.policy.get() else {
            return 0;
        };
        let mut changes = Vec::new();
        let mut trie = self.shared.trie.write();
        trie.for_each(|f, g, key, t| {
            if let Target::Local {
                mailbox,
                opts,
                advertised,
            } = t
                && let Ok(filter) = Filter::parse(f)
            {
                let now = policy.advertise(mailbox.app(), &filter);
                if now != *advertised {
                    changes.push((
                        filter,
                        g.map(str::to_string),
                        key,
                        mailbox.clone(),
                        *opts,
                        now,
                    ));
                }
            }
        });
        for (filter, group, key, mailbox, opts, advertised) in &changes {
            trie.insert(
                filter,
                group.as_deref(),
                *key,
                Target::Local {
                    mailbox: mailbox.clone(),
                    opts: *opts,
                    advertised: *advertised,
                },
            );
        }
        drop(trie);
        if let Some(mesh) = self.shared.mesh.get() {
            for (filter, group, _, _, _, advertised) in &changes {
                mesh.interest(filter, group.as_deref(), *advertised);
            }
        }
        changes.len()
    }

    /// Forgets a session's mailbox (its subscriptions must have been removed by its owner).
    pub fn end_session(&self, session: SessionId) {
        self.shared.sessions.lock().remove(&session);
    }

    /// Retained events matching `filter`, for delivery right after a subscribe.
    pub fn retained_matching(&self, filter: &Filter) -> Vec<Arc<Envelope>> {
        let mut out = Vec::new();
        self.shared
            .retained
            .read()
            .for_each_match(filter, |_, e| out.push(e.clone()));
        out
    }

    /// Every subscription as (filter, group, session), for admin listings.
    pub fn subscriptions(&self) -> Vec<(String, Option<String>, SessionId)> {
        let mut out = Vec::new();
        self.shared.trie.read().for_each(|f, g, k, t| {
            if matches!(t, Target::Local { .. }) {
                out.push((f.to_string(), g.map(str::to_string), k))
            }
        });
        out
    }

    /// Every subscription, local and remote.
    pub fn interest(&self) -> Vec<Interest> {
        let mut out = Vec::new();
        self.shared.trie.read().for_each(|f, g, _, t| {
            let (app, node) = match t {
                Target::Local { mailbox, .. } => (mailbox.app().map(str::to_string), None),
                Target::Remote { node } => (None, Some(node.to_string())),
            };
            out.push(Interest {
                filter: f.to_string(),
                group: g.map(str::to_string),
                app,
                node,
            });
        });
        out
    }

    /// Number of subscriptions and of distinct filters.
    pub fn subscription_counts(&self) -> (usize, usize) {
        let t = self.shared.trie.read();
        (t.len(), t.filter_count())
    }

    /// Number of live sessions (MQTT sessions, SSE streams).
    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.shared.retained.read().len()
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }
}

/// Meters a copy handed to `mailbox`, on its app's account.
fn delivered(meter: &mut LocalMeter, mailbox: &Mailbox, event: &Envelope) {
    meter.add(
        mailbox.app(),
        &event.topic,
        &Metered::Delivered,
        event.payload.len() as u64,
    );
}

/// Queues `event` for `mailbox`; true if it entered the mailbox or the session's journal. With
/// `held` (a batched publisher), every delivery to a journaled session is held for
/// [`Broker::flush_held`] instead (its QoS 0 ones too while it is online, so that the session's
/// order holds), and counts as delivered.
fn deliver(
    mailbox: &Arc<Mailbox>,
    opts: &SubOptions,
    event: &Arc<Envelope>,
    qos: u8,
    tally: &mut LocalTally,
    ticket: &mut u64,
    held: Option<&mut Vec<(Arc<Mailbox>, Delivery)>>,
) -> bool {
    let mut d = Delivery {
        event: event.clone(),
        qos,
        retain: opts.retain_as_published && event.retain,
        sub_id: opts.sub_id,
        seq: 0,
    };
    // QoS 0 to an offline session is refused below as before (and so not counted): nothing of
    // it can be out of order.
    if let Some(held) = held
        && mailbox.journal().is_some()
        && (qos > 0 || mailbox.is_online())
    {
        held.push((mailbox.clone(), d));
        return true;
    }
    // A persistent session's QoS 1 delivery is stored before the publisher hears back.
    if qos > 0
        && let Some(journal) = mailbox.journal()
    {
        match journal.append(&d.encode()) {
            Ok((seq, t)) => {
                d.seq = seq;
                *ticket = (*ticket).max(t);
            }
            Err(e) => tracing::warn!(error = %e, "cannot store a delivery; kept in memory"),
        }
    }
    queue(mailbox, d, tally)
}

/// Queues `d` in `mailbox`; true if it entered the mailbox or, journaled (`seq` set), is read
/// back from the session's journal when the session has room. Only a delivery that is in
/// neither counts as dropped.
fn queue(mailbox: &Mailbox, d: Delivery, tally: &mut LocalTally) -> bool {
    let journaled = d.seq != 0;
    match mailbox.offer(d) {
        Ok(()) => true,
        Err(why) => kept_when_refused(why, journaled, tally),
    }
}

/// Whether a delivery its mailbox refused for `why` is still kept (a journaled one is read
/// back from the journal); a full mailbox's refusal of one that is not journaled counts as
/// dropped.
fn kept_when_refused(why: Refused, journaled: bool, tally: &mut LocalTally) -> bool {
    match why {
        Refused::Full if journaled => true,
        Refused::Full => {
            tally.dropped_full += 1;
            false
        }
        Refused::Offline => journaled,
    }
}

/// Most bytes of journal records appended with one write by [`Broker::flush_held`].
const HELD_WRITE_BYTES: usize = 8 << 20;

/// [`Broker::flush_held`] for the held deliveries of one session: appends the journal records of
/// the QoS 1 ones (one write per [`HELD_WRITE_BYTES`]) and queues each part in order under the
/// journal's lock. A delivery that cannot be stored is queued in memory only, as
/// [`deliver`] does. Returns the highest ticket.
fn store_run(
    run: &[(Arc<Mailbox>, Delivery)],
    scratch: &mut Vec<u8>,
    spans: &mut Vec<std::ops::Range<usize>>,
    tally: &mut LocalTally,
) -> u64 {
    let Some(journal) = run.first().and_then(|(mb, _)| mb.journal().cloned()) else {
        return 0;
    };
    let mut ticket = 0;
    let mut rest = run;
    while !rest.is_empty() {
        scratch.clear();
        spans.clear();
        let mut n = 0;
        while n < rest.len() && scratch.len() < HELD_WRITE_BYTES {
            let d = &rest[n].1;
            if d.qos > 0 {
                let from = scratch.len();
                d.encode_into(scratch);
                spans.push(from..scratch.len());
            }
            n += 1;
        }
        let (part, tail) = rest.split_at(n);
        rest = tail;
        if spans.is_empty() {
            // QoS 0 only: nothing to store.
            queue_part(part, None, tally);
            continue;
        }
        let records: Vec<&[u8]> = spans.iter().map(|r| &scratch[r.clone()]).collect();
        match journal.append_batch_then(&records, |seqs| {
            queue_part(part, Some(seqs.start), tally);
        }) {
            Ok(((), _, t)) => ticket = ticket.max(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store deliveries; kept in memory");
                queue_part(part, None, tally);
            }
        }
    }
    ticket
}

/// Queues the held deliveries of `part` in order, the QoS 1 ones numbered from `first` (their
/// journal sequence numbers; `None`: not stored).
fn queue_part(part: &[(Arc<Mailbox>, Delivery)], mut first: Option<u64>, tally: &mut LocalTally) {
    let Some((mb, _)) = part.first() else { return };
    let numbered = part.iter().map(|(_, d)| {
        let mut d = d.clone();
        if d.qos > 0
            && let Some(seq) = first.as_mut()
        {
            d.seq = *seq;
            *seq += 1;
        }
        d
    });
    mb.offer_all(numbered, |d, why| {
        kept_when_refused(why, d.seq != 0, tally);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, payload: &'static [u8]) -> Envelope {
        Envelope {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn publish_reaches_matching_mailboxes_once() {
        let b = Broker::new(BrokerConfig::default());
        let a = b.new_mailbox(16);
        let c = b.new_mailbox(16);
        let mut ra = a.attach().await;
        let mut rc = c.attach().await;
        let f = |s: &str| Filter::parse(s).unwrap();
        let q1 = SubOptions {
            qos: 1,
            ..Default::default()
        };
        b.subscribe(&a, &f("orders/*/us/>"), None, SubOptions::default());
        b.subscribe(&a, &f("orders/17/us/ny"), None, q1);
        b.subscribe(&c, &f("orders/17/eu/>"), None, SubOptions::default());
        let mut p = b.publisher("test", None);
        let r = b.publish(&mut p, env("orders/17/us/ny", b"x"), 1).unwrap();
        assert_eq!(r.routed, 1, "one copy per session");
        let d = ra.try_recv().unwrap();
        assert_eq!(d.qos, 1, "highest QoS of the overlapping filters");
        assert!(ra.try_recv().is_err());
        assert!(rc.try_recv().is_err());
        assert!(
            b.publish(&mut p, env("orders/17/us", b"x"), 0)
                .unwrap()
                .routed
                == 0
        );
        assert!(matches!(
            b.publish(&mut p, env("orders/+/us", b"x"), 0),
            Err(PublishError::Topic(_))
        ));
    }

    #[tokio::test]
    async fn a_batched_publisher_stores_each_sessions_share_at_flush_in_order() {
        use meshgate_store::{Commit, Disk};
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(Commit::Group(std::time::Duration::ZERO), u64::MAX);
        let b = Broker::new(BrokerConfig::default());
        b.set_disk(disk.clone());
        let f = |s: &str| Filter::parse(s).unwrap();
        let q1 = SubOptions {
            qos: 1,
            ..Default::default()
        };
        // Two persistent sessions with journals (one with a queue of 2, so it overflows) and a
        // plain one.
        let mut journaled = Vec::new();
        for (i, cap) in [(0, 64), (1, 2)] {
            let mb = b.new_mailbox(cap);
            mb.set_persistent(true);
            let (j, _) = disk
                .open(dir.path().join(format!("s{i}")), 1 << 20)
                .unwrap();
            mb.set_journal(j);
            let rx = mb.attach().await;
            b.subscribe(&mb, &f("a/>"), None, q1);
            journaled.push((mb, rx));
        }
        let plain = b.new_mailbox(64);
        let mut plain_rx = plain.attach().await;
        b.subscribe(&plain, &f("a/>"), None, q1);
        // An offline persistent session: QoS 1 is held and stored, QoS 0 is refused (and not
        // counted) as without batching.
        let away = b.new_mailbox(64);
        away.set_persistent(true);
        let (j, _) = disk.open(dir.path().join("away"), 1 << 20).unwrap();
        away.set_journal(j);
        b.subscribe(&away, &f("a/>"), None, q1);
        let mut p = b.publisher("test", None);
        p.set_batched(true);
        // QoS 1, 0, 1, 0, 1: the QoS 0 events are held too, so each session keeps the order.
        for i in 0..5u8 {
            let qos = (i + 1) % 2;
            let r = b
                .publish(&mut p, env(&format!("a/{i}"), b"x"), qos)
                .unwrap();
            assert_eq!(r.routed, if qos == 1 { 4 } else { 3 });
        }
        assert!(p.holds());
        assert_eq!(plain_rx.try_recv().unwrap().event.topic, "a/0", "not held");
        for (mb, rx) in &mut journaled {
            assert!(rx.try_recv().is_err(), "held until the flush");
            assert_eq!(mb.journal().unwrap().bounds(), (1, 1), "nothing stored yet");
        }
        let ticket = b.flush_held(&mut p);
        assert!(ticket > 0 && !p.holds());
        tokio::time::timeout(std::time::Duration::from_secs(5), disk.wait(ticket))
            .await
            .expect("the batch's cycle completes");
        // The roomy session got all five in order, QoS 1 ones numbered 1, 2, 3 in its journal.
        let (mb, rx) = &mut journaled[0];
        let got: Vec<(String, u8, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|d| (d.event.topic.clone(), d.qos, d.seq))
            .collect();
        let want = [
            ("a/0", 1, 1),
            ("a/1", 0, 0),
            ("a/2", 1, 2),
            ("a/3", 0, 0),
            ("a/4", 1, 3),
        ];
        let want: Vec<(String, u8, u64)> = want
            .iter()
            .map(|(t, q, s)| (t.to_string(), *q, *s))
            .collect();
        assert_eq!(got, want);
        let stored = mb.journal().unwrap().read_from(0, 10).unwrap();
        let topics: Vec<String> = stored
            .iter()
            .map(|(seq, r)| Delivery::decode(*seq, r).unwrap().event.topic.clone())
            .collect();
        assert_eq!(topics, ["a/0", "a/2", "a/4"]);
        // The small session took two; its QoS 1 overflow is in its journal, not dropped.
        let (mb, rx) = &mut journaled[1];
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
        assert_eq!(mb.journal().unwrap().bounds(), (1, 4));
        assert_eq!(away.journal().unwrap().bounds(), (1, 4));
        assert_eq!(b.flush_held(&mut p), 0, "nothing held any more");
    }

    #[tokio::test]
    async fn queue_group_gets_one_copy_and_retained_is_kept() {
        let b = Broker::new(BrokerConfig::default());
        let m: Vec<_> = (0..3).map(|_| b.new_mailbox(64)).collect();
        let mut rx = Vec::new();
        for mb in &m {
            rx.push(mb.attach().await);
            b.subscribe(
                mb,
                &Filter::parse("jobs/>").unwrap(),
                Some("w"),
                SubOptions::default(),
            );
        }
        let mut p = b.publisher("test", None);
        for _ in 0..30 {
            let mut e = env("jobs/a", b"j");
            e.retain = true;
            assert_eq!(b.publish(&mut p, e, 0).unwrap().routed, 1);
        }
        let counts: Vec<usize> = rx
            .iter_mut()
            .map(|r| std::iter::from_fn(|| r.try_recv().ok()).count())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 30);
        assert!(counts.iter().all(|&c| c == 10), "round robin: {counts:?}");
        assert_eq!(
            b.retained_matching(&Filter::parse("jobs/*").unwrap()).len(),
            1
        );
        b.publish(&mut p, env("jobs/a", b""), 0).unwrap();
        assert_eq!(
            b.retained_count(),
            1,
            "a plain empty publish leaves retained alone"
        );
        let mut clear = env("jobs/a", b"");
        clear.retain = true;
        b.publish(&mut p, clear, 0).unwrap();
        assert_eq!(b.retained_count(), 0, "an empty retained publish clears it");
    }

    #[tokio::test]
    async fn offline_sessions_queue_qos1_only_when_persistent() {
        let b = Broker::new(BrokerConfig::default());
        let mb = b.new_mailbox(4);
        b.subscribe(
            &mb,
            &Filter::parse("t").unwrap(),
            None,
            SubOptions {
                qos: 1,
                ..Default::default()
            },
        );
        let mut p = b.publisher("test", None);
        assert_eq!(b.publish(&mut p, env("t", b"1"), 1).unwrap().routed, 0);
        mb.set_persistent(true);
        assert_eq!(b.publish(&mut p, env("t", b"2"), 1).unwrap().routed, 1);
        assert_eq!(b.publish(&mut p, env("t", b"3"), 0).unwrap().routed, 0);
        for _ in 0..10 {
            b.publish(&mut p, env("t", b"4"), 1).unwrap();
        }
        assert_eq!(mb.dropped(), 7, "capacity 4: 1 + 3 queued, 7 refused");
        let mut rx = mb.attach().await;
        assert_eq!(&rx.try_recv().unwrap().event.payload[..], b"2");
    }
}
