//! Test sensor that traps in `sample`, as a plugin with a bug would.

use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::{AnyConfig, Device};

struct Plugin;

iotmock_sdk::export_sensor!(Plugin);

impl Sensor for Plugin {
    type Config = AnyConfig;
    type State = ();

    fn new(_: AnyConfig) -> Result<Self, String> {
        Ok(Self)
    }

    fn info(&self) -> Info {
        Info {
            unit: "count".into(),
            description: "traps".into(),
        }
    }

    fn sample(&self, _device: &Device, _ts: i64, _state: Option<()>) -> Result<Sample<()>, String> {
        core::arch::wasm32::unreachable()
    }
}
