//! Guaranteed events between nodes (DESIGN.md section 5): store and forward, hop by hop.
//!
//! Every node keeps one durable queue per next hop (a [`Journal`] named after the peer) and
//! one for destinations that have no route at the moment (`held`). A guaranteed event is split
//! by next hop like a direct one, and each copy is appended to that hop's queue before the
//! publisher (or the previous hop) is acknowledged. A sender per link streams its queue on a
//! stream of its own, numbered by the queue's sequence numbers; the peer acknowledges a batch
//! once it has stored (or durably delivered) every event of it, and only then is the batch
//! released here. A link that goes down keeps its queue; whatever was not acknowledged is sent
//! again when it returns, and the destination drops the duplicates by event id.
//!
//! Routes change while events wait: when the topology changes, a queue whose link is down (and
//! `held`) is split again over the current routes if any of its destinations now has a live
//! next hop. Appends and that re-split take the same lock and the same route snapshot, so the
//! events of one publisher keep their order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use meshgate_api::{GuaranteedView, QueueView, StoreUse};
use meshgate_proto::Envelope;
use meshgate_proto::v1::RoutedEvent;
use meshgate_store::{Disk, Journal, StoreError};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::frame::{self, Dests, OutDest, OutEvent};

/// Name of the queue for destinations without a route.
pub(crate) const HELD: &str = "";

/// First byte of each unidirectional stream: what it carries.
pub(crate) const STREAM_DIRECT: u8 = 0;
/// See [`STREAM_DIRECT`].
pub(crate) const STREAM_GUARANTEED: u8 = 1;

/// Events sent and not yet acknowledged on one link, at most.
const WINDOW: u64 = 16_384;

/// Destination node → name of the peer to send to (from the hop table).
pub(crate) type HopNames = HashMap<Arc<str>, Arc<str>, foldhash::fast::RandomState>;

/// One durable queue: a next hop, or `held`.
pub(crate) struct Queue {
    /// Peer name, or [`HELD`].
    pub key: Arc<str>,
    pub journal: Journal,
    /// Woken on append and on acknowledgement.
    pub wake: Notify,
    /// Destinations that may be in the queue (a superset; `None` = not known after a restart).
    dests: Mutex<Option<HashSet<Arc<str>>>>,
    /// Highest sequence number the peer acknowledged.
    acked: AtomicU64,
    /// Highest sequence number released.
    released: AtomicU64,
    /// Events sent from this queue (including resends).
    pub sent: AtomicU64,
}

struct State {
    queues: HashMap<Arc<str>, Arc<Queue>>,
    /// The routes appends follow. New routes wait in `next` until the reroute task installs
    /// them together with the re-split of dead queues, so that no new event for a destination
    /// overtakes older ones still waiting in a dead queue.
    hops: Arc<HopNames>,
    /// Peers with a link up, as of `hops`.
    up: HashSet<Arc<str>>,
    next: Option<(HopNames, HashSet<Arc<str>>)>,
}

/// The guaranteed side of the mesh.
pub(crate) struct Outbox {
    disk: Disk,
    dir: PathBuf,
    origin: Arc<str>,
    state: Mutex<State>,
    seen: Mutex<Seen>,
    pub duplicates: AtomicU64,
    /// Events whose destinations all expired while they waited.
    pub expired: AtomicU64,
    /// Set when routes or links changed; the reroute task splits dead queues again.
    pub reroute: Notify,
}

/// Segment size of the queues.
const SEGMENT_BYTES: u64 = 16 << 20;

