//! The segment log itself: files, recovery, append, read and release.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::format::{self, Entry, HEADER_BYTES, MAX_PAYLOAD_BYTES};
use crate::{FlushPolicy, MAX_BATCH_BYTES, RecoveryReport, StoreConfig, StoreError};

const RELEASED: &str = "released";
const RELEASED_TMP: &str = "released.tmp";
const SEGMENT_EXT: &str = "log";
/// Released segment files kept for the next segments (see [`Spares`]) are named
/// `spare-<base>` (the base of the segment they were); older versions kept one, `spare`.
const SPARE: &str = "spare";
/// Most spare files one store keeps: a sink releases about ten times a second, and each
/// release may free several segments for the rolls until the next one.
const SPARES_PER_STORE: usize = 4;
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// An append-only log of payloads in segment files; see the crate documentation.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    /// Ordered by base sequence number; the last one receives appends when `active` is open.
    segments: Vec<Segment>,
    /// Append handle on the last segment, if appends may continue in it. Shared with the
    /// group commit, which fsyncs it outside the store's lock (see [`Store::take_sync`]).
    active: Option<Arc<File>>,
    /// First sequence number not released.
    first_seq: u64,
    next_seq: u64,
    used_bytes: u64,
    /// Data written to `active` and not yet fsynced.
    dirty: bool,
    /// Directory entries created and not yet fsynced.
    dir_dirty: bool,
    last_sync: Instant,
    scratch: Vec<u8>,
    /// The budget this store's spare file counts against (none: released segments are
    /// deleted).
    spares: Option<Arc<Spares>>,
    /// The spare files this store holds and their sizes, the next to reuse last.
    spare: Vec<(PathBuf, u64)>,
}

/// A budget, shared by the stores of one disk, for spare segment files.
///
/// An fsync after appending to a file also commits the file's new size and blocks through
/// the filesystem's journal; an fsync after overwriting blocks the file already has does
/// not, and costs half as much (ext4 here: 144 us against 264-297 us, with a third less CPU).
/// So a store renames a released segment to a spare file instead of deleting it (a few per
/// store, while the budget has room) and overwrites it as its next segment, as databases recycle
/// their write-ahead log files. Every write to such a file ends with an end marker
/// (`format::END`), so what is left of its previous use is never read back. Spare files are
/// not counted in a store's `used_bytes`.
#[derive(Debug)]
pub struct Spares {
    held: AtomicU64,
    max: u64,
}

impl Spares {
    /// A budget of `max_bytes` of spare files.
    pub fn new(max_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicU64::new(0),
            max: max_bytes,
        })
    }

    /// Bytes of spare files held now.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h + bytes <= self.max).then_some(h + bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    bytes: u64,
    entries: Vec<Entry>,
    /// A spare file reused: bytes of its previous use follow the records, so every write
    /// ends with an end marker.
    recycled: bool,
}

impl Segment {
    /// The sequence number after the last record of the segment.
    fn end(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.base, |e| e.seq.saturating_add(1))
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, recovering what is on disk. Released
    /// segments are deleted.
    pub fn open(
        dir: impl AsRef<Path>,
        config: StoreConfig,
    ) -> Result<(Self, RecoveryReport), StoreError> {
        Self::open_with_spares(dir, config, None)
    }

