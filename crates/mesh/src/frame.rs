//! Frames on link streams: a 4-byte big-endian length, then one encoded [`Frame`].
//!
//! Event batches are encoded by hand from shared envelopes, so forwarding an event never copies
//! it into an owned message first.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use meshgate_broker::RemoteDest;
use meshgate_proto::Envelope;
use meshgate_proto::v1::{Destination, Frame, RoutedEvent};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use thiserror::Error;

/// Why a stream's frames cannot be read; each closes the link with this reason.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the receiver accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The receiver's maximum.
        max: usize,
    },
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends `frame` with its length prefix to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(4 + len);
    out.put_u32(len as u32);
    frame
        .encode(out)
        .expect("BytesMut grows as needed, encoding cannot run out of room");
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match decode_raw(buf, max)? {
        Some(body) => Frame::decode(body)
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string())),
        None => Ok(None),
    }
}

/// Takes the body of one complete frame off the front of `buf`, if there is one.
pub fn decode_raw(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes a frame body that must be an event batch, handing each event to `f` as it is
/// decoded (no vector of the whole batch). Returns the batch's `ack_up_to` (0 if none).
pub fn for_each_event(body: Bytes, mut f: impl FnMut(RoutedEvent)) -> Result<u64, FrameError> {
    let mut failed = None;
    let up_to = for_each_record(body, |r| match RoutedEvent::decode(r) {
        Ok(ev) => f(ev),
        Err(e) => {
            failed.get_or_insert(e);
        }
    })?;
    match failed {
        Some(e) => Err(FrameError::Malformed(e.to_string())),
        None => Ok(up_to),
    }
}

/// The records (encoded `RoutedEvent`s) of a frame body that must be an event batch, each
/// handed to `f`. Returns the batch's `ack_up_to` (0 if none).
fn for_each_record(mut body: Bytes, mut f: impl FnMut(Bytes)) -> Result<u64, FrameError> {
    use prost::encoding::{DecodeContext, decode_key, decode_varint, skip_field};
    let bad = |e: prost::DecodeError| FrameError::Malformed(e.to_string());
    let take = |b: &mut Bytes| -> Result<Bytes, FrameError> {
        let len = decode_varint(b).map_err(bad)? as usize;
        if len > b.remaining() {
            return Err(FrameError::Malformed("length beyond the frame".into()));
        }
        Ok(b.split_to(len))
    };
    let mut up_to = 0;
    while body.has_remaining() {
        let (tag, wt) = decode_key(&mut body).map_err(bad)?;
        if tag != FRAME_EVENTS_TAG || wt != WireType::LengthDelimited {
            return Err(FrameError::Malformed(format!(
                "field {tag} where an event batch was expected"
            )));
        }
        let mut batch = take(&mut body)?;
        while batch.has_remaining() {
            let (tag, wt) = decode_key(&mut batch).map_err(bad)?;
            if tag == BATCH_EVENTS_TAG && wt == WireType::LengthDelimited {
                f(take(&mut batch)?);
            } else if tag == BATCH_ACK_TAG && wt == WireType::Varint {
                up_to = decode_varint(&mut batch).map_err(bad)?;
            } else {
                skip_field(wt, tag, &mut batch, DecodeContext::default()).map_err(bad)?;
            }
        }
    }
    Ok(up_to)
}

/// A `RoutedEvent` as a receiving node needs it: the envelope decoded straight into its shared
/// allocation, this node's share (the queue groups it serves, if it is a destination) told
/// apart from the destinations behind it without an allocation for its own.
#[derive(Debug)]
pub struct Incoming {
    /// The event.
    pub env: Arc<Envelope>,
    /// The (group, filter) pairs this node serves, if it is a destination.
    pub mine: Option<Vec<(String, String)>>,
    /// The destinations behind this node.
    pub rest: Vec<Destination>,
    /// Links crossed before the one it arrived on.
    pub hops: u32,
}

/// Decodes one `RoutedEvent` for node `me`.
pub fn decode_incoming(mut b: Bytes, me: &str) -> Result<Incoming, FrameError> {
    use prost::encoding::{DecodeContext, decode_key, decode_varint, skip_field};
    let mut env = Arc::new(Envelope::default());
    let mut mine = None;
    let mut rest = Vec::new();
    let mut hops = 0;
    let mut has_event = false;
    while b.has_remaining() {
        let (tag, wt) = decode_key(&mut b).map_err(malformed)?;
        match (tag, wt) {
            (EVENT_TAG, WireType::LengthDelimited) => {
                // Unique: decoded in place, never moved.
                Arc::make_mut(&mut env)
                    .merge(take_field(&mut b)?)
                    .map_err(malformed)?;
                has_event = true;
            }
            (DESTS_TAG, WireType::LengthDelimited) => {
                let d = take_field(&mut b)?;
                let (node, groups) = dest_parts(&d)?;
                if node == me.as_bytes() {
                    mine = Some(groups);
                } else {
                    rest.push(Destination::decode(d).map_err(malformed)?);
                }
            }
            (HOPS_TAG, WireType::Varint) => {
                hops = decode_varint(&mut b).map_err(malformed)? as u32;
            }
            _ => skip_field(wt, tag, &mut b, DecodeContext::default()).map_err(malformed)?,
        }
    }
    if !has_event {
        return Err(FrameError::Malformed(
            "a routed event without its event".into(),
        ));
    }
    Ok(Incoming {
        env,
        mine,
        rest,
        hops,
    })
}

fn malformed(e: prost::DecodeError) -> FrameError {
    FrameError::Malformed(e.to_string())
}

/// The bytes of a length-delimited field's value.
fn take_field(b: &mut Bytes) -> Result<Bytes, FrameError> {
    let len = prost::encoding::decode_varint(b).map_err(malformed)? as usize;
    if len > b.remaining() {
        return Err(FrameError::Malformed("field beyond its message".into()));
    }
    Ok(b.split_to(len))
}

/// The `node` of an encoded `Destination` (borrowed) and its groups as (group, filter); no
/// allocation for a destination without groups.
type DestParts<'a> = (&'a [u8], Vec<(String, String)>);

