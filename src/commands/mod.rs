//! The command engine: delivers commands to devices, follows their acks
//! through the states of [`CommandStatus`], retries with backoff, times
//! out, and holds commands for offline devices until they come back or
//! their TTL runs out.
//!
//! One std mutex guards every command ([`Core`]); operations on it are
//! synchronous and return [`Effect`]s (publish, persist, run a handler)
//! that are carried out after the lock is released. One driver task fires
//! the timers (timeouts, retries, expiries, the delayed replies of
//! simulated devices) on simulated time. Simulated devices answer through
//! their `command-handler` plugin, run on shard tasks (one device is always
//! on the same shard, so its handler calls and random draws keep their
//! order); real devices answer on `devices/{id}/acks/{command_id}`, read
//! through an in-process tap on the broker, or over HTTP.
//!
//! The engine does not own devices (the fleet does) nor run plugins (the
//! plugin host does).

mod model;
mod store;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};

pub use model::*;
pub use store::CommandStoreError;

use crate::clock::{Clock, ClockMode};
use crate::dialect::{Outgoing, encode_and_publish};
use crate::fleet::{Fleet, HandlerSpec};
use crate::mqtt::{MqttHandle, Qos, Tapped, topics};
use crate::plugin::{
    CallContext, CodecEvent, DeviceSlot, HandlerCommand, HandlerReply, Handling, PluginHost,
    ReplyStatus,
};
use crate::random::DeviceRng;
use store::CommandStore;

/// Commands one device may have waiting (queued for it while offline);
/// more are refused with an error, never dropped.
pub const DEVICE_QUEUE_CAPACITY: usize = 1_000;
/// Commands kept in final states; beyond it the oldest final ones are
/// forgotten (and counted in `evicted`). Commands not yet final are never
/// evicted.
pub const FINAL_CAPACITY: usize = 100_000;
/// Acks and device-published commands read from the broker that may wait
/// for the engine; beyond it they are counted in `tap_dropped`.
pub const TAP_CAPACITY: usize = 65_536;
/// Handler calls that may wait per shard; senders wait when full.
const SHARD_QUEUE: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no device {0:?}")]
    NoDevice(String),
    #[error("no command {0:?}")]
    NotFound(String),
    #[error("no fleet command {0:?}")]
    NoBatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "device {device:?} already has {capacity} commands waiting; wait for it to come online or cancel some"
    )]
    QueueFull { device: String, capacity: usize },
    #[error(transparent)]
    Store(#[from] CommandStoreError),
}

/// Counters for `/health` and `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    submitted: AtomicU64,
    deliveries: AtomicU64,
    retries: AtomicU64,
    acks: AtomicU64,
    acks_ignored: AtomicU64,
    acks_unknown: AtomicU64,
    acks_invalid: AtomicU64,
    handler_errors: AtomicU64,
    evicted: AtomicU64,
    store_errors: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandCounters {
    pub submitted: u64,
    /// Sends to devices, retries included.
    pub deliveries: u64,
    pub retries: u64,
    pub acks: u64,
    /// Acks that moved nothing: duplicates, progress, late ones.
    pub acks_ignored: u64,
    /// Acks for commands the engine does not know.
    pub acks_unknown: u64,
    /// Acks whose payload was not `{"status", "result"?}`.
    pub acks_invalid: u64,
    /// Acks and device-published commands the engine's tap had no room for.
    pub tap_dropped: u64,
    pub handler_errors: u64,
    /// Final commands forgotten to stay within the capacity.
    pub evicted: u64,
    pub store_errors: u64,
    /// Commands in each state now.
    #[schema(value_type = Object)]
    pub by_status: BTreeMap<&'static str, u64>,
}

/// A handle on the command engine; cheap to clone.
#[derive(Clone)]
pub struct Commands(Arc<Inner>);

struct Inner {
    // A std mutex: held for synchronous bookkeeping only, never across an
    // await; effects run after it is released.
    core: Mutex<Core>,
    clock: Clock,
    fleet: Fleet,
    mqtt: MqttHandle,
    /// Encodes commands and acks of devices in another dialect.
    plugins: PluginHost,
    store: Option<Arc<CommandStore>>,
    stats: Stats,
    tap_dropped: Arc<AtomicU64>,
    /// New timers or jobs: the driver looks again.
    wake: Notify,
    /// Bumped whenever the driver finishes a pass or a handler job ends.
    activity: watch::Sender<u64>,
    /// Simulated time up to which every timer has fired.
    processed_until: AtomicI64,
    pending_jobs: AtomicU64,
    shards: Vec<mpsc::Sender<Job>>,
}

struct Core {
    commands: HashMap<Arc<str>, Rec>,
    /// Creation order (seq → id): listing and eviction.
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    /// Per device, commands waiting for it to come online, oldest first.
    queues: HashMap<String, VecDeque<Arc<str>>>,
    /// Per device, commands delivered and not final, oldest first.
    inflight: HashMap<String, Vec<Arc<str>>>,
    /// HTTP devices waiting in a long-poll, by device.
    pollers: HashMap<String, Arc<Notify>>,
    timers: BinaryHeap<Reverse<(i64, u64, Timer)>>,
    timer_seq: u64,
    batches: HashMap<String, Batch>,
    finals: usize,
    /// New commands whose first write is under way: nothing about them
    /// leaves the engine (a queued one is not delivered, an HTTP device
    /// does not fetch it) until it is stored.
    unstored: HashSet<Arc<str>>,
}

struct Batch {
    name: String,
    ids: Vec<Arc<str>>,
}

/// What an API change of a command replaced, to put back when the change
/// cannot be stored.
struct Undo {
    view: CommandView,
    version: u64,
    /// Where the command stood in its device's queue.
    queue_at: Option<usize>,
}

struct Rec {
    view: CommandView,
    seq: u64,
    version: u64,
    /// When the attempt in flight times out.
    deadline: Option<i64>,
    /// The attempt an HTTP device last fetched.
    http_fetched: u32,
    status: watch::Sender<CommandStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    AttemptTimeout {
        id: Arc<str>,
        attempt: u32,
    },
    Retry {
        id: Arc<str>,
        attempt: u32,
    },
    Expire {
        id: Arc<str>,
    },
    /// A simulated device's reply, due now.
    Reply {
        id: Arc<str>,
        device: String,
        attempt: u32,
        status: AckStatus,
        result: Option<String>,
    },
    GoOffline {
        device: String,
    },
    BackOnline {
        device: String,
    },
}

/// What an operation on the core asks to be done once the lock is free.
enum Effect {
    /// Publish the command to the device, and run its handler when it is
    /// simulated.
    Send {
        device: String,
        message: CommandMessage,
        at: i64,
    },
    /// Publish a simulated device's ack.
    PublishAck {
        device: String,
        id: Arc<str>,
        payload: String,
    },
    Persist {
        seq: u64,
        version: u64,
        deadline: Option<i64>,
        view: Box<CommandView>,
    },
    Forget(Arc<str>),
    SetOnline {
        device: String,
        online: bool,
    },
}

/// A simulated device's handler call for a command sent at `at`.
struct Job {
    device: String,
    message: CommandMessage,
    at: i64,
}

