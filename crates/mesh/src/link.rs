//! One link: a QUIC connection to a peer node, its streams, and its counters.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meshgate_broker::flow::{Admit, Congestion, Valve};
use meshgate_proto::Envelope;
use meshgate_proto::v1::{Frame, Hello, frame::Body};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, mpsc};

use crate::frame::{self, Dest, FrameError};

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
    /// Direct events encoded for the event stream and not written yet.
    pub(crate) out: Mutex<Outgoing>,
    /// Wakes the event writer: records arrived, or the link is closing.
    pub(crate) out_ready: Notify,
    /// This node's name, written as the origin of events that leave it now.
    pub(crate) origin: Arc<str>,
    /// Flow control of the direct event queue: publishers wait above its high watermark while
    /// the writer makes progress (see meshgate_broker::flow).
    pub valve: Arc<Valve>,
}

/// Most events in one frame: the receiver delivers a frame before it looks at its subscribers'
/// queues again, so a frame stays well under their high watermarks.
const FRAME_EVENTS: usize = 2048;

/// Bytes a frame's body is allocated with at once (unless one record is larger): a frame never
/// grows, so what it holds is never copied, and it stays below the allocator's large-object size
/// (128 KiB for mimalloc), whose pages go back to the kernel when freed and come back zeroed:
/// measured, bigger frames spent a tenth of the sending node's time in page faults.
const FRAME_BYTES: usize = 96 * 1024;

/// Direct events waiting for the event writer: whole `EventBatch` records, in frames' worth.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    segments: VecDeque<Segment>,
    /// The link is going away: the writer ends once it wrote what is here.
    closed: bool,
}

/// The body of one frame being filled: records back to back, and how many.
#[derive(Debug)]
struct Segment {
    body: BytesMut,
    events: usize,
}

impl Link {
    /// Queues one copy of `event` for `dests` (all behind this link): encoded at once into the
    /// link's outgoing frame by the publisher's task, so that nothing but bytes crosses to the
    /// writer. Above the queue's high watermark the copy is still taken and the link noted in
    /// `flow`, so that the publisher waits; a copy the queue refuses (hard limit, or the link
    /// declared slow) is dropped and counted.
    pub fn send<D: Dest>(
        &self,
        event: &Envelope,
        dests: &[D],
        hops: u32,
        flow: &mut Congestion,
    ) -> bool {
        let len = frame::record_len(event, dests, hops, &self.origin);
        let congested = match self.valve.admit(len as u64) {
            Admit::Taken { congested } => congested,
            Admit::Refused(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let mut out = self.out.lock();
        if out.closed {
            drop(out);
            self.valve.took(1, len as u64);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let was_empty = out.segments.is_empty();
        let room = out
            .segments
            .back()
            .is_some_and(|s| s.body.len() + len <= s.body.capacity() && s.events < FRAME_EVENTS);
        if !room {
            out.segments.push_back(Segment {
                body: BytesMut::with_capacity(FRAME_BYTES.max(len)),
                events: 0,
            });
        }
        if let Some(seg) = out.segments.back_mut() {
            frame::append_record(event, dests, hops, &self.origin, &mut seg.body);
            seg.events += 1;
        }
        drop(out);
        if was_empty {
            self.out_ready.notify_one();
        }
        if congested {
            self.stats.congested.fetch_add(1, Ordering::Relaxed);
            flow.note(&self.valve);
        }
        true
    }

    /// Ends the event writer once it wrote what is queued; later copies are dropped.
    pub(crate) fn close_out(&self) {
        self.out.lock().closed = true;
        self.out_ready.notify_one();
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

/// Writes the direct events that publishers encoded for this link ([`Link::send`]) onto this
/// side's event stream: every frame's worth queued since the last write goes out as one frame,
/// its body handed to quinn without a copy. Ends when the link closes.
pub(crate) async fn event_writer(mut send: quinn::SendStream, link: Arc<Link>) {
    let mut taken: VecDeque<Segment> = VecDeque::new();
    loop {
        let ready = link.out_ready.notified();
        tokio::pin!(ready);
        // Registered before looking, so records queued after the look wake it.
        ready.as_mut().enable();
        let closed = {
            let mut out = link.out.lock();
            std::mem::swap(&mut out.segments, &mut taken);
            out.closed
        };
        if taken.is_empty() {
            if closed {
                break;
            }
            ready.await;
            continue;
        }
        // Taken: progress for the publishers waiting on this link.
        let events: usize = taken.iter().map(|s| s.events).sum();
        let bytes: usize = taken.iter().map(|s| s.body.len()).sum();
        link.valve.took(events, bytes as u64);
        link.stats
            .tx_events
            .fetch_add(events as u64, Ordering::Relaxed);
        for seg in taken.drain(..) {
            let mut chunks = [frame::batch_header(seg.body.len()), seg.body.freeze()];
            let size = chunks.iter().map(Bytes::len).sum::<usize>();
            link.stats
                .tx_bytes
                .fetch_add(size as u64, Ordering::Relaxed);
            if send.write_all_chunks(&mut chunks).await.is_err() {
                return;
            }
        }
    }
    let _ = send.finish();
}
