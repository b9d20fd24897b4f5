//! Devices that use the HTTP device API instead of MQTT: their
//! connectivity follows polling, and the state they report is kept with the
//! device (in memory and in the store).
//!
//! An HTTP device has no connection to watch, so any authenticated request
//! counts as contact: the first one after a silence marks it connected (as
//! an MQTT CONNECT would), and when no request arrives for the timeout
//! (simulated time, `--http-device-timeout`) it is marked disconnected. The
//! protocol shown for a device is derived from its last contact.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Entry, Fleet, FleetError};
use crate::clock::rfc3339_ms;

/// Silence after which an HTTP device is offline: 30 s of simulated time.
pub(crate) const DEFAULT_HTTP_DEVICE_TIMEOUT_MS: i64 = 30_000;

/// Largest reported state, as JSON text.
pub(super) const MAX_REPORTED_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Mqtt = 1,
    Http = 2,
}

/// The state a device reported, with when (simulated time).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ReportedState {
    #[schema(value_type = Object)]
    pub state: Arc<Map<String, Value>>,
    pub updated_at: String,
}

#[derive(Default)]
pub(super) struct HttpLink {
    protocol: AtomicU8,
    // A std mutex: held for a field update, never across an await.
    inner: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// Online by polling: a watcher task waits for the silence to end it.
    online: bool,
    /// Simulated ms of the last HTTP contact.
    last_contact: i64,
    /// Long polls open now: the device is listening, not silent.
    polling: u32,
    reported: Option<(Arc<Map<String, Value>>, i64)>,
}

impl HttpLink {
    pub(super) fn set_protocol(&self, protocol: Protocol) {
        self.protocol.store(protocol as u8, Ordering::Relaxed);
    }

    pub(super) fn protocol(&self) -> Option<&'static str> {
        match self.protocol.load(Ordering::Relaxed) {
            1 => Some("mqtt"),
            2 => Some("http"),
            _ => None,
        }
    }

    /// Long polls of the device waiting now.
    pub(super) fn polling(&self) -> u32 {
        self.inner.lock().unwrap().polling
    }

    pub(super) fn reported(&self) -> Option<ReportedState> {
        let inner = self.inner.lock().unwrap();
        inner.reported.as_ref().map(|(state, at)| ReportedState {
            state: state.clone(),
            updated_at: rfc3339_ms(*at),
        })
    }
}

/// How a reported-state write changes the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportMode {
    /// PUT: the object replaces the state.
    Replace,
    /// PATCH: JSON merge patch (RFC 7396): keys are set, `null` removes.
    Merge,
}

impl Fleet {
    /// Sets how long (simulated ms) an HTTP device may stay silent before
    /// it is marked offline.
    pub(crate) fn set_http_device_timeout(&self, ms: i64) {
        self.0.http_timeout_ms.store(ms.max(1), Ordering::Relaxed);
    }

    pub(crate) fn http_device_timeout_ms(&self) -> i64 {
        self.0.http_timeout_ms.load(Ordering::Relaxed)
    }

    /// Records an authenticated HTTP request from device `id`: after a
    /// silence it is marked connected (status `online`), and a watcher
    /// marks it disconnected once it stays silent for the timeout.
    pub(crate) async fn http_contact(&self, id: &str) {
        let Ok(entry) = self.entry(id) else { return };
        let now = self.0.clock.now_ms();
        let was_online = {
            let mut link = entry.http.inner.lock().unwrap();
            link.last_contact = now;
            std::mem::replace(&mut link.online, true)
        };
        entry
            .last_seen
            .store(now, std::sync::atomic::Ordering::Relaxed);
        if was_online {
            entry.http.set_protocol(Protocol::Http);
            return;
        }
        self.connected(id).await;
        entry.http.set_protocol(Protocol::Http);
        self.spawn_silence_watch(entry, id.to_string());
    }

