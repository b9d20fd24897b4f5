//! The MQTT side: an embedded broker (our own engine) behind a small
//! facade. The rest of the server publishes through [`MqttHandle`] and
//! never sees an engine type.
//!
//! It owns the listener, the broker's limits, the in-process publishing
//! link, the message journal, the list of connected clients, the auth hook
//! and outages on purpose. It does not decide what is published
//! (telemetry, commands and edge nodes do) and keeps no device state.
//!
//! The engine's rooms:
//! - `codec.rs`: packets on the wire, through the `mqtt5-protocol` codec;
//! - `conn.rs`: the listener and one task per connection;
//! - `engine.rs`: the core: routing, acknowledgements, timers on the
//!   server's clock;
//! - `session.rs`: per-client state: subscriptions, queue, in flight;
//! - `tree.rs`: the subscription tree that topics are matched through;
//! - `store.rs`: sessions and retained messages in SQLite (`--data-dir`);
//! - `faults.rs`: packet-level faults on purpose, seeded;
//! - `aliases.rs`: topic aliases the broker sets on what it sends;
//! - `journal.rs`: every message accepted, for `verify` and the API;
//! - `observed.rs`: what the rest of the server hears (connects, drops);
//! - `auth.rs`: who may connect, publish and subscribe;
//! - `topics.rs`: the topics iotmock itself uses.

mod aliases;
mod auth;
mod codec;
mod conn;
mod engine;
pub(crate) mod faults;
mod journal;
mod observed;
mod session;
mod store;
pub(crate) mod topics;
mod tree;

/// A hash map keyed by what clients choose (client ids, topic levels):
/// foldhash is several times faster than SipHash on short keys and is
/// seeded per process.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::time::Instant;

pub use auth::{AuthDecision, Authorizer, PeerCert};
pub(crate) use engine::DropEvent;
pub use engine::PendingDelivery;
pub(crate) use journal::{Entry, JournalStats, Origin, Page};
pub(crate) use observed::{Subscribed, Tapped};
pub(crate) use session::{Addressee, SessionCounters};

use crate::clock::{Clock, rfc3339_ms, wall_ms};
use crate::verify::{Expect, Verdict, json_contains};
use engine::Engine;
use observed::Observed;

/// The largest packet MQTT can express: the ceiling of
/// `--mqtt-max-packet-size`.
pub(crate) const MAX_PACKET_SIZE: usize = 268_435_455;

/// The largest packet the broker accepts (and advertises in CONNACK) by
/// default: room for a firmware image, far from the protocol's 256 MiB.
pub(crate) const DEFAULT_MAX_PACKET_SIZE: usize = 16 << 20;

/// The smallest `--mqtt-max-packet-size` that still admits a CONNECT
/// with a long client id, credentials and a will.
pub(crate) const MIN_MAX_PACKET_SIZE: usize = 1024;

/// Messages queued per session by default (QoS 1/2, client away or behind).
pub(crate) const DEFAULT_MAX_QUEUED: usize = 10_000;
/// Bytes queued per session by default.
pub(crate) const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;

/// Topic aliases a client may set (client to server).
pub(crate) const TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// Default capacity of the message journal.
pub(crate) const DEFAULT_JOURNAL_CAPACITY: usize = 100_000;
/// Default byte budget of the message journal (payloads, topics and
/// bookkeeping).
pub(crate) const DEFAULT_JOURNAL_MAX_BYTES: usize = 128 << 20;

/// Default number of in-process QoS>0 or retained publishes held during an
/// outage.
pub(crate) const DEFAULT_OUTAGE_BUFFER: usize = 10_000;

