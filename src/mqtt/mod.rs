//! The MQTT side: an embedded broker (the `mqtt5` crate's engine) behind a
//! small facade. The rest of the server publishes through [`MqttHandle`] and
//! never sees an engine type, so the engine could be swapped.
//!
//! It owns the listener, the broker's limits, the in-process publishing
//! link, the message journal, the list of connected clients, the auth hook
//! and outages on purpose. It does not decide what is published
//! (telemetry, commands and edge nodes do) and keeps no device state.
//!
//! Engine code lives in `engine.rs` and `auth.rs` only.

mod auth;
mod engine;
mod journal;
pub mod topics;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use mqtt5::broker::router::MessageRouter;
use mqtt5::broker::storage::DynamicStorage;
use mqtt5::packet::publish::PublishPacket;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::time::Instant;

pub use auth::{AuthDecision, Authorizer};
pub use engine::{Subscribed, Tapped};
pub use journal::{Entry, JournalStats, Page};

use crate::clock::{Clock, rfc3339_ms, wall_ms};
use crate::verify::{Expect, Verdict, json_contains};
use engine::Observed;

/// The largest packet the broker accepts and advertises: the MQTT maximum.
/// (The engine's default is one byte more, which makes some v5 clients such
/// as paho-mqtt refuse the connection.)
pub const MAX_PACKET_SIZE: usize = 268_435_455;

/// Default capacity of the message journal.
pub const DEFAULT_JOURNAL_CAPACITY: usize = 100_000;

/// Default number of in-process QoS>0 or retained publishes held during an
/// outage.
pub const DEFAULT_OUTAGE_BUFFER: usize = 10_000;

/// Broker limits, stated so that nothing is dropped without a number.
#[derive(Clone)]
pub struct MqttConfig {
    pub addr: SocketAddr,
    /// QoS 1/2 messages queued per session while its client is away or
    /// behind; beyond it the oldest is dropped.
    pub max_queued_per_session: usize,
    /// Bytes queued per session, with the same policy.
    pub max_queued_bytes_per_session: usize,
    /// QoS 1/2 messages in flight to one client before the rest queue.
    pub max_inflight: u16,
    pub max_clients: usize,
    /// Messages kept in the journal; beyond it the oldest is evicted and
    /// counted.
    pub journal_capacity: usize,
    /// In-process publishes held while the broker is down on purpose.
    pub outage_buffer: usize,
    /// Where sessions, queues and retained messages are stored as files,
    /// surviving a restart of the process. `None`: in memory, surviving
    /// outages but not the process.
    pub storage_dir: Option<PathBuf>,
    /// Who may connect, publish, subscribe; `None` allows everything.
    pub authorizer: Option<Arc<dyn Authorizer>>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("addr", &self.addr)
            .field("max_queued_per_session", &self.max_queued_per_session)
            .field("max_inflight", &self.max_inflight)
            .field("journal_capacity", &self.journal_capacity)
            .field("storage_dir", &self.storage_dir)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            max_queued_per_session: 10_000,
            max_queued_bytes_per_session: 64 << 20,
            max_inflight: 64,
            max_clients: 100_000,
            journal_capacity: DEFAULT_JOURNAL_CAPACITY,
            outage_buffer: DEFAULT_OUTAGE_BUFFER,
            storage_dir: None,
            authorizer: None,
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
    #[default]
    AtMostOnce,
    AtLeastOnce,
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

impl From<Qos> for mqtt5::QoS {
    fn from(q: Qos) -> Self {
        match q {
            Qos::AtMostOnce => mqtt5::QoS::AtMostOnce,
            Qos::AtLeastOnce => mqtt5::QoS::AtLeastOnce,
            Qos::ExactlyOnce => mqtt5::QoS::ExactlyOnce,
        }
    }
}

/// A change in who is connected, for other modules (the fleet's
/// connectivity tracking). Sent when the first connection of a client id
/// opens and when its last one closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Connected {
        client_id: String,
        user: Option<String>,
    },
    Disconnected {
        client_id: String,
        user: Option<String>,
        /// The client sent DISCONNECT (no will was published).
        clean: bool,
    },
}

