//! What clients publish in a dialect, read into the fleet: for every codec
//! and configuration a device uses (other than the default, which the
//! command engine and edge nodes read on iotmock's own topics), the
//! messages clients publish on the codec's filters are decoded, and their
//! events filed where the same event from an iotmock device goes: readings
//! to the telemetry export, live stream and edge nodes; acks to the
//! command engine; reported state to the device record; commands to the
//! command engine (a SCADA host commanding a simulated device).
//!
//! Each filter has a tap with a bounded queue ([`TAP_CAPACITY`] messages);
//! what does not fit is dropped and counted in `dropped`, and every other
//! outcome is counted too (see [`InboundCounters`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::commands::{AckSource, CommandRequest, Commands, DeviceAck, Origin};
use crate::dialect::DeviceDialect;
use crate::fleet::{Fleet, ReportMode};
use crate::mqtt::{MqttHandle, Tapped};
use crate::plugin::{CallContext, CodecEvent, DecodeRequest, Decoded, DeviceSlot, PluginHost};
use crate::tasks::Tasks;
use crate::telemetry::{Reading, Telemetry};

/// Client publishes waiting to be decoded, per filter.
pub(crate) const TAP_CAPACITY: usize = 4096;

/// Counters of decoded traffic, over all dialects.
#[derive(Debug, Default)]
struct Stats {
    decoded: AtomicU64,
    not_mine: AtomicU64,
    failed: AtomicU64,
    readings: AtomicU64,
    acks: AtomicU64,
    /// Acks for no command of that device.
    acks_unknown: AtomicU64,
    reported: AtomicU64,
    commands: AtomicU64,
    /// Events for a device the fleet does not have (or for no device).
    unknown_device: AtomicU64,
    /// Events the fleet refused (a reported state that is not an object, a
    /// command the engine refused).
    refused: AtomicU64,
    dropped: Arc<AtomicU64>,
}

/// What the decoders did, as `/health` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct InboundCounters {
    /// Codec configurations listened for.
    pub dialects: u64,
    /// Messages a codec read events from.
    pub decoded: u64,
    /// Messages a codec said were not in its dialect.
    pub not_mine: u64,
    /// Messages lost because the codec call failed.
    pub failed: u64,
    pub readings: u64,
    pub acks: u64,
    pub acks_unknown: u64,
    pub reported: u64,
    pub commands: u64,
    pub unknown_device: u64,
    pub refused: u64,
    /// Messages a decoder's queue had no room for.
    pub dropped: u64,
}

type Key = (Arc<str>, Arc<str>);

/// The decoders; cheap to clone.
#[derive(Clone)]
pub(crate) struct Inbound(Arc<Inner>);

struct Inner {
    plugins: PluginHost,
    mqtt: MqttHandle,
    fleet: Fleet,
    telemetry: Telemetry,
    commands: OnceLock<Commands>,
    // A std mutex: held to check and insert a key, never across an await.
    listening: Mutex<HashSet<Key>>,
    /// The filters each codec declared (what its devices may publish on).
    /// A std lock: held for a lookup or an insert, never across an await.
    filters: RwLock<HashMap<Key, Vec<String>>>,
    stats: Stats,
    /// Where its decoders run.
    tasks: Tasks,
}

impl Inbound {
    pub(crate) fn new(
        tasks: &Tasks,
        plugins: PluginHost,
        mqtt: MqttHandle,
        fleet: Fleet,
        telemetry: Telemetry,
    ) -> Self {
        Self(Arc::new(Inner {
            plugins,
            mqtt,
            fleet,
            telemetry,
            commands: OnceLock::new(),
            listening: Mutex::default(),
            filters: RwLock::default(),
            stats: Stats::default(),
            tasks: tasks.clone(),
        }))
    }

    /// The command engine, for acks and commands (set once, after it
    /// starts: it needs the fleet, which needs this).
    pub(crate) fn set_commands(&self, commands: Commands) {
        let _ = self.0.commands.set(commands);
    }

    /// Starts decoding the traffic of a dialect, once per codec and
    /// configuration; the codec says which filters to listen on.
    pub(crate) fn listen(&self, dialect: &DeviceDialect) {
        if dialect.is_default() {
            return;
        }
        let key: Key = (dialect.plugin.clone(), dialect.config.clone());
        if !self.claim(&key) {
            return;
        }
        let inner = self.0.clone();
        self.0.tasks.spawn(async move {
            let info = match inner.plugins.describe_codec(&key.0, &key.1).await {
                Ok(info) => info,
                Err(error) => {
                    tracing::warn!(plugin = %key.0, %error, "codec cannot say what it listens on; its messages are not read");
                    inner.listening.lock().unwrap().remove(&key);
                    return;
                }
            };
            register(&inner, key, info.filters);
        });
    }

