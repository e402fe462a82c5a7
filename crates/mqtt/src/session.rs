//! MQTT sessions: what outlives a connection (subscriptions, queued and unacknowledged events).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use meshgate_broker::flow::Limits;
use meshgate_broker::{Broker, Delivery, Mailbox, SubOptions};
use meshgate_topic::{Filter, parse_mqtt_filter};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::persist::{Loaded, Persist};

/// One MQTT subscription as the client wrote it, with its native filters.
#[derive(Clone, Debug)]
pub(crate) struct SubRecord {
    pub filters: Vec<Filter>,
    pub group: Option<String>,
    pub opts: SubOptions,
}

/// Session state guarded by the session's lock.
#[derive(Default)]
pub(crate) struct SessionState {
    /// By the filter text the client sent.
    pub subs: HashMap<String, SubRecord>,
    /// QoS 1 deliveries sent but not acknowledged when the last connection ended, with their
    /// packet ids: resent with DUP on reconnect.
    pub unacked: VecDeque<(u16, Delivery)>,
    /// Deliveries taken from the mailbox but not yet sent.
    pub unsent: VecDeque<Delivery>,
    /// Seconds the session survives its connection; `u32::MAX` = forever.
    pub expiry_secs: u32,
    /// Unix seconds when the last connection ended; `None` while one is attached.
    pub disconnected_at: Option<u64>,
    /// Next journal sequence number to take into memory: every journaled delivery below it is
    /// in `unacked` or `unsent`, or was acknowledged.
    pub disk_next: u64,
}

/// A session, shared by the store and the connection attached to it.
pub(crate) struct Session {
    pub client_id: String,
    pub mailbox: Arc<Mailbox>,
    pub state: Mutex<SessionState>,
    /// Connection generation: bumped by each new connection so the previous one leaves.
    pub generation: watch::Sender<u64>,
    /// Set (under the store's lock) when the session has ended: its files are not written again.
    pub ended: AtomicBool,
}

impl Session {
    fn new(client_id: &str, mailbox: Arc<Mailbox>, state: SessionState) -> Arc<Self> {
        Arc::new(Self {
            client_id: client_id.to_string(),
            mailbox,
            state: Mutex::new(state),
            generation: watch::Sender::new(1),
            ended: AtomicBool::new(false),
        })
    }

    /// Removes all of the session's subscriptions from the router.
    pub fn unsubscribe_all(&self, broker: &Broker) {
        let subs = std::mem::take(&mut self.state.lock().subs);
        for rec in subs.values() {
            for f in &rec.filters {
                broker.unsubscribe(self.mailbox.id(), f, rec.group.as_deref());
            }
        }
    }

    /// Whether the session is stored on disk.
    pub fn stored(&self) -> bool {
        self.mailbox.journal().is_some()
    }
}

/// What [`SessionStore::open`] gives a connecting client.
pub(crate) struct Opened {
    pub session: Arc<Session>,
    /// An old session was resumed.
    pub present: bool,
    /// The connection generation the caller now owns.
    pub generation: u64,
    /// Resolves once the session's files are written (stored sessions only).
    pub stored: Option<oneshot::Receiver<()>>,
}

/// All sessions of the node, by client id.
#[derive(Default)]
pub(crate) struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    persist: OnceLock<Arc<Persist>>,
}

impl SessionStore {
    /// Stores sessions with an expiry on disk from now on.
    pub fn set_persist(&self, p: Persist) {
        let _ = self.persist.set(Arc::new(p));
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.get()
    }

    /// Opens the session for a connecting client. With `clean`, any previous session is ended
    /// and a new one made. `expiry` is the session expiry the connection asked for (capped).
    pub fn open(
        &self,
        broker: &Broker,
        client_id: &str,
        clean: bool,
        limits: Limits,
        expiry: u32,
        app: Option<&Arc<str>>,
    ) -> Opened {
        let persist = self.persist.get();
        let mut map = self.sessions.lock();
        if let Some(s) = map.get(client_id).cloned() {
            // A session belongs to the app its client authenticated as: a client of another
            // app never resumes it (nor reads what queued up in it).
            let clean = clean || s.mailbox.app() != app.map(|a| &**a);
            // Tell the connection attached now, if any, to leave. Bumped under the state lock so
            // that the leaving connection sees either the old generation or the new state.
            let generation = {
                let mut st = s.state.lock();
                let g = s.generation.send_modify_return(|g| {
                    *g += 1;
                    *g
                });
                if !clean {
                    st.expiry_secs = expiry;
                    st.disconnected_at = None;
                }
                g
            };
            if !clean {
                let stored = persist.and_then(|p| {
                    if s.stored() {
                        Some(p.save(&s))
                    } else if expiry > 0 {
                        Some(p.create(&s))
                    } else {
                        None
                    }
                });
                return Opened {
                    session: s,
                    present: true,
                    generation,
                    stored,
                };
            }
            map.remove(client_id);
            s.unsubscribe_all(broker);
            self.ended(&s);
            broker.end_session(s.mailbox.id());
        }
        let mailbox = broker.new_mailbox(limits);
        mailbox.set_app(app.cloned());
        let s = Session::new(
            client_id,
            mailbox,
            SessionState {
                expiry_secs: expiry,
                ..Default::default()
            },
        );
        map.insert(client_id.to_string(), s.clone());
        let stored = persist.filter(|_| expiry > 0).map(|p| p.create(&s));
        Opened {
            session: s,
            present: false,
            generation: 1,
            stored,
        }
    }

