//! Test sensor that traps in `sample`, as a plugin with a bug would.

wit_bindgen::generate!({
    world: "sensor",
    path: "../../../wit",
});

use exports::iotmock::plugin::sensor_api::{Guest, SampleRequest, SampleResult, SensorInfo};
use iotmock::plugin::types::PluginError;

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn describe(_config: String) -> Result<SensorInfo, PluginError> {
        Ok(SensorInfo {
            unit: "count".into(),
            description: "traps".into(),
        })
    }

    fn sample(
        _config: String,
        _requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        core::arch::wasm32::unreachable()
    }
}