fn dest_parts(d: &Bytes) -> Result<DestParts<'_>, FrameError> {
    use meshgate_proto::v1::GroupRef;
    use prost::encoding::{DecodeContext, decode_key, decode_varint, skip_field};
    let mut b = &d[..];
    let mut node: &[u8] = &[];
    let mut groups = Vec::new();
    while b.has_remaining() {
        let (tag, wt) = decode_key(&mut b).map_err(malformed)?;
        if wt != WireType::LengthDelimited || !(tag == 1 || tag == 2) {
            skip_field(wt, tag, &mut b, DecodeContext::default()).map_err(malformed)?;
            continue;
        }
        let len = decode_varint(&mut b).map_err(malformed)? as usize;
        if len > b.len() {
            return Err(FrameError::Malformed("field beyond its destination".into()));
        }
        let (value, after) = b.split_at(len);
        b = after;
        if tag == 1 {
            node = value;
        } else {
            let g = GroupRef::decode(value).map_err(malformed)?;
            groups.push((g.group, g.filter));
        }
    }
    Ok((node, groups))
}

/// [`for_each_event`] decoding each event as [`Incoming`] for node `me`.
pub fn for_each_incoming(
    body: Bytes,
    me: &str,
    mut f: impl FnMut(Result<Incoming, FrameError>),
) -> Result<u64, FrameError> {
    for_each_record(body, |r| f(decode_incoming(r, me)))
}

/// One `RoutedEvent` as stored in a guaranteed queue (the origin written in).
pub fn encode_routed(e: &OutEvent, origin: &str, out: &mut BytesMut) {
    let (env_len, len) = routed_len(e, origin);
    out.reserve(len);
    put_routed(e, env_len, origin, out);
}

