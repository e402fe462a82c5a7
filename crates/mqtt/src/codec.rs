//! Version-neutral view of MQTT packets. Decoding and the rare packets are rumqttc's
//! `mqttbytes` codec (v4 = MQTT 3.1.1, v5); PUBLISH, the one packet on the hot path, is encoded
//! here straight from the shared envelope so that fan-out copies no topic string.

use bytes::{BufMut, Bytes, BytesMut};
use meshgate_broker::Delivery;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use crate::reason::{PacketType, Reason, publish_flags};

/// Protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// A PUBLISH from a client.
pub(crate) struct InPublish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub pkid: u16,
    pub payload: Bytes,
    pub props: Option<v5::PublishProperties>,
}

/// One filter of a SUBSCRIBE.
pub(crate) struct InFilter {
    pub path: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send retained on every subscribe, 1 only on a new one, 2 never.
    pub retain_handling: u8,
}

/// Client-to-server packets after CONNECT.
pub(crate) enum Incoming {
    Publish(InPublish),
    PubAck(u16),
    PubRel(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<InFilter>,
        sub_id: Option<u32>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// v5 only: the client asks for its will to be published (reason 0x04).
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// A packet a client must not send at this point (CONNECT again, server-only packets, PUBREC
    /// and PUBCOMP for QoS 2 deliveries we never make).
    Unexpected(&'static str),
}

/// Why bytes could not be decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Packet larger than the configured maximum.
    TooLarge(usize),
    /// Anything else: the stream is garbage from here on.
    Malformed(String),
}

/// Decodes the next packet from `buf`, or `Ok(None)` when more bytes are needed.
pub(crate) fn decode(
    ver: Version,
    buf: &mut BytesMut,
    max: u32,
) -> Result<Option<Incoming>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match ver {
        Version::V4 => match v4::Packet::read(buf, max as usize) {
            Ok(p) => Ok(Some(from_v4(p))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                Err(DecodeError::TooLarge(n))
            }
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
        Version::V5 => match v5::Packet::read(buf, Some(max)) {
            Ok(p) => Ok(Some(from_v5(p))),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
                Err(DecodeError::TooLarge(pkt_size))
            }
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
    }
}

fn from_v4(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::Publish(p) => Incoming::Publish(InPublish {
            topic: p.topic,
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
            payload: p.payload,
            props: None,
        }),
        v4::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v4::Packet::PubRel(r) => Incoming::PubRel(r.pkid),
        v4::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| InFilter {
                    path: f.path,
                    qos: f.qos as u8,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                })
                .collect(),
            sub_id: None,
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        v4::Packet::Connect(_) => Incoming::Unexpected("second CONNECT"),
        v4::Packet::PubRec(_) | v4::Packet::PubComp(_) => {
            Incoming::Unexpected("QoS 2 acknowledgement for a delivery never sent at QoS 2")
        }
        v4::Packet::ConnAck(_)
        | v4::Packet::SubAck(_)
        | v4::Packet::UnsubAck(_)
        | v4::Packet::PingResp => Incoming::Unexpected("server-to-client packet"),
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    match p {
        v5::Packet::Publish(p) => Incoming::Publish(InPublish {
            // Validity (UTF-8) is checked by the codec; an invalid sequence becomes an empty
            // topic, refused later as invalid.
            topic: String::from_utf8(p.topic.to_vec()).unwrap_or_default(),
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
            payload: p.payload,
            props: p.properties,
        }),
        v5::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v5::Packet::PubRel(r) => Incoming::PubRel(r.pkid),
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            sub_id: s.properties.and_then(|p| p.id).map(|i| i as u32),
            filters: s
                .filters
                .into_iter()
                .map(|f| InFilter {
                    path: f.path,
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::Connect(..) => Incoming::Unexpected("second CONNECT"),
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH (enhanced authentication)"),
        v5::Packet::PubRec(_) | v5::Packet::PubComp(_) => {
            Incoming::Unexpected("QoS 2 acknowledgement for a delivery never sent at QoS 2")
        }
        v5::Packet::ConnAck(_)
        | v5::Packet::SubAck(_)
        | v5::Packet::UnsubAck(_)
        | v5::Packet::PingResp(_) => Incoming::Unexpected("server-to-client packet"),
    }
}

/// Writes a packet of the codec; these are never larger than the peer's limit.
fn put_v4(buf: &mut BytesMut, p: v4::Packet) {
    // Encoding into a BytesMut cannot fail for packets this module builds (no size limit given).
    let _ = p.write(buf, usize::MAX);
}

fn put_v5(buf: &mut BytesMut, p: v5::Packet) {
    let _ = p.write(buf, None);
}

/// PUBACK, PUBREC or PUBCOMP with an optional v5 reason code.
#[derive(Clone, Copy)]
pub(crate) enum Ack {
    Puback,
    Pubrec,
    Pubcomp,
}

impl Ack {
    /// The packet type (PUBREL, with its reserved flags, is never sent here).
    fn packet_type(self) -> PacketType {
        match self {
            Ack::Puback => PacketType::PubAck,
            Ack::Pubrec => PacketType::PubRec,
            Ack::Pubcomp => PacketType::PubComp,
        }
    }
}

pub(crate) fn encode_ack(ver: Version, kind: Ack, pkid: u16, reason: Reason, buf: &mut BytesMut) {
    buf.put_u8(kind.packet_type().byte());
    if ver == Version::V5 && reason != Reason::Success {
        buf.put_u8(3);
        buf.put_u16(pkid);
        buf.put_u8(reason.code());
    } else {
        buf.put_u8(2);
        buf.put_u16(pkid);
    }
}

/// Like [`encode_ack`], with a v5 reason string when `text` is given and the reason is not
/// success (3.1.1 has neither).
pub(crate) fn encode_ack_reason(
    ver: Version,
    kind: Ack,
    pkid: u16,
    reason: Reason,
    text: Option<&str>,
    buf: &mut BytesMut,
) {
    let Some(text) = text.filter(|_| ver == Version::V5 && reason != Reason::Success) else {
        return encode_ack(ver, kind, pkid, reason, buf);
    };
    // Short enough for any client's maximum packet size worth the name.
    let mut end = text.len().min(100);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    let props = 3 + text.len();
    let remaining = 2 + 1 + varint_len(props) + props;
    buf.put_u8(kind.packet_type().byte());
    put_varint(buf, remaining);
    buf.put_u16(pkid);
    buf.put_u8(reason.code());
    put_varint(buf, props);
    buf.put_u8(prop::REASON_STRING);
    put_str(buf, text);
}

pub(crate) fn encode_pingresp(buf: &mut BytesMut) {
    buf.put_slice(&[PacketType::PingResp.byte(), 0x00]);
}

/// SUBACK; one reason per filter: granted QoS or a failure.
pub(crate) fn encode_suback(ver: Version, pkid: u16, codes: &[Reason], buf: &mut BytesMut) {
    match ver {
        Version::V4 => put_v4(
            buf,
            v4::Packet::SubAck(v4::SubAck::new(
                pkid,
                codes.iter().map(|c| c.v4_suback()).collect(),
            )),
        ),
        Version::V5 => put_v5(
            buf,
            v5::Packet::SubAck(v5::SubAck {
                pkid,
                return_codes: codes.iter().map(|c| c.v5_suback()).collect(),
                properties: None,
            }),
        ),
    }
}

/// UNSUBACK; `existed` per filter (v5 reports 0x11 for a filter that was not subscribed).
pub(crate) fn encode_unsuback(ver: Version, pkid: u16, existed: &[bool], buf: &mut BytesMut) {
    match ver {
        Version::V4 => put_v4(buf, v4::Packet::UnsubAck(v4::UnsubAck::new(pkid))),
        Version::V5 => put_v5(
            buf,
            v5::Packet::UnsubAck(v5::UnsubAck {
                pkid,
                reasons: existed
                    .iter()
                    .map(|&e| {
                        if e {
                            v5::UnsubAckReason::Success
                        } else {
                            v5::UnsubAckReason::NoSubscriptionExisted
                        }
                    })
                    .collect(),
                properties: None,
            }),
        ),
    }
}

/// A v5 DISCONNECT with a reason and a human-readable reason string. v4 has no server
/// DISCONNECT: the connection is just closed.
pub(crate) fn encode_disconnect(ver: Version, reason: Reason, text: &str, buf: &mut BytesMut) {
    if ver == Version::V4 {
        return;
    }
    let mut d = v5::Disconnect::new(reason.v5_disconnect());
    d.properties = Some(v5::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(text.chars().take(200).collect()),
        user_properties: Vec::new(),
        server_reference: None,
    });
    put_v5(buf, v5::Packet::Disconnect(d));
}

/// Encodes a PUBLISH to a subscriber. Returns false (and writes nothing) when the packet would
/// exceed the client's maximum packet size, in which case MQTT 5 says to drop it.
pub(crate) fn encode_publish(
    ver: Version,
    d: &Delivery,
    pkid: u16,
    dup: bool,
    client_max: Option<u32>,
    props_scratch: &mut BytesMut,
    buf: &mut BytesMut,
) -> bool {
    let e = &*d.event;
    props_scratch.clear();
    if ver == Version::V5 {
        encode_publish_props(d, props_scratch);
    }
    let mut remaining = 2 + e.topic.len() + e.payload.len();
    if d.qos > 0 {
        remaining += 2;
    }
    if ver == Version::V5 {
        remaining += varint_len(props_scratch.len()) + props_scratch.len();
    }
    let total = 1 + varint_len(remaining) + remaining;
    if client_max.is_some_and(|m| total > m as usize) {
        return false;
    }
    buf.reserve(total);
    let mut first = PacketType::Publish.byte() | (d.qos << 1);
    if d.retain {
        first |= publish_flags::RETAIN;
    }
    if dup && d.qos > 0 {
        first |= publish_flags::DUP;
    }
    buf.put_u8(first);
    put_varint(buf, remaining);
    buf.put_u16(e.topic.len() as u16);
    buf.put_slice(e.topic.as_bytes());
    if d.qos > 0 {
        buf.put_u16(pkid);
    }
    if ver == Version::V5 {
        put_varint(buf, props_scratch.len());
        buf.put_slice(props_scratch);
    }
    buf.put_slice(&e.payload);
    true
}

fn encode_publish_props(d: &Delivery, out: &mut BytesMut) {
    let e = &*d.event;
    if e.payload_utf8 {
        out.put_u8(prop::PAYLOAD_FORMAT);
        out.put_u8(1);
    }
    if e.expiry_secs > 0 {
        // Remaining lifetime: the interval minus the time spent in the node.
        let age = crate::now_secs().saturating_sub(e.timestamp_ms / 1000);
        out.put_u8(prop::MESSAGE_EXPIRY);
        out.put_u32((e.expiry_secs as u64).saturating_sub(age).max(1) as u32);
    }
    if !e.content_type.is_empty() {
        out.put_u8(prop::CONTENT_TYPE);
        put_str(out, &e.content_type);
    }
    if !e.response_topic.is_empty() {
        out.put_u8(prop::RESPONSE_TOPIC);
        put_str(out, &e.response_topic);
    }
    if let Some(c) = &e.correlation_data {
        out.put_u8(prop::CORRELATION_DATA);
        out.put_u16(c.len() as u16);
        out.put_slice(c);
    }
    if let Some(id) = d.sub_id {
        out.put_u8(prop::SUBSCRIPTION_ID);
        put_varint(out, id as usize);
    }
    for h in &e.headers {
        out.put_u8(prop::USER_PROPERTY);
        put_str(out, &h.name);
        out.put_u16(h.value.len() as u16);
        out.put_slice(&h.value);
    }
}

/// MQTT 5 property identifiers this module encodes (§2.2.2.2).
mod prop {
    pub(super) const PAYLOAD_FORMAT: u8 = 0x01;
    pub(super) const MESSAGE_EXPIRY: u8 = 0x02;
    pub(super) const CONTENT_TYPE: u8 = 0x03;
    pub(super) const RESPONSE_TOPIC: u8 = 0x08;
    pub(super) const CORRELATION_DATA: u8 = 0x09;
    pub(super) const SUBSCRIPTION_ID: u8 = 0x0B;
    pub(super) const REASON_STRING: u8 = 0x1F;
    pub(super) const USER_PROPERTY: u8 = 0x26;
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshgate_proto::{Envelope, Header};

