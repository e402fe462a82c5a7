//! State, last error and counters of every bridge of a node: `GET /v1/bridges` and
//! `meshgate_bridge_*` in `/metrics` (labels: kind, member, name, all from the configuration, so
//! bounded).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use meshgate_api::BridgeView;
use meshgate_store::Journal;
use parking_lot::Mutex;

/// Connection state of a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Configured, not connected yet.
    Starting,
    /// Connected and moving records.
    Up,
    /// The broker cannot be reached or refuses; retrying with backoff.
    Down,
    /// Stopped with the node.
    Stopped,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Up => "up",
            State::Down => "down",
            State::Stopped => "stopped",
        }
    }
}

struct Health {
    state: State,
    since: Instant,
    last_error: Option<(String, u64)>,
}

/// One source or sink.
pub struct BridgeStatus {
    /// Protocol: "kafka", "amqp".
    pub kind: &'static str,
    /// The cluster or broker (the member of the mesh) it belongs to.
    pub member: String,
    /// The source's or sink's name.
    pub name: String,
    /// "source" or "sink".
    pub role: &'static str,
    /// What it reads: topics, queue, or the mesh filter of a sink.
    pub reads: String,
    health: Mutex<Health>,
    /// Records read from the broker (source) or events taken from the mesh (sink).
    pub consumed: AtomicU64,
    /// Records published into the mesh that some subscriber wanted (source), or written to the
    /// broker and acknowledged by it (sink).
    pub forwarded: AtomicU64,
    /// Records published with no interest anywhere (source): dropped at the edge.
    pub unrouted: AtomicU64,
    /// Records not taken because they came from the mesh, or events not written back into the
    /// member they came from.
    pub skipped_loop: AtomicU64,
    /// Records the mesh refused (invalid topic, too large); logged with their position.
    pub refused: AtomicU64,
    /// Reconnects or retries after an error.
    pub retries: AtomicU64,
    /// A sink's journal: what waits for the broker.
    journal: Mutex<Option<Journal>>,
}

impl BridgeStatus {
    /// A new status in [`State::Starting`].
    pub fn new(
        kind: &'static str,
        member: &str,
        name: &str,
        role: &'static str,
        reads: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind,
            member: member.into(),
            name: name.into(),
            role,
            reads,
            health: Mutex::new(Health {
                state: State::Starting,
                since: Instant::now(),
                last_error: None,
            }),
            consumed: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            skipped_loop: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            journal: Mutex::new(None),
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.health.lock().state
    }

    /// Marks the bridge up (a no-op when it is).
    pub fn up(&self) {
        let mut h = self.health.lock();
        if h.state != State::Up {
            tracing::info!(kind = self.kind, member = %self.member, name = %self.name, "bridge up");
            h.state = State::Up;
            h.since = Instant::now();
        }
    }

    /// Marks the bridge down with `error` (kept as the last error).
    pub fn down(&self, error: impl std::fmt::Display) {
        let msg = error.to_string();
        let mut h = self.health.lock();
        if h.state != State::Down {
            tracing::warn!(kind = self.kind, member = %self.member, name = %self.name, error = %msg, "bridge down");
            h.state = State::Down;
            h.since = Instant::now();
        }
        h.last_error = Some((msg, unix_ms()));
    }

    /// Records an error without changing the state.
    pub fn error(&self, error: impl std::fmt::Display) {
        self.health.lock().last_error = Some((error.to_string(), unix_ms()));
    }

    /// Marks the bridge stopped.
    pub fn stopped(&self) {
        let mut h = self.health.lock();
        h.state = State::Stopped;
        h.since = Instant::now();
    }

    /// Shows the sink's journal as its backlog.
    pub fn set_journal(&self, journal: Journal) {
        *self.journal.lock() = Some(journal);
    }

    /// Events waiting in the sink's journal, and their bytes.
    pub fn backlog(&self) -> Option<(u64, u64)> {
        self.journal
            .lock()
            .as_ref()
            .map(|j| (j.len(), j.used_bytes()))
    }

    /// The entry of `GET /v1/bridges`.
    pub fn view(&self) -> BridgeView {
        let h = self.health.lock();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let backlog = self.backlog();
        BridgeView {
            kind: self.kind.to_string(),
            member: self.member.clone(),
            name: self.name.clone(),
            role: self.role.to_string(),
            reads: self.reads.clone(),
            state: h.state.as_str().to_string(),
            state_secs: h.since.elapsed().as_secs(),
            last_error: h.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at_ms: h.last_error.as_ref().map(|(_, t)| *t),
            consumed: c(&self.consumed),
            forwarded: c(&self.forwarded),
            unrouted: c(&self.unrouted),
            skipped_loop: c(&self.skipped_loop),
            refused: c(&self.refused),
            retries: c(&self.retries),
            backlog_events: backlog.map(|b| b.0),
            backlog_bytes: backlog.map(|b| b.1),
        }
    }

    fn export(&self) {
        let labels = [
            ("kind", self.kind.to_string()),
            ("member", self.member.clone()),
            ("name", self.name.clone()),
            ("role", self.role.to_string()),
        ];
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (metric, value) in [
            ("meshgate_bridge_consumed_total", c(&self.consumed)),
            ("meshgate_bridge_forwarded_total", c(&self.forwarded)),
            ("meshgate_bridge_unrouted_total", c(&self.unrouted)),
            ("meshgate_bridge_skipped_loop_total", c(&self.skipped_loop)),
            ("meshgate_bridge_refused_total", c(&self.refused)),
            ("meshgate_bridge_retries_total", c(&self.retries)),
        ] {
            metrics::counter!(metric, &labels).absolute(value);
        }
        let up = f64::from(u8::from(self.state() == State::Up));
        metrics::gauge!("meshgate_bridge_up", &labels).set(up);
        if let Some((events, bytes)) = self.backlog() {
            metrics::gauge!("meshgate_bridge_backlog_events", &labels).set(events as f64);
            metrics::gauge!("meshgate_bridge_backlog_bytes", &labels).set(bytes as f64);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Every bridge of a node.
#[derive(Clone, Default)]
pub struct Bridges {
    all: Arc<Mutex<Vec<Arc<BridgeStatus>>>>,
}

impl Bridges {
    /// Adds a bridge's status.
    pub fn add(&self, s: Arc<BridgeStatus>) {
        self.all.lock().push(s);
    }

    /// All of them, in configuration order.
    pub fn list(&self) -> Vec<Arc<BridgeStatus>> {
        self.all.lock().clone()
    }

    /// `GET /v1/bridges`.
    pub fn view(&self) -> Vec<BridgeView> {
        self.all.lock().iter().map(|s| s.view()).collect()
    }

    /// Sets the `meshgate_bridge_*` series (called when `/metrics` is rendered).
    pub fn export_metrics(&self) {
        for s in self.all.lock().iter() {
            s.export();
        }
    }
}