impl Commands {
    /// Starts the engine: loads stored commands when `data_dir` is given,
    /// taps the broker for acks, follows the fleet's connectivity.
    pub async fn start(
        data_dir: Option<&Path>,
        clock: Clock,
        fleet: Fleet,
        mqtt: MqttHandle,
        plugins: PluginHost,
        seed: u64,
        shards: usize,
    ) -> Result<Self, CommandError> {
        let store = match data_dir {
            Some(dir) => Some(Arc::new(CommandStore::open(dir)?)),
            None => None,
        };
        let tap_dropped = Arc::new(AtomicU64::new(0));
        let ack_rx = mqtt.tap(&topics::ack("+", "+"), TAP_CAPACITY, tap_dropped.clone());
        let cmd_rx = mqtt.tap(
            &topics::command("+", "+"),
            TAP_CAPACITY,
            tap_dropped.clone(),
        );
        let mut shard_txs = Vec::new();
        let mut shard_rxs = Vec::new();
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            shard_txs.push(tx);
            shard_rxs.push(rx);
        }
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                commands: HashMap::new(),
                order: BTreeMap::new(),
                next_seq: 1,
                queues: HashMap::new(),
                unstored: HashSet::new(),
                inflight: HashMap::new(),
                pollers: HashMap::new(),
                timers: BinaryHeap::new(),
                timer_seq: 0,
                batches: HashMap::new(),
                finals: 0,
            }),
            clock: clock.clone(),
            fleet: fleet.clone(),
            mqtt,
            plugins: plugins.clone(),
            store,
            stats: Stats::default(),
            tap_dropped,
            wake: Notify::new(),
            activity: watch::Sender::new(0),
            processed_until: AtomicI64::new(i64::MIN),
            pending_jobs: AtomicU64::new(0),
            shards: shard_txs,
        });
        let commands = Commands(inner);
        commands.restore()?;
        for rx in shard_rxs {
            tokio::spawn(run_shard(
                Arc::downgrade(&commands.0),
                rx,
                plugins.clone(),
                seed,
            ));
        }
        tokio::spawn(run_driver(Arc::downgrade(&commands.0)));
        tokio::spawn(follow_acks(Arc::downgrade(&commands.0), ack_rx));
        tokio::spawn(follow_device_commands(Arc::downgrade(&commands.0), cmd_rx));
        tokio::spawn(follow_presence(
            Arc::downgrade(&commands.0),
            fleet.presence_events(),
        ));
        tokio::spawn(follow_subscriptions(
            Arc::downgrade(&commands.0),
            commands.0.mqtt.subscriptions(),
        ));
        Ok(commands)
    }

    /// Brings stored commands back: queued ones wait again (or go out if
    /// their device is online), in-flight ones get their timeout re-armed.
    fn restore(&self) -> Result<(), CommandError> {
        let Some(store) = &self.0.store else {
            return Ok(());
        };
        let stored = store.load_all()?;
        let count = stored.len();
        let now = self.0.clock.now_ms();
        let mut effects = Vec::new();
        {
            let mut core = self.0.core.lock().unwrap();
            for s in stored {
                let id: Arc<str> = s.view.id.as_str().into();
                core.next_seq = core.next_seq.max(s.seq + 1);
                if let Some(batch) = &s.view.batch {
                    core.batches
                        .entry(batch.clone())
                        .or_insert_with(|| Batch {
                            name: s.view.name.clone(),
                            ids: Vec::new(),
                        })
                        .ids
                        .push(id.clone());
                }
                let status = s.view.status;
                let device = s.view.device.clone();
                let attempts = s.view.attempts;
                core.order.insert(s.seq, id.clone());
                core.commands.insert(
                    id.clone(),
                    Rec {
                        seq: s.seq,
                        version: 1 << 32,
                        deadline: s.deadline,
                        http_fetched: 0,
                        status: watch::Sender::new(status),
                        view: s.view,
                    },
                );
                match status {
                    s if s.is_final() => core.finals += 1,
                    CommandStatus::Queued => {
                        core.queues.entry(device).or_default().push_back(id.clone());
                        let expires = core.commands[&id].view.expires_at;
                        core.schedule(expires, Timer::Expire { id });
                    }
                    _ => {
                        core.inflight.entry(device).or_default().push(id.clone());
                        let deadline = core.commands[&id].deadline.unwrap_or(now);
                        core.schedule(
                            deadline,
                            Timer::AttemptTimeout {
                                id,
                                attempt: attempts,
                            },
                        );
                    }
                }
            }
            // Devices online now take their queued commands.
            let devices: Vec<String> = core.queues.keys().cloned().collect();
            for device in devices {
                if self.0.deliverable(&device) {
                    self.0.deliver_queued(&mut core, &device, now, &mut effects);
                }
            }
        }
        if count > 0 {
            tracing::info!(commands = count, "commands restored from the store");
        }
        // Effects of a restore are publishes and writes; run them on the
        // runtime (start is async, so there is one).
        let inner = self.0.clone();
        tokio::spawn(async move { inner.run_effects(effects).await });
        self.0.wake.notify_one();
        Ok(())
    }

    /// Sends a command to one device.
    pub async fn submit(
        &self,
        device: &str,
        request: CommandRequest,
    ) -> Result<CommandView, CommandError> {
        self.submit_as(device, request, Origin::Api, None).await
    }

    /// Sends a command to one device on behalf of `origin`.
    pub async fn submit_as(
        &self,
        device: &str,
        request: CommandRequest,
        origin: Origin,
        batch: Option<&str>,
    ) -> Result<CommandView, CommandError> {
        let checked = check_request(&request)?;
        let target = self
            .0
            .fleet
            .command_target(device)
            .map_err(|_| CommandError::NoDevice(device.to_string()))?;
        let online = self.0.deliverable_to(device, &target);
        let mut effects = Vec::new();
        let view = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let id = self.0.create(
                &mut core,
                device,
                request,
                checked,
                origin,
                batch,
                online,
                now,
                &mut effects,
            )?;
            (core.commands[&id].view.clone(), id)
        };
        let (view, id) = view;
        self.0.store_created(&[id], None, &mut effects).await?;
        self.0.wake.notify_one();
        self.0.run_effects(effects).await;
        Ok(view)
    }

    /// Sends a command to every device of a selection. Devices are
    /// resolved now; the answer lists one command per device.
    pub async fn submit_fleet(
        &self,
        request: FleetCommandRequest,
    ) -> Result<BatchView, CommandError> {
        let per_device = request.per_device();
        let checked = check_request(&per_device)?;
        let devices = self.select(&request.devices)?;
        if devices.is_empty() {
            return Err(CommandError::Invalid(
                "devices: the selection matches no device".into(),
            ));
        }
        let mut effects = Vec::new();
        let batch_id = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let batch_id = format!("batch-{:06}", core.next_seq);
            // Check every queue first: all or none.
            for device in &devices {
                let queued = core.queues.get(device).map_or(0, VecDeque::len);
                if queued >= DEVICE_QUEUE_CAPACITY {
                    return Err(CommandError::QueueFull {
                        device: device.clone(),
                        capacity: DEVICE_QUEUE_CAPACITY,
                    });
                }
            }
            let mut ids = Vec::with_capacity(devices.len());
            for device in &devices {
                let online = self.0.deliverable(device);
                let id = self.0.create(
                    &mut core,
                    device,
                    per_device.clone(),
                    checked,
                    Origin::Api,
                    Some(&batch_id),
                    online,
                    now,
                    &mut effects,
                )?;
                ids.push(id);
            }
            core.batches.insert(
                batch_id.clone(),
                Batch {
                    name: request.name.clone(),
                    ids: ids.clone(),
                },
            );
            (batch_id, ids)
        };
        let (batch_id, ids) = batch_id;
        self.0
            .store_created(&ids, Some(&batch_id), &mut effects)
            .await?;
        self.0.wake.notify_one();
        self.0.run_effects(effects).await;
        self.batch(&batch_id)
    }

    fn select(&self, selection: &Selection) -> Result<Vec<String>, CommandError> {
        let given = [
            selection.ids.is_some(),
            selection.tag.is_some(),
            selection.group.is_some(),
            selection.all.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(CommandError::Invalid(
                "devices: give exactly one of `ids`, `tag`, `group` or `all`".into(),
            ));
        }
        if let Some(ids) = &selection.ids {
            if ids.is_empty() {
                return Err(CommandError::Invalid(
                    "devices.ids: list at least one device".into(),
                ));
            }
            for id in ids {
                if self.0.fleet.is_online(id).is_none() {
                    return Err(CommandError::NoDevice(id.clone()));
                }
            }
            let mut ids = ids.clone();
            ids.dedup();
            return Ok(ids);
        }
        if selection.all == Some(false) {
            return Err(CommandError::Invalid(
                "devices.all: use `true` to select every device".into(),
            ));
        }
        let filter = crate::fleet::DeviceFilter {
            tag: selection.tag.clone(),
            group: selection.group.clone(),
            ..Default::default()
        };
        Ok(self.0.fleet.select(&filter))
    }

    pub fn get(&self, id: &str) -> Result<CommandView, CommandError> {
        let core = self.0.core.lock().unwrap();
        core.commands
            .get(id)
            .map(|r| r.view.clone())
            .ok_or_else(|| CommandError::NotFound(id.to_string()))
    }

    /// Waits up to `max` for the command to reach a final state and
    /// returns it as it is then.
    pub async fn wait(&self, id: &str, max: Duration) -> Result<CommandView, CommandError> {
        let mut rx = {
            let core = self.0.core.lock().unwrap();
            let rec = core
                .commands
                .get(id)
                .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
            rec.status.subscribe()
        };
        let _ = tokio::time::timeout(max, rx.wait_for(|s| s.is_final())).await;
        self.get(id)
    }

    /// A fleet command's per-device outcomes and summary.
    pub fn batch(&self, id: &str) -> Result<BatchView, CommandError> {
        let core = self.0.core.lock().unwrap();
        let batch = core
            .batches
            .get(id)
            .ok_or_else(|| CommandError::NoBatch(id.to_string()))?;
        let mut summary = BTreeMap::new();
        let mut commands = Vec::with_capacity(batch.ids.len());
        let mut done = true;
        for cid in &batch.ids {
            // Evicted members are gone; the summary counts what is known.
            let Some(rec) = core.commands.get(cid) else {
                continue;
            };
            let v = &rec.view;
            *summary.entry(v.status.as_str()).or_insert(0) += 1;
            done &= v.status.is_final();
            commands.push(BatchItem {
                device: v.device.clone(),
                id: v.id.clone(),
                status: v.status,
                attempts: v.attempts,
                result: v.result.clone(),
                reason: v.reason.clone(),
            });
        }
        Ok(BatchView {
            id: id.to_string(),
            name: batch.name.clone(),
            summary,
            total: batch.ids.len() as u64,
            done,
            commands,
        })
    }

    /// Waits up to `max` for every command of a fleet command to be final.
    pub async fn wait_batch(&self, id: &str, max: Duration) -> Result<BatchView, CommandError> {
        let receivers: Vec<watch::Receiver<CommandStatus>> = {
            let core = self.0.core.lock().unwrap();
            let batch = core
                .batches
                .get(id)
                .ok_or_else(|| CommandError::NoBatch(id.to_string()))?;
            batch
                .ids
                .iter()
                .filter_map(|cid| core.commands.get(cid).map(|r| r.status.subscribe()))
                .collect()
        };
        let all = async {
            for mut rx in receivers {
                let _ = rx.wait_for(|s| s.is_final()).await;
            }
        };
        let _ = tokio::time::timeout(max, all).await;
        self.batch(id)
    }

    pub fn list(&self, filter: &CommandFilter) -> Result<CommandPage, CommandError> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(CommandError::Invalid(format!(
                "limit: {limit} is out of range; use 1 to 1000"
            )));
        }
        let start = match &filter.cursor {
            None => 0,
            Some(c) => c.parse::<u64>().map_err(|_| {
                CommandError::Invalid(format!(
                    "cursor: {c:?} is not a cursor; pass `next_cursor` from the previous page"
                ))
            })?,
        };
        let core = self.0.core.lock().unwrap();
        let mut items = Vec::new();
        let mut next_cursor = None;
        for (seq, id) in core.order.range(start..) {
            let v = &core.commands[id].view;
            let keep = filter.device.as_ref().is_none_or(|d| *d == v.device)
                && filter.status.is_none_or(|s| s == v.status)
                && filter.name.as_ref().is_none_or(|n| *n == v.name)
                && filter
                    .batch
                    .as_ref()
                    .is_none_or(|b| v.batch.as_ref() == Some(b));
            if !keep {
                continue;
            }
            if items.len() == limit {
                next_cursor = Some(seq.to_string());
                break;
            }
            items.push(v.clone());
        }
        Ok(CommandPage { items, next_cursor })
    }

    /// Cancels a command that is still queued.
    pub async fn cancel(&self, id: &str) -> Result<CommandView, CommandError> {
        let mut effects = Vec::new();
        let view = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let status = core
                .commands
                .get(id)
                .map(|r| r.view.status)
                .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
            if status != CommandStatus::Queued {
                return Err(CommandError::Conflict(format!(
                    "command {id:?} is {}; only a queued command can be cancelled",
                    status.as_str()
                )));
            }
            let id: Arc<str> = id.into();
            let rec = &core.commands[&id];
            let undo = Undo {
                view: rec.view.clone(),
                version: rec.version,
                queue_at: core
                    .queues
                    .get(&rec.view.device)
                    .and_then(|q| q.iter().position(|c| *c == id)),
            };
            core.finish(
                &id,
                CommandStatus::Cancelled,
                None,
                Some("cancelled over the API".into()),
                now,
                &mut effects,
            );
            (core.commands[&id].view.clone(), id, undo)
        };
        let (view, id, undo) = view;
        self.0.store_change(&id, undo, &mut effects).await?;
        self.0.run_effects(effects).await;
        Ok(view)
    }

    /// An ack from a device over HTTP.
    pub async fn ack(
        &self,
        device: &str,
        command_id: &str,
        ack: DeviceAck,
    ) -> Result<CommandView, CommandError> {
        self.ack_from(device, command_id, ack, AckSource::Http)
            .await
    }

    /// An ack from a device, read from `source` (HTTP, or a dialect's
    /// topics over MQTT).
    pub async fn ack_from(
        &self,
        device: &str,
        command_id: &str,
        ack: DeviceAck,
        source: AckSource,
    ) -> Result<CommandView, CommandError> {
        let mut effects = Vec::new();
        let view = {
            let mut core = self.0.core.lock().unwrap();
            match core.commands.get(command_id) {
                Some(rec) if rec.view.device == device => {}
                _ => {
                    self.0.stats.acks_unknown.fetch_add(1, Ordering::Relaxed);
                    return Err(CommandError::NotFound(command_id.to_string()));
                }
            }
            let now = self.0.clock.now_ms();
            self.0.on_ack(
                &mut core,
                device,
                command_id,
                ack,
                source,
                now,
                &mut effects,
            );
            core.commands[command_id].view.clone()
        };
        self.0.run_effects(effects).await;
        Ok(view)
    }

    /// For HTTP devices: waits up to `wait` for a command delivered to the
    /// device and not yet fetched in its current attempt.
    pub async fn next_for(&self, device: &str, wait: Duration) -> Option<CommandMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = {
            let mut core = self.0.core.lock().unwrap();
            core.pollers.entry(device.to_string()).or_default().clone()
        };
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The poll itself shows the device listens: queued commands,
            // including ones queued while it waits, go out.
            let mut effects = Vec::new();
            {
                let mut core = self.0.core.lock().unwrap();
                let now = self.0.clock.now_ms();
                self.0.deliver_queued(&mut core, device, now, &mut effects);
            }
            if !effects.is_empty() {
                self.0.run_effects(effects).await;
                self.0.wake.notify_one();
            }
            {
                let mut core = self.0.core.lock().unwrap();
                let found = core.inflight.get(device).and_then(|ids| {
                    ids.iter()
                        .find(|id| {
                            let r = &core.commands[*id];
                            r.http_fetched < r.view.attempts && !core.unstored.contains(*id)
                        })
                        .cloned()
                });
                if let Some(id) = found {
                    let rec = core.commands.get_mut(&id).expect("in flight");
                    rec.http_fetched = rec.view.attempts;
                    return Some(message_of(&rec.view));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// On a manual clock: waits until every timer due at or before `t`
    /// has fired and every handler call has answered, so a clock advance
    /// returns with the span's acks, retries and timeouts done.
    pub async fn settle(&self, t: i64) {
        if self.0.clock.mode() != ClockMode::Manual {
            return;
        }
        let mut activity = self.0.activity.subscribe();
        self.0.wake.notify_one();
        loop {
            let settled = {
                let core = self.0.core.lock().unwrap();
                self.0.processed_until.load(Ordering::Acquire) >= t
                    && self.0.pending_jobs.load(Ordering::Acquire) == 0
                    && core
                        .timers
                        .peek()
                        .is_none_or(|Reverse((due, _, _))| *due > t)
            };
            if settled {
                return;
            }
            if activity.changed().await.is_err() {
                return;
            }
        }
    }

    /// When the next command timer is due (a reply, a retry, a timeout,
    /// an expiry), if any.
    pub fn next_due(&self) -> Option<i64> {
        let core = self.0.core.lock().unwrap();
        core.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    pub fn counters(&self) -> CommandCounters {
        let mut by_status: BTreeMap<&'static str, u64> =
            CommandStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        {
            let core = self.0.core.lock().unwrap();
            for rec in core.commands.values() {
                *by_status.entry(rec.view.status.as_str()).or_insert(0) += 1;
            }
        }
        let s = &self.0.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CommandCounters {
            submitted: get(&s.submitted),
            deliveries: get(&s.deliveries),
            retries: get(&s.retries),
            acks: get(&s.acks),
            acks_ignored: get(&s.acks_ignored),
            acks_unknown: get(&s.acks_unknown),
            acks_invalid: get(&s.acks_invalid),
            tap_dropped: get(&self.0.tap_dropped),
            handler_errors: get(&s.handler_errors),
            evicted: get(&s.evicted),
            store_errors: get(&s.store_errors),
            by_status,
        }
    }
}

/// A request's numbers, checked and defaulted.
#[derive(Debug, Clone, Copy)]
struct Checked {
    timeout_ms: u64,
    retries: u32,
    backoff_ms: u64,
    ttl_ms: u64,
    complete_on: CompleteOn,
}

fn check_request(r: &CommandRequest) -> Result<Checked, CommandError> {
    let invalid = |m: String| Err(CommandError::Invalid(m));
    if r.name.is_empty() || r.name.len() > 128 {
        return invalid("name: give the command a name of 1 to 128 characters".into());
    }
    if let Some(id) = &r.id
        && !valid_command_id(id)
    {
        return invalid(format!(
            "id: {id:?} is not a valid command id; use 1 to 64 characters from letters, digits, '-', '_' and '.'"
        ));
    }
    let timeout_ms = r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=86_400_000).contains(&timeout_ms) {
        return invalid(format!(
            "timeout_ms: {timeout_ms} is out of range; use 1 to 86400000"
        ));
    }
    let retries = r.retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        return invalid(format!(
            "retries: {retries} is too many; use 0 to {MAX_RETRIES}"
        ));
    }
    let backoff_ms = r.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
    if backoff_ms > MAX_BACKOFF_MS {
        return invalid(format!(
            "backoff_ms: {backoff_ms} is out of range; use 0 to {MAX_BACKOFF_MS}"
        ));
    }
    let ttl_ms = r.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if ttl_ms > 30 * 86_400_000 {
        return invalid(format!(
            "ttl_ms: {ttl_ms} is out of range; use 0 to 2592000000 (30 days)"
        ));
    }
    Ok(Checked {
        timeout_ms,
        retries,
        backoff_ms,
        ttl_ms,
        complete_on: r.complete_on.unwrap_or_default(),
    })
}

