//! Records taken from a partition's queue many at a time.
//!
//! rdkafka's stream polls librdkafka once per record, and each poll reads the clock several
//! times and takes the queue's lock (measured: a fifth of a Kafka source's CPU while draining a
//! backlog). librdkafka's batch call, `rd_kafka_consume_batch_queue`, takes up to N records
//! under one lock; rdkafka 0.39 does not wrap it, so this module does (with `produce.rs`, the
//! crate's unsafe code).
//!
//! The batch call serves every other event it meets with librdkafka's defaults (a rebalance
//! becomes an unassign, an offset commit's report aborts): it must never read the consumer's
//! own queue. It reads a partition's queue split off that one (rdkafka's
//! `split_partition_queue`), which holds only the partition's records and consumer errors
//! (both returned as messages) and version barriers (served inside the call). The source
//! awaits the first record on rdkafka's stream of that queue (which wakes the task when the
//! queue turns non-empty) and takes the rest here without waiting; both read the same queue,
//! so records keep their order.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use rdkafka::bindings as rd;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;

/// A handle on one partition's queue of fetched records.
pub(crate) struct BatchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Reused room for the message pointers of one call.
    scratch: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka's queues are thread-safe; the handle holds its own reference to the
// queue, released in `drop`.
unsafe impl Send for BatchQueue {}

impl BatchQueue {
    /// The queue of `partition` of `topic` (the one rdkafka's `split_partition_queue` split off
    /// the consumer's queue). It must not outlive the consumer: the source declares it after
    /// the consumer, so it is dropped first.
    pub(crate) fn partition<C: ConsumerContext>(
        consumer: &StreamConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the returned queue is a
        // new reference to the partition's queue (or null).
        let q = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        NonNull::new(q).map(|queue| Self {
            queue,
            scratch: Vec::new(),
        })
    }

    /// Appends up to `max` records that are already fetched to `out`, without waiting.
    pub(crate) fn take(&mut self, max: usize, out: &mut Vec<RawMessage>) {
        if max == 0 {
            return;
        }
        let ptrs = &mut self.scratch;
        ptrs.clear();
        ptrs.reserve(max);
        // SAFETY: `ptrs` has room for `max` pointers; librdkafka writes `n` of them (-1 on an
        // error, with none written) and hands their ownership to us.
        unsafe {
            let n =
                rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, ptrs.as_mut_ptr(), max);
            ptrs.set_len(n.clamp(0, max as isize) as usize);
        }
        out.extend(ptrs.drain(..).filter_map(NonNull::new).map(RawMessage));
    }
}

impl Drop for BatchQueue {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `of`.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// A record (or a consumer error) owned until dropped.
pub(crate) struct RawMessage(NonNull<rd::rd_kafka_message_t>);

// SAFETY: a message is owned by this value alone; librdkafka's messages may be read and
// destroyed on any thread.
unsafe impl Send for RawMessage {}
// SAFETY: shared only by reference within one task (a record is borrowed across the await of
// its publish); rdkafka declares its `BorrowedMessage` Sync on the same grounds.
unsafe impl Sync for RawMessage {}

impl RawMessage {
    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: valid until `drop`.
        unsafe { self.0.as_ref() }
    }

    /// The consumer error this message carries instead of a record, if any.
    pub(crate) fn error(&self) -> Option<KafkaError> {
        let code = self.raw().err;
        if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            None
        } else {
            Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(code)))
        }
    }
}

fn slice<'a>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: librdkafka's key and payload pointers are valid for their lengths while the
        // message lives; the slice borrows the message.
        Some(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
    }
}

impl Message for RawMessage {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        slice(self.raw().key, self.raw().key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        slice(self.raw().payload, self.raw().len)
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let m = self.raw();
        if m.payload.is_null() {
            None
        } else {
            // SAFETY: as `payload`, exclusively borrowed (the caller upholds the trait's
            // contract).
            Some(unsafe { std::slice::from_raw_parts_mut(m.payload as *mut u8, m.len) })
        }
    }

    fn topic(&self) -> &str {
        // SAFETY: a record's topic handle and its name live as long as the message.
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.raw().rkt)) }
            .to_str()
            .unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: reads the message's timestamp.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.0.as_ptr(), &mut kind) };
        match kind {
            _ if ts == -1 => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(ts)
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(ts)
            }
            _ => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        let mut h = std::ptr::null_mut();
        // SAFETY: librdkafka parses the headers once and keeps them with the message.
        let err = unsafe { rd::rd_kafka_message_headers(self.0.as_ptr(), &mut h) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || h.is_null() {
            return None;
        }
        // SAFETY: `BorrowedHeaders` is rdkafka's zero-sized stand-in for a native header list,
        // used by reference only (rdkafka builds its own the same way); the reference borrows
        // the message that owns the list.
        Some(unsafe { &*(h as *const BorrowedHeaders) })
    }
}

impl Drop for RawMessage {
    fn drop(&mut self) {
        // SAFETY: the message was handed to us by `rd_kafka_consume_batch_queue`.
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}
