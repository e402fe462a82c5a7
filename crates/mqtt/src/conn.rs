//! One MQTT connection: CONNECT, then a loop that reads packets, routes publishes, and writes
//! what the session has to send — one write per wakeup.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use meshgate_broker::{Delivery, JournalCursor, MailboxReceiver, Publisher};
use meshgate_store::Disk;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::codec::{self, Ack, DecodeError, Incoming, Version};
use crate::connect::{self, ConnectInfo, Will};
use crate::delivery::{JOURNAL_READ, PendingAck, wait_durable};
use crate::reason::Reason;
use crate::session::Session;
use crate::{Context, now_secs, protocol_error, schedule_expiry};

/// Why a connection ended, for the will and the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// DISCONNECT from the client; `true` if it asked for its will.
    Graceful { will: bool },
    /// Socket closed or failed without DISCONNECT.
    Lost,
    /// The node closed it: bad input, keep-alive, takeover or shutdown.
    Closed(&'static str),
}

/// Writes `buf` and flushes (a no-op on TCP; TLS sends its records).
pub(crate) async fn write_flush<S: Io>(stream: &mut S, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

/// What an MQTT connection runs over: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Serves one connection. `certificate` is the app id a verified client certificate names (TLS
/// with client authentication): it is the client's identity, whatever CONNECT says.
pub(crate) async fn run<S: Io>(
    ctx: Arc<Context>,
    stream: S,
    peer: SocketAddr,
    certificate: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("mqtt", peer = %peer, client = field::Empty);
    async move {
        ctx.stats.connections.increment(1);
        ctx.stats.connected.increment(1.0);
        handle(&ctx, stream, certificate, shutdown).await;
        ctx.stats.connected.decrement(1.0);
    }
    .instrument(span)
    .await
}

async fn handle<S: Io>(
    ctx: &Arc<Context>,
    mut stream: S,
    certificate: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut wbuf = BytesMut::with_capacity(8 * 1024);
    let Some(hello) = connect::accept(ctx, &mut stream, &mut rbuf, &mut wbuf, certificate).await
    else {
        return;
    };
    let (info, ver) = (&hello.info, hello.info.ver);
    tracing::Span::current().record("client", hello.client_id.as_str());

    let max_expiry = ctx.config.max_session_expiry_secs;
    let expiry = match ver {
        Version::V4 if info.clean => 0,
        Version::V4 => max_expiry,
        Version::V5 => info.session_expiry.min(max_expiry),
    };
    let opened = ctx.sessions.open(
        &ctx.broker,
        &hello.client_id,
        info.clean,
        ctx.config.queue_limits(),
        expiry,
        hello.app_id.as_ref(),
    );
    let (session, present, generation) = (opened.session, opened.present, opened.generation);
    session.mailbox.set_persistent(expiry > 0);
    let mut gen_rx = session.generation.subscribe();
    gen_rx.mark_unchanged();
    // A stored session gets its journal before any of its subscriptions enters the router.
    if let Some(stored) = opened.stored {
        let _ = stored.await;
    }

    // Wait for a connection being taken over to hand the mailbox back.
    let rx = match timeout(Duration::from_secs(5), session.mailbox.attach()).await {
        Ok(rx) => rx,
        Err(_) => {
            protocol_error("takeover_timeout");
            return;
        }
    };
    debug!(
        version = ver.label(),
        clean = info.clean,
        present,
        "connected"
    );

    connect::encode_connack_ok(ctx, info, present, expiry, hello.assigned, &mut wbuf);
    let mut conn = Conn::new(ctx, hello.info, hello.app_id, session, rbuf, wbuf);
    conn.resume();
    let end = conn.serve(&mut stream, rx, &mut gen_rx, shutdown).await;
    let graceful_will = match end {
        End::Graceful { will } => will,
        _ => true,
    };
    debug!(?end, "connection ended");
    conn.finish(generation, graceful_will);
}

/// One connection's state after CONNECT.
pub(crate) struct Conn {
    pub(crate) ctx: Arc<Context>,
    pub(crate) ver: Version,
    pub(crate) publisher: Publisher,
    pub(crate) session: Arc<Session>,
    pub(crate) will: Option<Will>,
    pub(crate) keep_alive: u16,
    /// QoS 1 deliveries allowed in flight.
    pub(crate) window: usize,
    pub(crate) client_max: Option<u32>,
    /// v5 topic aliases the client set.
    pub(crate) aliases: HashMap<u16, String>,
    /// QoS 2 packet ids received and not yet released (exactly-once inbound).
    pub(crate) qos2_in: HashSet<u16>,
    /// QoS 1 deliveries sent and not acknowledged, oldest first.
    pub(crate) inflight: VecDeque<(u16, Delivery)>,
    /// Deliveries waiting for the in-flight window.
    pub(crate) outq: VecDeque<Delivery>,
    pub(crate) next_pkid: u16,
    pub(crate) props: BytesMut,
    pub(crate) wbuf: BytesMut,
    pub(crate) rbuf: BytesMut,
    pub(crate) batch: Vec<Delivery>,
    pub(crate) sent: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) received: u64,
    /// The broker's store, when it has one.
    pub(crate) disk: Option<Disk>,
    /// Its last completed commit cycle.
    pub(crate) durable: Option<watch::Receiver<u64>>,
    /// Acknowledgements of publishes waiting for their commit ticket, in arrival order.
    pub(crate) acks: VecDeque<PendingAck>,
    /// The session's journal and how far it was taken, if the session is stored.
    pub(crate) cursor: Option<JournalCursor>,
    /// The journal is released up to and including this.
    pub(crate) released: u64,
    /// When the next release of the journal is due, if one is.
    pub(crate) release_at: Option<Instant>,
    pub(crate) last_release: Instant,
    pub(crate) release_timer: Pin<Box<Sleep>>,
    /// The last batch from the mailbox held a journaled delivery.
    pub(crate) took_journaled: bool,
    /// Subscriptions changed: the session's metadata must be written before the next write.
    pub(crate) meta_dirty: bool,
    /// Session expiry the client asked for at CONNECT (v5; 0 for 3.1.1).
    pub(crate) connect_expiry: u32,
}

