//! What the state machine asks of the outside world, and how it is done:
//! commands and simulated acks published on the broker (in the device's
//! dialect when it has its own), records written to and removed from the
//! store, simulated devices taken offline and back, waiters and HTTP
//! polls woken. The machine only lists effects; they run here after the
//! engine's lock is released, except the wake-ups, which are cheap and
//! done under it so that nobody misses a change (see `Core::signal`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use super::model::*;
use crate::dialect::{Outgoing, encode_and_publish};
use crate::mqtt::{Qos, topics};
use crate::plugin::CodecEvent;

/// What an operation on the state machine asks to be done.
pub(crate) enum Effect {
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
    /// Write a command's record (only asked for when there is a store).
    Persist {
        seq: u64,
        version: u64,
        deadline: Option<i64>,
        view: Box<CommandView>,
    },
    /// Remove a forgotten command from the store.
    Forget(Arc<str>),
    SetOnline {
        device: String,
        online: bool,
    },
    /// A command's state changed: wake whoever waits for it.
    Status {
        id: Arc<str>,
        status: CommandStatus,
    },
    /// A device may have something to fetch: wake its HTTP long-poll.
    Poll {
        device: String,
    },
}

impl Inner {
    pub(super) async fn run_effects(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send {
                    device,
                    message,
                    at,
                } => {
                    let target = self.fleet.command_target(&device).ok();
                    let coded = self
                        .in_dialect(target.as_ref(), || {
                            Some(CodecEvent::Command {
                                id: message.id.clone(),
                                name: message.name.clone(),
                                params: message.params.to_string(),
                                attempt: message.attempt,
                            })
                        })
                        .await;
                    if !coded {
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
                } => self.publish_ack(device, id, payload).await,
                Effect::Persist {
                    seq,
                    version,
                    deadline,
                    view,
                } => {
                    if let Some(store) = &self.store {
                        let written = store.put(seq, version, deadline, &view).await;
                        if let Err(error) = written {
                            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                            crate::ratelimit::error_limited!(command = %view.id, %error, "could not store a command");
                        }
                    }
                }
                Effect::Forget(id) => {
                    if let Some(store) = &self.store {
                        let removed = store.delete(&id).await;
                        if let Err(error) = removed {
                            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                            crate::ratelimit::error_limited!(command = %id, %error, "could not forget a command");
                        }
                    }
                }
                Effect::SetOnline { device, online } => {
                    self.fleet.set_simulated_online(&device, online).await;
                }
                signal @ (Effect::Status { .. } | Effect::Poll { .. }) => {
                    self.core.lock().unwrap().signal(&mut vec![signal]);
                }
            }
        }
    }

    /// Publishes a simulated device's ack, in its dialect when it has one.
    async fn publish_ack(&self, device: String, id: Arc<str>, payload: String) {
        let target = self.fleet.command_target(&device).ok();
        let coded = self
            .in_dialect(target.as_ref(), || {
                let ack: DeviceAck = serde_json::from_str(&payload).ok()?;
                Some(CodecEvent::Ack {
                    command_id: id.to_string(),
                    status: ack.status.into(),
                    result: ack.result.map(|r| r.to_string()),
                })
            })
            .await;
        if !coded {
            self.mqtt
                .publish(&topics::ack(&device, &id), payload, Qos::AtLeastOnce, false)
                .await;
        }
    }

    /// Publishes the event `event` makes in the target's dialect when it
    /// has one other than the built-in path (the event is made only then);
    /// false when the built-in path is to write it.
    async fn in_dialect(
        &self,
        target: Option<&crate::fleet::CommandTarget>,
        event: impl FnOnce() -> Option<CodecEvent>,
    ) -> bool {
        let Some(target) = target.filter(|t| !t.dialect.native(&self.plugins)) else {
            return false;
        };
        let Some(event) = event() else {
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
}
