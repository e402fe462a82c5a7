//! Flow control: every queue an event enters (a session's mailbox, a mesh link's queue) has a
//! [`Valve`] that tells whoever fills it to slow down, instead of dropping what a consumer that
//! is merely slower than its publishers for a moment could still take.
//!
//! - Above its high watermark (events or bytes) a queue is *congested*: the publisher that put
//!   an event in it notes the valve in its [`Congestion`] and, once its read batch is handled,
//!   waits ([`Congestion::wait`]) until the queue is back at its low watermark (half the high
//!   one) before it reads more. An MQTT or WebSocket connection stops reading its socket, a
//!   mesh link stops reading its stream (so QUIC's flow control slows the sending node), a
//!   bridge source stops consuming; TCP and QUIC push back on their senders in turn.
//! - A publisher waits for a queue only while its consumer makes progress. A consumer that takes
//!   nothing for the stall time is declared *slow* and its policy applies ([`SlowPolicy`]):
//!   new events for it are dropped (counted) while its queue is above the low watermark, or it
//!   is disconnected. Nobody waits for it any more; it recovers once it drained to the low
//!   watermark.
//! - An offline consumer is never waited for (a persistent session's queue fills while its
//!   client is away; what does not fit is dropped, or kept in its journal).
//! - Above twice the high watermark a queue refuses new events whatever happens (counted): the
//!   memory bound, reached only by many publishers at once.
//!
//! The decisions are in [`Valve::admit`] and [`Congestion::check`]; the waiting itself is a thin
//! async loop around them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What a queue does once its consumer is declared slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowPolicy {
    /// New events for it are dropped (and counted) until it drained to its low watermark.
    #[default]
    Drop,
    /// It is disconnected (an MQTT 5 client learns why); its session keeps what it kept.
    Disconnect,
}

impl SlowPolicy {
    /// The name in configuration files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SlowPolicy::Drop => "drop",
            SlowPolicy::Disconnect => "disconnect",
        }
    }
}

/// The limits of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Events queued above which publishers wait.
    pub events: usize,
    /// Bytes queued above which publishers wait.
    pub bytes: u64,
    /// What happens to a consumer that stops taking.
    pub slow: SlowPolicy,
}

impl Limits {
    /// Limits of `events` and `bytes` with the drop policy.
    pub fn new(events: usize, bytes: u64) -> Self {
        Self {
            events: events.max(1),
            bytes: bytes.max(1),
            slow: SlowPolicy::Drop,
        }
    }
}

/// A limit of `events` alone (tests, queues sized by count).
impl From<usize> for Limits {
    fn from(events: usize) -> Self {
        Limits::new(events, u64::MAX / 4)
    }
}

/// Why a queue refused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// At twice the high watermark (or the consumer is offline and the queue is at its high
    /// watermark): counted as `queue_full`.
    Full,
    /// The consumer is slow (or being disconnected as slow): counted as `slow_consumer`.
    Slow,
}

/// What [`Valve::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Taken; `congested` when the queue is now above its high watermark and its consumer is
    /// online and not slow: the publisher should wait before it publishes more.
    Taken {
        /// See above.
        congested: bool,
    },
    /// Refused.
    Refused(Refusal),
}

/// The flow state of one queue. Shared by the queue (which admits and takes), the publishers
/// waiting on it, and the consumer's connection (which learns when it is to be cut).
#[derive(Debug)]
pub struct Valve {
    limits: Limits,
    events: AtomicUsize,
    bytes: AtomicU64,
    /// Events taken by the consumer so far: its progress.
    taken: AtomicU64,
    online: AtomicBool,
    slow: AtomicBool,
    /// The consumer is to be disconnected (policy `Disconnect`).
    cut: AtomicBool,
    /// Publishers waiting for room; the consumer notifies only when there are some.
    waiting: AtomicUsize,
    room: Notify,
    /// Wakes the consumer when it is cut.
    cut_signal: Notify,
    /// Events refused because the consumer was slow.
    dropped_slow: AtomicU64,
    /// Times the consumer was declared slow.
    declared_slow: AtomicU64,
}

