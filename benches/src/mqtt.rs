//! A minimal MQTT 3.1.1 client for load generation: CONNECT (clean or persistent session),
//! SUBSCRIBE (pipelined, many filters per packet, QoS 0 or 1), PUBLISH at QoS 0 or 1, PUBACK,
//! PINGREQ, DISCONNECT, and reading PUBLISH and PUBACK packets. Packets are encoded into one big
//! buffer and written with one syscall per batch, so the client costs far less CPU per message
//! than the broker it drives.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::inbuf::InBuf;

/// Keep-alive announced in CONNECT; the subscriber pings at half of it when idle.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// A packet read from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// CONNACK with its return code.
    ConnAck(u8),
    /// SUBACK: packet id and one return code per filter.
    SubAck(u16, &'a [u8]),
    /// PUBLISH at QoS 0 or 1.
    Publish {
        /// Topic name.
        topic: &'a [u8],
        /// Application payload.
        payload: &'a [u8],
        /// QoS of this delivery (0 or 1).
        qos: u8,
        /// Packet id (0 at QoS 0).
        pkid: u16,
    },
    /// PUBACK with its packet id.
    PubAck(u16),
    /// UNSUBACK with its packet id.
    UnsubAck(u16),
    /// PINGRESP.
    PingResp,
    /// Any other packet type (first header byte).
    Other(u8),
}

/// Appends an MQTT variable byte integer.
fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// Appends a length-prefixed string.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a CONNECT packet without credentials; `clean` false asks for a persistent session.
pub fn encode_connect_session(
    out: &mut Vec<u8>,
    client_id: &str,
    keep_alive: Duration,
    clean: bool,
) {
    let body = 10 + 2 + client_id.len();
    out.push(0x10);
    put_len(out, body);
    put_str(out, b"MQTT");
    out.push(4); // protocol level 4 = MQTT 3.1.1
    out.push(if clean { 0x02 } else { 0x00 });
    out.extend_from_slice(&(keep_alive.as_secs().min(u16::MAX.into()) as u16).to_be_bytes());
    put_str(out, client_id.as_bytes());
}

/// Appends a SUBSCRIBE packet asking QoS 0 for every filter.
pub fn encode_subscribe(out: &mut Vec<u8>, packet_id: u16, filters: &[String]) {
    encode_subscribe_qos(out, packet_id, filters, 0);
}

/// Appends a SUBSCRIBE packet asking `qos` for every filter.
pub fn encode_subscribe_qos(out: &mut Vec<u8>, packet_id: u16, filters: &[String], qos: u8) {
    let body = 2 + filters.iter().map(|f| 2 + f.len() + 1).sum::<usize>();
    out.push(0x82);
    put_len(out, body);
    out.extend_from_slice(&packet_id.to_be_bytes());
    for filter in filters {
        put_str(out, filter.as_bytes());
        out.push(qos);
    }
}

/// Appends an UNSUBSCRIBE packet.
pub fn encode_unsubscribe(out: &mut Vec<u8>, packet_id: u16, filters: &[String]) {
    let body = 2 + filters.iter().map(|f| 2 + f.len()).sum::<usize>();
    out.push(0xa2);
    put_len(out, body);
    out.extend_from_slice(&packet_id.to_be_bytes());
    for filter in filters {
        put_str(out, filter.as_bytes());
    }
}

/// Appends a PUBLISH packet at QoS 0.
pub fn encode_publish(out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    out.push(0x30);
    put_len(out, 2 + topic.len() + payload.len());
    put_str(out, topic);
    out.extend_from_slice(payload);
}

