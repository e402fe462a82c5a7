//! A sink: a subscription whose events are written to a broker (Kafka topic, AMQP exchange).
//!
//! The sink is a persistent session of the router with a journal on the node's store: every
//! guaranteed event for it is stored before its publisher (or the mesh link it came over) is
//! acknowledged, and released from the journal only after the broker acknowledged the write.
//! While the broker is away the journal fills (within the store's quota) and nothing is lost,
//! across node restarts too. Events are written in the order they were routed, in batches.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshgate_broker::{Broker, Delivery, JournalCursor, MailboxReceiver, SubOptions};
use meshgate_proto::Envelope;
use meshgate_store::Journal;
use meshgate_topic::Filter;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use crate::backoff::Backoff;
use crate::error::SinkError;
use crate::origin;
use crate::status::BridgeStatus;

/// Least time between two releases of the journal.
const RELEASE_EVERY: Duration = Duration::from_millis(100);

/// What a sink reads.
pub struct SinkSpec {
    /// The sink's protocol ("kafka", "amqp"): events that came from `member` of it are not
    /// written back.
    pub protocol: &'static str,
    /// The cluster or broker written to.
    pub member: String,
    /// The mesh subscription.
    pub filter: Filter,
    /// Most events per write.
    pub batch: usize,
    /// Events held in memory; the journal holds the rest.
    pub mailbox: usize,
    /// Where the sink's events wait for the broker (none: memory only, dropped when full).
    pub journal: Option<Journal>,
    /// The app id the sink reads as (a governed node delivers it only what that app may read).
    pub app_id: String,
}

/// A broker a sink writes to, in two steps so that several batches are in flight at once
/// (the broker's round trip is not paid per batch).
pub trait SinkTarget: Send {
    /// What [`SinkTarget::wait`] needs to learn the fate of a submitted batch.
    type Pending: Send;
    /// Hands `events` to the broker's client, in order (it may wait for room). Batches are
    /// written in the order they are submitted.
    fn submit(
        &mut self,
        events: &[Arc<Envelope>],
    ) -> impl Future<Output = Result<Self::Pending, SinkError>> + Send;
    /// Resolves `Ok` once the broker acknowledged every event of a submitted batch.
    fn wait(
        &mut self,
        pending: Self::Pending,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// After a failure, before every batch not acknowledged is submitted again (at least
    /// once): drop what the client still holds, reconnect if needed.
    fn reset(&mut self) -> impl Future<Output = ()> + Send;
}

/// Batches in flight at most. A sink's rate is about IN_FLIGHT * batch / the broker's round
/// trip: measured with benches/run-bridges.sh (MQTT -> Kafka, 1,000-event batches, a publisher
/// window of 8,192), 4 in flight kept the sink waiting on tansu; 16 let it follow.
const IN_FLIGHT: usize = 16;

/// A submitted batch: its events (to submit again after a failure), the last journal
/// sequence number it covers, and how many events it took from the journal or mailbox.
struct Batch<P> {
    events: Vec<Arc<Envelope>>,
    last_seq: u64,
    pending: Option<P>,
}

/// Runs [`run_sink`] on a thread of its own (a single-threaded runtime), so that the sink's
/// work never queues behind the connections that publish into it on the node's workers.
/// Measured with benches/run-bridges.sh (MQTT -> Kafka, window 1,024, interleaved runs):
/// 0.54x -> 0.60x of a direct producer against the sink as a task on the shared workers.
pub fn spawn_sink<T: SinkTarget + 'static>(
    broker: Broker,
    spec: SinkSpec,
    status: Arc<BridgeStatus>,
    target: T,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let run = run_sink(broker, spec, status, target, shutdown);
    tokio::task::spawn_blocking(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(run),
            Err(e) => tracing::error!(error = %e, "cannot start a runtime for a sink"),
        }
    })
}