/// A connected client and its subscriptions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientInfo {
    pub client_id: String,
    pub user: Option<String>,
    /// Wall time of the connection, ms since the Unix epoch.
    pub connected_at_ms: i64,
    pub clean_start: bool,
    /// Filter → granted QoS.
    #[schema(value_type = Object)]
    pub subscriptions: std::collections::BTreeMap<String, Qos>,
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
pub struct Status {
    /// `up`, `outage` or `stopped`.
    pub state: &'static str,
    /// End of the current outage (RFC 3339, wall time).
    pub until: Option<String>,
    pub remaining_ms: Option<u64>,
    pub addr: String,
    /// Outages since the start.
    pub outages: u64,
    pub clients: usize,
    pub journal: JournalStats,
    pub outage_policy: OutageCounters,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutageCounters {
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub max_packet_size: usize,
    pub max_queued_per_session: usize,
    pub max_queued_bytes_per_session: usize,
    pub max_inflight: u16,
    pub max_clients: usize,
    /// Per-client delivery lane of the engine; a QoS 0 message to a client
    /// whose lane is full is dropped by the engine (not counted by it).
    pub client_channel_capacity: usize,
}

/// A verify request: count the journal's messages on `filter` (after
/// `since`) whose JSON payload contains `contains`.
#[derive(Debug, Clone)]
pub struct VerifySpec {
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
}

/// The broker's in-process side: publish, journal, clients, status,
/// outages, client events. Cheap to clone.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
}

struct Shared {
    observed: Arc<Observed>,
    addr: SocketAddr,
    limits: Limits,
    // std locks: held to clone an Arc or flip a state, never across an
    // await. The router is `None` while the broker is down: holding it
    // then would keep the storage directory locked.
    router: RwLock<Option<Arc<MessageRouter>>>,
    link: Mutex<Link>,
    held: Mutex<VecDeque<PublishPacket>>,
    held_capacity: usize,
    wake: Notify,
    outages: AtomicU64,
    dropped: AtomicU64,
    held_total: AtomicU64,
    held_evicted: AtomicU64,
    replayed: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Up,
    Outage { until: Instant, until_wall_ms: i64 },
    Stopped,
}

/// The engine's per-client delivery lane (its default, kept).
const CLIENT_CHANNEL_CAPACITY: usize = 10_000;

