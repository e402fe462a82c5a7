//! Persistent sessions on disk, so that they survive a restart of the node.
//!
//! Layout under the directory given to [`crate::MqttServer::with_store`]: one directory per
//! session, named by the hex of the client id's bytes, holding
//! - `session.json`: client id, session expiry, the subscriptions as the client wrote them with
//!   their options, and when the client disconnected (`null` while connected). Replaced
//!   atomically (write a temporary file, fsync, rename, fsync the directory) on connect,
//!   subscribe, unsubscribe and disconnect.
//! - `journal/`: the session's journal on the broker's [`Disk`]: every QoS 1 delivery for the
//!   session is appended there before its publisher is acknowledged. The connection releases it
//!   as its client acknowledges.
//!
//! File work runs on a few worker threads, never on a connection's task. The jobs of one client
//! id always go to the same worker, in the order they were submitted (under the session store's
//! lock for creation and removal), so a session ended and a new one made under the same client id
//! never race on their shared directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use meshgate_store::{Disk, Journal};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::warn;

use crate::session::Session;

/// Segment size of a session journal.
pub(crate) const SEGMENT_BYTES: u64 = 4 << 20;
const META: &str = "session.json";
const META_TMP: &str = "session.json.tmp";
const JOURNAL: &str = "journal";
/// Worker threads for session files; fsyncs are what they wait on.
const WORKERS: usize = 2;
const META_VERSION: u32 = 1;

/// The metadata file of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub version: u32,
    pub client_id: String,
    /// Seconds the session outlives its connection; `u32::MAX` = forever.
    pub expiry_secs: u32,
    /// Unix seconds when the last connection ended; `None` while connected.
    pub disconnected_at: Option<u64>,
    pub subscriptions: Vec<MetaSub>,
    /// The app id of the session's client (what it may read is decided for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

/// One subscription as the client wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaSub {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub sub_id: Option<u32>,
}

/// A session read back at startup.
pub(crate) struct Loaded {
    pub meta: Meta,
    pub journal: Journal,
    /// When the session's time started to run out (now, for a session whose client was still
    /// connected when the node stopped).
    pub disconnected_at: u64,
}

/// What [`crate::MqttServer::restore`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Sessions recreated (offline, with their subscriptions and journals).
    pub restored: usize,
    /// Sessions whose expiry had passed: their directories were deleted.
    pub expired: usize,
    /// Directories that could not be read (corrupt or missing metadata, journal that would not
    /// open): reported and left as they are.
    pub skipped: usize,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The session directory and its workers.
pub(crate) struct Persist {
    root: PathBuf,
    disk: Disk,
    workers: Vec<mpsc::Sender<Job>>,
}

impl Persist {
    pub fn new(root: PathBuf, disk: Disk) -> Self {
        let workers = (0..WORKERS)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("meshgate-sessions-{i}"))
                    .spawn(move || {
                        for job in rx {
                            job();
                        }
                    })
                    .expect("spawn a session store thread");
                tx
            })
            .collect();
        Self {
            root,
            disk,
            workers,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a client id's session.
    pub fn dir_of(&self, client_id: &str) -> PathBuf {
        self.root.join(hex(client_id.as_bytes()))
    }

    fn submit(&self, client_id: &str, job: impl FnOnce() + Send + 'static) {
        // FNV-1a: the same client id always lands on the same worker.
        let h = client_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let w = &self.workers[(h % self.workers.len() as u64) as usize];
        if w.send(Box::new(job)).is_err() {
            warn!(client = client_id, "session store worker is gone");
        }
    }

    /// Gives `session` a journal (if it has none) and writes its metadata. Resolves when done.
    pub fn create(&self, session: &Arc<Session>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let s = session.clone();
        let dir = self.dir_of(&session.client_id);
        let disk = self.disk.clone();
        self.submit(&session.client_id, move || {
            if s.ended.load(Ordering::Acquire) {
                return;
            }
            if s.mailbox.journal().is_none() {
                match open_fresh(&disk, &dir) {
                    Ok(j) => {
                        s.state.lock().disk_next = j.bounds().1;
                        s.mailbox.set_journal(j);
                    }
                    Err(e) => {
                        warn!(client = %s.client_id, error = %e, "cannot store the session; it is kept in memory only");
                        let _ = tx.send(());
                        return;
                    }
                }
            }
            write_session(&s, &dir);
            let _ = tx.send(());
        });
        rx
    }

    /// Rewrites the metadata of a stored session. Resolves when written.
    pub fn save(&self, session: &Arc<Session>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let s = session.clone();
        let dir = self.dir_of(&session.client_id);
        self.submit(&session.client_id, move || {
            if !s.ended.load(Ordering::Acquire) && s.mailbox.journal().is_some() {
                write_session(&s, &dir);
            }
            let _ = tx.send(());
        });
        rx
    }

    /// Deletes the files of an ended session (`session.ended` must be set). The journal is
    /// released first so that the disk quota gets its bytes back.
    pub fn remove(&self, session: &Arc<Session>) {
        let s = session.clone();
        let dir = self.dir_of(&session.client_id);
        self.submit(&session.client_id, move || {
            // Checked when the job runs, after any creation submitted before it.
            let Some(j) = s.mailbox.journal() else { return };
            let (_, next) = j.bounds();
            if let Err(e) = j.release_up_to(next.saturating_sub(1)) {
                warn!(client = %s.client_id, error = %e, "cannot release an ended session's journal");
            }
            remove_dir(&dir);
        });
    }

    /// Reads every session directory: deletes the expired ones, opens the journals of the
    /// others. Blocking; for startup.
    /// `max_expiry` caps the stored expiry (the configured maximum may have been lowered).
    pub fn load(&self, now: u64, max_expiry: u32) -> io::Result<(Vec<Loaded>, RestoreReport)> {
        fs::create_dir_all(&self.root)?;
        let mut report = RestoreReport::default();
        let mut out = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&self.root)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        entries.sort();
        for dir in entries {
            let mut meta = match read_meta(&dir) {
                Ok(m) => m,
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "skipping a session directory with unreadable metadata");
                    report.skipped += 1;
                    continue;
                }
            };
            if dir.file_name() != Some(hex(meta.client_id.as_bytes()).as_ref()) {
                warn!(dir = %dir.display(), client = %meta.client_id, "skipping a session directory not named after its client id");
                report.skipped += 1;
                continue;
            }
            meta.expiry_secs = meta.expiry_secs.min(max_expiry);
            // A session whose client was connected when the node stopped starts its expiry now.
            let since = meta.disconnected_at.unwrap_or(now);
            let expired = meta.expiry_secs == 0
                || (meta.expiry_secs != u32::MAX
                    && since.saturating_add(u64::from(meta.expiry_secs)) <= now);
            if expired {
                remove_dir(&dir);
                report.expired += 1;
                continue;
            }
            let journal = match self.disk.open(dir.join(JOURNAL), SEGMENT_BYTES) {
                Ok((j, rec)) => {
                    for c in &rec.corrupt {
                        warn!(client = %meta.client_id, damage = %c, "session journal damaged");
                    }
                    j
                }
                Err(e) => {
                    warn!(client = %meta.client_id, error = %e, "skipping a session whose journal cannot be opened");
                    report.skipped += 1;
                    continue;
                }
            };
            out.push(Loaded {
                meta,
                journal,
                disconnected_at: since,
            });
        }
        Ok((out, report))
    }
}

