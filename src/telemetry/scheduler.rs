//! The fleet's one timer structure: a min-heap of (due time, stream). Due
//! streams are taken in rounds, at most one reading per stream per round
//! (each reading's plugin state feeds the next), grouped by (plugin,
//! config) into batched plugin calls, and published in timestamp order.
//!
//! The calls of one round run side by side, so a slow plugin delays only
//! the round it is in, never the calls of the others; a plugin that keeps
//! running to its deadline is quarantined by the plugin host and its calls
//! then fail at once (counted in `sample_failed`), so the fleet's rate
//! comes back and the backlog is caught up in the rounds that follow.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::presence::Presence;
use super::spec::SensorSpec;
use super::{Control, Reading, TelemetryStats};
use crate::clock::{Clock, ClockMode};
use crate::dialect::{DEFAULT_DIALECT, DeviceDialect, Outgoing, encode_and_publish};
use crate::mqtt::{MqttHandle, Qos, topics};
use crate::plugin::{
    CallContext, CodecEvent, CodecReading, DeviceSlot, PluginHost, SampleRequest, SharedState,
};
use crate::random::DeviceRng;

/// Most (device, time) pairs in one plugin call.
const MAX_BATCH: usize = 1024;

/// One sensor of one device, as the fleet hands it to telemetry.
#[derive(Debug, Clone)]
pub(crate) struct StreamSpec {
    pub device: String,
    pub sensor: SensorSpec,
    pub shared: Arc<SharedState>,
    pub presence: Arc<Presence>,
    pub buffer: OfflineBuffer,
    /// The device's offline-buffer counters, shared by its sensors.
    pub counters: Arc<BufferCounters>,
    /// The device's dialect: how its readings go out.
    pub dialect: Arc<DeviceDialect>,
}

/// A device's offline-buffer counters, over all its sensors.
#[derive(Debug, Default)]
pub(crate) struct BufferCounters {
    /// Readings waiting now.
    pub buffered: AtomicU64,
    /// Readings the buffer had no room for (by its policy).
    pub dropped: AtomicU64,
}

/// The largest offline buffer a device may ask for, per sensor.
pub(crate) const MAX_BUFFER_CAPACITY: usize = 100_000;

/// What happens to readings while a device is offline: they wait in a
/// bounded buffer and are published in order when it is back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub(crate) struct OfflineBuffer {
    /// Readings kept per sensor, 0 to 100,000 (default 1,000; 0 keeps
    /// nothing).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Which reading gives way when the buffer is full (default
    /// `drop_oldest`).
    #[serde(default)]
    pub policy: OverflowPolicy,
}

fn default_capacity() -> usize {
    1000
}

impl Default for OfflineBuffer {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            policy: OverflowPolicy::DropOldest,
        }
    }
}

impl OfflineBuffer {
    /// Checks the bounds, naming the field at fault.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.capacity > MAX_BUFFER_CAPACITY {
            return Err(format!(
                "buffer.capacity must be 0 to {MAX_BUFFER_CAPACITY} readings per sensor, got {}",
                self.capacity
            ));
        }
        Ok(())
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OverflowPolicy {
    /// Keep the newest readings.
    #[default]
    DropOldest,
    /// Keep the oldest readings; new ones are dropped.
    DropNewest,
}

struct Stream {
    device: Arc<str>,
    sensor: Arc<str>,
    plugin: Arc<str>,
    config: Arc<str>,
    interval_ms: i64,
    /// Each gap is `interval_ms` ± up to this, drawn from `jitter_rng`.
    jitter_ms: i64,
    jitter_rng: Option<DeviceRng>,
    topic: String,
    state: Vec<u8>,
    rng: DeviceRng,
    shared: Arc<SharedState>,
    presence: Arc<Presence>,
    buffer_policy: OfflineBuffer,
    buffered: VecDeque<Reading>,
    counters: Arc<BufferCounters>,
    dialect: Arc<DeviceDialect>,
    generation: u64,
}

