//! Test sensor: writes its config's `target` (a JSON number, or `null` to
//! remove it) into the device state under `"target"` at every reading, as
//! a thermostat command handler would, and reports the value it wrote
//! (no value when it removed it). Lets tests drive the temperature
//! plugin's thermostat without a command engine.

use iotmock_sdk::Device;
use iotmock_sdk::sensor::{Info, Sample, Sensor};

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    target: Option<f64>,
}

struct SetTarget(Option<f64>);

iotmock_sdk::export_sensor!(SetTarget);

impl Sensor for SetTarget {
    type Config = Config;
    type State = ();

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self(config.target))
    }

    fn info(&self) -> Info {
        Info {
            unit: "celsius".into(),
            description: "sets the device's thermostat target".into(),
        }
    }

    fn sample(&self, device: &Device, _ts: i64, _state: Option<()>) -> Result<Sample<()>, String> {
        let text = self.0.map_or_else(|| "null".to_string(), |t| t.to_string());
        device.set_state("target", &text);
        Ok(Sample {
            value: self.0,
            anomaly: None,
            state: (),
        })
    }
}