    use super::*;

    fn delivery(qos: u8) -> Delivery {
        Delivery {
            event: Arc::new(Envelope {
                topic: "a/b".into(),
                payload: Bytes::from(vec![7u8; 300]),
                content_type: "text/plain".into(),
                headers: vec![Header {
                    name: "k".into(),
                    value: Bytes::from_static(b"v"),
                }],
                ..Default::default()
            }),
            qos,
            retain: true,
            sub_id: Some(9),
            seq: 0,
        }
    }

    #[test]
    fn negative_ack_with_reason_string_decodes_with_the_codec() {
        let mut buf = BytesMut::new();
        encode_ack_reason(
            Version::V5,
            Ack::Puback,
            7,
            Reason::QuotaExceeded,
            Some("quota exceeded"),
            &mut buf,
        );
        encode_ack_reason(
            Version::V5,
            Ack::Pubrec,
            8,
            Reason::QuotaExceeded,
            None,
            &mut buf,
        );
        match v5::Packet::read(&mut buf, None).unwrap() {
            v5::Packet::PubAck(a) => {
                assert_eq!((a.pkid, a.reason), (7, v5::PubAckReason::QuotaExceeded));
                let text = a.properties.and_then(|p| p.reason_string);
                assert_eq!(text.as_deref(), Some("quota exceeded"));
            }
            other => panic!("{other:?}"),
        }
        match v5::Packet::read(&mut buf, None).unwrap() {
            v5::Packet::PubRec(r) => {
                assert_eq!((r.pkid, r.reason), (8, v5::PubRecReason::QuotaExceeded))
            }
            other => panic!("{other:?}"),
        }
        encode_ack_reason(
            Version::V4,
            Ack::Puback,
            9,
            Reason::QuotaExceeded,
            Some("x"),
            &mut buf,
        );
        assert_eq!(&buf[..], &[0x40, 2, 0, 9]);
    }

