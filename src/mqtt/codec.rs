//! Codec glue: frames MQTT packets off a byte stream and turns them into the
//! engine's inputs and outputs.
//!
//! CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, CONNACK, SUBACK and UNSUBACK
//! go through the `mqtt5-protocol` crate. PUBLISH and the four
//! acknowledgements are the hot path and are read and written here: a
//! PUBLISH keeps its MQTT 5 properties as the bytes the client sent, so
//! they pass through to subscribers untouched (MQTT-3.3.2-17/18) and are
//! never parsed into maps per delivery. MQTT 3.1 (`MQIsdp`, level 3) is
//! read as 3.1.1 with its own protocol name; the packets are otherwise the
//! same.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt5_protocol::packet::MqttPacket;
use mqtt5_protocol::packet::connect::ConnectPacket;
use mqtt5_protocol::packet::disconnect::DisconnectPacket;
use mqtt5_protocol::packet::subscribe::SubscribePacket;
use mqtt5_protocol::packet::unsubscribe::UnsubscribePacket;
use mqtt5_protocol::{FixedHeader, Packet, PacketType};

/// MQTT 5 reason codes the engine sends.
pub(crate) mod rc {
    pub(crate) const SUCCESS: u8 = 0x00;
    pub(crate) const UNSPECIFIED: u8 = 0x80;
    pub(crate) const MALFORMED: u8 = 0x81;
    pub(crate) const PROTOCOL_ERROR: u8 = 0x82;
    pub(crate) const UNSUPPORTED_VERSION: u8 = 0x84;
    pub(crate) const NOT_AUTHORIZED: u8 = 0x87;
    pub(crate) const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub(crate) const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub(crate) const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub(crate) const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub(crate) const TOPIC_NAME_INVALID: u8 = 0x90;
    pub(crate) const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub(crate) const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub(crate) const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub(crate) const PACKET_TOO_LARGE: u8 = 0x95;
    pub(crate) const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
}

/// Protocol levels.
pub(crate) const V31: u8 = 3;
pub(crate) const V311: u8 = 4;
pub(crate) const V5: u8 = 5;

/// Why a stream of bytes is not MQTT the engine can go on with. `code` is
/// the MQTT 5 reason code a DISCONNECT carries.
#[derive(Debug, Clone)]
pub(crate) struct ProtocolError {
    pub code: u8,
    pub detail: String,
}

impl ProtocolError {
    pub(super) fn new(code: u8, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(rc::MALFORMED, detail)
    }
}

impl From<mqtt5_protocol::MqttError> for ProtocolError {
    fn from(e: mqtt5_protocol::MqttError) -> Self {
        use mqtt5_protocol::MqttError as E;
        let code = match &e {
            E::ProtocolError(_) => rc::PROTOCOL_ERROR,
            E::InvalidTopicFilter(_) => rc::TOPIC_FILTER_INVALID,
            E::InvalidTopicName(_) => rc::TOPIC_NAME_INVALID,
            _ => rc::MALFORMED,
        };
        Self::new(code, e.to_string())
    }
}

/// One packet split off the stream: the first byte and the body.
#[derive(Debug)]
pub(crate) struct Frame {
    pub first: u8,
    pub body: Bytes,
}

/// The fixed header at the start of `buf`: (its length, the body's
/// length), or `None` when it is not all there yet.
pub(crate) fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    Ok(varint_at(buf.get(1..).unwrap_or_default())?.map(|(len, n)| (1 + n, len)))
}

/// The variable byte integer at the start of `buf`: (its value, its
/// length in bytes), or `None` when it is not all there yet.
pub(crate) fn varint_at(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut v: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i == 4 {
            return Err(ProtocolError::malformed("variable integer over 4 bytes"));
        }
        v |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Ok(None)
}

