//! One MQTT connection: CONNECT, then a loop that reads packets, routes publishes, and writes
//! what the session has to send — one write per wakeup.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meshgate_broker::{
    Credentials, Delivery, JournalCursor, MailboxReceiver, PublishError, Publisher, SubOptions,
};
use meshgate_proto::{DeliveryClass, Envelope, Header};
use meshgate_store::Disk;
use meshgate_topic::parse_mqtt_filter;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::codec::{self, Ack, DecodeError, InFilter, InPublish, Incoming, Version};
use crate::session::{Session, SubRecord};
use crate::{Context, now_secs, protocol_error, schedule_expiry};

/// Most journal records read back at once (bounds the memory a backlog takes).
const JOURNAL_READ: usize = 4096;
/// Least time between two releases of the session journal (each costs an fsync).
const RELEASE_EVERY: Duration = Duration::from_millis(250);

/// The last will of a connection.
struct Will {
    env: Envelope,
    qos: u8,
    delay_secs: u32,
}

/// What CONNECT said, for either version.
struct ConnectInfo {
    ver: Version,
    client_id: String,
    clean: bool,
    keep_alive: u16,
    username: Option<String>,
    password: Option<String>,
    will: Option<Will>,
    session_expiry: u32,
    receive_max: u16,
    max_packet: Option<u32>,
}

/// Why a connection ended, for the will and the log.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client; `true` if it asked for its will.
    Graceful { will: bool },
    /// Socket closed or failed without DISCONNECT.
    Lost,
    /// The node closed it: bad input, keep-alive, takeover or shutdown.
    Closed(&'static str),
}

