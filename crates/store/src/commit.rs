//! Many logs on one disk: [`Disk`] runs group commit for all of its [`Journal`]s on one thread
//! and holds the node's disk quota across them.
//!
//! An append returns a *ticket*: the commit cycle after which the record is durable. Callers
//! acknowledge their publisher once [`Disk::durable`] reaches the ticket (ticket 0 = durable
//! already). With [`Commit::Group`] every journal written during a cycle is fsynced once per cycle,
//! outside the journal's lock, so appends never wait on an fsync.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::{Failed, FlushPolicy, RecoveryReport, Spares, Store, StoreConfig, StoreError};

/// Most bytes of spare segment files (released segments kept for reuse, see [`Spares`]) the
/// journals of one disk hold together: a sixteenth of the quota, at most this.
const MAX_SPARE_BYTES: u64 = 64 << 20;

/// When appends become durable, and so when publishers are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Fsync inside every append, before it returns. Safe against power loss; one fsync per
    /// event, so the slowest.
    Always,
    /// Group commit: commit cycles start at most once per window of this length. An append
    /// after a quiet spell is fsynced at once; under load, everything written during the window
    /// (and during the previous fsync) is fsynced once per journal and acknowledged together.
    /// As safe as `Always`. Zero starts a cycle as soon as anything is written (batching
    /// whatever piles up during the previous fsync).
    Group(Duration),
    /// Acknowledge once written to the operating system; fsync in the background at this
    /// interval. Survives a killed process, but a power loss or kernel crash loses what was
    /// acknowledged since the last fsync.
    Os(Duration),
}

struct CommitState {
    /// Cycles started.
    cycle: u64,
    dirty: Vec<Arc<JournalInner>>,
}

struct DiskInner {
    commit: Commit,
    max_bytes: u64,
    used: AtomicU64,
    state: Mutex<CommitState>,
    wake: Condvar,
    done: watch::Sender<u64>,
    /// `done`'s value, for [`Disk::is_durable`] without the watch's lock (it is asked once
    /// per acknowledgement).
    durable: AtomicU64,
    sync_errors: AtomicU64,
    /// The first failed fsync. From then on no cycle completes: see [`Disk::failure`].
    failed: std::sync::OnceLock<String>,
    /// Set by [`Disk::inject_sync_failure`].
    inject_failure: AtomicBool,
    /// Commit cycles run (completed or not).
    cycles: AtomicU64,
    spares: Arc<Spares>,
}

/// The stores of one node: group commit and one quota. Cheap to clone.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<DiskInner>,
}

struct JournalInner {
    store: Mutex<Store>,
    /// Held while a release mark is written, so marks of one journal are written in turn.
    releasing: Mutex<()>,
    /// Written since the last cycle took it.
    dirty: AtomicBool,
}

/// One log on a [`Disk`]. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<JournalInner>,
    disk: Arc<DiskInner>,
}

impl Disk {
    /// A disk with the given commit policy and quota (bytes of all journals together).
    pub fn new(commit: Commit, max_bytes: u64) -> Self {
        let inner = Arc::new(DiskInner {
            commit,
            max_bytes,
            used: AtomicU64::new(0),
            state: Mutex::new(CommitState {
                cycle: 0,
                dirty: Vec::new(),
            }),
            wake: Condvar::new(),
            done: watch::Sender::new(0),
            durable: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            failed: std::sync::OnceLock::new(),
            inject_failure: AtomicBool::new(false),
            cycles: AtomicU64::new(0),
            spares: Spares::new((max_bytes / 16).min(MAX_SPARE_BYTES)),
        });
        if commit != Commit::Always {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("meshgate-commit".into())
                .spawn(move || commit_loop(weak))
                .expect("spawn the commit thread");
        }
        Self { inner }
    }

    /// Opens (recovering) the journal in `dir`.
    pub fn open(
        &self,
        dir: impl AsRef<Path>,
        segment_bytes: u64,
    ) -> Result<(Journal, RecoveryReport), StoreError> {
        let flush = match self.inner.commit {
            Commit::Always => FlushPolicy::EveryAppend,
            // Fsyncs come from the commit thread; the store's own interval never fires first.
            _ => FlushPolicy::Interval(Duration::from_secs(86_400 * 365)),
        };
        let (store, report) = Store::open_with_spares(
            dir,
            StoreConfig {
                segment_bytes,
                flush,
                max_bytes: u64::MAX / 4,
            },
            Some(self.inner.spares.clone()),
        )?;
        self.inner
            .used
            .fetch_add(store.used_bytes(), Ordering::Relaxed);
        let journal = Journal {
            inner: Arc::new(JournalInner {
                store: Mutex::new(store),
                releasing: Mutex::new(()),
                dirty: AtomicBool::new(false),
            }),
            disk: self.inner.clone(),
        };
        Ok((journal, report))
    }

