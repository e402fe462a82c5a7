//! The registry and store-and-forward loops: local interest out as gossip, remote interest
//! into the router's trie, routes into the hop table, dead queues re-split, acknowledged
//! events released.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_proto::v1::{Close, Frame, Ping, frame::Body};
use meshgate_registry::{Change, Gossip, Registry};
use meshgate_topic::Filter;
use tracing::{debug, info, warn};

use crate::guaranteed::Outbox;
use crate::shutdown::Shutdown;
use crate::state::{HopTable, Inner, LinkMap};

/// The runtime the registry runs on: the clock and the control streams of the links.
pub(crate) struct Rt<'a> {
    links: &'a LinkMap,
    now: u64,
}

impl meshgate_registry::Runtime for Rt<'_> {
    fn now_ms(&self) -> u64 {
        self.now
    }

    fn send(&mut self, to: &str, msg: Gossip) {
        if let Some(l) = self.links.get(to) {
            let body = match msg {
                Gossip::Digest(d) => Body::Digest(d),
                Gossip::Delta(d) => Body::Delta(d),
            };
            if !l.send_control(Frame { body: Some(body) }) {
                // Anti-entropy resends whatever this loses.
                debug!(peer = to, "control queue full, gossip dropped");
            }
        }
    }
}

impl Inner {
    /// Runs `f` on the registry, then mirrors what changed into the router's trie and the
    /// route snapshot, under the same lock so that changes apply in order.
    pub(crate) fn with_registry<R>(&self, f: impl FnOnce(&mut Registry, &mut Rt<'_>) -> R) -> R {
        let mut reg = self.registry.lock();
        let links = self.links.read();
        let mut rt = Rt {
            links: &links,
            now: self.now_ms(),
        };
        let r = f(&mut reg, &mut rt);
        drop(links);
        let mut topology = false;
        for c in reg.take_changes() {
            match c {
                Change::InterestAdded {
                    node,
                    filter,
                    group,
                } => match Filter::parse(&filter) {
                    Ok(f) => {
                        if let Some(h) = self.held.lock().get_mut(&node) {
                            h.remove(&(filter.clone(), group.clone()));
                        }
                        self.broker.add_remote_interest(&node, &f, group.as_deref())
                    }
                    Err(e) => warn!(node = %node, filter, error = %e, "invalid filter in registry"),
                },
                Change::InterestRemoved {
                    node,
                    filter,
                    group,
                } => {
                    // A node that became unreachable keeps its interest here while the
                    // registry holds its entry, so guaranteed events for it are stored.
                    if self.outbox.is_some()
                        && reg.holds(&node)
                        && !reg.routes().is_reachable(&node)
                    {
                        self.held
                            .lock()
                            .entry(node)
                            .or_default()
                            .insert((filter, group));
                        continue;
                    }
                    if let Ok(f) = Filter::parse(&filter) {
                        self.broker
                            .remove_remote_interest(&node, &f, group.as_deref());
                    }
                }
                Change::TopologyChanged => topology = true,
            }
        }
        if topology {
            *self.routes.write() = reg.routes().clone();
            self.rebuild_hops();
        }
        r
    }

    /// Recomputes the hop table from the routes and the links that are up.
    pub(crate) fn rebuild_hops(&self) {
        let routes = self.routes.read();
        let links = self.links.read();
        let table: HopTable = routes
            .next_hops()
            .filter_map(|(dest, hop)| links.get(hop).map(|l| (dest.clone(), l.clone())))
            .collect();
        if let Some(outbox) = &self.outbox {
            let names = table
                .iter()
                .map(|(d, l)| (d.clone(), l.peer.clone()))
                .collect();
            outbox.set_routes(names, links.keys().cloned().collect());
        }
        self.hops.store(Arc::new(table));
    }

    /// Drops held interest of nodes that left the registry, and stale held interest of nodes
    /// that are reachable again (what they still have came back as new interest).
    fn prune_held(&self) {
        // Registry first, then `held`: the order `with_registry` takes them in.
        let mut reg = self.registry.lock();
        let mut held = self.held.lock();
        if held.is_empty() {
            return;
        }
        held.retain(|node, set| {
            let gone = !reg.holds(node);
            if !gone && !reg.routes().is_reachable(node) {
                return true;
            }
            for (filter, group) in set.drain() {
                if let Ok(f) = Filter::parse(&filter) {
                    self.broker
                        .remove_remote_interest(node, &f, group.as_deref());
                }
            }
            if gone {
                info!(node = %node, "unreachable node expired; its held interest is gone");
            }
            false
        });
    }
}

/// Applies local interest changes, pushes deltas, and runs the periodic work.
pub(crate) async fn registry_loop(inner: Arc<Inner>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(inner.cfg.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let periodic = tokio::select! {
            _ = inner.wake.notified() => false,
            _ = tick.tick() => true,
            _ = shutdown.recv() => break,
        };
        let pending = std::mem::take(&mut *inner.pending.lock());
        inner.with_registry(|reg, rt| {
            for (f, g, added) in &pending {
                if *added {
                    reg.add_interest(f, g.as_deref());
                } else {
                    reg.remove_interest(f, g.as_deref());
                }
            }
            reg.flush(rt);
            if periodic {
                reg.tick(rt);
            }
        });
        if periodic {
            let nonce = inner.started.elapsed().as_micros() as u64;
            for l in inner.links.read().values() {
                l.send_control(Frame {
                    body: Some(Body::Ping(Ping { nonce })),
                });
            }
        }
    }
    for l in inner.links.read().values() {
        l.send_control(Frame {
            body: Some(Body::Close(Close {
                reason: "node shutting down".into(),
            })),
        });
    }
}

/// Store-and-forward housekeeping: splits dead queues over new routes, releases what peers
/// acknowledged, and forgets held interest of nodes that expired.
pub(crate) async fn outbox_loop(inner: Arc<Inner>, outbox: Arc<Outbox>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reroute = Instant::now();
    loop {
        let reroute = tokio::select! {
            _ = outbox.reroute.notified() => true,
            _ = tick.tick() => last_reroute.elapsed() > Duration::from_secs(10),
            _ = shutdown.recv() => break,
        };
        let (i, outbox) = (inner.clone(), outbox.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if reroute {
                let known: HashSet<String> = {
                    let reg = i.registry.lock();
                    reg.nodes().iter().map(|n| n.name.to_string()).collect()
                };
                // A node missing from a registry younger than the expiry time may simply not
                // have been heard of yet (this node restarted): keep its events.
                let young = i.started.elapsed() < i.cfg.expire_unreachable;
                outbox.reroute_dead(|n| young || known.contains(n));
            }
            outbox.release_acked();
            i.prune_held();
        })
        .await;
        if reroute {
            last_reroute = Instant::now();
        }
    }
}
