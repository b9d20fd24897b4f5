//! The `sensor` world: a plugin that produces readings for devices at
//! simulated times. Implement [`Sensor`] for the model and export it with
//! [`export_sensor!`](crate::export_sensor); the SDK parses the config,
//! keeps the per-device state and speaks the WIT.
//!
//! ```no_run
//! use iotmock_sdk::sensor::{Info, Sample, Sensor};
//! use iotmock_sdk::{Device, Random};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { mean: f64 }
//!
//! struct Noise { mean: f64 }
//!
//! impl Sensor for Noise {
//!     type Config = Config;
//!     type State = ();
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Self { mean: config.mean })
//!     }
//!     fn info(&self) -> Info {
//!         Info { unit: "celsius".into(), description: "noise around a mean".into() }
//!     }
//!     fn sample(&self, device: &Device, _ts: i64, _state: Option<()>) -> Result<Sample<()>, String> {
//!         Ok(Sample::value(self.mean + device.random().normal(), ()))
//!     }
//! }
//!
//! iotmock_sdk::export_sensor!(Noise);
//! ```

use serde::de::DeserializeOwned;

use crate::Device;
use crate::anomaly::Anomaly;
use crate::codec::{self, Codec};

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        world: "sensor",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_world",
    });
}

use wit::exports::iotmock::plugin::sensor_api::{
    AnomalyKind, SampleRequest, SampleResult, SensorInfo,
};
use wit::iotmock::plugin::types::PluginError;

/// What a sensor's readings are: the unit every reading carries and one
/// line saying what the pattern models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub unit: String,
    pub description: String,
}

/// One reading and the state to keep for the device's next one.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<S> {
    /// The reading; `None` when the sensor missed it (a dropout).
    pub value: Option<f64>,
    /// Set when the pattern injected an anomaly.
    pub anomaly: Option<Anomaly>,
    /// Handed back with the device's next request.
    pub state: S,
}

impl<S> Sample<S> {
    /// A plain reading with no anomaly.
    pub fn value(value: f64, state: S) -> Self {
        Self {
            value: Some(value),
            anomaly: None,
            state,
        }
    }
}

impl<const N: usize> From<crate::state::Outcome<N>> for Sample<crate::state::Slots<N>> {
    fn from(o: crate::state::Outcome<N>) -> Self {
        Self {
            value: o.value,
            anomaly: o.anomaly,
            state: o.state,
        }
    }
}

/// A sensor pattern. `Self` is the model built from one configuration; the
/// host batches many devices that share it into one call, so `new` runs
/// once per batch and `sample` once per device and time.
pub trait Sensor: Sized {
    /// The configuration as users write it (JSON). Give it
    /// `#[serde(default, deny_unknown_fields)]`: an unknown key is then
    /// refused by name, and `{}` means all defaults.
    type Config: DeserializeOwned + Default;
    /// What the model remembers for a device between readings (`()` for
    /// nothing).
    type State: Codec;
    /// The layout of [`Sensor::State`]: change it whenever the state's
    /// shape changes, and a device's old state is dropped instead of
    /// misread after a hot reload.
    const STATE_VERSION: u32 = 1;

    /// Checks the configuration and builds the model; an `Err` says what to
    /// fix and reaches the user as an invalid configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The unit and description of the readings.
    fn info(&self) -> Info;

    /// The reading of `device` at simulated time `ts` (ms since the Unix
    /// epoch). `state` is what the previous sample for this device and
    /// sensor returned, `None` the first time (or after a layout change).
    fn sample(
        &self,
        device: &Device,
        ts: i64,
        state: Option<Self::State>,
    ) -> Result<Sample<Self::State>, String>;
}

fn build<T: Sensor>(config: &str) -> Result<T, PluginError> {
    crate::parse_config::<T::Config>(config)
        .and_then(T::new)
        .map_err(PluginError::InvalidConfig)
}

#[doc(hidden)]
pub fn describe<T: Sensor>(config: String) -> Result<SensorInfo, PluginError> {
    let info = build::<T>(&config)?.info();
    Ok(SensorInfo {
        unit: info.unit,
        description: info.description,
    })
}

#[doc(hidden)]
pub fn sample<T: Sensor>(
    config: String,
    requests: Vec<SampleRequest>,
) -> Result<Vec<SampleResult>, PluginError> {
    let model = build::<T>(&config)?;
    requests
        .into_iter()
        .map(|request| {
            let state = codec::load::<T::State>(T::STATE_VERSION, &request.state);
            let device = Device::from_slot(request.device);
            let out = model
                .sample(&device, request.ts, state)
                .map_err(PluginError::Failed)?;
            Ok(SampleResult {
                value: out.value,
                anomaly: out.anomaly.map(kind),
                state: codec::save(T::STATE_VERSION, &out.state),
            })
        })
        .collect()
}

fn kind(anomaly: Anomaly) -> AnomalyKind {
    match anomaly {
        Anomaly::Spike => AnomalyKind::Spike,
        Anomaly::Stuck => AnomalyKind::Stuck,
        Anomaly::Drift => AnomalyKind::Drift,
        Anomaly::Dropout => AnomalyKind::Dropout,
        Anomaly::OutOfRange => AnomalyKind::OutOfRange,
    }
}

/// Exports a [`Sensor`] model as the plugin's `sensor` world. Use it once,
/// in the plugin crate's `lib.rs`.
#[macro_export]
macro_rules! export_sensor {
    ($model:ty) => {
        const _: () = {
            struct Export;
            impl $crate::sensor::wit::exports::iotmock::plugin::sensor_api::Guest for Export {
                fn describe(
                    config: ::std::string::String,
                ) -> ::core::result::Result<
                    $crate::sensor::wit::exports::iotmock::plugin::sensor_api::SensorInfo,
                    $crate::sensor::wit::iotmock::plugin::types::PluginError,
                > {
                    $crate::sensor::describe::<$model>(config)
                }
                fn sample(
                    config: ::std::string::String,
                    requests: ::std::vec::Vec<
                        $crate::sensor::wit::exports::iotmock::plugin::sensor_api::SampleRequest,
                    >,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<
                        $crate::sensor::wit::exports::iotmock::plugin::sensor_api::SampleResult,
                    >,
                    $crate::sensor::wit::iotmock::plugin::types::PluginError,
                > {
                    $crate::sensor::sample::<$model>(config, requests)
                }
            }
    $crate::sensor::wit::export_world!(Export with_types_in $crate::sensor::wit);
        };
    };
}
