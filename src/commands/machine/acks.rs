//! Acks in the state machine: which ones move a command (to received
//! or a final state) and which are only recorded, marked ignored (late,
//! early, duplicate, progress).

use std::sync::Arc;

use super::{AckRefused, Effect, Machine};
use crate::commands::model::*;

impl Machine {
    /// A device's ack. Acks that cannot move the command (late, early,
    /// duplicates, progress) are kept in its record, marked ignored.
    pub(crate) fn ack(
        &mut self,
        device: &str,
        id: &str,
        ack: DeviceAck,
        source: AckSource,
        now: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), AckRefused> {
        let Some((key, rec)) = self.commands.get_key_value(id) else {
            self.counts.acks_unknown += 1;
            return Err(AckRefused::Unknown);
        };
        if rec.view.device != device {
            self.counts.acks_unknown += 1;
            return Err(AckRefused::OtherDevice);
        }
        let id = key.clone();
        self.counts.acks += 1;
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
            let rec = self.commands.get_mut(&id).expect("found above");
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
            self.counts.acks_ignored += 1;
            if self.durable {
                effects.push(super::persist(&self.commands[&id]));
            }
            return Ok(());
        }
        let finished = match ack.status {
            AckStatus::Received if complete_on == CompleteOn::Received => {
                Some(CommandStatus::Completed)
            }
            AckStatus::Received => None,
            AckStatus::Completed => Some(CommandStatus::Completed),
            AckStatus::Rejected => Some(CommandStatus::Rejected),
            AckStatus::Failed => Some(CommandStatus::Failed),
        };
        match finished {
            Some(final_status) => self.finish(&id, final_status, ack.result, None, now, effects),
            None => {
                // A command waiting in the queue for a retry that the
                // device acknowledges after all is back in flight.
                if status == CommandStatus::Queued {
                    self.unqueue(&id);
                }
                if ack.result.is_some() {
                    self.commands.get_mut(&id).expect("known").view.result = ack.result;
                }
                self.transition(&id, CommandStatus::Received, None, now, effects);
            }
        }
        self.evict(effects);
        Ok(())
    }

    fn unqueue(&mut self, id: &Arc<str>) {
        let device = self.commands[id].view.device.clone();
        if let Some(q) = self.queues.get_mut(&device) {
            q.retain(|c| c != id);
        }
        let inflight = self.inflight.entry(device).or_default();
        if !inflight.contains(id) {
            inflight.push(id.clone());
        }
    }
}
