//! The router's hook into the mesh: local interest goes out, events for remote nodes are
//! handed over once per publish.

use std::sync::Arc;

use meshgate_broker::flow::Congestion;
use meshgate_broker::{MeshHook, RemoteDest};
use meshgate_proto::Envelope;
use meshgate_topic::Filter;
use tracing::warn;

use crate::frame::OutDest;
use crate::state::Inner;

/// The router's view of the mesh. It holds the mesh strongly (the router and the mesh live as
/// long as the node): no upgrade of a weak pointer per forwarded event.
pub(crate) struct Hook(pub(crate) Arc<Inner>);

impl MeshHook for Hook {
    fn interest(&self, filter: &Filter, group: Option<&str>, added: bool) {
        self.0.pending.lock().push((
            filter.as_str().to_string(),
            group.map(str::to_string),
            added,
        ));
        self.0.wake.notify_one();
    }

    fn forward(&self, event: &Arc<Envelope>, dests: &[RemoteDest], flow: &mut Congestion) -> u64 {
        if let Some(outbox) = &self.0.outbox
            && event.delivery == meshgate_proto::DeliveryClass::Guaranteed as i32
        {
            let shared = dests.iter().map(|d| OutDest::Shared {
                node: d.node.clone(),
                groups: d.groups.clone(),
            });
            match outbox.forward(event, shared, 0) {
                Ok(ticket) => return ticket,
                Err(e) => warn!(error = %e, "cannot store a guaranteed event; sent as direct"),
            }
        }
        self.0.forward(event, dests, 0, flow);
        0
    }

    fn congested_links(&self, dests: &[RemoteDest], flow: &mut Congestion) {
        let table = self.0.hops.load();
        for d in dests {
            if let Some(link) = table.get(&d.node)
                && !link.valve.has_room()
            {
                flow.note(&link.valve);
            }
        }
    }

    fn nearest(&self, candidates: &[&str], rr: usize) -> Option<usize> {
        let routes = self.0.routes.read();
        let pick = routes.nearest(candidates, rr)?;
        candidates.iter().position(|c| *c == pick)
    }

    fn next_hops(&self, dests: &[RemoteDest], out: &mut Vec<Arc<str>>) {
        let table = self.0.hops.load();
        for d in dests {
            if let Some(link) = table.get(&d.node)
                && !out.iter().any(|p| *p == link.peer)
            {
                out.push(link.peer.clone());
            }
        }
    }
}
