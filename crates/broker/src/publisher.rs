//! The publishing side of a connection: its own match cache and tallies, and the deliveries
//! a batched publisher holds until it stores them with one write per session.

use std::sync::Arc;

use meshgate_topic::MatchCache;

use crate::flow::Congestion;
use crate::mailbox::{Delivery, Mailbox, Refused, SessionId};
use crate::meter::LocalMeter;
use crate::router::{Broker, RemoteDest, Target};
use crate::stats::LocalTally;

/// Per-connection publishing state: its own match cache (no lock shared with other publishers)
/// and counters flushed in batches.
pub struct Publisher {
    pub(crate) session: Option<SessionId>,
    /// `meshgate_events_published_total{protocol}` and its bytes, resolved once per publisher.
    pub(crate) published: metrics::Counter,
    pub(crate) published_bytes: metrics::Counter,
    pub(crate) app_id: Option<Arc<str>>,
    pub(crate) cache: Option<MatchCache<SessionId, Target>>,
    pub(crate) tally: LocalTally,
    /// Round-robin position for queue groups.
    pub(crate) rr: usize,
    /// Wall clock (ms) set by the front end once per read batch; 0 = read the clock per event.
    pub(crate) clock_ms: u64,
    /// Reused scratch list (session, index into the match) to deliver once per session.
    pub(crate) order: Vec<(SessionId, u32)>,
    /// Reused list of remote destinations of the event being routed.
    pub(crate) remote: Vec<RemoteDest>,
    /// Highest commit ticket of the event being routed.
    pub(crate) ticket: u64,
    /// Chargeback tallies since the last flush (only when the node meters).
    pub(crate) meter: LocalMeter,
    /// Reused list of the links an event leaves by (metering).
    pub(crate) peers: Vec<Arc<str>>,
    /// Whether deliveries to journaled sessions are held until [`Broker::flush_held`].
    pub(crate) batched: bool,
    /// Deliveries held, in routing order.
    pub(crate) held: Vec<(Arc<Mailbox>, Delivery)>,
    /// Reused buffer of the journal records of held deliveries, and each record's span in it.
    pub(crate) scratch: Vec<u8>,
    pub(crate) spans: Vec<std::ops::Range<usize>>,
    /// Reused lists of one session's held deliveries, and of the part stored with one write.
    pub(crate) run: Vec<Delivery>,
    pub(crate) part: Vec<Delivery>,
    /// The congested queues this publisher filled since it last waited (see crate::flow).
    pub(crate) congestion: Congestion,
    /// `meshgate_publisher_stalls_total{protocol}` and the seconds stalled.
    stalls: metrics::Counter,
    stalled_seconds: metrics::Counter,
    /// `meshgate_slow_consumers_total{protocol}`: consumers this publisher found stalled.
    slow_consumers: metrics::Counter,
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
        let c = &mut self.congestion;
        if c.stalls > 0 {
            self.stalls.increment(std::mem::take(&mut c.stalls));
            let secs = std::mem::take(&mut c.stalled).as_secs_f64();
            self.stalled_seconds.increment((secs * 1e6) as u64);
        }
        if c.slow > 0 {
            self.slow_consumers.increment(std::mem::take(&mut c.slow));
        }
    }

    /// Whether this publisher filled a queue above its high watermark and should wait
    /// ([`Publisher::wait_for_room`]) before it publishes more.
    pub fn is_congested(&self) -> bool {
        self.congestion.is_congested()
    }

    /// Waits until every queue this publisher filled above its high watermark has room again,
    /// or its consumer took nothing for `stall` (then it is declared slow). Cancel safe.
    pub async fn wait_for_room(&mut self, stall: std::time::Duration) {
        self.congestion.wait(stall).await;
    }

    /// The congested queues this publisher filled (the mesh adds its links' here).
    pub fn congestion(&mut self) -> &mut Congestion {
        &mut self.congestion
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

    /// Holds every delivery until [`Broker::flush_held`], which queues each session's share of
    /// a batch with one lock and one wake-up, and stores a journaled session's (persistent
    /// MQTT sessions, bridge sinks) with one write: a front end that publishes a batch read in
    /// one go then pays per batch, not per event. Such a front end must call `flush_held`
    /// after each batch (nothing held reaches a subscriber before) and
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
            run: Vec::new(),
            part: Vec::new(),
            congestion: Congestion::default(),
            stalls: metrics::counter!("meshgate_publisher_stalls_total", "protocol" => protocol),
            stalled_seconds: metrics::counter!(
                "meshgate_publisher_stalled_microseconds_total",
                "protocol" => protocol
            ),
            slow_consumers: metrics::counter!(
                "meshgate_slow_consumers_total",
                "protocol" => protocol
            ),
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
        // Each run's deliveries are moved, never cloned, on their way to the mailbox.
        let mut run = std::mem::take(&mut p.run);
        let mut run_mb: Option<Arc<Mailbox>> = None;
        let mut ticket = 0;
        for (mb, d) in held.drain(..) {
            if let Some(cur) = run_mb.take_if(|cur| cur.id() != mb.id()) {
                ticket = ticket.max(store_run(&cur, &mut run, p));
            }
            run_mb.get_or_insert(mb);
            run.push(d);
        }
        if let Some(cur) = run_mb {
            ticket = ticket.max(store_run(&cur, &mut run, p));
        }
        p.held = held;
        p.run = run;
        ticket
    }
}

