//! The state machine's timers: an attempt's timeout, the backoff before a
//! retry, a queued command's expiry, and the scheduled replies (and
//! offline spells) of simulated devices. Timers fire one at a time in due
//! order, each at its own due time, whatever `now` the caller has reached,
//! so a long step of the clock plays out as small steps would.

use std::cmp::Reverse;
use std::sync::Arc;

use serde_json::Value;

use super::{Effect, Machine};
use crate::commands::model::*;
use crate::plugin::Handling;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
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

/// What [`Machine::fire_due`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fire {
    /// No timer is due.
    Idle,
    /// One timer fired (possibly finding nothing left to do).
    Fired,
    /// The next timer is a retry to this device: say whether the device
    /// can be reached and call again.
    NeedsReach(String),
}

impl Machine {
    pub(super) fn schedule(&mut self, due: i64, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((due, self.timer_seq, timer)));
    }

    /// When the next timer is due, if any.
    pub(crate) fn next_due(&self) -> Option<i64> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Fires the earliest timer due at or before `now`, at its own due
    /// time. `reach` says whether a device can be reached; a retry about
    /// to go out needs that for its device, and when `reach` does not say
    /// it the timer stays where it is and [`Fire::NeedsReach`] names the
    /// device.
    pub(crate) fn fire_due(
        &mut self,
        now: i64,
        reach: Option<(&str, bool)>,
        effects: &mut Vec<Effect>,
    ) -> Fire {
        let (due, needs) = match self.timers.peek() {
            Some(Reverse((due, _, timer))) if *due <= now => (*due, self.needs_reach(timer)),
            _ => return Fire::Idle,
        };
        let reachable = match (needs, reach) {
            (None, _) => false,
            (Some(device), Some((known, reachable))) if device == known => reachable,
            (Some(device), _) => return Fire::NeedsReach(device),
        };
        let Reverse((_, _, timer)) = self.timers.pop().expect("peeked");
        self.fire(timer, due, reachable, effects);
        Fire::Fired
    }

    /// The device a timer needs reachability of: a retry that still has
    /// its attempt to make.
    fn needs_reach(&self, timer: &Timer) -> Option<String> {
        let Timer::Retry { id, attempt } = timer else {
            return None;
        };
        let rec = self.commands.get(id)?;
        (!rec.view.status.is_final() && rec.view.attempts + 1 == *attempt)
            .then(|| rec.view.device.clone())
    }

    fn fire(&mut self, timer: Timer, now: i64, reachable: bool, effects: &mut Vec<Effect>) {
        match timer {
            Timer::AttemptTimeout { id, attempt } => {
                self.attempt_timed_out(id, attempt, now, effects)
            }
            Timer::Retry { id, attempt } => self.retry(id, attempt, reachable, now, effects),
            Timer::Expire { id } => self.expire(id, now, effects),
            Timer::Reply {
                id,
                device,
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
                    status,
                    result: result_value,
                };
                // A command forgotten since is counted as an unknown ack.
                let _ = self.ack(&device, &id, ack, AckSource::Simulated, now, effects);
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

    /// No final ack within the attempt's timeout: retry after the backoff
    /// (doubling per attempt, capped), or time out after the last one.
    fn attempt_timed_out(
        &mut self,
        id: Arc<str>,
        attempt: u32,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let Some(rec) = self.commands.get_mut(&id) else {
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
            if self.durable {
                effects.push(super::persist(rec));
            }
            self.schedule(
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
            self.finish(
                &id,
                CommandStatus::TimedOut,
                None,
                Some(reason),
                now,
                effects,
            );
            self.evict(effects);
        }
    }

    /// The backoff is over: send again when the device can be reached,
    /// else wait in its queue until it can or the TTL has passed.
    fn retry(
        &mut self,
        id: Arc<str>,
        attempt: u32,
        reachable: bool,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let Some(rec) = self.commands.get(&id) else {
            return;
        };
        if rec.view.status.is_final() || rec.view.attempts + 1 != attempt {
            return;
        }
        let device = rec.view.device.clone();
        let expires = rec.view.expires_at;
        if reachable {
            self.deliver(&id, now, effects);
        } else if now >= expires {
            let reason = format!(
                "device offline for retry {} and the ttl has passed",
                attempt - 1
            );
            self.finish(
                &id,
                CommandStatus::TimedOut,
                None,
                Some(reason),
                now,
                effects,
            );
            self.evict(effects);
        } else {
            if let Some(f) = self.inflight.get_mut(&device) {
                f.retain(|c| *c != id);
            }
            self.queues.entry(device).or_default().push_back(id.clone());
            self.transition(
                &id,
                CommandStatus::Queued,
                Some("device offline; the retry waits for it".into()),
                now,
                effects,
            );
            self.schedule(expires, Timer::Expire { id });
        }
    }

    /// A queued command's TTL ran out.
    fn expire(&mut self, id: Arc<str>, now: i64, effects: &mut Vec<Effect>) {
        let Some(rec) = self.commands.get(&id) else {
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
        self.finish(&id, status, None, Some(reason), now, effects);
        self.evict(effects);
    }

    /// A simulated device's handler answered the command sent at `at`:
    /// its replies are due one after another from then, and an offline
    /// spell it asked for starts after the last one.
    pub(crate) fn schedule_replies(
        &mut self,
        device: &str,
        message: &CommandMessage,
        handling: Handling,
        at: i64,
    ) {
        let id: Arc<str> = match self.commands.get_key_value(message.id.as_str()) {
            Some((k, _)) => k.clone(),
            None => return,
        };
        let mut at = at;
        for reply in handling.replies {
            at = at.saturating_add(i64::from(reply.delay_ms));
            self.schedule(
                at,
                Timer::Reply {
                    id: id.clone(),
                    device: device.to_string(),
                    status: reply.status.into(),
                    result: reply.result,
                },
            );
        }
        if let Some(ms) = handling.offline_ms {
            self.schedule(
                at,
                Timer::GoOffline {
                    device: device.to_string(),
                },
            );
            self.schedule(
                at.saturating_add(i64::from(ms)),
                Timer::BackOnline {
                    device: device.to_string(),
                },
            );
        }
    }
}
