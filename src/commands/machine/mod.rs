//! The command state machine: every command's record, the per-device
//! queues (waiting for a device to come online) and in-flight lists, the
//! timers, and the transitions between the states of [`CommandStatus`].
//!
//! It is pure: each operation takes the simulated time `now` and the facts
//! it needs about the outside (whether a device can be reached, whether a
//! write succeeded) and appends [`Effect`]s for the caller to carry out. It
//! does no I/O, never awaits and holds no lock; the engine's handle keeps
//! it under its mutex and runs the effects once the mutex is released.
//! Counters of what happened are plain numbers here for the same reason.
//! Creation and delivery are here; acks in `acks`; timers and the
//! simulated devices' replies in `timers`; restart recovery, failed
//! writes and cancels in `storage`; reads for the API in `query`.

mod acks;
mod query;
mod storage;
#[cfg(test)]
mod tests;
mod timers;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::effects::Effect;
use super::model::*;
use super::request::Checked;
use super::{CommandError, DEVICE_QUEUE_CAPACITY, FINAL_CAPACITY};

pub(crate) use timers::Fire;
use timers::Timer;

/// What happened, counted; the handle adds what only I/O can see.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub submitted: u64,
    pub deliveries: u64,
    pub retries: u64,
    pub acks: u64,
    pub acks_ignored: u64,
    pub acks_unknown: u64,
    pub evicted: u64,
}

/// Why an ack moved nothing because it matched no command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckRefused {
    /// No command has that id (never was, or was forgotten).
    Unknown,
    /// The command is another device's.
    OtherDevice,
}

pub(crate) struct Machine {
    /// With a store, every change is handed out as an [`Effect::Persist`]
    /// with a copy of the record; without one, nothing is copied.
    durable: bool,
    /// Final commands kept ([`FINAL_CAPACITY`]).
    final_capacity: usize,
    commands: HashMap<Arc<str>, Rec>,
    /// Creation order (seq → id): listing and eviction.
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    /// Per device, commands waiting for it to come online, oldest first.
    queues: HashMap<String, VecDeque<Arc<str>>>,
    /// Per device, commands delivered and not final, oldest first.
    inflight: HashMap<String, Vec<Arc<str>>>,
    timers: BinaryHeap<Reverse<(i64, u64, Timer)>>,
    timer_seq: u64,
    batches: HashMap<String, Batch>,
    finals: usize,
    /// New commands whose first write is under way: nothing about them
    /// leaves the engine (a queued one is not delivered, an HTTP device
    /// does not fetch it) until it is stored.
    unstored: HashSet<Arc<str>>,
    counts: Counts,
}

struct Batch {
    name: String,
    ids: Vec<Arc<str>>,
}

struct Rec {
    view: CommandView,
    seq: u64,
    /// Bumped on every change; the store keeps the highest it was given.
    version: u64,
    /// When the attempt in flight times out.
    deadline: Option<i64>,
    /// The attempt an HTTP device last fetched.
    http_fetched: u32,
}

/// What an API change of a command replaced, to put back when the change
/// cannot be stored.
#[derive(Debug)]
pub(crate) struct Undo {
    view: CommandView,
    version: u64,
    /// Where the command stood in its device's queue.
    queue_at: Option<usize>,
}

impl Machine {
    pub(super) fn new(durable: bool) -> Self {
        Machine {
            durable,
            final_capacity: FINAL_CAPACITY,
            commands: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
            queues: HashMap::new(),
            inflight: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            batches: HashMap::new(),
            finals: 0,
            unstored: HashSet::new(),
            counts: Counts::default(),
        }
    }

    /// Devices with commands waiting for them.
    pub(super) fn queued_devices(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// Whether a device's queue is at its capacity.
    fn queue_full(&self, device: &str) -> bool {
        self.queues.get(device).map_or(0, VecDeque::len) >= DEVICE_QUEUE_CAPACITY
    }

    /// Creates a command for `device`: delivered now when `online` (the
    /// caller knows whether the device can be reached), else queued until
    /// it comes online or its TTL runs out.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &mut self,
        device: &str,
        request: CommandRequest,
        checked: Checked,
        origin: Origin,
        batch: Option<&str>,
        online: bool,
        now: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<Arc<str>, CommandError> {
        let seq = self.next_seq;
        let id: Arc<str> = match &request.id {
            Some(id) if self.commands.contains_key(id.as_str()) => {
                return Err(CommandError::Conflict(format!(
                    "a command with id {id:?} exists; pick another id or leave it out"
                )));
            }
            Some(id) => id.as_str().into(),
            None => format!("cmd-{seq:06}").into(),
        };
        if !online && self.queue_full(device) {
            return Err(CommandError::QueueFull {
                device: device.to_string(),
                capacity: DEVICE_QUEUE_CAPACITY,
            });
        }
        self.next_seq += 1;
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
        };
        if self.durable {
            effects.push(persist(&rec));
            self.unstored.insert(id.clone());
        }
        self.commands.insert(id.clone(), rec);
        self.order.insert(seq, id.clone());
        self.counts.submitted += 1;
        if online {
            self.deliver(&id, now, effects);
        } else {
            self.queues
                .entry(device.to_string())
                .or_default()
                .push_back(id.clone());
            let expires = self.commands[&id].view.expires_at;
            self.schedule(expires, Timer::Expire { id: id.clone() });
            // An HTTP device waiting in a long poll takes it at once.
            effects.push(Effect::Poll {
                device: device.to_string(),
            });
        }
        Ok(id)
    }

