//! Test sensor: every reading is 2.0. Its twin `test-fixed-one` differs only
//! in the value, so swapping one file for the other shows a hot reload.

use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::{AnyConfig, Device};

struct Fixed;

iotmock_sdk::export_sensor!(Fixed);

impl Sensor for Fixed {
    type Config = AnyConfig;
    type State = ();

    fn new(_: AnyConfig) -> Result<Self, String> {
        Ok(Self)
    }

    fn info(&self) -> Info {
        Info {
            unit: "count".into(),
            description: "always 2.0".into(),
        }
    }

    fn sample(&self, _device: &Device, _ts: i64, _state: Option<()>) -> Result<Sample<()>, String> {
        Ok(Sample::value(2.0, ()))
    }
}
