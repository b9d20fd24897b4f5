//! Telemetry: one scheduler for the whole fleet turns simulated time into
//! sensor-plugin calls and publishes the readings through the broker's
//! in-process link.
//!
//! It owns the per-(device, sensor) streams: their next due time, plugin
//! state and random stream. It does not own devices (the fleet does) nor
//! run plugins (the plugin host does).

mod ingest;
mod journal;
mod live;
mod presence;
mod reading;
mod scheduler;
pub(crate) mod spec;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub(crate) use journal::{ExportFilter, JOURNAL_CAPACITY, JOURNAL_MAX_BYTES};
pub(crate) use live::{
    DEFAULT_QUEUE, DEFAULT_STREAM_MAX_BYTES, LiveFilter, LiveItem, LiveSubscription, MAX_QUEUE,
};
pub(crate) use presence::Presence;
pub use reading::Reading;
pub(crate) use scheduler::{BufferCounters, OfflineBuffer, StreamSpec};
pub(crate) use spec::{SensorSpec, check_sensor};

use crate::clock::Clock;
use crate::mqtt::MqttHandle;
use crate::plugin::PluginHost;
use crate::tasks::Tasks;

/// Control messages waiting for the scheduler; senders wait when full.
const CONTROL_CAPACITY: usize = 1024;

/// How much telemetry may hold for readers.
#[derive(Debug, Clone, Copy)]
pub struct TelemetryLimits {
    /// Readings kept in the export journal.
    pub journal_capacity: usize,
    /// Bytes kept in the export journal.
    pub journal_max_bytes: usize,
    /// Bytes all live stream subscribers' queues may hold together.
    pub stream_max_bytes: usize,
}

impl Default for TelemetryLimits {
    fn default() -> Self {
        Self {
            journal_capacity: JOURNAL_CAPACITY,
            journal_max_bytes: JOURNAL_MAX_BYTES,
            stream_max_bytes: DEFAULT_STREAM_MAX_BYTES,
        }
    }
}

/// Counters visible in the API. Every reading that was due and not
/// published is counted under one of the `*_failed` / `dropouts` fields.
#[derive(Debug, Default)]
pub(crate) struct TelemetryStats {
    pub published: AtomicU64,
    /// Readings the sensor model left out (value none): simulated dropouts.
    pub dropouts: AtomicU64,
    /// Readings lost because the plugin call failed (trap, timeout, missing
    /// plugin, rejected config).
    pub sample_failed: AtomicU64,
    /// Readings whose value was not a finite number.
    pub invalid_values: AtomicU64,
    /// Readings lost because the device's codec (dialect) call failed.
    pub encode_failed: AtomicU64,
    pub plugin_calls: AtomicU64,
    /// Readings waiting in offline buffers now.
    pub buffered: AtomicU64,
    /// Readings an offline buffer had no room for (by its policy).
    pub buffer_dropped: AtomicU64,
    /// Buffered readings thrown away because their device was removed.
    pub buffer_discarded: AtomicU64,
    /// Recent published readings, for export. A std mutex: held for one
    /// push or one scan, never across an await.
    pub journal: std::sync::Mutex<journal::Journal>,
    /// Live subscribers (`GET /telemetry/stream`).
    pub live: Arc<live::Hub>,
    /// Sees every published reading (edge nodes); set once.
    pub tap: std::sync::OnceLock<Arc<dyn ReadingTap>>,
}

impl TelemetryStats {
    /// Keeps a published reading (or a dropout record) in the journal and
    /// hands it to the live subscribers with its sequence number, under the
    /// journal lock, so subscribers see sequence numbers in order.
    pub(crate) fn keep(&self, reading: Reading) {
        let mut journal = self.journal.lock().unwrap();
        self.live.offer(journal.next_seq(), &reading);
        journal.push(reading);
    }

    /// A reading went out on MQTT: counted, shown to the edge nodes, kept.
    pub(crate) fn published(&self, reading: Reading) {
        self.published.fetch_add(1, Ordering::Relaxed);
        if let Some(tap) = self.tap.get() {
            tap.reading(&reading);
        }
        self.keep(reading);
    }
}

