//! MQTT sessions: what outlives a connection (subscriptions, queued and unacknowledged events).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use meshgate_broker::{Broker, Delivery, Mailbox};
use meshgate_topic::Filter;
use parking_lot::Mutex;
use tokio::sync::watch;

/// One MQTT subscription as the client wrote it, with its native filters.
#[derive(Clone, Debug)]
pub(crate) struct SubRecord {
    pub filters: Vec<Filter>,
    pub group: Option<String>,
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
}

/// A session, shared by the store and the connection attached to it.
pub(crate) struct Session {
    pub client_id: String,
    pub mailbox: Arc<Mailbox>,
    pub state: Mutex<SessionState>,
    /// Connection generation: bumped by each new connection so the previous one leaves.
    pub generation: watch::Sender<u64>,
}

impl Session {
    /// Removes all of the session's subscriptions from the router.
    pub fn unsubscribe_all(&self, broker: &Broker) {
        let subs = std::mem::take(&mut self.state.lock().subs);
        for rec in subs.values() {
            for f in &rec.filters {
                broker.unsubscribe(self.mailbox.id(), f, rec.group.as_deref());
            }
        }
    }
}

/// All sessions of the node, by client id.
#[derive(Default)]
pub(crate) struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl SessionStore {
    /// Opens the session for a connecting client. With `clean`, any previous session is ended
    /// and a new one made. Returns the session, whether an old one was resumed, and the
    /// connection generation the caller now owns.
    pub fn open(
        &self,
        broker: &Broker,
        client_id: &str,
        clean: bool,
        queue_capacity: usize,
    ) -> (Arc<Session>, bool, u64) {
        let mut map = self.sessions.lock();
        if let Some(s) = map.get(client_id).cloned() {
            // Tell the connection attached now, if any, to leave.
            let generation = s.generation.send_modify_return(|g| {
                *g += 1;
                *g
            });
            if !clean {
                return (s, true, generation);
            }
            map.remove(client_id);
            s.unsubscribe_all(broker);
            broker.end_session(s.mailbox.id());
        }
        let s = Arc::new(Session {
            client_id: client_id.to_string(),
            mailbox: broker.new_mailbox(queue_capacity),
            state: Mutex::new(SessionState::default()),
            generation: watch::Sender::new(1),
        });
        map.insert(client_id.to_string(), s.clone());
        (s, false, 1)
    }

    /// Ends the session if no connection took it over since `generation`.
    pub fn end_if_current(&self, broker: &Broker, session: &Arc<Session>, generation: u64) {
        let mut map = self.sessions.lock();
        if *session.generation.borrow() != generation {
            return;
        }
        if map
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.client_id);
        }
        drop(map);
        session.unsubscribe_all(broker);
        broker.end_session(session.mailbox.id());
    }

    /// Number of sessions, connected or not.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
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
