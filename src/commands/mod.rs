//! The command engine: delivers commands to devices, follows their acks
//! through the states of [`CommandStatus`], retries with backoff, times
//! out, and holds commands for offline devices until they come back or
//! their TTL runs out.
//!
//! This module is the handle other parts use. The rules live in a pure
//! state machine (`machine`): one std mutex guards it, and every operation
//! on it is synchronous and returns effects (publish, persist, run a
//! handler; `effects`) that are carried out after the lock is released.
//! Whether a device can be reached is asked of the fleet and the broker
//! before the lock is taken and handed to the machine as a fact. One
//! driver task (`driver`) fires the timers (timeouts, retries, expiries,
//! the delayed replies of simulated devices) on simulated time. Simulated
//! devices answer through their `command-handler` plugin, run on shard
//! tasks (`shards`); real devices answer on
//! `devices/{id}/acks/{command_id}`, read through an in-process tap on the
//! broker (`follow`), or over HTTP. New commands and cancels are stored
//! before they are answered (`persist`).
//!
//! The engine does not own devices (the fleet does) nor run plugins (the
//! plugin host does).

mod counters;
mod driver;
mod effects;
mod follow;
mod machine;
mod model;
mod persist;
mod request;
mod shards;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

pub(crate) use counters::CommandCounters;
pub(crate) use model::*;
pub(crate) use store::CommandStoreError;

use crate::clock::Clock;
use crate::fleet::Fleet;
use crate::mqtt::{MqttHandle, topics};
use crate::plugin::PluginHost;
use crate::tasks::Tasks;
use counters::Stats;
use effects::Effect;
use machine::Machine;
use request::check_request;
use store::CommandStore;

/// Commands one device may have waiting (queued for it while offline);
/// more are refused with an error, never dropped.
pub(crate) const DEVICE_QUEUE_CAPACITY: usize = 1_000;
/// Commands kept in final states; beyond it the oldest final ones are
/// forgotten (and counted in `evicted`). Commands not yet final are never
/// evicted.
pub(crate) const FINAL_CAPACITY: usize = 100_000;
/// Acks and device-published commands read from the broker that may wait
/// for the engine; beyond it they are counted in `tap_dropped`.
pub(crate) const TAP_CAPACITY: usize = 65_536;

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

/// A handle on the command engine; cheap to clone.
#[derive(Clone)]
pub(crate) struct Commands(Arc<Inner>);

struct Inner {
    // A std mutex: held for synchronous bookkeeping only, never across an
    // await; effects run after it is released.
    core: Mutex<Core>,
    clock: Clock,
    fleet: Fleet,
    mqtt: MqttHandle,
    /// Encodes commands and acks of devices in another dialect.
    plugins: PluginHost,
    store: Option<CommandStore>,
    stats: Stats,
    tap_dropped: Arc<AtomicU64>,
    /// New timers or jobs: the driver looks again.
    wake: Notify,
    /// Bumped whenever the driver finishes a pass or a handler job ends.
    activity: watch::Sender<u64>,
    /// Simulated time up to which every timer has fired.
    processed_until: AtomicI64,
    pending_jobs: AtomicU64,
    shards: Vec<mpsc::Sender<shards::Job>>,
    /// Where its shards, driver and followers run.
    tasks: Tasks,
}

/// What the lock guards: the state machine, and who waits for it.
struct Core {
    machine: Machine,
    /// Waiters on commands not yet final, made when someone first waits.
    watchers: HashMap<Arc<str>, watch::Sender<CommandStatus>>,
    /// HTTP devices waiting in a long-poll, by device.
    pollers: HashMap<String, Arc<Notify>>,
}

impl Core {
    /// Wakes whoever the machine's changes concern and takes those
    /// effects out of the list. Done under the lock, so a waiter that
    /// looked at a command just before a change is sure to hear of it.
    fn signal(&mut self, effects: &mut Vec<Effect>) {
        effects.retain(|effect| match effect {
            Effect::Status { id, status } => {
                if let Some(tx) = self.watchers.get(id) {
                    tx.send_replace(*status);
                    // Nothing follows a final state; a later waiter sees
                    // it at once without a channel.
                    if status.is_final() {
                        self.watchers.remove(id);
                    }
                }
                false
            }
            Effect::Poll { device } => {
                if let Some(poller) = self.pollers.get(device) {
                    poller.notify_waiters();
                }
                false
            }
            _ => true,
        });
    }

