//! What the mesh shows: `GET /v1/mesh`, the guaranteed backlog, and the metrics export.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshgate_api::{
    DialView, GuaranteedView, LinkState, LinkView, MeshDrops, MeshView, RegistryNodeView,
};

use crate::Mesh;

impl Mesh {
    /// `GET /v1/mesh`: the contract's fields plus the registry view.
    pub fn view(&self) -> MeshView {
        let i = &self.inner;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut links: Vec<LinkView> = i
            .links
            .read()
            .values()
            .map(|l| {
                let s = &l.stats;
                LinkView {
                    peer: l.peer.to_string(),
                    state: LinkState::Up,
                    dialled: l.dialled,
                    remote: l.remote.to_string(),
                    incarnation: l.incarnation,
                    role: l.role.clone(),
                    rtt_us: g(&s.rtt_us),
                    tx_events: g(&s.tx_events),
                    tx_bytes: g(&s.tx_bytes),
                    rx_events: g(&s.rx_events),
                    rx_bytes: g(&s.rx_bytes),
                    rx_fanout_copies: g(&s.rx_fanout),
                    dropped: g(&s.dropped),
                    queued_events: l.valve.events() as u64,
                    congested: g(&s.congested),
                    slow: l.valve.times_slow(),
                    tx_control_bytes: g(&s.tx_control_bytes),
                    rx_control_bytes: g(&s.rx_control_bytes),
                }
            })
            .collect();
        let up: Vec<Arc<str>> = i.links.read().keys().cloned().collect();
        let mut dialling = Vec::new();
        for (addr, d) in i.dials.lock().iter() {
            if let Some(p) = &d.peer
                && !d.connected
                && !up.contains(p)
            {
                links.push(LinkView {
                    peer: p.to_string(),
                    state: LinkState::Down,
                    remote: addr.clone(),
                    ..LinkView::default()
                });
            }
            dialling.push(DialView {
                address: addr.clone(),
                peer: d.peer.as_deref().map(str::to_string),
                connected: d.connected,
                attempts: d.attempts,
                last_error: d.last_error.clone(),
            });
        }
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        let reg = i.registry.lock();
        let views = reg.nodes();
        let mut nodes: Vec<String> = views
            .iter()
            .filter(|n| n.reachable)
            .map(|n| n.name.to_string())
            .collect();
        if !nodes.iter().any(|n| **n == *i.name) {
            nodes.push(i.name.to_string());
        }
        nodes.sort();
        let registry = views
            .iter()
            .map(|n| RegistryNodeView {
                node: n.name.to_string(),
                incarnation: n.incarnation,
                version: n.max_version,
                role: n.role.clone(),
                reachable: n.reachable,
                interest: n.interest as u64,
                links: n.links.clone(),
            })
            .collect();
        drop(reg);
        let c = &i.counters;
        MeshView {
            node: i.name.to_string(),
            incarnation: i.incarnation,
            role: Some(i.cfg.role.as_str().to_string()),
            listen: Some(self.local_addr().to_string()),
            links,
            nodes,
            registry,
            dialling,
            dropped: MeshDrops {
                unroutable: g(&c.unroutable),
                hop_limit: g(&c.hop_limit),
                duplicates: g(&c.duplicates),
                invalid: g(&c.bad_events),
            },
            refused_links: g(&c.refused_links),
            guaranteed: self.backlog(),
        }
    }

    /// The guaranteed queues: backlog per next hop (events, bytes, age of the oldest) and the
    /// store's use of its quota. `None` without a store.
    pub fn backlog(&self) -> Option<GuaranteedView> {
        self.inner.outbox.as_ref().map(|o| o.view())
    }

    /// Copies the link counters into the `metrics` recorder (called before each scrape).
    pub fn export_metrics(&self) {
        for l in self.inner.links.read().values() {
            let s = &l.stats;
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            for (name, value) in [
                ("meshgate_link_tx_events_total", &s.tx_events),
                ("meshgate_link_tx_bytes_total", &s.tx_bytes),
                ("meshgate_link_rx_events_total", &s.rx_events),
                ("meshgate_link_rx_bytes_total", &s.rx_bytes),
                ("meshgate_link_rx_fanout_copies_total", &s.rx_fanout),
                ("meshgate_link_dropped_total", &s.dropped),
                ("meshgate_link_congested_total", &s.congested),
            ] {
                metrics::counter!(name, "peer" => l.peer.to_string()).absolute(g(value));
            }
            metrics::gauge!("meshgate_link_rtt_seconds", "peer" => l.peer.to_string())
                .set(g(&s.rtt_us) as f64 / 1e6);
            metrics::counter!("meshgate_link_slow_total", "peer" => l.peer.to_string())
                .absolute(l.valve.times_slow());
            metrics::gauge!("meshgate_link_queued_events", "peer" => l.peer.to_string())
                .set(l.valve.events() as f64);
        }
        if let Some(o) = &self.inner.outbox {
            o.export_metrics();
        }
        metrics::gauge!("meshgate_mesh_links").set(self.inner.links.read().len() as f64);
        metrics::gauge!("meshgate_mesh_nodes").set(
            self.inner
                .registry
                .lock()
                .nodes()
                .iter()
                .filter(|n| n.reachable)
                .count() as f64,
        );
    }
}