impl Conn {
    /// The state of a connection whose CONNECT was accepted, for `session`.
    fn new(
        ctx: &Arc<Context>,
        info: ConnectInfo,
        app_id: Option<Arc<str>>,
        session: Arc<Session>,
        rbuf: BytesMut,
        wbuf: BytesMut,
    ) -> Self {
        let cursor = session
            .mailbox
            .journal()
            .map(|j| JournalCursor::new(j.clone(), session.state.lock().disk_next));
        let released = cursor.as_ref().map_or(0, |c| c.journal().bounds().0 - 1);
        let disk = ctx.broker.disk().cloned();
        let mut publisher = ctx.broker.publisher("mqtt", Some(session.mailbox.id()));
        publisher.set_batched(true);
        publisher.set_app_id(app_id);
        Conn {
            durable: disk.as_ref().map(Disk::durable),
            disk,
            acks: VecDeque::new(),
            cursor,
            released,
            release_at: None,
            last_release: Instant::now(),
            release_timer: Box::pin(sleep_until(Instant::now())),
            took_journaled: false,
            meta_dirty: false,
            connect_expiry: info.session_expiry,
            ctx: ctx.clone(),
            ver: info.ver,
            publisher,
            session,
            will: info.will,
            keep_alive: info.keep_alive,
            window: info.receive_max.min(ctx.config.max_inflight).max(1) as usize,
            client_max: info.max_packet,
            aliases: HashMap::new(),
            qos2_in: HashSet::new(),
            inflight: VecDeque::new(),
            outq: VecDeque::new(),
            next_pkid: 0,
            props: BytesMut::new(),
            wbuf,
            rbuf,
            batch: Vec::with_capacity(256),
            sent: 0,
            sent_bytes: 0,
            received: 0,
        }
    }