    /// Creates one command per device of a fleet command, all or none:
    /// every device's queue is checked before any command is made.
    /// `devices` pairs each device with whether it can be reached now.
    pub(super) fn create_batch(
        &mut self,
        name: &str,
        devices: &[(String, bool)],
        request: &CommandRequest,
        checked: Checked,
        now: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<(String, Vec<Arc<str>>), CommandError> {
        let batch_id = format!("batch-{:06}", self.next_seq);
        for (device, _) in devices {
            if self.queue_full(device) {
                return Err(CommandError::QueueFull {
                    device: device.clone(),
                    capacity: DEVICE_QUEUE_CAPACITY,
                });
            }
        }
        let mut ids = Vec::with_capacity(devices.len());
        for (device, online) in devices {
            let id = self.create(
                device,
                request.clone(),
                checked,
                Origin::Api,
                Some(&batch_id),
                *online,
                now,
                effects,
            )?;
            ids.push(id);
        }
        self.batches.insert(
            batch_id.clone(),
            Batch {
                name: name.to_string(),
                ids: ids.clone(),
            },
        );
        Ok((batch_id, ids))
    }

    /// Takes a command out of its device's queue and in-flight list.
    fn leave_lists(&mut self, id: &Arc<str>, device: &str) {
        if let Some(q) = self.queues.get_mut(device) {
            q.retain(|c| c != id);
            if q.is_empty() {
                self.queues.remove(device);
            }
        }
        if let Some(f) = self.inflight.get_mut(device) {
            f.retain(|c| c != id);
            if f.is_empty() {
                self.inflight.remove(device);
            }
        }
    }

    /// Sends the next attempt of a command to its (reachable) device.
    fn deliver(&mut self, id: &Arc<str>, now: i64, effects: &mut Vec<Effect>) {
        let (device, attempt, timeout) = {
            let rec = self.commands.get_mut(id).expect("a known command");
            rec.view.attempts += 1;
            rec.deadline = Some(now.saturating_add(rec.view.timeout_ms as i64));
            (
                rec.view.device.clone(),
                rec.view.attempts,
                rec.view.timeout_ms,
            )
        };
        let inflight = self.inflight.entry(device.clone()).or_default();
        if !inflight.contains(id) {
            inflight.push(id.clone());
        }
        self.transition(id, CommandStatus::Sent, None, now, effects);
        self.schedule(
            now.saturating_add(timeout as i64),
            Timer::AttemptTimeout {
                id: id.clone(),
                attempt,
            },
        );
        if attempt > 1 {
            self.counts.retries += 1;
        }
        self.counts.deliveries += 1;
        effects.push(Effect::Poll {
            device: device.clone(),
        });
        let message = message_of(&self.commands[id].view);
        effects.push(Effect::Send {
            device,
            message,
            at: now,
        });
    }

    /// Delivers every stored queued command of a device the caller found
    /// reachable (online, or polling over HTTP).
    pub(super) fn deliver_queued(&mut self, device: &str, now: i64, effects: &mut Vec<Effect>) {
        let Some(queue) = self.queues.remove(device) else {
            return;
        };
        let mut waiting = VecDeque::new();
        for id in queue {
            if self.unstored.contains(&id) {
                waiting.push_back(id);
            } else if self.commands.get(&id).map(|r| r.view.status) == Some(CommandStatus::Queued) {
                self.deliver(&id, now, effects);
            }
        }
        if !waiting.is_empty() {
            self.queues.insert(device.to_string(), waiting);
        }
    }

    /// For an HTTP device: the oldest command delivered to it and not yet
    /// fetched in its current attempt, marked fetched.
    pub(super) fn fetch_for_http(&mut self, device: &str) -> Option<CommandMessage> {
        let id = self
            .inflight
            .get(device)?
            .iter()
            .find(|id| {
                let r = &self.commands[*id];
                r.http_fetched < r.view.attempts && !self.unstored.contains(*id)
            })?
            .clone();
        let rec = self.commands.get_mut(&id).expect("in flight");
        rec.http_fetched = rec.view.attempts;
        Some(message_of(&rec.view))
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
        rec.version += 1;
        effects.push(Effect::Status {
            id: id.clone(),
            status,
        });
        if self.durable {
            effects.push(persist(rec));
        }
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
        self.leave_lists(id, &device);
        self.transition(id, status, reason, now, effects);
        self.finals += 1;
    }

    /// Forgets the oldest final commands beyond the capacity.
    fn evict(&mut self, effects: &mut Vec<Effect>) {
        if self.finals <= self.final_capacity {
            return;
        }
        let mut gone = Vec::new();
        for (seq, id) in &self.order {
            if self.finals - gone.len() <= self.final_capacity {
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
            self.counts.evicted += 1;
            if self.durable {
                effects.push(Effect::Forget(id));
            }
        }
    }
}

/// A copy of the record for the store; only made when there is one.
fn persist(rec: &Rec) -> Effect {
    Effect::Persist {
        seq: rec.seq,
        version: rec.version,
        deadline: rec.deadline,
        view: Box::new(rec.view.clone()),
    }
}

fn message_of(v: &CommandView) -> CommandMessage {
    CommandMessage {
        id: v.id.clone(),
        name: v.name.clone(),
        params: v.params.clone(),
        attempt: v.attempts,
    }
}