    /// Marks a session removed from the map as ended and deletes its files. Under the map lock,
    /// so that the deletion is ordered before the creation of a new session with the same id.
    fn ended(&self, s: &Arc<Session>) {
        s.ended.store(true, Ordering::Release);
        if let Some(p) = self.persist.get() {
            p.remove(s);
        }
    }

    /// Ends the session if no connection took it over since `generation`.
    pub fn end_if_current(&self, broker: &Broker, session: &Arc<Session>, generation: u64) {
        let mut map = self.sessions.lock();
        if *session.generation.borrow() != generation {
            return;
        }
        let mine = map
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session));
        if mine {
            map.remove(&session.client_id);
        }
        // Out of the router first, so that nothing enters the journal about to be deleted.
        session.unsubscribe_all(broker);
        if mine {
            self.ended(session);
        }
        drop(map);
        broker.end_session(session.mailbox.id());
    }

    /// Recreates a session read back from disk, offline: its mailbox gets its journal, then its
    /// subscriptions enter the router. Returns `None` if the client id is taken already.
    pub fn restore(&self, broker: &Broker, limits: Limits, loaded: Loaded) -> Option<Arc<Session>> {
        let Loaded {
            meta,
            journal,
            disconnected_at,
        } = loaded;
        let mut map = self.sessions.lock();
        if map.contains_key(&meta.client_id) {
            warn!(client = %meta.client_id, "session exists already; not restored");
            return None;
        }
        let mailbox = broker.new_mailbox(limits);
        mailbox.set_app(meta.app_id.as_deref().map(Arc::from));
        mailbox.set_persistent(true);
        let disk_next = journal.bounds().0;
        mailbox.set_journal(journal);
        let mut subs = HashMap::new();
        for sub in &meta.subscriptions {
            match parse_mqtt_filter(&sub.filter) {
                Ok(p) => {
                    let rec = SubRecord {
                        filters: p.filters,
                        group: p.group,
                        opts: SubOptions {
                            qos: sub.qos.min(1),
                            no_local: sub.no_local,
                            retain_as_published: sub.retain_as_published,
                            sub_id: sub.sub_id,
                        },
                    };
                    subs.insert(sub.filter.clone(), rec);
                }
                Err(e) => {
                    warn!(client = %meta.client_id, filter = %sub.filter, error = %e, "stored subscription not restored");
                }
            }
        }
        for rec in subs.values() {
            for f in &rec.filters {
                broker.subscribe(&mailbox, f, rec.group.as_deref(), rec.opts);
            }
        }
        let s = Session::new(
            &meta.client_id,
            mailbox,
            SessionState {
                subs,
                expiry_secs: meta.expiry_secs,
                disconnected_at: Some(disconnected_at),
                disk_next,
                ..Default::default()
            },
        );
        map.insert(meta.client_id.clone(), s.clone());
        Some(s)
    }

    /// Number of sessions, connected or not.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// What waits in the journals of stored sessions: (client id, online, events, bytes, age
    /// of the oldest in ms), largest backlog first.
    pub fn backlog(&self) -> Vec<(String, bool, u64, u64, Option<u64>)> {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        let now = meshgate_broker::now_ms();
        let mut out: Vec<_> = sessions
            .iter()
            .filter_map(|s| {
                let j = s.mailbox.journal()?;
                let (first, next) = j.bounds();
                let oldest = j
                    .read_from(first, 1)
                    .ok()
                    .and_then(|r| r.into_iter().next())
                    .and_then(|(seq, rec)| Delivery::decode(seq, &rec))
                    .map(|d| now.saturating_sub(d.event.timestamp_ms));
                Some((
                    s.client_id.clone(),
                    s.mailbox.is_online(),
                    next - first,
                    j.used_bytes(),
                    oldest,
                ))
            })
            .collect();
        out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// `watch::Sender::send_modify` returning a value.
trait SendModifyReturn {
    fn send_modify_return(&self, f: impl FnOnce(&mut u64) -> u64) -> u64;
}

impl SendModifyReturn for watch::Sender<u64> {
    fn send_modify_return(&self, f: impl FnOnce(&mut u64) -> u64) -> u64 {
        let mut out = 0;
        self.send_modify(|g| out = f(g));
        out
    }
}
