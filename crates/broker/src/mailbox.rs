//! Mailboxes: the per-session queue between the router and a connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Buf, BufMut, Bytes};
use meshgate_proto::Envelope;
use meshgate_store::Journal;
use prost::Message;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use crate::flow::{Admit, AdmitBatch, Limits, Refusal as FlowRefusal, Valve};

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
    /// What this delivery counts for against a queue's byte limit: the shared event's payload
    /// and topic plus the delivery's own bookkeeping.
    pub fn size(&self) -> u64 {
        (self.event.payload.len() + self.event.topic.len() + DELIVERY_OVERHEAD) as u64
    }

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

/// Bytes a delivery counts for beyond its payload and topic (the delivery, the envelope's other
/// fields, the queue slot).
const DELIVERY_OVERHEAD: usize = 160;

/// The queue of one session. It outlives connections: a persistent MQTT session keeps its mailbox
/// (and what queued up in it) while its client is away.
#[derive(Debug)]
pub struct Mailbox {
    id: SessionId,
    queue: Arc<Queue>,
    rx: Arc<Mutex<Receiver>>,
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

/// The deliveries of a mailbox. A plain deque under a lock rather than a channel: a batched
/// publisher queues its share of a batch with one lock and one wake-up
/// ([`Mailbox::offer_all`]), and a receiver takes many with one lock
/// ([`Receiver::try_recv_many`]), where a channel costs a permit and a wake per delivery.
#[derive(Debug)]
struct Queue {
    items: parking_lot::Mutex<VecDeque<Delivery>>,
    /// The queue's flow control: its limits, its consumer's progress (see crate::flow).
    valve: Arc<Valve>,
    /// Wakes the receiver: deliveries arrived, or the mailbox ended.
    ready: Notify,
    /// The mailbox was dropped: the receiver gets what is left, then the end.
    ended: AtomicBool,
}

/// The receiving end of a mailbox (see [`MailboxReceiver`]).
#[derive(Debug)]
pub struct Receiver {
    queue: Arc<Queue>,
    /// An empty deque swapped with the queue's when everything queued is taken, so that the
    /// queue's lock is held for a swap rather than for moving each delivery.
    spare: VecDeque<Delivery>,
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued now.
    Empty,
    /// Nothing queued, and the mailbox ended.
    Ended,
}

impl Receiver {
    /// The next delivery; `None` once the mailbox ended and everything queued was taken.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await;
        one.pop()
    }

    /// Waits for deliveries and appends up to `limit` of them to `out`; returns how many (0 only
    /// once the mailbox ended and everything queued was taken). Cancel safe.
    ///
    /// Also returns 0 when the consumer was declared slow under the disconnect policy
    /// ([`Receiver::is_cut`]): the connection should close.
    pub async fn recv_many(&mut self, out: &mut Vec<Delivery>, limit: usize) -> usize {
        loop {
            let ready = self.queue.ready.notified();
            tokio::pin!(ready);
            // Registered before looking, so a delivery queued after the look wakes it.
            ready.as_mut().enable();
            let cut = self.queue.valve.cut_signal();
            tokio::pin!(cut);
            cut.as_mut().enable();
            if self.queue.valve.is_cut() {
                return 0;
            }
            let n = self.queue.take(&mut self.spare, out, limit);
            if n > 0 || limit == 0 || self.queue.ended.load(Ordering::Acquire) {
                return n;
            }
            tokio::select! {
                _ = ready => {}
                _ = cut => {}
            }
        }
    }

    /// Whether the consumer was declared slow and is to be disconnected.
    pub fn is_cut(&self) -> bool {
        self.queue.valve.is_cut()
    }

    /// Resolves once the consumer is declared slow and is to be disconnected (at once if it
    /// is). Cancel safe.
    pub async fn cut(&self) {
        loop {
            let signal = self.queue.valve.cut_signal();
            tokio::pin!(signal);
            signal.as_mut().enable();
            if self.queue.valve.is_cut() {
                return;
            }
            signal.await;
        }
    }

