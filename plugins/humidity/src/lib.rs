//! Relative humidity that moves against temperature, as real air does: the
//! water content (dew point) changes slowly from day to day, so when the
//! air warms up in the afternoon its relative humidity falls.
//!
//! The temperature is the device's shared state key `"temperature"` (what
//! the `temperature` sensor writes) when present, else this sensor's own
//! diurnal cycle (`temperature_mean`, `temperature_amplitude`,
//! `peak_hour`). Relative humidity comes from the dew point and the
//! temperature (Magnus formula), plus autocorrelated noise, clamped to
//! 0…100 %RH and rounded to the resolution.
//!
//! Sensor figures: Sensirion SHT31 (datasheet SHT3x-DIS): range 0…100 %RH,
//! typical accuracy ±2 %RH, resolution 0.01 %RH; Bosch BME280: ±3 %RH,
//! 0.008 %RH resolution. Most firmware reports 0.1 %RH, the default here.
//! The noise default (0.3 %RH, lag-1 correlation 0.9) is mostly the air
//! around the sensor, not the sensor.
//!
//! Climate figures: a room at 21 °C and 45 %RH has a dew point near 9 °C;
//! outdoors (temperate) 70 %RH at 12 °C. The dew point wanders from day to
//! day by about 1.5 °C indoors and 3 °C outdoors (air masses).
//!
//! Config (JSON, every field optional; `placement` picks the defaults of
//! the others, shown as indoor / outdoor; give the device's temperature
//! sensor the same placement):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `placement` | `"indoor"` | `"indoor"` or `"outdoor"` |
//! | `mean` | 45.0 / 70.0 | relative humidity at `temperature_mean`, %RH |
//! | `temperature_mean` | 21.0 / 12.0 | reference temperature, °C; also the fallback cycle's mean |
//! | `temperature_amplitude` | 2.0 / 5.0 | fallback cycle's amplitude, °C |
//! | `peak_hour` | 15.0 | fallback cycle's warmest hour (UTC) |
//! | `dew_point_sd` | 1.5 / 3.0 | standard deviation of the dew point's wander, °C |
//! | `weather_correlation` | 0.7 | day-to-day correlation of that wander |
//! | `noise` | 0.3 | standard deviation of the noise, %RH |
//! | `correlation` | 0.9 | lag-1 autocorrelation of the noise between readings |
//! | `resolution` | 0.1 | %RH (0: no rounding) |
//! | `period_ms` | 86400000 | length of one cycle (a day) |
//! | `anomalies` | none | see `iotmock_sdk::anomaly` (spike 15 %RH, drift 8 %RH, range 0…100 %RH) |
//!
//! Device state: reads key `"temperature"` (a JSON number, °C) once per
//! reading. Sensors of one scheduler round see the device state as the
//! round found it, so a humidity reading due at the same instant as a
//! temperature reading uses the temperature before it, on every run.
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): noise, dew
//! point walk (3 slots).

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::physics::{dew_point, relative_humidity};
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::weather::{Walk, WalkParams};
use iotmock_sdk::{DAY_MS, Device, Placement, Random, ar1_step, diurnal, quantize, require};

/// Device-state key read for the air temperature.
const TEMPERATURE_KEY: &str = "temperature";

/// Numbers kept per device after the anomaly injector (see the state
/// layout above).
const STATE_SLOTS: usize = 4;

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    placement: Placement,
    mean: Option<f64>,
    temperature_mean: Option<f64>,
    temperature_amplitude: Option<f64>,
    peak_hour: Option<f64>,
    dew_point_sd: Option<f64>,
    weather_correlation: Option<f64>,
    noise: Option<f64>,
    correlation: Option<f64>,
    resolution: Option<f64>,
    period_ms: Option<f64>,
    anomalies: AnomalyConfig,
}

struct Humidity {
    dew_point: f64,
    temperature_mean: f64,
    temperature_amplitude: f64,
    peak_hour: f64,
    walk: WalkParams,
    noise: f64,
    correlation: f64,
    resolution: f64,
    period_ms: f64,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Humidity);