/// Runs a sink until `shutdown` turns true.
pub async fn run_sink<T: SinkTarget>(
    broker: Broker,
    spec: SinkSpec,
    status: Arc<BridgeStatus>,
    target: T,
    shutdown: watch::Receiver<bool>,
) {
    let mb = broker.new_mailbox(spec.mailbox);
    mb.set_app(Some(spec.app_id.as_str().into()));
    mb.set_persistent(true);
    let cursor = spec.journal.clone().map(|j| {
        mb.set_journal(j.clone());
        status.set_journal(j.clone());
        JournalCursor::new(j, 0)
    });
    let mut rx = mb.attach().await;
    let qos1 = SubOptions {
        qos: 1,
        ..Default::default()
    };
    broker.subscribe(&mb, &spec.filter, None, qos1);
    let released = cursor.as_ref().map_or(0, |c| c.next().saturating_sub(1));
    let mut d = Driver {
        batch_max: spec.batch.max(1),
        spec: &spec,
        status: &status,
        target,
        shutdown,
        cursor,
        out: VecDeque::new(),
        received: Vec::new(),
        flight: VecDeque::new(),
        released,
        upto: released,
        last_release: Instant::now(),
        backoff: Backoff::default(),
    };
    while d.step(&mut rx).await.is_ok() {}
    // Written and acknowledged: released. The rest stays in the journal for the next start.
    d.release(true);
    broker.unsubscribe(mb.id(), &spec.filter, None);
    broker.end_session(mb.id());
    mb.detach(rx);
    status.stopped();
}

/// The node stops (or the sink's mailbox ended): the driver's loop ends.
struct Stop;

/// The state of a running sink: what waits to be submitted, the batches in flight, and how far
/// its journal is acknowledged and released.
struct Driver<'a, T: SinkTarget> {
    batch_max: usize,
    spec: &'a SinkSpec,
    status: &'a BridgeStatus,
    target: T,
    shutdown: watch::Receiver<bool>,
    cursor: Option<JournalCursor>,
    /// Deliveries taken and not submitted yet, in journal order.
    out: VecDeque<Delivery>,
    /// Reused buffer of one take from the mailbox.
    received: Vec<Delivery>,
    flight: VecDeque<Batch<T::Pending>>,
    /// The journal is released up to here.
    released: u64,
    /// The broker acknowledged everything up to here.
    upto: u64,
    last_release: Instant,
    backoff: Backoff,
}

