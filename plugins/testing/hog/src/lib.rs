//! Test sensor that allocates without bound in `sample`: the host's memory
//! cap must stop it.

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
            description: "allocates forever".into(),
        })
    }

    fn sample(
        _config: String,
        _requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(core::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