/// Something that sees every reading as it is published (edge nodes). It
/// is called on the scheduler's task, so it must be quick and not block.
pub(crate) trait ReadingTap: Send + Sync + std::fmt::Debug {
    fn reading(&self, reading: &Reading);
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct TelemetryCounters {
    pub streams: u64,
    pub published: u64,
    pub dropouts: u64,
    pub sample_failed: u64,
    pub invalid_values: u64,
    /// Readings lost because the device's codec (dialect) call failed
    /// (trap, timeout, missing plugin, rejected config).
    pub encode_failed: u64,
    pub plugin_calls: u64,
    pub buffered: u64,
    pub buffer_dropped: u64,
    pub buffer_discarded: u64,
    /// Live stream subscribers now.
    pub stream_subscribers: u64,
    /// Readings live stream subscribers missed because they fell behind
    /// (each was told how many, where).
    pub stream_missed: u64,
    /// Readings live stream subscribers missed because the queues of all
    /// subscribers together had spent their byte budget (part of
    /// `stream_missed`).
    pub stream_missed_by_bytes: u64,
    /// Bytes queued for live stream subscribers now, over all of them.
    pub stream_queued_bytes: u64,
    /// The byte budget of all live stream queues together
    /// (`--stream-max-bytes`).
    pub stream_max_bytes: u64,
    /// Entries (readings and dropout records) in the export journal now, its capacity, and how many it
    /// has evicted.
    pub journal_len: u64,
    pub journal_capacity: u64,
    pub journal_evicted: u64,
    /// The export journal's bounds and counters, bytes included.
    pub journal: crate::journal::JournalStats,
    /// Simulated time up to which every due reading has been produced.
    pub produced_until: i64,
}

enum Control {
    Add(Vec<StreamSpec>),
    RemoveDevice(String),
    /// A device's offline buffer changed: apply it to its streams now,
    /// then answer.
    SetBuffer(String, OfflineBuffer, tokio::sync::oneshot::Sender<()>),
    /// A device came back online: publish what it buffered.
    Flush,
}

/// A handle on the telemetry scheduler; cheap to clone.
#[derive(Clone)]
pub(crate) struct Telemetry {
    control: mpsc::Sender<Control>,
    stats: Arc<TelemetryStats>,
    streams: Arc<AtomicU64>,
    progress: watch::Receiver<i64>,
}

impl Telemetry {
    /// Starts the scheduler task; it ends when every handle is dropped
    /// or the server stops.
    pub(crate) fn start(
        tasks: &Tasks,
        clock: Clock,
        plugins: PluginHost,
        mqtt: MqttHandle,
        seed: u64,
        limits: TelemetryLimits,
    ) -> Self {
        let (control, rx) = mpsc::channel(CONTROL_CAPACITY);
        let stats = Arc::new(TelemetryStats {
            journal: std::sync::Mutex::new(journal::Journal::new(
                limits.journal_capacity,
                limits.journal_max_bytes,
            )),
            live: Arc::new(live::Hub::new(limits.stream_max_bytes)),
            ..TelemetryStats::default()
        });
        let streams = Arc::new(AtomicU64::new(0));
        let (progress_tx, progress) = watch::channel(clock.now_ms());
        let scheduler = scheduler::Scheduler::new(
            clock,
            plugins,
            mqtt,
            seed,
            stats.clone(),
            streams.clone(),
            progress_tx,
        );
        tasks.spawn(scheduler.run(rx));
        Self {
            control,
            stats,
            streams,
            progress,
        }
    }

    /// Starts producing readings for these streams from the current time.
    pub(crate) async fn add(&self, streams: Vec<StreamSpec>) {
        let _ = self.control.send(Control::Add(streams)).await;
    }

    /// Stops every stream of a device.
    pub(crate) async fn remove_device(&self, device: &str) {
        let _ = self
            .control
            .send(Control::RemoveDevice(device.to_string()))
            .await;
    }

