//! Test sensor: writes its config's `target` (a JSON number, or `null` to
//! remove it) into the device state under `"target"` at every reading, as
//! a thermostat command handler would, and reports the value it wrote
//! (no value when it removed it). Lets tests drive the temperature
//! plugin's thermostat without a command engine.

wit_bindgen::generate!({
    world: "sensor",
    path: "../../../wit",
});

use exports::iotmock::plugin::sensor_api::{Guest, SampleRequest, SampleResult, SensorInfo};
use iotmock::plugin::host;
use iotmock::plugin::types::PluginError;

struct Plugin;
export!(Plugin);

/// The number after `"target":` in the config, kept as text.
fn target(config: &str) -> Option<&str> {
    let rest = config.split("\"target\"").nth(1)?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}', ' ']).unwrap_or(rest.len());
    let text = &rest[..end];
    (text != "null").then_some(text)
}

impl Guest for Plugin {
    fn describe(_config: String) -> Result<SensorInfo, PluginError> {
        Ok(SensorInfo {
            unit: "celsius".into(),
            description: "sets the device's thermostat target".into(),
        })
    }

    fn sample(
        config: String,
        requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        let text = target(&config);
        let value = text.and_then(|t| t.parse::<f64>().ok());
        Ok(requests
            .into_iter()
            .map(|r| {
                host::set_state(r.device, "target", text.unwrap_or("null"));
                SampleResult {
                    value,
                    anomaly: None,
                    state: Vec::new(),
                }
            })
            .collect())
    }
}