/// Opens the journal of a new session, releasing whatever an earlier session under the same
/// client id may have left (its removal failed or the node stopped half way).
fn open_fresh(disk: &Disk, dir: &Path) -> Result<Journal, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (j, _) = disk
        .open(dir.join(JOURNAL), SEGMENT_BYTES)
        .map_err(|e| e.to_string())?;
    let (first, next) = j.bounds();
    if next > first {
        j.release_up_to(next - 1).map_err(|e| e.to_string())?;
    }
    Ok(j)
}

/// The metadata of a session as it stands.
pub(crate) fn meta_of(s: &Session) -> Meta {
    let st = s.state.lock();
    let mut subscriptions: Vec<MetaSub> = st
        .subs
        .iter()
        .map(|(filter, r)| MetaSub {
            filter: filter.clone(),
            qos: r.opts.qos,
            no_local: r.opts.no_local,
            retain_as_published: r.opts.retain_as_published,
            sub_id: r.opts.sub_id,
        })
        .collect();
    let meta = Meta {
        version: META_VERSION,
        client_id: s.client_id.clone(),
        expiry_secs: st.expiry_secs,
        disconnected_at: st.disconnected_at,
        subscriptions: Vec::new(),
        app_id: s.mailbox.app().map(str::to_string),
    };
    drop(st);
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    Meta {
        subscriptions,
        ..meta
    }
}

fn write_session(s: &Session, dir: &Path) {
    if let Err(e) = write_meta(dir, &meta_of(s)) {
        warn!(client = %s.client_id, error = %e, "cannot write session metadata");
    }
}

/// Writes `meta` atomically: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    let tmp = dir.join(META_TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(META))?;
    File::open(dir)?.sync_all()
}

fn read_meta(dir: &Path) -> io::Result<Meta> {
    let bytes = fs::read(dir.join(META))?;
    let meta: Meta = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    if meta.version != META_VERSION {
        return Err(io::Error::other(format!(
            "unknown metadata version {}",
            meta.version
        )));
    }
    Ok(meta)
}

fn remove_dir(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot delete a session directory"),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta {
            version: META_VERSION,
            client_id: "dev/1 ✓".into(),
            expiry_secs: 3600,
            disconnected_at: Some(1_700_000_000),
            subscriptions: vec![MetaSub {
                filter: "$share/g/a/+".into(),
                qos: 1,
                no_local: true,
                retain_as_published: false,
                sub_id: Some(7),
            }],
            app_id: Some("acme.shop".into()),
        };
        write_meta(dir.path(), &meta).unwrap();
        assert_eq!(read_meta(dir.path()).unwrap(), meta);
        assert!(!dir.path().join(META_TMP).exists());
        fs::write(dir.path().join(META), b"{\"version\":1,\"client").unwrap();
        assert!(read_meta(dir.path()).is_err());
        assert_eq!(hex(b"a/\xff"), "612fff");
    }
}
