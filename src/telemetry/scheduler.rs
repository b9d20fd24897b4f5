//! The fleet's one timer structure: a min-heap of (due time, stream). Due
//! streams are taken in rounds, at most one reading per stream per round
//! (each reading's plugin state feeds the next), grouped by (plugin,
//! config) into batched plugin calls, and published in timestamp order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::presence::Presence;
use super::{Control, Reading, TelemetryStats};
use crate::clock::{Clock, ClockMode};
use crate::mqtt::{MqttHandle, Qos, topics};
use crate::plugin::{CallContext, DeviceSlot, PluginHost, SampleRequest, SharedState};
use crate::random::DeviceRng;
use crate::scenario::SensorSpec;

/// Most (device, time) pairs in one plugin call.
const MAX_BATCH: usize = 1024;

/// One sensor of one device, as the fleet hands it to telemetry.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub device: String,
    pub sensor: SensorSpec,
    pub shared: Arc<SharedState>,
    pub presence: Arc<Presence>,
    pub buffer: OfflineBuffer,
}

/// What happens to readings while a device is offline: they wait in a
/// bounded buffer and are published in order when it is back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct OfflineBuffer {
    /// Readings kept per sensor (default 1,000).
    pub capacity: usize,
    /// Which reading gives way when the buffer is full.
    pub policy: OverflowPolicy,
}

impl Default for OfflineBuffer {
    fn default() -> Self {
        Self {
            capacity: 1000,
            policy: OverflowPolicy::DropOldest,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Keep the newest readings.
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
    topic: String,
    state: Vec<f64>,
    rng: DeviceRng,
    shared: Arc<SharedState>,
    presence: Arc<Presence>,
    buffer_policy: OfflineBuffer,
    buffered: VecDeque<Reading>,
    generation: u64,
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
    pub fn new(
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

    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let mut manual = (self.clock.mode() == ClockMode::Manual).then(|| self.clock.subscribe());
        loop {
            let next_due = self.heap.peek().map(|Reverse((t, _, _))| *t);
            tokio::select! {
                message = control.recv() => match message {
                    Some(message) => self.apply(message),
                    None => return,
                },
                _ = wait(&self.clock, manual.as_mut(), next_due) => {}
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
                let now = self.clock.now_ms();
                for spec in specs {
                    self.add(spec, now);
                }
            }
            Control::Flush => {}
            Control::RemoveDevice(device) => {
                for idx in self.by_device.remove(device.as_str()).unwrap_or_default() {
                    self.waiting.remove(&idx);
                    if let Some(stream) = &self.streams[idx] {
                        self.stats
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
        self.next_generation += 1;
        let stream = Stream {
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
    async fn produce(&mut self, now: i64) {
        loop {
            let mut round: Vec<(i64, usize)> = Vec::new();
            while let Some(Reverse((due, idx, generation))) = self.heap.peek().copied() {
                if due > now {
                    break;
                }
                self.heap.pop();
                let live = self.streams[idx]
                    .as_ref()
                    .is_some_and(|s| s.generation == generation);
                if live {
                    round.push((due, idx));
                }
            }
            if round.is_empty() {
                return;
            }
            self.run_round(round).await;
        }
    }

    async fn run_round(&mut self, round: Vec<(i64, usize)>) {
        let mut groups: BTreeMap<GroupKey, Vec<(i64, usize)>> = BTreeMap::new();
        for (due, idx) in round {
            let s = self.streams[idx].as_ref().expect("live stream");
            groups
                .entry((s.plugin.clone(), s.config.clone()))
                .or_default()
                .push((due, idx));
        }
        let mut readings: Vec<(i64, usize, Reading)> = Vec::new();
        for (key, members) in groups {
            let unit = self.unit_for(&key).await;
            for chunk in members.chunks(MAX_BATCH) {
                self.sample_chunk(&key, unit.clone(), chunk, &mut readings)
                    .await;
            }
            for &(due, idx) in &members {
                let s = self.streams[idx].as_ref().expect("live stream");
                self.heap
                    .push(Reverse((due + s.interval_ms, idx, s.generation)));
            }
        }
        readings.sort_by_key(|r| (r.0, r.1));
        for (ts, idx, reading) in readings {
            let stream = self.streams[idx].as_mut().expect("live stream");
            if stream.presence.online_at(ts) {
                self.publish(idx, reading).await;
            } else {
                self.buffer(idx, reading);
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
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        if let Some(tap) = self.stats.tap.get() {
            tap.reading(&reading);
        }
        self.stats.journal.lock().unwrap().push(reading);
    }

    fn buffer(&mut self, idx: usize, reading: Reading) {
        let stream = self.streams[idx].as_mut().expect("live stream");
        let policy = stream.buffer_policy;
        if stream.buffered.len() >= policy.capacity {
            self.stats.buffer_dropped.fetch_add(1, Ordering::Relaxed);
            match policy.policy {
                OverflowPolicy::DropNewest => return,
                OverflowPolicy::DropOldest => {
                    if stream.buffered.pop_front().is_none() {
                        return; // capacity 0: nothing is kept
                    }
                    self.stats.buffered.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        stream.buffered.push_back(reading);
        self.waiting.insert(idx);
        self.stats.buffered.fetch_add(1, Ordering::Relaxed);
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
        for (_, idx, reading) in pending {
            self.publish(idx, reading).await;
        }
    }

    async fn sample_chunk(
        &mut self,
        key: &GroupKey,
        unit: Option<Arc<str>>,
        chunk: &[(i64, usize)],
        readings: &mut Vec<(i64, usize, Reading)>,
    ) {
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
            });
            requests.push(SampleRequest {
                device: slot as u32,
                ts: due,
                state: std::mem::take(&mut s.state),
            });
        }
        self.stats.plugin_calls.fetch_add(1, Ordering::Relaxed);
        let (result, ctx) = self
            .plugins
            .sample(&key.0, key.1.clone(), ctx, requests)
            .await;
        if ctx.slots.len() == chunk.len() {
            for (slot, &(_, idx)) in ctx.slots.into_iter().zip(chunk) {
                self.streams[idx].as_mut().expect("live stream").rng = slot.rng;
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
                tracing::warn!(plugin = %key.0, %error, "sensor plugin cannot describe its readings");
                None
            }
        }
    }
}

async fn wait(clock: &Clock, manual: Option<&mut watch::Receiver<i64>>, next_due: Option<i64>) {
    match (manual, next_due) {
        (Some(rx), _) => {
            let _ = rx.changed().await;
        }
        (None, Some(t)) => clock.sleep_until(t).await,
        (None, None) => std::future::pending().await,
    }
}
