//! The run of one link once its handshake is done: its streams, the control loop, and the
//! teardown. One frame loop ([`EventStream`]) serves the direct and the guaranteed readers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use meshgate_broker::Publisher;
use meshgate_broker::flow::{Limits, Valve};
use meshgate_proto::v1::{Ack, Frame, Hello, Pong, frame::Body};
use meshgate_registry::Gossip;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::frame;
use crate::guaranteed::{self, Outbox};
use crate::link::{self, FrameReader, Link, LinkStats};
use crate::state::Inner;

/// Runs a link whose handshake is done, until it goes down.
pub(crate) async fn run_link(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    hello: Hello,
    dialled: bool,
    control_send: quinn::SendStream,
    control: FrameReader,
) {
    let (ctx, crx) = mpsc::channel(4096);
    let limits = Limits::new(inner.cfg.link_queue, inner.cfg.link_queue_bytes);
    let peer: Arc<str> = hello.node.as_str().into();
    let link = Arc::new(Link {
        peer: peer.clone(),
        incarnation: hello.incarnation,
        role: hello.role.clone(),
        dialled,
        remote: conn.remote_address(),
        conn: conn.clone(),
        stats: LinkStats::default(),
        control: ctx,
        out: Default::default(),
        out_ready: Default::default(),
        origin: inner.name.clone(),
        valve: Valve::new(limits),
    });
    // Register and announce under the registry lock, so gossip for this link starts after it.
    let registered = {
        let _reg = inner.registry.lock();
        let ok = inner.register(&link);
        if ok {
            // A replaced duplicate leaves the table pointing at a closed link otherwise.
            inner.rebuild_hops();
        }
        ok
    };
    if !registered {
        info!(peer = %peer, "duplicate link closed");
        link.close("duplicate link");
        return;
    }
    info!(peer = %peer, remote = %link.remote, dialled, "mesh link up");
    inner
        .tasks
        .spawn(link::control_writer(control_send, crx, link.clone()));
    let cost = inner.cfg.link_cost;
    inner.with_registry(|reg, rt| reg.link_up(&peer, cost, rt));

    open_streams(&inner, &link);
    inner
        .tasks
        .spawn(accept_streams(inner.clone(), link.clone()));
    control_loop(&inner, &link, control).await;
    teardown(&inner, &link).await;
}

/// Opens this side's event stream and, with a store, its guaranteed stream, each with the task
/// that writes it.
fn open_streams(inner: &Arc<Inner>, link: &Arc<Link>) {
    {
        let link = link.clone();
        inner.tasks.spawn(async move {
            let Ok(mut send) = link.conn.open_uni().await else {
                return;
            };
            let _ = send.set_priority(-1);
            if send.write_all(&[guaranteed::STREAM_DIRECT]).await.is_err() {
                return;
            }
            link::event_writer(send, link).await;
        });
    }
    let Some(outbox) = &inner.outbox else { return };
    match outbox.queue(&link.peer) {
        Ok(queue) => {
            let (link, max) = (link.clone(), inner.cfg.max_frame_bytes);
            inner.tasks.spawn(async move {
                if let Ok(send) = link.conn.open_uni().await {
                    guaranteed::send_loop(queue, send, link, max).await;
                }
            });
        }
        Err(e) => warn!(peer = %link.peer, error = %e, "cannot open the guaranteed queue"),
    }
}

/// Accepts the peer's two unidirectional streams; the first byte of each says which kind.
async fn accept_streams(inner: Arc<Inner>, link: Arc<Link>) {
    for _ in 0..2 {
        let Ok(mut recv) = link.conn.accept_uni().await else {
            return;
        };
        let mut kind = [0u8];
        if recv.read_exact(&mut kind).await.is_err() {
            return;
        }
        let reader = FrameReader::new(recv, inner.cfg.max_frame_bytes);
        match (kind[0], &inner.outbox) {
            (guaranteed::STREAM_DIRECT, _) => {
                inner
                    .tasks
                    .spawn(read_direct(inner.clone(), link.clone(), reader));
            }
            (guaranteed::STREAM_GUARANTEED, Some(outbox)) => {
                let outbox = outbox.clone();
                inner
                    .tasks
                    .spawn(read_guaranteed(inner.clone(), outbox, link.clone(), reader));
            }
            (other, _) => {
                close_with(&link, &format!("unexpected stream kind {other}"));
                return;
            }
        }
    }
}