/// Appends a PUBLISH packet at QoS 1 with packet id `pkid`.
pub fn encode_publish_qos1(out: &mut Vec<u8>, topic: &[u8], pkid: u16, payload: &[u8]) {
    out.push(0x32);
    put_len(out, 2 + topic.len() + 2 + payload.len());
    put_str(out, topic);
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a PUBACK packet.
pub fn encode_puback(out: &mut Vec<u8>, pkid: u16) {
    out.extend_from_slice(&[0x40, 0x02]);
    out.extend_from_slice(&pkid.to_be_bytes());
}

/// Parses one packet from the front of `data`: `Ok(None)` when it is not complete yet, else the
/// packet and its length in bytes.
pub fn parse(data: &[u8]) -> anyhow::Result<Option<(Packet<'_>, usize)>> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = data.get(header) else {
            return Ok(None);
        };
        ensure!(header <= 4, "malformed remaining length");
        len |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let total = header + len;
    let Some(body) = data.get(header..total) else {
        return Ok(None);
    };
    let packet = match first >> 4 {
        2 => {
            ensure!(body.len() == 2, "malformed CONNACK");
            Packet::ConnAck(body[1])
        }
        9 => {
            ensure!(body.len() >= 3, "malformed SUBACK");
            Packet::SubAck(u16::from_be_bytes([body[0], body[1]]), &body[2..])
        }
        3 => {
            let qos = (first >> 1) & 0x03;
            ensure!(
                qos <= 1,
                "PUBLISH with QoS {qos} (subscriptions ask at most QoS 1)"
            );
            ensure!(body.len() >= 2, "malformed PUBLISH");
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let id_len = if qos > 0 { 2 } else { 0 };
            ensure!(
                body.len() >= 2 + topic_len + id_len,
                "malformed PUBLISH topic"
            );
            let pkid = if qos > 0 {
                u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]])
            } else {
                0
            };
            Packet::Publish {
                topic: &body[2..2 + topic_len],
                payload: &body[2 + topic_len + id_len..],
                qos,
                pkid,
            }
        }
        4 => {
            ensure!(body.len() >= 2, "malformed PUBACK");
            Packet::PubAck(u16::from_be_bytes([body[0], body[1]]))
        }
        11 => {
            ensure!(body.len() == 2, "malformed UNSUBACK");
            Packet::UnsubAck(u16::from_be_bytes([body[0], body[1]]))
        }
        13 => Packet::PingResp,
        _ => Packet::Other(first),
    };
    Ok(Some((packet, total)))
}

/// One MQTT 3.1.1 connection.
pub struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    inbuf: InBuf,
    out: Vec<u8>,
    next_ping: Instant,
}

impl Conn {
    /// Connects (clean session) and waits for a successful CONNACK.
    pub async fn connect(addr: &str, client_id: &str) -> anyhow::Result<Self> {
        Ok(Self::connect_session(addr, client_id, true).await?.0)
    }