impl<T: SinkTarget> Driver<'_, T> {
    /// One turn: take what waits, then submit a batch or wait for the oldest in flight.
    async fn step(&mut self, rx: &mut MailboxReceiver) -> Result<(), Stop> {
        self.fill(rx);
        if self.out.is_empty() && self.flight.is_empty() {
            return self.idle(rx).await;
        }
        if !self.out.is_empty() && self.flight.len() < IN_FLIGHT {
            self.submit_next().await?;
            if self.flight.len() < IN_FLIGHT && (!self.out.is_empty() || !rx.is_empty()) {
                return Ok(());
            }
        }
        // Full, or nothing more to submit: wait for the oldest batch.
        self.wait_oldest().await
    }

    /// Takes what the journal holds beyond the mailbox (a restart, an overflow) first, then
    /// what the mailbox holds, up to a batch.
    fn fill(&mut self, rx: &mut MailboxReceiver) {
        if self.out.is_empty()
            && rx.is_empty()
            && let Some(c) = self.cursor.as_mut()
            && c.has_more()
        {
            c.read(self.batch_max, &mut self.out);
        }
        if self.out.len() < self.batch_max {
            let mut received = std::mem::take(&mut self.received);
            rx.try_recv_many(&mut received, self.batch_max - self.out.len());
            for d in received.drain(..) {
                self.take(d);
            }
            self.received = received;
        }
    }

    /// A delivery from the mailbox: journaled ones in journal order (see
    /// [`JournalCursor::take`]).
    fn take(&mut self, d: Delivery) {
        match self.cursor.as_mut() {
            Some(c) if d.seq != 0 => c.take(d, &mut self.out, self.batch_max),
            _ => self.out.push_back(d),
        }
    }

    /// Nothing to do: releases what is due and waits for a delivery (or the next release).
    async fn idle(&mut self, rx: &mut MailboxReceiver) -> Result<(), Stop> {
        self.release(false);
        tokio::select! {
            biased;
            _ = self.shutdown.changed() => Err(Stop),
            d = rx.recv() => match d {
                Some(d) => {
                    self.take(d);
                    Ok(())
                }
                None => Err(Stop),
            },
            _ = tokio::time::sleep(RELEASE_EVERY) => Ok(()),
        }
    }

    /// Submits the next batch (events that came from the sink's own member are skipped).
    async fn submit_next(&mut self) -> Result<(), Stop> {
        let n = self.out.len().min(self.batch_max);
        let mut batch = Batch {
            events: Vec::with_capacity(n),
            last_seq: 0,
            pending: None,
        };
        for d in self.out.drain(..n) {
            batch.last_seq = batch.last_seq.max(d.seq);
            if origin::is_from(&d.event, self.spec.protocol, &self.spec.member) {
                self.status.skipped_loop.fetch_add(1, Ordering::Relaxed);
            } else {
                batch.events.push(d.event);
            }
        }
        self.status.consumed.fetch_add(n as u64, Ordering::Relaxed);
        self.flight.push_back(batch);
        let i = self.flight.len() - 1;
        if self.flight[i].events.is_empty() {
            return Ok(());
        }
        let r = tokio::select! {
            biased;
            _ = self.shutdown.changed() => return Err(Stop),
            r = self.target.submit(&self.flight[i].events) => r,
        };
        match r {
            Ok(p) => {
                self.flight[i].pending = Some(p);
                Ok(())
            }
            Err(e) => self.retry(e).await,
        }
    }

    /// Waits for the broker to acknowledge the oldest batch in flight.
    async fn wait_oldest(&mut self) -> Result<(), Stop> {
        let Some(mut oldest) = self.flight.pop_front() else {
            return Ok(());
        };
        let r = match oldest.pending.take() {
            None => Ok(()),
            Some(p) => tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Err(Stop),
                r = self.target.wait(p) => r,
            },
        };
        match r {
            Ok(()) => {
                if !oldest.events.is_empty() {
                    self.status.up();
                    self.backoff.reset();
                    self.status
                        .forwarded
                        .fetch_add(oldest.events.len() as u64, Ordering::Relaxed);
                }
                self.upto = self.upto.max(oldest.last_seq);
                self.release(false);
                Ok(())
            }
            Err(e) => {
                self.flight.push_front(oldest);
                self.retry(e).await
            }
        }
    }

    /// Every batch in flight written again after a failure (see [`retry`]).
    async fn retry(&mut self, e: SinkError) -> Result<(), Stop> {
        let ok = retry(
            &mut self.target,
            &mut self.flight,
            self.status,
            &mut self.backoff,
            &mut self.shutdown,
            e,
        )
        .await;
        if ok { Ok(()) } else { Err(Stop) }
    }

    /// Releases the journal up to what the broker acknowledged: at most once per
    /// [`RELEASE_EVERY`] (each release costs fsyncs), or now with `force`.
    fn release(&mut self, force: bool) {
        if self.upto <= self.released || !(force || self.last_release.elapsed() >= RELEASE_EVERY) {
            return;
        }
        release(
            &self.cursor,
            &mut self.released,
            self.upto,
            &mut self.last_release,
        );
    }
}