    /// [`Store::open`], keeping a released segment for reuse while `spares` has room.
    pub fn open_with_spares(
        dir: impl AsRef<Path>,
        config: StoreConfig,
        spares: Option<Arc<Spares>>,
    ) -> Result<(Self, RecoveryReport), StoreError> {
        if config.segment_bytes == 0 || config.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(StoreError::InvalidConfig(format!(
                "segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}, not {}",
                config.segment_bytes
            )));
        }
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut report = RecoveryReport::default();
        let tmp = dir.join(RELEASED_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let released = read_released(&dir, &mut report)?;
        let mut segments = Vec::new();
        let files = list_segments(&dir)?;
        let count = files.len();
        for (i, (base, path)) in files.into_iter().enumerate() {
            let name = file_name(&path);
            let prev_end = segments.last().map(Segment::end);
            if let Some(prev_end) = prev_end {
                if base < prev_end {
                    report.corrupt.push(format!(
                        "segment {name}: starts inside the previous segment (which ends before {prev_end}); ignored"
                    ));
                    continue;
                }
                let from = prev_end.max(released.unwrap_or(0));
                if base > from {
                    report.corrupt.push(format!(
                        "before segment {name}: records {from}..{base} missing ({} records lost)",
                        base - from
                    ));
                }
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let scan = format::scan(&bytes, base);
            for issue in &scan.issues {
                report.corrupt.push(format!(
                    "segment {name}: offset {}: {}; {} bytes skipped, {} records lost",
                    issue.offset, issue.reason, issue.skipped, issue.lost
                ));
            }
            let mut size = bytes.len() as u64;
            // The records end at damage (`tail`) or at an end marker (`end`, not damage).
            if let Some(end) = scan.tail.map(|t| t.0).or(scan.end) {
                if i + 1 == count {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    file.set_len(end as u64).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                    if scan.end.is_none() {
                        report.truncated_bytes += size - end as u64;
                    }
                    size = end as u64;
                } else if let Some((off, reason)) = scan.tail {
                    report.corrupt.push(format!(
                        "segment {name}: offset {off}: {reason}; the remaining {} bytes are unreadable",
                        size - off as u64
                    ));
                }
            }
            report.records += scan.entries.len() as u64;
            segments.push(Segment {
                base,
                path,
                bytes: size,
                entries: scan.entries,
                recycled: false,
            });
        }

        let log_start = segments
            .first()
            .map_or(1, |s| s.entries.first().map_or(s.base, |e| e.seq));
        let log_end = segments.last().map_or(1, Segment::end);
        let next_seq = log_end.max(released.unwrap_or(1)).max(1);
        let first_seq = released.unwrap_or(log_start).clamp(1, next_seq);

        let mut store = Self {
            dir,
            config,
            segments,
            active: None,
            first_seq,
            next_seq,
            used_bytes: 0,
            dirty: false,
            dir_dirty: false,
            last_sync: Instant::now(),
            scratch: Vec::new(),
            spares,
            spare: Vec::new(),
        };
        for (path, bytes) in list_spares(&store.dir)? {
            if store.spare.len() < SPARES_PER_STORE
                && store.spares.as_ref().is_some_and(|b| b.take(bytes))
            {
                store.spare.push((path, bytes));
            } else {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        store.delete_released_segments()?;
        // An empty last segment that does not start at the next sequence number holds nothing.
        if let Some(last) = store.segments.last()
            && last.entries.is_empty()
            && last.base != next_seq
        {
            let path = last.path.clone();
            fs::remove_file(&path).map_err(io_err(&path))?;
            store.segments.pop();
        }
        if let Some(last) = store.segments.last()
            && last.end() == next_seq
        {
            let file = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(io_err(&last.path))?;
            store.active = Some(Arc::new(file));
        }
        store.used_bytes = store.segments.iter().map(|s| s.bytes).sum();
        report.segments = store.segments.len();
        Ok((store, report))
    }

    /// Appends one payload and returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, StoreError> {
        self.append_batch(&[payload]).map(|r| r.start)
    }

    /// Appends payloads with one write and at most one fsync of the segment (group commit), and
    /// returns their sequence numbers. Starting a new segment adds an fsync of the directory.
    /// All or nothing for quota and size checks; on an IO error see [`Store::sync`].
    pub fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<Range<u64>, StoreError> {
        let start = self.next_seq;
        if payloads.is_empty() {
            return Ok(start..start);
        }
        let mut total = 0u64;
        for p in payloads {
            if p.len() > MAX_PAYLOAD_BYTES {
                let max = MAX_PAYLOAD_BYTES as u64;
                return Err(StoreError::TooLarge {
                    bytes: p.len() as u64,
                    max,
                });
            }
            total += (HEADER_BYTES + p.len()) as u64;
        }
        if total > MAX_BATCH_BYTES {
            return Err(StoreError::TooLarge {
                bytes: total,
                max: MAX_BATCH_BYTES,
            });
        }
        if self.used_bytes + total > self.config.max_bytes {
            return Err(StoreError::QuotaExceeded {
                used: self.used_bytes,
                max: self.config.max_bytes,
            });
        }
        let fits = self
            .segments
            .last()
            .is_some_and(|s| s.bytes == 0 || s.bytes + total <= self.config.segment_bytes);
        if self.active.is_none() || !fits {
            self.roll()?;
        }
        // Invariant: `roll` leaves an active last segment.
        let (Some(file), Some(seg)) = (self.active.as_ref(), self.segments.last_mut()) else {
            unreachable!("roll opens an active segment");
        };
        self.scratch.clear();
        let mut entries = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let seq = start + i as u64;
            // Segments stay under 2 GiB (segment_bytes and batch limits), so offsets fit in u32.
            let off = (seg.bytes + self.scratch.len() as u64) as u32;
            entries.push(Entry {
                seq,
                off,
                len: p.len() as u32,
            });
            format::encode(&mut self.scratch, seq, p);
        }
        if seg.recycled {
            // Overwritten by the next write; ends the records at recovery until then.
            self.scratch.extend_from_slice(&format::END);
        }
        // At the segment's end, not the file's: a recycled file is longer.
        if let Err(e) = file.write_all_at(&self.scratch, seg.bytes) {
            // Undo a partial write; if that fails too, stop appending to this file: recovery will
            // report its damaged tail, and no record is lost.
            if file.set_len(seg.bytes).is_err() {
                self.active = None;
            }
            return Err(StoreError::Io {
                path: seg.path.clone(),
                source: e,
            });
        }
        seg.bytes += total;
        seg.entries.extend(entries);
        self.used_bytes += total;
        self.next_seq = start + payloads.len() as u64;
        self.dirty = true;
        let due = match self.config.flush {
            FlushPolicy::EveryAppend => true,
            FlushPolicy::Interval(every) => self.last_sync.elapsed() >= every,
        };
        if due {
            self.sync()?;
        }
        Ok(start..self.next_seq)
    }

    /// Forces everything appended so far to stable storage.
    ///
    /// On error the records stay in the log (they may be replayed) but the caller must not treat
    /// them as durable; later appends go to a new segment, because after a failed fsync the state
    /// of the old file's cached pages is unknown.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            if let (Some(file), Some(seg)) = (&self.active, self.segments.last())
                && let Err(e) = file.sync_data()
            {
                self.active = None;
                return Err(StoreError::Io {
                    path: seg.path.clone(),
                    source: e,
                });
            }
            self.dirty = false;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// For group commit outside the store's lock: takes the "written, not fsynced" state and
    /// returns a handle on the active segment for the caller to `sync_data` (covering every append
    /// so far, since a new segment is started only after the previous one was fsynced), or `None`
    /// if nothing is pending. Fsyncs the directory first if a segment was created.
    pub fn take_sync(&mut self) -> Result<Option<Arc<File>>, StoreError> {
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        if !self.dirty {
            return Ok(None);
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(self.active.clone())
    }

    /// Up to `max_records` records from sequence number `seq` on (or from [`Store::first_seq`] if
    /// `seq` is lower), in order. Sequence numbers lost to corruption are skipped.
    pub fn read_from(
        &self,
        seq: u64,
        max_records: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut from = seq.max(self.first_seq);
        let mut out = Vec::new();
        let first_seg = self.segments.partition_point(|s| s.end() <= from);
        for seg in &self.segments[first_seg..] {
            if out.len() >= max_records {
                break;
            }
            let skip = seg.entries.partition_point(|e| e.seq < from);
            let take = (max_records - out.len()).min(seg.entries.len() - skip);
            let wanted = &seg.entries[skip..skip + take];
            let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else {
                continue;
            };
            let mut buf = vec![0; (last.end() - u64::from(first.off)) as usize];
            let mut file = File::open(&seg.path).map_err(io_err(&seg.path))?;
            file.seek(SeekFrom::Start(u64::from(first.off)))
                .map_err(io_err(&seg.path))?;
            file.read_exact(&mut buf).map_err(io_err(&seg.path))?;
            for e in wanted {
                let at = (e.off - first.off) as usize;
                match format::parse(&buf[at..]) {
                    Ok((s, len)) if s == e.seq && len == e.len => {
                        let payload = &buf[at + HEADER_BYTES..at + HEADER_BYTES + len as usize];
                        out.push((e.seq, payload.to_vec()));
                    }
                    _ => {
                        let offset = u64::from(e.off);
                        return Err(StoreError::Corrupt {
                            segment: seg.path.clone(),
                            offset,
                            seq: e.seq,
                        });
                    }
                }
            }
            from = last.seq + 1;
        }
        Ok(out)
    }

    /// Marks every record up to and including `seq` as acknowledged downstream, persists that mark,
    /// and deletes the segments whose records are all released. Lower marks than the current one are
    /// ignored. Each call that moves the mark costs a file write, an fsync and a rename: release in
    /// batches (for example on the acknowledgement timer), not per record.
    pub fn release_up_to(&mut self, seq: u64) -> Result<(), StoreError> {
        let Some(mark) = self.release_mark(seq) else {
            return Ok(());
        };
        persist_release(&self.dir, mark)?;
        self.apply_release(mark)
    }

    /// The mark [`Store::release_up_to`]`(seq)` persists: the first sequence number it leaves
    /// unreleased, or `None` if it releases nothing new.
    ///
    /// With [`persist_release`] and [`Store::apply_release`], a caller that shares the store
    /// behind a lock writes the mark (two fsyncs) without holding that lock, as the disk's
    /// journals do.
    pub(crate) fn release_mark(&self, seq: u64) -> Option<u64> {
        let mark = seq.saturating_add(1).min(self.next_seq);
        (mark > self.first_seq).then_some(mark)
    }

    /// Releases up to `mark` once [`persist_release`] wrote it: deletes (or keeps as the spare)
    /// the segments below it. A mark at or below the current one changes nothing.
    pub(crate) fn apply_release(&mut self, mark: u64) -> Result<(), StoreError> {
        if mark <= self.first_seq {
            return Ok(());
        }
        self.first_seq = mark.min(self.next_seq);
        self.delete_released_segments()
    }

    /// The directory of this store.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first sequence number not released (equal to [`Store::next_seq`] when nothing is held).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of all segment files, the figure the quota applies to.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Records held and not released.
    pub fn len(&self) -> u64 {
        let first = self.first_seq;
        let count = |s: &Segment| s.entries.len() - s.entries.partition_point(|e| e.seq < first);
        self.segments.iter().map(|s| count(s) as u64).sum()
    }

    /// Whether no unreleased record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the current segment (fsyncing it) and starts a new one at `next_seq`.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        self.active = None;
        if self
            .segments
            .last()
            .is_some_and(|s| s.base == self.next_seq && s.entries.is_empty())
        {
            // An empty segment already starts here (left by a failed write or fsync): reuse its name.
            let seg = self.segments.pop();
            if let Some(seg) = seg {
                self.used_bytes -= seg.bytes;
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            }
        }
        let path = self
            .dir
            .join(format!("{:020}.{SEGMENT_EXT}", self.next_seq));
        let (file, recycled) = match self.reuse_spare(&path) {
            Some(file) => (file, true),
            None => {
                let file = OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                (file, false)
            }
        };
        self.segments.push(Segment {
            base: self.next_seq,
            path,
            bytes: 0,
            entries: Vec::new(),
            recycled,
        });
        self.active = Some(Arc::new(file));
        self.dir_dirty = true;
        Ok(())
    }

    /// Deletes segments from the head whose records are all below `first_seq`.
    fn delete_released_segments(&mut self) -> Result<(), StoreError> {
        let done = self.segments.partition_point(|s| s.end() <= self.first_seq);
        if done == 0 {
            return Ok(());
        }
        if done == self.segments.len() {
            self.active = None;
            self.dirty = false;
        }
        for seg in self.segments.drain(..done) {
            self.used_bytes = self.used_bytes.saturating_sub(seg.bytes);
            if self.spare.len() < SPARES_PER_STORE
                && let Some(budget) = &self.spares
                && let Ok(m) = fs::metadata(&seg.path)
                && budget.take(m.len())
            {
                let spare = self.dir.join(format!("{SPARE}-{}", seg.base));
                if fs::rename(&seg.path, &spare).is_ok() {
                    self.spare.push((spare, m.len()));
                    continue;
                }
                budget.give_back(m.len());
            }
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        Ok(())
    }

    /// A spare file renamed to `path` and opened for writing, if this store holds one.
    fn reuse_spare(&mut self, path: &Path) -> Option<File> {
        let (spare, bytes) = self.spare.pop()?;
        if let Some(budget) = &self.spares {
            budget.give_back(bytes);
        }
        if fs::rename(&spare, path).is_err() {
            let _ = fs::remove_file(&spare);
            return None;
        }
        // An end marker first: a crash before the first write leaves an empty segment.
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.write_all_at(&format::END, 0).map(|()| f));
        match file {
            Ok(file) => Some(file),
            Err(_) => {
                let _ = fs::remove_file(path);
                None
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort for `FlushPolicy::Interval`; a caller that needs to know calls `sync` first.
        let _ = self.sync();
        // The spare files stay for the next open of this store, which counts them again.
        if let Some(budget) = &self.spares {
            for (_, bytes) in &self.spare {
                budget.give_back(*bytes);
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Segment files in `dir`, ordered by base sequence number; other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_none_or(|e| e != SEGMENT_EXT) || !path.is_file() {
            continue;
        }
        let base = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(base) = base {
            out.push((base, path));
        }
    }
    out.sort_unstable_by_key(|(base, _)| *base);
    Ok(out)
}

/// The spare files in `dir` and their sizes.
fn list_spares(dir: &Path) -> Result<Vec<(PathBuf, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == SPARE || name.strip_prefix(SPARE).is_some_and(|r| r.starts_with('-')) {
            let path = entry.path();
            let m = entry.metadata().map_err(io_err(&path))?;
            if m.is_file() {
                out.push((path, m.len()));
            }
        }
    }
    Ok(out)
}

/// The persisted release mark; a damaged file is reported and treated as absent.
fn read_released(dir: &Path, report: &mut RecoveryReport) -> Result<Option<u64>, StoreError> {
    let path = dir.join(RELEASED);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { path, source: e }),
    };
    if bytes.len() == 12 && crc32fast::hash(&bytes[..8]).to_le_bytes() == bytes[8..12] {
        let mut seq = [0; 8];
        seq.copy_from_slice(&bytes[..8]);
        return Ok(Some(u64::from_le_bytes(seq)));
    }
    report.corrupt.push(format!(
        "{RELEASED}: damaged, ignored; released records may be replayed"
    ));
    Ok(None)
}

/// Persists the release mark of the store in `dir` (a file written, fsynced and renamed into
/// place, then the directory fsynced). Callers writing marks for one store concurrently must
/// take turns; see [`Store::release_mark`].
pub(crate) fn persist_release(dir: &Path, mark: u64) -> Result<(), StoreError> {
    let tmp = dir.join(RELEASED_TMP);
    let mut bytes = mark.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    let path = dir.join(RELEASED);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