/// Serves the control stream (gossip, pings, acknowledgements) until the link ends.
async fn control_loop(inner: &Arc<Inner>, link: &Arc<Link>, mut control: FrameReader) {
    let peer = &link.peer;
    loop {
        let f = match control.next().await {
            Ok(Some((f, size))) => {
                link.stats
                    .rx_control_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                f
            }
            Ok(None) => return,
            Err(e) => {
                close_with(link, &e.to_string());
                return;
            }
        };
        match f.body {
            Some(Body::Digest(d)) => {
                inner.with_registry(|reg, rt| reg.on_gossip(peer, Gossip::Digest(d), rt))
            }
            Some(Body::Delta(d)) => {
                inner.with_registry(|reg, rt| reg.on_gossip(peer, Gossip::Delta(d), rt))
            }
            Some(Body::Ping(p)) => {
                link.send_control(Frame {
                    body: Some(Body::Pong(Pong { nonce: p.nonce })),
                });
            }
            Some(Body::Pong(p)) => {
                let now = inner.started.elapsed().as_micros() as u64;
                link.stats
                    .rtt_us
                    .store(now.saturating_sub(p.nonce), Ordering::Relaxed);
            }
            Some(Body::Close(c)) => {
                info!(peer = %peer, reason = c.reason, "peer closes the link");
                return;
            }
            Some(Body::Ack(a)) => {
                if let Some(outbox) = &inner.outbox
                    && let Ok(q) = outbox.queue(peer)
                {
                    q.ack(a.up_to);
                }
            }
            Some(Body::Hello(_)) | Some(Body::Events(_)) | None => {
                close_with(link, "unexpected frame on the control stream");
                return;
            }
        }
    }
}

/// Closes the connection, waits for it to end, and takes the link out of the tables and the
/// registry (unless a newer link to the same peer replaced it already).
async fn teardown(inner: &Arc<Inner>, link: &Arc<Link>) {
    // Nobody waits for a link that is gone, and its writer ends.
    link.valve.set_online(false);
    link.close_out();
    link.conn.close(0u32.into(), b"link closed");
    let reason = link.conn.closed().await;
    let removed = {
        let mut links = inner.links.write();
        if links.get(&link.peer).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.peer);
            true
        } else {
            false
        }
    };
    if removed {
        inner.rebuild_hops();
        info!(peer = %link.peer, reason = %reason, "mesh link down");
        inner.with_registry(|reg, rt| reg.link_down(&link.peer, rt));
    }
}

/// What one batch of events did, for the link's counters.
#[derive(Default)]
struct Batch {
    /// Events in the batch.
    events: u64,
    /// Local subscriber copies made from them.
    fanout: u64,
}

/// The frame loop of an event stream, shared by the direct and the guaranteed reader: counts
/// each frame and what it did, and closes the link when the stream breaks or a frame is
/// refused.
struct EventStream {
    link: Arc<Link>,
    reader: FrameReader,
}

impl EventStream {
    /// The next frame's body and encoded size; `None` at the end of the stream or once it
    /// broke (the link is closed then).
    async fn next(&mut self) -> Option<(Bytes, usize)> {
        match self.reader.next_raw().await {
            Ok(Some((body, size))) => {
                self.link
                    .stats
                    .rx_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                Some((body, size))
            }
            Ok(None) => None,
            Err(e) => {
                close_with(&self.link, &e.to_string());
                None
            }
        }
    }

    /// Counts what a frame did; `Err` refuses it and closes the link (the caller stops).
    fn done(&self, batch: Batch, result: Result<(), String>) -> bool {
        let s = &self.link.stats;
        s.rx_events.fetch_add(batch.events, Ordering::Relaxed);
        s.rx_fanout.fetch_add(batch.fanout, Ordering::Relaxed);
        match result {
            Ok(()) => true,
            Err(e) => {
                close_with(&self.link, &e);
                false
            }
        }
    }
}