    /// [`listen`](Self::listen) for a dialect whose codec has just said
    /// what it listens on (the check before a device is given it): its
    /// filters are tapped before the device is answered for, so the
    /// device's first message is read.
    pub(crate) fn listen_known(&self, plugin: &str, config: &str, filters: &[String]) {
        if crate::dialect::is_default(plugin, config) {
            return;
        }
        let key: Key = (Arc::from(plugin), Arc::from(config));
        if self.claim(&key) {
            register(&self.0, key, filters.to_vec());
        }
    }

    /// Whether this codec and configuration are not read yet (and now
    /// will be, by the caller).
    fn claim(&self, key: &Key) -> bool {
        self.0.listening.lock().unwrap().insert(key.clone())
    }

    /// Whether a device of `dialect` may publish on `topic`: a topic one
    /// of its codec's filters matches.
    pub(crate) fn may_publish(&self, dialect: &DeviceDialect, topic: &str) -> bool {
        let key: Key = (dialect.plugin.clone(), dialect.config.clone());
        self.0
            .filters
            .read()
            .unwrap()
            .get(&key)
            .is_some_and(|filters| {
                filters
                    .iter()
                    .any(|f| crate::mqtt::topics::matches(f, topic))
            })
    }

    pub(crate) fn counters(&self) -> InboundCounters {
        let s = &self.0.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        InboundCounters {
            dialects: self.0.listening.lock().unwrap().len() as u64,
            decoded: n(&s.decoded),
            not_mine: n(&s.not_mine),
            failed: n(&s.failed),
            readings: n(&s.readings),
            acks: n(&s.acks),
            acks_unknown: n(&s.acks_unknown),
            reported: n(&s.reported),
            commands: n(&s.commands),
            unknown_device: n(&s.unknown_device),
            refused: n(&s.refused),
            dropped: n(&s.dropped),
        }
    }
}

/// Taps the filters a codec declared and starts decoding what comes in.
fn register(inner: &Arc<Inner>, key: Key, filters: Vec<String>) {
    tracing::debug!(plugin = %key.0, ?filters, "reading client publishes in a dialect");
    inner
        .filters
        .write()
        .unwrap()
        .insert(key.clone(), filters.clone());
    for filter in filters {
        if crate::mqtt::topics::valid_filter(&filter).is_err() {
            tracing::warn!(plugin = %key.0, %filter, "codec declared a filter that is not valid; skipped");
            continue;
        }
        let rx = inner
            .mqtt
            .tap(&filter, TAP_CAPACITY, inner.stats.dropped.clone());
        inner
            .tasks
            .spawn(follow(Arc::downgrade(inner), key.clone(), rx));
    }
}

async fn follow(
    inner: std::sync::Weak<Inner>,
    key: Key,
    mut rx: tokio::sync::mpsc::Receiver<Tapped>,
) {
    while let Some(message) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.take(&key, message).await;
    }
}