/// Appends `Frame { events: EventBatch { events: records, ack_up_to } }` with its length prefix,
/// from stored `RoutedEvent` encodings. Returns the frame's size including the prefix.
pub fn encode_stored(records: &[&[u8]], ack_up_to: u64, out: &mut BytesMut) -> usize {
    let mut lens: usize = records
        .iter()
        .map(|r| key_len(BATCH_EVENTS_TAG) + encoded_len_varint(r.len() as u64) + r.len())
        .sum();
    lens += key_len(BATCH_ACK_TAG) + encoded_len_varint(ack_up_to);
    let frame_len = key_len(FRAME_EVENTS_TAG) + encoded_len_varint(lens as u64) + lens;
    out.reserve(4 + frame_len);
    out.put_u32(frame_len as u32);
    encode_key(FRAME_EVENTS_TAG, WireType::LengthDelimited, out);
    encode_varint(lens as u64, out);
    for r in records {
        encode_key(BATCH_EVENTS_TAG, WireType::LengthDelimited, out);
        encode_varint(r.len() as u64, out);
        out.put_slice(r);
    }
    encode_key(BATCH_ACK_TAG, WireType::Varint, out);
    encode_varint(ack_up_to, out);
    4 + frame_len
}

/// One event queued on a link.
#[derive(Clone, Debug)]
pub struct OutEvent {
    /// The event, shared with local subscribers and other links.
    pub event: Arc<Envelope>,
    /// The nodes this copy is for.
    pub destinations: Dests,
    /// Links crossed before this one.
    pub hops: u32,
}

/// One destination of a queued event.
#[derive(Clone, Debug, PartialEq)]
pub enum OutDest {
    /// Made at the origin from the router's match: shared names, nothing allocated per event.
    Shared {
        /// The destination node.
        node: Arc<str>,
        /// (group, filter) pairs the node serves for this event.
        groups: Vec<(Arc<str>, Arc<str>)>,
    },
    /// As decoded from a peer, passed on by a transit node.
    Owned(Destination),
}

impl OutDest {
    /// The destination node's name.
    pub fn node(&self) -> &str {
        match self {
            OutDest::Shared { node, .. } => node,
            OutDest::Owned(d) => &d.node,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            OutDest::Owned(d) => Message::encoded_len(d),
            OutDest::Shared { node, groups } => {
                str_len(1, node)
                    + groups
                        .iter()
                        .map(|(g, f)| {
                            let l = str_len(1, g) + str_len(2, f);
                            key_len(2) + encoded_len_varint(l as u64) + l
                        })
                        .sum::<usize>()
            }
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            OutDest::Owned(d) => d.encode_raw(out),
            OutDest::Shared { node, groups } => {
                put_str(1, node, out);
                for (g, f) in groups {
                    encode_key(2, WireType::LengthDelimited, out);
                    encode_varint((str_len(1, g) + str_len(2, f)) as u64, out);
                    put_str(1, g, out);
                    put_str(2, f, out);
                }
            }
        }
    }
}

/// Destinations of one queued copy: one (the common case, no allocation) or several.
#[derive(Clone, Debug, PartialEq)]
pub enum Dests {
    /// A single destination.
    One(OutDest),
    /// Several destinations behind the same next hop.
    Many(Vec<OutDest>),
}

impl Dests {
    /// Adds a destination.
    pub fn push(&mut self, d: OutDest) {
        *self = match std::mem::replace(self, Dests::Many(Vec::new())) {
            Dests::One(first) => Dests::Many(vec![first, d]),
            Dests::Many(mut v) => {
                v.push(d);
                Dests::Many(v)
            }
        };
    }

    /// The destinations.
    pub fn as_slice(&self) -> &[OutDest] {
        match self {
            Dests::One(d) => std::slice::from_ref(d),
            Dests::Many(v) => v,
        }
    }
}

/// A destination as the link encoder sees it: the router's [`RemoteDest`] at the origin (no
/// copy of its shared names), a decoded [`Destination`] at a transit node.
pub trait Dest {
    /// The destination node.
    fn node(&self) -> &str;
    /// Encoded length of the `Destination` message.
    fn encoded_len(&self) -> usize;
    /// Appends the `Destination` message (without its key and length).
    fn encode(&self, out: &mut BytesMut);
}