    /// The next delivery, without waiting.
    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        let d = self.queue.items.lock().pop_front();
        match d {
            Some(d) => {
                self.queue.valve.took(1, d.size());
                Ok(d)
            }
            None if self.queue.ended.load(Ordering::Acquire) => Err(TryRecvError::Ended),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Moves up to `limit` queued deliveries to `out` without waiting; returns how many.
    pub fn try_recv_many(&mut self, out: &mut impl Extend<Delivery>, limit: usize) -> usize {
        self.queue.take(&mut self.spare, out, limit)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.items.lock().is_empty()
    }
}

impl Queue {
    /// Moves up to `limit` deliveries to `out`; `spare` is empty before and after.
    fn take(
        &self,
        spare: &mut VecDeque<Delivery>,
        out: &mut impl Extend<Delivery>,
        limit: usize,
    ) -> usize {
        let mut items = self.items.lock();
        let n = items.len().min(limit);
        if n == 0 {
            return 0;
        }
        let mut bytes = 0;
        if n < items.len() {
            out.extend(items.drain(..n).inspect(|d| bytes += d.size()));
            drop(items);
            self.valve.took(n, bytes);
            return n;
        }
        // All of them: swap, and move them out after the lock is released.
        std::mem::swap(&mut *items, spare);
        drop(items);
        out.extend(spare.drain(..).inspect(|d| bytes += d.size()));
        self.valve.took(n, bytes);
        if spare.capacity() > SHRINK_ABOVE {
            // A burst is over: give its memory back.
            spare.shrink_to(SHRINK_ABOVE);
        }
        n
    }
}

/// Slots an empty mailbox keeps after a burst.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Exclusive right to drain a mailbox, held by the one connection attached to the session.
pub type MailboxReceiver = OwnedMutexGuard<Receiver>;

/// Why a delivery did not enter a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// At the hard limit (twice the high watermark), or offline at the high watermark.
    Full,
    /// The consumer is declared slow: dropped under its policy.
    Slow,
    /// Session offline and the event is not queued for offline sessions.
    Offline,
}

/// A delivery entered a mailbox; `congested` when the publisher should wait for room before it
/// publishes more (see crate::flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Queued {
    pub congested: bool,
}

impl Mailbox {
    /// A mailbox whose publishers wait above `limits` (see crate::flow).
    pub fn new(id: SessionId, limits: impl Into<Limits>) -> Arc<Self> {
        let valve = Valve::new(limits.into());
        valve.set_online(false);
        let queue = Arc::new(Queue {
            items: parking_lot::Mutex::new(VecDeque::new()),
            valve,
            ready: Notify::new(),
            ended: AtomicBool::new(false),
        });
        Arc::new(Self {
            id,
            rx: Arc::new(Mutex::new(Receiver {
                queue: queue.clone(),
                spare: VecDeque::new(),
            })),
            queue,
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
        self.queue.valve.set_online(true);
        rx
    }

    /// Marks the session offline (its connection ended). Pass the receiver back by dropping it.
    pub fn detach(&self, rx: MailboxReceiver) {
        self.online.store(false, Ordering::Release);
        self.queue.valve.set_online(false);
        drop(rx);
    }

    /// The mailbox's flow control.
    pub fn valve(&self) -> &Arc<Valve> {
        &self.queue.valve
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

    /// Events dropped for this session since the mailbox was made: refused at the hard limit
    /// or for a slow consumer (what its journal keeps is not dropped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.queue.valve.dropped_slow()
    }

    /// Queues a delivery without waiting.
    pub(crate) fn offer(&self, d: Delivery) -> Result<Queued, Refused> {
        if !self.takes(&d) {
            return Err(Refused::Offline);
        }
        let mut items = self.queue.items.lock();
        let r = self.admit(&mut self.queue.valve.batch(), &d);
        if r.is_ok() {
            items.push_back(d);
        }
        drop(items);
        if r.is_ok() {
            self.queue.ready.notify_one();
        }
        r
    }

    /// [`Mailbox::offer`] for each delivery of `ds` in order, with one lock and one wake-up;
    /// calls `refused` for each one that did not enter. Whether any that entered congested the
    /// mailbox.
    pub(crate) fn offer_all(
        &self,
        ds: impl IntoIterator<Item = Delivery>,
        mut refused: impl FnMut(Delivery, Refused),
    ) -> Queued {
        let mut queued = false;
        let mut congested = false;
        let mut items = self.queue.items.lock();
        let mut batch = self.queue.valve.batch();
        for d in ds {
            if !self.takes(&d) {
                refused(d, Refused::Offline);
                continue;
            }
            match self.admit(&mut batch, &d) {
                Ok(q) => {
                    congested |= q.congested;
                    items.push_back(d);
                    queued = true;
                }
                Err(why) => refused(d, why),
            }
        }
        // Counted in before the lock is released: the receiver subtracts what it takes.
        drop(batch);
        drop(items);
        if queued {
            self.queue.ready.notify_one();
        }
        Queued { congested }
    }

    /// Counts `d` into the queue's valve, or says why not (called with the queue locked). A
    /// journaled delivery never makes its publisher wait: beyond the high watermark it stays in
    /// the journal, which the session reads back when it has room, and is not lost.
    fn admit(&self, batch: &mut AdmitBatch<'_>, d: &Delivery) -> Result<Queued, Refused> {
        if d.seq != 0 {
            let high = self.queue.valve.limits().events;
            if batch.events() >= high || !batch.force(d.size()) {
                return Err(Refused::Full);
            }
            return Ok(Queued { congested: false });
        }
        match batch.admit(d.size()) {
            Admit::Taken { congested } => Ok(Queued { congested }),
            Admit::Refused(FlowRefusal::Full) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Full)
            }
            Admit::Refused(FlowRefusal::Slow) => Err(Refused::Slow),
        }
    }

    /// Whether `d` may queue now: the session is online, or it is persistent and `d` is QoS 1
    /// or 2.
    fn takes(&self, d: &Delivery) -> bool {
        self.online.load(Ordering::Acquire)
            || (d.qos > 0 && self.persistent.load(Ordering::Acquire))
    }

