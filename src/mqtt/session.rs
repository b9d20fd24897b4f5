//! Sessions: what the broker keeps for one client id between and during
//! its connections. Subscriptions, the queue of messages waiting to be
//! sent, the in-flight window (QoS 1/2 messages sent and not yet
//! acknowledged), the QoS 2 packet ids received and not yet released, the
//! will, and the counters of what was dropped and why.
//!
//! Plain data: the engine's core holds every session under its lock, and
//! the connection task of a session's client pulls from it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;

use super::codec::{Encoded, V5};
use super::tree::SubOpts;

/// A message the broker accepted, shared by every delivery of it.
#[derive(Debug)]
pub(crate) struct Msg {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// MQTT 5 properties as the publisher sent them, without topic alias
    /// and message expiry.
    pub props: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// Simulated time (ms) after which it is no longer delivered.
    pub expires_at: Option<i64>,
    /// The publishing client (for no-local); `None` for the server.
    pub from: Option<Arc<str>>,
    /// The one device it is for, when its topic does not say so: only
    /// that device's sessions get it (see [`Addressee`]).
    pub to: Option<Arc<Addressee>>,
    pub encoded: Encodings,
}

/// The device a server message is addressed to. Topics shared by every
/// device (ThingsBoard's `v1/devices/me/...`) cannot tell devices apart,
/// so the broker delivers such a message only to a session whose client
/// id or user name is the device's id or its MQTT user name, as a
/// platform that routes per connection would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addressee {
    pub id: Arc<str>,
    pub user: Arc<str>,
}

impl Addressee {
    /// The addressee of a message for device `id` (MQTT user name
    /// `user`) on `topic`: none when a topic level names the device, so
    /// that anyone subscribed to the topic (an observer on
    /// `devices/+/commands/+`) gets it as any message.
    pub(crate) fn for_topic(id: &str, user: &str, topic: &str) -> Option<Self> {
        let named = topic.split('/').any(|level| level == id || level == user);
        (!named).then(|| Self {
            id: id.into(),
            user: user.into(),
        })
    }

    /// Whether the session of `client_id`, logged in as `user`, is the
    /// device's.
    pub(crate) fn is(&self, client_id: &str, user: Option<&str>) -> bool {
        let mine = |name: &str| name == &*self.id || name == &*self.user;
        mine(client_id) || user.is_some_and(mine)
    }
}

/// A message's PUBLISH packets, laid out once per (protocol version, QoS
/// class) and shared by every subscriber that gets one. Made only for a
/// message with more than one delivery (routed to several clients, or
/// retained): a message for a single subscriber is written straight into
/// that connection's buffer and costs nothing here.
#[derive(Debug, Default)]
pub(crate) struct Encodings(OnceLock<Box<[OnceLock<Encoded>; 4]>>);

impl Msg {
    /// Bytes the message holds, for byte budgets.
    pub(super) fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + self.props.len() + 64
    }

    pub(super) fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left, rounded up, for the Message Expiry Interval sent on.
    pub(super) fn expiry_left(&self, now: i64) -> Option<u32> {
        self.expires_at
            .map(|t| ((t - now).max(0) as u64).div_ceil(1000) as u32)
    }

    /// From now on its packets are laid out once and shared.
    pub(crate) fn share_encodings(&self) {
        self.encoded.0.get_or_init(Box::default);
    }

    /// The shared packet for `version` and `qos`, when the message shares
    /// its encodings and its properties are the same for every subscriber
    /// (no expiry counting down; subscription identifiers are the
    /// caller's to rule out).
    pub(crate) fn shared_packet(&self, version: u8, qos: u8) -> Option<&Encoded> {
        if self.expires_at.is_some() {
            return None;
        }
        let slots = self.encoded.0.get()?;
        let slot = usize::from(version == V5) * 2 + usize::from(qos > 0);
        Some(slots[slot].get_or_init(|| {
            Encoded::new(&self.topic, &self.props, &self.payload, qos > 0, version)
        }))
    }
}