impl Valve {
    /// A valve with `limits`, for a consumer that is online.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            events: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            online: AtomicBool::new(true),
            slow: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            cut_signal: Notify::new(),
            dropped_slow: AtomicU64::new(0),
            declared_slow: AtomicU64::new(0),
        })
    }

    /// The queue's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decides on one event of `bytes` about to enter the queue and counts it in when taken.
    /// Callers that hold the queue's lock call this under it, so the counts match the queue.
    pub fn admit(&self, bytes: u64) -> Admit {
        let mut b = self.batch();
        b.admit(bytes)
    }

    /// Decides on many events in a row with one read of the shared counts and one update
    /// (when the batch is dropped): a publisher queueing its share of a read batch touches the
    /// lines the consumer also writes once, not per event.
    pub fn batch(&self) -> AdmitBatch<'_> {
        AdmitBatch {
            valve: self,
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            added_events: 0,
            added_bytes: 0,
            slow: self.slow.load(Ordering::Relaxed) || self.cut.load(Ordering::Relaxed),
            waitable: self.online.load(Ordering::Relaxed) && !self.slow.load(Ordering::Relaxed),
            dropped_slow: 0,
        }
    }

    /// Counts in an event that may not be refused (a session's own redelivery); false if the
    /// queue is at its hard limit.
    pub fn force(&self, bytes: u64) -> bool {
        if self.events.load(Ordering::Relaxed) >= 2 * self.limits.events {
            return false;
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// The consumer took `events` events of `bytes` bytes: progress. Wakes waiting publishers,
    /// and ends the slow state once the queue drained to its low watermark.
    pub fn took(&self, events: usize, bytes: u64) {
        if events == 0 {
            return;
        }
        self.events.fetch_sub(events, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.taken.fetch_add(events as u64, Ordering::Release);
        if self.slow.load(Ordering::Relaxed) && self.at_low() {
            self.slow.store(false, Ordering::Relaxed);
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Whether the queue is at or below its low watermark (half the high one).
    fn at_low(&self) -> bool {
        self.events.load(Ordering::Relaxed) <= self.limits.events / 2
            && self.bytes.load(Ordering::Relaxed) <= self.limits.bytes / 2
    }

    /// Whether a publisher need not wait for this queue (any more): it has room again, or its
    /// consumer is offline, slow or cut.
    pub fn has_room(&self) -> bool {
        self.at_low()
            || !self.online.load(Ordering::Relaxed)
            || self.slow.load(Ordering::Relaxed)
            || self.cut.load(Ordering::Relaxed)
    }

    /// The consumer's progress (events taken so far).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Events queued now.
    pub fn events(&self) -> usize {
        self.events.load(Ordering::Relaxed)
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Marks the consumer online (a connection attached) or offline. Attaching clears the slow
    /// and cut states of an earlier connection.
    pub fn set_online(&self, online: bool) {
        if online {
            self.slow.store(false, Ordering::Relaxed);
            self.cut.store(false, Ordering::Relaxed);
        }
        self.online.store(online, Ordering::Relaxed);
        if !online && self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Whether the consumer is declared slow now.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Whether the consumer is to be disconnected as slow.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// Notified when the consumer is cut; enable it, then check [`Valve::is_cut`], then await.
    pub fn cut_signal(&self) -> tokio::sync::futures::Notified<'_> {
        self.cut_signal.notified()
    }

    /// Declares the consumer slow (it took nothing for the stall time while a publisher waited)
    /// and applies the policy; true if this call made it slow (count it once).
    pub fn declare_slow(&self) -> bool {
        if self.slow.swap(true, Ordering::Relaxed) {
            return false;
        }
        if self.limits.slow == SlowPolicy::Disconnect {
            self.cut.store(true, Ordering::Relaxed);
            self.cut_signal.notify_waiters();
        }
        self.declared_slow.fetch_add(1, Ordering::Relaxed);
        self.room.notify_waiters();
        true
    }

    /// Events refused because the consumer was slow, so far.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(Ordering::Relaxed)
    }

    /// Times the consumer was declared slow, so far.
    pub fn times_slow(&self) -> u64 {
        self.declared_slow.load(Ordering::Relaxed)
    }
}

/// Admissions to one valve counted locally, applied when dropped (see [`Valve::batch`]).
#[derive(Debug)]
pub struct AdmitBatch<'a> {
    valve: &'a Valve,
    events: usize,
    bytes: u64,
    added_events: usize,
    added_bytes: u64,
    slow: bool,
    waitable: bool,
    dropped_slow: u64,
}

impl AdmitBatch<'_> {
    /// [`Valve::admit`] for the next event of the batch.
    pub fn admit(&mut self, bytes: u64) -> Admit {
        let limits = &self.valve.limits;
        let over_high = self.events >= limits.events || self.bytes >= limits.bytes;
        if self.valve.cut.load(Ordering::Relaxed) || (over_high && self.slow) {
            self.dropped_slow += 1;
            return Admit::Refused(Refusal::Slow);
        }
        let over_hard = self.events >= 2 * limits.events || self.bytes >= 2 * limits.bytes;
        if over_hard || (over_high && !self.waitable) {
            return Admit::Refused(Refusal::Full);
        }
        self.events += 1;
        self.bytes += bytes;
        self.added_events += 1;
        self.added_bytes += bytes;
        Admit::Taken {
            congested: self.waitable && (self.events > limits.events || self.bytes > limits.bytes),
        }
    }

    /// [`Valve::force`] for the next event of the batch.
    pub fn force(&mut self, bytes: u64) -> bool {
        if self.events >= 2 * self.valve.limits.events {
            return false;
        }
        self.events += 1;
        self.bytes += bytes;
        self.added_events += 1;
        self.added_bytes += bytes;
        true
    }

    /// Events queued now, this batch's included.
    pub fn events(&self) -> usize {
        self.events
    }
}

impl Drop for AdmitBatch<'_> {
    fn drop(&mut self) {
        let v = self.valve;
        if self.added_events > 0 {
            v.events.fetch_add(self.added_events, Ordering::Relaxed);
            v.bytes.fetch_add(self.added_bytes, Ordering::Relaxed);
        }
        if self.dropped_slow > 0 {
            v.dropped_slow
                .fetch_add(self.dropped_slow, Ordering::Relaxed);
        }
    }
}

/// A valve a publisher waits on, with the consumer progress it last saw.
#[derive(Debug)]
struct Waiting {
    valve: Arc<Valve>,
    /// The consumer's progress when last looked at...
    taken: u64,
    /// ...and since when it has not changed.
    since: Instant,
}

/// The congested queues one publisher filled, and how long it waited for them.
#[derive(Debug, Default)]
pub struct Congestion {
    waiting: Vec<Waiting>,
    /// Waits that ended, and their total time.
    pub stalls: u64,
    /// See `stalls`.
    pub stalled: Duration,
    /// Consumers this publisher declared slow.
    pub slow: u64,
    /// When the current wait started.
    started: Option<Instant>,
}

/// What [`Congestion::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Every queue has room (or a consumer that will not be waited for).
    Clear,
    /// Wait for the first queue still congested to be notified, at most until the deadline
    /// (when a consumer may have to be declared slow).
    Wait(Instant),
}

