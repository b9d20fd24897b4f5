//! Topic aliases the broker sets on what it sends one MQTT 5 client
//! (`--mqtt-server-topic-aliases`): the first PUBLISH on a topic carries
//! the topic and a new alias, the ones after it the alias and an empty
//! topic (MQTT-3.3.2-12). They are applied last, to the packets in the
//! order the socket gets them, so fault rules see whole topics and a
//! dropped or reordered packet never leaves the client an alias it was
//! not told.

use std::collections::{BTreeMap, HashMap};

use bytes::{BufMut, BytesMut};

use super::codec;

/// Topic Alias (MQTT 5 property 0x23).
const TOPIC_ALIAS: u8 = 0x23;

/// One connection's aliases, at most `capacity`; when all are taken the
/// least recently used one is given to the new topic.
#[derive(Debug)]
pub(crate) struct OutAliases {
    by_topic: HashMap<Box<[u8]>, u16>,
    /// Alias `n` is `slots[n - 1]`: its topic and when it was last used.
    slots: Vec<(Box<[u8]>, u64)>,
    /// Aliases by when they were last used, the least recent first: a
    /// new topic takes the first in O(log n), whatever the capacity.
    by_use: BTreeMap<u64, u16>,
    capacity: u16,
    tick: u64,
    /// The client's Maximum Packet Size: a PUBLISH an alias would push
    /// past it goes as it is.
    max_packet: usize,
}

impl OutAliases {
    /// `None` unless both the broker and the client allow aliases.
    pub(crate) fn new(broker: u16, client: u16, max_packet: usize) -> Option<Self> {
        let capacity = broker.min(client);
        (capacity > 0).then(|| Self {
            by_topic: HashMap::new(),
            slots: Vec::new(),
            by_use: BTreeMap::new(),
            capacity,
            tick: 0,
            max_packet,
        })
    }

    /// Appends the whole packets in `out` to `dst`, each PUBLISH with an
    /// alias.
    pub(crate) fn put_all(&mut self, mut out: &[u8], dst: &mut BytesMut) {
        while let Ok(Some((header, body))) = codec::fixed_header(out) {
            let Some(pkt) = out.get(..header + body) else {
                break;
            };
            self.put(pkt, dst);
            out = &out[pkt.len()..];
        }
        // The engine writes whole packets; anything else goes as it is.
        dst.put_slice(out);
    }

    /// Appends one whole packet to `dst`: a PUBLISH with an alias (and
    /// without its topic once the client knows the alias); anything
    /// else as it is.
    pub(crate) fn put(&mut self, pkt: &[u8], dst: &mut BytesMut) {
        match Publish::parse(pkt) {
            Some(p) => self.put_publish(pkt, &p, dst),
            None => dst.put_slice(pkt),
        }
    }

    fn put_publish(&mut self, pkt: &[u8], p: &Publish<'_>, dst: &mut BytesMut) {
        let known = self.by_topic.get(p.topic).copied();
        let topic: &[u8] = if known.is_some() { &[] } else { p.topic };
        let props_len = p.props.len() + 3;
        let body = 2
            + topic.len()
            + p.packet_id.len()
            + codec::varint_len(props_len)
            + props_len
            + p.payload.len();
        if 1 + codec::varint_len(body) + body > self.max_packet {
            dst.put_slice(pkt);
            return;
        }
        let alias = match known {
            Some(a) => a,
            None => self.assign(p.topic),
        };
        self.tick += 1;
        let used = &mut self.slots[usize::from(alias) - 1].1;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, alias);
        dst.reserve(1 + 4 + body);
        dst.put_u8(pkt[0]);
        codec::put_varint(dst, body);
        dst.put_u16(topic.len() as u16);
        dst.put_slice(topic);
        dst.put_slice(p.packet_id);
        codec::put_varint(dst, props_len);
        dst.put_slice(p.props);
        dst.put_u8(TOPIC_ALIAS);
        dst.put_u16(alias);
        dst.put_slice(p.payload);
    }

    /// A free alias for `topic`, or the least recently used one.
    fn assign(&mut self, topic: &[u8]) -> u16 {
        let alias = if self.slots.len() < usize::from(self.capacity) {
            self.slots.push((topic.into(), 0));
            self.slots.len() as u16
        } else {
            let (_, alias) = self.by_use.pop_first().expect("capacity > 0");
            let slot = &mut self.slots[usize::from(alias) - 1];
            let old = std::mem::replace(&mut slot.0, topic.into());
            self.by_topic.remove(&old);
            alias
        };
        self.by_topic.insert(topic.into(), alias);
        alias
    }
}