/// One message on its way to one client.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Order within its session (set when queued), the key of its stored
    /// copy.
    pub seq: u64,
    pub msg: Arc<Msg>,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Option<Box<[u32]>>,
}

/// A QoS 1/2 delivery sent and not yet finished.
#[derive(Debug, Clone)]
pub(crate) enum Flight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Delivery),
    /// PUBREL sent; waiting for PUBCOMP. Holds the delivery's `seq`.
    Released(u64),
}

/// The control block of one live connection, shared between the
/// connection's task and the core (which wakes it and may close it).
#[derive(Debug, Default)]
pub(crate) struct ConnCtl {
    pub id: u64,
    pub wake: Notify,
    /// 0: open; else the reason code to close with (0x8E taken over,
    /// 0x8B shutting down, ...).
    pub close: AtomicU8,
    /// The newest delivery (session `seq`) taken from the queue to be
    /// written; set under the core's lock.
    pub pulled_upto: AtomicU64,
    /// The newest delivery whose PUBLISH the socket has taken.
    pub written_upto: AtomicU64,
    /// Set while a publisher waits for this connection's queue to drain
    /// ([`ConnCtl::drained`]).
    pub watched: AtomicBool,
    /// Notified when the queue fell below [`super::engine::DRAINED`] while
    /// watched.
    pub drained: Notify,
    /// How full the session's queue is, in thousandths of its count or
    /// byte budget (whichever is fuller), as of the last route or pull.
    pub fill: AtomicUsize,
    /// Bytes the socket has taken, counted as each write call returns.
    pub written_bytes: AtomicU64,
    /// `written_bytes` when a publisher last found this connection not
    /// draining; publishers do not wait for it again until it writes.
    pub stalled_at: AtomicU64,
    /// A fault rule delayed or throttled its last writes: a slow link
    /// staged for this client alone, so no publisher waits for it.
    pub slowed_by_fault: AtomicBool,
}

impl ConnCtl {
    pub(super) fn close_with(&self, code: u8) {
        self.close.store(code, Ordering::Relaxed);
        self.wake.notify_one();
    }
    /// A publisher found it not draining, and it has written nothing
    /// since.
    pub(super) fn stalled(&self) -> bool {
        self.stalled_at.load(Ordering::Relaxed) == self.written_bytes.load(Ordering::Relaxed)
    }
    /// Publishers do not wait for it: it stopped reading, or a fault
    /// rule slows it.
    pub(super) fn holds_no_one(&self) -> bool {
        self.stalled() || self.slowed_by_fault.load(Ordering::Relaxed)
    }
    pub(super) fn closing(&self) -> Option<u8> {
        match self.close.load(Ordering::Relaxed) {
            0 => None,
            c => Some(c),
        }
    }
}

/// A connected client as its session sees it.
#[derive(Debug)]
pub(crate) struct Link {
    pub ctl: Arc<ConnCtl>,
    /// How many QoS 1/2 messages may be in flight to it.
    pub window: u16,
    /// The largest packet it accepts.
    pub max_packet: usize,
}

/// The will of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub msg: Arc<Msg>,
    pub delay_secs: u32,
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SessionCounters {
    /// Messages sent to the client (PUBLISH packets, first sends).
    pub sent: u64,
    /// Messages dropped because the session's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because they expired before they could be sent.
    pub dropped_expired: u64,
    /// Messages skipped because they were larger than the client's
    /// Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Messages dropped by a packet fault rule.
    pub dropped_fault: u64,
}

impl SessionCounters {
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_expired + self.dropped_too_large + self.dropped_fault
    }
}