    fn spawn_silence_watch(&self, entry: Arc<Entry>, id: String) {
        let fleet = self.clone();
        self.0.tasks.spawn(async move {
            loop {
                let last = entry.http.inner.lock().unwrap().last_contact;
                let deadline = last + fleet.http_device_timeout_ms();
                fleet.0.clock.sleep_until(deadline).await;
                let now = fleet.0.clock.now_ms();
                let polling = {
                    let link = entry.http.inner.lock().unwrap();
                    link.polling > 0
                };
                if polling {
                    // Look again a timeout from now (the poll's end counts
                    // as contact).
                    fleet
                        .0
                        .clock
                        .sleep_until(now + fleet.http_device_timeout_ms())
                        .await;
                    continue;
                }
                let silent = {
                    let mut link = entry.http.inner.lock().unwrap();
                    let silent = link.polling == 0
                        && link.last_contact + fleet.http_device_timeout_ms()
                            <= fleet.0.clock.now_ms();
                    if silent {
                        link.online = false;
                    }
                    silent
                };
                if silent {
                    if fleet.entry(&id).is_ok_and(|e| Arc::ptr_eq(&e, &entry)) {
                        tracing::debug!(device = %id, "HTTP device silent; marking it offline");
                        fleet.disconnected(&id).await;
                    }
                    return;
                }
            }
        });
    }

    /// Marks a long poll by device `id` as open until the guard is dropped:
    /// a device waiting for a command is not silent, however long it
    /// waits. Its end counts as contact.
    pub(crate) fn http_long_poll(&self, id: &str) -> Option<LongPoll> {
        let entry = self.entry(id).ok()?;
        entry.http.inner.lock().unwrap().polling += 1;
        Some(LongPoll {
            entry,
            clock: self.0.clock.clone(),
        })
    }

    /// The state device `id` reported, if any.
    pub(crate) fn reported(&self, id: &str) -> Result<Option<ReportedState>, FleetError> {
        Ok(self.entry(id)?.http.reported())
    }

    /// Writes a device's reported state (stored before it answers).
    pub(crate) async fn report(
        &self,
        id: &str,
        body: Map<String, Value>,
        mode: ReportMode,
    ) -> Result<ReportedState, FleetError> {
        let entry = self.entry(id)?;
        let current = entry.http.inner.lock().unwrap().reported.clone();
        let state = match (mode, current) {
            (ReportMode::Merge, Some((old, _))) => {
                let mut merged = (*old).clone();
                merge_patch(&mut merged, body);
                merged
            }
            (ReportMode::Merge, None) => {
                let mut merged = Map::new();
                merge_patch(&mut merged, body);
                merged
            }
            (ReportMode::Replace, _) => body,
        };
        let text = serde_json::to_string(&state).expect("JSON serializes");
        if text.len() > MAX_REPORTED_BYTES {
            return Err(FleetError::Invalid(format!(
                "the reported state would be {} bytes; keep it under {MAX_REPORTED_BYTES}",
                text.len()
            )));
        }
        let at = self.0.clock.now_ms();
        self.0.store.set_reported(id, text, at).await?;
        let state = Arc::new(state);
        entry.http.inner.lock().unwrap().reported = Some((state.clone(), at));
        Ok(ReportedState {
            state,
            updated_at: rfc3339_ms(at),
        })
    }

    /// Loads stored reported states into the devices (at open).
    pub(super) async fn restore_reported(&self) -> Result<(), FleetError> {
        for (id, text, at) in self.0.store.load_reported().await? {
            let Ok(entry) = self.entry(&id) else { continue };
            let state: Map<String, Value> = serde_json::from_str(&text).map_err(|_| {
                super::StoreError::Corrupt(format!("device {id:?}: reported state"))
            })?;
            entry.http.inner.lock().unwrap().reported = Some((Arc::new(state), at));
        }
        Ok(())
    }
}

/// An open long poll; see [`Fleet::http_long_poll`].
pub(crate) struct LongPoll {
    entry: Arc<Entry>,
    clock: crate::clock::Clock,
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        let now = self.clock.now_ms();
        let mut link = self.entry.http.inner.lock().unwrap();
        link.polling = link.polling.saturating_sub(1);
        link.last_contact = link.last_contact.max(now);
    }
}

/// RFC 7396 merge patch of an object into an object.
fn merge_patch(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_patch(t, inner);
                }
            }
            other => {
                target.insert(key, other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_nests_and_removes() {
        let Value::Object(mut t) = json!({"fw":"1.0","net":{"rssi":-70,"ip":"x"},"gone":1}) else {
            unreachable!()
        };
        let Value::Object(p) = json!({"fw":"1.1","net":{"rssi":-60,"ip":null},"gone":null}) else {
            unreachable!()
        };
        merge_patch(&mut t, p);
        assert_eq!(Value::Object(t), json!({"fw":"1.1","net":{"rssi":-60}}));
    }
}