impl Sensor for Humidity {
    type Config = Config;
    type State = Slots<STATE_SLOTS>;
    /// Plugin 2, layout version 1.
    const STATE_VERSION: u32 = 2001;

    fn new(c: Config) -> Result<Self, String> {
        let outdoor = c.placement == Placement::Outdoor;
        let pick =
            |v: Option<f64>, indoor: f64, out: f64| v.unwrap_or(if outdoor { out } else { indoor });
        let mean = pick(c.mean, 45.0, 70.0);
        let temperature_mean = pick(c.temperature_mean, 21.0, 12.0);
        let period_ms = c.period_ms.unwrap_or(DAY_MS);
        let weather_correlation = c.weather_correlation.unwrap_or(0.7);
        let correlation = c.correlation.unwrap_or(0.9);
        require(
            mean > 0.0 && mean <= 100.0,
            &format!("mean is relative humidity in (0, 100], got {mean}"),
        )?;
        require(
            (0.0..1.0).contains(&correlation) && (0.0..1.0).contains(&weather_correlation),
            "correlation and weather_correlation must be in [0, 1)",
        )?;
        require(period_ms > 0.0, "period_ms must be positive")?;
        let s = Self {
            dew_point: dew_point(temperature_mean, mean),
            temperature_mean,
            temperature_amplitude: pick(c.temperature_amplitude, 2.0, 5.0),
            peak_hour: c.peak_hour.unwrap_or(15.0),
            walk: WalkParams {
                period_ms,
                phi: weather_correlation,
                sigma: pick(c.dew_point_sd, 1.5, 3.0),
            },
            noise: c.noise.unwrap_or(0.3),
            correlation,
            resolution: c.resolution.unwrap_or(0.1),
            period_ms,
            anomalies: Anomalies::new(
                c.anomalies,
                Profile {
                    min: 0.0,
                    max: 100.0,
                    spike_size: 15.0,
                    drift_size: 8.0,
                    binary: false,
                },
            )?,
        };
        require(
            s.noise >= 0.0 && s.resolution >= 0.0 && s.walk.sigma >= 0.0,
            "noise, resolution and dew_point_sd must not be negative",
        )?;
        require(
            [s.temperature_mean, s.temperature_amplitude, s.peak_hour]
                .iter()
                .all(|v| v.is_finite()),
            "temperature_mean, temperature_amplitude and peak_hour must be numbers",
        )?;
        Ok(s)
    }

    fn info(&self) -> Info {
        Info {
            unit: "percent".into(),
            description: "relative humidity from a wandering dew point and the device's temperature (SHT31-class)".into(),
        }
    }

    fn sample(
        &self,
        device: &Device,
        ts: i64,
        state: Option<Slots<STATE_SLOTS>>,
    ) -> Result<Sample<Slots<STATE_SLOTS>>, String> {
        let ts = ts as f64;
        let mut rng = device.random();
        let (injector, own) = state::load(state, &mut rng, |rng| {
            let w = Walk::start(ts, &self.walk, rng).slots();
            [0.0, w[0], w[1], w[2]]
        });
        let mut walk = Walk::from_slots(&own[1..4]);
        let dew = self.dew_point + walk.value(ts, &self.walk, &mut rng);
        let temperature = device.state_number(TEMPERATURE_KEY).unwrap_or_else(|| {
            self.temperature_mean
                + self.temperature_amplitude * diurnal(ts, self.peak_hour, self.period_ms)
        });
        let noise = ar1_step(own[0], self.correlation, self.noise, rng.normal());
        let clean = (relative_humidity(temperature, dew) + noise).clamp(0.0, 100.0);

        let w = walk.slots();
        let out = state::finish(
            injector,
            &self.anomalies,
            &[noise, w[0], w[1], w[2]],
            clean,
            |v| quantize(v, self.resolution),
        );
        Ok(out.into())
    }
}