impl<T: Dest> Dest for &T {
    fn node(&self) -> &str {
        (**self).node()
    }
    fn encoded_len(&self) -> usize {
        (**self).encoded_len()
    }
    fn encode(&self, out: &mut BytesMut) {
        (**self).encode(out)
    }
}

impl Dest for RemoteDest {
    fn node(&self) -> &str {
        &self.node
    }
    fn encoded_len(&self) -> usize {
        shared_dest_len(&self.node, &self.groups)
    }
    fn encode(&self, out: &mut BytesMut) {
        put_shared_dest(&self.node, &self.groups, out)
    }
}

impl Dest for Destination {
    fn node(&self) -> &str {
        &self.node
    }
    fn encoded_len(&self) -> usize {
        Message::encoded_len(self)
    }
    fn encode(&self, out: &mut BytesMut) {
        self.encode_raw(out)
    }
}

fn shared_dest_len(node: &str, groups: &[(Arc<str>, Arc<str>)]) -> usize {
    str_len(1, node)
        + groups
            .iter()
            .map(|(g, f)| {
                let l = str_len(1, g) + str_len(2, f);
                key_len(2) + encoded_len_varint(l as u64) + l
            })
            .sum::<usize>()
}

fn put_shared_dest(node: &str, groups: &[(Arc<str>, Arc<str>)], out: &mut BytesMut) {
    put_str(1, node, out);
    for (g, f) in groups {
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint((str_len(1, g) + str_len(2, f)) as u64, out);
        put_str(1, g, out);
        put_str(2, f, out);
    }
}

/// Length of one `EventBatch.events` record (key, length and `RoutedEvent`) of `event` for
/// `dests`, as [`append_record`] writes it.
pub fn record_len<D: Dest>(event: &Envelope, dests: &[D], hops: u32, origin: &str) -> usize {
    let len = routed_len_of(event, dests, hops, origin).1;
    key_len(BATCH_EVENTS_TAG) + encoded_len_varint(len as u64) + len
}

/// Appends one `EventBatch.events` record: the event, with this node's name as its origin if it
/// has none yet, for `dests`. Whole records appended back to back are the body of an event
/// batch ([`batch_header`]); nothing is copied per destination or per link but the bytes.
pub fn append_record<D: Dest>(
    event: &Envelope,
    dests: &[D],
    hops: u32,
    origin: &str,
    out: &mut BytesMut,
) -> usize {
    let (env_len, len) = routed_len_of(event, dests, hops, origin);
    let total = key_len(BATCH_EVENTS_TAG) + encoded_len_varint(len as u64) + len;
    out.reserve(total);
    encode_key(BATCH_EVENTS_TAG, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    encode_key(EVENT_TAG, WireType::LengthDelimited, out);
    encode_varint(env_len as u64, out);
    if event.origin_node.is_empty() {
        // The envelope itself writes no origin (it is empty), so this one stands.
        put_str(ORIGIN_TAG, origin, out);
    }
    event.encode_raw(out);
    for d in dests {
        encode_key(DESTS_TAG, WireType::LengthDelimited, out);
        encode_varint(d.encoded_len() as u64, out);
        d.encode(out);
    }
    if hops != 0 {
        prost::encoding::uint32::encode(HOPS_TAG, &hops, out);
    }
    total
}

/// The length prefix and header of a frame whose body is `body_len` bytes of records
/// ([`append_record`]): `Frame { events: EventBatch { events } }`. Returns the bytes to write
/// before the body.
pub fn batch_header(body_len: usize) -> Bytes {
    let frame_len = key_len(FRAME_EVENTS_TAG) + encoded_len_varint(body_len as u64) + body_len;
    let mut out = BytesMut::with_capacity(16);
    out.put_u32(frame_len as u32);
    encode_key(FRAME_EVENTS_TAG, WireType::LengthDelimited, &mut out);
    encode_varint(body_len as u64, &mut out);
    out.freeze()
}

fn routed_len_of<D: Dest>(
    event: &Envelope,
    dests: &[D],
    hops: u32,
    origin: &str,
) -> (usize, usize) {
    let env_len = event.encoded_len() + origin_len(event, origin);
    let mut n = key_len(EVENT_TAG) + encoded_len_varint(env_len as u64) + env_len;
    for d in dests {
        let l = d.encoded_len();
        n += key_len(DESTS_TAG) + encoded_len_varint(l as u64) + l;
    }
    if hops != 0 {
        n += key_len(HOPS_TAG) + encoded_len_varint(u64::from(hops));
    }
    (env_len, n)
}

/// Encoded size of a non-empty string field (proto3 omits empty strings).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, out: &mut BytesMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.put_slice(s.as_bytes());
    }
}