    /// A receiver of the command's state changes.
    fn watch(&mut self, id: Arc<str>, status: CommandStatus) -> watch::Receiver<CommandStatus> {
        self.watchers
            .entry(id)
            .or_insert_with(|| watch::Sender::new(status))
            .subscribe()
    }
}

impl Commands {
    /// Starts the engine: loads stored commands when `data_dir` is given,
    /// taps the broker for acks, follows the fleet's connectivity.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        data_dir: Option<&Path>,
        writers: &crate::sqlite::Writers,
        tasks: &Tasks,
        clock: Clock,
        fleet: Fleet,
        mqtt: MqttHandle,
        plugins: PluginHost,
        seed: u64,
        shards: usize,
    ) -> Result<Self, CommandError> {
        let store = match data_dir {
            Some(dir) => Some(CommandStore::open(dir, writers).await?),
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
            let (tx, rx) = mpsc::channel(shards::SHARD_QUEUE);
            shard_txs.push(tx);
            shard_rxs.push(rx);
        }
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                machine: Machine::new(store.is_some()),
                watchers: HashMap::new(),
                pollers: HashMap::new(),
            }),
            clock,
            fleet,
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
            tasks: tasks.clone(),
        });
        let commands = Commands(inner);
        commands.restore().await?;
        for rx in shard_rxs {
            tasks.spawn(shards::run_shard(
                Arc::downgrade(&commands.0),
                rx,
                plugins.clone(),
                seed,
            ));
        }
        tasks.spawn(driver::run_driver(Arc::downgrade(&commands.0)));
        commands.follow(ack_rx, cmd_rx);
        Ok(commands)
    }

    /// Brings stored commands back: queued ones wait again (or go out if
    /// their device is online), in-flight ones get their timeout re-armed.
    async fn restore(&self) -> Result<(), CommandError> {
        let Some(store) = &self.0.store else {
            return Ok(());
        };
        let stored = store.load_all().await?;
        let count = stored.len();
        let now = self.0.clock.now_ms();
        let queued = {
            let mut core = self.0.core.lock().unwrap();
            core.machine.restore(stored, now);
            core.machine.queued_devices()
        };
        // Devices online now take their queued commands.
        let reachable: Vec<String> = queued
            .into_iter()
            .filter(|d| self.0.deliverable(d))
            .collect();
        let mut effects = Vec::new();
        {
            let mut core = self.0.core.lock().unwrap();
            for device in &reachable {
                core.machine.deliver_queued(device, now, &mut effects);
            }
            core.signal(&mut effects);
        }
        if count > 0 {
            tracing::info!(commands = count, "commands restored from the store");
        }
        // Effects of a restore are publishes and writes; run them on the
        // runtime (start is async, so there is one).
        let inner = self.0.clone();
        self.0
            .tasks
            .spawn(async move { inner.run_effects(effects).await });
        self.0.wake.notify_one();
        Ok(())
    }

    /// Sends a command to one device.
    pub(crate) async fn submit(
        &self,
        device: &str,
        request: CommandRequest,
    ) -> Result<CommandView, CommandError> {
        self.submit_as(device, request, Origin::Api, None).await
    }

    /// Sends a command to one device on behalf of `origin`.
    pub(crate) async fn submit_as(
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
        let (view, id) = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let id = core.machine.create(
                device,
                request,
                checked,
                origin,
                batch,
                online,
                now,
                &mut effects,
            )?;
            core.signal(&mut effects);
            let view = core.machine.view(&id).expect("just created").clone();
            (view, id)
        };
        self.0
            .store_created(&[id], &[device.to_string()], None, &mut effects)
            .await?;
        self.0.wake.notify_one();
        self.0.run_effects(effects).await;
        Ok(view)
    }

    /// Sends a command to every device of a selection. Devices are
    /// resolved now; the answer lists one command per device.
    pub(crate) async fn submit_fleet(
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
        let reach: Vec<(String, bool)> = devices
            .iter()
            .map(|d| (d.clone(), self.0.deliverable(d)))
            .collect();
        let mut effects = Vec::new();
        let (batch_id, ids) = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let made = core.machine.create_batch(
                &request.name,
                &reach,
                &per_device,
                checked,
                now,
                &mut effects,
            );
            core.signal(&mut effects);
            made?
        };
        self.0
            .store_created(&ids, &devices, Some(&batch_id), &mut effects)
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

    pub(crate) fn get(&self, id: &str) -> Result<CommandView, CommandError> {
        let core = self.0.core.lock().unwrap();
        core.machine
            .view(id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(id.to_string()))
    }

    /// Waits up to `max` for the command to reach a final state and
    /// returns it as it is then.
    pub(crate) async fn wait(&self, id: &str, max: Duration) -> Result<CommandView, CommandError> {
        let rx = {
            let mut core = self.0.core.lock().unwrap();
            let (key, status) = core
                .machine
                .status(id)
                .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
            (!status.is_final()).then(|| core.watch(key, status))
        };
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(max, rx.wait_for(|s| s.is_final())).await;
        }
        self.get(id)
    }

    /// A fleet command's per-device outcomes and summary.
    pub(crate) fn batch(&self, id: &str) -> Result<BatchView, CommandError> {
        let core = self.0.core.lock().unwrap();
        core.machine
            .batch(id)
            .ok_or_else(|| CommandError::NoBatch(id.to_string()))
    }

    /// Waits up to `max` for every command of a fleet command to be final.
    pub(crate) async fn wait_batch(
        &self,
        id: &str,
        max: Duration,
    ) -> Result<BatchView, CommandError> {
        let receivers: Vec<watch::Receiver<CommandStatus>> = {
            let mut core = self.0.core.lock().unwrap();
            let members = core
                .machine
                .batch_members(id)
                .ok_or_else(|| CommandError::NoBatch(id.to_string()))?;
            members
                .into_iter()
                .filter(|(_, status)| !status.is_final())
                .map(|(cid, status)| core.watch(cid, status))
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

    pub(crate) fn list(&self, filter: &CommandFilter) -> Result<CommandPage, CommandError> {
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
        Ok(core.machine.list(filter, start, limit))
    }

    /// Cancels a command that is still queued.
    pub(crate) async fn cancel(&self, id: &str) -> Result<CommandView, CommandError> {
        let mut effects = Vec::new();
        let (view, id, undo) = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let undo = core.machine.cancel(id, now, &mut effects)?;
            core.signal(&mut effects);
            let (key, _) = core.machine.status(id).expect("just cancelled");
            let view = core.machine.view(id).expect("just cancelled").clone();
            (view, key, undo)
        };
        self.0.store_change(&id, undo, &mut effects).await?;
        self.0.run_effects(effects).await;
        Ok(view)
    }

    /// An ack from a device over HTTP.
    pub(crate) async fn ack(
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
    pub(crate) async fn ack_from(
        &self,
        device: &str,
        command_id: &str,
        ack: DeviceAck,
        source: AckSource,
    ) -> Result<CommandView, CommandError> {
        let not_found = || CommandError::NotFound(command_id.to_string());
        let mut effects = Vec::new();
        let view = {
            let mut core = self.0.core.lock().unwrap();
            let now = self.0.clock.now_ms();
            let acked = core
                .machine
                .ack(device, command_id, ack, source, now, &mut effects);
            core.signal(&mut effects);
            acked.map_err(|_| not_found())?;
            core.machine
                .view(command_id)
                .cloned()
                .ok_or_else(not_found)?
        };
        self.0.run_effects(effects).await;
        Ok(view)
    }

    /// For HTTP devices: waits up to `wait` for a command delivered to the
    /// device and not yet fetched in its current attempt.
    pub(crate) async fn next_for(&self, device: &str, wait: Duration) -> Option<CommandMessage> {
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
                core.machine.deliver_queued(device, now, &mut effects);
                core.signal(&mut effects);
            }
            if !effects.is_empty() {
                self.0.run_effects(effects).await;
                self.0.wake.notify_one();
            }
            if let Some(message) = self.0.core.lock().unwrap().machine.fetch_for_http(device) {
                return Some(message);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

impl Inner {
    /// Whether a command sent to the device now would reach it: a
    /// simulated device that is online, or a real one that is online and
    /// subscribed to its command topic (one that polls over HTTP takes its
    /// queued commands when it polls). Asked without the engine's lock.
    fn deliverable(&self, device: &str) -> bool {
        match self.fleet.command_target(device) {
            Ok(target) => self.deliverable_to(device, &target),
            Err(_) => false,
        }
    }

    fn deliverable_to(&self, device: &str, target: &crate::fleet::CommandTarget) -> bool {
        target.online
            && (target.simulated
                || self
                    .mqtt
                    .listens(device, &follow::command_probe(device, target)))
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
}