impl Stream {
    /// Time from one reading to the next: the interval, moved by a draw
    /// from the stream's own jitter stream (so jitter leaves the plugin's
    /// random stream untouched).
    fn next_gap(&mut self) -> i64 {
        match &mut self.jitter_rng {
            Some(rng) if self.jitter_ms > 0 => {
                let span = (2 * self.jitter_ms + 1) as u64;
                self.interval_ms + (rng.next_u64() % span) as i64 - self.jitter_ms
            }
            _ => self.interval_ms,
        }
    }
}

type GroupKey = (Arc<str>, Arc<str>);

pub(crate) struct Scheduler {
    clock: Clock,
    plugins: PluginHost,
    mqtt: MqttHandle,
    seed: u64,
    stats: Arc<TelemetryStats>,
    stream_count: Arc<AtomicU64>,
    progress: watch::Sender<i64>,
    streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    by_device: HashMap<Arc<str>, Vec<usize>>,
    /// Streams holding offline readings, so a flush looks only at those
    /// (not at the whole fleet on every wake).
    waiting: BTreeSet<usize>,
    heap: BinaryHeap<Reverse<(i64, usize, u64)>>,
    configs: HashMap<String, Arc<str>>,
    /// Unit (as JSON) per (plugin, config), with the plugin version it was
    /// asked of; asked again when the plugin is reloaded.
    units: HashMap<GroupKey, (u64, Arc<str>)>,
    next_generation: u64,
    payload: String,
}

impl Scheduler {
    pub(super) fn new(
        clock: Clock,
        plugins: PluginHost,
        mqtt: MqttHandle,
        seed: u64,
        stats: Arc<TelemetryStats>,
        stream_count: Arc<AtomicU64>,
        progress: watch::Sender<i64>,
    ) -> Self {
        Self {
            clock,
            plugins,
            mqtt,
            seed,
            stats,
            stream_count,
            progress,
            streams: Vec::new(),
            free: Vec::new(),
            by_device: HashMap::new(),
            waiting: BTreeSet::new(),
            heap: BinaryHeap::new(),
            configs: HashMap::new(),
            units: HashMap::new(),
            next_generation: 0,
            payload: String::with_capacity(256),
        }
    }

