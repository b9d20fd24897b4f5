//! MQTT written byte by byte, for tests that must say exactly what goes on
//! the wire (reserved flags, properties, malformed packets): packet
//! builders and a raw client over TCP that reads whole packets back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

pub fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Properties: a length and the bytes.
pub fn props(p: &[u8], out: &mut Vec<u8>) {
    varint(p.len(), out);
    out.extend_from_slice(p);
}

pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub delay_secs: Option<u32>,
    /// More will properties (MQTT 5), after the delay.
    pub props: &'a [u8],
}

/// CONNECT for `level` (3, 4 or 5). `conn_props` only for 5.
pub fn connect(
    level: u8,
    id: &str,
    clean: bool,
    keep_alive: u16,
    conn_props: &[u8],
    will: Option<&Will>,
) -> Vec<u8> {
    let mut b = Vec::new();
    if level == 3 {
        string(b"MQIsdp", &mut b);
    } else {
        string(b"MQTT", &mut b);
    }
    b.push(level);
    let mut flags = if clean { 0x02 } else { 0 };
    if let Some(w) = will {
        flags |= 0x04 | (w.qos << 3);
    }
    b.push(flags);
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        props(conn_props, &mut b);
    }
    string(id.as_bytes(), &mut b);
    if let Some(w) = will {
        if level == 5 {
            let mut wp = Vec::new();
            if let Some(d) = w.delay_secs {
                wp.push(0x18);
                wp.extend_from_slice(&d.to_be_bytes());
            }
            wp.extend_from_slice(w.props);
            props(&wp, &mut b);
        }
        string(w.topic.as_bytes(), &mut b);
        string(w.payload, &mut b);
    }
    packet(0x10, &b)
}

/// A clean-start CONNECT for `level` (4 or 5) with a user name and a
/// password (no keep alive, no will).
pub fn connect_as(level: u8, id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut b = Vec::new();
    string(b"MQTT", &mut b);
    b.push(level);
    b.push(0xc2); // user name, password, clean start
    b.extend_from_slice(&0u16.to_be_bytes());
    if level == 5 {
        props(&[], &mut b);
    }
    string(id.as_bytes(), &mut b);
    string(user.as_bytes(), &mut b);
    string(password.as_bytes(), &mut b);
    packet(0x10, &b)
}

pub fn subscribe(level: u8, pid: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if level == 5 {
        props(&[], &mut b);
    }
    string(filter.as_bytes(), &mut b);
    b.push(options);
    packet(0x82, &b)
}

/// UNSUBSCRIBE of `filters`.
pub fn unsubscribe(level: u8, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if level == 5 {
        props(&[], &mut b);
    }
    for f in filters {
        string(f.as_bytes(), &mut b);
    }
    packet(0xa2, &b)
}