const ORIGIN_TAG: u32 = 3; // Envelope.origin_node
const EVENT_TAG: u32 = 1; // RoutedEvent.event
const DESTS_TAG: u32 = 2; // RoutedEvent.destinations
const HOPS_TAG: u32 = 3; // RoutedEvent.hops
const BATCH_EVENTS_TAG: u32 = 1; // EventBatch.events
const BATCH_ACK_TAG: u32 = 2; // EventBatch.ack_up_to
const FRAME_EVENTS_TAG: u32 = 4; // Frame.events

fn origin_len(env: &Envelope, origin: &str) -> usize {
    if env.origin_node.is_empty() {
        key_len(ORIGIN_TAG) + encoded_len_varint(origin.len() as u64) + origin.len()
    } else {
        0
    }
}

/// (encoded envelope length with the origin, encoded `RoutedEvent` length).
fn routed_len(e: &OutEvent, origin: &str) -> (usize, usize) {
    let env_len = e.event.encoded_len() + origin_len(&e.event, origin);
    let mut n = key_len(EVENT_TAG) + encoded_len_varint(env_len as u64) + env_len;
    for d in e.destinations.as_slice() {
        let l = d.encoded_len();
        n += key_len(DESTS_TAG) + encoded_len_varint(l as u64) + l;
    }
    if e.hops != 0 {
        n += key_len(HOPS_TAG) + encoded_len_varint(u64::from(e.hops));
    }
    (env_len, n)
}