/// Splits one whole packet off the front of `buf`, or answers `None` when
/// more bytes are needed. A packet larger than `max` is refused as soon as
/// its length is known, before its body is read.
pub(crate) fn split(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some((i, len)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if i + len > max {
        return Err(ProtocolError::new(
            rc::PACKET_TOO_LARGE,
            format!("packet of {} bytes over the maximum of {max}", i + len),
        ));
    }
    if buf.len() < i + len {
        buf.reserve(i + len - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(i);
    let body = buf.split_to(len).freeze();
    Ok(Some(Frame { first, body }))
}

/// A PUBLISH as a client sent it.
#[derive(Debug, Clone)]
pub(crate) struct InPublish {
    pub topic: Bytes,
    pub pid: u16,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties as sent, without topic alias and message expiry
    /// (the engine sets those per delivery).
    pub props: Bytes,
    pub alias: Option<u16>,
    pub expiry_secs: Option<u32>,
    pub payload_utf8: bool,
    pub payload: Bytes,
}

/// What a client sends after CONNECT.
#[derive(Debug)]
pub(crate) enum Inbound {
    Publish(InPublish),
    PubAck {
        pid: u16,
    },
    PubRec {
        pid: u16,
        code: u8,
    },
    PubRel {
        pid: u16,
    },
    PubComp {
        pid: u16,
    },
    Subscribe(SubscribePacket),
    Unsubscribe(UnsubscribePacket),
    PingReq,
    Disconnect(DisconnectPacket),
    /// Enhanced authentication is not offered; AUTH is a protocol error.
    Auth,
    Connect,
}

impl Inbound {
    pub(super) fn kind(&self) -> PacketKind {
        match self {
            Inbound::Publish(_) => PacketKind::Publish,
            Inbound::PubAck { .. } => PacketKind::PubAck,
            Inbound::PubRec { .. } => PacketKind::PubRec,
            Inbound::PubRel { .. } => PacketKind::PubRel,
            Inbound::PubComp { .. } => PacketKind::PubComp,
            Inbound::Subscribe(_) => PacketKind::Subscribe,
            Inbound::Unsubscribe(_) => PacketKind::Unsubscribe,
            Inbound::PingReq => PacketKind::PingReq,
            Inbound::Disconnect(_) => PacketKind::Disconnect,
            Inbound::Auth => PacketKind::Auth,
            Inbound::Connect => PacketKind::Connect,
        }
    }
}

/// Packet types, by name, for faults and journals.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PacketKind {
    Connect,
    Connack,
    Publish,
    #[serde(rename = "puback")]
    PubAck,
    #[serde(rename = "pubrec")]
    PubRec,
    #[serde(rename = "pubrel")]
    PubRel,
    #[serde(rename = "pubcomp")]
    PubComp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    #[serde(rename = "pingreq")]
    PingReq,
    #[serde(rename = "pingresp")]
    PingResp,
    Disconnect,
    Auth,
}

impl PacketKind {
    /// The kind of an encoded packet, from its first byte.
    pub(crate) fn of_first_byte(b: u8) -> Option<PacketKind> {
        Some(match b >> 4 {
            1 => PacketKind::Connect,
            2 => PacketKind::Connack,
            3 => PacketKind::Publish,
            4 => PacketKind::PubAck,
            5 => PacketKind::PubRec,
            6 => PacketKind::PubRel,
            7 => PacketKind::PubComp,
            8 => PacketKind::Subscribe,
            9 => PacketKind::Suback,
            10 => PacketKind::Unsubscribe,
            11 => PacketKind::Unsuback,
            12 => PacketKind::PingReq,
            13 => PacketKind::PingResp,
            14 => PacketKind::Disconnect,
            15 => PacketKind::Auth,
            _ => return None,
        })
    }
}

fn fixed(first: u8, len: usize) -> Result<FixedHeader, ProtocolError> {
    let kind = PacketType::from_u8(first >> 4)
        .ok_or_else(|| ProtocolError::malformed(format!("packet type {}", first >> 4)))?;
    Ok(FixedHeader::new(kind, first & 0x0f, len as u32))
}

/// A CONNECT, with the protocol level it asked for (3, 4 or 5).
pub(crate) fn decode_connect(frame: &Frame) -> Result<(Box<ConnectPacket>, u8), ProtocolError> {
    if frame.first != 0x10 {
        return Err(ProtocolError::new(
            rc::PROTOCOL_ERROR,
            "the first packet must be CONNECT",
        ));
    }
    let body = &frame.body;
    if body.len() < 2 {
        return Err(ProtocolError::malformed("CONNECT too short"));
    }
    let name_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let name = body.get(2..2 + name_len).unwrap_or_default();
    let level = *body.get(2 + name_len).unwrap_or(&0);
    let (bytes, version) = match (name, level) {
        (b"MQTT", V311 | V5) => (body.clone(), level),
        (b"MQIsdp", V31) => {
            // MQTT 3.1 is 3.1.1 with another protocol name and level.
            let mut b = BytesMut::with_capacity(body.len());
            b.put_u16(4);
            b.put_slice(b"MQTT");
            b.put_u8(V311);
            b.put_slice(&body[2 + name_len + 1..]);
            (b.freeze(), V31)
        }
        (b"MQTT" | b"MQIsdp", _) => {
            return Err(ProtocolError::new(
                rc::UNSUPPORTED_VERSION,
                format!("protocol level {level} is not supported (3, 4 and 5 are)"),
            ));
        }
        _ => {
            return Err(ProtocolError::new(
                rc::PROTOCOL_ERROR,
                "protocol name is not MQTT",
            ));
        }
    };
    let header = fixed(frame.first, bytes.len())?;
    let mut buf = bytes;
    match Packet::decode_from_body(PacketType::Connect, &header, &mut buf)? {
        Packet::Connect(c) => {
            if buf.has_remaining() {
                return Err(ProtocolError::malformed("bytes after the CONNECT payload"));
            }
            Ok((c, version))
        }
        _ => Err(ProtocolError::malformed("not a CONNECT")),
    }
}

/// Any packet after CONNECT.
pub(crate) fn decode(frame: Frame, version: u8) -> Result<Inbound, ProtocolError> {
    let Frame { first, body } = frame;
    let kind = first >> 4;
    let flags = first & 0x0f;
    let v5 = version == V5;
    let ack = |body: &Bytes, expected_flags: u8| -> Result<(u16, u8), ProtocolError> {
        if flags != expected_flags {
            return Err(ProtocolError::malformed(
                "reserved flags of an acknowledgement",
            ));
        }
        if body.len() < 2 {
            return Err(ProtocolError::malformed(
                "acknowledgement without packet id",
            ));
        }
        let pid = u16::from_be_bytes([body[0], body[1]]);
        let code = if v5 && body.len() > 2 { body[2] } else { 0 };
        Ok((pid, code))
    };
    Ok(match kind {
        1 => Inbound::Connect,
        3 => Inbound::Publish(decode_publish(flags, body, v5)?),
        4 => Inbound::PubAck {
            pid: ack(&body, 0)?.0,
        },
        5 => {
            let (pid, code) = ack(&body, 0)?;
            Inbound::PubRec { pid, code }
        }
        6 => Inbound::PubRel {
            pid: ack(&body, 2)?.0,
        },
        7 => Inbound::PubComp {
            pid: ack(&body, 0)?.0,
        },
        8 | 10 | 14 => {
            let header = fixed(first, body.len())?;
            let mut buf = body;
            let ptype = header.packet_type;
            if ptype != PacketType::Disconnect && without_filters(&buf, v5) {
                return Err(ProtocolError::new(
                    rc::PROTOCOL_ERROR,
                    "SUBSCRIBE or UNSUBSCRIBE without a topic filter",
                ));
            }
            let packet = if ptype == PacketType::Disconnect && !v5 {
                if !buf.is_empty() || flags != 0 {
                    return Err(ProtocolError::malformed("DISCONNECT with a body"));
                }
                Packet::Disconnect(DisconnectPacket::normal())
            } else {
                Packet::decode_from_body_with_version(ptype, &header, &mut buf, version.max(V311))?
            };
            match packet {
                Packet::Subscribe(s) => Inbound::Subscribe(s),
                Packet::Unsubscribe(u) => Inbound::Unsubscribe(u),
                Packet::Disconnect(d) => Inbound::Disconnect(d),
                _ => return Err(ProtocolError::malformed("unexpected packet")),
            }
        }
        12 => {
            if flags != 0 || !body.is_empty() {
                return Err(ProtocolError::malformed("PINGREQ with flags or a body"));
            }
            Inbound::PingReq
        }
        15 if v5 => Inbound::Auth,
        _ => {
            return Err(ProtocolError::new(
                rc::PROTOCOL_ERROR,
                format!("packet type {kind} is not sent by clients"),
            ));
        }
    })
}

fn decode_publish(flags: u8, mut body: Bytes, v5: bool) -> Result<InPublish, ProtocolError> {
    let qos = (flags >> 1) & 3;
    let dup = flags & 8 != 0;
    let retain = flags & 1 != 0;
    if qos == 3 {
        return Err(ProtocolError::malformed("PUBLISH with QoS 3"));
    }
    if qos == 0 && dup {
        return Err(ProtocolError::malformed("DUP set on a QoS 0 PUBLISH"));
    }
    if body.len() < 2 {
        return Err(ProtocolError::malformed("PUBLISH without a topic"));
    }
    let tlen = body.get_u16() as usize;
    if body.len() < tlen {
        return Err(ProtocolError::malformed(
            "PUBLISH topic longer than the packet",
        ));
    }
    let topic = body.split_to(tlen);
    if std::str::from_utf8(&topic).is_err() {
        return Err(ProtocolError::malformed("PUBLISH topic is not UTF-8"));
    }
    let pid = if qos > 0 {
        if body.len() < 2 {
            return Err(ProtocolError::malformed("PUBLISH without a packet id"));
        }
        let pid = body.get_u16();
        if pid == 0 {
            return Err(ProtocolError::malformed("packet id 0"));
        }
        pid
    } else {
        0
    };
    let mut out = InPublish {
        topic,
        pid,
        qos,
        retain,
        props: Bytes::new(),
        alias: None,
        expiry_secs: None,
        payload_utf8: false,
        payload: Bytes::new(),
    };
    if v5 {
        let plen = read_varint(&mut body)? as usize;
        if body.len() < plen {
            return Err(ProtocolError::malformed(
                "properties longer than the packet",
            ));
        }
        let raw = body.split_to(plen);
        out.props = scan_publish_props(&raw, &mut out)?;
    }
    out.payload = body;
    if out.payload_utf8 && std::str::from_utf8(&out.payload).is_err() {
        return Err(ProtocolError::new(
            rc::PAYLOAD_FORMAT_INVALID,
            "payload format indicator says UTF-8 but the payload is not",
        ));
    }
    Ok(out)
}

/// Walks PUBLISH properties: picks out alias, expiry and the payload format,
/// and answers the rest as they were sent.
fn scan_publish_props(raw: &Bytes, out: &mut InPublish) -> Result<Bytes, ProtocolError> {
    let mut keep: Option<BytesMut> = None;
    let mut i = 0;
    let mut seen_single = [false; 0x2a];
    while i < raw.len() {
        let start = i;
        let id = raw[i];
        i += 1;
        let need = |n: usize, i: usize| -> Result<(), ProtocolError> {
            if i + n > raw.len() {
                Err(ProtocolError::malformed("truncated property"))
            } else {
                Ok(())
            }
        };
        let string_len = |i: usize| -> Result<usize, ProtocolError> {
            need(2, i)?;
            let n = u16::from_be_bytes([raw[i], raw[i + 1]]) as usize;
            need(2 + n, i)?;
            Ok(2 + n)
        };
        let mut drop_it = false;
        match id {
            0x01 => {
                need(1, i)?;
                out.payload_utf8 = raw[i] == 1;
                if raw[i] > 1 {
                    return Err(ProtocolError::new(
                        rc::PROTOCOL_ERROR,
                        "payload format indicator",
                    ));
                }
                i += 1;
            }
            0x02 => {
                need(4, i)?;
                out.expiry_secs = Some(u32::from_be_bytes([
                    raw[i],
                    raw[i + 1],
                    raw[i + 2],
                    raw[i + 3],
                ]));
                i += 4;
                drop_it = true;
            }
            0x03 | 0x08 => {
                let n = string_len(i)?;
                if std::str::from_utf8(&raw[i + 2..i + n]).is_err() {
                    return Err(ProtocolError::malformed("property string is not UTF-8"));
                }
                if id == 0x08 && raw[i + 2..i + n].iter().any(|&c| c == b'+' || c == b'#') {
                    return Err(ProtocolError::new(
                        rc::PROTOCOL_ERROR,
                        "response topic with a wildcard",
                    ));
                }
                i += n;
            }
            0x09 => i += string_len(i)?,
            0x23 => {
                need(2, i)?;
                out.alias = Some(u16::from_be_bytes([raw[i], raw[i + 1]]));
                i += 2;
                drop_it = true;
            }
            0x26 => {
                let n = string_len(i)?;
                let m = string_len(i + n)?;
                i += n + m;
            }
            0x0B => {
                return Err(ProtocolError::new(
                    rc::PROTOCOL_ERROR,
                    "a client PUBLISH may not carry a subscription identifier",
                ));
            }
            other => {
                return Err(ProtocolError::new(
                    rc::PROTOCOL_ERROR,
                    format!("property 0x{other:02x} is not allowed on PUBLISH"),
                ));
            }
        }
        if id != 0x26 {
            let slot = &mut seen_single[id as usize];
            if *slot {
                return Err(ProtocolError::new(
                    rc::PROTOCOL_ERROR,
                    format!("property 0x{id:02x} given twice"),
                ));
            }
            *slot = true;
        }
        match (&mut keep, drop_it) {
            (None, true) => {
                let mut b = BytesMut::with_capacity(raw.len());
                b.put_slice(&raw[..start]);
                keep = Some(b);
            }
            (Some(b), false) => b.put_slice(&raw[start..i]),
            _ => {}
        }
    }
    Ok(match keep {
        Some(b) => b.freeze(),
        None => raw.clone(),
    })
}

/// Whether a SUBSCRIBE or UNSUBSCRIBE body ends after its packet id (and
/// properties): no topic filter. MQTT calls that a protocol error (3.8.3,
/// 3.10.3); the decoder would call it malformed, so it is caught first.
/// A body too short for the packet id or properties is left to the
/// decoder, which says what is missing.
fn without_filters(body: &Bytes, v5: bool) -> bool {
    let mut b = body.clone();
    if b.len() < 2 {
        return false;
    }
    b.advance(2);
    if v5 {
        let Ok(n) = read_varint(&mut b) else {
            return false;
        };
        if b.len() < n as usize {
            return false;
        }
        b.advance(n as usize);
    }
    b.is_empty()
}

fn read_varint(buf: &mut Bytes) -> Result<u32, ProtocolError> {
    let mut v: u32 = 0;
    for shift in [0, 7, 14, 21] {
        if buf.is_empty() {
            return Err(ProtocolError::malformed("truncated variable integer"));
        }
        let b = buf.get_u8();
        v |= u32::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtocolError::malformed("variable integer over 4 bytes"))
}

pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

/// An outgoing PUBLISH, described without copying its parts.
pub(crate) struct OutPublish<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub props: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    pub expiry_secs: Option<u32>,
    pub sub_ids: &'a [u32],
}

impl OutPublish<'_> {
    fn props_len(&self) -> usize {
        self.props.len()
            + self.expiry_secs.map_or(0, |_| 5)
            + self
                .sub_ids
                .iter()
                .map(|&id| 1 + varint_len(id as usize))
                .sum::<usize>()
    }

    fn remaining(&self, v5: bool) -> usize {
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.qos > 0 {
            n += 2;
        }
        if v5 {
            let p = self.props_len();
            n += varint_len(p) + p;
        }
        n
    }

    /// The encoded size of the whole packet.
    pub(super) fn size(&self, version: u8) -> usize {
        let r = self.remaining(version == V5);
        1 + varint_len(r) + r
    }

    pub(super) fn encode(&self, version: u8, out: &mut BytesMut) {
        let v5 = version == V5;
        let r = self.remaining(v5);
        out.reserve(1 + varint_len(r) + r);
        out.put_u8(0x30 | (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain));
        put_varint(out, r);
        out.put_u16(self.topic.len() as u16);
        out.put_slice(self.topic.as_bytes());
        if self.qos > 0 {
            out.put_u16(self.pid);
        }
        if v5 {
            put_varint(out, self.props_len());
            out.put_slice(self.props);
            if let Some(e) = self.expiry_secs {
                out.put_u8(0x02);
                out.put_u32(e);
            }
            for &id in self.sub_ids {
                out.put_u8(0x0B);
                put_varint(out, id as usize);
            }
        }
        out.put_slice(self.payload);
    }
}