impl Broker {
    /// Binds the listener (port 0 picks a free one) and starts serving.
    pub async fn start(config: &MqttConfig, clock: Clock) -> Result<Self, MqttError> {
        if let Some(dir) = &config.storage_dir {
            std::fs::create_dir_all(dir).map_err(|source| MqttError::Storage {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let dir = config.storage_dir.clone();
        let (events, _) = broadcast::channel(1024);
        let observed = Arc::new(Observed {
            journal: journal::Journal::new(config.journal_capacity),
            clock,
            events,
            clients: Mutex::default(),
            storage: RwLock::new(None),
            taps: RwLock::default(),
            subscribed: broadcast::channel(1024).0,
        });
        let running = engine::start(config, config.addr, keep(dir.as_deref(), None), &observed)
            .await
            .map_err(|detail| MqttError::Start {
                addr: config.addr,
                detail,
            })?;
        let local_addr = running.addr;
        match &dir {
            Some(dir) => {
                tracing::info!(addr = %local_addr, storage = %dir.display(), "MQTT broker listening")
            }
            None => tracing::info!(addr = %local_addr, storage = "memory", "MQTT broker listening"),
        }
        let shared = Arc::new(Shared {
            observed,
            addr: local_addr,
            limits: Limits {
                max_packet_size: MAX_PACKET_SIZE,
                max_queued_per_session: config.max_queued_per_session,
                max_queued_bytes_per_session: config.max_queued_bytes_per_session,
                max_inflight: config.max_inflight,
                max_clients: config.max_clients,
                client_channel_capacity: CLIENT_CHANNEL_CAPACITY,
            },
            router: RwLock::new(Some(running.router.clone())),
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
        // Restarts bind the port the first start got, so clients find the
        // broker where it was.
        let mut restart_config = config.clone();
        restart_config.addr = local_addr;
        let supervisor = tokio::spawn(supervise(
            shared.clone(),
            restart_config,
            dir,
            running,
            stop_rx,
        ));
        Ok(Self {
            handle: MqttHandle { shared },
            local_addr,
            stop,
            supervisor,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> MqttHandle {
        self.handle.clone()
    }

    /// Disconnects every client, stops the listener and waits for the
    /// engine to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.supervisor.await;
    }
}

/// Owns the engine instance: stops it for an outage and starts a new one on
/// the same port when the outage ends, with the same storage directory or
/// the stopped instance's memory.
async fn supervise(
    shared: Arc<Shared>,
    config: MqttConfig,
    dir: Option<PathBuf>,
    mut running: engine::Running,
    mut stop_rx: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = &mut stop_rx => break,
        }
        let Link::Outage { until, .. } = *shared.link.lock().unwrap() else {
            continue;
        };
        tracing::info!(addr = %shared.addr, "MQTT outage: disconnecting every client");
        let stopped = stop_engine(&shared, running).await;
        // Without a storage directory the next instance takes over this
        // one's memory; with one, the files are the state (and this clone
        // would keep the directory locked).
        let carry = if dir.is_none() { stopped } else { None };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut stop_rx => {
                *shared.link.lock().unwrap() = Link::Stopped;
                return;
            }
        }
        // The old instance's last storage clones may take a moment to go
        // (the engine waits up to 5 s for its tasks); retry until the
        // directory lock is free.
        let mut attempts = 0u32;
        running = loop {
            let keep = keep(dir.as_deref(), carry.clone());
            match engine::start(&config, shared.addr, keep, &shared.observed).await {
                Ok(r) => break r,
                Err(detail) => {
                    attempts += 1;
                    if attempts.is_multiple_of(20) {
                        tracing::warn!(addr = %shared.addr, %detail, attempts, "MQTT broker not back yet; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = &mut stop_rx => {
                            *shared.link.lock().unwrap() = Link::Stopped;
                            return;
                        }
                    }
                }
            }
        };
        let held: Vec<PublishPacket> = {
            let mut held = shared.held.lock().unwrap();
            *shared.router.write().unwrap() = Some(running.router.clone());
            *shared.link.lock().unwrap() = Link::Up;
            held.drain(..).collect()
        };
        tracing::info!(addr = %shared.addr, held = held.len(), "MQTT outage over: listening again");
        for packet in &held {
            running.router.route_message(packet, None).await;
        }
        shared
            .replayed
            .fetch_add(held.len() as u64, Ordering::Relaxed);
    }
    *shared.link.lock().unwrap() = Link::Stopped;
    *shared.router.write().unwrap() = None;
    stop_engine(&shared, running).await;
}

/// Stops an engine instance; answers its storage.
async fn stop_engine(shared: &Shared, running: engine::Running) -> Option<Arc<DynamicStorage>> {
    *shared.router.write().unwrap() = None;
    running.stop.shutdown();
    let _ = running.task.await;
    let storage = shared.observed.storage.write().unwrap().take();
    drop(running.router);
    shared.observed.forget_all();
    storage
}

fn keep(dir: Option<&Path>, carry: Option<Arc<DynamicStorage>>) -> engine::Keep<'_> {
    match dir {
        Some(dir) => engine::Keep::Dir(dir),
        None => engine::Keep::Memory(carry),
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
        let payload = payload.into();
        let packet = PublishPacket::new(topic, payload.clone(), qos.into()).with_retain(retain);
        let shared = &self.shared;
        let router = shared.router.read().unwrap().clone();
        let outcome = match router {
            Some(router) => {
                self.journal_push(topic, payload, qos, retain);
                router.route_message(&packet, None).await;
                return PublishOutcome::Routed;
            }
            None => {
                let mut held = shared.held.lock().unwrap();
                let link = *shared.link.lock().unwrap();
                match link {
                    // Came back between the two reads.
                    Link::Up => None,
                    Link::Outage { .. } if qos != Qos::AtMostOnce || retain => {
                        if shared.held_capacity == 0 {
                            shared.held_evicted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            if held.len() == shared.held_capacity {
                                held.pop_front();
                                shared.held_evicted.fetch_add(1, Ordering::Relaxed);
                            }
                            held.push_back(packet.clone());
                        }
                        shared.held_total.fetch_add(1, Ordering::Relaxed);
                        Some(PublishOutcome::Held)
                    }
                    Link::Outage { .. } | Link::Stopped => {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        Some(PublishOutcome::Dropped)
                    }
                }
            }
        };
        match outcome {
            Some(PublishOutcome::Held) => {
                self.journal_push(topic, payload, qos, retain);
                PublishOutcome::Held
            }
            Some(other) => other,
            None => {
                let router = shared.router.read().unwrap().clone();
                match router {
                    Some(router) => {
                        self.journal_push(topic, payload, qos, retain);
                        router.route_message(&packet, None).await;
                        PublishOutcome::Routed
                    }
                    None => {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        PublishOutcome::Dropped
                    }
                }
            }
        }
    }

    fn journal_push(&self, topic: &str, payload: Bytes, qos: Qos, retain: bool) {
        let observed = &self.shared.observed;
        observed.journal.push(
            wall_ms(),
            observed.clock.now_ms(),
            topic.into(),
            payload,
            qos,
            retain,
            None,
        );
    }

    /// Connect and disconnect events, for other modules. A receiver that
    /// falls more than 1,024 events behind gets `Lagged` (with the count).
    /// Listens to what clients publish on topics matching `filter`
    /// (server-side publishes are not included). At most `capacity`
    /// messages wait; the rest are counted in `dropped`.
    pub fn tap(
        &self,
        filter: &str,
        capacity: usize,
        dropped: Arc<AtomicU64>,
    ) -> mpsc::Receiver<Tapped> {
        let (tx, rx) = mpsc::channel(capacity);
        self.shared
            .observed
            .taps
            .write()
            .unwrap()
            .push(engine::Tap {
                filter: filter.to_string(),
                tx,
                dropped,
            });
        rx
    }

    /// Granted subscriptions from now on.
    pub fn subscriptions(&self) -> broadcast::Receiver<Subscribed> {
        self.shared.observed.subscribed.subscribe()
    }

    /// Whether the client `who` (client id or user name) listens on
    /// `topic` now.
    pub fn listens(&self, who: &str, topic: &str) -> bool {
        self.shared.observed.listens(who, topic)
    }

    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.observed.events.subscribe()
    }

    /// Connected clients with their subscriptions, sorted by id.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.shared.observed.clients()
    }

    /// Journal entries after `since` on `filter`, at most `limit`.
    pub fn messages(&self, filter: Option<&str>, since: u64, limit: usize) -> Page {
        self.shared.observed.journal.page(filter, since, limit)
    }

    /// The newest journal cursor, changing with every entry added: follow
    /// the journal with [`messages`](Self::messages) without polling.
    pub fn journal_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.observed.journal.watch()
    }

    pub fn status(&self) -> Status {
        let shared = &self.shared;
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
            clients: shared.observed.client_count(),
            journal: shared.observed.journal.stats(),
            outage_policy: OutageCounters {
                dropped: shared.dropped.load(Ordering::Relaxed),
                held: shared.held_total.load(Ordering::Relaxed),
                held_now: shared.held.lock().unwrap().len(),
                held_capacity: shared.held_capacity,
                held_evicted: shared.held_evicted.load(Ordering::Relaxed),
                replayed: shared.replayed.load(Ordering::Relaxed),
            },
            limits: shared.limits.clone(),
        }
    }

    /// Takes the broker down for `duration`: every client is disconnected
    /// (wills fire), new connections are refused, and the listener comes
    /// back on the same port by itself. Sessions, their queued messages and
    /// retained messages survive (in memory, or in the storage directory
    /// with `storage_dir`).
    pub fn outage(&self, duration: Duration) -> Result<Status, MqttError> {
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
        // From now on in-process publishes follow the outage policy.
        *self.shared.router.write().unwrap() = None;
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
    pub async fn verify(&self, spec: &VerifySpec) -> Verdict {
        let journal = &self.shared.observed.journal;
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