fn valid_command_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn message_of(v: &CommandView) -> CommandMessage {
    CommandMessage {
        id: v.id.clone(),
        name: v.name.clone(),
        params: v.params.clone(),
        attempt: v.attempts,
    }
}

impl Core {
    /// Forgets a command that was just created and could not be stored:
    /// it leaves no trace (its timers find nothing and do nothing).
    fn take_back(&mut self, id: &Arc<str>) {
        self.unstored.remove(id);
        let Some(rec) = self.commands.remove(id) else {
            return;
        };
        self.order.remove(&rec.seq);
        let device = &rec.view.device;
        if let Some(queue) = self.queues.get_mut(device) {
            queue.retain(|q| q != id);
            if queue.is_empty() {
                self.queues.remove(device);
            }
        }
        if let Some(inflight) = self.inflight.get_mut(device) {
            inflight.retain(|q| q != id);
            if inflight.is_empty() {
                self.inflight.remove(device);
            }
        }
    }

    fn schedule(&mut self, due: i64, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((due, self.timer_seq, timer)));
    }

    /// Records a state change, tells waiters, and asks for a write.
    fn transition(
        &mut self,
        id: &Arc<str>,
        status: CommandStatus,
        reason: Option<String>,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let rec = self.commands.get_mut(id).expect("a known command");
        rec.view.status = status;
        rec.view.updated_at = now;
        rec.view.history.push(Transition {
            status,
            at: now,
            attempt: rec.view.attempts,
            reason: reason.clone(),
        });
        if reason.is_some() && status.is_final() {
            rec.view.reason = reason;
        }
        rec.status.send_replace(status);
        rec.version += 1;
        effects.push(persist(rec));
    }

    /// Moves a command to a final state and out of every queue.
    fn finish(
        &mut self,
        id: &Arc<str>,
        status: CommandStatus,
        result: Option<Value>,
        reason: Option<String>,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let device = {
            let rec = self.commands.get_mut(id).expect("a known command");
            rec.deadline = None;
            if result.is_some() {
                rec.view.result = result;
            }
            rec.view.device.clone()
        };
        if let Some(q) = self.queues.get_mut(&device) {
            q.retain(|c| c != id);
            if q.is_empty() {
                self.queues.remove(&device);
            }
        }
        if let Some(f) = self.inflight.get_mut(&device) {
            f.retain(|c| c != id);
            if f.is_empty() {
                self.inflight.remove(&device);
            }
        }
        self.transition(id, status, reason, now, effects);
        self.finals += 1;
    }

    /// Forgets the oldest final commands beyond the capacity.
    fn evict(&mut self, stats: &Stats, effects: &mut Vec<Effect>) {
        if self.finals <= FINAL_CAPACITY {
            return;
        }
        let mut gone = Vec::new();
        for (seq, id) in &self.order {
            if self.finals - gone.len() <= FINAL_CAPACITY {
                break;
            }
            if self.commands[id].view.status.is_final() {
                gone.push((*seq, id.clone()));
            }
        }
        for (seq, id) in gone {
            self.order.remove(&seq);
            if let Some(rec) = self.commands.remove(&id)
                && let Some(batch) = &rec.view.batch
                && let Some(b) = self.batches.get_mut(batch)
            {
                b.ids.retain(|c| *c != id);
                if b.ids.is_empty() {
                    self.batches.remove(batch);
                }
            }
            self.finals -= 1;
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            effects.push(Effect::Forget(id));
        }
    }
}