impl Outbox {
    /// Opens every queue found under `dir` (what the previous run left).
    pub fn open(disk: Disk, dir: PathBuf, origin: Arc<str>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut queues = HashMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(key) = key_of_dir(&name) else {
                    continue;
                };
                let q = open_queue(&disk, &dir, &key)?;
                let (first, next) = q.journal.bounds();
                if next > first {
                    info!(queue = %queue_name(&key), events = next - first, "guaranteed backlog recovered");
                }
                queues.insert(key, q);
            }
        }
        Ok(Self {
            disk,
            dir,
            origin,
            state: Mutex::new(State {
                queues,
                hops: Arc::new(HopNames::default()),
                up: HashSet::new(),
                next: None,
            }),
            seen: Mutex::new(Seen::new(1 << 20)),
            duplicates: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            reroute: Notify::new(),
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The queue for `key`, created if needed.
    pub fn queue(&self, key: &str) -> Result<Arc<Queue>, StoreError> {
        let mut st = self.state.lock();
        self.queue_locked(&mut st, key)
    }

    fn queue_locked(&self, st: &mut State, key: &str) -> Result<Arc<Queue>, StoreError> {
        if let Some(q) = st.queues.get(key) {
            return Ok(q.clone());
        }
        let key: Arc<str> = key.into();
        let q = open_queue(&self.disk, &self.dir, &key)?;
        st.queues.insert(key, q.clone());
        Ok(q)
    }

    /// Stores one copy of `event` per next hop of `dests`; returns the commit ticket.
    pub fn forward(
        &self,
        event: &Arc<Envelope>,
        dests: impl Iterator<Item = OutDest>,
        hops: u32,
    ) -> Result<u64, StoreError> {
        let mut st = self.state.lock();
        let mut split: Vec<(Arc<str>, Dests)> = Vec::new();
        for d in dests {
            let key = st
                .hops
                .get(d.node())
                .cloned()
                .unwrap_or_else(|| HELD.into());
            match split.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(d),
                None => split.push((key, Dests::One(d))),
            }
        }
        let mut ticket = 0;
        let mut buf = BytesMut::new();
        for (key, destinations) in split {
            let q = self.queue_locked(&mut st, &key)?;
            let (t, names) = self.append_copy(&q, event, destinations, hops, &mut buf)?;
            ticket = ticket.max(t);
            if let Some(set) = q.dests.lock().as_mut() {
                set.extend(names);
            }
            q.wake.notify_one();
        }
        Ok(ticket)
    }

    /// Appends one copy of `event` for `destinations` to queue `q`; returns the commit ticket
    /// and the destination names (for the queue's destination set).
    fn append_copy(
        &self,
        q: &Queue,
        event: &Arc<Envelope>,
        destinations: Dests,
        hops: u32,
        buf: &mut BytesMut,
    ) -> Result<(u64, Vec<Arc<str>>), StoreError> {
        let names: Vec<Arc<str>> = destinations
            .as_slice()
            .iter()
            .map(|d| Arc::from(d.node()))
            .collect();
        buf.clear();
        frame::encode_routed(
            &OutEvent {
                event: event.clone(),
                destinations,
                hops,
            },
            &self.origin,
            buf,
        );
        let (_, t) = q.journal.append(buf)?;
        Ok((t, names))
    }

    /// Records new routes and links; [`Outbox::reroute_dead`] installs them.
    pub fn set_routes(&self, hops: HopNames, up: HashSet<Arc<str>>) {
        self.state.lock().next = Some((hops, up));
        self.reroute.notify_one();
    }

    /// Installs the routes given to [`Outbox::set_routes`], then splits every queue that cannot
    /// drain (its link is down, or `held`) over them, if any of its destinations has a live next
    /// hop now — all under one lock. `known` says whether a node is still in the registry;
    /// events for nodes that left it are dropped and counted.
    pub fn reroute_dead(&self, known: impl Fn(&str) -> bool) {
        let mut st = self.state.lock();
        if let Some((hops, up)) = st.next.take() {
            st.hops = Arc::new(hops);
            st.up = up;
        }
        let mut dead: Vec<Arc<Queue>> = st
            .queues
            .values()
            .filter(|q| &*q.key == HELD || !st.up.contains(&q.key))
            .filter(|q| !q.journal.is_empty())
            .cloned()
            .collect();
        // For any one destination, what waits in a dead link's queue was stored before what
        // waits in `held` (events are held only while there is no route): move it first.
        dead.sort_by(|a, b| (&*a.key == HELD, &a.key).cmp(&(&*b.key == HELD, &b.key)));
        for q in dead {
            let movable = match &*q.dests.lock() {
                None => true,
                Some(set) => set
                    .iter()
                    .any(|d| st.hops.get(d).is_some_and(|h| *h != q.key) || !known(d)),
            };
            if !movable {
                continue;
            }
            if let Err(e) = self.resplit(&mut st, &q, &known) {
                warn!(queue = %queue_name(&q.key), error = %e, "cannot reroute a guaranteed queue");
            }
        }
    }

    fn resplit(
        &self,
        st: &mut State,
        q: &Arc<Queue>,
        known: &impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let (first, end) = q.journal.bounds();
        let mut from = first;
        let mut moved = 0u64;
        let mut dests_left: HashSet<Arc<str>> = HashSet::new();
        let mut buf = BytesMut::new();
        while from < end {
            let recs = q.journal.read_from(from, 1024)?;
            let Some(last) = recs.last().map(|r| r.0) else {
                break;
            };
            for (seq, rec) in recs {
                if seq >= end {
                    break;
                }
                let Ok(re) = RoutedEvent::decode(&rec[..]) else {
                    continue;
                };
                let Some(env) = re.event else { continue };
                let env = Arc::new(env);
                let mut split: Vec<(Arc<str>, Dests)> = Vec::new();
                for d in re.destinations {
                    if !known(&d.node) {
                        continue;
                    }
                    let key = st
                        .hops
                        .get(d.node.as_str())
                        .cloned()
                        .unwrap_or_else(|| HELD.into());
                    let key = if key == q.key && &*q.key != HELD {
                        HELD.into()
                    } else {
                        key
                    };
                    match split.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(OutDest::Owned(d)),
                        None => split.push((key, Dests::One(OutDest::Owned(d)))),
                    }
                }
                if split.is_empty() {
                    self.expired.fetch_add(1, Ordering::Relaxed);
                }
                for (key, destinations) in split {
                    let target = self.queue_locked(st, &key)?;
                    let (_, names) =
                        self.append_copy(&target, &env, destinations, re.hops, &mut buf)?;
                    if Arc::ptr_eq(&target, q) {
                        dests_left.extend(names);
                    } else if let Some(set) = target.dests.lock().as_mut() {
                        set.extend(names);
                    }
                    target.wake.notify_one();
                }
                moved += 1;
            }
            from = last + 1;
        }
        // Everything before `end` now lives elsewhere (or again at the tail of `held`).
        q.journal.release_up_to(end - 1)?;
        q.released.store(end - 1, Ordering::Relaxed);
        *q.dests.lock() = Some(dests_left);
        info!(queue = %queue_name(&q.key), events = moved, "guaranteed queue rerouted");
        Ok(())
    }

    /// Whether this guaranteed event was seen before (and notes it).
    pub fn is_duplicate(&self, env: &Envelope) -> bool {
        let dup = !self.seen.lock().insert((env.id_hi, env.id_lo));
        if dup {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        dup
    }

    /// Releases what peers acknowledged (one fsync per queue that moved).
    pub fn release_acked(&self) {
        let queues: Vec<Arc<Queue>> = self.state.lock().queues.values().cloned().collect();
        for q in queues {
            let acked = q.acked.load(Ordering::Acquire);
            if acked > q.released.load(Ordering::Relaxed) {
                match q.journal.release_up_to(acked) {
                    Ok(()) => q.released.store(acked, Ordering::Relaxed),
                    Err(e) => warn!(queue = %queue_name(&q.key), error = %e, "release failed"),
                }
            }
        }
    }

    /// The backlog of every queue, for `GET /v1/mesh` and `/v1/backlog`.
    pub fn view(&self) -> GuaranteedView {
        let queues: Vec<Arc<Queue>> = self.state.lock().queues.values().cloned().collect();
        let now = meshgate_broker::now_ms();
        let mut out: Vec<QueueView> = queues
            .iter()
            .map(|q| {
                let (first, next) = q.journal.bounds();
                let acked = q.acked.load(Ordering::Relaxed).max(first.saturating_sub(1));
                let oldest = q
                    .journal
                    .read_from(acked + 1, 1)
                    .ok()
                    .and_then(|r| r.into_iter().next())
                    .and_then(|(_, rec)| RoutedEvent::decode(&rec[..]).ok())
                    .and_then(|re| re.event)
                    .map(|e| now.saturating_sub(e.timestamp_ms));
                QueueView {
                    queue: queue_name(&q.key).to_string(),
                    events: next.saturating_sub(acked + 1),
                    stored_events: next - first,
                    bytes: q.journal.used_bytes(),
                    oldest_age_ms: oldest,
                    sent: q.sent.load(Ordering::Relaxed),
                    acked_up_to: acked,
                }
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        GuaranteedView {
            queues: out,
            store: StoreUse {
                used_bytes: self.disk.used_bytes(),
                quota_bytes: self.disk.max_bytes(),
            },
            duplicates_dropped: self.duplicates.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }

    /// Exports backlog gauges.
    pub fn export_metrics(&self) {
        let queues: Vec<Arc<Queue>> = self.state.lock().queues.values().cloned().collect();
        for q in queues {
            let (first, next) = q.journal.bounds();
            let acked = q.acked.load(Ordering::Relaxed).max(first.saturating_sub(1));
            let name = if &*q.key == HELD {
                "held".to_string()
            } else {
                q.key.to_string()
            };
            metrics::gauge!("meshgate_backlog_events", "queue" => name.clone())
                .set(next.saturating_sub(acked + 1) as f64);
            metrics::gauge!("meshgate_backlog_bytes", "queue" => name)
                .set(q.journal.used_bytes() as f64);
        }
        metrics::counter!("meshgate_guaranteed_duplicates_total")
            .absolute(self.duplicates.load(Ordering::Relaxed));
    }
}

impl Queue {
    /// Notes an acknowledgement from the peer.
    pub fn ack(&self, up_to: u64) {
        self.acked.fetch_max(up_to, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Where a new link session starts sending: after what the peer acknowledged before.
    pub fn start(&self) -> u64 {
        let (first, _) = self.journal.bounds();
        let acked = self
            .acked
            .fetch_max(first.saturating_sub(1), Ordering::AcqRel);
        acked.max(first.saturating_sub(1)) + 1
    }

    /// Highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }
}

/// Streams `queue` to the peer on `send` until the link fails.
pub(crate) async fn send_loop(
    queue: Arc<Queue>,
    mut send: quinn::SendStream,
    link: Arc<crate::Link>,
    max_frame: usize,
) {
    if send.write_all(&[STREAM_GUARANTEED]).await.is_err() {
        return;
    }
    let mut cursor = queue.start();
    let budget = max_frame / 2;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        let (_, next) = queue.journal.bounds();
        if cursor >= next || cursor.saturating_sub(queue.acked() + 1) >= WINDOW {
            if link.conn.close_reason().is_some() {
                return;
            }
            tokio::select! {
                _ = queue.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let want = (next - cursor).min(WINDOW - cursor.saturating_sub(queue.acked() + 1));
        let recs = match queue.journal.read_from(cursor, want.min(4096) as usize) {
            Ok(r) => r,
            Err(e) => {
                warn!(peer = %link.peer, error = %e, "cannot read the guaranteed queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = recs.last().map(|r| r.0) else {
            // Released under us (rerouted): start again from the head.
            cursor = queue.start();
            continue;
        };
        buf.clear();
        let mut start = 0;
        let mut size = 0;
        for i in 0..recs.len() {
            size += recs[i].1.len() + 8;
            if size >= budget || i + 1 == recs.len() {
                let slice: Vec<&[u8]> = recs[start..=i].iter().map(|r| &r.1[..]).collect();
                frame::encode_stored(&slice, recs[i].0, &mut buf);
                start = i + 1;
                size = 0;
            }
        }
        let n = recs.len() as u64;
        link.stats.tx_events.fetch_add(n, Ordering::Relaxed);
        link.stats
            .tx_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        queue.sent.fetch_add(n, Ordering::Relaxed);
        if send.write_chunk(buf.split().freeze()).await.is_err() {
            return;
        }
        cursor = last + 1;
    }
}

fn open_queue(disk: &Disk, dir: &Path, key: &Arc<str>) -> Result<Arc<Queue>, StoreError> {
    let (journal, report) = disk.open(dir.join(dir_of_key(key)), SEGMENT_BYTES)?;
    if report.truncated_bytes > 0 || !report.corrupt.is_empty() {
        warn!(
            queue = %display(key),
            records = report.records,
            truncated_bytes = report.truncated_bytes,
            corrupt = ?report.corrupt,
            "guaranteed queue recovered with damage"
        );
    }
    let (first, next) = journal.bounds();
    let dests = if next > first {
        None
    } else {
        Some(HashSet::new())
    };
    Ok(Arc::new(Queue {
        key: key.clone(),
        journal,
        wake: Notify::new(),
        dests: Mutex::new(dests),
        acked: AtomicU64::new(first.saturating_sub(1)),
        released: AtomicU64::new(first.saturating_sub(1)),
        sent: AtomicU64::new(0),
    }))
}

fn queue_name(key: &str) -> &str {
    if key == HELD { "held" } else { key }
}

/// Directory of a queue: `held`, or `to-` and the peer name in hex (names are free text).
fn dir_of_key(key: &str) -> String {
    if key == HELD {
        return "held".into();
    }
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("to-{hex}")
}

fn key_of_dir(dir: &str) -> Option<Arc<str>> {
    if dir == "held" {
        return Some(HELD.into());
    }
    let hex = dir.strip_prefix("to-")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok().map(Arc::from)
}

/// Exact memory of the last `cap` guaranteed event ids delivered here.
struct Seen {
    set: HashSet<(u64, u64), foldhash::fast::RandomState>,
    order: VecDeque<(u64, u64)>,
    cap: usize,
}

impl Seen {
    fn new(cap: usize) -> Self {
        Self {
            set: HashSet::default(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// True if new.
    fn insert(&mut self, id: (u64, u64)) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_dir_names_round_trip() {
        for k in ["", "edge-a", "core/1 ü"] {
            assert_eq!(key_of_dir(&dir_of_key(k)).as_deref(), Some(k));
        }
        assert_eq!(key_of_dir("to-zz"), None);
        assert_eq!(key_of_dir("other"), None);
    }

    fn event(n: u64) -> Arc<Envelope> {
        Arc::new(Envelope {
            id_hi: 1,
            id_lo: n,
            topic: "t".into(),
            payload: n.to_string().into(),
            ..Default::default()
        })
    }

    fn dest(node: &str) -> OutDest {
        OutDest::Shared {
            node: node.into(),
            groups: Vec::new(),
        }
    }

    /// (payload, destinations) of what waits in queue `key`.
    fn contents(o: &Outbox, key: &str) -> Vec<(String, Vec<String>)> {
        let q = o.queue(key).unwrap();
        let (first, _) = q.journal.bounds();
        q.journal
            .read_from(first, 1000)
            .unwrap()
            .into_iter()
            .map(|(_, r)| {
                let re = RoutedEvent::decode(&r[..]).unwrap();
                let env = re.event.unwrap();
                let payload = String::from_utf8(env.payload.to_vec()).unwrap();
                (
                    payload,
                    re.destinations.into_iter().map(|d| d.node).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn unrouted_events_are_held_then_follow_new_routes_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(meshgate_store::Commit::Always, u64::MAX);
        let o = Outbox::open(disk.clone(), dir.path().into(), "a".into()).unwrap();
        let up = |peers: &[&str]| peers.iter().map(|p| Arc::<str>::from(*p)).collect();
        let hops = |pairs: &[(&str, &str)]| -> HopNames {
            pairs
                .iter()
                .map(|(d, h)| (Arc::<str>::from(*d), Arc::<str>::from(*h)))
                .collect()
        };
        // b behind c; d has no route.
        o.set_routes(hops(&[("b", "c"), ("c", "c")]), up(&["c"]));
        o.forward(&event(0), [dest("b")].into_iter(), 0).unwrap();
        assert_eq!(contents(&o, HELD).len(), 1, "routes apply once installed");
        o.reroute_dead(|_| true);
        assert_eq!(
            contents(&o, "c").len(),
            1,
            "then the held event follows them"
        );
        let c = o.queue("c").unwrap();
        c.journal.release_up_to(c.journal.bounds().1 - 1).unwrap();
        o.forward(&event(1), [dest("b"), dest("d")].into_iter(), 0)
            .unwrap();
        o.forward(&event(2), [dest("d")].into_iter(), 0).unwrap();
        assert_eq!(contents(&o, "c"), vec![("1".into(), vec!["b".into()])]);
        assert_eq!(
            contents(&o, HELD),
            vec![
                ("1".into(), vec!["d".into()]),
                ("2".into(), vec!["d".into()])
            ]
        );
        // Link to c goes down; nothing else reaches b or d: nothing moves.
        o.set_routes(HopNames::default(), up(&[]));
        o.reroute_dead(|_| true);
        assert_eq!(contents(&o, "c").len(), 1);
        // d and b become reachable through e: both dead queues follow, order kept.
        o.set_routes(hops(&[("b", "e"), ("d", "e"), ("e", "e")]), up(&["e"]));
        o.reroute_dead(|_| true);
        o.forward(&event(3), [dest("d")].into_iter(), 0).unwrap();
        let e: Vec<String> = contents(&o, "e").into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            e,
            ["1", "1", "2", "3"].map(String::from),
            "held first, then new"
        );
        assert!(contents(&o, "c").is_empty() && contents(&o, HELD).is_empty());
        // What waits survives a reopen; a node that left the registry is dropped and counted.
        drop(o);
        let o = Outbox::open(disk, dir.path().into(), "a".into()).unwrap();
        assert_eq!(contents(&o, "e").len(), 4);
        o.set_routes(HopNames::default(), up(&[]));
        o.reroute_dead(|n| n != "d");
        assert_eq!(contents(&o, HELD), vec![("1".into(), vec!["b".into()])]);
        assert_eq!(o.expired.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn seen_is_exact_within_its_capacity() {
        let mut s = Seen::new(3);
        assert!(s.insert((1, 1)));
        assert!(!s.insert((1, 1)));
        for i in 2..=4 {
            assert!(s.insert((i, 0)));
        }
        assert!(s.insert((1, 1)), "evicted after capacity");
    }
}
