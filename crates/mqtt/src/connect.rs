//! CONNECT: reading it (either protocol version), and the CONNACK that answers it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use meshgate_auth::{AuthError, Credentials};
use meshgate_proto::{DeliveryClass, Envelope, Header};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tracing::debug;

use crate::codec::Version;
use crate::conn::{Io, write_flush};
use crate::reason::{PacketType, Reason};
use crate::{Context, protocol_error};

/// A CONNECT the node accepted: who the client is and what it asked for.
pub(crate) struct Accepted {
    pub info: ConnectInfo,
    /// The app id the client authenticated as.
    pub app_id: Option<Arc<str>>,
    /// The client id (the one CONNECT named, or one the node assigned).
    pub client_id: String,
    /// The client id the node assigned (CONNACK tells a v5 client).
    pub assigned: Option<String>,
}

/// Reads CONNECT and decides on it: authentication first (a refused client learns nothing
/// else), then the client id. A refusal is answered with a CONNACK saying why and `None`.
pub(crate) async fn accept<S: Io>(
    ctx: &Context,
    stream: &mut S,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    certificate: Option<String>,
) -> Option<Accepted> {
    let max = ctx.config.max_packet_size;
    let info = match timeout(ctx.config.connect_timeout, read_connect(stream, rbuf, max)).await {
        Ok(Ok(info)) => info,
        Ok(Err(reason)) => {
            debug!(reason, "refused before CONNECT completed");
            protocol_error(reason);
            return None;
        }
        Err(_) => {
            debug!("no CONNECT in time");
            protocol_error("connect_timeout");
            return None;
        }
    };
    let ver = info.ver;
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
                AuthError::AnonymousDisabled => Reason::NotAuthorized,
                AuthError::BadCredentials => Reason::BadUserNameOrPassword,
            };
            encode_connack_refused(ver, code, wbuf);
            let _ = write_flush(stream, wbuf).await;
            return None;
        }
    };
    // MQTT 3.1.1 only lets a clean session go without a client id; v5 always may.
    let mut assigned = None;
    let client_id = if info.client_id.is_empty() {
        if ver == Version::V4 && !info.clean {
            protocol_error("client_id");
            encode_connack_refused(ver, Reason::ClientIdentifierNotValid, wbuf);
            let _ = write_flush(stream, wbuf).await;
            return None;
        }
        let id = format!("auto-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id
    } else {
        info.client_id.clone()
    };
    Some(Accepted {
        info,
        app_id: identity.app_id,
        client_id,
        assigned,
    })
}

/// The last will of a connection.
pub(crate) struct Will {
    pub env: Envelope,
    pub qos: u8,
    pub delay_secs: u32,
}

/// What CONNECT said, for either version.
pub(crate) struct ConnectInfo {
    pub ver: Version,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    pub session_expiry: u32,
    pub receive_max: u16,
    pub max_packet: Option<u32>,
}

/// Reads until a whole CONNECT is there and decodes it. Refuses anything else with a reason
/// label for the metrics (and, for an unsupported protocol level, a CONNACK saying so).
async fn read_connect<S: Io>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: u32,
) -> Result<ConnectInfo, &'static str> {
    loop {
        if !buf.is_empty() && buf[0] != PacketType::Connect.byte() {
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
                        encode_connack_refused(Version::V5, Reason::PacketTooLarge, &mut out);
                        let _ = write_flush(stream, &out).await;
                        return Err("packet_too_large");
                    }
                    Err(_) => return Err("malformed_connect"),
                },
                _ => {
                    // MQTT 3.1 (level 3) and unknown levels: CONNACK 0x01 (unacceptable
                    // protocol version), the 3.1.1 way.
                    const UNACCEPTABLE_VERSION: u8 = 0x01;
                    let connack = [PacketType::ConnAck.byte(), 0x02, 0x00, UNACCEPTABLE_VERSION];
                    let _ = write_flush(stream, &connack).await;
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

/// CONNACK refusing the connection; 3.1.1 gets the nearest return code.
pub(crate) fn encode_connack_refused(ver: Version, code: Reason, buf: &mut BytesMut) {
    match ver {
        Version::V4 => {
            buf.extend_from_slice(&[PacketType::ConnAck.byte(), 0x02, 0x00, code.v4_connack()]);
        }
        Version::V5 => {
            let ack = v5::ConnAck {
                session_present: false,
                code: code.v5_connack(),
                properties: None,
            };
            let _ = v5::Packet::ConnAck(ack).write(buf, None);
        }
    }
}

/// CONNACK accepting the connection, with what a v5 client needs to know of the node's limits.
pub(crate) fn encode_connack_ok(
    ctx: &Context,
    info: &ConnectInfo,
    present: bool,
    expiry: u32,
    assigned: Option<String>,
    buf: &mut BytesMut,
) {
    match info.ver {
        Version::V4 => {
            let ok = Reason::Success.v4_connack();
            buf.extend_from_slice(&[PacketType::ConnAck.byte(), 0x02, present as u8, ok]);
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