/// A PUBLISH laid out once for every subscriber of one protocol version
/// and QoS class (0, or 1 and 2): the first byte says QoS 1 or 0 with
/// retain and DUP clear, and the packet id is 0. A delivery copies it and
/// sets only what is its own: QoS, retain and DUP in the first byte and
/// the packet id. Only for deliveries whose properties are the message's
/// own (no subscription identifiers, no expiry counting down).
#[derive(Debug)]
pub(crate) struct Encoded {
    bytes: Bytes,
    /// Where the packet id sits; 0 when there is none (QoS 0).
    pid_at: usize,
}

impl Encoded {
    pub(crate) fn new(
        topic: &str,
        props: &[u8],
        payload: &[u8],
        with_pid: bool,
        version: u8,
    ) -> Self {
        let p = OutPublish {
            topic,
            payload,
            props,
            qos: u8::from(with_pid),
            retain: false,
            dup: false,
            pid: 0,
            expiry_secs: None,
            sub_ids: &[],
        };
        let mut out = BytesMut::with_capacity(p.size(version));
        p.encode(version, &mut out);
        let pid_at = if with_pid {
            1 + varint_len(p.remaining(version == V5)) + 2 + topic.len()
        } else {
            0
        };
        Self {
            bytes: out.freeze(),
            pid_at,
        }
    }