    /// Queues a delivery that must not be refused for being offline or making a publisher wait
    /// (retained messages sent on subscribe, the session's own redelivery); false only at the
    /// hard limit.
    pub fn push(&self, d: Delivery) -> bool {
        let mut items = self.queue.items.lock();
        if !self.queue.valve.force(d.size()) {
            drop(items);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        items.push_back(d);
        drop(items);
        self.queue.ready.notify_one();
        true
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // The receiver (a connection still attached) takes what is left, then learns the end.
        self.queue.ended.store(true, Ordering::Release);
        self.queue.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn delivery(n: u8, qos: u8, seq: u64) -> Delivery {
        Delivery {
            event: Arc::new(Envelope {
                topic: format!("t/{n}"),
                ..Default::default()
            }),
            qos,
            retain: false,
            sub_id: None,
            seq,
        }
    }

    fn topics(ds: &[Delivery]) -> Vec<&str> {
        ds.iter().map(|d| d.event.topic.as_str()).collect()
    }

    #[tokio::test]
    async fn a_batch_queues_in_order_and_asks_its_publisher_to_wait_above_the_high_watermark() {
        let mb = Mailbox::new(SessionId(1), 3);
        let mut rx = mb.attach().await;
        let mut refused = Vec::new();
        let batch = (0..5).map(|n| delivery(n, 1, if n == 4 { 9 } else { 0 }));
        let q = mb.offer_all(batch, |d, why| refused.push((d.event.topic.clone(), why)));
        // t/3 is above the high watermark of 3: taken, and the publisher should wait. The
        // journaled t/4 stays in its journal (not dropped) rather than making anyone wait.
        assert!(q.congested);
        assert_eq!(refused, vec![("t/4".into(), Refused::Full)]);
        assert_eq!(mb.dropped(), 0);
        // Up to twice the high watermark, then refused (and counted).
        for n in 5..7 {
            assert_eq!(mb.offer(delivery(n, 0, 0)), Ok(Queued { congested: true }));
        }
        assert_eq!(mb.offer(delivery(7, 0, 0)), Err(Refused::Full));
        assert_eq!(mb.dropped(), 1);
        let mut got = Vec::new();
        assert_eq!(rx.try_recv_many(&mut got, 2), 2);
        assert_eq!(rx.try_recv_many(&mut got, 10), 4);
        assert_eq!(topics(&got), ["t/0", "t/1", "t/2", "t/3", "t/5", "t/6"]);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        assert!(mb.valve().has_room(), "room again");
        assert_eq!(mb.offer(delivery(8, 0, 0)), Ok(Queued { congested: false }));
    }

    #[tokio::test]
    async fn offline_sessions_take_only_what_they_keep() {
        let mb = Mailbox::new(SessionId(1), 10);
        assert_eq!(mb.offer(delivery(0, 1, 0)), Err(Refused::Offline));
        mb.set_persistent(true);
        assert_eq!(mb.offer(delivery(1, 0, 0)), Err(Refused::Offline), "QoS 0");
        let mut refused = Vec::new();
        mb.offer_all([delivery(2, 0, 0), delivery(3, 1, 0)], |d, why| {
            refused.push((d.event.topic.clone(), why))
        });
        assert_eq!(refused, vec![("t/2".into(), Refused::Offline)]);
        assert!(
            mb.push(delivery(4, 0, 0)),
            "a push is not refused for being offline"
        );
        let mut rx = mb.attach().await;
        let mut got = Vec::new();
        rx.try_recv_many(&mut got, 10);
        assert_eq!(topics(&got), ["t/3", "t/4"]);
    }

    // A paused clock: the sleep below ends only once every task is idle, that is once the
    // reader waits in `recv_many`.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_receiver_wakes_for_a_batch_and_learns_the_end() {
        let mb = Mailbox::new(SessionId(1), 100);
        let mut rx = mb.attach().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while rx.recv_many(&mut got, 2).await > 0 {}
            got.iter()
                .map(|d| d.event.topic.clone())
                .collect::<Vec<_>>()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "the reader waits");
        mb.offer_all((0..3).map(|n| delivery(n, 0, 0)), |_, _| panic!("refused"));
        assert!(mb.offer(delivery(3, 0, 0)).is_ok());
        // The receiver takes what is queued, then the end when the mailbox is dropped.
        drop(mb);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the receiver ends")
            .unwrap();
        assert_eq!(got, ["t/0", "t/1", "t/2", "t/3"]);
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let mb = Mailbox::new(SessionId(1), 100);
        let mut rx = mb.attach().await;
        // A recv given up before anything came takes nothing away.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), rx.recv())
                .await
                .is_err()
        );
        assert!(mb.offer(delivery(0, 0, 0)).is_ok());
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("woken")
            .expect("a delivery");
        assert_eq!(d.event.topic, "t/0");
        assert!(rx.is_empty());
    }
}