/// Writes `buf` and flushes (a no-op on TCP; TLS sends its records).
async fn write_flush<S: Io>(stream: &mut S, buf: &[u8]) -> std::io::Result<()> {
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
    let max = ctx.config.max_packet_size;
    let info = match timeout(
        ctx.config.connect_timeout,
        read_connect(&mut stream, &mut rbuf, max),
    )
    .await
    {
        Ok(Ok(info)) => info,
        Ok(Err(reason)) => {
            debug!(reason, "refused before CONNECT completed");
            protocol_error(reason);
            return;
        }
        Err(_) => {
            debug!("no CONNECT in time");
            protocol_error("connect_timeout");
            return;
        }
    };
    let mut wbuf = BytesMut::with_capacity(8 * 1024);
    let ver = info.ver;

    // Identity first: a refused client learns nothing else.
    let creds = Credentials {
        protocol: "mqtt",
        client_id: &info.client_id,
        username: info.username.as_deref(),
        password: info.password.as_deref().map(str::as_bytes),
        certificate: certificate.as_deref(),
    };
    let identity = match ctx.auth.authenticate(&creds) {
        Ok(id) => id,
        Err(e) => {
            debug!(error = %e, "authentication failed");
            protocol_error("auth");
            let code = match e {
                meshgate_broker::AuthError::AnonymousDisabled => 0x87,
                meshgate_broker::AuthError::BadCredentials => 0x86,
            };
            encode_connack_refused(ver, code, &mut wbuf);
            let _ = write_flush(&mut stream, &wbuf).await;
            return;
        }
    };

    // MQTT 3.1.1 only lets a clean session go without a client id; v5 always may.
    let mut assigned = None;
    let client_id = if info.client_id.is_empty() {
        if ver == Version::V4 && !info.clean {
            protocol_error("client_id");
            encode_connack_refused(ver, 0x85, &mut wbuf);
            let _ = write_flush(&mut stream, &wbuf).await;
            return;
        }
        let id = format!("auto-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id
    } else {
        info.client_id.clone()
    };
    tracing::Span::current().record("client", client_id.as_str());

    let max_expiry = ctx.config.max_session_expiry_secs;
    let expiry = match ver {
        Version::V4 if info.clean => 0,
        Version::V4 => max_expiry,
        Version::V5 => info.session_expiry.min(max_expiry),
    };
    let opened = ctx.sessions.open(
        &ctx.broker,
        &client_id,
        info.clean,
        ctx.config.max_queued_messages,
        expiry,
        identity.app_id.as_ref(),
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

    encode_connack_ok(ctx, &info, present, expiry, assigned, &mut wbuf);
    let cursor = session
        .mailbox
        .journal()
        .map(|j| JournalCursor::new(j.clone(), session.state.lock().disk_next));
    let released = cursor.as_ref().map_or(0, |c| c.journal().bounds().0 - 1);
    let disk = ctx.broker.disk().cloned();
    let mut conn = Conn {
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
        ver,
        publisher: {
            let mut p = ctx.broker.publisher("mqtt", Some(session.mailbox.id()));
            p.set_batched(true);
            p
        },
        session: session.clone(),
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
    };
    conn.publisher.set_app_id(identity.app_id.clone());
    conn.resume();
    let end = conn.serve(&mut stream, rx, &mut gen_rx, shutdown).await;
    let graceful_will = match end {
        End::Graceful { will } => will,
        _ => true,
    };
    debug!(?end, "connection ended");
    conn.finish(generation, graceful_will);
}

struct Conn {
    ctx: Arc<Context>,
    ver: Version,
    publisher: Publisher,
    session: Arc<Session>,
    will: Option<Will>,
    keep_alive: u16,
    /// QoS 1 deliveries allowed in flight.
    window: usize,
    client_max: Option<u32>,
    /// v5 topic aliases the client set.
    aliases: HashMap<u16, String>,
    /// QoS 2 packet ids received and not yet released (exactly-once inbound).
    qos2_in: HashSet<u16>,
    /// QoS 1 deliveries sent and not acknowledged, oldest first.
    inflight: VecDeque<(u16, Delivery)>,
    /// Deliveries waiting for the in-flight window.
    outq: VecDeque<Delivery>,
    next_pkid: u16,
    props: BytesMut,
    wbuf: BytesMut,
    rbuf: BytesMut,
    batch: Vec<Delivery>,
    sent: u64,
    sent_bytes: u64,
    received: u64,
    /// The broker's store, when it has one.
    disk: Option<Disk>,
    /// Its last completed commit cycle.
    durable: Option<watch::Receiver<u64>>,
    /// Acknowledgements of publishes waiting for their commit ticket, in arrival order.
    acks: VecDeque<PendingAck>,
    /// The session's journal and how far it was taken, if the session is stored.
    cursor: Option<JournalCursor>,
    /// The journal is released up to and including this.
    released: u64,
    /// When the next release of the journal is due, if one is.
    release_at: Option<Instant>,
    last_release: Instant,
    release_timer: Pin<Box<Sleep>>,
    /// The last batch from the mailbox held a journaled delivery.
    took_journaled: bool,
    /// Subscriptions changed: the session's metadata must be written before the next write.
    meta_dirty: bool,
    /// Session expiry the client asked for at CONNECT (v5; 0 for 3.1.1).
    connect_expiry: u32,
}

/// An acknowledgement waiting until the publish it answers is durable.
struct PendingAck {
    ticket: u64,
    pkid: u16,
    kind: Ack,
    /// v5 reason code (0 = success).
    reason: u8,
    /// v5 reason string.
    text: Option<String>,
}

impl Conn {
    /// Picks up what the session kept: unacknowledged deliveries go out again with DUP.
    fn resume(&mut self) {
        let mut st = self.session.state.lock();
        let unacked = std::mem::take(&mut st.unacked);
        let unsent = std::mem::take(&mut st.unsent);
        drop(st);
        for (pkid, d) in unacked {
            codec::encode_publish(
                self.ver,
                &d,
                pkid,
                true,
                self.client_max,
                &mut self.props,
                &mut self.wbuf,
            );
            self.inflight.push_back((pkid, d));
        }
        self.outq.extend(unsent);
        self.pump();
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
        let end = loop {
            if !self.wbuf.is_empty() {
                let n = self.wbuf.len();
                match timeout(
                    self.ctx.config.write_timeout,
                    write_flush(stream, &self.wbuf),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::Lost,
                    Err(_) => break End::Closed("write timeout"),
                }
                self.sent_bytes += n as u64;
                self.wbuf.clear();
                self.flush_stats();
            }
            // tokio's read_buf grows a full BytesMut by only 64 bytes: keep real room for a
            // large read so a busy publisher costs one syscall per many packets.
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(32 * 1024);
            }
            let mut room = self.outq.is_empty() && self.inflight.len() < self.window;
            // Deliveries that are in the journal but not in the mailbox (it overflowed, or the
            // node restarted): read them back when there is room for them.
            if room
                && (rx.is_empty() || !self.took_journaled)
                && let Some(c) = self.cursor.as_mut()
                && c.has_more()
            {
                c.read(JOURNAL_READ, &mut self.outq);
                self.pump();
                room = self.outq.is_empty() && self.inflight.len() < self.window;
                if !self.wbuf.is_empty() {
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = gen_rx.changed() => {
                    codec::encode_disconnect(self.ver, 0x8E, "session taken over", &mut self.wbuf);
                    let _ = write_flush(stream, &self.wbuf).await;
                    break End::Closed("session taken over");
                }
                _ = shutdown.changed() => {
                    codec::encode_disconnect(self.ver, 0x8B, "server shutting down", &mut self.wbuf);
                    let _ = write_flush(stream, &self.wbuf).await;
                    break End::Closed("shutdown");
                }
                r = stream.read_buf(&mut self.rbuf) => {
                    match r {
                        Ok(0) | Err(_) => break End::Lost,
                        Ok(n) => {
                            self.ctx.stats.received_bytes.increment(n as u64);
                            last_read = Instant::now();
                            self.publisher.set_clock(meshgate_broker::now_ms());
                        }
                    }
                    let end = self.on_bytes();
                    self.save_meta().await;
                    if let Some(end) = end {
                        let _ = write_flush(stream, &self.wbuf).await;
                        break end;
                    }
                    self.publisher.flush(&self.ctx.broker);
                    self.flush_stats();
                }
                n = rx.recv_many(&mut self.batch, 256), if room => {
                    if n == 0 {
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
                        codec::encode_disconnect(self.ver, 0x80, "the store failed", &mut self.wbuf);
                        let _ = write_flush(stream, &self.wbuf).await;
                        break End::Closed("store failed");
                    }
                }
                () = &mut self.release_timer, if self.release_at.is_some() => {
                    self.release();
                }
                _ = &mut deadline, if self.keep_alive > 0 => {
                    if last_read.elapsed() >= ka {
                        codec::encode_disconnect(self.ver, 0x8D, "keep alive timeout", &mut self.wbuf);
                        let _ = write_flush(stream, &self.wbuf).await;
                        protocol_error("keep_alive");
                        break End::Closed("keep alive timeout");
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

    /// Keeps what was not delivered for the next connection of a persistent session, releases
    /// the journal as far as acknowledged, and hands the mailbox back.
    fn keep_for_later(&mut self, rx: MailboxReceiver) {
        self.release();
        let mut st = self.session.state.lock();
        st.unacked = std::mem::take(&mut self.inflight);
        st.unsent = std::mem::take(&mut self.outq);
        if let Some(c) = &self.cursor {
            st.disk_next = c.next();
        }
        drop(st);
        self.session.mailbox.detach(rx);
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

    /// Sends the acknowledgement of a publish once `ticket` is durable, after every earlier one.
    fn ack(&mut self, ticket: u64, pkid: u16, kind: Ack, reason: u8, text: Option<String>) {
        // While deliveries of this batch are held, no publish of it is durable yet: the
        // acknowledgement waits for the batch's ticket (set in `on_bytes`).
        if self.acks.is_empty()
            && !self.publisher.holds()
            && self.disk.as_ref().is_none_or(|d| d.is_durable(ticket))
        {
            codec::encode_ack_reason(
                self.ver,
                kind,
                pkid,
                reason,
                text.as_deref(),
                &mut self.wbuf,
            );
        } else {
            self.acks.push_back(PendingAck {
                ticket,
                pkid,
                kind,
                reason,
                text,
            });
        }
    }

    /// Sends the waiting acknowledgements that became durable, in order.
    fn flush_acks(&mut self) {
        while let Some(a) = self.acks.front() {
            if self.disk.as_ref().is_some_and(|d| !d.is_durable(a.ticket)) {
                break;
            }
            codec::encode_ack_reason(
                self.ver,
                a.kind,
                a.pkid,
                a.reason,
                a.text.as_deref(),
                &mut self.wbuf,
            );
            self.acks.pop_front();
        }
    }

    /// Takes the batch received from the mailbox into the out-queue, journaled deliveries in
    /// journal order (see [`JournalCursor::take`]).
    fn take_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        self.took_journaled = false;
        for d in batch.drain(..) {
            match self.cursor.as_mut() {
                Some(c) if d.seq != 0 => {
                    self.took_journaled = true;
                    c.take(d, &mut self.outq, JOURNAL_READ);
                }
                _ => self.outq.push_back(d),
            }
        }
        self.batch = batch;
    }

    /// Arms the release timer (at most one release per `RELEASE_EVERY`).
    fn schedule_release(&mut self) {
        if self.cursor.is_none() || self.release_at.is_some() {
            return;
        }
        let at = (self.last_release + RELEASE_EVERY).max(Instant::now());
        self.release_at = Some(at);
        self.release_timer.as_mut().reset(at);
    }

    /// Releases the journal up to just below the oldest journaled delivery not acknowledged
    /// (in flight or queued), or everything taken if none. The fsync runs off this task.
    fn release(&mut self) {
        self.release_at = None;
        self.last_release = Instant::now();
        let Some(c) = &self.cursor else { return };
        let oldest = self
            .inflight
            .iter()
            .map(|(_, d)| d.seq)
            .chain(self.outq.iter().map(|d| d.seq))
            .find(|&s| s != 0);
        let upto = match oldest {
            Some(s) => s - 1,
            None => c.next().saturating_sub(1),
        };
        if upto <= self.released {
            return;
        }
        self.released = upto;
        let j = c.journal().clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = j.release_up_to(upto) {
                warn!(error = %e, "cannot release the session journal");
            }
        });
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

    /// Encodes queued deliveries while the in-flight window allows.
    fn pump(&mut self) {
        while let Some(d) = self.outq.front() {
            if d.qos > 0 && self.inflight.len() >= self.window {
                break;
            }
            let Some(d) = self.outq.pop_front() else {
                break;
            };
            let pkid = if d.qos > 0 { self.alloc_pkid() } else { 0 };
            let ok = codec::encode_publish(
                self.ver,
                &d,
                pkid,
                false,
                self.client_max,
                &mut self.props,
                &mut self.wbuf,
            );
            if !ok {
                protocol_error("over_client_max_packet");
                continue;
            }
            self.sent += 1;
            if d.qos > 0 {
                self.inflight.push_back((pkid, d));
            }
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            let id = self.next_pkid;
            // The window is far below 65,535, so a free id is always found quickly.
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
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
                    codec::encode_disconnect(self.ver, 0x95, &msg, &mut self.wbuf);
                    return Some(End::Closed("packet too large"));
                }
                Err(DecodeError::Malformed(e)) => {
                    protocol_error("malformed");
                    debug!(error = %e, "malformed packet");
                    codec::encode_disconnect(self.ver, 0x81, &e, &mut self.wbuf);
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
                self.ack(0, pkid, Ack::Pubcomp, 0, None);
            }
            Incoming::Subscribe {
                pkid,
                filters,
                sub_id,
            } => self.on_subscribe(pkid, filters, sub_id),
            Incoming::Unsubscribe { pkid, filters } => self.on_unsubscribe(pkid, filters),
            Incoming::PingReq => codec::encode_pingresp(&mut self.wbuf),
            Incoming::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if self.connect_expiry == 0 && e > 0 {
                        // MQTT 5 §3.14.2.2.2: a session that was not kept cannot become kept.
                        protocol_error("session_expiry");
                        let msg = "session expiry set on DISCONNECT after 0 at CONNECT";
                        codec::encode_disconnect(self.ver, 0x82, msg, &mut self.wbuf);
                        return Some(End::Closed("protocol error"));
                    }
                    let max = self.ctx.config.max_session_expiry_secs;
                    self.session.state.lock().expiry_secs = e.min(max);
                    self.session.mailbox.set_persistent(e > 0);
                }
                return Some(End::Graceful {
                    will: reason == 0x04,
                });
            }
            Incoming::Unexpected(what) => {
                protocol_error("unexpected_packet");
                let msg = format!("unexpected packet: {what}");
                codec::encode_disconnect(self.ver, 0x82, &msg, &mut self.wbuf);
                return Some(End::Closed("protocol error"));
            }
        }
        None
    }

    fn on_publish(&mut self, p: InPublish) -> Option<End> {
        let InPublish {
            mut topic,
            qos,
            retain,
            pkid,
            payload,
            props,
        } = p;
        if qos == 2 && !self.qos2_in.insert(pkid) {
            // A retransmission of a QoS 2 publish already routed: acknowledge (after the first
            // PUBREC, if that still waits for the disk), route nothing.
            self.ack(0, pkid, Ack::Pubrec, 0, None);
            return None;
        }
        let mut env = Envelope {
            retain,
            payload,
            delivery: if qos > 0 {
                DeliveryClass::Guaranteed as i32
            } else {
                DeliveryClass::Direct as i32
            },
            ..Default::default()
        };
        if let Some(props) = props {
            if let Some(alias) = props.topic_alias {
                if alias == 0 || alias > self.ctx.config.topic_alias_max {
                    protocol_error("topic_alias");
                    let msg = format!(
                        "topic alias {alias} is outside 1..={}",
                        self.ctx.config.topic_alias_max
                    );
                    codec::encode_disconnect(self.ver, 0x94, &msg, &mut self.wbuf);
                    return Some(End::Closed("invalid topic alias"));
                }
                if topic.is_empty() {
                    match self.aliases.get(&alias) {
                        Some(t) => topic.clone_from(t),
                        None => {
                            protocol_error("topic_alias");
                            codec::encode_disconnect(
                                self.ver,
                                0x82,
                                "unknown topic alias",
                                &mut self.wbuf,
                            );
                            return Some(End::Closed("unknown topic alias"));
                        }
                    }
                } else {
                    self.aliases.insert(alias, topic.clone());
                }
            }
            env.payload_utf8 = props.payload_format_indicator == Some(1);
            env.expiry_secs = props.message_expiry_interval.unwrap_or(0);
            env.content_type = props.content_type.unwrap_or_default();
            env.response_topic = props.response_topic.unwrap_or_default();
            env.correlation_data = props.correlation_data;
            env.headers = props
                .user_properties
                .into_iter()
                .map(|(name, value)| Header {
                    name,
                    value: Bytes::from(value),
                })
                .collect();
        }
        env.topic = topic;
        let ticket = match self
            .ctx
            .broker
            .publish(&mut self.publisher, env, qos.min(1))
        {
            Ok(report) => report.ticket,
            Err(PublishError::Topic(e)) => {
                protocol_error("invalid_topic");
                let msg = format!("invalid topic name: {e}");
                debug!(%msg);
                codec::encode_disconnect(self.ver, 0x90, &msg, &mut self.wbuf);
                return Some(End::Closed("invalid topic"));
            }
            Err(e @ PublishError::PayloadTooLarge { .. }) => {
                protocol_error("payload_too_large");
                codec::encode_disconnect(self.ver, 0x95, &e.to_string(), &mut self.wbuf);
                return Some(End::Closed("payload too large"));
            }
            Err(PublishError::Denied(d)) => {
                // Refuse this publish only: unknown and forbidden topics get the same answer.
                protocol_error("denied");
                debug!(reason = d.reason, error = %d, "publish refused by governance");
                self.refuse(qos, pkid, d.mqtt_code, Some(d.message));
                return None;
            }
            Err(e @ PublishError::RetainedFull(_)) => {
                // Refuse this publish only; v5 says why in the acknowledgement.
                protocol_error("retained_full");
                debug!(error = %e, "publish refused");
                self.refuse(qos, pkid, 0x97, None);
                return None;
            }
            Err(e @ (PublishError::QuotaExceeded { .. } | PublishError::StoreFailed(_))) => {
                let (what, code) = match e {
                    PublishError::StoreFailed(_) => ("store_failed", 0x80),
                    _ => ("quota_exceeded", 0x97),
                };
                protocol_error(what);
                if self.ver == Version::V4 && qos > 0 {
                    // MQTT 3.1.1 has no negative PUBACK: acknowledging would claim an event the
                    // node did not store, so close instead; the client sends it again later.
                    info!(error = %e, "closing an MQTT 3.1.1 connection whose publish cannot be stored");
                    return Some(End::Closed(if code == 0x80 {
                        "store failed"
                    } else {
                        "quota exceeded"
                    }));
                }
                debug!(error = %e, "publish refused");
                self.refuse(qos, pkid, code, Some(e.to_string()));
                return None;
            }
        };
        match qos {
            1 => self.ack(ticket, pkid, Ack::Puback, 0, None),
            2 => self.ack(ticket, pkid, Ack::Pubrec, 0, None),
            _ => {}
        }
        None
    }

    /// Refuses one publish with a v5 reason code (3.1.1 gets a plain acknowledgement).
    fn refuse(&mut self, qos: u8, pkid: u16, reason: u8, text: Option<String>) {
        match qos {
            1 => self.ack(0, pkid, Ack::Puback, reason, text),
            2 => {
                self.qos2_in.remove(&pkid);
                self.ack(0, pkid, Ack::Pubrec, reason, text);
            }
            _ => {}
        }
    }

    fn on_subscribe(&mut self, pkid: u16, filters: Vec<InFilter>, sub_id: Option<u32>) {
        let broker = self.ctx.broker.clone();
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for f in filters {
            let parsed = match parse_mqtt_filter(&f.path) {
                Ok(p) => p,
                Err(e) => {
                    debug!(filter = %f.path, error = %e, "subscription refused");
                    protocol_error("invalid_filter");
                    codes.push(0x8F);
                    continue;
                }
            };
            if let Err(d) = broker.check_subscribe(self.session.mailbox.app(), &parsed) {
                debug!(filter = %f.path, reason = d.reason, "subscription refused by governance");
                codes.push(d.mqtt_code);
                continue;
            }
            let granted = f.qos.min(1);
            let opts = SubOptions {
                qos: granted,
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
                sub_id,
            };
            let rec = SubRecord {
                filters: parsed.filters,
                group: parsed.group,
                opts,
            };
            self.meta_dirty |= self.session.stored();
            let mb = &self.session.mailbox;
            let previous = self
                .session
                .state
                .lock()
                .subs
                .insert(f.path.clone(), rec.clone());
            if let Some(old) = &previous {
                for nf in &old.filters {
                    broker.unsubscribe(mb.id(), nf, old.group.as_deref());
                }
            }
            for nf in &rec.filters {
                broker.subscribe(mb, nf, rec.group.as_deref(), opts);
            }
            codes.push(granted);
            // Retained messages: not for shared subscriptions (MQTT 5 §4.8.2).
            let send_retained = rec.group.is_none()
                && match f.retain_handling {
                    0 => true,
                    1 => previous.is_none(),
                    _ => false,
                };
            if send_retained {
                for nf in &rec.filters {
                    let app = self.session.mailbox.app();
                    for e in broker.retained_matching(nf) {
                        if !broker.may_read(app, &e.topic) {
                            continue;
                        }
                        let q = if e.delivery == DeliveryClass::Guaranteed as i32 {
                            1
                        } else {
                            0
                        };
                        retained.push(Delivery {
                            qos: q.min(granted),
                            retain: true,
                            sub_id,
                            event: e,
                            seq: 0,
                        });
                    }
                }
            }
        }
        codec::encode_suback(self.ver, pkid, &codes, &mut self.wbuf);
        self.outq.extend(retained);
    }

    fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) {
        let mut existed = Vec::with_capacity(filters.len());
        for f in filters {
            let rec = self.session.state.lock().subs.remove(&f);
            existed.push(rec.is_some());
            if let Some(rec) = rec {
                self.meta_dirty |= self.session.stored();
                for nf in &rec.filters {
                    self.ctx.broker.unsubscribe(
                        self.session.mailbox.id(),
                        nf,
                        rec.group.as_deref(),
                    );
                }
            }
        }
        codec::encode_unsuback(self.ver, pkid, &existed, &mut self.wbuf);
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

/// Resolves when the disk's commit cycle moves on (never without a disk).
async fn wait_durable(rx: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
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

/// Reads until a whole CONNECT is there and decodes it. Refuses anything else with a reason
/// label for the metrics (and, for an unsupported protocol level, a CONNACK saying so).
async fn read_connect<S: Io>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: u32,
) -> Result<ConnectInfo, &'static str> {
    loop {
        if !buf.is_empty() && buf[0] != 0x10 {
            return Err("not_connect");
        }
        if let Some(level) = protocol_level(buf)? {
            match level {
                4 => match v4::Packet::read(buf, max as usize) {
                    Ok(v4::Packet::Connect(c)) => return Ok(from_v4(c)),
                    Ok(_) => return Err("not_connect"),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                        return Err("packet_too_large");
                    }
                    Err(_) => return Err("malformed_connect"),
                },
                5 => match v5::Packet::read(buf, Some(max)) {
                    Ok(v5::Packet::Connect(c, will, login)) => return Ok(from_v5(c, will, login)),
                    Ok(_) => return Err("not_connect"),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                        // MQTT 5: CONNACK 0x95 before closing.
                        let mut out = BytesMut::new();
                        encode_connack_refused(Version::V5, 0x95, &mut out);
                        let _ = write_flush(stream, &out).await;
                        return Err("packet_too_large");
                    }
                    Err(_) => return Err("malformed_connect"),
                },
                _ => {
                    // MQTT 3.1 (level 3) and unknown levels: CONNACK 0x01, the 3.1.1 way.
                    let _ = write_flush(stream, &[0x20, 0x02, 0x00, 0x01]).await;
                    return Err("protocol_version");
                }
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err("closed_before_connect"),
            Ok(_) => {}
        }
        if buf.len() > max as usize + 8 {
            return Err("packet_too_large");
        }
    }
}

/// The protocol level byte of a CONNECT once enough bytes are buffered.
fn protocol_level(buf: &[u8]) -> Result<Option<u8>, &'static str> {
    // Fixed header: type byte, then 1 to 4 bytes of remaining length.
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err("malformed_connect");
        }
    }
    // Protocol name: u16 length, "MQTT" (4) or "MQIsdp" (6, MQTT 3.1), then the level byte.
    let Some(len) = buf.get(i..i + 2) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    if len != 4 && len != 6 {
        return Err("malformed_connect");
    }
    Ok(buf.get(i + 2 + len).copied())
}

