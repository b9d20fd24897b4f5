//! What the server gives a plugin, whatever its world: simulated time, a
//! seeded random stream and shared state per device, and the log. The
//! calls go to the `host` interface of the WIT package in `wit/`; nothing
//! else reaches a plugin.

mod wit {
    wit_bindgen::generate!({
        inline: "
            package iotmock:sdk;
            world imports {
                import iotmock:plugin/host@0.2.0;
            }
        ",
        path: "wit",
        world: "iotmock:sdk/imports",
        generate_all,
    });
}

use wit::iotmock::plugin::host;
use wit::iotmock::plugin::types::LogLevel;

use crate::Stream;

/// One device inside a call: its random stream and its shared state. For
/// an edge rule it is the edge node itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    slot: u32,
}

impl Device {
    /// The device the host named with `slot` in the current call.
    pub fn from_slot(slot: u32) -> Self {
        Self { slot }
    }

    /// The slot the host named this device with.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The device's seeded random stream, as a [`Random`](crate::Random) source. Build
    /// one per request: see [`Stream`].
    pub fn random(&self) -> Stream<impl FnMut() -> u64 + use<>> {
        let slot = self.slot;
        Stream::new(move || host::random_u64(slot))
    }

    /// The next 64 bits of the device's stream.
    pub fn random_u64(&self) -> u64 {
        host::random_u64(self.slot)
    }

    /// The next value in [0, 1) of the device's stream, as the host draws
    /// it (not the same numbers as [`uniform`](crate::Random::uniform) over
    /// [`Device::random`]).
    pub fn random_f64(&self) -> f64 {
        host::random_f64(self.slot)
    }

    /// A key of the device's shared state (JSON text), as another plugin
    /// of the device (or this one) wrote it.
    pub fn state(&self, key: &str) -> Option<String> {
        host::get_state(self.slot, key)
    }

    /// A key of the device's shared state read as a finite number.
    pub fn state_number(&self, key: &str) -> Option<f64> {
        crate::state_number(self.state(key).as_deref())
    }

    /// Writes a key of the device's shared state (JSON text).
    pub fn set_state(&self, key: &str, value: &str) {
        host::set_state(self.slot, key, value);
    }
}

/// Simulated time at the start of the current call, in milliseconds since
/// the Unix epoch.
pub fn now() -> i64 {
    host::now()
}

/// How loud a [`log`] line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes a line to the server's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    host::log(level, message);
}