    async fn serve<S: Io>(
        &mut self,
        stream: &mut S,
        mut rx: MailboxReceiver,
        gen_rx: &mut watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) -> End {
        let ka = Duration::from_millis(self.keep_alive as u64 * 1500);
        let mut last_read = Instant::now();
        let deadline = sleep_until(last_read + ka);
        tokio::pin!(deadline);
        // Packets that arrived in the same read as CONNECT.
        if let Some(end) = self.on_bytes() {
            self.save_meta().await;
            let _ = write_flush(stream, &self.wbuf).await;
            self.keep_for_later(rx);
            return end;
        }
        self.save_meta().await;
        self.pump();
        let stall = self.ctx.broker.config().stall;
        // The publisher filled a congested queue: the socket is not read until it has room.
        let mut stalled = false;
        let end = loop {
            if let Some(end) = self.write_out(stream, &mut rx).await {
                break end;
            }
            // tokio's read_buf grows a full BytesMut by only 64 bytes: keep real room for a
            // large read so a busy publisher costs one syscall per many packets.
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(32 * 1024);
            }
            if self.read_journal(&rx) {
                continue;
            }
            let room = self.has_room();
            tokio::select! {
                biased;
                _ = gen_rx.changed() => {
                    break self.close_with(stream, Reason::SessionTakenOver, "session taken over").await;
                }
                _ = shutdown.changed() => {
                    break self.close_with(stream, Reason::ServerShuttingDown, "server shutting down").await;
                }
                r = stream.read_buf(&mut self.rbuf), if !stalled => {
                    last_read = Instant::now();
                    match self.on_read(stream, r).await {
                        Ok(congested) => stalled = congested,
                        Err(end) => break end,
                    }
                }
                () = self.publisher.wait_for_room(stall), if stalled => {
                    stalled = false;
                    // Not reading was the node's doing, not the client's silence.
                    last_read = Instant::now();
                    self.publisher.flush(&self.ctx.broker);
                }
                n = rx.recv_many(&mut self.batch, 256), if room => {
                    if n == 0 {
                        if rx.is_cut() {
                            break self.slow_consumer(stream, true).await;
                        }
                        break End::Closed("session ended");
                    }
                    self.take_batch();
                }
                () = wait_durable(&mut self.durable), if !self.acks.is_empty() => {
                    self.flush_acks();
                    if !self.acks.is_empty()
                        && let Some(why) = self.disk.as_ref().and_then(|d| d.failure())
                    {
                        // What waits will never be acknowledged, and acknowledgements go in
                        // order: end the connection so the client sends it again later.
                        warn!(error = why, "closing an MQTT connection: the store failed");
                        break self.close_with(stream, Reason::UnspecifiedError, "the store failed").await;
                    }
                }
                () = &mut self.release_timer, if self.release_at.is_some() => {
                    self.release();
                }
                _ = &mut deadline, if self.keep_alive > 0 => {
                    if stalled {
                        last_read = Instant::now();
                    } else if last_read.elapsed() >= ka {
                        protocol_error("keep_alive");
                        break self.close_with(stream, Reason::KeepAliveTimeout, "keep alive timeout").await;
                    }
                    deadline.as_mut().reset(last_read + ka);
                }
            }
            self.pump();
        };
        self.flush_stats();
        self.keep_for_later(rx);
        end
    }

    /// Writes what is encoded. A client that stopped reading and is cut as a slow consumer may
    /// hold the write forever: the cut ends it.
    async fn write_out<S: Io>(&mut self, stream: &mut S, rx: &mut MailboxReceiver) -> Option<End> {
        if self.wbuf.is_empty() {
            return None;
        }
        let n = self.wbuf.len();
        let write = timeout(
            self.ctx.config.write_timeout,
            write_flush(stream, &self.wbuf),
        );
        let written = tokio::select! {
            r = write => r,
            () = rx.cut() => return Some(self.slow_consumer(stream, false).await),
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(End::Lost),
            Err(_) => return Some(End::Closed("write timeout")),
        }
        self.sent_bytes += n as u64;
        self.wbuf.clear();
        self.flush_stats();
        None
    }

    /// Room for more deliveries: nothing waits to be encoded and the inflight window is open.
    fn has_room(&self) -> bool {
        self.outq.is_empty() && self.inflight.len() < self.window
    }

    /// Reads back deliveries that are in the journal but not in the mailbox (it overflowed, or
    /// the node restarted) when there is room for them; true if that encoded something to write.
    fn read_journal(&mut self, rx: &MailboxReceiver) -> bool {
        if self.has_room()
            && (rx.is_empty() || !self.took_journaled)
            && let Some(c) = self.cursor.as_mut()
            && c.has_more()
        {
            c.read(JOURNAL_READ, &mut self.outq);
            self.pump();
            return !self.wbuf.is_empty();
        }
        false
    }

    /// Handles what a read brought; `Ok(true)` if a queue it published into is congested, so
    /// that the socket is not read until it has room.
    async fn on_read<S: Io>(
        &mut self,
        stream: &mut S,
        r: std::io::Result<usize>,
    ) -> Result<bool, End> {
        match r {
            Ok(0) | Err(_) => return Err(End::Lost),
            Ok(n) => {
                self.ctx.stats.received_bytes.increment(n as u64);
                self.publisher.set_clock(meshgate_broker::now_ms());
            }
        }
        let end = self.on_bytes();
        self.save_meta().await;
        if let Some(end) = end {
            let _ = write_flush(stream, &self.wbuf).await;
            return Err(end);
        }
        self.publisher.flush(&self.ctx.broker);
        self.flush_stats();
        Ok(self.publisher.is_congested())
    }

    /// Ends the connection with a DISCONNECT (MQTT 5; nothing for 3.1.1) saying why.
    async fn close_with<S: Io>(
        &mut self,
        stream: &mut S,
        reason: Reason,
        why: &'static str,
    ) -> End {
        codec::encode_disconnect(self.ver, reason, why, &mut self.wbuf);
        let _ = write_flush(stream, &self.wbuf).await;
        End::Closed(why)
    }

    /// Ends a connection whose client was declared slow under the disconnect policy: an MQTT
    /// 5 client that can still be written to learns why.
    async fn slow_consumer<S: Io>(&mut self, stream: &mut S, writable: bool) -> End {
        let valve = self.session.mailbox.valve();
        info!(
            queued = valve.events(),
            "disconnecting a slow consumer: it took nothing while publishers waited"
        );
        if writable {
            self.wbuf.clear();
            let why = "slow consumer: no progress while its queue was full";
            codec::encode_disconnect(self.ver, Reason::QuotaExceeded, why, &mut self.wbuf);
            let _ = timeout(Duration::from_secs(1), write_flush(stream, &self.wbuf)).await;
        }
        End::Closed("slow consumer")
    }

    /// Writes the session's metadata if its subscriptions changed; waits for it, so that a
    /// SUBACK never promises a subscription the node would forget.
    async fn save_meta(&mut self) {
        if !std::mem::take(&mut self.meta_dirty) {
            return;
        }
        if let Some(p) = self.ctx.sessions.persist() {
            let _ = p.save(&self.session).await;
        }
    }

    fn flush_stats(&mut self) {
        if self.received > 0 {
            self.ctx.stats.received.increment(self.received);
            self.received = 0;
        }
        if self.sent > 0 {
            self.ctx.stats.sent.increment(self.sent);
            self.ctx.stats.sent_bytes.increment(self.sent_bytes);
            self.sent = 0;
            self.sent_bytes = 0;
        }
    }

    /// Decodes and handles every complete packet in the read buffer, then stores what the
    /// batch delivered to journaled sessions with one write per session
    /// ([`meshgate_broker::Broker::flush_held`]); the acknowledgements of the batch wait for
    /// that ticket too. Returns why to close.
    fn on_bytes(&mut self) -> Option<End> {
        let from = self.acks.len();
        let end = self.read_packets();
        let ticket = self.ctx.broker.flush_held(&mut self.publisher);
        if ticket > 0 {
            for a in self.acks.iter_mut().skip(from) {
                a.ticket = a.ticket.max(ticket);
            }
        }
        self.flush_acks();
        end
    }

    fn read_packets(&mut self) -> Option<End> {
        let max = self.ctx.config.max_packet_size;
        loop {
            let packet = match codec::decode(self.ver, &mut self.rbuf, max) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(DecodeError::TooLarge(n)) => {
                    protocol_error("packet_too_large");
                    let msg = format!("packet of {n} bytes exceeds the maximum of {max}");
                    debug!(%msg);
                    codec::encode_disconnect(
                        self.ver,
                        Reason::PacketTooLarge,
                        &msg,
                        &mut self.wbuf,
                    );
                    return Some(End::Closed("packet too large"));
                }
                Err(DecodeError::Malformed(e)) => {
                    protocol_error("malformed");
                    debug!(error = %e, "malformed packet");
                    codec::encode_disconnect(self.ver, Reason::MalformedPacket, &e, &mut self.wbuf);
                    return Some(End::Closed("malformed packet"));
                }
            };
            self.received += 1;
            if let Some(end) = self.on_packet(packet) {
                return Some(end);
            }
        }
    }

    fn on_packet(&mut self, p: Incoming) -> Option<End> {
        match p {
            Incoming::Publish(p) => return self.on_publish(p),
            Incoming::PubAck(pkid) => {
                if let Some(i) = self.inflight.iter().position(|(p, _)| *p == pkid)
                    && self.inflight.remove(i).is_some_and(|(_, d)| d.seq != 0)
                {
                    self.schedule_release();
                }
            }
            Incoming::PubRel(pkid) => {
                self.qos2_in.remove(&pkid);
                self.ack(0, pkid, Ack::Pubcomp, Reason::Success, None);
            }
            Incoming::Subscribe {
                pkid,
                filters,
                sub_id,
            } => self.on_subscribe(pkid, filters, sub_id),
            Incoming::Unsubscribe { pkid, filters } => self.on_unsubscribe(pkid, filters),
            Incoming::PingReq => codec::encode_pingresp(&mut self.wbuf),
            Incoming::Disconnect {
                with_will,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if self.connect_expiry == 0 && e > 0 {
                        // MQTT 5 §3.14.2.2.2: a session that was not kept cannot become kept.
                        protocol_error("session_expiry");
                        let msg = "session expiry set on DISCONNECT after 0 at CONNECT";
                        codec::encode_disconnect(
                            self.ver,
                            Reason::ProtocolError,
                            msg,
                            &mut self.wbuf,
                        );
                        return Some(End::Closed("protocol error"));
                    }
                    let max = self.ctx.config.max_session_expiry_secs;
                    self.session.state.lock().expiry_secs = e.min(max);
                    self.session.mailbox.set_persistent(e > 0);
                }
                return Some(End::Graceful { will: with_will });
            }
            Incoming::Unexpected(what) => {
                protocol_error("unexpected_packet");
                let msg = format!("unexpected packet: {what}");
                codec::encode_disconnect(self.ver, Reason::ProtocolError, &msg, &mut self.wbuf);
                return Some(End::Closed("protocol error"));
            }
        }
        None
    }

    /// After the socket is gone: the will, then the session's fate.
    fn finish(mut self, generation: u64, publish_will: bool) {
        let ctx = self.ctx.clone();
        let expiry = self.session.state.lock().expiry_secs;
        if let Some(will) = self.will.take().filter(|_| publish_will) {
            let delay = will.delay_secs.min(expiry);
            if delay == 0 {
                publish_will_now(&ctx, &mut self.publisher, will);
            } else {
                // MQTT 5 will delay: published unless the session resumes first.
                let session = self.session.clone();
                let ctx = ctx.clone();
                let mut publisher = self.publisher;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                    if *session.generation.borrow() == generation {
                        publish_will_now(&ctx, &mut publisher, will);
                    }
                });
            }
        }
        if expiry == 0 {
            ctx.sessions
                .end_if_current(&ctx.broker, &self.session, generation);
            return;
        }
        // Record when the session went offline, unless a new connection has it already (the
        // generation is bumped under the same lock).
        let current = {
            let mut st = self.session.state.lock();
            let current = *self.session.generation.borrow() == generation;
            if current {
                st.disconnected_at = Some(now_secs());
            }
            current
        };
        if current && let Some(p) = ctx.sessions.persist() {
            drop(p.save(&self.session)); // written in the background
        }
        if expiry != u32::MAX {
            let after = Duration::from_secs(expiry as u64);
            schedule_expiry(&ctx, self.session.clone(), generation, after);
        }
    }
}

fn publish_will_now(ctx: &Context, publisher: &mut Publisher, will: Will) {
    // The batch clock is stale by now (the will may be delayed): read the clock afresh.
    publisher.set_clock(0);
    let topic = will.env.topic.clone();
    match ctx.broker.publish(publisher, will.env, will.qos) {
        Ok(_) => debug!(%topic, "will published"),
        Err(e) => debug!(%topic, error = %e, "will refused"),
    }
    publisher.flush(&ctx.broker);
}
