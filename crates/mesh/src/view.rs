//! What the mesh shows: `GET /v1/mesh`, the guaranteed backlog, and the metrics export.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::Mesh;

impl Mesh {
    /// `GET /v1/mesh`: the contract's fields plus the registry view.
    pub fn view(&self) -> Value {
        let i = &self.inner;
        let mut links: Vec<Value> = i
            .links
            .read()
            .values()
            .map(|l| {
                let s = &l.stats;
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                json!({
                    "peer": &*l.peer,
                    "state": "up",
                    "dialled": l.dialled,
                    "remote": l.remote.to_string(),
                    "incarnation": l.incarnation,
                    "role": l.role,
                    "rtt_us": g(&s.rtt_us),
                    "tx_events": g(&s.tx_events),
                    "tx_bytes": g(&s.tx_bytes),
                    "rx_events": g(&s.rx_events),
                    "rx_bytes": g(&s.rx_bytes),
                    "rx_fanout_copies": g(&s.rx_fanout),
                    "dropped": g(&s.dropped),
                    "tx_control_bytes": g(&s.tx_control_bytes),
                    "rx_control_bytes": g(&s.rx_control_bytes),
                })
            })
            .collect();
        let up: Vec<Arc<str>> = i.links.read().keys().cloned().collect();
        let dials: Vec<Value> = i
            .dials
            .lock()
            .iter()
            .map(|(addr, d)| {
                if let Some(p) = &d.peer
                    && !d.connected
                    && !up.contains(p)
                {
                    links.push(json!({
                        "peer": &**p, "state": "down", "remote": addr,
                        "tx_events": 0, "tx_bytes": 0, "rx_events": 0, "rx_bytes": 0,
                    }));
                }
                json!({
                    "address": addr,
                    "peer": d.peer.as_deref(),
                    "connected": d.connected,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                })
            })
            .collect();
        links.sort_by(|a, b| a["peer"].as_str().cmp(&b["peer"].as_str()));
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
        let registry: Vec<Value> = views
            .iter()
            .map(|n| {
                json!({
                    "node": &*n.name,
                    "incarnation": n.incarnation,
                    "version": n.max_version,
                    "role": n.role,
                    "reachable": n.reachable,
                    "interest": n.interest,
                    "links": n.links,
                })
            })
            .collect();
        let c = &i.counters;
        json!({
            "node": &*i.name,
            "incarnation": i.incarnation,
            "role": i.cfg.role.as_str(),
            "listen": self.local_addr().to_string(),
            "links": links,
            "nodes": nodes,
            "registry": registry,
            "dialling": dials,
            "dropped": {
                "unroutable": c.unroutable.load(Ordering::Relaxed),
                "hop_limit": c.hop_limit.load(Ordering::Relaxed),
                "duplicates": c.duplicates.load(Ordering::Relaxed),
                "invalid": c.bad_events.load(Ordering::Relaxed),
            },
            "refused_links": c.refused_links.load(Ordering::Relaxed),
            "guaranteed": self.backlog(),
        })
    }

    /// The guaranteed queues: backlog per next hop (events, bytes, age of the oldest) and the
    /// store's use of its quota. `null` without a store.
    pub fn backlog(&self) -> Value {
        match &self.inner.outbox {
            Some(o) => o.view(),
            None => Value::Null,
        }
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
            ] {
                metrics::counter!(name, "peer" => l.peer.to_string()).absolute(g(value));
            }
            metrics::gauge!("meshgate_link_rtt_seconds", "peer" => l.peer.to_string())
                .set(g(&s.rtt_us) as f64 / 1e6);
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