/// Broker limits, stated so that nothing is dropped without a number.
#[derive(Clone)]
pub struct MqttConfig {
    /// Where the broker listens; port 0 picks a free port.
    pub addr: SocketAddr,
    /// QoS 1/2 messages queued per session while its client is away or
    /// behind; beyond it the oldest is dropped.
    pub max_queued_per_session: usize,
    /// Bytes queued per session, with the same policy.
    pub max_queued_bytes_per_session: usize,
    /// QoS 1/2 messages in flight to one client before the rest queue.
    pub max_inflight: u16,
    /// Clients connected at once; one more is refused.
    pub max_clients: usize,
    /// The largest packet a client may send (advertised in CONNACK as
    /// Maximum Packet Size); a larger one closes the connection with
    /// DISCONNECT 0x95 (MQTT 5) and is counted.
    pub max_packet_size: usize,
    /// Messages kept in the journal; beyond it the oldest is evicted and
    /// counted.
    pub journal_capacity: usize,
    /// Bytes kept in the journal, with the same policy.
    pub journal_max_bytes: usize,
    /// In-process publishes held while the broker is down on purpose.
    pub outage_buffer: usize,
    /// Where sessions, queues and retained messages are stored (SQLite,
    /// `broker.db`), surviving a restart of the process. `None`: in memory, surviving
    /// outages but not the process.
    pub storage_dir: Option<PathBuf>,
    /// Who may connect, publish, subscribe; `None` allows everything.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Seeds the fault rules' random draws.
    pub seed: u64,
    /// The longest Keep Alive a client may use, in seconds: an MQTT 5
    /// client asking for more, or for none, is told this one (Server
    /// Keep Alive in CONNACK) and held to it; an MQTT 3.1/3.1.1 client,
    /// which cannot be told, is refused (CONNACK 2). `None`: any.
    pub max_keep_alive: Option<u16>,
    /// Topic aliases the broker sets on what it sends each MQTT 5
    /// client, up to the client's Topic Alias Maximum. 0: none.
    pub server_topic_aliases: u16,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("addr", &self.addr)
            .field("max_queued_per_session", &self.max_queued_per_session)
            .field("max_inflight", &self.max_inflight)
            .field("journal_capacity", &self.journal_capacity)
            .field("journal_max_bytes", &self.journal_max_bytes)
            .field("storage_dir", &self.storage_dir)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttConfig {
    /// The defaults of every limit, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            max_queued_per_session: DEFAULT_MAX_QUEUED,
            max_queued_bytes_per_session: DEFAULT_MAX_QUEUED_BYTES,
            max_inflight: 64,
            max_clients: 100_000,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            journal_capacity: DEFAULT_JOURNAL_CAPACITY,
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
            outage_buffer: DEFAULT_OUTAGE_BUFFER,
            storage_dir: None,
            authorizer: None,
            seed: 0,
            max_keep_alive: None,
            server_topic_aliases: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("starting the MQTT broker on {addr}: {detail}")]
    Start { addr: SocketAddr, detail: String },
    #[error("MQTT storage directory {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("the broker is already in an outage until {until}; wait for it to end")]
    AlreadyDown { until: String },
    #[error("the broker has been shut down")]
    Stopped,
}

/// Delivery guarantee of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// QoS 0: at most once.
    #[default]
    AtMostOnce,
    /// QoS 1: at least once.
    AtLeastOnce,
    /// QoS 2: exactly once.
    ExactlyOnce,
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            _ => Err(format!("qos {v} is not valid: use 0, 1 or 2")),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        match q {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

/// A change in who is connected, for other modules (the fleet's
/// connectivity tracking). Sent when the first connection of a client id
/// opens and when its last one closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The first connection of a client id opened.
    Connected {
        /// The MQTT client id.
        client_id: String,
        /// The user the authorizer admitted it as.
        user: Option<String>,
    },
    /// The last connection of a client id closed.
    Disconnected {
        /// The MQTT client id.
        client_id: String,
        /// The user the authorizer admitted it as.
        user: Option<String>,
        /// The client sent DISCONNECT (no will was published).
        clean: bool,
    },
}

