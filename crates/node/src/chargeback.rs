//! Chargeback: every app's traffic as the router and the mesh meter it, kept per minute for
//! `GET /v1/chargeback?from=&to=` (per topic, JSON or CSV) and exported to Prometheus with
//! bounded labels (app ids, owners, peers; never topics or client ids).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use meshgate_api::{ChargebackRow, ChargebackView};
use meshgate_broker::{Meter, MeterEntry, Metered};
use parking_lot::Mutex;

use crate::governance::Governance;

/// The label of traffic without an authenticated app id.
const ANONYMOUS: &str = "anonymous";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    app: Option<Arc<str>>,
    topic: Box<str>,
    what: Metered,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    messages: u64,
    bytes: u64,
}

/// Tallies per minute, kept for `retention_minutes`.
pub struct Chargeback {
    governance: Option<Arc<Governance>>,
    retention_minutes: u64,
    minutes: Mutex<BTreeMap<u64, HashMap<Key, Counts>>>,
}

impl Chargeback {
    /// A store that resolves topic owners with `governance` (if any) and keeps
    /// `retention_minutes` of history.
    pub fn new(governance: Option<Arc<Governance>>, retention_minutes: u64) -> Self {
        Self {
            governance,
            retention_minutes: retention_minutes.max(1),
            minutes: Mutex::new(BTreeMap::new()),
        }
    }

    fn owner(&self, topic: &str) -> Option<String> {
        let g = self.governance.as_ref()?;
        g.catalog().owner_of(topic).map(|o| o.as_str().to_string())
    }

    /// The tallies of minutes in `[from, to)` (unix seconds; open ends when `None`), summed per
    /// app, owner, topic, kind and peer, largest byte counts first.
    pub fn rows(&self, from: Option<u64>, to: Option<u64>) -> ChargebackView {
        let lo = from.map_or(0, |f| f / 60);
        let hi = to.map_or(u64::MAX, |t| t.div_ceil(60));
        let mut sum: HashMap<Key, Counts> = HashMap::new();
        {
            let minutes = self.minutes.lock();
            for (_, m) in minutes.range(lo..hi) {
                for (k, c) in m {
                    let s = sum.entry(k.clone()).or_default();
                    s.messages += c.messages;
                    s.bytes += c.bytes;
                }
            }
        }
        let mut rows: Vec<(Key, Counts)> = sum.into_iter().collect();
        rows.sort_by(|a, b| {
            b.1.bytes
                .cmp(&a.1.bytes)
                .then_with(|| a.0.topic.cmp(&b.0.topic))
                .then_with(|| a.0.app.cmp(&b.0.app))
        });
        let rows = rows
            .into_iter()
            .map(|(k, c)| {
                let (kind, peer) = match &k.what {
                    Metered::Produced => ("produced", None),
                    Metered::Delivered => ("delivered", None),
                    Metered::Link(p) => ("link", Some(p.to_string())),
                };
                ChargebackRow {
                    app: k.app.as_deref().unwrap_or(ANONYMOUS).to_string(),
                    owner: self.owner(&k.topic),
                    topic: k.topic.to_string(),
                    kind: kind.to_string(),
                    peer,
                    messages: c.messages,
                    bytes: c.bytes,
                }
            })
            .collect();
        ChargebackView { from, to, rows }
    }
}

impl Chargeback {
    /// (app, topic, messages) produced since `from` (unix seconds).
    pub fn produced_since(&self, from: u64) -> Vec<(String, String, u64)> {
        let mut sum: HashMap<(String, Box<str>), u64> = HashMap::new();
        let minutes = self.minutes.lock();
        for (_, m) in minutes.range(from / 60..) {
            for (k, c) in m {
                if k.what == Metered::Produced {
                    let app = k.app.as_deref().unwrap_or(ANONYMOUS).to_string();
                    *sum.entry((app, k.topic.clone())).or_default() += c.messages;
                }
            }
        }
        sum.into_iter()
            .map(|((a, t), n)| (a, t.into_string(), n))
            .collect()
    }
}

impl Meter for Chargeback {
    fn record(&self, entries: &mut Vec<MeterEntry>) {
        let minute = meshgate_broker::now_ms() / 60_000;
        for e in entries.iter() {
            let app = e.app.as_deref().unwrap_or(ANONYMOUS).to_string();
            let owner = self.owner(&e.topic).unwrap_or_else(|| "none".into());
            let (messages, bytes) = match &e.what {
                Metered::Produced => (
                    metrics::counter!("meshgate_chargeback_produced_messages_total", "app" => app.clone(), "owner" => owner.clone()),
                    metrics::counter!("meshgate_chargeback_produced_bytes_total", "app" => app, "owner" => owner),
                ),
                Metered::Delivered => (
                    metrics::counter!("meshgate_chargeback_delivered_messages_total", "app" => app.clone(), "owner" => owner.clone()),
                    metrics::counter!("meshgate_chargeback_delivered_bytes_total", "app" => app, "owner" => owner),
                ),
                Metered::Link(peer) => (
                    metrics::counter!("meshgate_chargeback_link_messages_total", "app" => app.clone(), "peer" => peer.to_string()),
                    metrics::counter!("meshgate_chargeback_link_bytes_total", "app" => app, "peer" => peer.to_string()),
                ),
            };
            messages.increment(e.messages);
            bytes.increment(e.bytes);
        }
        let mut minutes = self.minutes.lock();
        let m = minutes.entry(minute).or_default();
        for e in entries.drain(..) {
            let c = m
                .entry(Key {
                    app: e.app,
                    topic: e.topic,
                    what: e.what,
                })
                .or_default();
            c.messages += e.messages;
            c.bytes += e.bytes;
        }
        // Forget what is older than the retention.
        let keep_from = minute.saturating_sub(self.retention_minutes);
        while let Some((&oldest, _)) = minutes.first_key_value() {
            if oldest >= keep_from {
                break;
            }
            minutes.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        app: Option<&str>,
        topic: &str,
        what: Metered,
        messages: u64,
        bytes: u64,
    ) -> MeterEntry {
        MeterEntry {
            app: app.map(Arc::from),
            topic: topic.into(),
            what,
            messages,
            bytes,
        }
    }

    #[test]
    fn batches_sum_per_key_and_render_as_csv() {
        let c = Chargeback::new(None, 60);
        let mut batch = vec![
            entry(Some("a"), "t/1", Metered::Produced, 2, 20),
            entry(None, "t/\"x,y\"", Metered::Delivered, 1, 5),
        ];
        c.record(&mut batch);
        assert!(batch.is_empty());
        c.record(&mut vec![entry(Some("a"), "t/1", Metered::Produced, 3, 30)]);
        c.record(&mut vec![entry(
            Some("a"),
            "t/1",
            Metered::Link("n2".into()),
            5,
            700,
        )]);
        let v = c.rows(None, None);
        let rows = &v.rows;
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].kind, "link");
        assert_eq!(rows[0].peer.as_deref(), Some("n2"));
        assert_eq!((rows[1].messages, rows[1].bytes), (5, 50));
        assert_eq!(rows[2].app, "anonymous");
        let text = v.to_csv();
        assert_eq!(
            text,
            "app,owner,topic,kind,peer,messages,bytes\n\
             a,,t/1,link,n2,5,700\n\
             a,,t/1,produced,,5,50\n\
             anonymous,,\"t/\"\"x,y\"\"\",delivered,,1,5\n"
        );
        // A window before anything was recorded is empty.
        assert!(c.rows(Some(0), Some(60)).rows.is_empty());
    }
}
