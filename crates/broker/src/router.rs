//! The router: one trie of subscribers, matched once per publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshgate_proto::{Envelope, EventId, EventIdGen};
use meshgate_store::Disk;
use meshgate_topic::{Filter, MqttFilter, RetainTree, TopicError, validate_topic};
use parking_lot::{Mutex, RwLock};
use thiserror::Error;

use crate::flow::Congestion;
use crate::mailbox::{Mailbox, SessionId};
use crate::meter::{Meter, Metered};
use crate::now_ms;
use crate::policy::{Denied, Policy};
use crate::publisher::Publisher;
use crate::shared_trie::SharedTrie;
use crate::stats::BrokerStats;

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
pub(crate) const REMOTE_KEY: u64 = 1 << 63;

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
    /// makes it durable (0 = nothing to wait for). A link whose queue the event congested is
    /// noted in `flow`: the publisher waits for it (see crate::flow).
    fn forward(&self, event: &Arc<Envelope>, dests: &[RemoteDest], flow: &mut Congestion) -> u64;
    /// Notes in `flow` the links towards `dests` whose queues are congested now (a publisher
    /// that asks before it publishes: REST).
    fn congested_links(&self, dests: &[RemoteDest], flow: &mut Congestion) {
        let _ = (dests, flow);
    }
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
    /// How long a publisher waits for a congested queue whose consumer takes nothing before
    /// that consumer is declared slow (`flow.stall_ms`; see crate::flow).
    pub stall: std::time::Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_name: "meshgate".into(),
            max_payload_bytes: 1024 * 1024,
            max_retained: 100_000,
            match_cache_slots: 256,
            stall: std::time::Duration::from_millis(500),
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
    #[error("{0}")]
    StoreFailed(#[from] meshgate_store::Failed),
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

pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) ids: EventIdGen,
    pub(crate) trie: SharedTrie,
    pub(crate) retained: RwLock<RetainTree<Arc<Envelope>>>,
    pub(crate) next_session: AtomicU64,
    pub(crate) stats: BrokerStats,
    /// Live sessions by id, for admin listings.
    pub(crate) sessions: Mutex<HashMap<SessionId, Arc<Mailbox>>>,
    /// Trie keys of remote nodes.
    pub(crate) remote_keys: Mutex<HashMap<Arc<str>, SessionId>>,
    pub(crate) mesh: std::sync::OnceLock<Arc<dyn MeshHook>>,
    /// The store of guaranteed events, when the node has a data directory.
    pub(crate) disk: std::sync::OnceLock<Disk>,
    pub(crate) policy: std::sync::OnceLock<Arc<dyn Policy>>,
    pub(crate) meter: std::sync::OnceLock<Arc<dyn Meter>>,
}

/// Handle to the router; cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
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
                trie: SharedTrie::new(),
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

    /// Creates a mailbox for a new session; its publishers wait above `limits` (events, or
    /// events and bytes with a slow-consumer policy; see crate::flow).
    pub fn new_mailbox(&self, limits: impl Into<crate::flow::Limits>) -> Arc<Mailbox> {
        let id = SessionId(self.shared.next_session.fetch_add(1, Ordering::Relaxed));
        let mb = Mailbox::new(id, limits);
        self.shared.sessions.lock().insert(id, mb.clone());
        mb
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

    /// Accepts an event: validates it, mints its id, updates retained state, and queues it in
    /// every matching mailbox. `qos` is the publish QoS (capped per subscription).
    pub fn publish(
        &self,
        p: &mut Publisher,
        env: Envelope,
        qos: u8,
    ) -> Result<PublishReport, PublishError> {
        self.publish_shared(p, Arc::new(env), qos)
    }

    /// [`Broker::publish`] for an envelope the caller built in its shared allocation already
    /// (the hot path: the envelope is not moved again). `event` must not be shared yet.
    pub fn publish_shared(
        &self,
        p: &mut Publisher,
        mut event: Arc<Envelope>,
        qos: u8,
    ) -> Result<PublishReport, PublishError> {
        let env = &*event;
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
                return Err(PublishError::StoreFailed(meshgate_store::Failed {
                    reason: why.to_string(),
                }));
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
        // Unique still: no copy.
        let env = Arc::make_mut(&mut event);
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

    pub(crate) fn retain(&self, event: &Arc<Envelope>) -> Result<(), PublishError> {
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

#[cfg(test)]
mod tests;
