//! Metering for chargeback: messages and bytes per app id and topic, produced, delivered and
//! carried over each mesh link, tallied where the events pass and handed to the node's
//! [`Meter`] in batches.
//!
//! A [`LocalMeter`] lives with one publisher (or one link writer): adding a copy hashes the
//! topic and app and updates a slot in place, allocating only the first time a (app, topic)
//! pair is seen in the batch. The node's meter gets the whole batch on flush.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::FixedState;

/// What a metered copy was.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Metered {
    /// Published by the app (accepted by this node).
    Produced,
    /// Handed to a subscriber of the app on this node.
    Delivered,
    /// Sent to the mesh peer named, on behalf of the publishing app.
    Link(Arc<str>),
}

/// One tally: `messages` copies of `bytes` payload bytes in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterEntry {
    /// The authenticated app id (`None`: an anonymous client).
    pub app: Option<Arc<str>>,
    /// The event topic.
    pub topic: Box<str>,
    /// What happened to the copies.
    pub what: Metered,
    /// Copies.
    pub messages: u64,
    /// Bytes: payload bytes for produced and delivered copies, encoded event bytes on links.
    pub bytes: u64,
}

/// Receives tallies (the node's chargeback store).
pub trait Meter: Send + Sync + 'static {
    /// Takes the tallies of a batch; `entries` is left empty for reuse.
    fn record(&self, entries: &mut Vec<MeterEntry>);
}

/// Tallies of one publisher or link writer between two flushes.
#[derive(Default)]
pub struct LocalMeter {
    slots: HashMap<u64, Vec<MeterEntry>>,
    len: usize,
    out: Vec<MeterEntry>,
}

impl LocalMeter {
    /// Counts one copy of `bytes` bytes on `topic` for `app`.
    pub fn add(&mut self, app: Option<&str>, topic: &str, what: &Metered, bytes: u64) {
        let mut h = FixedState::default().build_hasher();
        topic.hash(&mut h);
        app.hash(&mut h);
        what.hash(&mut h);
        let slot = self.slots.entry(h.finish()).or_default();
        match slot
            .iter_mut()
            .find(|e| &*e.topic == topic && e.app.as_deref() == app && e.what == *what)
        {
            Some(e) => {
                e.messages += 1;
                e.bytes += bytes;
            }
            None => {
                self.len += 1;
                slot.push(MeterEntry {
                    app: app.map(Arc::from),
                    topic: topic.into(),
                    what: what.clone(),
                    messages: 1,
                    bytes,
                });
            }
        }
    }

    /// Whether nothing was counted since the last flush.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands everything counted to `meter`.
    pub fn flush(&mut self, meter: &dyn Meter) {
        if self.len == 0 {
            return;
        }
        for (_, mut v) in self.slots.drain() {
            self.out.append(&mut v);
        }
        self.len = 0;
        meter.record(&mut self.out);
        self.out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Sum(Mutex<Vec<MeterEntry>>);

    impl Meter for Sum {
        fn record(&self, entries: &mut Vec<MeterEntry>) {
            self.0.lock().append(entries);
        }
    }

    #[test]
    fn copies_add_up_per_app_topic_and_kind() {
        let (a, b) = ("acme.a", "acme.b");
        let mut m = LocalMeter::default();
        for _ in 0..3 {
            m.add(Some(a), "t/1", &Metered::Produced, 10);
        }
        m.add(Some(b), "t/1", &Metered::Produced, 5);
        m.add(Some(a), "t/1", &Metered::Delivered, 10);
        m.add(None, "t/2", &Metered::Link("n2".into()), 70);
        m.add(None, "t/2", &Metered::Link("n2".into()), 30);
        let sum = Sum::default();
        m.flush(&sum);
        assert!(m.is_empty());
        let mut got = sum.0.lock().clone();
        got.sort_by(|x, y| (&x.topic, &x.app, x.bytes).cmp(&(&y.topic, &y.app, y.bytes)));
        let row = |app: Option<&str>, t: &str, what: Metered, messages, bytes| MeterEntry {
            app: app.map(Arc::from),
            topic: t.into(),
            what,
            messages,
            bytes,
        };
        assert_eq!(
            got,
            vec![
                row(Some(a), "t/1", Metered::Delivered, 1, 10),
                row(Some(a), "t/1", Metered::Produced, 3, 30),
                row(Some(b), "t/1", Metered::Produced, 1, 5),
                row(None, "t/2", Metered::Link("n2".into()), 2, 100),
            ]
        );
        // Flushing again hands nothing.
        m.flush(&sum);
        assert_eq!(sum.0.lock().len(), 4);
    }
}
