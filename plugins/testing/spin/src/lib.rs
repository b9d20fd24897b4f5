//! Test sensor that never returns from `sample`: the host must stop it.

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
            description: "loops forever".into(),
        }
    }

    #[allow(clippy::empty_loop)]
    fn sample(&self, _device: &Device, _ts: i64, _state: Option<()>) -> Result<Sample<()>, String> {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}
