//! What the engine follows from outside: acks real devices publish on
//! `devices/{id}/acks/{command_id}`, commands a back end publishes itself
//! on `devices/{id}/commands/{command_id}` (both read through in-process
//! taps on the broker), and the connectivity changes and subscriptions
//! that let queued commands go out. Each is one task; each turns what it
//! reads into an operation on the state machine.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use super::effects::Effect;
use super::machine::AckRefused;
use super::model::*;
use super::request::check_request;
use super::{Commands, Inner};
use crate::mqtt::{Tapped, topics};

impl Commands {
    /// Starts the tasks that follow the broker and the fleet.
    pub(super) fn follow(&self, acks: mpsc::Receiver<Tapped>, published: mpsc::Receiver<Tapped>) {
        let weak = || std::sync::Arc::downgrade(&self.0);
        let tasks = &self.0.tasks;
        tasks.spawn(follow_acks(weak(), acks));
        tasks.spawn(follow_device_commands(weak(), published));
        tasks.spawn(follow_presence(weak(), self.0.fleet.presence_events()));
        tasks.spawn(follow_subscriptions(weak(), self.0.mqtt.subscriptions()));
    }
}

/// The topic a command to `device` goes out on (for a command id `x`): in
/// its dialect when it has one other than iotmock's and its codec said.
pub(super) fn command_probe(device: &str, target: &crate::fleet::CommandTarget) -> String {
    match target.dialect.command_probe() {
        Some(topic) if !target.dialect.is_default() => topic.to_string(),
        _ => topics::command(device, "x"),
    }
}

/// Reads acks real devices publish.
async fn follow_acks(inner: Weak<Inner>, mut rx: mpsc::Receiver<Tapped>) {
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
        let refused = {
            let mut core = i.core.lock().unwrap();
            let now = i.clock.now_ms();
            let refused = core
                .machine
                .ack(device, id, ack, AckSource::Mqtt, now, &mut effects);
            core.signal(&mut effects);
            refused
        };
        match refused {
            Err(AckRefused::Unknown) => {
                tracing::debug!(device, command = id, "ack for an unknown command")
            }
            Err(AckRefused::OtherDevice) => tracing::debug!(
                device,
                command = id,
                "ack from another device than the command's"
            ),
            Ok(()) => {}
        }
        i.run_effects(effects).await;
        i.wake.notify_one();
    }
}

/// Commands a back end publishes itself on `devices/{id}/commands/{cid}`:
/// the broker delivers them; the engine follows their acks, and a
/// simulated device answers them through its handler.
async fn follow_device_commands(inner: Weak<Inner>, mut rx: mpsc::Receiver<Tapped>) {
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
            if core.machine.view(id).is_some() {
                continue;
            }
            let now = i.clock.now_ms();
            // The broker already delivered it (or holds it in the
            // device's session): it counts as sent whatever the presence.
            let created = core.machine.create(
                device,
                request,
                checked,
                Origin::Mqtt,
                None,
                true,
                now,
                &mut effects,
            );
            core.signal(&mut effects);
            if created.is_err() {
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
    inner: Weak<Inner>,
    mut events: broadcast::Receiver<crate::fleet::PresenceChange>,
) {
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
                i.core.lock().unwrap().machine.queued_devices()
            }
            Err(RecvError::Closed) => return,
        };
        let Some(i) = inner.upgrade() else { return };
        i.deliver_if_reachable(devices).await;
    }
}

/// Delivers a real device's queued commands once it subscribes to its
/// command topic.
async fn follow_subscriptions(
    inner: Weak<Inner>,
    mut events: broadcast::Receiver<crate::mqtt::Subscribed>,
) {
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
        i.deliver_if_reachable(vec![device.to_string()]).await;
    }
}

impl Inner {
    /// Delivers the queued commands of those of `devices` that can be
    /// reached (asked before taking the lock).
    pub(super) async fn deliver_if_reachable(&self, devices: Vec<String>) {
        let reachable: Vec<String> = devices
            .into_iter()
            .filter(|d| self.deliverable(d))
            .collect();
        let mut effects = Vec::new();
        if !reachable.is_empty() {
            let mut core = self.core.lock().unwrap();
            let now = self.clock.now_ms();
            for device in &reachable {
                core.machine.deliver_queued(device, now, &mut effects);
            }
            core.signal(&mut effects);
        }
        self.run_effects(effects).await;
        self.wake.notify_one();
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
    fn topics_split() {
        assert_eq!(
            split_topic("devices/d-1/acks/cmd-1", "acks"),
            Some(("d-1", "cmd-1"))
        );
        assert_eq!(split_topic("devices/d-1/acks/cmd-1/x", "acks"), None);
        assert_eq!(split_topic("devices/d-1/commands/c", "acks"), None);
    }
}
