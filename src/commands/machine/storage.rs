//! What persistence asks of the state machine: taking stored commands
//! back after a restart (the state each one resumes in), marking new
//! commands stored or taking them back when their write failed, and the
//! cancel, whose change is put back when it cannot be stored.

use std::sync::Arc;

use super::timers::Timer;
use super::{Batch, Effect, Machine, Rec, Undo};
use crate::commands::CommandError;
use crate::commands::model::*;
use crate::commands::store::Stored;

impl Machine {
    /// Takes back stored commands: final ones as they were, queued ones
    /// into their device's queue with their expiry, in-flight ones with
    /// the timeout of their attempt re-armed (at once when it is unknown).
    /// Queued commands go out when the caller then finds their device
    /// reachable (see [`Machine::queued_devices`]).
    pub(crate) fn restore(&mut self, stored: Vec<Stored>, now: i64) {
        for s in stored {
            let id: Arc<str> = s.view.id.as_str().into();
            self.next_seq = self.next_seq.max(s.seq + 1);
            if let Some(batch) = &s.view.batch {
                self.batches
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
            let expires = s.view.expires_at;
            self.order.insert(s.seq, id.clone());
            self.commands.insert(
                id.clone(),
                Rec {
                    seq: s.seq,
                    // Above any version written before the restart, so
                    // the first change after it is stored.
                    version: 1 << 32,
                    deadline: s.deadline,
                    http_fetched: 0,
                    view: s.view,
                },
            );
            let deadline = s.deadline;
            match status {
                final_status if final_status.is_final() => self.finals += 1,
                CommandStatus::Queued => {
                    self.queues.entry(device).or_default().push_back(id.clone());
                    self.schedule(expires, Timer::Expire { id });
                }
                _ => {
                    self.inflight.entry(device).or_default().push(id.clone());
                    self.schedule(
                        deadline.unwrap_or(now),
                        Timer::AttemptTimeout {
                            id,
                            attempt: attempts,
                        },
                    );
                }
            }
        }
    }

    /// The new commands `ids` are stored: they may leave the engine now.
    /// Their queued ones go out with the caller's next
    /// [`Machine::deliver_queued`].
    pub(crate) fn mark_stored(&mut self, ids: &[Arc<str>]) {
        for id in ids {
            self.unstored.remove(id);
        }
    }

    /// Forgets new commands that could not be stored, and their fleet
    /// command: they leave no trace (their timers find nothing and do
    /// nothing) and are not counted as submitted.
    pub(crate) fn take_back(&mut self, ids: &[Arc<str>], batch: Option<&str>) {
        for id in ids {
            self.unstored.remove(id);
            let Some(rec) = self.commands.remove(id) else {
                continue;
            };
            self.counts.submitted -= 1;
            self.order.remove(&rec.seq);
            let device = &rec.view.device;
            self.leave_lists(id, device);
        }
        if let Some(batch) = batch {
            self.batches.remove(batch);
        }
    }

    /// Cancels a command that is still queued. Returns what to put back
    /// (with [`Machine::undo`]) if the cancel cannot be stored.
    pub(crate) fn cancel(
        &mut self,
        id: &str,
        now: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<Undo, CommandError> {
        let (id, rec) = self
            .commands
            .get_key_value(id)
            .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
        if rec.view.status != CommandStatus::Queued {
            return Err(CommandError::Conflict(format!(
                "command {id:?} is {}; only a queued command can be cancelled",
                rec.view.status.as_str()
            )));
        }
        let id = id.clone();
        let undo = Undo {
            view: rec.view.clone(),
            version: rec.version,
            queue_at: self
                .queues
                .get(&rec.view.device)
                .and_then(|q| q.iter().position(|c| *c == id)),
        };
        self.finish(
            &id,
            CommandStatus::Cancelled,
            None,
            Some("cancelled over the API".into()),
            now,
            effects,
        );
        Ok(undo)
    }

    /// Puts back what an API change replaced, unless something else
    /// changed the command since.
    pub(crate) fn undo(&mut self, id: &Arc<str>, undo: Undo, effects: &mut Vec<Effect>) {
        let finished = undo.view.status.is_final();
        let Some(rec) = self.commands.get_mut(id) else {
            return;
        };
        if rec.version != undo.version + 1 {
            return;
        }
        let was_final = rec.view.status.is_final();
        effects.push(Effect::Status {
            id: id.clone(),
            status: undo.view.status,
        });
        rec.view = undo.view;
        rec.version = undo.version;
        let device = rec.view.device.clone();
        if was_final && !finished {
            self.finals -= 1;
        }
        if let Some(at) = undo.queue_at {
            let queue = self.queues.entry(device.clone()).or_default();
            queue.insert(at.min(queue.len()), id.clone());
            // A device polling over HTTP takes it back on its next look.
            effects.push(Effect::Poll { device });
        }
    }
}
