//! MQTT reason codes and packet types as types, not bare bytes.
//!
//! One enum for every reason code this node sends (MQTT 5 §2.4), converted to rumqttc's
//! per-packet enums where rumqttc encodes the packet, and to the nearest MQTT 3.1.1 return code
//! where 3.1.1 has one (CONNACK, SUBACK).

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// A reason code the node sends (MQTT 5 §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    /// Success; also "granted QoS 0" in a SUBACK.
    Success = 0x00,
    /// Granted QoS 1 (SUBACK).
    GrantedQos1 = 0x01,
    /// Unspecified error (also: the store failed).
    UnspecifiedError = 0x80,
    /// The packet could not be parsed.
    MalformedPacket = 0x81,
    /// A packet that breaks the protocol.
    ProtocolError = 0x82,
    /// CONNACK: the client id is not valid.
    ClientIdentifierNotValid = 0x85,
    /// CONNACK: bad user name or password.
    BadUserNameOrPassword = 0x86,
    /// Not authorized.
    NotAuthorized = 0x87,
    /// DISCONNECT: the node shuts down.
    ServerShuttingDown = 0x8B,
    /// DISCONNECT: nothing received within 1.5 times the keep-alive.
    KeepAliveTimeout = 0x8D,
    /// DISCONNECT: another connection took the session.
    SessionTakenOver = 0x8E,
    /// SUBACK: the filter is not valid.
    TopicFilterInvalid = 0x8F,
    /// The topic name is not valid.
    TopicNameInvalid = 0x90,
    /// A topic alias outside the announced range.
    TopicAliasInvalid = 0x94,
    /// A packet over the maximum size.
    PacketTooLarge = 0x95,
    /// A limit was reached (store quota, retained store).
    QuotaExceeded = 0x97,
    /// The payload does not match the channel's schema.
    PayloadFormatInvalid = 0x99,
}

impl Reason {
    /// The byte on the wire.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The reason for a SUBACK granting `qos`.
    pub(crate) fn granted(qos: u8) -> Self {
        if qos == 0 {
            Reason::Success
        } else {
            Reason::GrantedQos1
        }
    }

    /// The code for a governance refusal of a publish (`filter` false) or a subscription.
    pub(crate) fn denied(kind: meshgate_broker::DenyKind, filter: bool) -> Self {
        use meshgate_broker::DenyKind;
        match kind {
            DenyKind::NotAuthorized => Reason::NotAuthorized,
            DenyKind::InvalidTopic if filter => Reason::TopicFilterInvalid,
            DenyKind::InvalidTopic => Reason::TopicNameInvalid,
            DenyKind::InvalidPayload => Reason::PayloadFormatInvalid,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code nearest to this refusal.
    pub(crate) fn v4_connack(self) -> u8 {
        match self {
            Reason::Success => 0x00,
            Reason::ClientIdentifierNotValid => 0x02,
            Reason::BadUserNameOrPassword => 0x04,
            Reason::NotAuthorized => 0x05,
            _ => 0x03, // server unavailable
        }
    }

    /// The MQTT 5 CONNACK code.
    pub(crate) fn v5_connack(self) -> v5::ConnectReturnCode {
        use v5::ConnectReturnCode as C;
        match self {
            Reason::Success => C::Success,
            Reason::ClientIdentifierNotValid => C::ClientIdentifierNotValid,
            Reason::BadUserNameOrPassword => C::BadUserNamePassword,
            Reason::NotAuthorized => C::NotAuthorized,
            Reason::PacketTooLarge => C::PacketTooLarge,
            Reason::QuotaExceeded => C::QuotaExceeded,
            _ => C::ServerUnavailable,
        }
    }

    /// The MQTT 5 DISCONNECT code.
    pub(crate) fn v5_disconnect(self) -> v5::DisconnectReasonCode {
        use v5::DisconnectReasonCode as D;
        match self {
            Reason::Success | Reason::GrantedQos1 => D::NormalDisconnection,
            Reason::MalformedPacket => D::MalformedPacket,
            Reason::ProtocolError => D::ProtocolError,
            Reason::NotAuthorized => D::NotAuthorized,
            Reason::ServerShuttingDown => D::ServerShuttingDown,
            Reason::KeepAliveTimeout => D::KeepAliveTimeout,
            Reason::SessionTakenOver => D::SessionTakenOver,
            Reason::TopicFilterInvalid => D::TopicFilterInvalid,
            Reason::TopicNameInvalid => D::TopicNameInvalid,
            Reason::TopicAliasInvalid => D::TopicAliasInvalid,
            Reason::PacketTooLarge => D::PacketTooLarge,
            Reason::QuotaExceeded => D::QuotaExceeded,
            Reason::PayloadFormatInvalid => D::PayloadFormatInvalid,
            _ => D::UnspecifiedError,
        }
    }

    /// The MQTT 3.1.1 SUBACK code: granted QoS, or failure.
    pub(crate) fn v4_suback(self) -> v4::SubscribeReasonCode {
        match self {
            Reason::Success => v4::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce),
            Reason::GrantedQos1 => v4::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
            _ => v4::SubscribeReasonCode::Failure,
        }
    }

    /// The MQTT 5 SUBACK code.
    pub(crate) fn v5_suback(self) -> v5::SubscribeReasonCode {
        use rumqttc::v5::mqttbytes::QoS;
        use v5::SubscribeReasonCode as S;
        match self {
            Reason::Success => S::Success(QoS::AtMostOnce),
            Reason::GrantedQos1 => S::Success(QoS::AtLeastOnce),
            Reason::NotAuthorized => S::NotAuthorized,
            Reason::TopicFilterInvalid => S::TopicFilterInvalid,
            Reason::QuotaExceeded => S::QuotaExceeded,
            _ => S::Unspecified,
        }
    }
}

/// Packet types, as the high nibble of a fixed header's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PacketType {
    /// CONNECT (client to server, first packet).
    Connect = 0x10,
    /// CONNACK.
    ConnAck = 0x20,
    /// PUBLISH (flags in the low nibble).
    Publish = 0x30,
    /// PUBACK.
    PubAck = 0x40,
    /// PUBREC.
    PubRec = 0x50,
    /// PUBCOMP.
    PubComp = 0x70,
    /// PINGRESP.
    PingResp = 0xD0,
}

impl PacketType {
    /// The first byte of a fixed header with no flags.
    pub(crate) fn byte(self) -> u8 {
        self as u8
    }
}

/// PUBLISH fixed-header flags.
pub(crate) mod publish_flags {
    /// RETAIN.
    pub(crate) const RETAIN: u8 = 0x01;
    /// DUP: a resend.
    pub(crate) const DUP: u8 = 0x08;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_spec_bytes() {
        assert_eq!(Reason::NotAuthorized.code(), 0x87);
        assert_eq!(Reason::QuotaExceeded.code(), 0x97);
        assert_eq!(Reason::PayloadFormatInvalid.code(), 0x99);
        assert_eq!(Reason::ClientIdentifierNotValid.v4_connack(), 0x02);
        assert_eq!(Reason::PacketTooLarge.v4_connack(), 0x03);
        assert_eq!(PacketType::PubAck.byte(), 0x40);
    }
}
