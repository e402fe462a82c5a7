//! Counters of the router. Publishers and connections batch their increments (one atomic add per
//! read or write batch, not per event) before they reach these.

use metrics::{Counter, Gauge, counter, gauge};

/// Handles to the router's Prometheus series, registered once at start.
#[derive(Clone)]
pub struct BrokerStats {
    /// `meshgate_events_routed_total`: copies handed to subscriber mailboxes.
    pub routed: Counter,
    /// `meshgate_events_unrouted_total`: accepted events that matched no subscriber.
    pub unrouted: Counter,
    /// `meshgate_events_dropped_total{reason="queue_full"}`: a queue at its hard limit (twice
    /// its high watermark), or an offline session's at its high watermark.
    pub dropped_full: Counter,
    /// `meshgate_events_dropped_total{reason="slow_consumer"}`: for consumers declared slow
    /// under the drop policy.
    pub dropped_slow: Counter,
    /// `meshgate_events_forwarded_total`: published events sent towards other mesh nodes.
    pub forwarded: Counter,
    /// `meshgate_events_filtered_total`: copies a wildcard subscription matched but its app
    /// may not read (governance); never named to the subscriber.
    pub unreadable: Counter,
    /// `meshgate_subscriptions`: entries in the trie (local sessions and remote nodes).
    pub subscriptions: Gauge,
    /// `meshgate_retained_messages`: retained messages held.
    pub retained: Gauge,
}

impl BrokerStats {
    /// Registers the series with the installed `metrics` recorder.
    pub fn register() -> Self {
        Self {
            routed: counter!("meshgate_events_routed_total"),
            unrouted: counter!("meshgate_events_unrouted_total"),
            dropped_full: counter!("meshgate_events_dropped_total", "reason" => "queue_full"),
            dropped_slow: counter!("meshgate_events_dropped_total", "reason" => "slow_consumer"),
            forwarded: counter!("meshgate_events_forwarded_total"),
            unreadable: counter!("meshgate_events_filtered_total"),
            subscriptions: gauge!("meshgate_subscriptions"),
            retained: gauge!("meshgate_retained_messages"),
        }
    }
}

/// Per-publisher tallies, flushed into [`BrokerStats`] and the publisher's own
/// `meshgate_events_published_total{protocol}` series in batches.
#[derive(Debug, Default)]
pub(crate) struct LocalTally {
    pub published: u64,
    pub published_bytes: u64,
    pub routed: u64,
    pub unrouted: u64,
    pub dropped_full: u64,
    pub dropped_slow: u64,
    pub forwarded: u64,
    pub unreadable: u64,
}

impl LocalTally {
    pub(crate) fn flush(&mut self, s: &BrokerStats, published: &Counter, bytes: &Counter) {
        if self.published == 0
            && self.dropped_full == 0
            && self.dropped_slow == 0
            && self.routed == 0
            && self.unreadable == 0
        {
            return;
        }
        published.increment(self.published);
        bytes.increment(self.published_bytes);
        s.routed.increment(self.routed);
        s.unrouted.increment(self.unrouted);
        s.dropped_full.increment(self.dropped_full);
        s.dropped_slow.increment(self.dropped_slow);
        s.forwarded.increment(self.forwarded);
        s.unreadable.increment(self.unreadable);
        *self = Self::default();
    }
}
