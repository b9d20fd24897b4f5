//! Test sensor: every reading is 2.0. Its twin `test-fixed-one` differs only
//! in the value, so swapping one file for the other shows a hot reload.

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
            description: "always 2.0".into(),
        })
    }

    fn sample(
        _config: String,
        requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        Ok(requests
            .into_iter()
            .map(|_| SampleResult {
                value: Some(2.0),
                anomaly: None,
                state: Vec::new(),
            })
            .collect())
    }
}