impl Congestion {
    /// Notes that an event entered a congested queue.
    pub fn note(&mut self, valve: &Arc<Valve>) {
        if self.waiting.iter().any(|w| Arc::ptr_eq(&w.valve, valve)) {
            return;
        }
        self.waiting.push(Waiting {
            taken: valve.taken(),
            valve: valve.clone(),
            since: Instant::now(),
        });
    }

    /// Whether the publisher filled a congested queue and should wait before it goes on.
    pub fn is_congested(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The decision step: drops the queues that have room again, restarts the stall clock of
    /// those whose consumer progressed, declares slow those whose consumer took nothing for
    /// `stall`, and says what to wait for next.
    pub fn check(&mut self, now: Instant, stall: Duration) -> Next {
        let mut slow = 0;
        self.waiting.retain_mut(|w| {
            if w.valve.has_room() {
                return false;
            }
            let taken = w.valve.taken();
            if taken != w.taken {
                w.taken = taken;
                w.since = now;
                return true;
            }
            if now.duration_since(w.since) >= stall {
                if w.valve.declare_slow() {
                    slow += 1;
                }
                return false;
            }
            true
        });
        self.slow += slow;
        match self.waiting.iter().map(|w| w.since + stall).min() {
            None => Next::Clear,
            Some(deadline) => Next::Wait(deadline),
        }
    }

    /// Waits until every congested queue has room again or its consumer is declared slow (see
    /// the module's notes). Cancel safe: a wait given up and started again goes on where it
    /// was, stall clocks included.
    pub async fn wait(&mut self, stall: Duration) {
        if self.waiting.is_empty() {
            return;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        loop {
            let deadline = match self.check(Instant::now(), stall) {
                Next::Clear => break,
                Next::Wait(deadline) => deadline,
            };
            let (valve, seen) = (self.waiting[0].valve.clone(), self.waiting[0].taken);
            let _guard = WaitGuard::new(&valve);
            let notified = valve.room.notified();
            tokio::pin!(notified);
            // Registered before looking again, so that room made meanwhile is not missed.
            notified.as_mut().enable();
            if valve.has_room() || valve.taken() != seen {
                continue;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        self.started = None;
        self.stalls += 1;
        self.stalled += started.elapsed();
    }

    /// Forgets every queue (the publisher goes away).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.started = None;
    }
}

/// Counts a publisher waiting on a valve for as long as it lives.
struct WaitGuard<'a>(&'a Valve);

impl<'a> WaitGuard<'a> {
    fn new(v: &'a Valve) -> Self {
        v.waiting.fetch_add(1, Ordering::AcqRel);
        Self(v)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    const STALL: Duration = Duration::from_millis(100);

    fn valve(events: usize) -> Arc<Valve> {
        Valve::new(Limits::new(events, u64::MAX / 4))
    }

    #[test]
    fn admit_congests_above_high_refuses_above_twice_and_when_slow() {
        let v = valve(4);
        for _ in 0..4 {
            assert_eq!(v.admit(10), Admit::Taken { congested: false });
        }
        // Above the high watermark: taken, but the publisher should wait.
        for _ in 0..4 {
            assert_eq!(v.admit(10), Admit::Taken { congested: true });
        }
        assert_eq!(v.admit(10), Admit::Refused(Refusal::Full), "the hard limit");
        v.declare_slow();
        assert_eq!(v.admit(10), Admit::Refused(Refusal::Slow));
        assert_eq!(v.dropped_slow(), 1);
        // Drained to the low watermark: no longer slow, takes again.
        v.took(6, 60);
        assert!(!v.is_slow() && v.has_room());
        assert_eq!(v.admit(10), Admit::Taken { congested: false });
    }

    #[test]
    fn bytes_count_like_events() {
        let v = Valve::new(Limits::new(1000, 100));
        assert_eq!(v.admit(60), Admit::Taken { congested: false });
        assert_eq!(v.admit(60), Admit::Taken { congested: true });
        assert!(!v.has_room());
        v.took(1, 60);
        assert!(!v.has_room(), "60 bytes are above the low watermark of 50");
        v.took(1, 60);
        assert!(v.has_room());
    }

    #[test]
    fn an_offline_consumer_is_never_waited_for() {
        let v = valve(2);
        v.set_online(false);
        assert_eq!(v.admit(1), Admit::Taken { congested: false });
        assert_eq!(v.admit(1), Admit::Taken { congested: false });
        assert_eq!(v.admit(1), Admit::Refused(Refusal::Full));
        assert!(v.has_room());
    }

    #[test]
    fn disconnect_policy_cuts_the_consumer_and_attach_clears_it() {
        let v = Valve::new(Limits {
            slow: SlowPolicy::Disconnect,
            ..Limits::new(2, u64::MAX / 4)
        });
        v.admit(1);
        v.admit(1);
        v.admit(1);
        assert!(v.declare_slow());
        assert!(!v.declare_slow(), "counted once");
        assert!(v.is_cut());
        assert_eq!(v.admit(1), Admit::Refused(Refusal::Slow));
        v.set_online(true);
        assert!(!v.is_cut() && !v.is_slow());
    }

    #[tokio::test(start_paused = true)]
    async fn check_waits_while_the_consumer_progresses_and_cuts_it_when_it_stops() {
        let v = valve(10);
        for _ in 0..15 {
            v.admit(1);
        }
        let mut c = Congestion::default();
        c.note(&v);
        let t0 = Instant::now();
        assert_eq!(c.check(t0, STALL), Next::Wait(t0 + STALL));
        // Progress within the stall time restarts the clock.
        v.took(1, 1);
        let t1 = t0 + STALL / 2;
        assert_eq!(c.check(t1, STALL), Next::Wait(t1 + STALL));
        // Nothing taken for the stall time: slow, and no longer waited for.
        assert_eq!(c.check(t1 + STALL, STALL), Next::Clear);
        assert!(v.is_slow());
        assert_eq!(c.slow, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ends_when_the_consumer_drains_to_the_low_watermark() {
        let v = valve(10);
        for _ in 0..12 {
            v.admit(1);
        }
        let mut c = Congestion::default();
        c.note(&v);
        let consumer = {
            let v = v.clone();
            tokio::spawn(async move {
                for _ in 0..7 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    v.took(1, 1);
                }
            })
        };
        let t = Instant::now();
        c.wait(STALL).await;
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(210),
            "7 takes, 30 ms apart"
        );
        assert!(!v.is_slow(), "it progressed all along");
        assert_eq!((c.stalls, c.stalled), (1, Duration::from_millis(210)));
        consumer.await.unwrap();
    }

    /// A seeded simulation: consumers take at random paces with random pauses, some stop for
    /// good; publishers fill them and wait. A consumer is declared slow only after a pause of at
    /// least the stall time, and every wait ends.
    #[tokio::test(start_paused = true)]
    async fn random_consumers_are_cut_only_after_a_real_stall() {
        let seed: u64 = std::env::var("FLOW_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        for round in 0..20u64 {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(round));
            let valves: Vec<Arc<Valve>> = (0..4).map(|_| valve(rng.random_range(2..50))).collect();
            // Each consumer: steps of (pause ms, events taken); the longest pause is recorded.
            let mut longest = Vec::new();
            let mut consumers = Vec::new();
            for v in &valves {
                let steps: Vec<(u64, usize)> = (0..rng.random_range(5..40))
                    .map(|_| {
                        let pause = if rng.random_bool(0.1) {
                            rng.random_range(100..300)
                        } else {
                            rng.random_range(1..60)
                        };
                        (pause, rng.random_range(1..8))
                    })
                    .collect();
                longest.push(steps.iter().map(|s| s.0).max().unwrap_or(0));
                let v = v.clone();
                // Round and round until the publishers are done: a consumer that stops for good
                // is not what this checks.
                consumers.push(tokio::spawn(async move {
                    for (pause, n) in steps.iter().cycle() {
                        tokio::time::sleep(Duration::from_millis(*pause)).await;
                        let n = (*n).min(v.events());
                        v.took(n, n as u64);
                    }
                }));
            }
            let mut c = Congestion::default();
            for _ in 0..200 {
                for v in &valves {
                    if let Admit::Taken { congested: true } = v.admit(1) {
                        c.note(v);
                    }
                }
                if c.is_congested() {
                    tokio::time::timeout(Duration::from_secs(60), c.wait(STALL))
                        .await
                        .expect("every wait ends");
                }
            }
            for (v, longest) in valves.iter().zip(&longest) {
                if v.times_slow() > 0 {
                    assert!(
                        *longest >= STALL.as_millis() as u64,
                        "seed {seed} round {round}: cut without a stall"
                    );
                }
            }
            for h in consumers {
                h.abort();
            }
        }
    }
}
