//! Test sensor that allocates without bound in `sample`: the host's memory
//! cap must stop it.

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
            description: "allocates forever".into(),
        }
    }

    fn sample(&self, _device: &Device, _ts: i64, _state: Option<()>) -> Result<Sample<()>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(core::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