    /// Changes a device's offline buffer in place; readings beyond a smaller
    /// capacity give way by the new policy and are counted as dropped.
    /// Returns once the change is applied.
    pub(crate) async fn set_buffer(&self, device: &str, buffer: OfflineBuffer) {
        let (done, applied) = tokio::sync::oneshot::channel();
        let message = Control::SetBuffer(device.to_string(), buffer, done);
        if self.control.send(message).await.is_ok() {
            let _ = applied.await;
        }
    }

    /// Subscribes to readings as they are published, with a queue of
    /// `capacity` readings (see [`live`](self::live) for what happens when
    /// it is full).
    pub(crate) fn subscribe(&self, filter: LiveFilter, capacity: usize) -> LiveSubscription {
        self.stats.live.subscribe(filter, capacity)
    }

    /// Subscribes like [`subscribe`](Self::subscribe), and answers what the
    /// journal still holds after sequence number `after` for the same
    /// filter. The subscription starts first, so a reading is in the
    /// replay, in the subscription, or in both (then with a sequence number
    /// the replay already passed): none falls between.
    pub(crate) fn resume(
        &self,
        filter: LiveFilter,
        capacity: usize,
        after: u64,
    ) -> (LiveSubscription, journal::Replay) {
        let replay_filter = filter.clone();
        let subscription = self.stats.live.subscribe(filter, capacity);
        let replay = self
            .stats
            .journal
            .lock()
            .unwrap()
            .replay(after, |r| replay_filter.wants(r));
        (subscription, replay)
    }

    /// Recent readings matching `filter`, oldest first, and the cursor for
    /// the next page when `limit` cut the answer short.
    pub(crate) fn export(&self, filter: &ExportFilter) -> (Vec<Reading>, Option<u64>) {
        self.stats.journal.lock().unwrap().export(filter)
    }

    /// Tells the scheduler a device is back online, so its buffered
    /// readings go out now rather than at the next due reading.
    pub(crate) async fn flush(&self) {
        let _ = self.control.send(Control::Flush).await;
    }

    /// Hands every reading published from now on to `tap` as well. Only the
    /// first tap set is kept; false if one was set before.
    pub(crate) fn set_tap(&self, tap: Arc<dyn ReadingTap>) -> bool {
        self.stats.tap.set(tap).is_ok()
    }

    /// Simulated time up to which every due reading has been published.
    pub(crate) fn produced_until(&self) -> i64 {
        *self.progress.borrow()
    }

    /// Waits until every reading due at or before `t` has been published.
    pub(crate) async fn wait_produced(&self, t: i64) {
        let mut progress = self.progress.clone();
        let _ = progress.wait_for(|p| *p >= t).await;
    }

    pub(crate) fn counters(&self) -> TelemetryCounters {
        let journal = self.stats.journal.lock().unwrap().stats();
        let (stream_queued_bytes, stream_max_bytes) = self.stats.live.bytes();
        let s = &self.stats;
        TelemetryCounters {
            streams: self.streams.load(Ordering::Relaxed),
            published: s.published.load(Ordering::Relaxed),
            dropouts: s.dropouts.load(Ordering::Relaxed),
            sample_failed: s.sample_failed.load(Ordering::Relaxed),
            invalid_values: s.invalid_values.load(Ordering::Relaxed),
            encode_failed: s.encode_failed.load(Ordering::Relaxed),
            plugin_calls: s.plugin_calls.load(Ordering::Relaxed),
            buffered: s.buffered.load(Ordering::Relaxed),
            buffer_dropped: s.buffer_dropped.load(Ordering::Relaxed),
            buffer_discarded: s.buffer_discarded.load(Ordering::Relaxed),
            stream_subscribers: s.live.subscribers() as u64,
            stream_missed: s.live.missed.load(Ordering::Relaxed),
            stream_missed_by_bytes: s.live.missed_by_bytes.load(Ordering::Relaxed),
            stream_queued_bytes: stream_queued_bytes as u64,
            stream_max_bytes: stream_max_bytes as u64,
            journal_len: journal.len as u64,
            journal_capacity: journal.capacity as u64,
            journal_evicted: journal.evicted,
            journal,
            produced_until: *self.progress.borrow(),
        }
    }
}
