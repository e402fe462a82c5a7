//! Records handed to librdkafka by topic handle, with the partition chosen here.
//!
//! rdkafka's `send` names the topic of every record: librdkafka then looks the topic up under
//! its client-wide write lock, and its sticky partitioner reads the clock and checks the
//! partition's broker, all per record. Measured on MQTT -> Kafka (`perf record` of the node,
//! 500,000 records): a third of `rd_kafka_producev`, 6 % of the node's CPU. This module keeps
//! one librdkafka topic handle per Kafka topic and chooses the partition itself, as
//! librdkafka's partitioners would:
//!
//! - a record without a key (or with an empty key under the default `consistent_random`)
//!   goes to the sink's sticky partition, which moves on once per batch (librdkafka's sticky
//!   partitioner moves on every `sticky.partitioning.linger.ms`);
//! - a keyed record goes where the configured partitioner (`partitioner`, default
//!   `consistent_random`, i.e. CRC32 of the key) puts it: this calls librdkafka's own
//!   partitioner function, so keys land where every other librdkafka producer puts them.
//!
//! The partition count comes from metadata fetched off the sink's thread, again every
//! [`REFRESH`]. Until it is known (or with a partitioner this module does not know) records
//! go unassigned and librdkafka partitions them as before.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use meshgate_proto::Header;
use rdkafka::bindings as rd;
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};

use crate::sink::SinkCtx;

/// How often a topic's partition count is fetched again (librdkafka's own topic metadata
/// refresh defaults to 5 minutes).
const REFRESH: Duration = Duration::from_secs(30);
/// After a failed fetch: the next try.
const RETRY: Duration = Duration::from_secs(2);
/// Longest metadata round trip waited for (on a blocking thread, not the sink's).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's "unassigned partition": its partitioner chooses.
const PARTITION_UA: i32 = -1;

/// A librdkafka partitioner function for keyed records.
type PartitionFn = unsafe extern "C" fn(
    *const rd::rd_kafka_topic_t,
    *const c_void,
    usize,
    i32,
    *mut c_void,
    *mut c_void,
) -> i32;

/// The partitioner named by librdkafka's `partitioner` property (`None` when absent: the
/// default), if this module can apply it; whether it sends empty keys to the sticky partition.
pub(crate) fn partitioner(name: Option<&str>) -> Option<(PartitionFn, bool)> {
    Some(match name.unwrap_or("consistent_random") {
        "consistent_random" => (rd::rd_kafka_msg_partitioner_consistent_random, true),
        "consistent" => (rd::rd_kafka_msg_partitioner_consistent, false),
        "murmur2_random" => (rd::rd_kafka_msg_partitioner_murmur2_random, false),
        "murmur2" => (rd::rd_kafka_msg_partitioner_murmur2, false),
        "fnv1a_random" => (rd::rd_kafka_msg_partitioner_fnv1a_random, false),
        "fnv1a" => (rd::rd_kafka_msg_partitioner_fnv1a, false),
        // "random" and custom partitioners: librdkafka decides.
        _ => return None,
    })
}

/// One Kafka topic of a sink: librdkafka's handle and what is known of its partitions.
struct Topic {
    rkt: NonNull<rd::rd_kafka_topic_t>,
    /// Partition count from the last metadata fetch; 0 while unknown.
    partitions: Arc<AtomicI32>,
    fetching: Arc<AtomicBool>,
    next_fetch: Instant,
}

// SAFETY: librdkafka's topic handles are thread-safe; the handle holds its own reference,
// released in `drop` (before the producer is destroyed, see `SinkProducer`).
unsafe impl Send for Topic {}

impl Drop for Topic {
    fn drop(&mut self) {
        // SAFETY: the reference taken by `rd_kafka_topic_new`, released once.
        unsafe { rd::rd_kafka_topic_destroy(self.rkt.as_ptr()) };
    }
}

/// A sink's producer with its topic handles (dropped first: librdkafka requires every topic
/// handle destroyed before its client).
pub(crate) struct SinkProducer {
    topics: HashMap<String, Topic>,
    /// Shared with metadata fetches in flight.
    producer: Arc<ThreadedProducer<SinkCtx>>,
    partitioner: Option<(PartitionFn, bool)>,
    /// The sticky partition of records without a key: this counter modulo the count.
    sticky: u32,
    /// When the current batch began (the clock is read once per batch).
    batch_start: Instant,
}