/// A connected client and its subscriptions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ClientInfo {
    pub client_id: String,
    pub user: Option<String>,
    /// Wall time of the connection, ms since the Unix epoch.
    pub connected_at_ms: i64,
    pub clean_start: bool,
    /// The keep alive it is held to, in seconds (0: none): its own, or
    /// the broker's Server Keep Alive (`--mqtt-max-keep-alive`).
    pub keep_alive: u16,
    /// Filter → granted QoS.
    #[schema(value_type = Object)]
    pub subscriptions: std::collections::BTreeMap<String, Qos>,
    /// Messages waiting in its session's queue.
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages dropped for this session (all reasons).
    pub dropped: u64,
    pub counters: SessionCounters,
}

/// What happened to an in-process publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishOutcome {
    /// Handed to the broker's router.
    Routed,
    /// The broker is down on purpose: held, and routed when it is back.
    Held,
    /// The broker is down (QoS 0, not retained) or shut down: dropped and
    /// counted.
    Dropped,
}

/// `up`, `outage` or `stopped`, with the counters of the outage policy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    /// `up`, `outage` or `stopped`.
    pub state: &'static str,
    /// End of the current outage (RFC 3339, wall time).
    pub until: Option<String>,
    pub remaining_ms: Option<u64>,
    pub addr: String,
    /// Outages since the start.
    pub outages: u64,
    pub clients: usize,
    /// Sessions the broker keeps (connected, or away and not expired).
    pub sessions: usize,
    /// Subscriptions in the subscription tree.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// What the engine did since the start.
    pub broker: BrokerCounters,
    pub journal: JournalStats,
    pub outage_policy: OutageCounters,
    pub limits: Limits,
}

/// The engine's counters since the start.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct BrokerCounters {
    /// Messages accepted for routing (clients, the server, wills).
    pub received: u64,
    /// Deliveries queued for sessions.
    pub deliveries: u64,
    /// Dropped because a session's queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because they expired before they could be sent.
    pub dropped_expired: u64,
    /// Skipped because they were larger than the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Dropped by a packet fault rule.
    pub dropped_fault: u64,
    /// QoS 0 messages (or any to a non-persistent session) matching a
    /// session whose client was away: not queued, as MQTT allows.
    pub skipped_offline_qos0: u64,
    pub wills_published: u64,
    pub connections_refused: u64,
    /// Connections closed for a protocol error.
    pub protocol_errors: u64,
    /// Of those: packets over the broker's Maximum Packet Size
    /// (`--mqtt-max-packet-size`), refused with DISCONNECT 0x95.
    pub packets_too_large: u64,
    /// Times a publisher's reads waited for a subscriber it fed to drain
    /// its queue below 1/8 (after a read left that queue 1/4 full).
    pub publishers_paced: u64,
    /// Times a congested subscriber wrote nothing for 250 ms while a
    /// publisher waited for it: publishers stop waiting for it until it
    /// writes again, and its queue fills and drops as counted above.
    pub subscribers_stalled: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct OutageCounters {
    /// In-process QoS 0 publishes dropped while the broker was down.
    pub dropped: u64,
    /// In-process QoS>0 or retained publishes held while it was down.
    pub held: u64,
    /// Held publishes waiting now.
    pub held_now: usize,
    pub held_capacity: usize,
    /// Held publishes evicted (oldest first) because the buffer was full.
    pub held_evicted: u64,
    /// Held publishes routed once the broker was back.
    pub replayed: u64,
}

/// The limits the engine enforces, as `GET /mqtt/status` shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Limits {
    pub max_packet_size: usize,
    pub max_queued_per_session: usize,
    pub max_queued_bytes_per_session: usize,
    pub max_inflight: u16,
    pub max_clients: usize,
    /// Topic aliases a client may set on its PUBLISHes.
    pub topic_alias_maximum: u16,
    /// The longest Keep Alive a client may use (`--mqtt-max-keep-alive`).
    pub max_keep_alive: Option<u16>,
    /// Topic aliases the broker sets on what it sends an MQTT 5 client
    /// (`--mqtt-server-topic-aliases`).
    pub server_topic_aliases: u16,
}

/// A verify request: count the journal's messages on `filter` (after
/// `since`) whose JSON payload contains `contains`.
#[derive(Debug, Clone)]
pub(crate) struct VerifySpec {
    pub filter: String,
    pub contains: Option<serde_json::Value>,
    pub expect: Expect,
    pub within: Duration,
    pub since: u64,
}