pub fn publish(level: u8, topic: &str, qos: u8, pid: u16, p: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    string(topic.as_bytes(), &mut b);
    if qos > 0 {
        b.extend_from_slice(&pid.to_be_bytes());
    }
    if level == 5 {
        props(p, &mut b);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

pub fn user_property(k: &str, v: &str, out: &mut Vec<u8>) {
    out.push(0x26);
    string(k.as_bytes(), out);
    string(v.as_bytes(), out);
}

pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub async fn open(addr: SocketAddr, connect: &[u8]) -> (Self, Vec<u8>) {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw { s, buf: Vec::new() };
        raw.send(connect).await;
        let connack = raw.packet().await.expect("a CONNACK");
        assert_eq!(connack.0, 0x20, "CONNACK expected, got {connack:?}");
        (raw, connack.1)
    }

    /// A clean-start client `id` (no keep alive) subscribed to `filter`
    /// with `options`, its SUBACK read.
    pub async fn subscribed(
        addr: SocketAddr,
        level: u8,
        id: &str,
        filter: &str,
        options: u8,
    ) -> Self {
        let (mut raw, _) = Self::open(addr, &connect(level, id, true, 0, &[], None)).await;
        raw.send(&subscribe(level, 1, filter, options)).await;
        suback(&mut raw).await;
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next packet (first byte, body) or `None` at EOF.
    pub async fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        self.packet_within(WAIT)
            .await
            .expect("a packet or EOF in time")
    }

    pub async fn packet_within(&mut self, within: Duration) -> Result<Option<(u8, Vec<u8>)>, ()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((len, n)) = self.buf.get(1..).and_then(varint_at)
                && self.buf.len() >= 1 + n + len
            {
                let i = 1 + n;
                let first = self.buf[0];
                let body = self.buf[i..i + len].to_vec();
                self.buf.drain(..i + len);
                return Ok(Some((first, body)));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next PUBLISH: (topic, properties, payload).
    pub async fn publish(&mut self, level: u8) -> (String, Vec<u8>, Vec<u8>) {
        let p = self.publish_parts(level).await;
        (p.topic, p.props, p.payload)
    }

    /// The next PUBLISH, taken apart.
    pub async fn publish_parts(&mut self, level: u8) -> Parts {
        loop {
            let (first, body) = self.packet().await.expect("a PUBLISH before EOF");
            if first >> 4 != 3 {
                continue;
            }
            let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
            let topic = String::from_utf8(body[2..2 + tl].to_vec()).unwrap();
            let mut i = 2 + tl;
            let pid = ((first >> 1) & 3 > 0).then(|| {
                i += 2;
                u16::from_be_bytes([body[i - 2], body[i - 1]])
            });
            let mut props = Vec::new();
            if level == 5 {
                let (len, n) = varint_at(&body[i..]).expect("a property length");
                i += n;
                props = body[i..i + len].to_vec();
                i += len;
            }
            return Parts {
                first,
                topic,
                pid,
                props,
                payload: body[i..].to_vec(),
            };
        }
    }

    /// Nothing arrives within `quiet`.
    pub async fn silent(&mut self, quiet: Duration) {
        if let Ok(p) = self.packet_within(quiet).await {
            panic!("expected nothing, got {p:?}");
        }
    }
}

/// A PUBLISH taken apart.
pub struct Parts {
    /// The first byte: type, DUP, QoS and retain.
    pub first: u8,
    pub topic: String,
    /// The packet id (QoS 1 and 2).
    pub pid: Option<u16>,
    /// The properties, as bytes (MQTT 5).
    pub props: Vec<u8>,
    pub payload: Vec<u8>,
}

pub async fn suback(raw: &mut Raw) {
    let (first, _) = raw.packet().await.expect("SUBACK");
    assert_eq!(first, 0x90);
}

/// MQTT 5 properties, split: (identifier, value bytes), in order.
pub fn properties(mut p: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&id, rest)) = p.split_first() {
        let str_len = |at: usize| 2 + usize::from(u16::from_be_bytes([rest[at], rest[at + 1]]));
        let len = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0b => rest.iter().position(|b| b & 0x80 == 0).expect("a varint") + 1,
            0x26 => str_len(0) + str_len(str_len(0)),
            _ => str_len(0),
        };
        out.push((id, &rest[..len]));
        p = &rest[len..];
    }
    out
}

/// The two-byte property `id` (Server Keep Alive 0x13, Topic Alias 0x23,
/// ...), if present.
pub fn prop_u16(p: &[u8], id: u8) -> Option<u16> {
    properties(p)
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]))
}

/// The properties of an MQTT 5 CONNACK body.
pub fn connack_props(body: &[u8]) -> &[u8] {
    let (len, n) = varint_at(&body[2..]).expect("a property length");
    &body[2 + n..2 + n + len]
}

/// The variable byte integer at the start of `buf`: (value, its length),
/// or `None` when it is not all there (or runs past 4 bytes).
pub fn varint_at(buf: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        v |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}