/// Queues `d` in `mailbox`; true if it entered the mailbox or, journaled (`seq` set), is read
/// back from the session's journal when the session has room. Only a delivery that is in
/// neither counts as dropped. A mailbox it congested is noted in `flow`.
pub(crate) fn queue(
    mailbox: &Mailbox,
    d: Delivery,
    tally: &mut LocalTally,
    flow: &mut Congestion,
) -> bool {
    let journaled = d.seq != 0;
    match mailbox.offer(d) {
        Ok(q) => {
            if q.congested {
                flow.note(mailbox.valve());
            }
            true
        }
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
        Refused::Slow if journaled => true,
        Refused::Slow => {
            tally.dropped_slow += 1;
            false
        }
        Refused::Offline => journaled,
    }
}

/// Most bytes of journal records appended with one write by [`Broker::flush_held`].
const HELD_WRITE_BYTES: usize = 8 << 20;

/// [`Broker::flush_held`] for the held deliveries of one session (`run`, emptied): appends the
/// journal records of the QoS 1 ones (one write per [`HELD_WRITE_BYTES`]) and queues each part
/// in order under the journal's lock. A delivery that cannot be stored is queued in memory
/// only, as `deliver` does. Returns the highest ticket.
fn store_run(mb: &Mailbox, run: &mut Vec<Delivery>, p: &mut Publisher) -> u64 {
    let Some(journal) = mb.journal().cloned() else {
        // Nothing to store: the session's share of the batch is queued at once.
        queue_part(mb, run.drain(..), None, &mut p.tally, &mut p.congestion);
        return 0;
    };
    let mut ticket = 0;
    let mut part = std::mem::take(&mut p.part);
    while !run.is_empty() {
        p.scratch.clear();
        p.spans.clear();
        let mut n = 0;
        while n < run.len() && p.scratch.len() < HELD_WRITE_BYTES {
            let d = &run[n];
            if d.qos > 0 {
                let from = p.scratch.len();
                d.encode_into(&mut p.scratch);
                p.spans.push(from..p.scratch.len());
            }
            n += 1;
        }
        part.extend(run.drain(..n));
        let (tally, flow) = (&mut p.tally, &mut p.congestion);
        if p.spans.is_empty() {
            // QoS 0 only: nothing to store.
            queue_part(mb, part.drain(..), None, tally, flow);
            continue;
        }
        let records: Vec<&[u8]> = p.spans.iter().map(|r| &p.scratch[r.clone()]).collect();
        match journal.append_batch_then(&records, |seqs| {
            queue_part(mb, part.drain(..), Some(seqs.start), tally, flow);
        }) {
            Ok(((), _, t)) => ticket = ticket.max(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store deliveries; kept in memory");
                queue_part(mb, part.drain(..), None, tally, flow);
            }
        }
    }
    p.part = part;
    ticket
}

/// Queues the held deliveries `part` of `mb` in order, the QoS 1 ones numbered from `first`
/// (their journal sequence numbers; `None`: not stored).
fn queue_part(
    mb: &Mailbox,
    part: impl Iterator<Item = Delivery>,
    mut first: Option<u64>,
    tally: &mut LocalTally,
    flow: &mut Congestion,
) {
    let numbered = part.map(|mut d| {
        if d.qos > 0
            && let Some(seq) = first.as_mut()
        {
            d.seq = *seq;
            *seq += 1;
        }
        d
    });
    let q = mb.offer_all(numbered, |d, why| {
        kept_when_refused(why, d.seq != 0, tally);
    });
    if q.congested {
        flow.note(mb.valve());
    }
}