impl Inner {
    async fn take(&self, key: &Key, message: Tapped) {
        // The sender: the device whose credentials the client used, when
        // it speaks this dialect.
        let who = message.user.as_deref().unwrap_or(&message.client_id);
        let publisher = self.fleet.dialect_of(who);
        // A device speaks for itself only; other clients (a back end, an
        // admin, a SCADA host) may name any device.
        let publisher_is_device = publisher.is_some();
        let sender = publisher.filter(|(d, _)| d.plugin == key.0 && d.config == key.1);
        let now = self.fleet.now_ms();
        let mut ctx = CallContext {
            now,
            slots: Vec::new(),
        };
        // The sender's codec state is held for the call, as in encode.
        let mut memory = match &sender {
            Some((dialect, _)) => Some(dialect.memory().await),
            None => None,
        };
        let mut state = Vec::new();
        if let (Some((dialect, shared)), Some(memory)) = (&sender, memory.as_mut()) {
            state = memory.state.clone();
            ctx.slots.push(DeviceSlot {
                rng: dialect.rng(memory),
                state: Some(shared.clone()),
                deferred: None,
            });
        }
        let request = DecodeRequest {
            topic: message.topic.to_string(),
            payload: message.payload.to_vec(),
            sender: sender.as_ref().map(|(d, _)| d.info.clone()),
            state,
        };
        let (result, ctx) = self
            .plugins
            .decode(&key.0, key.1.clone(), ctx, request)
            .await;
        if let (Some(memory), Some(slot)) = (memory.as_mut(), ctx.slots.into_iter().next()) {
            memory.rng = Some(slot.rng);
        }
        let events = match result {
            Ok(Decoded::NotMine) => {
                self.stats.not_mine.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Decoded::Events(events, new_state)) => {
                if let Some(memory) = memory.as_mut() {
                    memory.state = new_state;
                }
                self.stats.decoded.fetch_add(1, Ordering::Relaxed);
                events
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                crate::ratelimit::warn_limited!(plugin = %key.0, topic = %message.topic, %error, "codec could not read a message; dropped");
                return;
            }
        };
        // Filing the events may call the codec of this very device (an ack
        // that completes a command, which is then answered): let go first.
        drop(memory);
        let sender_id = sender.as_ref().map(|(d, _)| d.info.id.clone());
        for (device, event) in events {
            let Some(device) = device.or_else(|| sender_id.clone()) else {
                self.stats.unknown_device.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if publisher_is_device && device != who {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                crate::ratelimit::warn_limited!(publisher = %who, %device, topic = %message.topic, "a device published for another device; ignored");
                continue;
            }
            // A device publishing for itself was found above.
            if !publisher_is_device && self.fleet.dialect_of(&device).is_none() {
                self.stats.unknown_device.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.file(&device, event).await;
        }
    }

    /// Files one event of `device` where the same event of an iotmock
    /// device goes.
    async fn file(&self, device: &str, event: CodecEvent) {
        match event {
            CodecEvent::Readings(readings) => {
                let device: Arc<str> = Arc::from(device);
                let readings: Vec<Reading> = readings
                    .into_iter()
                    .filter(|r| r.value.is_finite())
                    .map(|r| Reading {
                        device: device.clone(),
                        sensor: Arc::from(r.sensor.as_str()),
                        ts: r.ts,
                        value: r.value,
                        unit_json: Arc::from(
                            serde_json::to_string(&r.unit).unwrap_or_else(|_| "\"\"".into()),
                        ),
                        anomaly: r.anomaly,
                    })
                    .collect();
                self.stats
                    .readings
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
                self.telemetry.observed(readings);
            }
            CodecEvent::Ack {
                command_id,
                status,
                result,
            } => {
                let Some(commands) = self.commands.get() else {
                    return;
                };
                let ack = DeviceAck {
                    status: status.into(),
                    result: result.map(|r| serde_json::from_str(&r).unwrap_or(Value::String(r))),
                };
                match commands
                    .ack_from(device, &command_id, ack, AckSource::Mqtt)
                    .await
                {
                    Ok(_) => self.stats.acks.fetch_add(1, Ordering::Relaxed),
                    Err(_) => self.stats.acks_unknown.fetch_add(1, Ordering::Relaxed),
                };
            }
            CodecEvent::Reported(text) => {
                let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&text) else {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let body: Map<String, Value> = body;
                match self.fleet.report(device, body, ReportMode::Merge).await {
                    Ok(_) => self.stats.reported.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        crate::ratelimit::warn_limited!(%device, %error, "reported state refused");
                        self.stats.refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            CodecEvent::Command {
                id, name, params, ..
            } => {
                let Some(commands) = self.commands.get() else {
                    return;
                };
                let request = CommandRequest {
                    id: Some(id).filter(|i| !i.is_empty()),
                    name,
                    params: serde_json::from_str(&params).ok(),
                    timeout_ms: None,
                    retries: None,
                    backoff_ms: None,
                    ttl_ms: None,
                    complete_on: None,
                };
                match commands
                    .submit_as(device, request, Origin::Mqtt, None)
                    .await
                {
                    Ok(_) => self.stats.commands.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        crate::ratelimit::warn_limited!(%device, %error, "command read from a dialect refused");
                        self.stats.refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            // Asked to say again that it is online (a rebirth): only a
            // simulated device is the host's to announce; a real device's
            // connectivity is its connection's.
            CodecEvent::Status(true) => self.fleet.announce_again(device).await,
            CodecEvent::Status(false) => {}
        }
    }
}