/// After a failed submit or wait: backs off, resets the target and submits every batch in
/// flight again, in order, until that works. False when the node stops meanwhile.
async fn retry<T: SinkTarget>(
    target: &mut T,
    flight: &mut VecDeque<Batch<T::Pending>>,
    status: &BridgeStatus,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
    mut error: SinkError,
) -> bool {
    loop {
        // What the client still holds is dropped; acknowledgements of it no longer count.
        for b in flight.iter_mut() {
            b.pending = None;
        }
        if !error.is_retryable() {
            // The same batch gets the same answer until the cause is fixed: say so, and ask
            // no sooner than the longest backoff.
            warn!(error = %error, "a sink's broker refuses a batch; it is kept and written again");
            backoff.exhaust();
        }
        if !crate::backoff::retry_later(status, backoff, shutdown, &error.to_string()).await {
            return false;
        }
        target.reset().await;
        let mut failed = None;
        for b in flight.iter_mut() {
            if b.events.is_empty() {
                continue;
            }
            match target.submit(&b.events).await {
                Ok(p) => b.pending = Some(p),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return true,
            Some(e) => error = e,
        }
    }
}

fn release(cursor: &Option<JournalCursor>, released: &mut u64, upto: u64, last: &mut Instant) {
    *last = Instant::now();
    let Some(c) = cursor else { return };
    *released = upto;
    let j = c.journal().clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = j.release_up_to(upto) {
            warn!(error = %e, "cannot release a sink journal");
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use meshgate_broker::BrokerConfig;
    use meshgate_store::{Commit, Disk};

    use super::*;
    use crate::BridgeStatus;

    /// A broker that takes batches, fails the wait of the third batch once, and remembers
    /// what it acknowledged.
    #[derive(Clone, Default)]
    struct Fake {
        submitted: Arc<Mutex<Vec<Vec<String>>>>,
        acked: Arc<Mutex<Vec<String>>>,
        failed: Arc<Mutex<bool>>,
        resets: Arc<Mutex<u32>>,
    }

    impl SinkTarget for Fake {
        type Pending = (usize, Vec<String>);

        async fn submit(&mut self, events: &[Arc<Envelope>]) -> Result<Self::Pending, SinkError> {
            let payloads: Vec<String> = events
                .iter()
                .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                .collect();
            let mut s = self.submitted.lock().unwrap();
            s.push(payloads.clone());
            Ok((s.len(), payloads))
        }

        async fn wait(&mut self, (n, payloads): Self::Pending) -> Result<(), SinkError> {
            tokio::task::yield_now().await;
            let mut failed = self.failed.lock().unwrap();
            if n == 3 && !*failed {
                *failed = true;
                return Err(SinkError::Unavailable("broker hiccup".into()));
            }
            self.acked.lock().unwrap().extend(payloads);
            Ok(())
        }

        async fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_in_flight_are_written_again_after_a_failure_and_the_journal_drains() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::new(BrokerConfig::default());
        let disk = Disk::new(Commit::Group(Duration::from_millis(1)), 1 << 30);
        broker.set_disk(disk.clone());
        let (journal, _) = disk.open(dir.path().join("sink"), 1 << 20).unwrap();
        let status = BridgeStatus::new("test", "m", "s", "sink", "t/>".into());
        let fake = Fake::default();
        let (stop, shutdown) = watch::channel(false);
        let spec = SinkSpec {
            protocol: "test",
            member: "m".into(),
            filter: Filter::parse("t/>").unwrap(),
            batch: 100,
            mailbox: 256,
            journal: Some(journal.clone()),
            app_id: "test".into(),
        };
        let task = tokio::spawn(run_sink(
            broker.clone(),
            spec,
            status.clone(),
            fake.clone(),
            shutdown,
        ));
        // Wait for the subscription, then publish more than the mailbox holds.
        let mut p = broker.publisher("test", None);
        let n = 5_000;
        let mut i = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while i < n {
            let env = Envelope {
                topic: "t/x".into(),
                payload: format!("e{i}").into(),
                ..Default::default()
            };
            let r = broker.publish(&mut p, env, 1).unwrap();
            if r.routed == 0 {
                assert!(Instant::now() < deadline, "the sink never subscribed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            i += 1;
        }
        let want: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let acked = fake.acked.lock().unwrap().clone();
            let mut seen: Vec<&String> = acked.iter().collect();
            seen.sort();
            seen.dedup();
            if seen.len() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} acknowledged",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every batch was submitted in order: the submissions, without the resubmitted ones,
        // are the publish order.
        let submitted = fake.submitted.lock().unwrap().clone();
        let mut order: Vec<String> = Vec::new();
        for b in submitted {
            for e in b {
                if order
                    .last()
                    .is_none_or(|l| l[1..].parse::<usize>().unwrap() < e[1..].parse().unwrap())
                {
                    order.push(e);
                }
            }
        }
        assert_eq!(order, want, "in order, nothing skipped");
        assert_eq!(
            *fake.resets.lock().unwrap(),
            1,
            "one reset after the failure"
        );
        assert_eq!(status.retries.load(Ordering::Relaxed), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !journal.is_empty() {
            assert!(
                Instant::now() < deadline,
                "journal drained: {} left",
                journal.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