/// A record for [`SinkProducer::send`].
pub(crate) struct Record<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    /// Milliseconds since the epoch; 0: now.
    pub timestamp_ms: i64,
    pub headers: &'a [Header],
    /// One more header after `headers` (the origin).
    pub extra_header: (&'a str, &'a [u8]),
    /// The delivery report's opaque (the batch number).
    pub opaque: usize,
}

impl SinkProducer {
    pub(crate) fn new(
        producer: ThreadedProducer<SinkCtx>,
        partitioner: Option<(PartitionFn, bool)>,
    ) -> Self {
        Self {
            topics: HashMap::new(),
            producer: Arc::new(producer),
            partitioner,
            // Start somewhere else than every other sink.
            sticky: std::process::id().wrapping_mul(0x9E37_79B9),
            batch_start: Instant::now(),
        }
    }

    pub(crate) fn producer(&self) -> &ThreadedProducer<SinkCtx> {
        &self.producer
    }

    /// Moves the sticky partition on and reads the clock (once per batch).
    pub(crate) fn next_batch(&mut self) {
        self.sticky = self.sticky.wrapping_add(1);
        self.batch_start = Instant::now();
    }

    /// Hands one record to librdkafka (copied). On an error the record was not taken.
    pub(crate) fn send(&mut self, r: &Record<'_>) -> Result<(), RDKafkaErrorCode> {
        let Some(topic) = self.topics.get_mut(r.topic) else {
            let topic = self.open(r.topic)?;
            self.topics.insert(r.topic.to_string(), topic);
            return self.send(r);
        };
        if topic.next_fetch <= self.batch_start && !topic.fetching.swap(true, Ordering::AcqRel) {
            let count = topic.partitions.load(Ordering::Relaxed);
            topic.next_fetch = self.batch_start + if count > 0 { REFRESH } else { RETRY };
            fetch_partitions(
                self.producer.clone(),
                r.topic.to_string(),
                topic.partitions.clone(),
                topic.fetching.clone(),
            );
        }
        let count = topic.partitions.load(Ordering::Relaxed);
        let partition = match (self.partitioner, r.key) {
            (Some(_), _) if count <= 0 => PARTITION_UA,
            (None, _) => PARTITION_UA,
            // librdkafka's condition for its sticky partitioner.
            (Some((f, empty_sticky)), Some(k)) if !(empty_sticky && k.is_empty()) => {
                // SAFETY: librdkafka's partitioner functions read the key and, for an empty
                // key of the `_random` ones, the topic handle (valid while `topic` lives).
                unsafe {
                    f(
                        topic.rkt.as_ptr(),
                        k.as_ptr().cast(),
                        k.len(),
                        count,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                }
            }
            (Some(_), _) => (self.sticky % count as u32) as i32,
        };
        let err = produce(self.producer.client().native_ptr(), topic.rkt, partition, r);
        match err {
            RDKafkaErrorCode::NoError => Ok(()),
            RDKafkaErrorCode::UnknownPartition if partition != PARTITION_UA => {
                // Fewer partitions than last fetched (the topic was made again): let
                // librdkafka choose until the count is fetched again.
                topic.partitions.store(0, Ordering::Relaxed);
                topic.next_fetch = self.batch_start;
                self.send(r)
            }
            e => Err(e),
        }
    }

    fn open(&self, name: &str) -> Result<Topic, RDKafkaErrorCode> {
        let c = CString::new(name).map_err(|_| RDKafkaErrorCode::InvalidTopic)?;
        // SAFETY: a valid client and NUL-terminated name; a null configuration takes the
        // producer's default topic configuration.
        let rkt = unsafe {
            rd::rd_kafka_topic_new(
                self.producer.client().native_ptr(),
                c.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        let rkt = NonNull::new(rkt).ok_or(RDKafkaErrorCode::InvalidTopic)?;
        Ok(Topic {
            rkt,
            partitions: Arc::new(AtomicI32::new(0)),
            fetching: Arc::new(AtomicBool::new(false)),
            next_fetch: self.batch_start,
        })
    }
}

/// Fetches `topic`'s partition count on a blocking thread into `partitions` (left as it is
/// when the fetch fails), then clears `fetching`.
fn fetch_partitions(
    producer: Arc<ThreadedProducer<SinkCtx>>,
    topic: String,
    partitions: Arc<AtomicI32>,
    fetching: Arc<AtomicBool>,
) {
    let flag = fetching.clone();
    let fetch = move || {
        if let Ok(md) = producer
            .client()
            .fetch_metadata(Some(&topic), FETCH_TIMEOUT)
            && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && t.error().is_none()
            && !t.partitions().is_empty()
        {
            partitions.store(t.partitions().len() as i32, Ordering::Relaxed);
        }
        fetching.store(false, Ordering::Release);
    };
    // A thread of its own, not the runtime's blocking pool: a fetch waiting on a cluster that
    // is away must not hold up the sink's runtime when the node stops.
    let spawned = std::thread::Builder::new()
        .name("meshgate-kafka-md".into())
        .spawn(fetch);
    if spawned.is_err() {
        // Without the count librdkafka keeps partitioning; the next batch tries again.
        flag.store(false, Ordering::Release);
    }
}

/// `rd_kafka_producev` of one record with a topic handle and an explicit partition (or
/// `RD_KAFKA_PARTITION_UA`), the payload, key and header values copied.
fn produce(
    rk: *mut rd::rd_kafka_t,
    rkt: NonNull<rd::rd_kafka_topic_t>,
    partition: i32,
    r: &Record<'_>,
) -> RDKafkaErrorCode {
    use rd::rd_kafka_vtype_t::*;
    // SAFETY: a new header list, filled with copies of the names and values (lengths given,
    // no NUL terminators needed). librdkafka owns it once produced; on an error it is ours to
    // destroy.
    let headers = unsafe {
        let h = rd::rd_kafka_headers_new(r.headers.len() + 1);
        let all = r.headers.iter().map(|h| (h.name.as_str(), &h.value[..]));
        for (name, value) in all.chain([r.extra_header]) {
            rd::rd_kafka_header_add(
                h,
                name.as_ptr().cast(),
                name.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            );
        }
        h
    };
    let (key, key_len) = match r.key {
        Some(k) => (k.as_ptr() as *mut c_void, k.len()),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: every pointer is valid for the call and librdkafka copies what it keeps
    // (RD_KAFKA_MSG_F_COPY); the argument types are the ones each RD_KAFKA_VTYPE_* reads; the
    // topic handle belongs to `rk`.
    let err: RDKafkaRespErr = unsafe {
        rd::rd_kafka_producev(
            rk,
            RD_KAFKA_VTYPE_RKT,
            rkt.as_ptr(),
            RD_KAFKA_VTYPE_PARTITION,
            partition,
            RD_KAFKA_VTYPE_MSGFLAGS,
            rd::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            r.payload.as_ptr() as *mut c_void,
            r.payload.len(),
            RD_KAFKA_VTYPE_KEY,
            key,
            key_len,
            RD_KAFKA_VTYPE_OPAQUE,
            r.opaque as *mut c_void,
            RD_KAFKA_VTYPE_TIMESTAMP,
            r.timestamp_ms,
            RD_KAFKA_VTYPE_HEADERS,
            headers,
            RD_KAFKA_VTYPE_END,
        )
    };
    let code = RDKafkaErrorCode::from(err);
    if code != RDKafkaErrorCode::NoError {
        // SAFETY: not produced, so still ours.
        unsafe { rd::rd_kafka_headers_destroy(headers) };
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_partitioners_are_applied_and_others_left_to_librdkafka() {
        let (f, empty_sticky) = partitioner(None).expect("the default");
        assert!(
            empty_sticky,
            "consistent_random sends empty keys to the sticky partition"
        );
        for (name, sticky) in [("consistent", false), ("murmur2_random", false)] {
            assert_eq!(partitioner(Some(name)).map(|p| p.1), Some(sticky), "{name}");
        }
        assert!(partitioner(Some("random")).is_none());
        assert!(partitioner(Some("my_own")).is_none());
        // The default is CRC32 of the key modulo the count, as in every librdkafka client:
        // the same key, the same partition; a key's partition is below the count.
        let p = |key: &[u8], n: i32| unsafe {
            f(
                std::ptr::null(),
                key.as_ptr().cast(),
                key.len(),
                n,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let crc = |key: &[u8]| {
            // CRC-32 (IEEE), as zlib computes it.
            let mut c = !0u32;
            for b in key {
                c ^= u32::from(*b);
                for _ in 0..8 {
                    c = if c & 1 == 1 {
                        (c >> 1) ^ 0xEDB8_8320
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        };
        for key in [&b"order-1"[..], b"order-2", b"x", b"\x00\xff"] {
            assert_eq!(p(key, 12), (crc(key) % 12) as i32, "{key:?}");
            assert_eq!(p(key, 12), p(key, 12));
        }
    }
}