fn from_v4(c: v4::Connect) -> ConnectInfo {
    ConnectInfo {
        ver: Version::V4,
        client_id: c.client_id,
        clean: c.clean_session,
        keep_alive: c.keep_alive,
        username: c.login.as_ref().map(|l| l.username.clone()),
        password: c.login.map(|l| l.password),
        will: c.last_will.map(|w| Will {
            qos: w.qos as u8,
            delay_secs: 0,
            env: Envelope {
                topic: w.topic,
                payload: w.message,
                retain: w.retain,
                delivery: class(w.qos as u8),
                ..Default::default()
            },
        }),
        session_expiry: 0,
        receive_max: u16::MAX,
        max_packet: None,
    }
}

fn from_v5(c: v5::Connect, will: Option<v5::LastWill>, login: Option<v5::Login>) -> ConnectInfo {
    let props = c.properties.unwrap_or_default();
    ConnectInfo {
        ver: Version::V5,
        client_id: c.client_id,
        clean: c.clean_start,
        keep_alive: c.keep_alive,
        username: login.as_ref().map(|l| l.username.clone()),
        password: login.map(|l| l.password),
        will: will.map(|w| {
            let p = w.properties.unwrap_or(v5::LastWillProperties {
                delay_interval: None,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            });
            Will {
                qos: w.qos as u8,
                delay_secs: p.delay_interval.unwrap_or(0),
                env: Envelope {
                    topic: String::from_utf8(w.topic.to_vec()).unwrap_or_default(),
                    payload: w.message,
                    retain: w.retain,
                    delivery: class(w.qos as u8),
                    content_type: p.content_type.unwrap_or_default(),
                    response_topic: p.response_topic.unwrap_or_default(),
                    correlation_data: p.correlation_data,
                    payload_utf8: p.payload_format_indicator == Some(1),
                    expiry_secs: p.message_expiry_interval.unwrap_or(0),
                    headers: p
                        .user_properties
                        .into_iter()
                        .map(|(name, v)| Header {
                            name,
                            value: Bytes::from(v),
                        })
                        .collect(),
                    ..Default::default()
                },
            }
        }),
        session_expiry: props.session_expiry_interval.unwrap_or(0),
        receive_max: props.receive_maximum.unwrap_or(u16::MAX),
        max_packet: props.max_packet_size,
    }
}