    /// Appends the packet for one delivery: `qos` must be of this
    /// encoding's class.
    pub(crate) fn put(&self, qos: u8, retain: bool, dup: bool, pid: u16, out: &mut BytesMut) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        out[start] = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
        if self.pid_at > 0 {
            out[start + self.pid_at..start + self.pid_at + 2].copy_from_slice(&pid.to_be_bytes());
        }
    }
}

/// PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7).
pub(crate) fn encode_ack(out: &mut BytesMut, kind: u8, pid: u16, code: u8, version: u8) {
    let flags = if kind == 6 { 2 } else { 0 };
    out.put_u8((kind << 4) | flags);
    if version == V5 && code != rc::SUCCESS {
        out.put_u8(3);
        out.put_u16(pid);
        out.put_u8(code);
    } else {
        out.put_u8(2);
        out.put_u16(pid);
    }
}

pub(crate) fn encode_pingresp(out: &mut BytesMut) {
    out.put_slice(&[0xd0, 0]);
}

/// Any packet the crate encodes (CONNACK, SUBACK, UNSUBACK, DISCONNECT).
pub(crate) fn encode_packet(out: &mut BytesMut, packet: &impl MqttPacket) {
    if let Err(e) = packet.encode(out) {
        tracing::warn!(error = %e, "could not encode a control packet");
    }
}