    pub(super) async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let mut manual = (self.clock.mode() == ClockMode::Manual).then(|| self.clock.subscribe());
        loop {
            let next_due = self.heap.peek().map(|Reverse((t, _, _))| *t);
            // Control first: a device added (or removed) before the clock
            // moved is in place before the span is produced.
            tokio::select! {
                biased;
                message = control.recv() => match message {
                    Some(message) => self.apply(message),
                    None => return,
                },
                _ = wait(&self.clock, manual.as_mut(), next_due) => {}
            }
            // Every change already sent goes in before production: a
            // device's streams replaced (remove, then add) before a clock
            // advance must not have the span produced between the two.
            while let Ok(message) = control.try_recv() {
                self.apply(message);
            }
            let now = self.clock.now_ms();
            if !self.waiting.is_empty() {
                self.flush_online(now).await;
            }
            self.produce(now).await;
            self.progress.send_replace(now);
        }
    }

    fn apply(&mut self, message: Control) {
        match message {
            Control::Add(specs) => {
                // On a manual clock new streams start where production
                // stands, not where the clock is: a device created before
                // an advance gets the readings of the whole span, whenever
                // its message is read.
                let now = if self.clock.mode() == ClockMode::Manual {
                    *self.progress.borrow()
                } else {
                    self.clock.now_ms()
                };
                for spec in specs {
                    self.add(spec, now);
                }
            }
            Control::Flush => {}
            Control::SetBuffer(device, buffer, done) => {
                for &idx in self.by_device.get(device.as_str()).into_iter().flatten() {
                    let Some(stream) = self.streams[idx].as_mut() else {
                        continue;
                    };
                    stream.buffer_policy = buffer;
                    let excess = stream.buffered.len().saturating_sub(buffer.capacity);
                    for _ in 0..excess {
                        match buffer.policy {
                            OverflowPolicy::DropOldest => stream.buffered.pop_front(),
                            OverflowPolicy::DropNewest => stream.buffered.pop_back(),
                        };
                    }
                    let excess = excess as u64;
                    self.stats.buffered.fetch_sub(excess, Ordering::Relaxed);
                    self.stats
                        .buffer_dropped
                        .fetch_add(excess, Ordering::Relaxed);
                    stream
                        .counters
                        .buffered
                        .fetch_sub(excess, Ordering::Relaxed);
                    stream.counters.dropped.fetch_add(excess, Ordering::Relaxed);
                }
                let _ = done.send(());
            }
            Control::RemoveDevice(device) => {
                for idx in self.by_device.remove(device.as_str()).unwrap_or_default() {
                    self.waiting.remove(&idx);
                    if let Some(stream) = &self.streams[idx] {
                        self.stats
                            .buffered
                            .fetch_sub(stream.buffered.len() as u64, Ordering::Relaxed);
                        stream
                            .counters
                            .buffered
                            .fetch_sub(stream.buffered.len() as u64, Ordering::Relaxed);
                        self.stats
                            .buffer_discarded
                            .fetch_add(stream.buffered.len() as u64, Ordering::Relaxed);
                    }
                    self.streams[idx] = None;
                    self.free.push(idx);
                    self.stream_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn add(&mut self, spec: StreamSpec, now: i64) {
        let sensor_name = spec.sensor.sensor_name().to_string();
        let config_text = spec.sensor.config.to_string();
        let config = self
            .configs
            .entry(config_text.clone())
            .or_insert_with(|| Arc::from(config_text))
            .clone();
        let rng = DeviceRng::derive(self.seed, &spec.device, &sensor_name);
        // The first reading falls at a seeded offset within one interval, so
        // a fleet does not report in lockstep. Drawn from a fork so the
        // plugin's stream starts untouched.
        let interval_ms = spec.sensor.interval_ms.max(1) as i64;
        let phase = DeviceRng::derive(self.seed, &spec.device, &format!("{sensor_name}/phase"))
            .fork()
            .random_range(0..interval_ms);
        let device: Arc<str> = Arc::from(spec.device.as_str());
        let jitter_ms = spec
            .sensor
            .jitter_ms
            .min(spec.sensor.interval_ms.saturating_sub(1)) as i64;
        let jitter_rng = (jitter_ms > 0)
            .then(|| DeviceRng::derive(self.seed, &spec.device, &format!("{sensor_name}/jitter")));
        self.next_generation += 1;
        let stream = Stream {
            jitter_ms,
            jitter_rng,
            counters: spec.counters,
            dialect: spec.dialect,
            topic: topics::telemetry(&spec.device, &sensor_name),
            device: device.clone(),
            sensor: Arc::from(sensor_name),
            plugin: Arc::from(spec.sensor.plugin.as_str()),
            config,
            interval_ms,
            state: Vec::new(),
            rng,
            shared: spec.shared,
            presence: spec.presence,
            buffer_policy: spec.buffer,
            buffered: VecDeque::new(),
            generation: self.next_generation,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                self.streams[idx] = Some(stream);
                idx
            }
            None => {
                self.streams.push(Some(stream));
                self.streams.len() - 1
            }
        };
        self.by_device.entry(device).or_default().push(idx);
        self.heap
            .push(Reverse((now + phase, idx, self.next_generation)));
        self.stream_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Produces every reading due at or before `now`.
    ///
    /// A round takes due readings only up to the earliest next reading of
    /// a stream already in the round, so every reading of a round is
    /// earlier than every reading of the next, and sorting within rounds
    /// publishes the whole span in timestamp order (streams with different
    /// intervals included).
    async fn produce(&mut self, now: i64) {
        loop {
            let mut round: Vec<(i64, usize, i64)> = Vec::new();
            let mut horizon = i64::MAX;
            while let Some(Reverse((due, idx, generation))) = self.heap.peek().copied() {
                if due > now || due >= horizon {
                    break;
                }
                self.heap.pop();
                if let Some(s) = self.streams[idx]
                    .as_mut()
                    .filter(|s| s.generation == generation)
                {
                    let next = due + s.next_gap();
                    horizon = horizon.min(next);
                    round.push((due, idx, next));
                }
            }
            if round.is_empty() {
                return;
            }
            self.run_round(round).await;
        }
    }

    async fn run_round(&mut self, round: Vec<(i64, usize, i64)>) {
        let mut groups: BTreeMap<GroupKey, Vec<(i64, usize)>> = BTreeMap::new();
        for &(due, idx, next) in &round {
            let s = self.streams[idx].as_ref().expect("live stream");
            groups
                .entry((s.plugin.clone(), s.config.clone()))
                .or_default()
                .push((due, idx));
            self.heap.push(Reverse((next, idx, s.generation)));
        }
        let mut calls = Vec::new();
        for (key, members) in groups {
            let unit = self.unit_for(&key).await;
            for chunk in members.chunks(MAX_BATCH) {
                let (ctx, requests) = self.prepare_chunk(chunk);
                calls.push((key.clone(), unit.clone(), chunk.to_vec(), ctx, requests));
            }
        }
        self.stats
            .plugin_calls
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        let plugins = &self.plugins;
        let answers =
            futures_util::future::join_all(calls.iter_mut().map(|(key, _, _, ctx, requests)| {
                plugins.sample(
                    &key.0,
                    key.1.clone(),
                    std::mem::take(ctx),
                    std::mem::take(requests),
                )
            }))
            .await;
        let mut readings: Vec<(i64, usize, Reading)> = Vec::new();
        for ((key, unit, chunk, _, _), (result, ctx)) in calls.into_iter().zip(answers) {
            self.finish_chunk(&key, unit, &chunk, result, ctx, &mut readings);
        }
        readings.sort_by_key(|r| (r.0, r.1));
        let mut online = Vec::with_capacity(readings.len());
        for (ts, idx, reading) in readings {
            if reading.is_dropout() {
                // Ground truth for the export and the live stream; never
                // published on MQTT.
                self.stats.keep(reading);
                continue;
            }
            let stream = self.streams[idx].as_mut().expect("live stream");
            if stream.presence.online_at(ts) {
                online.push((idx, reading));
            } else {
                self.buffer(idx, reading);
            }
        }
        self.publish_batch(online).await;
    }

    /// Publishes readings in order: those of devices on the built-in path
    /// one by one, then those of each other dialect (codec and config, in
    /// name order) through one batched encode, one request per device with
    /// its readings in time order.
    async fn publish_batch(&mut self, batch: Vec<(usize, Reading)>) {
        type Key = (Arc<str>, Arc<str>);
        // Per codec: the devices in order of their first reading, each
        // with its readings.
        let mut coded: BTreeMap<Key, (Vec<usize>, Vec<Vec<Reading>>)> = BTreeMap::new();
        let mut slot_of: HashMap<(Key, Arc<str>), usize> = HashMap::new();
        // Asked once per batch, not per reading: the default path's cost.
        let builtin = self.plugins.is_builtin(DEFAULT_DIALECT);
        for (idx, reading) in batch {
            let dialect = &self.streams[idx].as_ref().expect("live stream").dialect;
            if builtin && dialect.is_default() {
                self.publish(idx, reading).await;
                continue;
            }
            let key: Key = (dialect.plugin.clone(), dialect.config.clone());
            let group = coded.entry(key.clone()).or_default();
            let n = *slot_of
                .entry((key, reading.device.clone()))
                .or_insert_with(|| {
                    group.0.push(idx);
                    group.1.push(Vec::new());
                    group.1.len() - 1
                });
            group.1[n].push(reading);
        }
        let now = self.clock.now_ms();
        for (_, (devices, readings)) in coded {
            let items = devices
                .iter()
                .zip(&readings)
                .map(|(&idx, readings)| {
                    let s = self.streams[idx].as_ref().expect("live stream");
                    Outgoing {
                        dialect: s.dialect.clone(),
                        shared: Some(s.shared.clone()),
                        ts: readings.last().map_or(now, |r| r.ts),
                        event: CodecEvent::Readings(readings.iter().map(codec_reading).collect()),
                    }
                })
                .collect();
            let (_, done) = encode_and_publish(&self.plugins, &self.mqtt, now, items).await;
            for (ok, readings) in done.into_iter().zip(readings) {
                if ok {
                    for reading in readings {
                        self.stats.published(reading);
                    }
                } else {
                    self.stats
                        .encode_failed
                        .fetch_add(readings.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    async fn publish(&mut self, idx: usize, reading: Reading) {
        self.payload.clear();
        reading.write_json(&mut self.payload);
        let topic = &self.streams[idx].as_ref().expect("live stream").topic;
        let payload = bytes::Bytes::copy_from_slice(self.payload.as_bytes());
        self.mqtt
            .publish(topic, payload, Qos::AtMostOnce, false)
            .await;
        self.stats.published(reading);
    }

    fn buffer(&mut self, idx: usize, reading: Reading) {
        let stream = self.streams[idx].as_mut().expect("live stream");
        let policy = stream.buffer_policy;
        if stream.buffered.len() >= policy.capacity {
            self.stats.buffer_dropped.fetch_add(1, Ordering::Relaxed);
            stream.counters.dropped.fetch_add(1, Ordering::Relaxed);
            match policy.policy {
                OverflowPolicy::DropNewest => return,
                OverflowPolicy::DropOldest => {
                    if stream.buffered.pop_front().is_none() {
                        return; // capacity 0: nothing is kept
                    }
                    self.stats.buffered.fetch_sub(1, Ordering::Relaxed);
                    stream.counters.buffered.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        stream.buffered.push_back(reading);
        self.waiting.insert(idx);
        self.stats.buffered.fetch_add(1, Ordering::Relaxed);
        stream.counters.buffered.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes what every online device buffered while it was away, in
    /// timestamp order.
    async fn flush_online(&mut self, now: i64) {
        let mut pending: Vec<(i64, usize, Reading)> = Vec::new();
        let waiting = std::mem::take(&mut self.waiting);
        for idx in waiting {
            let Some(stream) = self.streams[idx].as_mut() else {
                continue;
            };
            if stream.presence.online_at(now) {
                stream
                    .counters
                    .buffered
                    .fetch_sub(stream.buffered.len() as u64, Ordering::Relaxed);
                pending.extend(stream.buffered.drain(..).map(|r| (r.ts, idx, r)));
            } else {
                self.waiting.insert(idx);
            }
        }
        if pending.is_empty() {
            return;
        }
        self.stats
            .buffered
            .fetch_sub(pending.len() as u64, Ordering::Relaxed);
        pending.sort_by_key(|r| (r.0, r.1));
        let pending = pending.into_iter().map(|(_, idx, r)| (idx, r)).collect();
        self.publish_batch(pending).await;
    }

    /// Takes the random streams and plugin states of a chunk's streams into
    /// one call's context and requests (they come back in
    /// [`finish_chunk`](Self::finish_chunk)).
    fn prepare_chunk(&mut self, chunk: &[(i64, usize)]) -> (CallContext, Vec<SampleRequest>) {
        let mut ctx = CallContext {
            now: self.clock.now_ms(),
            slots: Vec::with_capacity(chunk.len()),
        };
        let mut requests = Vec::with_capacity(chunk.len());
        for (slot, &(due, idx)) in chunk.iter().enumerate() {
            let s = self.streams[idx].as_mut().expect("live stream");
            ctx.slots.push(DeviceSlot {
                rng: std::mem::replace(&mut s.rng, DeviceRng::placeholder()),
                state: Some(s.shared.clone()),
                // Committed in finish_chunk, after every call of the round.
                deferred: Some(Vec::new()),
            });
            requests.push(SampleRequest {
                device: slot as u32,
                ts: due,
                state: std::mem::take(&mut s.state),
            });
        }
        (ctx, requests)
    }

    /// Gives the streams back their random streams and new states, and
    /// turns the samples into readings.
    fn finish_chunk(
        &mut self,
        key: &GroupKey,
        unit: Option<Arc<str>>,
        chunk: &[(i64, usize)],
        result: Result<Vec<crate::plugin::Sample>, crate::plugin::CallError>,
        ctx: CallContext,
        readings: &mut Vec<(i64, usize, Reading)>,
    ) {
        if ctx.slots.len() == chunk.len() {
            for (slot, &(_, idx)) in ctx.slots.into_iter().zip(chunk) {
                self.streams[idx].as_mut().expect("live stream").rng = slot.commit();
            }
        }
        let (samples, unit) = match (result, unit) {
            (Ok(samples), Some(unit)) => (samples, unit),
            (Err(error), _) => {
                tracing::debug!(plugin = %key.0, %error, readings = chunk.len(), "sensor call failed");
                self.stats
                    .sample_failed
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                return;
            }
            (Ok(_), None) => {
                self.stats
                    .sample_failed
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                return;
            }
        };
        for (sample, &(due, idx)) in samples.into_iter().zip(chunk) {
            let s = self.streams[idx].as_mut().expect("live stream");
            s.state = sample.state;
            match sample.value {
                None => {
                    self.stats.dropouts.fetch_add(1, Ordering::Relaxed);
                    readings.push((
                        due,
                        idx,
                        Reading::dropout(s.device.clone(), s.sensor.clone(), due, unit.clone()),
                    ));
                }
                Some(v) if !v.is_finite() => {
                    self.stats.invalid_values.fetch_add(1, Ordering::Relaxed);
                }
                Some(value) => readings.push((
                    due,
                    idx,
                    Reading {
                        device: s.device.clone(),
                        sensor: s.sensor.clone(),
                        ts: due,
                        value,
                        unit_json: unit.clone(),
                        anomaly: sample.anomaly,
                    },
                )),
            }
        }
    }

    /// The unit for a (plugin, config), asked of the plugin once per
    /// plugin version.
    async fn unit_for(&mut self, key: &GroupKey) -> Option<Arc<str>> {
        let version = self.plugins.version(&key.0)?;
        if let Some((v, unit)) = self.units.get(key)
            && *v == version
        {
            return Some(unit.clone());
        }
        match self.plugins.describe_sensor(&key.0, &key.1).await {
            Ok(info) => {
                let unit: Arc<str> = Arc::from(serde_json::to_string(&info.unit).ok()?);
                self.units.insert(key.clone(), (version, unit.clone()));
                Some(unit)
            }
            Err(error) => {
                crate::ratelimit::warn_limited!(plugin = %key.0, %error, "sensor plugin cannot describe its readings");
                None
            }
        }
    }
}

/// A reading as a codec gets it: the unit as plain text.
fn codec_reading(r: &Reading) -> CodecReading {
    CodecReading {
        sensor: r.sensor.to_string(),
        ts: r.ts,
        value: r.value,
        unit: serde_json::from_str::<String>(&r.unit_json).unwrap_or_default(),
        anomaly: r.anomaly.clone(),
    }
}

/// On a running clock, how long (wall time) the scheduler lets due
/// readings gather after the first one falls due, so that readings due
/// within it share one round: one plugin call per sensor model and one
/// pass through publishing, instead of one each. Every reading keeps its
/// own timestamp; it goes out at most this much later.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

async fn wait(clock: &Clock, manual: Option<&mut watch::Receiver<i64>>, next_due: Option<i64>) {
    match (manual, next_due) {
        (Some(rx), _) => {
            let _ = rx.changed().await;
        }
        (None, Some(t)) => {
            clock.sleep_until(t).await;
            tokio::time::sleep(GATHER).await;
        }
        (None, None) => std::future::pending().await,
    }
}
