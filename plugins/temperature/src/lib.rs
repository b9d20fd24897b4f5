//! Air temperature: a diurnal cycle around a mean, plus autocorrelated
//! noise, rounded to the sensor's resolution.
//!
//! Defaults follow an indoor room read by a Sensirion SHT31-class sensor:
//! resolution 0.01 °C, typical accuracy ±0.2 °C (datasheet), and an
//! indoor day/night swing of a few degrees peaking mid-afternoon.
//!
//! Config (JSON, every field optional):
//! `{"mean": 21.0, "amplitude": 2.0, "peak_hour": 15.0, "noise": 0.15,
//!   "correlation": 0.9, "resolution": 0.01, "period_ms": 86400000}`

wit_bindgen::generate!({
    world: "sensor",
    path: "../../wit",
});

use exports::iotmock::plugin::sensor_api::{Guest, SampleRequest, SampleResult, SensorInfo};
use iotmock::plugin::host;
use iotmock::plugin::types::PluginError;
use iotmock_sdk::{DAY_MS, ar1_step, gaussian, parse_config, quantize};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Daily mean, °C.
    mean: f64,
    /// Half the peak-to-trough swing over one period, °C.
    amplitude: f64,
    /// Hour of the day (UTC) with the highest temperature.
    peak_hour: f64,
    /// Standard deviation of the noise, °C.
    noise: f64,
    /// Lag-1 autocorrelation of the noise between consecutive readings.
    correlation: f64,
    /// Sensor resolution, °C.
    resolution: f64,
    /// Length of one cycle, ms (a day unless changed).
    period_ms: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mean: 21.0,
            amplitude: 2.0,
            peak_hour: 15.0,
            noise: 0.15,
            correlation: 0.9,
            resolution: 0.01,
            period_ms: DAY_MS,
        }
    }
}

impl Config {
    fn load(text: &str) -> Result<Self, PluginError> {
        let config: Config = parse_config(text).map_err(PluginError::InvalidConfig)?;
        if !(0.0..1.0).contains(&config.correlation) {
            return Err(PluginError::InvalidConfig(format!(
                "correlation must be in [0, 1), got {}",
                config.correlation
            )));
        }
        if config.period_ms <= 0.0 || config.noise < 0.0 || config.resolution < 0.0 {
            return Err(PluginError::InvalidConfig(
                "period_ms must be positive; noise and resolution must not be negative".into(),
            ));
        }
        Ok(config)
    }
}

struct Temperature;

impl Guest for Temperature {
    fn describe(config: String) -> Result<SensorInfo, PluginError> {
        Config::load(&config)?;
        Ok(SensorInfo {
            unit: "celsius".into(),
            description: "air temperature: diurnal cycle with autocorrelated noise".into(),
        })
    }

    fn sample(
        config: String,
        requests: Vec<SampleRequest>,
    ) -> Result<Vec<SampleResult>, PluginError> {
        let config = Config::load(&config)?;
        let peak_ms = config.peak_hour * 3_600_000.0;
        Ok(requests
            .into_iter()
            .map(|request| {
                let phase =
                    ((request.ts as f64 - peak_ms) / config.period_ms) * core::f64::consts::TAU;
                let cycle = config.mean + config.amplitude * phase.cos();
                let previous = request.state.first().copied().unwrap_or(0.0);
                let normal = gaussian(
                    host::random_f64(request.device),
                    host::random_f64(request.device),
                );
                let noise = ar1_step(previous, config.correlation, config.noise, normal);
                SampleResult {
                    value: Some(quantize(cycle + noise, config.resolution)),
                    anomaly: None,
                    state: vec![noise],
                }
            })
            .collect())
    }
}

export!(Temperature);