fn class(qos: u8) -> i32 {
    if qos > 0 {
        DeliveryClass::Guaranteed as i32
    } else {
        DeliveryClass::Direct as i32
    }
}

/// CONNACK refusing the connection. `code` is the v5 reason; v4 gets the nearest return code.
fn encode_connack_refused(ver: Version, code: u8, buf: &mut BytesMut) {
    match ver {
        Version::V4 => {
            let rc = match code {
                0x85 => 0x02, // identifier rejected
                0x86 => 0x04, // bad user name or password
                0x87 => 0x05, // not authorized
                _ => 0x03,    // server unavailable
            };
            buf.extend_from_slice(&[0x20, 0x02, 0x00, rc]);
        }
        Version::V5 => {
            use v5::ConnectReturnCode as C;
            let rc = match code {
                0x85 => C::ClientIdentifierNotValid,
                0x86 => C::BadUserNamePassword,
                0x87 => C::NotAuthorized,
                0x95 => C::PacketTooLarge,
                _ => C::ServerUnavailable,
            };
            let ack = v5::ConnAck {
                session_present: false,
                code: rc,
                properties: None,
            };
            let _ = v5::Packet::ConnAck(ack).write(buf, None);
        }
    }
}

fn encode_connack_ok(
    ctx: &Context,
    info: &ConnectInfo,
    present: bool,
    expiry: u32,
    assigned: Option<String>,
    buf: &mut BytesMut,
) {
    match info.ver {
        Version::V4 => {
            buf.extend_from_slice(&[0x20, 0x02, present as u8, 0x00]);
        }
        Version::V5 => {
            let cfg = &ctx.config;
            let props = v5::ConnAckProperties {
                session_expiry_interval: (expiry != info.session_expiry).then_some(expiry),
                receive_max: Some(cfg.max_inflight),
                max_qos: None,
                retain_available: Some(1),
                max_packet_size: Some(cfg.max_packet_size),
                assigned_client_identifier: assigned,
                topic_alias_max: Some(cfg.topic_alias_max),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(1),
                shared_subscription_available: Some(1),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            let ack = v5::ConnAck {
                session_present: present,
                code: v5::ConnectReturnCode::Success,
                properties: Some(props),
            };
            let _ = v5::Packet::ConnAck(ack).write(buf, None);
        }
    }
}