/// The MQTT 5 properties of a server publish, in the wire form a
/// message's `props` holds: a content type (0x03) and user properties
/// (0x26), in order. A string too long for the protocol's u16 length is
/// left out with its property.
pub(crate) fn publish_props(content_type: Option<&str>, user: &[(String, String)]) -> Bytes {
    let fits = |s: &str| s.len() <= usize::from(u16::MAX);
    let put = |out: &mut BytesMut, s: &str| {
        out.put_u16(s.len() as u16);
        out.put_slice(s.as_bytes());
    };
    let mut out = BytesMut::new();
    if let Some(ct) = content_type.filter(|ct| fits(ct)) {
        out.put_u8(0x03);
        put(&mut out, ct);
    }
    for (key, value) in user.iter().filter(|(k, v)| fits(k) && fits(v)) {
        out.put_u8(0x26);
        put(&mut out, key);
        put(&mut out, value);
    }
    out.freeze()
}

/// DISCONNECT with a reason code (MQTT 5 only; 3.1.1 servers never send one).
pub(crate) fn encode_disconnect(out: &mut BytesMut, code: u8, reason: Option<&str>) {
    let mut d = DisconnectPacket::new(
        mqtt5_protocol::ReasonCode::from_u8(code)
            .unwrap_or(mqtt5_protocol::ReasonCode::UnspecifiedError),
    );
    if let Some(r) = reason {
        d = d.with_reason_string(r.to_string());
    }
    encode_packet(out, &d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trip_keeps_user_properties_in_order_and_drops_alias() {
        let mut props = BytesMut::new();
        // user property a=1, topic alias 3, user property b=2
        props.put_u8(0x26);
        props.put_u16(1);
        props.put_slice(b"a");
        props.put_u16(1);
        props.put_slice(b"1");
        props.put_u8(0x23);
        props.put_u16(3);
        props.put_u8(0x26);
        props.put_u16(1);
        props.put_slice(b"b");
        props.put_u16(1);
        props.put_slice(b"2");
        let mut body = BytesMut::new();
        body.put_u16(3);
        body.put_slice(b"a/b");
        body.put_u16(7);
        put_varint(&mut body, props.len());
        body.put_slice(&props);
        body.put_slice(b"hello");
        let p = decode_publish(0b0010, body.freeze(), true).unwrap();
        assert_eq!(p.alias, Some(3));
        assert_eq!(p.pid, 7);
        assert_eq!(&p.payload[..], b"hello");
        let mut expected = BytesMut::new();
        expected.put_slice(&props[..7]);
        expected.put_slice(&props[10..]);
        assert_eq!(&p.props[..], &expected[..]);

        let out = OutPublish {
            topic: "a/b",
            payload: &p.payload,
            props: &p.props,
            qos: 1,
            retain: false,
            dup: false,
            pid: 9,
            expiry_secs: Some(5),
            sub_ids: &[300],
        };
        let mut enc = BytesMut::new();
        out.encode(V5, &mut enc);
        assert_eq!(enc.len(), out.size(V5));
        let frame = split(&mut enc, 1 << 20).unwrap().unwrap();
        let back = decode_publish(frame.first & 0x0f, frame.body, true);
        // A subscription identifier is refused from clients, which proves
        // it was encoded; the rest of the packet parsed up to it.
        assert_eq!(back.unwrap_err().code, rc::PROTOCOL_ERROR);
    }

    #[test]
    fn split_waits_for_whole_packets_and_refuses_large_ones() {
        let mut b = BytesMut::from(&[0x30u8, 0x05, 0, 1][..]);
        assert!(split(&mut b, 100).unwrap().is_none());
        b.put_slice(&[b'a', b'x', b'y', 0x30]);
        let f = split(&mut b, 100).unwrap().unwrap();
        assert_eq!(f.body.len(), 5);
        assert_eq!(b.len(), 1);
        let mut big = BytesMut::from(&[0x30u8, 0xff, 0x7f][..]);
        assert_eq!(
            split(&mut big, 1000).unwrap_err().code,
            rc::PACKET_TOO_LARGE
        );
    }

    #[test]
    fn mqtt_3_1_connect_reads_as_3_1_1() {
        let mut body = BytesMut::new();
        body.put_u16(6);
        body.put_slice(b"MQIsdp");
        body.put_u8(3);
        body.put_u8(0x02);
        body.put_u16(30);
        body.put_u16(3);
        body.put_slice(b"abc");
        let frame = Frame {
            first: 0x10,
            body: body.freeze(),
        };
        let (c, v) = decode_connect(&frame).unwrap();
        assert_eq!(v, V31);
        assert_eq!(c.client_id, "abc");
        assert!(c.clean_start);
    }
}