/// Session Expiry Interval meaning "never".
pub(crate) const NEVER: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub version: u8,
    /// Filter as the client gave it → options.
    pub subs: BTreeMap<String, SubOpts>,
    /// Seconds the session outlives its connection; [`NEVER`] for ever.
    pub expiry_secs: u32,
    pub link: Option<Link>,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// In send order.
    pub inflight: VecDeque<(u16, Flight)>,
    pub next_pid: u16,
    pub next_seq: u64,
    /// Inbound QoS 2 packet ids: PUBREC sent, PUBREL not yet received.
    pub awaiting_rel: HashSet<u16>,
    pub will: Option<Will>,
    /// Set when a connection resumed this session: in-flight messages are
    /// sent again (DUP) before anything new.
    pub resend: bool,
    /// Bumped at each connect and disconnect, so that a timer set for an
    /// older state does nothing.
    pub generation: u64,
    pub counters: SessionCounters,
    pub connected_at_ms: i64,
    pub clean_start: bool,
}

/// What happened to a message offered to a session.
pub(crate) enum Enqueued {
    Queued,
    /// Queued, and the oldest waiting message was dropped for room.
    QueuedDroppedOldest(Delivery),
    /// Not queued: QoS 0 at a full queue.
    Dropped,
}

impl Session {
    pub(super) fn new(client_id: Arc<str>, version: u8) -> Self {
        Self {
            client_id,
            user: None,
            version,
            subs: BTreeMap::new(),
            expiry_secs: 0,
            link: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_pid: 0,
            next_seq: 0,
            awaiting_rel: HashSet::new(),
            will: None,
            resend: false,
            generation: 0,
            counters: SessionCounters::default(),
            connected_at_ms: 0,
            clean_start: true,
        }
    }

    /// Whether it survives its client going away.
    pub(super) fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Queues a delivery within `max_count` messages and `max_bytes`
    /// bytes: a QoS 0 message that does not fit is dropped, a QoS 1/2
    /// message makes room by dropping the oldest waiting one.
    pub(super) fn enqueue(
        &mut self,
        mut d: Delivery,
        max_count: usize,
        max_bytes: usize,
    ) -> Enqueued {
        self.next_seq += 1;
        d.seq = self.next_seq;
        let w = d.msg.weight();
        let full = self.queue.len() >= max_count || self.queued_bytes + w > max_bytes;
        if full && d.qos == 0 {
            self.counters.dropped_queue_full += 1;
            return Enqueued::Dropped;
        }
        let mut dropped = None;
        if full && let Some(old) = self.queue.pop_front() {
            self.queued_bytes -= old.msg.weight();
            self.counters.dropped_queue_full += 1;
            dropped = Some(old);
        }
        self.queued_bytes += w;
        self.queue.push_back(d);
        match dropped {
            Some(old) => Enqueued::QueuedDroppedOldest(old),
            None => Enqueued::Queued,
        }
    }

    /// How full the queue is, in thousandths of `max_count` or
    /// `max_bytes`, whichever is fuller.
    pub(super) fn fill(&self, max_count: usize, max_bytes: usize) -> usize {
        let by_count = self.queue.len() * 1000 / max_count.max(1);
        let by_bytes = self.queued_bytes * 1000 / max_bytes.max(1);
        by_count.max(by_bytes)
    }

    pub(super) fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.msg.weight();
        Some(d)
    }

    /// A packet id not in flight.
    pub(super) fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid == 0 {
                continue;
            }
            let pid = self.next_pid;
            if !self.inflight.iter().any(|(p, _)| *p == pid) {
                return pid;
            }
        }
    }

    pub(super) fn inflight_position(&self, pid: u16) -> Option<usize> {
        self.inflight.iter().position(|(p, _)| *p == pid)
    }

    pub(super) fn is_link(&self, ctl: &ConnCtl) -> bool {
        self.link.as_ref().is_some_and(|l| l.ctl.id == ctl.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_that_names_the_device_is_not_addressed() {
        for topic in ["devices/d-1/commands/7", "cmd/tok", "spBv1.0/g/DCMD/n/d-1"] {
            assert_eq!(Addressee::for_topic("d-1", "tok", topic), None, "{topic}");
        }
        // A level that only contains the id does not name it.
        assert!(Addressee::for_topic("d-1", "tok", "devices/d-10/x").is_some());
    }
}