/// The running broker. Dropping it does not stop it; call
/// [`Broker::shutdown`].
pub struct Broker {
    handle: MqttHandle,
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    supervisor: tokio::task::JoinHandle<()>,
    thread: conn::ConnThread,
}

/// The broker's in-process side: publish, journal, clients, status,
/// outages, client events. Cheap to clone.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Arc<Engine>,
    addr: SocketAddr,
    /// The runtime of the connection thread.
    conns: tokio::runtime::Handle,
    // std locks: held to flip a state or push a message, never across an
    // await.
    link: Mutex<Link>,
    held: Mutex<VecDeque<Held>>,
    held_capacity: usize,
    wake: Notify,
    outages: AtomicU64,
    dropped: AtomicU64,
    held_total: AtomicU64,
    held_evicted: AtomicU64,
    replayed: AtomicU64,
}

/// An in-process publish waiting for an outage to end.
struct Held {
    topic: String,
    payload: Bytes,
    /// MQTT 5 properties in wire form (see [`PublishProps`]).
    props: Bytes,
    qos: Qos,
    retain: bool,
    to: Option<Arc<Addressee>>,
}

/// MQTT 5 properties a server publish carries to MQTT 5 subscribers (a
/// 3.1.1 subscriber gets the message without them). A string longer than
/// the protocol's 65,535 bytes is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProps {
    /// The content type property.
    pub content_type: Option<String>,
    /// In order; a key may repeat.
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Up,
    Outage { until: Instant, until_wall_ms: i64 },
    Stopped,
}

impl Broker {
    /// Binds the listener (port 0 picks a free one) and starts serving.
    /// The store's thread (with `storage_dir`) ends when the broker and
    /// its handles are gone.
    pub async fn start(config: &MqttConfig, clock: Clock) -> Result<Self, MqttError> {
        Self::start_in(config, clock, None).await
    }

