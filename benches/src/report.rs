//! The one JSON line that a `loadgen run` prints, and that `loadgen summarize` reads back.

use serde::{Deserialize, Serialize};

use crate::client::Proto;

/// Results of one run of one workload against one broker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// Broker name given with `--label` (the runner script passes it).
    pub label: String,
    /// Protocol spoken.
    pub proto: Option<Proto>,
    /// Workload name (`one-to-one`, `fan-out`, `many-subs`, `latency`).
    pub workload: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Subscriptions in total.
    pub subscriptions: usize,
    /// Length of the measured window in seconds (after the warm-up).
    pub seconds: f64,
    /// Messages published in the measured window.
    pub sent: u64,
    /// Messages received by subscribers in the measured window (summed over subscribers).
    pub delivered: u64,
    /// `sent / seconds`.
    pub sent_per_s: f64,
    /// `delivered / seconds`: the headline throughput.
    pub delivered_per_s: f64,
    /// Messages published over the whole run (warm-up included).
    pub sent_total: u64,
    /// Messages received over the whole run, after draining.
    pub delivered_total: u64,
    /// Copies that never arrived: `sent_total * subscribers - delivered_total`.
    pub lost: u64,
    /// Times the publisher's flow-control window stayed full with no delivery for 200 ms: the
    /// broker dropped the window's tail, or it is stalled.
    pub stalls: u64,
    /// Messages delivered with a payload of the wrong size (should be 0).
    pub malformed: u64,
    /// Flow-control window: messages allowed in flight between publisher and slowest subscriber.
    pub window: u64,
    /// Open-loop publish rate for the latency workload (messages per second).
    pub rate: Option<u64>,
    /// Broker CPU seconds (user + system) in the measured window, if `--broker-pid` was given.
    pub broker_cpu_s: Option<f64>,
    /// CPU seconds of each broker process when several were given (e.g. the two nodes of a
    /// mesh), in `--broker-pid` order; their sum is `broker_cpu_s`.
    pub broker_cpu_each_s: Option<Vec<f64>>,
    /// True when the publisher and the subscribers were connected to different brokers.
    pub cross_node: bool,
    /// Seconds until the first probe crossed from the publisher's broker to the subscribers'
    /// (only when they differ).
    pub ready_s: Option<f64>,
    /// Delivered messages per broker CPU second.
    pub delivered_per_broker_cpu_s: Option<f64>,
    /// CPU seconds of the load generator itself in the measured window.
    pub loadgen_cpu_s: f64,
    /// CPU seconds that every other process on the machine used in the measured window: more
    /// than a few hundredths per second means the numbers shared the cores with other work.
    pub other_cpu_s: f64,
    /// Seconds taken to subscribe (and get every acknowledgement), for `many-subs`.
    pub subscribe_s: Option<f64>,
    /// Latency percentiles, for `latency`.
    pub latency: Option<Latency>,
    /// QoS of the workload's publishes (`qos1`: 1; absent: 0).
    pub qos: Option<u8>,
    /// Unacknowledged QoS 1 publishes allowed, at most (`qos1`).
    pub inflight: Option<u64>,
    /// Session of the QoS 1 subscriber (`qos1`).
    pub session: Option<crate::qos1::Session>,
    /// PUBACKs received in the measured window (`qos1`).
    pub acked: Option<u64>,
    /// `acked / seconds`.
    pub acked_per_s: Option<f64>,
    /// PUBACK latency: from the socket write of a QoS 1 PUBLISH to the read of its PUBACK,
    /// over the measured window (`qos1`).
    pub puback: Option<Latency>,
    /// Redeliveries: messages that arrived again after a later one (`qos1`).
    pub duplicates: u64,
    /// Publishes never acknowledged (`qos1`).
    pub unacked: u64,
    /// Something the numbers alone do not say (e.g. the broker stopped reading the publisher).
    pub note: Option<String>,
    /// Why the run failed (written by the runner script; a successful run has none).
    pub error: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Messages in the histogram.
    pub count: u64,
    /// Median, from the moment the message was written to the socket to its arrival.
    pub p50_us: f64,
    /// 99th percentile, same clock.
    pub p99_us: f64,
    /// 99.9th percentile, same clock.
    pub p999_us: f64,
    /// Maximum, same clock.
    pub max_us: f64,
    /// 99th percentile measured from the scheduled send time instead (includes the publisher's
    /// own pacing jitter; guards against coordinated omission).
    pub p99_from_schedule_us: f64,
    /// 99.9th percentile from the scheduled send time.
    pub p999_from_schedule_us: f64,
    /// Largest delay of the publisher behind its schedule.
    pub sender_max_late_us: f64,
}
