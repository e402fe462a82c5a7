//! One link: a QUIC connection to a peer node, its streams, and its counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use meshgate_broker::flow::{Admit, Congestion, Valve};
use meshgate_proto::v1::{Frame, Hello, frame::Body};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::frame::{self, FrameError, OutEvent};

/// Counters of one link, shown in `GET /v1/mesh` and `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Events sent (direct class).
    pub tx_events: AtomicU64,
    /// Bytes of event frames sent.
    pub tx_bytes: AtomicU64,
    /// Events received.
    pub rx_events: AtomicU64,
    /// Bytes of event frames received.
    pub rx_bytes: AtomicU64,
    /// Local subscriber copies made here from events received on this link: what a bridge
    /// per subscriber would have carried across the link instead of one copy per event.
    pub rx_fanout: AtomicU64,
    /// Direct events dropped: the link's queue at its hard limit, or the link declared slow
    /// (its peer took nothing while publishers waited; see meshgate_broker::flow).
    pub dropped: AtomicU64,
    /// Times a publisher found this link's queue above its high watermark and waited.
    pub congested: AtomicU64,
    /// Control frames (gossip, pings) sent and their bytes.
    pub tx_control_bytes: AtomicU64,
    /// Control bytes received.
    pub rx_control_bytes: AtomicU64,
    /// Last measured round trip, microseconds (0 = not yet).
    pub rtt_us: AtomicU64,
}

/// A link that is up.
#[derive(Debug)]
pub struct Link {
    /// The peer's node name (checked against its certificate).
    pub peer: Arc<str>,
    /// The peer's incarnation from its Hello.
    pub incarnation: u64,
    /// The peer's role.
    pub role: String,
    /// True if this node dialled the connection.
    pub dialled: bool,
    /// The peer's address.
    pub remote: std::net::SocketAddr,
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Counters.
    pub stats: LinkStats,
    pub(crate) control: mpsc::Sender<Frame>,
    pub(crate) events: mpsc::Sender<OutEvent>,
    /// Flow control of the direct event queue: publishers wait above its high watermark while
    /// the writer makes progress (see meshgate_broker::flow).
    pub valve: Arc<Valve>,
}

/// Bytes an event copy counts for in a link's queue beyond payload and topic.
const OUT_EVENT_OVERHEAD: u64 = 96;

/// What an event copy counts for against a link queue's byte limit.
pub(crate) fn out_size(e: &OutEvent) -> u64 {
    (e.event.payload.len() + e.event.topic.len()) as u64 + OUT_EVENT_OVERHEAD
}

impl Link {
    /// Queues one event copy. Above the queue's high watermark the copy is still taken and the
    /// link noted in `flow`, so that the publisher waits; a copy the queue refuses (hard limit,
    /// or the link declared slow) is dropped and counted.
    pub fn send_event(&self, e: OutEvent, flow: &mut Congestion) -> bool {
        let size = out_size(&e);
        match self.valve.admit(size) {
            Admit::Taken { congested } => {
                if self.events.try_send(e).is_err() {
                    // The channel holds the hard limit: only a closed link refuses.
                    self.valve.took(1, size);
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                if congested {
                    self.stats.congested.fetch_add(1, Ordering::Relaxed);
                    flow.note(&self.valve);
                }
                true
            }
            Admit::Refused(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues a control frame; false if the control queue is full or closed.
    pub fn send_control(&self, f: Frame) -> bool {
        self.control.try_send(f).is_ok()
    }

    /// Closes the connection with a reason the peer logs.
    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }
}

/// Reads frames off a QUIC receive stream.
pub(crate) struct FrameReader {
    stream: quinn::RecvStream,
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    pub(crate) fn new(stream: quinn::RecvStream, max: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            max,
        }
    }

    /// The next frame with its encoded size, `None` at the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<(Frame, usize)>, LinkError> {
        match self.next_raw().await? {
            Some((body, size)) => Frame::decode(body)
                .map(|f| Some((f, size)))
                .map_err(|e| LinkError::Frame(FrameError::Malformed(e.to_string()))),
            None => Ok(None),
        }
    }

    /// The body of the next frame with its encoded size, `None` at the end of the stream.
    pub(crate) async fn next_raw(&mut self) -> Result<Option<(bytes::Bytes, usize)>, LinkError> {
        loop {
            let before = self.buf.len();
            if let Some(f) = frame::decode_raw(&mut self.buf, self.max)? {
                return Ok(Some((f, before - self.buf.len())));
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(LinkError::Protocol("stream ended inside a frame".into()))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(LinkError::Read(e.to_string())),
            }
        }
    }
}

/// Why a link ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A frame broke the rules.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The peer did something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Reading failed (connection lost).
    #[error("read: {0}")]
    Read(String),
    /// Writing failed (connection lost).
    #[error("write: {0}")]
    Write(String),
    /// The peer did not finish the handshake in time.
    #[error("handshake timed out")]
    Timeout,
    /// The QUIC connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer is not who it claims or may not join.
    #[error("refused: {0}")]
    Refused(String),
}

/// Writes one frame and flushes it.
pub(crate) async fn write_frame(s: &mut quinn::SendStream, f: &Frame) -> Result<(), LinkError> {
    let mut buf = BytesMut::new();
    frame::encode(f, &mut buf);
    s.write_all(&buf)
        .await
        .map_err(|e| LinkError::Write(e.to_string()))
}

/// Reads the peer's Hello from the control stream.
pub(crate) async fn read_hello(r: &mut FrameReader, timeout: Duration) -> Result<Hello, LinkError> {
    match tokio::time::timeout(timeout, r.next()).await {
        Err(_) => Err(LinkError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => Err(LinkError::Protocol(
            "control stream ended before Hello".into(),
        )),
        Ok(Ok(Some((
            Frame {
                body: Some(Body::Hello(h)),
            },
            _,
        )))) => Ok(h),
        Ok(Ok(Some(_))) => Err(LinkError::Protocol("first frame is not a Hello".into())),
    }
}

/// Drains the control queue onto the control stream, batching what is queued into one write.
pub(crate) async fn control_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Frame>,
    link: Arc<Link>,
) {
    let mut frames = Vec::with_capacity(64);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while rx.recv_many(&mut frames, 256).await > 0 {
        buf.clear();
        for f in frames.drain(..) {
            frame::encode(&f, &mut buf);
        }
        link.stats
            .tx_control_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Drains the event queue onto this side's event stream: everything queued since the last
/// write goes out as one frame in one write.
pub(crate) async fn event_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<OutEvent>,
    link: Arc<Link>,
    origin: Arc<str>,
    max_frame: usize,
) {
    let mut batch = Vec::with_capacity(1024);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut scratch = Vec::with_capacity(1024);
    // Keep each frame well under the receiver's limit.
    let budget = max_frame / 2;
    while rx.recv_many(&mut batch, 4096).await > 0 {
        buf.clear();
        let mut start = 0;
        let mut size = 0usize;
        for i in 0..batch.len() {
            size += batch[i].event.payload.len() + batch[i].event.topic.len() + 64;
            if size >= budget || i + 1 == batch.len() {
                frame::encode_events(&batch[start..=i], &origin, &mut buf, &mut scratch);
                start = i + 1;
                size = 0;
            }
        }
        // Taken: progress for the publishers waiting on this link.
        link.valve
            .took(batch.len(), batch.iter().map(out_size).sum());
        link.stats
            .tx_events
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        link.stats
            .tx_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        batch.clear();
        // Hand the encoded bytes to quinn without another copy.
        if send.write_chunk(buf.split().freeze()).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}
