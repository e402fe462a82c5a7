//! A durable, append-only segment log: the store behind guaranteed delivery. It holds opaque byte
//! payloads under increasing `u64` sequence numbers; it never decodes them, and it contains no
//! networking code and no async runtime (call it from a dedicated thread or `spawn_blocking`).
//!
//! # On-disk format
//! A directory of segment files named by the sequence number of their first record, zero-padded to
//! 20 digits (`00000000000000000001.log`). Each record is framed as
//! `[len u32 LE][crc32 of payload u32 LE][seq u64 LE][payload]`, sequence numbers increase by one
//! within the log. A small `released` file (`[seq u64 LE][crc32 of those 8 bytes u32 LE]`, replaced
//! atomically by write-to-temp, fsync, rename, fsync of the directory) holds the first sequence number
//! not yet released. It is a file rather than something derived from the remaining segments because
//! release is finer-grained than segments, and because it keeps the next sequence number when every
//! segment has been deleted, so numbers are never reused after a restart.
//!
//! A store opened with a [`Spares`] budget ([`Store::open_with_spares`]; every journal of a
//! [`Disk`] is) renames released segments to spare files (`spare-<base>`, up to four) instead
//! of deleting them and overwrites them as its next segments: an fsync after overwriting costs about half of one after appending. Each
//! write to such a file ends with an end marker (a header of zeros), so the records of the file's
//! previous use, numbered below the new ones, are never read back.
//!
//! # Recovery
//! [`Store::open`] reads every segment in order and checks each record: its length is sane, its
//! checksum matches, and its sequence number continues the log.
//! - Damage that runs to the end of the *last* segment is a torn write: it is truncated and counted in
//!   [`RecoveryReport::truncated_bytes`]; appends continue after the last good record.
//! - Damage followed by valid records (found by scanning forward for the next record that checks),
//!   damage at the end of an earlier segment and gaps between segments are reported in
//!   [`RecoveryReport::corrupt`] (segment, offset, records lost); the store keeps everything valid
//!   and leaves the damaged files as they are. Open never panics on the content of the directory.
//! - An end marker ends a segment's records without damage; what follows it is ignored.
//! - Segments entirely below the released mark (left by a crash during [`Store::release_up_to`]) are
//!   deleted.
//!
//! # Flush policies
//! - [`FlushPolicy::EveryAppend`] (default): each [`Store::append`] or [`Store::append_batch`] is
//!   fsynced before it returns, so a record whose append returned `Ok` survives a crash or power
//!   loss. Cost: one fsync per call — use [`Store::append_batch`] for group commit.
//! - [`FlushPolicy::Interval`]: appends return once written to the OS; an fsync happens on the first
//!   append after the interval has passed, and whenever the caller calls [`Store::sync`] (it should,
//!   from its group-commit timer, and acknowledge publishers only after that). Risk: a power loss or
//!   kernel crash loses records appended since the last fsync even though their append returned `Ok`,
//!   and their sequence numbers may be reused after restart. A killed *process* loses nothing, since
//!   written data is in the OS page cache.
//!
//! # Quota
//! [`StoreConfig::max_bytes`] bounds the size of the segment files. Release frees space only when a
//! whole segment is released, so a partly released segment still counts. Spare files are not
//! counted: a [`Disk`] keeps at most a sixteenth of its quota, and at most 64 MiB, in them.
//!
//! # Why a log of our own
//! The workload is append at the tail, delete from the head, and sequential replay. A segment log
//! does each with one sequential write, one file deletion, and sequential reads; recovery is a
//! checksum scan that is easy to verify by test. sled is unmaintained; redb (B-tree) and fjall (LSM)
//! are sound but rewrite pages or compact on delete, carry features we do not use (transactions,
//! random-key lookups), and add build time. The cost of our choice is that we own the recovery code,
//! which is why it is small and tested against torn and corrupted files.

mod commit;
mod format;
mod store;

use std::path::PathBuf;
use std::time::Duration;

pub use commit::{Commit, Disk, Journal};
pub use format::MAX_PAYLOAD_BYTES;
pub use store::{Spares, Store};

/// The largest batch, in framed bytes, that one [`Store::append_batch`] accepts.
pub const MAX_BATCH_BYTES: u64 = 1 << 30;

/// When appended records are forced to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Fsync before every append or batch returns (safe; the default).
    #[default]
    EveryAppend,
    /// Fsync at most once per interval, on an append, plus whenever [`Store::sync`] is called; a
    /// power loss may lose what was appended since the last fsync.
    Interval(Duration),
}

/// How a [`Store`] is laid out and flushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// A new segment is started when the next append would make the current one larger than this
    /// (a single batch larger than this gets a segment of its own). Default 64 MiB, at most 1 GiB.
    pub segment_bytes: u64,
    /// When appends are fsynced. Default [`FlushPolicy::EveryAppend`].
    pub flush: FlushPolicy,
    /// Disk quota for all segment files; appends beyond it are refused. Default 1 GiB.
    pub max_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            flush: FlushPolicy::EveryAppend,
            max_bytes: 1 << 30,
        }
    }
}

/// What [`Store::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid records found (including released ones still in partly released segments).
    pub records: u64,
    /// Segment files kept.
    pub segments: usize,
    /// Bytes cut from the end of the last segment (a torn write).
    pub truncated_bytes: u64,
    /// Damage that lost records or could not be repaired, one line each (segment, offset, records lost).
    pub corrupt: Vec<String>,
}

/// The disk stopped after a failed fsync ([`Disk::failure`]): nothing is acknowledged from then
/// on, and guaranteed events are refused until the node restarts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the store failed: {reason}")]
pub struct Failed {
    /// What failed (the fsync's error, with the file).
    pub reason: String,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("store io error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The append would take the store beyond its quota; nothing was written.
    #[error("store quota exceeded: {used} of {max} bytes used")]
    QuotaExceeded {
        /// Bytes used now.
        used: u64,
        /// The quota.
        max: u64,
    },
    /// A payload or batch is larger than the store accepts; nothing was written.
    #[error("record or batch of {bytes} bytes is larger than the limit of {max}")]
    TooLarge {
        /// The size asked for.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The configuration cannot be used.
    #[error("invalid store config: {0}")]
    InvalidConfig(String),
    /// A record that checked at open no longer matches its checksum.
    #[error("corrupt record {seq} in {segment} at offset {offset}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Offset of the record in the file.
        offset: u64,
        /// Sequence number of the record.
        seq: u64,
    },
}