/// Appends one `Frame { events: EventBatch { events } }` with its length prefix. `origin` is
/// this node's name, written into envelopes that have none yet (they leave their origin now).
/// `scratch` is reused between calls. Returns the frame's size including the prefix.
pub fn encode_events(
    events: &[OutEvent],
    origin: &str,
    out: &mut BytesMut,
    scratch: &mut Vec<(usize, usize)>,
) -> usize {
    scratch.clear();
    scratch.extend(events.iter().map(|e| routed_len(e, origin)));
    let lens: usize = scratch
        .iter()
        .map(|&(_, l)| key_len(BATCH_EVENTS_TAG) + encoded_len_varint(l as u64) + l)
        .sum();
    let frame_len = key_len(FRAME_EVENTS_TAG) + encoded_len_varint(lens as u64) + lens;
    out.reserve(4 + frame_len);
    out.put_u32(frame_len as u32);
    encode_key(FRAME_EVENTS_TAG, WireType::LengthDelimited, out);
    encode_varint(lens as u64, out);
    for (e, &(env_len, len)) in events.iter().zip(scratch.iter()) {
        encode_key(BATCH_EVENTS_TAG, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
        put_routed(e, env_len, origin, out);
    }
    4 + frame_len
}

fn put_routed(e: &OutEvent, env_len: usize, origin: &str, out: &mut BytesMut) {
    encode_key(EVENT_TAG, WireType::LengthDelimited, out);
    encode_varint(env_len as u64, out);
    if e.event.origin_node.is_empty() {
        // The envelope itself writes no origin (it is empty), so this one stands.
        put_str(ORIGIN_TAG, origin, out);
    }
    e.event.encode_raw(out);
    for d in e.destinations.as_slice() {
        encode_key(DESTS_TAG, WireType::LengthDelimited, out);
        encode_varint(d.encoded_len() as u64, out);
        d.encode(out);
    }
    if e.hops != 0 {
        prost::encoding::uint32::encode(HOPS_TAG, &e.hops, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_proto::v1::{GroupRef, Hello, frame::Body};

    #[test]
    fn round_trip_and_limits() {
        let mut buf = BytesMut::new();
        let hello = Frame {
            body: Some(Body::Hello(Hello {
                node: "a".into(),
                incarnation: 7,
                protocol_version: 1,
                ..Default::default()
            })),
        };
        encode(&hello, &mut buf);
        let whole = buf.clone();
        // Byte by byte: nothing until the frame is complete.
        let mut partial = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            partial.put_u8(*b);
            let got = decode(&mut partial, 1024).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1);
            if let Some(f) = got {
                assert_eq!(f, hello);
            }
        }
        assert!(partial.is_empty());
        let mut big = BytesMut::new();
        big.put_u32(10_000);
        assert_eq!(
            decode(&mut big, 1024),
            Err(FrameError::TooLarge {
                len: 10_000,
                max: 1024
            })
        );
        let mut garbage = BytesMut::new();
        garbage.put_u32(3);
        garbage.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode(&mut garbage, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn hand_encoded_events_decode_as_frames() {
        let local = Arc::new(Envelope {
            topic: "a/b".into(),
            payload: bytes::Bytes::from_static(b"hello"),
            id_hi: 1,
            id_lo: 2,
            ..Default::default()
        });
        let transit = Arc::new(Envelope {
            origin_node: "far".into(),
            topic: "c".into(),
            ..Default::default()
        });
        let dest = |n: &str| Destination {
            node: n.into(),
            groups: vec![GroupRef {
                group: "g".into(),
                filter: "a/>".into(),
            }],
        };
        let shared = |n: &str| OutDest::Shared {
            node: n.into(),
            groups: vec![("g".into(), "a/>".into())],
        };
        let mut two = Dests::One(shared("x"));
        two.push(shared("y"));
        let events = vec![
            OutEvent {
                event: local,
                destinations: two,
                hops: 0,
            },
            OutEvent {
                event: transit,
                destinations: Dests::One(OutDest::Owned(dest("z"))),
                hops: 3,
            },
        ];
        let mut buf = BytesMut::new();
        let n = encode_events(&events, "me", &mut buf, &mut Vec::new());
        assert_eq!(n, buf.len());
        let mut streamed = Vec::new();
        for_each_event(
            decode_raw(&mut buf.clone(), 1 << 20).unwrap().unwrap(),
            |e| streamed.push(e),
        )
        .unwrap();
        assert_eq!(streamed.len(), 2);
        assert_eq!(streamed[1].hops, 3);
        let hello = {
            let mut b = BytesMut::new();
            encode(
                &Frame {
                    body: Some(Body::Ping(Default::default())),
                },
                &mut b,
            );
            decode_raw(&mut b, 1024).unwrap().unwrap()
        };
        assert!(matches!(
            for_each_event(hello, |_| {}),
            Err(FrameError::Malformed(_))
        ));
        let Some(Frame {
            body: Some(Body::Events(batch)),
        }) = decode(&mut buf, 1 << 20).unwrap()
        else {
            panic!("not an event batch");
        };
        assert_eq!(batch.events.len(), 2);
        let a = &batch.events[0];
        let env = a.event.as_ref().unwrap();
        assert_eq!(env.origin_node, "me", "stamped when leaving its origin");
        assert_eq!(env.topic, "a/b");
        assert_eq!(&env.payload[..], b"hello");
        assert_eq!((env.id_hi, env.id_lo), (1, 2));
        assert_eq!(a.destinations, vec![dest("x"), dest("y")]);
        assert_eq!(a.hops, 0);
        let b = &batch.events[1];
        assert_eq!(b.event.as_ref().unwrap().origin_node, "far");
        assert_eq!(b.destinations, vec![dest("z")]);
        assert_eq!(b.hops, 3);
    }
}
