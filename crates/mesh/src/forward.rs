//! Receive and forward: what a node does with an event that arrived on a link (deliver its
//! share once, pass the rest on), and how any event is split over next-hop links.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshgate_broker::Publisher;
use meshgate_broker::flow::Congestion;
use meshgate_proto::Envelope;
use meshgate_proto::v1::{Destination, RoutedEvent};
use meshgate_registry::HOP_LIMIT;
use meshgate_topic::validate_topic;

use crate::frame::{Dests, OutDest, OutEvent};
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
    fn receive(&self, re: RoutedEvent) -> Option<Received> {
        let Some(env) = re.event.filter(|e| validate_topic(&e.topic).is_ok()) else {
            self.counters.bad_events.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut mine = None;
        let mut rest = Vec::new();
        for d in re.destinations {
            if *d.node == *self.name {
                mine = Some(d.groups.into_iter().map(|g| (g.group, g.filter)).collect());
            } else {
                rest.push(d);
            }
        }
        Some(Received {
            env: Arc::new(env),
            hops: re.hops.saturating_add(1),
            mine,
            rest,
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
        re: RoutedEvent,
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

    /// Sends one copy of `event` per next hop, each with the destinations behind that hop.
    /// One destination (or one next hop) allocates nothing and takes no lock.
    pub(crate) fn forward(
        &self,
        event: &Arc<Envelope>,
        dests: impl Iterator<Item = OutDest>,
        hops: u32,
        flow: &mut Congestion,
    ) {
        let table = self.hops.load();
        let mut first: Option<(&Arc<Link>, Dests)> = None;
        let mut more: Vec<(&Arc<Link>, Dests)> = Vec::new();
        for d in dests {
            let Some(link) = table.get(d.node()) else {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match &mut first {
                None => first = Some((link, Dests::One(d))),
                Some((l, v)) if Arc::ptr_eq(l, link) => v.push(d),
                Some(_) => match more.iter_mut().find(|(l, _)| Arc::ptr_eq(l, link)) {
                    Some((_, v)) => v.push(d),
                    None => more.push((link, Dests::One(d))),
                },
            }
        }
        let Some(first) = first else { return };
        for (link, destinations) in std::iter::once(first).chain(more) {
            link.send_event(
                OutEvent {
                    event: event.clone(),
                    destinations,
                    hops,
                },
                flow,
            );
        }
    }

    /// Handles one event that arrived on a link: delivers the local share once, forwards the
    /// rest. Returns the number of local copies made.
    pub(crate) fn on_event(&self, re: RoutedEvent, publisher: &mut Publisher) -> u64 {
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
            let rest = r.rest.into_iter().map(OutDest::Owned);
            self.forward(&r.env, rest, r.hops, publisher.congestion());
        }
        fanout
    }
}