    /// Connects with a clean (`clean`) or persistent session and waits for a successful
    /// CONNACK; also returns its session-present flag.
    pub async fn connect_session(
        addr: &str,
        client_id: &str,
        clean: bool,
    ) -> anyhow::Result<(Self, bool)> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut conn = Self {
            rd,
            wr,
            inbuf: InBuf::new(256 * 1024),
            out: Vec::with_capacity(128 * 1024),
            next_ping: Instant::now() + KEEP_ALIVE / 2,
        };
        encode_connect_session(&mut conn.out, client_id, KEEP_ALIVE, clean);
        conn.flush().await?;
        loop {
            if let Some((packet, n)) = parse(conn.inbuf.data())? {
                let present = match packet {
                    Packet::ConnAck(0) => conn.inbuf.data()[2] & 1 == 1,
                    Packet::ConnAck(rc) => bail!("CONNACK refused, return code {rc}"),
                    other => bail!("expected CONNACK, got {other:?}"),
                };
                conn.inbuf.consume(n);
                return Ok((conn, present));
            }
            conn.inbuf.fill(&mut conn.rd).await?;
        }
    }

    /// Subscribes to every filter at QoS 0, `per_packet` filters per SUBSCRIBE, all packets
    /// pipelined; returns when every SUBACK has arrived and granted every filter.
    pub async fn subscribe(&mut self, filters: &[String], per_packet: usize) -> anyhow::Result<()> {
        self.subscribe_qos(filters, per_packet, 0).await.map(|_| ())
    }

    /// [`Conn::subscribe`] asking `qos`; returns the lowest QoS granted.
    pub async fn subscribe_qos(
        &mut self,
        filters: &[String],
        per_packet: usize,
        qos: u8,
    ) -> anyhow::Result<u8> {
        let chunks: Vec<&[String]> = filters.chunks(per_packet.max(1)).collect();
        let expected = chunks.len();
        let out = &mut self.out;
        let wr = &mut self.wr;
        let send = async move {
            for (i, chunk) in chunks.iter().enumerate() {
                // Packet ids 1..=65535, reused after wrapping: ids only need to be unique
                // among unacknowledged packets, and the acks are counted, not matched.
                encode_subscribe_qos(out, (i % 65535 + 1) as u16, chunk, qos);
                if out.len() >= 64 * 1024 {
                    wr.write_all(out).await?;
                    out.clear();
                }
            }
            wr.write_all(out).await?;
            out.clear();
            anyhow::Ok(())
        };
        let rd = &mut self.rd;
        let inbuf = &mut self.inbuf;
        let receive = async move {
            let mut acked = 0;
            let mut granted = qos;
            while acked < expected {
                while let Some((packet, n)) = parse(inbuf.data())? {
                    match packet {
                        Packet::SubAck(_, codes) => {
                            ensure!(codes.iter().all(|c| *c < 0x80), "SUBACK refused a filter");
                            granted = codes.iter().copied().fold(granted, u8::min);
                            acked += 1;
                        }
                        Packet::PingResp | Packet::Publish { .. } | Packet::PubAck(_) => {}
                        Packet::Other(b) => bail!("unexpected packet 0x{b:02x} while subscribing"),
                        Packet::ConnAck(_) | Packet::UnsubAck(_) => {
                            bail!("unexpected {packet:?} while subscribing")
                        }
                    }
                    inbuf.consume(n);
                }
                if acked < expected {
                    inbuf.fill(rd).await?;
                }
            }
            anyhow::Ok(granted)
        };
        let ((), granted) = tokio::try_join!(send, receive)?;
        Ok(granted)
    }

    /// Queues a SUBSCRIBE (QoS 0); [`Conn::flush`] sends it, [`Conn::read_packets`] sees the
    /// SUBACK.
    pub fn push_subscribe(&mut self, packet_id: u16, filters: &[String]) {
        encode_subscribe(&mut self.out, packet_id, filters);
    }

    /// Queues an UNSUBSCRIBE; [`Conn::flush`] sends it.
    pub fn push_unsubscribe(&mut self, packet_id: u16, filters: &[String]) {
        encode_unsubscribe(&mut self.out, packet_id, filters);
    }

    /// Waits for data, then hands every complete packet to `on_packet`. Cancel-safe.
    pub async fn read_packets(
        &mut self,
        mut on_packet: impl FnMut(&Packet<'_>),
    ) -> anyhow::Result<()> {
        self.inbuf.fill(&mut self.rd).await?;
        while let Some((packet, n)) = parse(self.inbuf.data())? {
            on_packet(&packet);
            self.inbuf.consume(n);
        }
        Ok(())
    }

    /// Queues a QoS 0 PUBLISH; [`Conn::flush`] sends it.
    pub fn push_publish(&mut self, topic: &[u8], payload: &[u8]) {
        encode_publish(&mut self.out, topic, payload);
    }

    /// Queues a QoS 1 PUBLISH with packet id `pkid`; [`Conn::flush`] sends it.
    pub fn push_publish_qos1(&mut self, topic: &[u8], pkid: u16, payload: &[u8]) {
        encode_publish_qos1(&mut self.out, topic, pkid, payload);
    }

    /// Queues a PUBACK; [`Conn::flush`] sends it.
    pub fn push_puback(&mut self, pkid: u16) {
        encode_puback(&mut self.out, pkid);
    }

    /// Queues a PINGREQ; [`Conn::flush`] sends it.
    pub fn push_ping(&mut self) {
        self.out.extend_from_slice(&[0xc0, 0x00]);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Sends DISCONNECT and closes the connection (a persistent session stays on the broker).
    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        self.out.extend_from_slice(&[0xe0, 0x00]);
        self.flush().await?;
        self.wr.shutdown().await.context("close")?;
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.wr
            .write_all(&self.out)
            .await
            .context("write to broker")?;
        self.out.clear();
        Ok(())
    }

    /// Waits for data, then hands every complete PUBLISH to `on_publish(topic, payload)`; sends
    /// PINGREQ when the keep-alive is due. Cancel-safe between calls.
    pub async fn read_publishes(
        &mut self,
        mut on_publish: impl FnMut(&[u8], &[u8]),
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = self.inbuf.fill(&mut self.rd) => { r?; }
            () = tokio::time::sleep_until(self.next_ping) => {
                self.wr.write_all(&[0xc0, 0x00]).await.context("send PINGREQ")?;
                self.next_ping = Instant::now() + KEEP_ALIVE / 2;
                return Ok(());
            }
        }
        while let Some((packet, n)) = parse(self.inbuf.data())? {
            match packet {
                Packet::Publish {
                    topic,
                    payload,
                    qos: 0,
                    ..
                } => on_publish(topic, payload),
                Packet::Publish { .. } => bail!("PUBLISH with QoS 1 (subscriptions ask QoS 0)"),
                Packet::PingResp => {}
                other => bail!("unexpected packet {other:?}"),
            }
            self.inbuf.consume(n);
        }
        Ok(())
    }

    /// Turns the connection back into one blocking std socket (for a paced publisher thread).
    pub fn into_std(self) -> anyhow::Result<std::net::TcpStream> {
        let stream = self.rd.reunite(self.wr)?.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_across_length_boundaries() {
        for size in [0, 100, 123, 124, 200, 16_380, 16_381, 20_000, 2_100_000] {
            let payload = vec![7u8; size];
            let mut out = Vec::new();
            encode_publish(&mut out, b"bench/one", &payload);
            assert_eq!(parse(&out[..out.len() - 1]).unwrap(), None);
            let (packet, n) = parse(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(
                packet,
                Packet::Publish {
                    topic: b"bench/one",
                    payload: &payload,
                    qos: 0,
                    pkid: 0,
                }
            );
            out.clear();
            encode_publish_qos1(&mut out, b"bench/one", 513, &payload);
            let (packet, n) = parse(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(
                packet,
                Packet::Publish {
                    topic: b"bench/one",
                    payload: &payload,
                    qos: 1,
                    pkid: 513,
                }
            );
        }
    }

    #[test]
    fn qos1_packets_match_the_spec_bytes() {
        let mut out = Vec::new();
        encode_publish_qos1(&mut out, b"a", 0x0102, b"xy");
        assert_eq!(out, b"\x32\x07\x00\x01a\x01\x02xy");
        out.clear();
        encode_puback(&mut out, 7);
        assert_eq!(out, b"\x40\x02\x00\x07");
        assert_eq!(parse(&out).unwrap(), Some((Packet::PubAck(7), 4)));
        out.clear();
        encode_connect_session(&mut out, "c", Duration::from_secs(60), false);
        assert_eq!(out, b"\x10\x0d\x00\x04MQTT\x04\x00\x00\x3c\x00\x01c");
        out.clear();
        encode_subscribe_qos(&mut out, 10, &["a".to_string()], 1);
        assert_eq!(out, b"\x82\x06\x00\x0a\x00\x01a\x01");
        assert!(
            parse(b"\x34\x05\x00\x01a\x00\x01").is_err(),
            "QoS 2 is refused"
        );
    }

    #[test]
    fn connect_and_subscribe_match_the_spec_bytes() {
        let mut out = Vec::new();
        encode_connect_session(&mut out, "c", Duration::from_secs(60), true);
        assert_eq!(out, b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c");
        out.clear();
        encode_subscribe(&mut out, 10, &["a/b".to_string(), "c".to_string()]);
        assert_eq!(out, b"\x82\x0c\x00\x0a\x00\x03a/b\x00\x00\x01c\x00");
        out.clear();
        encode_unsubscribe(&mut out, 10, &["a/b".to_string(), "c".to_string()]);
        assert_eq!(out, b"\xa2\x0a\x00\x0a\x00\x03a/b\x00\x01c");
        assert_eq!(
            parse(b"\xb0\x02\x00\x0a").unwrap(),
            Some((Packet::UnsubAck(10), 4))
        );
    }

    #[test]
    fn parses_acks_and_rejects_garbage() {
        assert_eq!(
            parse(b"\x20\x02\x00\x00").unwrap(),
            Some((Packet::ConnAck(0), 4))
        );
        assert_eq!(
            parse(b"\x90\x04\x00\x01\x00\x80").unwrap(),
            Some((Packet::SubAck(1, b"\x00\x80"), 6))
        );
        assert_eq!(parse(b"\xd0\x00").unwrap(), Some((Packet::PingResp, 2)));
        assert!(parse(b"\x30\xff\xff\xff\xff\x01").is_err());
        assert!(
            parse(b"\x32\x03\x00\x01a").is_err(),
            "QoS 1 without a packet id"
        );
    }
}