    /// [`Broker::start`], with the store's thread registered in `writers`
    /// for the server's shutdown to close.
    pub(crate) async fn start_in(
        config: &MqttConfig,
        clock: Clock,
        writers: Option<&crate::sqlite::Writers>,
    ) -> Result<Self, MqttError> {
        if let Some(dir) = &config.storage_dir {
            std::fs::create_dir_all(dir).map_err(|source| MqttError::Storage {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let store = match &config.storage_dir {
            Some(dir) => {
                Some(
                    store::Store::open(dir, writers)
                        .await
                        .map_err(|e| MqttError::Start {
                            addr: config.addr,
                            detail: e.to_string(),
                        })?,
                )
            }
            None => None,
        };
        let observed = Arc::new(Observed::new(
            journal::Journal::new(config.journal_capacity, config.journal_max_bytes),
            clock.clone(),
        ));
        let engine = Engine::new(
            observed,
            clock,
            Limits {
                max_packet_size: config.max_packet_size,
                max_queued_per_session: config.max_queued_per_session,
                max_queued_bytes_per_session: config.max_queued_bytes_per_session,
                max_inflight: config.max_inflight,
                max_clients: config.max_clients,
                topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
                max_keep_alive: config.max_keep_alive,
                server_topic_aliases: config.server_topic_aliases,
            },
            config.authorizer.clone(),
            store,
            config.seed,
        );
        let start_error = |e: std::io::Error| MqttError::Start {
            addr: config.addr,
            detail: e.to_string(),
        };
        let thread = conn::ConnThread::start().map_err(start_error)?;
        let listening = conn::listen(&engine, config.addr, thread.handle()).map_err(start_error)?;
        let local_addr = listening.addr;
        let timers = tokio::spawn(engine.clone().run_timers());
        match &config.storage_dir {
            Some(dir) => {
                tracing::info!(addr = %local_addr, storage = %dir.display(), "MQTT broker listening")
            }
            None => tracing::info!(addr = %local_addr, storage = "memory", "MQTT broker listening"),
        }
        let shared = Arc::new(Shared {
            engine,
            addr: local_addr,
            conns: thread.handle().clone(),
            link: Mutex::new(Link::Up),
            held: Mutex::default(),
            held_capacity: config.outage_buffer,
            wake: Notify::new(),
            outages: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            held_total: AtomicU64::new(0),
            held_evicted: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        });
        let (stop, stop_rx) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(shared.clone(), listening, timers, stop_rx));
        Ok(Self {
            handle: MqttHandle { shared },
            local_addr,
            stop,
            supervisor,
            thread,
        })
    }

    /// Where the broker listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The in-process handle of the broker.
    pub fn handle(&self) -> MqttHandle {
        self.handle.clone()
    }

    /// Disconnects every client, stops the listener and waits for the
    /// engine to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.supervisor.await;
        self.thread.stop().await;
    }
}

/// Owns the listener: closes it and every connection for an outage and
/// listens again on the same port when the outage ends. Sessions, queues
/// and retained messages stay in the engine throughout.
async fn supervise(
    shared: Arc<Shared>,
    mut listening: engine::Listening,
    timers: tokio::task::JoinHandle<()>,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let engine = shared.engine.clone();
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = &mut stop_rx => break,
        }
        let Link::Outage { until, .. } = *shared.link.lock().unwrap() else {
            continue;
        };
        tracing::info!(addr = %shared.addr, "MQTT outage: disconnecting every client");
        engine.accepting.store(false, Ordering::Release);
        listening.task.abort();
        let _ = (&mut listening.task).await;
        engine
            .close_all(codec::rc::SERVER_SHUTTING_DOWN, Duration::from_secs(5))
            .await;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut stop_rx => {
                *shared.link.lock().unwrap() = Link::Stopped;
                engine.stop_timers();
                let _ = timers.await;
                return;
            }
        }
        // The port was ours a moment ago; retry briefly if the OS is slow
        // to let it go.
        let mut attempts = 0u32;
        listening = loop {
            match conn::listen(&engine, shared.addr, &shared.conns) {
                Ok(l) => break l,
                Err(error) => {
                    attempts += 1;
                    if attempts.is_multiple_of(20) {
                        tracing::warn!(addr = %shared.addr, %error, attempts, "MQTT broker not back yet; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = &mut stop_rx => {
                            *shared.link.lock().unwrap() = Link::Stopped;
                            engine.stop_timers();
                            let _ = timers.await;
                            return;
                        }
                    }
                }
            }
        };
        engine.accepting.store(true, Ordering::Release);
        let held: Vec<Held> = {
            let mut held = shared.held.lock().unwrap();
            *shared.link.lock().unwrap() = Link::Up;
            held.drain(..).collect()
        };
        tracing::info!(addr = %shared.addr, held = held.len(), "MQTT outage over: listening again");
        let n = held.len() as u64;
        for h in held {
            shared.route(&h.topic, h.payload, h.props, h.qos, h.retain, h.to);
        }
        shared.replayed.fetch_add(n, Ordering::Relaxed);
    }
    *shared.link.lock().unwrap() = Link::Stopped;
    engine.accepting.store(false, Ordering::Release);
    listening.task.abort();
    let _ = listening.task.await;
    engine
        .close_all(codec::rc::SERVER_SHUTTING_DOWN, Duration::from_secs(5))
        .await;
    engine.stop_timers();
    let _ = timers.await;
}

impl Shared {
    /// Journals and routes a server publish.
    fn route(
        &self,
        topic: &str,
        payload: Bytes,
        props: Bytes,
        qos: Qos,
        retain: bool,
        to: Option<Arc<Addressee>>,
    ) {
        let msg = engine::server_msg(topic, payload, props, u8::from(qos), retain, to);
        self.engine.observed.published(
            &msg.topic,
            &msg.payload,
            msg.qos,
            retain,
            None,
            Origin::Server,
            msg.to.as_deref(),
        );
        self.engine.route(msg);
    }
}