    #[test]
    fn hand_encoded_publish_decodes_with_the_codec() {
        let mut scratch = BytesMut::new();
        let mut buf = BytesMut::new();
        assert!(encode_publish(
            Version::V4,
            &delivery(1),
            5,
            true,
            None,
            &mut scratch,
            &mut buf
        ));
        let p = match v4::Packet::read(&mut buf, 1 << 20).unwrap() {
            v4::Packet::Publish(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, p.dup, p.retain),
            ("a/b", 5, true, true)
        );
        assert_eq!(p.payload.len(), 300);

        assert!(encode_publish(
            Version::V5,
            &delivery(0),
            0,
            false,
            None,
            &mut scratch,
            &mut buf
        ));
        let p = match v5::Packet::read(&mut buf, None).unwrap() {
            v5::Packet::Publish(p) => p,
            other => panic!("{other:?}"),
        };
        let props = p.properties.unwrap();
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.subscription_identifiers, vec![9]);
        assert_eq!(
            props.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(p.payload.len(), 300);
    }

    #[test]
    fn publish_over_client_limit_is_dropped() {
        let mut scratch = BytesMut::new();
        let mut buf = BytesMut::new();
        assert!(!encode_publish(
            Version::V5,
            &delivery(1),
            1,
            false,
            Some(100),
            &mut scratch,
            &mut buf
        ));
        assert!(buf.is_empty());
    }
}
