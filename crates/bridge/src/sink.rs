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

use meshgate_broker::{Broker, Delivery, JournalCursor, SubOptions};
use meshgate_proto::Envelope;
use meshgate_store::Journal;
use meshgate_topic::Filter;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use crate::backoff::Backoff;
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
}

/// A broker a sink writes to.
pub trait SinkTarget: Send {
    /// Writes `events` in order; resolves `Ok` once the broker acknowledged every one. On `Err`
    /// the whole batch is written again after a backoff (at least once).
    fn send(&mut self, events: &[Arc<Envelope>])
    -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs a sink until `shutdown` turns true.
pub async fn run_sink<T: SinkTarget>(
    broker: Broker,
    spec: SinkSpec,
    status: Arc<BridgeStatus>,
    mut target: T,
    mut shutdown: watch::Receiver<bool>,
) {
    let mb = broker.new_mailbox(spec.mailbox);
    mb.set_persistent(true);
    let mut cursor = spec.journal.map(|j| {
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

    let batch_max = spec.batch.max(1);
    let mut out: VecDeque<Delivery> = VecDeque::new();
    let mut batch: Vec<Arc<Envelope>> = Vec::with_capacity(batch_max);
    let mut released = cursor.as_ref().map_or(0, |c| c.next().saturating_sub(1));
    let mut upto = released;
    let mut last_release = Instant::now();
    let mut backoff = Backoff::default();
    let take = |d: Delivery, cursor: &mut Option<JournalCursor>, out: &mut VecDeque<Delivery>| {
        match cursor.as_mut() {
            Some(c) if d.seq != 0 => c.take(d, out, batch_max),
            _ => out.push_back(d),
        }
    };
    'run: loop {
        // What the journal holds beyond the mailbox (a restart, an overflow) comes first.
        if out.is_empty()
            && rx.is_empty()
            && let Some(c) = cursor.as_mut()
            && c.has_more()
        {
            c.read(batch_max, &mut out);
        }
        if out.is_empty() {
            if upto > released && last_release.elapsed() >= RELEASE_EVERY {
                release(&cursor, &mut released, upto, &mut last_release);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break 'run,
                d = rx.recv() => match d {
                    Some(d) => take(d, &mut cursor, &mut out),
                    None => break 'run,
                },
                _ = tokio::time::sleep(RELEASE_EVERY) => continue,
            }
        }
        while out.len() < batch_max {
            match rx.try_recv() {
                Ok(d) => take(d, &mut cursor, &mut out),
                Err(_) => break,
            }
        }
        let n = out.len().min(batch_max);
        batch.clear();
        let mut last_seq = 0;
        for d in out.iter().take(n) {
            last_seq = last_seq.max(d.seq);
            if origin::is_from(&d.event, spec.protocol, &spec.member) {
                status.skipped_loop.fetch_add(1, Ordering::Relaxed);
            } else {
                batch.push(d.event.clone());
            }
        }
        status.consumed.fetch_add(n as u64, Ordering::Relaxed);
        while !batch.is_empty() {
            let sent = tokio::select! {
                biased;
                _ = shutdown.changed() => break 'run,
                r = target.send(&batch) => r,
            };
            match sent {
                Ok(()) => {
                    status.up();
                    backoff.reset();
                    status
                        .forwarded
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    status.down(&e);
                    status.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => break 'run,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        out.drain(..n);
        upto = upto.max(last_seq);
        if upto > released && last_release.elapsed() >= RELEASE_EVERY {
            release(&cursor, &mut released, upto, &mut last_release);
        }
    }
    // Written and acknowledged: released. The rest stays in the journal for the next start.
    if upto > released {
        release(&cursor, &mut released, upto, &mut last_release);
    }
    broker.unsubscribe(mb.id(), &spec.filter, None);
    broker.end_session(mb.id());
    mb.detach(rx);
    status.stopped();
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
