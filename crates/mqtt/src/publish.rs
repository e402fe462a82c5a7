//! PUBLISH from a client: topic aliases, the envelope, routing, and the acknowledgement or
//! refusal.

use std::sync::Arc;

use bytes::Bytes;
use meshgate_broker::PublishError;
use meshgate_proto::{DeliveryClass, Envelope, Header};
use rumqttc::v5::mqttbytes::v5;
use tracing::{debug, info};

use crate::codec::{self, Ack, InPublish, Version};
use crate::conn::{Conn, End};
use crate::protocol_error;
use crate::reason::Reason;

impl Conn {
    pub(crate) fn on_publish(&mut self, p: InPublish) -> Option<End> {
        let InPublish {
            topic,
            qos,
            retain,
            pkid,
            payload,
            props,
        } = p;
        if qos == 2 && !self.qos2_in.insert(pkid) {
            // A retransmission of a QoS 2 publish already routed: acknowledge (after the first
            // PUBREC, if that still waits for the disk), route nothing.
            self.ack(0, pkid, Ack::Pubrec, Reason::Success, None);
            return None;
        }
        // Built in its shared allocation: the envelope is never moved (it is a few hundred
        // bytes, and a move is a copy).
        let mut event = Arc::new(Envelope::default());
        let env = Arc::make_mut(&mut event);
        env.retain = retain;
        env.payload = payload;
        env.delivery = if qos > 0 {
            DeliveryClass::Guaranteed as i32
        } else {
            DeliveryClass::Direct as i32
        };
        env.topic = match props {
            Some(props) => {
                let topic = match self.resolve_alias(topic, props.topic_alias) {
                    Ok(t) => t,
                    Err(end) => return Some(end),
                };
                set_properties(env, props);
                topic
            }
            None => topic,
        };
        match self
            .ctx
            .broker
            .publish_shared(&mut self.publisher, event, qos.min(1))
        {
            Ok(report) => {
                match qos {
                    1 => self.ack(report.ticket, pkid, Ack::Puback, Reason::Success, None),
                    2 => self.ack(report.ticket, pkid, Ack::Pubrec, Reason::Success, None),
                    _ => {}
                }
                None
            }
            Err(e) => self.on_refused(qos, pkid, e),
        }
    }

    /// The topic of a v5 publish that may use a topic alias: an empty topic names the alias's
    /// topic, a topic with an alias sets it. A bad alias closes the connection (`Err`).
    fn resolve_alias(&mut self, topic: String, alias: Option<u16>) -> Result<String, End> {
        let Some(alias) = alias else {
            return Ok(topic);
        };
        let max = self.ctx.config.topic_alias_max;
        if alias == 0 || alias > max {
            protocol_error("topic_alias");
            let msg = format!("topic alias {alias} is outside 1..={max}");
            codec::encode_disconnect(self.ver, Reason::TopicAliasInvalid, &msg, &mut self.wbuf);
            return Err(End::Closed("invalid topic alias"));
        }
        if !topic.is_empty() {
            self.aliases.insert(alias, topic.clone());
            return Ok(topic);
        }
        match self.aliases.get(&alias) {
            Some(t) => Ok(t.clone()),
            None => {
                protocol_error("topic_alias");
                let msg = "unknown topic alias";
                codec::encode_disconnect(self.ver, Reason::ProtocolError, msg, &mut self.wbuf);
                Err(End::Closed("unknown topic alias"))
            }
        }
    }

    /// Answers a publish the broker refused: bad topics and sizes close the connection, policy
    /// and limits refuse this publish only (3.1.1, which has no negative acknowledgement, is
    /// closed rather than told a QoS 1 publish it could not store was stored).
    fn on_refused(&mut self, qos: u8, pkid: u16, e: PublishError) -> Option<End> {
        match e {
            PublishError::Topic(e) => {
                protocol_error("invalid_topic");
                let msg = format!("invalid topic name: {e}");
                debug!(%msg);
                codec::encode_disconnect(self.ver, Reason::TopicNameInvalid, &msg, &mut self.wbuf);
                Some(End::Closed("invalid topic"))
            }
            e @ PublishError::PayloadTooLarge { .. } => {
                protocol_error("payload_too_large");
                let msg = e.to_string();
                codec::encode_disconnect(self.ver, Reason::PacketTooLarge, &msg, &mut self.wbuf);
                Some(End::Closed("payload too large"))
            }
            PublishError::Denied(d) => {
                // Refuse this publish only: unknown and forbidden topics get the same answer.
                protocol_error("denied");
                debug!(reason = d.reason, error = %d, "publish refused by governance");
                self.refuse(qos, pkid, Reason::denied(d.kind, false), Some(d.message));
                None
            }
            e @ PublishError::RetainedFull(_) => {
                // Refuse this publish only; v5 says why in the acknowledgement.
                protocol_error("retained_full");
                debug!(error = %e, "publish refused");
                self.refuse(qos, pkid, Reason::QuotaExceeded, None);
                None
            }
            e @ (PublishError::QuotaExceeded { .. } | PublishError::StoreFailed(_)) => {
                let (what, code) = match e {
                    PublishError::StoreFailed(_) => ("store_failed", Reason::UnspecifiedError),
                    _ => ("quota_exceeded", Reason::QuotaExceeded),
                };
                protocol_error(what);
                if self.ver == Version::V4 && qos > 0 {
                    // MQTT 3.1.1 has no negative PUBACK: acknowledging would claim an event the
                    // node did not store, so close instead; the client sends it again later.
                    info!(error = %e, "closing an MQTT 3.1.1 connection whose publish cannot be stored");
                    return Some(End::Closed(what));
                }
                debug!(error = %e, "publish refused");
                self.refuse(qos, pkid, code, Some(e.to_string()));
                None
            }
        }
    }

    /// Refuses one publish with a v5 reason code (3.1.1 gets a plain acknowledgement).
    pub(crate) fn refuse(&mut self, qos: u8, pkid: u16, reason: Reason, text: Option<String>) {
        match qos {
            1 => self.ack(0, pkid, Ack::Puback, reason, text),
            2 => {
                self.qos2_in.remove(&pkid);
                self.ack(0, pkid, Ack::Pubrec, reason, text);
            }
            _ => {}
        }
    }
}

/// Copies the MQTT 5 properties of a publish into its envelope.
fn set_properties(env: &mut Envelope, props: v5::PublishProperties) {
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