    /// Watches the last completed commit cycle: a ticket is durable once this reaches it.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.inner.done.subscribe()
    }

    /// Whether `ticket` is durable now.
    pub fn is_durable(&self, ticket: u64) -> bool {
        ticket <= self.inner.durable.load(Ordering::Acquire)
    }

    /// Waits until `ticket` is durable; after a failed fsync ([`Disk::failure`]) that may be
    /// never, so that nothing is acknowledged by mistake.
    pub async fn wait(&self, ticket: u64) {
        if self.wait_or_fail(ticket).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// [`Disk::wait`] for a caller that can give its client an error: `Err` once the disk
    /// failed instead of waiting on.
    pub async fn wait_or_fail(&self, ticket: u64) -> Result<(), Failed> {
        if self.is_durable(ticket) {
            return Ok(());
        }
        let mut rx = self.durable();
        let _ = rx
            .wait_for(|&done| done >= ticket || self.failure().is_some())
            .await;
        match self.failure() {
            Some(why) if !self.is_durable(ticket) => Err(Failed {
                reason: why.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Bytes used by all journals.
    pub fn used_bytes(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The quota.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Whether `bytes` more fit under the quota. Guaranteed publishes are refused when not;
    /// appends themselves are not refused, so an event accepted at the edge of the quota is
    /// never half stored.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.used_bytes().saturating_add(bytes) <= self.inner.max_bytes
    }

    /// Commit cycles run so far, completed or not (each fsyncs every journal written since the
    /// previous one).
    pub fn cycles(&self) -> u64 {
        self.inner.cycles.load(Ordering::Relaxed)
    }

    /// Fsyncs that failed.
    pub fn sync_errors(&self) -> u64 {
        self.inner.sync_errors.load(Ordering::Relaxed)
    }

    /// Why the disk stopped acknowledging, if an fsync failed.
    ///
    /// After a failed fsync the records written since the journal's last good one may or may
    /// not be on disk, and on Linux a second fsync does not tell (the error is reported once
    /// and the pages are marked clean). So the disk fails stop, as databases do: no commit
    /// cycle completes from then on, so nothing written before or after is acknowledged, and
    /// callers refuse new guaranteed events. A restart recovers from what the files hold;
    /// publishers send again what was never acknowledged.
    pub fn failure(&self) -> Option<&str> {
        self.inner.failed.get().map(String::as_str)
    }

    /// Makes the next fsync of the commit thread fail as a failing device would (tests of the
    /// fail-stop path).
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.inner.inject_failure.store(true, Ordering::Release);
    }

    /// The commit policy.
    pub fn commit(&self) -> Commit {
        self.inner.commit
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("bounds", &self.bounds())
            .finish()
    }
}

impl Journal {
    /// Appends one record; returns its sequence number and the ticket that makes it durable.
    pub fn append(&self, payload: &[u8]) -> Result<(u64, u64), StoreError> {
        self.append_batch(&[payload]).map(|(seq, t)| (seq.start, t))
    }

    /// Appends records with one write; returns their sequence numbers and the ticket.
    pub fn append_batch(
        &self,
        payloads: &[&[u8]],
    ) -> Result<(std::ops::Range<u64>, u64), StoreError> {
        self.append_batch_then(payloads, |_| ())
            .map(|((), seqs, ticket)| (seqs, ticket))
    }

    /// Appends records with one write and, still holding the journal's lock, hands their
    /// sequence numbers to `then`: what `then` does with them (queueing the records for the
    /// journal's reader) happens in sequence order even when several writers append at once.
    /// Returns what `then` returned, the sequence numbers and the ticket. `then` must not
    /// block or touch this journal.
    pub fn append_batch_then<R>(
        &self,
        payloads: &[&[u8]],
        then: impl FnOnce(std::ops::Range<u64>) -> R,
    ) -> Result<(R, std::ops::Range<u64>, u64), StoreError> {
        let mut store = self.inner.store.lock();
        let before = store.used_bytes();
        let seqs = store.append_batch(payloads)?;
        let r = then(seqs.clone());
        let grown = store.used_bytes().saturating_sub(before);
        drop(store);
        self.disk.used.fetch_add(grown, Ordering::Relaxed);
        let ticket = match self.disk.commit {
            Commit::Always => 0,
            Commit::Os(_) => {
                self.mark_dirty();
                0
            }
            Commit::Group(_) => self.mark_dirty(),
        };
        Ok((r, seqs, ticket))
    }

    /// Marks the journal for the next cycle; returns that cycle.
    fn mark_dirty(&self) -> u64 {
        let mut st = self.disk.state.lock();
        if !self.inner.dirty.swap(true, Ordering::AcqRel) {
            st.dirty.push(self.inner.clone());
            self.disk.wake.notify_one();
        }
        st.cycle + 1
    }

    /// Up to `max` records from `seq` on.
    pub fn read_from(&self, seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.store.lock().read_from(seq, max)
    }

    /// Releases every record up to and including `seq` (see [`Store::release_up_to`]).
    ///
    /// The mark is written without the journal's lock (it costs two fsyncs), so appends to the
    /// journal go on meanwhile; releases of one journal take turns.
    pub fn release_up_to(&self, seq: u64) -> Result<(), StoreError> {
        let _turn = self.inner.releasing.lock();
        let (dir, mark) = {
            let store = self.inner.store.lock();
            (store.dir().to_path_buf(), store.release_mark(seq))
        };
        let Some(mark) = mark else {
            return Ok(());
        };
        crate::store::persist_release(&dir, mark)?;
        let mut store = self.inner.store.lock();
        let before = store.used_bytes();
        let r = store.apply_release(mark);
        let freed = before.saturating_sub(store.used_bytes());
        drop(store);
        self.disk.used.fetch_sub(freed, Ordering::Relaxed);
        r
    }

    /// (first unreleased, next) sequence numbers.
    pub fn bounds(&self) -> (u64, u64) {
        let s = self.inner.store.lock();
        (s.first_seq(), s.next_seq())
    }

    /// Records held and not released.
    pub fn len(&self) -> u64 {
        self.inner.store.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of this journal's files.
    pub fn used_bytes(&self) -> u64 {
        self.inner.store.lock().used_bytes()
    }
}

fn commit_loop(disk: Weak<DiskInner>) {
    // When the last cycle started: a group cycle waits only for what is left of its window.
    let mut last_start: Option<std::time::Instant> = None;
    loop {
        let Some(d) = disk.upgrade() else { return };
        let window = match d.commit {
            Commit::Group(w) => w,
            Commit::Os(w) => w,
            Commit::Always => return,
        };
        {
            let mut st = d.state.lock();
            if st.dirty.is_empty() {
                // Wake now and then to notice that the disk was dropped.
                d.wake.wait_for(&mut st, Duration::from_secs(1));
                if st.dirty.is_empty() {
                    continue;
                }
            }
        }
        match d.commit {
            Commit::Group(_) => {
                // Rate-limit cycles instead of delaying each one: a lone append is fsynced at
                // once, a busy disk gets one cycle per window.
                if let Some(since) = last_start.map(|t| t.elapsed())
                    && since < window
                {
                    std::thread::sleep(window - since);
                }
                last_start = Some(std::time::Instant::now());
            }
            _ => {
                if !window.is_zero() {
                    std::thread::sleep(window);
                }
            }
        }
        let (cycle, dirty) = {
            let mut st = d.state.lock();
            st.cycle += 1;
            let dirty = std::mem::take(&mut st.dirty);
            for j in &dirty {
                j.dirty.store(false, Ordering::Release);
            }
            (st.cycle, dirty)
        };
        for j in dirty {
            let handle = j.store.lock().take_sync();
            let r = match handle {
                Ok(Some(f)) if d.inject_failure.swap(false, Ordering::AcqRel) => {
                    drop(f);
                    Err("injected fsync failure".to_string())
                }
                Ok(Some(f)) => f.sync_data().map_err(|e| e.to_string()),
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = r {
                d.sync_errors.fetch_add(1, Ordering::Relaxed);
                let dir = j.store.lock().dir().display().to_string();
                let why = format!("fsync of the journal in {dir} failed: {e}");
                if d.failed.set(why.clone()).is_ok() {
                    eprintln!(
                        "meshgate-store: {why}; no event is acknowledged from now on and \
                         guaranteed publishes are refused: restart the node to recover"
                    );
                    // Wakes the watchers without moving the durable mark: they look at
                    // `failure` and stop waiting for acknowledgements that will not come.
                    d.done.send_modify(|_| ());
                }
            }
        }
        // Counted before it is published: whoever sees a ticket durable sees its cycle run.
        d.cycles.fetch_add(1, Ordering::Release);
        // Failed stop: what this cycle and every later one covers stays unacknowledged.
        if d.failed.get().is_none() {
            d.durable.store(cycle, Ordering::Release);
            d.done.send_replace(cycle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn group_commit_acknowledges_after_the_cycle_and_counts_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(Commit::Group(Duration::from_millis(2)), 10_000);
        let (a, _) = disk.open(dir.path().join("a"), 1 << 20).unwrap();
        let (b, _) = disk.open(dir.path().join("b"), 1 << 20).unwrap();
        let (s1, t1) = a.append(&[1; 100]).unwrap();
        let (s2, t2) = b.append(&[2; 100]).unwrap();
        assert_eq!((s1, s2), (1, 1));
        assert!(t1 >= 1 && t2 >= 1);
        tokio::time::timeout(Duration::from_secs(5), disk.wait(t1.max(t2)))
            .await
            .expect("a cycle completes");
        assert!(disk.is_durable(t1) && disk.is_durable(t2));
        let used = disk.used_bytes();
        assert_eq!(used, a.used_bytes() + b.used_bytes());
        assert!(disk.has_room(100) && !disk.has_room(10_000));
        a.release_up_to(1).unwrap();
        assert_eq!(disk.used_bytes(), b.used_bytes(), "released segment freed");
        drop((a, b));
        let (a, report) = disk.open(dir.path().join("a"), 1 << 20).unwrap();
        assert_eq!(report.records, 0);
        assert_eq!(a.bounds(), (2, 2), "numbers are not reused after release");
    }

    #[test]
    fn releases_while_others_append_keep_every_unreleased_record() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(Commit::Group(Duration::ZERO), u64::MAX);
        // Small segments: releases delete (and keep as spare) segments while appends roll.
        let (j, _) = disk.open(dir.path().join("j"), 4096).unwrap();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000u32 {
                        j.append(&[w; 100]).unwrap();
                        if i % 100 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let releasers: Vec<_> = (0..2)
            .map(|_| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let (_, next) = j.bounds();
                        j.release_up_to(next.saturating_sub(50).min(2_999)).unwrap();
                    }
                })
            })
            .collect();
        for t in writers.into_iter().chain(releasers) {
            t.join().unwrap();
        }
        j.release_up_to(3_000).unwrap();
        let (first, next) = j.bounds();
        assert_eq!((first, next), (3_001, 4_001));
        assert_eq!(j.len(), 1_000);
        let kept = j.read_from(0, 2_000).unwrap();
        let seqs: Vec<u64> = kept.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (3_001..4_001).collect::<Vec<_>>());
        drop(j);
        let (j, report) = disk.open(dir.path().join("j"), 4096).unwrap();
        assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
        assert_eq!(
            j.bounds(),
            (3_001, 4_001),
            "the last mark holds after a reopen"
        );
        assert_eq!(j.read_from(0, 2_000).unwrap(), kept);
    }

    /// Polls `f` until it holds, for at most five seconds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn after_a_failed_fsync_nothing_is_acknowledged_again() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(Commit::Group(Duration::ZERO), u64::MAX);
        let (a, _) = disk.open(dir.path().join("a"), 1 << 20).unwrap();
        let (b, _) = disk.open(dir.path().join("b"), 1 << 20).unwrap();
        let (_, t0) = a.append(b"before").unwrap();
        eventually("a healthy cycle completes", || disk.is_durable(t0));
        assert_eq!(disk.failure(), None);
        // Nothing else is written, so each append below gets a cycle of its own.
        let ran = disk.cycles();

        disk.inject_sync_failure();
        let (_, t1) = a.append(b"lost?").unwrap();
        eventually("the failing cycle runs", || disk.cycles() == ran + 1);
        assert!(disk.failure().unwrap().contains("injected fsync failure"));
        assert_eq!(disk.sync_errors(), 1);
        // Later cycles run and their fsyncs succeed (b's, then a's again), yet none of them
        // acknowledges the record whose fsync failed, nor anything after it.
        let (_, t2) = b.append(b"after").unwrap();
        eventually("b's cycle runs", || disk.cycles() == ran + 2);
        let (_, t3) = a.append(b"after").unwrap();
        eventually("a's next cycle runs", || disk.cycles() == ran + 3);
        for t in [t1, t2, t3] {
            assert!(
                !disk.is_durable(t),
                "ticket {t} acknowledged after a failed fsync"
            );
        }
        assert!(disk.is_durable(t0), "what was acknowledged stays so");
        assert_eq!(disk.sync_errors(), 1);
        // A caller that can answer with an error learns why instead of waiting on.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let waited = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), disk.wait_or_fail(t3)).await
        });
        let why = waited.expect("no wait after a failure").unwrap_err();
        assert!(why.reason.contains("injected fsync failure"), "{why}");
        assert_eq!(rt.block_on(disk.wait_or_fail(t0)), Ok(()));
    }

    #[test]
    fn always_and_os_return_durable_tickets() {
        let dir = tempfile::tempdir().unwrap();
        for commit in [Commit::Always, Commit::Os(Duration::from_millis(5))] {
            let disk = Disk::new(commit, u64::MAX);
            let (j, _) = disk
                .open(dir.path().join(format!("{commit:?}")), 1 << 20)
                .unwrap();
            let (_, t) = j.append(b"x").unwrap();
            assert_eq!(t, 0);
            assert!(disk.is_durable(t));
            assert_eq!(j.read_from(0, 10).unwrap(), vec![(1, b"x".to_vec())]);
        }
    }
}
