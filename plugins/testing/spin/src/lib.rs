//! Test sensor that never returns from `sample`: the host must stop it.

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
            description: "loops forever".into(),
        })
    }

    #[allow(clippy::empty_loop)]
    fn sample(
        _config: String,
        _requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}