fn persist(rec: &Rec) -> Effect {
    Effect::Persist {
        seq: rec.seq,
        version: rec.version,
        deadline: rec.deadline,
        view: Box::new(rec.view.clone()),
    }
}

impl Inner {
    /// Whether a command sent to the device now would reach it: a
    /// simulated device that is online, or a real one that is online and
    /// subscribed to its command topic (one that polls over HTTP takes its
    /// queued commands when it polls).
    fn deliverable(&self, device: &str) -> bool {
        match self.fleet.command_target(device) {
            Ok(target) => self.deliverable_to(device, &target),
            Err(_) => false,
        }
    }

    fn deliverable_to(&self, device: &str, target: &crate::fleet::CommandTarget) -> bool {
        target.online
            && (target.simulated || self.mqtt.listens(device, &command_probe(device, target)))
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        core: &mut Core,
        device: &str,
        request: CommandRequest,
        checked: Checked,
        origin: Origin,
        batch: Option<&str>,
        online: bool,
        now: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<Arc<str>, CommandError> {
        let seq = core.next_seq;
        let id: Arc<str> = match &request.id {
            Some(id) if core.commands.contains_key(id.as_str()) => {
                return Err(CommandError::Conflict(format!(
                    "a command with id {id:?} exists; pick another id or leave it out"
                )));
            }
            Some(id) => id.as_str().into(),
            None => format!("cmd-{seq:06}").into(),
        };
        if !online && core.queues.get(device).map_or(0, VecDeque::len) >= DEVICE_QUEUE_CAPACITY {
            return Err(CommandError::QueueFull {
                device: device.to_string(),
                capacity: DEVICE_QUEUE_CAPACITY,
            });
        }
        core.next_seq += 1;
        let view = CommandView {
            id: id.to_string(),
            device: device.to_string(),
            name: request.name,
            params: request
                .params
                .unwrap_or_else(|| Value::Object(Default::default())),
            status: CommandStatus::Queued,
            attempts: 0,
            max_attempts: 1 + checked.retries,
            timeout_ms: checked.timeout_ms,
            backoff_ms: checked.backoff_ms,
            ttl_ms: checked.ttl_ms,
            complete_on: checked.complete_on,
            result: None,
            reason: None,
            origin,
            batch: batch.map(str::to_string),
            created_at: now,
            updated_at: now,
            expires_at: now.saturating_add(checked.ttl_ms as i64),
            history: vec![Transition {
                status: CommandStatus::Queued,
                at: now,
                attempt: 0,
                reason: None,
            }],
            acks: Vec::new(),
            acks_total: 0,
        };
        let rec = Rec {
            view,
            seq,
            version: 1,
            deadline: None,
            http_fetched: 0,
            status: watch::Sender::new(CommandStatus::Queued),
        };
        effects.push(persist(&rec));
        if self.store.is_some() {
            core.unstored.insert(id.clone());
        }
        core.commands.insert(id.clone(), rec);
        core.order.insert(seq, id.clone());
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        if online {
            self.deliver(core, &id, now, effects);
        } else {
            core.queues
                .entry(device.to_string())
                .or_default()
                .push_back(id.clone());
            let expires = core.commands[&id].view.expires_at;
            core.schedule(expires, Timer::Expire { id: id.clone() });
            // An HTTP device waiting in a long poll takes it at once.
            if let Some(poller) = core.pollers.get(device) {
                poller.notify_waiters();
            }
        }
        Ok(id)
    }

    /// Sends the next attempt of a command to its (online) device.
    fn deliver(&self, core: &mut Core, id: &Arc<str>, now: i64, effects: &mut Vec<Effect>) {
        let (device, attempt, timeout) = {
            let rec = core.commands.get_mut(id).expect("a known command");
            rec.view.attempts += 1;
            rec.deadline = Some(now.saturating_add(rec.view.timeout_ms as i64));
            (
                rec.view.device.clone(),
                rec.view.attempts,
                rec.view.timeout_ms,
            )
        };
        let inflight = core.inflight.entry(device.clone()).or_default();
        if !inflight.contains(id) {
            inflight.push(id.clone());
        }
        core.transition(id, CommandStatus::Sent, None, now, effects);
        core.schedule(
            now.saturating_add(timeout as i64),
            Timer::AttemptTimeout {
                id: id.clone(),
                attempt,
            },
        );
        if attempt > 1 {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(poller) = core.pollers.get(&device) {
            poller.notify_waiters();
        }
        let message = message_of(&core.commands[id].view);
        effects.push(Effect::Send {
            device,
            message,
            at: now,
        });
    }

    /// Delivers every queued command of a device that just came online.
    fn deliver_queued(&self, core: &mut Core, device: &str, now: i64, effects: &mut Vec<Effect>) {
        let Some(queue) = core.queues.remove(device) else {
            return;
        };
        let mut waiting = VecDeque::new();
        for id in queue {
            if core.unstored.contains(&id) {
                waiting.push_back(id);
            } else if core.commands.get(&id).map(|r| r.view.status) == Some(CommandStatus::Queued) {
                self.deliver(core, &id, now, effects);
            }
        }
        if !waiting.is_empty() {
            core.queues.insert(device.to_string(), waiting);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_ack(
        &self,
        core: &mut Core,
        device: &str,
        id: &str,
        ack: DeviceAck,
        source: AckSource,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let Some((key, rec)) = core.commands.get_key_value(id) else {
            self.stats.acks_unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(device, command = id, "ack for an unknown command");
            return;
        };
        if rec.view.device != device {
            self.stats.acks_unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                device,
                command = id,
                "ack from another device than the command's"
            );
            return;
        }
        let id = key.clone();
        self.stats.acks.fetch_add(1, Ordering::Relaxed);
        let status = rec.view.status;
        let delivered = rec.view.attempts > 0;
        let complete_on = rec.view.complete_on;
        let ignored: Option<&str> = if status.is_final() {
            Some("late")
        } else if !delivered {
            // Cannot have been seen by the device; a stray ack.
            Some("early")
        } else {
            match ack.status {
                AckStatus::Received if status == CommandStatus::Received => {
                    Some(if ack.result.is_some() {
                        "progress"
                    } else {
                        "duplicate"
                    })
                }
                _ => None,
            }
        };
        {
            let rec = core.commands.get_mut(&id).expect("found above");
            rec.view.acks_total += 1;
            if rec.view.acks.len() < MAX_ACKS_KEPT {
                rec.view.acks.push(AckRecord {
                    status: ack.status,
                    result: ack.result.clone(),
                    at: now,
                    attempt: rec.view.attempts,
                    source,
                    ignored: ignored.map(str::to_string),
                });
            }
            rec.version += 1;
        }
        if ignored.is_some() {
            self.stats.acks_ignored.fetch_add(1, Ordering::Relaxed);
            effects.push(persist(&core.commands[&id]));
            return;
        }
        match ack.status {
            AckStatus::Received if complete_on == CompleteOn::Received => {
                core.finish(
                    &id,
                    CommandStatus::Completed,
                    ack.result,
                    None,
                    now,
                    effects,
                );
            }
            AckStatus::Received => {
                // A queued command waiting for a retry that the device
                // acknowledges after all is back in flight.
                if status == CommandStatus::Queued {
                    self.unqueue(core, &id);
                }
                if ack.result.is_some() {
                    core.commands.get_mut(&id).expect("known").view.result = ack.result;
                }
                core.transition(&id, CommandStatus::Received, None, now, effects);
            }
            AckStatus::Completed => core.finish(
                &id,
                CommandStatus::Completed,
                ack.result,
                None,
                now,
                effects,
            ),
            AckStatus::Rejected => {
                core.finish(&id, CommandStatus::Rejected, ack.result, None, now, effects)
            }
            AckStatus::Failed => {
                core.finish(&id, CommandStatus::Failed, ack.result, None, now, effects)
            }
        }
        core.evict(&self.stats, effects);
    }

    fn unqueue(&self, core: &mut Core, id: &Arc<str>) {
        let device = core.commands[id].view.device.clone();
        if let Some(q) = core.queues.get_mut(&device) {
            q.retain(|c| c != id);
        }
        let inflight = core.inflight.entry(device).or_default();
        if !inflight.contains(id) {
            inflight.push(id.clone());
        }
    }

    /// Fires one timer.
    fn fire(&self, core: &mut Core, timer: Timer, now: i64, effects: &mut Vec<Effect>) {
        match timer {
            Timer::AttemptTimeout { id, attempt } => {
                let Some(rec) = core.commands.get_mut(&id) else {
                    return;
                };
                if rec.view.status.is_final()
                    || rec.view.status == CommandStatus::Queued
                    || rec.view.attempts != attempt
                {
                    return;
                }
                rec.deadline = None;
                if attempt < rec.view.max_attempts {
                    let shift = (attempt - 1).min(16);
                    let wait = rec
                        .view
                        .backoff_ms
                        .saturating_mul(1 << shift)
                        .min(MAX_BACKOFF_MS);
                    rec.version += 1;
                    effects.push(persist(rec));
                    core.schedule(
                        now.saturating_add(wait as i64),
                        Timer::Retry {
                            id,
                            attempt: attempt + 1,
                        },
                    );
                } else {
                    let reason = format!(
                        "no final ack within {} ms of attempt {attempt} of {}",
                        rec.view.timeout_ms, rec.view.max_attempts
                    );
                    core.finish(
                        &id,
                        CommandStatus::TimedOut,
                        None,
                        Some(reason),
                        now,
                        effects,
                    );
                    core.evict(&self.stats, effects);
                }
            }
            Timer::Retry { id, attempt } => {
                let Some(rec) = core.commands.get(&id) else {
                    return;
                };
                if rec.view.status.is_final() || rec.view.attempts + 1 != attempt {
                    return;
                }
                let device = rec.view.device.clone();
                let expires = rec.view.expires_at;
                if self.deliverable(&device) {
                    self.deliver(core, &id, now, effects);
                } else if now >= expires {
                    let reason = format!(
                        "device offline for retry {} and the ttl has passed",
                        attempt - 1
                    );
                    core.finish(
                        &id,
                        CommandStatus::TimedOut,
                        None,
                        Some(reason),
                        now,
                        effects,
                    );
                    core.evict(&self.stats, effects);
                } else {
                    if let Some(f) = core.inflight.get_mut(&device) {
                        f.retain(|c| *c != id);
                    }
                    core.queues.entry(device).or_default().push_back(id.clone());
                    core.transition(
                        &id,
                        CommandStatus::Queued,
                        Some("device offline; the retry waits for it".into()),
                        now,
                        effects,
                    );
                    core.schedule(expires, Timer::Expire { id });
                }
            }
            Timer::Expire { id } => {
                let Some(rec) = core.commands.get(&id) else {
                    return;
                };
                if rec.view.status != CommandStatus::Queued || now < rec.view.expires_at {
                    return;
                }
                let (status, reason) = if rec.view.attempts == 0 {
                    (
                        CommandStatus::Expired,
                        format!(
                            "device offline for the whole ttl of {} ms; never delivered",
                            rec.view.ttl_ms
                        ),
                    )
                } else {
                    (
                        CommandStatus::TimedOut,
                        format!(
                            "device offline for the retry until the ttl of {} ms ran out",
                            rec.view.ttl_ms
                        ),
                    )
                };
                core.finish(&id, status, None, Some(reason), now, effects);
                core.evict(&self.stats, effects);
            }
            Timer::Reply {
                id,
                device,
                attempt: _,
                status,
                result,
            } => {
                let result_value = result
                    .as_deref()
                    .map(|r| serde_json::from_str(r).unwrap_or(Value::String(r.to_string())));
                let mut payload = serde_json::json!({ "id": &*id, "status": status });
                if let Some(r) = &result_value {
                    payload["result"] = r.clone();
                }
                effects.push(Effect::PublishAck {
                    device: device.clone(),
                    id: id.clone(),
                    payload: payload.to_string(),
                });
                let ack = DeviceAck {
                    id: Some(id.to_string()),
                    status,
                    result: result_value,
                };
                self.on_ack(core, &device, &id, ack, AckSource::Simulated, now, effects);
            }
            Timer::GoOffline { device } => effects.push(Effect::SetOnline {
                device,
                online: false,
            }),
            Timer::BackOnline { device } => effects.push(Effect::SetOnline {
                device,
                online: true,
            }),
        }
    }

    /// A simulated device answered: schedule its replies.
    fn schedule_replies(
        &self,
        core: &mut Core,
        device: &str,
        message: &CommandMessage,
        handling: Handling,
        now: i64,
    ) {
        let id: Arc<str> = match core.commands.get_key_value(message.id.as_str()) {
            Some((k, _)) => k.clone(),
            None => return,
        };
        let mut at = now;
        for reply in handling.replies {
            at = at.saturating_add(i64::from(reply.delay_ms));
            core.schedule(
                at,
                Timer::Reply {
                    id: id.clone(),
                    device: device.to_string(),
                    attempt: message.attempt,
                    status: ack_status(reply.status),
                    result: reply.result,
                },
            );
        }
        if let Some(ms) = handling.offline_ms {
            core.schedule(
                at,
                Timer::GoOffline {
                    device: device.to_string(),
                },
            );
            core.schedule(
                at.saturating_add(i64::from(ms)),
                Timer::BackOnline {
                    device: device.to_string(),
                },
            );
        }
    }

    /// Stores an API change of one existing command before it is answered:
    /// its newest record among `effects` is written now. When the write
    /// fails the change is undone (unless something else changed the
    /// command since), the other effects are dropped, and the error is
    /// returned.
    async fn store_change(
        &self,
        id: &Arc<str>,
        undo: Undo,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let newest = effects
            .iter()
            .rposition(|e| matches!(e, Effect::Persist { view, .. } if view.id.as_str() == &**id));
        let written = match newest.map(|i| effects.remove(i)) {
            Some(Effect::Persist {
                seq,
                version,
                deadline,
                view,
            }) => {
                effects.retain(
                    |e| !matches!(e, Effect::Persist { view, .. } if view.id.as_str() == &**id),
                );
                crate::sqlite::blocking(move || store.put(seq, version, deadline, &view)).await
            }
            _ => Ok(()),
        };
        let Err(error) = written else {
            return Ok(());
        };
        let mut core = self.core.lock().unwrap();
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(command = %id, %error, "could not store a change of a command; it was not made");
        effects.clear();
        let finished = undo.view.status.is_final();
        if let Some(rec) = core.commands.get_mut(id)
            && rec.version == undo.version + 1
        {
            let was_final = rec.view.status.is_final();
            rec.status.send_replace(undo.view.status);
            rec.view = undo.view;
            rec.version = undo.version;
            let device = rec.view.device.clone();
            if was_final && !finished {
                core.finals -= 1;
            }
            if let Some(at) = undo.queue_at {
                let queue = core.queues.entry(device.clone()).or_default();
                queue.insert(at.min(queue.len()), id.clone());
                // A device polling over HTTP takes it back on its next look.
                if let Some(poller) = core.pollers.get(&device) {
                    poller.notify_waiters();
                }
            }
        }
        Err(error.into())
    }

    /// Stores new commands before anything about them leaves the engine
    /// (no publish, no answer): their newest records among `effects` are
    /// written now and taken out of the list. When the write fails the
    /// commands are taken back, as if never submitted, the other effects
    /// are dropped, and the error is returned; nothing half-done remains.
    async fn store_created(
        &self,
        ids: &[Arc<str>],
        batch: Option<&str>,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let wanted: std::collections::HashSet<&str> = ids.iter().map(|id| &**id).collect();
        let mut records: HashMap<String, (u64, u64, Option<i64>, Box<CommandView>)> =
            HashMap::with_capacity(ids.len());
        let mut rest = Vec::with_capacity(effects.len());
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist {
                    seq,
                    version,
                    deadline,
                    view,
                } if wanted.contains(view.id.as_str()) => {
                    if records.get(&view.id).is_none_or(|r| version > r.1) {
                        records.insert(view.id.clone(), (seq, version, deadline, view));
                    }
                }
                other => rest.push(other),
            }
        }
        *effects = rest;
        let rows: Vec<_> = records.into_values().collect();
        let written = crate::sqlite::blocking(move || store.put_all(&rows)).await;
        let Err(error) = written else {
            // Stored: a device that came online (or started polling)
            // during the write takes its queued commands now.
            let mut core = self.core.lock().unwrap();
            let now = self.clock.now_ms();
            let mut devices = Vec::new();
            for id in ids {
                core.unstored.remove(id);
                if let Some(rec) = core.commands.get(id)
                    && !devices.contains(&rec.view.device)
                {
                    devices.push(rec.view.device.clone());
                }
            }
            for device in devices {
                if self.deliverable(&device) {
                    self.deliver_queued(&mut core, &device, now, effects);
                }
                if let Some(poller) = core.pollers.get(&device) {
                    poller.notify_waiters();
                }
            }
            return Ok(());
        };
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(commands = ids.len(), %error, "could not store new commands; they were not submitted");
        effects.clear();
        {
            let mut core = self.core.lock().unwrap();
            for id in ids {
                core.take_back(id);
            }
            if let Some(batch) = batch {
                core.batches.remove(batch);
            }
        }
        self.stats
            .submitted
            .fetch_sub(ids.len() as u64, Ordering::Relaxed);
        Err(error.into())
    }

    /// Publishes `event` in the target's dialect when it has one other than
    /// the built-in path; false when the built-in path is to write it.
    async fn in_dialect(
        &self,
        target: Option<&crate::fleet::CommandTarget>,
        event: CodecEvent,
    ) -> bool {
        let Some(target) = target.filter(|t| !t.dialect.native(&self.plugins)) else {
            return false;
        };
        let now = self.clock.now_ms();
        let item = Outgoing {
            dialect: target.dialect.clone(),
            shared: Some(target.shared.clone()),
            ts: now,
            event,
        };
        encode_and_publish(&self.plugins, &self.mqtt, now, vec![item]).await;
        true
    }

    async fn run_effects(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send {
                    device,
                    message,
                    at,
                } => {
                    let target = self.fleet.command_target(&device).ok();
                    let event = CodecEvent::Command {
                        id: message.id.clone(),
                        name: message.name.clone(),
                        params: message.params.to_string(),
                        attempt: message.attempt,
                    };
                    if !self.in_dialect(target.as_ref(), event).await {
                        let payload = serde_json::to_vec(&message).expect("a command serializes");
                        self.mqtt
                            .publish(
                                &topics::command(&device, &message.id),
                                payload,
                                Qos::AtLeastOnce,
                                false,
                            )
                            .await;
                    }
                    if target.is_some_and(|t| t.simulated) {
                        self.dispatch(device, message, at).await;
                    }
                }
                Effect::PublishAck {
                    device,
                    id,
                    payload,
                } => {
                    let target = self.fleet.command_target(&device).ok();
                    let ack: Option<DeviceAck> = serde_json::from_str(&payload).ok();
                    let coded = match ack {
                        Some(ack) => {
                            let event = CodecEvent::Ack {
                                command_id: id.to_string(),
                                status: match ack.status {
                                    AckStatus::Received => ReplyStatus::Received,
                                    AckStatus::Completed => ReplyStatus::Completed,
                                    AckStatus::Rejected => ReplyStatus::Rejected,
                                    AckStatus::Failed => ReplyStatus::Failed,
                                },
                                result: ack.result.map(|r| r.to_string()),
                            };
                            self.in_dialect(target.as_ref(), event).await
                        }
                        None => false,
                    };
                    if !coded {
                        self.mqtt
                            .publish(&topics::ack(&device, &id), payload, Qos::AtLeastOnce, false)
                            .await;
                    }
                }
                Effect::Persist {
                    seq,
                    version,
                    deadline,
                    view,
                } => {
                    if let Some(store) = self.store.clone() {
                        let id = view.id.clone();
                        let written = crate::sqlite::blocking(move || {
                            store.put(seq, version, deadline, &view)
                        })
                        .await;
                        if let Err(error) = written {
                            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                            crate::ratelimit::error_limited!(command = %id, %error, "could not store a command");
                        }
                    }
                }
                Effect::Forget(id) => {
                    if let Some(store) = self.store.clone() {
                        let key = id.clone();
                        let removed = crate::sqlite::blocking(move || store.delete(&key)).await;
                        if let Err(error) = removed {
                            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                            crate::ratelimit::error_limited!(command = %id, %error, "could not forget a command");
                        }
                    }
                }
                Effect::SetOnline { device, online } => {
                    self.fleet.set_simulated_online(&device, online).await;
                }
            }
        }
    }

    /// Waits until no handler call is pending.
    async fn jobs_done(&self) {
        let mut activity = self.activity.subscribe();
        while self.pending_jobs.load(Ordering::Acquire) > 0 {
            if activity.changed().await.is_err() {
                return;
            }
        }
    }

    /// Hands a simulated device's command, sent at `at`, to its shard.
    async fn dispatch(&self, device: String, message: CommandMessage, at: i64) {
        let shard = (fnv(&device) % self.shards.len() as u64) as usize;
        self.pending_jobs.fetch_add(1, Ordering::AcqRel);
        if self.shards[shard]
            .send(Job {
                device,
                message,
                at,
            })
            .await
            .is_err()
        {
            self.pending_jobs.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn ack_status(s: ReplyStatus) -> AckStatus {
    match s {
        ReplyStatus::Received => AckStatus::Received,
        ReplyStatus::Completed => AckStatus::Completed,
        ReplyStatus::Rejected => AckStatus::Rejected,
        ReplyStatus::Failed => AckStatus::Failed,
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fires timers as simulated time reaches them, one at a time in due
/// order, each at its own due time. On a manual clock it also waits for the
/// handler calls a timer caused before firing the next one, so a long
/// clock advance plays out exactly as the same span in small steps would.
async fn run_driver(inner: std::sync::Weak<Inner>) {
    let mut manual = {
        let Some(i) = inner.upgrade() else { return };
        (i.clock.mode() == ClockMode::Manual).then(|| i.clock.subscribe())
    };
    loop {
        let Some(i) = inner.upgrade() else { return };
        if manual.is_some() {
            // A handler call started before this timer (a command sent
            // over the API) schedules its replies first, as it would have
            // had the clock moved in small steps.
            i.jobs_done().await;
        }
        let now = i.clock.now_ms();
        let mut effects = Vec::new();
        let (fired, next_due) = {
            let mut core = i.core.lock().unwrap();
            let due = match core.timers.peek() {
                Some(Reverse((due, _, _))) if *due <= now => Some(*due),
                _ => None,
            };
            if let Some(due) = due {
                let Reverse((_, _, timer)) = core.timers.pop().expect("peeked");
                i.fire(&mut core, timer, due, &mut effects);
            }
            (
                due.is_some(),
                core.timers.peek().map(|Reverse((due, _, _))| *due),
            )
        };
        i.run_effects(effects).await;
        if fired {
            // On a manual clock the loop's start waits for the handler
            // calls this timer caused.
            continue;
        }
        i.processed_until.store(now, Ordering::Release);
        i.activity.send_modify(|n| *n += 1);
        let clock = i.clock.clone();
        let wake = async {
            i.wake.notified().await;
        };
        match (&mut manual, next_due) {
            (Some(rx), _) => {
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = wake => {}
                }
            }
            (None, Some(t)) => {
                tokio::select! {
                    _ = clock.sleep_until(t) => {}
                    _ = wake => {}
                }
            }
            (None, None) => wake.await,
        }
    }
}

/// Runs simulated devices' handlers, one call at a time per shard.
async fn run_shard(
    inner: std::sync::Weak<Inner>,
    mut jobs: mpsc::Receiver<Job>,
    plugins: PluginHost,
    seed: u64,
) {
    let mut rngs: HashMap<String, DeviceRng> = HashMap::new();
    while let Some(job) = jobs.recv().await {
        let Some(i) = inner.upgrade() else { return };
        let answer = handle(&i, &plugins, seed, &mut rngs, &job).await;
        {
            let mut core = i.core.lock().unwrap();
            i.schedule_replies(&mut core, &job.device, &job.message, answer, job.at);
        }
        i.pending_jobs.fetch_sub(1, Ordering::AcqRel);
        i.wake.notify_one();
        i.activity.send_modify(|n| *n += 1);
    }
}

/// How a simulated device answers: its handler plugin's decision, or,
/// without a handler, a `completed` ack at once. A handler that fails
/// makes the device answer `failed` with the error as the result.
async fn handle(
    i: &Inner,
    plugins: &PluginHost,
    seed: u64,
    rngs: &mut HashMap<String, DeviceRng>,
    job: &Job,
) -> Handling {
    let Ok(target) = i.fleet.command_target(&job.device) else {
        return Handling::default();
    };
    let Some(spec) = target.handler else {
        return Handling {
            replies: vec![HandlerReply {
                delay_ms: 0,
                status: ReplyStatus::Completed,
                result: None,
            }],
            offline_ms: None,
        };
    };
    let rng = rngs
        .remove(&job.device)
        .unwrap_or_else(|| DeviceRng::derive(seed, &job.device, "commands"));
    let ctx = CallContext {
        now: job.at,
        slots: vec![DeviceSlot {
            rng,
            state: Some(target.shared.clone()),
        }],
    };
    let command = HandlerCommand {
        id: job.message.id.clone(),
        name: job.message.name.clone(),
        params: job.message.params.to_string(),
        attempt: job.message.attempt,
    };
    let (result, mut ctx) = call_handler(plugins, &spec, ctx, command).await;
    let rng = match ctx.slots.pop() {
        Some(slot) => slot.rng,
        None => DeviceRng::derive(seed, &job.device, "commands"),
    };
    rngs.insert(job.device.clone(), rng);
    match result {
        Ok(handling) => handling,
        Err(error) => {
            i.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
            crate::ratelimit::warn_limited!(device = %job.device, command = %job.message.id, %error, "command handler failed; the device answers `failed`");
            Handling {
                replies: vec![HandlerReply {
                    delay_ms: 0,
                    status: ReplyStatus::Failed,
                    result: Some(serde_json::json!({ "error": error }).to_string()),
                }],
                offline_ms: None,
            }
        }
    }
}

async fn call_handler(
    plugins: &PluginHost,
    spec: &HandlerSpec,
    ctx: CallContext,
    command: HandlerCommand,
) -> (Result<Handling, String>, CallContext) {
    let (result, ctx) = plugins
        .handle_command(spec.plugin(), spec.config_text().into(), ctx, command)
        .await;
    (result.map_err(|e| e.to_string()), ctx)
}

/// The topic a command to `device` goes out on (for a command id `x`): in
/// its dialect when it has one other than iotmock's and its codec said.
fn command_probe(device: &str, target: &crate::fleet::CommandTarget) -> String {
    match target.dialect.command_probe() {
        Some(topic) if !target.dialect.is_default() => topic.to_string(),
        _ => topics::command(device, "x"),
    }
}

/// Reads acks real devices publish.
async fn follow_acks(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Tapped>) {
    while let Some(msg) = rx.recv().await {
        let Some(i) = inner.upgrade() else { return };
        let Some((device, id)) = split_topic(&msg.topic, "acks") else {
            continue;
        };
        let ack: DeviceAck = match serde_json::from_slice(&msg.payload) {
            Ok(ack) => ack,
            Err(error) => {
                i.stats.acks_invalid.fetch_add(1, Ordering::Relaxed);
                crate::ratelimit::warn_limited!(topic = %msg.topic, %error, "ack is not {{\"status\", \"result\"?}}; ignored");
                continue;
            }
        };
        let mut effects = Vec::new();
        {
            let mut core = i.core.lock().unwrap();
            let now = i.clock.now_ms();
            i.on_ack(
                &mut core,
                device,
                id,
                ack,
                AckSource::Mqtt,
                now,
                &mut effects,
            );
        }
        i.run_effects(effects).await;
        i.wake.notify_one();
    }
}

/// Commands a back end publishes itself on `devices/{id}/commands/{cid}`:
/// the broker delivers them; the engine follows their acks, and a
/// simulated device answers them through its handler.
async fn follow_device_commands(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Tapped>) {
    #[derive(serde::Deserialize)]
    struct Published {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        params: Option<Value>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    }
    while let Some(msg) = rx.recv().await {
        let Some(i) = inner.upgrade() else { return };
        let Some((device, id)) = split_topic(&msg.topic, "commands") else {
            continue;
        };
        let Ok(published) = serde_json::from_slice::<Published>(&msg.payload) else {
            tracing::debug!(topic = %msg.topic, "a published command that is not JSON; not followed");
            continue;
        };
        let Ok(target) = i.fleet.command_target(device) else {
            continue;
        };
        let request = CommandRequest {
            id: Some(id.to_string()),
            name: published.name.unwrap_or_default(),
            params: published.params,
            timeout_ms: published.timeout_ms,
            ..Default::default()
        };
        let Ok(checked) = check_request(&request) else {
            continue;
        };
        let mut effects = Vec::new();
        {
            let mut core = i.core.lock().unwrap();
            if core.commands.contains_key(id) {
                continue;
            }
            let now = i.clock.now_ms();
            // The broker already delivered it (or holds it in the
            // device's session): it counts as sent whatever the presence.
            if i.create(
                &mut core,
                device,
                request,
                checked,
                Origin::Mqtt,
                None,
                true,
                now,
                &mut effects,
            )
            .is_err()
            {
                continue;
            }
        }
        // The broker routed the client's own publish; only the handler
        // call remains of the send.
        for effect in effects {
            match effect {
                Effect::Send {
                    device,
                    message,
                    at,
                } => {
                    if target.simulated {
                        i.dispatch(device, message, at).await;
                    }
                }
                other => i.run_effects(vec![other]).await,
            }
        }
        i.wake.notify_one();
    }
}

/// Delivers queued commands when their device comes online.
async fn follow_presence(
    inner: std::sync::Weak<Inner>,
    mut events: tokio::sync::broadcast::Receiver<crate::fleet::PresenceChange>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let devices: Vec<String> = match events.recv().await {
            Ok(change) if change.online => vec![change.device],
            Ok(_) => continue,
            Err(RecvError::Lagged(missed)) => {
                let Some(i) = inner.upgrade() else { return };
                crate::ratelimit::warn_limited!(
                    missed,
                    "connectivity changes missed; rescanning queued commands"
                );
                let core = i.core.lock().unwrap();
                core.queues.keys().cloned().collect()
            }
            Err(RecvError::Closed) => return,
        };
        let Some(i) = inner.upgrade() else { return };
        let mut effects = Vec::new();
        {
            let mut core = i.core.lock().unwrap();
            let now = i.clock.now_ms();
            for device in devices {
                if i.deliverable(&device) {
                    i.deliver_queued(&mut core, &device, now, &mut effects);
                }
            }
        }
        i.run_effects(effects).await;
        i.wake.notify_one();
    }
}

/// Delivers a real device's queued commands once it subscribes to its
/// command topic.
async fn follow_subscriptions(
    inner: std::sync::Weak<Inner>,
    mut events: tokio::sync::broadcast::Receiver<crate::mqtt::Subscribed>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                crate::ratelimit::warn_limited!(
                    missed,
                    "subscription events missed; queued commands go out at the next connectivity change"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(i) = inner.upgrade() else { return };
        let device = event.user.as_deref().unwrap_or(&event.client_id);
        let topic = match i.fleet.command_target(device) {
            Ok(target) => command_probe(device, &target),
            Err(_) => topics::command(device, "x"),
        };
        if !event.filters.iter().any(|f| topics::matches(f, &topic)) {
            continue;
        }
        if !i.deliverable(device) {
            continue;
        }
        let mut effects = Vec::new();
        {
            let mut core = i.core.lock().unwrap();
            let now = i.clock.now_ms();
            i.deliver_queued(&mut core, device, now, &mut effects);
        }
        i.run_effects(effects).await;
        i.wake.notify_one();
    }
}

/// `devices/{id}/{kind}/{command_id}` → (id, command_id).
fn split_topic<'a>(topic: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let mut parts = topic.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("devices"), Some(device), Some(k), Some(id), None) if k == kind => Some((device, id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_final() {
        for s in CommandStatus::ALL {
            let expected = !matches!(
                s,
                CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Received
            );
            assert_eq!(s.is_final(), expected, "{s:?}");
        }
    }

    #[test]
    fn topics_split() {
        assert_eq!(
            split_topic("devices/d-1/acks/cmd-1", "acks"),
            Some(("d-1", "cmd-1"))
        );
        assert_eq!(split_topic("devices/d-1/acks/cmd-1/x", "acks"), None);
        assert_eq!(split_topic("devices/d-1/commands/c", "acks"), None);
    }

    #[test]
    fn requests_are_checked() {
        let ok = CommandRequest {
            name: "reboot".into(),
            ..Default::default()
        };
        assert!(check_request(&ok).is_ok());
        let bad = CommandRequest {
            name: "x".into(),
            retries: Some(99),
            ..Default::default()
        };
        let e = check_request(&bad).unwrap_err().to_string();
        assert!(e.contains("retries"), "{e}");
        let bad_id = CommandRequest {
            id: Some("a/b".into()),
            name: "x".into(),
            ..Default::default()
        };
        assert!(check_request(&bad_id).is_err());
    }
}