impl MqttHandle {
    /// Publishes as the server itself (no client, no ACL). While the broker
    /// is down on purpose, QoS 0 non-retained messages are dropped and
    /// counted; QoS 1/2 and retained ones are held (up to the outage
    /// buffer, oldest evicted and counted) and routed when it is back.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: Qos,
        retain: bool,
    ) -> PublishOutcome {
        self.publish_now(topic, payload.into(), qos, retain)
    }

    /// [`publish`](Self::publish) with MQTT 5 properties.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: Qos,
        retain: bool,
        props: &PublishProps,
    ) -> PublishOutcome {
        let props = codec::publish_props(props.content_type.as_deref(), &props.user_properties);
        self.publish_raw(topic, payload.into(), props, qos, retain, None)
    }

    /// Publishes a message addressed to one device when `to` says so
    /// (only sessions whose client id or user name is the device's get
    /// it, see [`Addressee::for_topic`]), else to every subscriber; with
    /// MQTT 5 properties when given.
    pub(crate) fn publish_to(
        &self,
        to: Option<Addressee>,
        topic: &str,
        payload: Bytes,
        qos: Qos,
        retain: bool,
        props: Option<&PublishProps>,
    ) -> PublishOutcome {
        let props = props.map_or_else(Bytes::new, |p| {
            codec::publish_props(p.content_type.as_deref(), &p.user_properties)
        });
        self.publish_raw(topic, payload, props, qos, retain, to.map(Arc::new))
    }

    /// [`publish`](Self::publish) without the future: routing never waits.
    pub(crate) fn publish_now(
        &self,
        topic: &str,
        payload: Bytes,
        qos: Qos,
        retain: bool,
    ) -> PublishOutcome {
        self.publish_raw(topic, payload, Bytes::new(), qos, retain, None)
    }

    fn publish_raw(
        &self,
        topic: &str,
        payload: Bytes,
        props: Bytes,
        qos: Qos,
        retain: bool,
        to: Option<Arc<Addressee>>,
    ) -> PublishOutcome {
        let shared = &self.shared;
        {
            let mut held = shared.held.lock().unwrap();
            let link = *shared.link.lock().unwrap();
            match link {
                Link::Up => {}
                Link::Outage { .. } if qos != Qos::AtMostOnce || retain => {
                    if shared.held_capacity == 0 {
                        shared.held_evicted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        if held.len() == shared.held_capacity {
                            held.pop_front();
                            shared.held_evicted.fetch_add(1, Ordering::Relaxed);
                        }
                        held.push_back(Held {
                            topic: topic.to_string(),
                            payload,
                            props,
                            qos,
                            retain,
                            to,
                        });
                    }
                    shared.held_total.fetch_add(1, Ordering::Relaxed);
                    // Journaled when it is routed, as every message is.
                    return PublishOutcome::Held;
                }
                Link::Outage { .. } | Link::Stopped => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return PublishOutcome::Dropped;
                }
            }
        }
        shared.route(topic, payload, props, qos, retain, to);
        PublishOutcome::Routed
    }

    /// Adds a packet fault rule.
    pub(crate) fn fault_add(
        &self,
        spec: faults::FaultSpec,
    ) -> Result<faults::FaultRule, faults::FaultError> {
        self.shared.engine.faults.add(spec)
    }

    /// Fault rules with how often each matched and fired.
    pub(crate) fn fault_rules(&self) -> Vec<faults::FaultRule> {
        self.shared.engine.faults.list()
    }

    /// Fault firings after `since`, and how many the log evicted.
    pub(crate) fn fault_log(&self, since: u64) -> (Vec<faults::FaultEvent>, u64) {
        self.shared.engine.faults.log(since)
    }

    /// Messages that did not reach a client (queue full, expired, too
    /// large, fault) after `since`, and how many the log evicted.
    pub(crate) fn drops(&self, since: u64) -> (Vec<DropEvent>, u64) {
        self.shared.engine.drop_log(since)
    }

    pub(crate) fn fault_remove(&self, id: &str) -> Result<(), faults::FaultError> {
        self.shared.engine.faults.remove(id)
    }

    pub(crate) fn faults_clear(&self) {
        self.shared.engine.faults.clear()
    }

    /// Listens to what clients publish on topics matching `filter`
    /// (server-side publishes are not included). At most `capacity`
    /// messages wait; the rest are counted in `dropped`.
    pub(crate) fn tap(
        &self,
        filter: &str,
        capacity: usize,
        dropped: Arc<AtomicU64>,
    ) -> mpsc::Receiver<Tapped> {
        let (tx, rx) = mpsc::channel(capacity);
        self.shared
            .engine
            .observed
            .taps
            .write()
            .unwrap()
            .push(observed::Tap {
                filter: filter.to_string(),
                tx,
                dropped,
            });
        rx
    }

    /// Granted subscriptions from now on.
    pub(crate) fn subscriptions(&self) -> broadcast::Receiver<Subscribed> {
        self.shared.engine.observed.subscribed.subscribe()
    }

    /// Whether the client `who` (client id or user name) listens on
    /// `topic` now.
    pub fn listens(&self, who: &str, topic: &str) -> bool {
        self.shared.engine.observed.listens(who, topic)
    }

    /// The runtime every MQTT connection runs on (one thread of its own):
    /// transports spawn their accept loops there.
    pub(crate) fn connection_runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.conns
    }

    /// Serves one MQTT connection on a stream a transport accepted (TLS,
    /// WebSocket), with the client certificate it verified, until the
    /// connection ends. During an outage CONNECT is answered "server
    /// unavailable", and open connections are closed with the others.
    pub(crate) async fn serve_stream<S>(&self, stream: S, peer: SocketAddr, cert: Option<PeerCert>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        conn::serve(self.shared.engine.clone(), stream, peer, cert).await;
    }

    /// Connect and disconnect events from now on. A receiver that falls
    /// more than 1,024 events behind gets `Lagged` (with the count).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.engine.observed.events.subscribe()
    }

    /// Connected clients with their subscriptions, sorted by id.
    pub(crate) fn clients(&self) -> Vec<ClientInfo> {
        let engine = &self.shared.engine;
        let mut counters = engine.session_counters();
        engine
            .observed
            .clients()
            .into_iter()
            .map(|c| {
                let (queued, inflight, counters) =
                    counters.remove(&c.client_id).unwrap_or_default();
                ClientInfo {
                    client_id: c.client_id.to_string(),
                    user: c.user.as_deref().map(str::to_string),
                    connected_at_ms: c.connected_at_ms,
                    clean_start: c.clean_start,
                    keep_alive: c.keep_alive,
                    subscriptions: c.subscriptions,
                    queued,
                    inflight,
                    dropped: counters.dropped(),
                    counters,
                }
            })
            .collect()
    }

    /// Journal entries after `since` on `filter`, at most `limit`.
    pub(crate) fn messages(&self, filter: Option<&str>, since: u64, limit: usize) -> Page {
        self.shared
            .engine
            .observed
            .journal
            .page(filter, since, limit)
    }

    /// The newest journal cursor, changing with every entry added: follow
    /// the journal with [`messages`](Self::messages) without polling.
    pub(crate) fn journal_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.engine.observed.journal.watch()
    }

    /// A delivery barrier: waits until every connected client has every
    /// message routed to it before this call, written to its socket
    /// (QoS 0) or acknowledged (QoS 1/2). A client that disconnects
    /// meanwhile no longer counts. After `timeout`, the clients still
    /// waiting, and what for.
    pub(crate) async fn wait_delivered(
        &self,
        timeout: Duration,
    ) -> Result<(), Vec<PendingDelivery>> {
        let engine = &self.shared.engine;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut marks = engine.delivery_marks();
        loop {
            let mut pending = Vec::new();
            marks.retain(|m| match engine.mark_pending(m) {
                Some(p) => {
                    pending.push(p);
                    true
                }
                None => false,
            });
            if marks.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(pending);
            }
            // Connection tasks write within microseconds of a wake; acks
            // take a round trip. A short poll costs little next to either.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub(crate) fn status(&self) -> Status {
        let shared = &self.shared;
        let (sessions, subscriptions, retained) = shared.engine.sizes();
        let link = *shared.link.lock().unwrap();
        let (state, until, remaining_ms) = match link {
            Link::Up => ("up", None, None),
            Link::Stopped => ("stopped", None, None),
            Link::Outage {
                until,
                until_wall_ms,
            } => (
                "outage",
                Some(rfc3339_ms(until_wall_ms)),
                Some(until.saturating_duration_since(Instant::now()).as_millis() as u64),
            ),
        };
        Status {
            state,
            until,
            remaining_ms,
            addr: shared.addr.to_string(),
            outages: shared.outages.load(Ordering::Relaxed),
            clients: shared.engine.observed.client_count(),
            sessions,
            subscriptions,
            retained,
            broker: shared.engine.counters(),
            journal: shared.engine.observed.journal.stats(),
            outage_policy: OutageCounters {
                dropped: shared.dropped.load(Ordering::Relaxed),
                held: shared.held_total.load(Ordering::Relaxed),
                held_now: shared.held.lock().unwrap().len(),
                held_capacity: shared.held_capacity,
                held_evicted: shared.held_evicted.load(Ordering::Relaxed),
                replayed: shared.replayed.load(Ordering::Relaxed),
            },
            limits: shared.engine.limits.clone(),
        }
    }

    /// Takes the broker down for `duration`: every client is disconnected
    /// (wills fire), new connections are refused, and the listener comes
    /// back on the same port by itself. Sessions, their queued messages and
    /// retained messages survive (in memory, or in the storage directory
    /// with `storage_dir`).
    pub(crate) fn outage(&self, duration: Duration) -> Result<Status, MqttError> {
        {
            let mut link = self.shared.link.lock().unwrap();
            match *link {
                Link::Outage { until_wall_ms, .. } => {
                    return Err(MqttError::AlreadyDown {
                        until: rfc3339_ms(until_wall_ms),
                    });
                }
                Link::Stopped => return Err(MqttError::Stopped),
                Link::Up => {}
            }
            *link = Link::Outage {
                until: Instant::now() + duration,
                until_wall_ms: wall_ms() + duration.as_millis() as i64,
            };
        }
        self.shared.outages.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            duration_ms = duration.as_millis() as u64,
            "MQTT outage requested"
        );
        self.shared.wake.notify_one();
        Ok(self.status())
    }

    /// Waits (on journal changes, not by polling) until the expectation is
    /// settled or `within` has passed, then answers with the verdict.
    pub(crate) async fn verify(&self, spec: &VerifySpec) -> Verdict {
        let journal = &self.shared.engine.observed.journal;
        crate::verify::wait_for_verdict(
            spec.expect,
            spec.since,
            spec.within,
            journal.watch(),
            |cursor, tally| {
                // Clone the entries on the filter under the lock; parse JSON
                // outside it, so publishers are not held up.
                let mut candidates = Vec::new();
                let scanned = journal.scan(cursor, |e| {
                    if topics::matches(&spec.filter, &e.topic) {
                        candidates.push(e.clone());
                    }
                });
                for entry in candidates {
                    let matched = spec.contains.as_ref().is_none_or(|subset| {
                        serde_json::from_slice::<serde_json::Value>(&entry.payload)
                            .is_ok_and(|v| json_contains(&v, subset))
                    });
                    tally.count(matched, || {
                        serde_json::to_value(&entry).unwrap_or_default()
                    });
                }
                scanned
            },
            |tally| {
                let mut detail = format!(
                    "{} message(s) on {:?}{} after cursor {}; expected {}",
                    tally.matched,
                    spec.filter,
                    if spec.contains.is_some() {
                        format!(
                            " with the payload subset ({} on the filter)",
                            tally.selected
                        )
                    } else {
                        String::new()
                    },
                    spec.since,
                    spec.expect
                );
                if tally.missed {
                    detail.push_str(
                        "; some messages after the cursor were already evicted from the journal (raise --journal-capacity)",
                    );
                }
                detail
            },
        )
        .await
    }
}
