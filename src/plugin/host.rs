//! The `host` interface as the server implements it: simulated time, the
//! per-device random streams and shared state, and logging. This is the
//! whole of what a plugin can reach.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use wasmtime::ResourceLimiter;

use super::bindings::{host, types};
use crate::random::DeviceRng;

/// A device's state shared by its sensors, command handler and edge rules:
/// keys to JSON text. A std mutex: it is held only for one map operation,
/// never across an await.
#[derive(Debug, Default)]
pub struct SharedState(Mutex<BTreeMap<String, String>>);

impl SharedState {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.lock().unwrap().get(key).cloned()
    }

    pub fn set(&self, key: String, value: String) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// One device as a call sees it, named by its slot (index).
#[derive(Debug)]
pub struct DeviceSlot {
    /// The device's seeded random stream.
    pub rng: DeviceRng,
    /// The device's state the plugin keeps, when it keeps any.
    pub state: Option<Arc<SharedState>>,
    /// `None`: writes go to `state` at once. `Some`: the call reads its own
    /// writes here first and the caller applies them after the call. The
    /// scheduler runs the sensor calls of one round concurrently (one
    /// worker per plugin), so a sensor reading a key another sensor of the
    /// same device writes would otherwise see the old or the new value
    /// depending on thread timing; deferred, every sensor of a round sees
    /// the state as the round found it, and the writes land in the round's
    /// fixed call order.
    pub deferred: Option<Vec<(String, String)>>,
}

impl DeviceSlot {
    /// Applies deferred writes to the device's state, in the order made.
    pub fn commit(self) -> DeviceRng {
        if let (Some(state), Some(writes)) = (&self.state, self.deferred) {
            for (key, value) in writes {
                state.set(key, value);
            }
        }
        self.rng
    }
}

/// What a single call may reach; moved into the store for the call and
/// taken back after it, so random streams advance exactly once.
#[derive(Debug, Default)]
pub struct CallContext {
    /// Simulated time of the call, ms since the Unix epoch.
    pub now: i64,
    /// The devices of the call, indexed by the requests.
    pub slots: Vec<DeviceSlot>,
}

/// The data of every plugin store.
pub(crate) struct HostState {
    pub plugin: Arc<str>,
    pub ctx: CallContext,
    pub limiter: MemoryLimiter,
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn now(&mut self) -> i64 {
        self.ctx.now
    }

    fn random_u64(&mut self, device: u32) -> u64 {
        match self.ctx.slots.get_mut(device as usize) {
            Some(slot) => slot.rng.next_u64(),
            None => 0,
        }
    }

    fn random_f64(&mut self, device: u32) -> f64 {
        match self.ctx.slots.get_mut(device as usize) {
            Some(slot) => slot.rng.next_f64(),
            None => 0.0,
        }
    }

    fn get_state(&mut self, device: u32, key: String) -> Option<String> {
        let slot = self.ctx.slots.get(device as usize)?;
        let own = slot
            .deferred
            .iter()
            .flatten()
            .rev()
            .find(|(k, _)| *k == key);
        match own {
            Some((_, value)) => Some(value.clone()),
            None => slot.state.as_ref()?.get(&key),
        }
    }

    fn set_state(&mut self, device: u32, key: String, value: String) {
        let Some(slot) = self.ctx.slots.get_mut(device as usize) else {
            return;
        };
        match (&mut slot.deferred, &slot.state) {
            (Some(writes), Some(_)) => writes.push((key, value)),
            (None, Some(state)) => state.set(key, value),
            (_, None) => {}
        }
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &*self.plugin;
        match level {
            types::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Caps a plugin's linear memory and remembers that it refused a growth, so
/// the trap that follows is reported as "out of memory", not a bare trap.
pub(crate) struct MemoryLimiter {
    pub max_bytes: usize,
    pub exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} KiB reached (the plugin asked for {} KiB)",
                self.max_bytes / 1024,
                desired / 1024
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
