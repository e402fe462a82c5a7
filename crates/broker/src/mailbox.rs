//! Mailboxes: the per-session queue between the router and a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Buf, BufMut, Bytes};
use meshgate_proto::Envelope;
use meshgate_store::Journal;
use prost::Message;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};

/// Identifies a session (an MQTT session, an SSE stream) inside one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// One event on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event, shared by every subscriber it goes to.
    pub event: Arc<Envelope>,
    /// QoS granted for this delivery: min(published, subscribed).
    pub qos: u8,
    /// Retain flag as the subscriber must see it.
    pub retain: bool,
    /// MQTT 5 subscription identifier of the matching subscription.
    pub sub_id: Option<u32>,
    /// Sequence number in the session's journal (a persistent session's QoS 1 delivery, stored
    /// before the publisher is acknowledged); 0 = held in memory only.
    pub seq: u64,
}

impl Delivery {
    /// The journal record of a delivery: `[qos u8][retain u8][sub_id u32 LE, 0 = none]` and the
    /// envelope's protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.event.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the journal record of [`Delivery::encode`] to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // No reserve: a reused buffer has room, and prost sizes the message once more anyway.
        out.put_u8(self.qos);
        out.put_u8(u8::from(self.retain));
        out.put_u32_le(self.sub_id.unwrap_or(0));
        // Encoding into a Vec cannot fail for lack of room.
        let _ = self.event.encode(out);
    }

    /// Reads back what [`Delivery::encode`] wrote, with the record's sequence number.
    pub fn decode(seq: u64, record: &[u8]) -> Option<Self> {
        if record.len() < 6 {
            return None;
        }
        let mut b = record;
        let qos = b.get_u8();
        let retain = b.get_u8() != 0;
        let sub_id = b.get_u32_le();
        let event = Envelope::decode(Bytes::copy_from_slice(b)).ok()?;
        Some(Self {
            event: Arc::new(event),
            qos,
            retain,
            sub_id: (sub_id != 0).then_some(sub_id),
            seq,
        })
    }
}

/// The queue of one session. It outlives connections: a persistent MQTT session keeps its mailbox
/// (and what queued up in it) while its client is away.
#[derive(Debug)]
pub struct Mailbox {
    id: SessionId,
    tx: mpsc::Sender<Delivery>,
    rx: Arc<Mutex<mpsc::Receiver<Delivery>>>,
    online: AtomicBool,
    /// Persistent sessions queue QoS 1 events while offline; others drop everything then.
    persistent: AtomicBool,
    dropped: AtomicU64,
    /// Where a persistent session's QoS 1 deliveries are stored first.
    journal: std::sync::OnceLock<Journal>,
    /// The app id the session's client authenticated as: what it may read is decided for it.
    /// Set once; a client of another app gets a new session.
    app: std::sync::OnceLock<Arc<str>>,
}

/// Exclusive right to drain a mailbox, held by the one connection attached to the session.
pub type MailboxReceiver = OwnedMutexGuard<mpsc::Receiver<Delivery>>;

/// Why a delivery did not enter a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Queue at capacity: a slow consumer.
    Full,
    /// Session offline and the event is not queued for offline sessions.
    Offline,
    /// Session ended.
    Closed,
}

impl Mailbox {
    /// A mailbox holding at most `capacity` undelivered events.
    pub fn new(id: SessionId, capacity: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Arc::new(Self {
            id,
            tx,
            rx: Arc::new(Mutex::new(rx)),
            online: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            journal: std::sync::OnceLock::new(),
            app: std::sync::OnceLock::new(),
        })
    }

    /// The session this mailbox belongs to.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Waits until no other connection drains this mailbox, then takes the right to.
    pub async fn attach(&self) -> MailboxReceiver {
        let rx = self.rx.clone().lock_owned().await;
        self.online.store(true, Ordering::Release);
        rx
    }

    /// Marks the session offline (its connection ended). Pass the receiver back by dropping it.
    pub fn detach(&self, rx: MailboxReceiver) {
        self.online.store(false, Ordering::Release);
        drop(rx);
    }

    /// Sets the app id of the session (once; later calls are ignored).
    pub fn set_app(&self, app: Option<Arc<str>>) {
        if let Some(app) = app {
            let _ = self.app.set(app);
        }
    }

    /// The app id of the session, if its client authenticated as one.
    pub fn app(&self) -> Option<&str> {
        self.app.get().map(|a| &**a)
    }

    /// Whether a connection currently drains this mailbox.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Sets whether QoS 1 events queue up while the session is offline.
    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Release);
    }

    /// Stores this session's QoS 1 deliveries in `journal` from now on (set once).
    pub fn set_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// The session's journal, if it has one.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.get()
    }

    /// Events refused because the queue was full, since the mailbox was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues a delivery without waiting.
    pub(crate) fn offer(&self, d: Delivery) -> Result<(), Refused> {
        if !self.online.load(Ordering::Acquire)
            && (d.qos == 0 || !self.persistent.load(Ordering::Acquire))
        {
            return Err(Refused::Offline);
        }
        let journaled = d.seq != 0;
        match self.tx.try_send(d) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A journaled delivery is not lost: the session reads it back from its journal.
                if !journaled {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(Refused::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }

    /// Queues a delivery that must not be refused for being offline (retained messages sent on
    /// subscribe, the session's own redelivery).
    pub fn push(&self, d: Delivery) -> bool {
        match self.tx.try_send(d) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}