/// Reads the peer's direct event stream: delivers and forwards each event at once.
async fn read_direct(inner: Arc<Inner>, link: Arc<Link>, reader: FrameReader) {
    let mut publisher = inner.broker.publisher("mesh", None);
    // Each subscriber's share of a frame is queued at once (see Publisher::set_batched).
    publisher.set_batched(true);
    let mut stream = EventStream { link, reader };
    while let Some((body, _)) = stream.next().await {
        let mut batch = Batch::default();
        let r = frame::for_each_incoming(body, &inner.name, |e| {
            batch.events += 1;
            batch.fanout += inner.on_event(e, &mut publisher);
        });
        publisher.flush(&inner.broker);
        if !stream.done(batch, r.map(drop).map_err(|e| e.to_string())) {
            return;
        }
        // A congested destination (a local mailbox, the next link) slows this stream: QUIC's
        // flow control then slows the peer.
        if publisher.is_congested() {
            publisher.wait_for_room(inner.broker.config().stall).await;
            publisher.flush(&inner.broker);
        }
    }
}

/// Reads the peer's guaranteed stream: stores or delivers each batch, then acknowledges it
/// once durable. A full store stops reading (the peer keeps the events) until there is room.
async fn read_guaranteed(
    inner: Arc<Inner>,
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    reader: FrameReader,
) {
    let mut publisher = inner.broker.publisher("mesh", None);
    let acks = spawn_acker(&inner, &outbox, &link);
    let mut stream = EventStream { link, reader };
    while let Some((body, size)) = stream.next().await {
        while !outbox.disk().has_room(size as u64 * 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut batch = Batch::default();
        let r = store_batch(&inner, &outbox, &mut publisher, body, &mut batch);
        publisher.flush(&inner.broker);
        if publisher.is_congested() {
            publisher.wait_for_room(inner.broker.config().stall).await;
            publisher.flush(&inner.broker);
        }
        let r = r.map(|(ticket, up_to)| {
            if up_to > 0 {
                let _ = acks.send((ticket, up_to));
            }
        });
        if !stream.done(batch, r) {
            return;
        }
    }
}

/// Stores or delivers every event of one guaranteed frame; returns the commit ticket that makes
/// all of it durable and the sequence number to acknowledge then.
fn store_batch(
    inner: &Inner,
    outbox: &Outbox,
    publisher: &mut Publisher,
    body: Bytes,
    batch: &mut Batch,
) -> Result<(u64, u64), String> {
    let mut ticket = 0u64;
    let mut failed = None;
    let r = frame::for_each_incoming(body, &inner.name, |e| {
        batch.events += 1;
        match inner.on_guaranteed(outbox, e, publisher) {
            Ok((f, t)) => {
                batch.fanout += f;
                ticket = ticket.max(t);
            }
            Err(e) => failed = Some(e),
        }
    });
    let up_to = r.map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        // Not acknowledged: the peer sends the batch again on the next link.
        return Err(format!("cannot store guaranteed events: {e}"));
    }
    Ok((ticket, up_to))
}

/// The task that acknowledges received guaranteed batches in order, each once the commit
/// cycle covering it is done. Send it (ticket, up_to) per batch.
fn spawn_acker(
    inner: &Inner,
    outbox: &Outbox,
    link: &Arc<Link>,
) -> mpsc::UnboundedSender<(u64, u64)> {
    let (atx, mut arx) = mpsc::unbounded_channel::<(u64, u64)>();
    let (link, disk) = (link.clone(), outbox.disk().clone());
    inner.tasks.spawn(async move {
        while let Some((mut ticket, mut up_to)) = arx.recv().await {
            while let Ok((t, u)) = arx.try_recv() {
                ticket = ticket.max(t);
                up_to = up_to.max(u);
            }
            disk.wait(ticket).await;
            link.send_control(Frame {
                body: Some(Body::Ack(Ack { up_to })),
            });
        }
    });
    atx
}

/// Logs why and closes the link.
pub(crate) fn close_with(link: &Link, reason: &str) {
    warn!(peer = %link.peer, reason, "closing mesh link");
    link.close(reason);
}
