//! Receive and forward: what a node does with an event that arrived on a link (deliver its
//! share once, pass the rest on), and how any event is split over next-hop links.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshgate_broker::Publisher;
use meshgate_broker::flow::Congestion;
use meshgate_proto::Envelope;
use meshgate_proto::v1::Destination;
use meshgate_registry::HOP_LIMIT;
use meshgate_topic::validate_topic;

use crate::frame::{Dest, FrameError, Incoming, OutDest};
use crate::guaranteed::Outbox;
use crate::link::Link;
use crate::state::Inner;

/// An event received on a link, checked and split by [`Inner::receive`].
struct Received {
    env: Arc<Envelope>,
    /// Links crossed, this one included.
    hops: u32,
    /// The queue groups this node serves, if it is a destination.
    mine: Option<Vec<(String, String)>>,
    /// The destinations behind this node.
    rest: Vec<Destination>,
}

impl Inner {
    /// Checks an event that arrived on a link and splits its destinations: this node's share
    /// (the queue groups it serves, if it is a destination) and the rest. A malformed event is
    /// counted and dropped.
    fn receive(&self, re: Result<Incoming, FrameError>) -> Option<Received> {
        let Some(ev) = re.ok().filter(|e| validate_topic(&e.env.topic).is_ok()) else {
            self.counters.bad_events.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        Some(Received {
            env: ev.env,
            hops: ev.hops.saturating_add(1),
            mine: ev.mine,
            rest: ev.rest,
        })
    }

    /// Whether the rest of a received event may go on (it is under the hop limit).
    fn may_forward(&self, r: &Received) -> bool {
        if r.rest.is_empty() {
            return false;
        }
        if r.hops >= HOP_LIMIT {
            self.counters.hop_limit.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Handles one guaranteed event that arrived on a link: delivers the local share once
    /// (deduplicated by id), stores the rest for the next hops. Returns the local copies made
    /// and the commit ticket after which it may be acknowledged.
    pub(crate) fn on_guaranteed(
        &self,
        outbox: &Outbox,
        re: Result<Incoming, FrameError>,
        publisher: &mut Publisher,
    ) -> Result<(u64, u64), meshgate_store::StoreError> {
        let Some(r) = self.receive(re) else {
            return Ok((0, 0));
        };
        let (mut fanout, mut ticket) = (0, 0);
        if let Some(groups) = &r.mine
            && !outbox.is_duplicate(&r.env)
        {
            let (n, t) = self.broker.deliver_from_mesh(publisher, &r.env, groups);
            fanout = n as u64;
            ticket = t;
        }
        if self.may_forward(&r) {
            let t = outbox.forward(&r.env, r.rest.into_iter().map(OutDest::Owned), r.hops)?;
            ticket = ticket.max(t);
        }
        Ok((fanout, ticket))
    }

    /// Sends one copy of `event` per next hop, each with the destinations behind that hop,
    /// encoded into the link's outgoing frame at once. One destination (the common case)
    /// allocates nothing and takes no lock but the link's.
    pub(crate) fn forward<D: Dest>(
        &self,
        event: &Envelope,
        dests: &[D],
        hops: u32,
        flow: &mut Congestion,
    ) {
        let table = self.hops.load();
        if let [d] = dests {
            match table.get(d.node()) {
                Some(link) => {
                    link.send(event, dests, hops, flow);
                }
                None => {
                    self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let mut split: Vec<(&Arc<Link>, Vec<&D>)> = Vec::new();
        for d in dests {
            let Some(link) = table.get(d.node()) else {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match split.iter_mut().find(|(l, _)| Arc::ptr_eq(l, link)) {
                Some((_, v)) => v.push(d),
                None => split.push((link, vec![d])),
            }
        }
        for (link, ds) in split {
            link.send(event, &ds, hops, flow);
        }
    }

    /// Handles one event that arrived on a link: delivers the local share once, forwards the
    /// rest. Returns the number of local copies made.
    pub(crate) fn on_event(
        &self,
        re: Result<Incoming, FrameError>,
        publisher: &mut Publisher,
    ) -> u64 {
        let Some(r) = self.receive(re) else {
            return 0;
        };
        let mut fanout = 0;
        if let Some(groups) = &r.mine {
            if self.recent.lock().insert((r.env.id_hi, r.env.id_lo)) {
                fanout = self.broker.deliver_from_mesh(publisher, &r.env, groups).0 as u64;
            } else {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.may_forward(&r) {
            self.forward(&r.env, &r.rest, r.hops, publisher.congestion());
        }
        fanout
    }
}