/// The parts of an MQTT 5 PUBLISH the engine encoded.
struct Publish<'a> {
    topic: &'a [u8],
    packet_id: &'a [u8],
    props: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Publish<'a> {
    fn parse(pkt: &'a [u8]) -> Option<Self> {
        if pkt.first()? >> 4 != 3 {
            return None;
        }
        let (header, _) = codec::fixed_header(pkt).ok()??;
        let body = pkt.get(header..)?;
        let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let mut i = 2 + topic_len;
        let topic = body.get(2..i)?;
        let id_len = if (pkt[0] >> 1) & 3 > 0 { 2 } else { 0 };
        let packet_id = body.get(i..i + id_len)?;
        i += id_len;
        let (props_len, n) = codec::varint_at(body.get(i..)?).ok()??;
        i += n;
        let props = body.get(i..i + props_len)?;
        Some(Self {
            topic,
            packet_id,
            props,
            payload: body.get(i + props_len..)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u16(topic.len() as u16);
        body.put_slice(topic.as_bytes());
        if qos > 0 {
            body.put_u16(7);
        }
        body.put_u8(0);
        body.put_slice(payload);
        let mut pkt = BytesMut::new();
        pkt.put_u8(0x30 | (qos << 1));
        codec::put_varint(&mut pkt, body.len());
        pkt.put_slice(&body);
        pkt.to_vec()
    }

    /// (topic, alias) of each PUBLISH in `out`.
    fn sent(out: &[u8]) -> Vec<(String, u16)> {
        let mut rest = out;
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let (h, b) = codec::fixed_header(rest).unwrap().unwrap();
            let p = Publish::parse(&rest[..h + b]).unwrap();
            assert_eq!(p.props[0], TOPIC_ALIAS);
            let alias = u16::from_be_bytes([p.props[1], p.props[2]]);
            seen.push((String::from_utf8(p.topic.to_vec()).unwrap(), alias));
            rest = &rest[h + b..];
        }
        seen
    }

    #[test]
    fn a_topic_is_sent_once_then_its_alias_and_the_least_recently_used_is_reassigned() {
        let mut a = OutAliases::new(2, 10, usize::MAX).unwrap();
        let mut out = Vec::new();
        for (t, q) in [("a", 0), ("a", 1), ("b", 2), ("a", 0), ("c", 1), ("b", 0)] {
            out.extend(publish(t, q, b"x"));
        }
        let mut dst = BytesMut::new();
        a.put_all(&out, &mut dst);
        assert_eq!(
            sent(&dst),
            [
                ("a".into(), 1),
                ("".into(), 1),
                ("b".into(), 2),
                ("".into(), 1),
                // b was used less recently than a: c takes its alias,
                ("c".into(), 2),
                // and b, sent again, takes a's.
                ("b".into(), 1),
            ]
        );
    }

    #[test]
    fn no_alias_without_both_sides_or_past_the_clients_maximum_packet_size() {
        assert!(OutAliases::new(0, 10, usize::MAX).is_none());
        assert!(OutAliases::new(10, 0, usize::MAX).is_none());
        let pkt = publish("t", 0, b"x");
        let mut a = OutAliases::new(1, 1, pkt.len()).unwrap();
        let mut dst = BytesMut::new();
        a.put(&pkt, &mut dst);
        assert_eq!(&dst[..], &pkt[..], "3 bytes more would not fit");
        assert!(a.by_topic.is_empty(), "and no alias was promised");
        let ping = [0xd0, 0];
        dst.clear();
        a.put(&ping, &mut dst);
        assert_eq!(&dst[..], &ping);
    }
}
