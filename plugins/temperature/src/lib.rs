//! Air temperature: a diurnal cycle whose mean and amplitude wander from
//! day to day (weather), plus autocorrelated noise, rounded to the
//! sensor's resolution. Writes its clean value to the device state.
//!
//! Sensor figures: Sensirion SHT31 (datasheet SHT3x-DIS): range −40…125 °C,
//! resolution 0.01 °C, typical accuracy ±0.2 °C (0…90 °C). The noise
//! default (0.15 °C, lag-1 correlation 0.9) is the sensor's repeatability
//! plus the air's own turbulence around it, which dominates in a room.
//!
//! Climate figures: indoors, a heated or cooled room swings a few degrees
//! a day (amplitude 2 °C) and the daily mean moves little (0.5 °C from day
//! to day). Outdoors (mid-latitude, temperate), the daily range is about
//! 10 °C (amplitude 5 °C) and daily means differ from the seasonal normal
//! by about 3–4 °C with a day-to-day correlation near 0.7; cloudy days
//! swing less than clear ones (amplitude varies by ±35 %).
//!
//! Config (JSON, every field optional; `placement` picks the defaults of
//! the others, shown as indoor / outdoor):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `placement` | `"indoor"` | `"indoor"` or `"outdoor"` |
//! | `mean` | 21.0 / 12.0 | long-run daily mean, °C |
//! | `amplitude` | 2.0 / 5.0 | half the day's peak-to-trough swing, °C |
//! | `peak_hour` | 15.0 | hour of the day (UTC) of the warmest time |
//! | `noise` | 0.15 / 0.3 | standard deviation of the noise, °C |
//! | `correlation` | 0.9 | lag-1 autocorrelation of the noise between readings |
//! | `resolution` | 0.01 | sensor resolution, °C (0: no rounding) |
//! | `period_ms` | 86400000 | length of one cycle (a day) |
//! | `weather_sd` | 0.5 / 3.5 | standard deviation of the daily mean's wander, °C |
//! | `weather_correlation` | 0.7 | correlation of the wander from one day to the next |
//! | `amplitude_variability` | 0.2 / 0.35 | relative standard deviation of the daily amplitude |
//! | `tau_s` | 600 | time constant, simulated seconds, of the approach to a thermostat's `target` |
//! | `anomalies` | none | see `iotmock_sdk::anomaly` (spike 8 °C, drift 3 °C, range −40…125 °C) |
//!
//! The wander is a seeded AR(1) walk over days that lives in the state
//! (anchored at each day's start, smooth in between): the same seed and
//! the same request times give the same weather, whatever the wall clock.
//!
//! Thermostat: when the device state holds key `"target"` (a JSON number,
//! °C; a thermostat command handler sets it), the temperature approaches
//! the target with a first-order lag of time constant `tau_s`, on top of
//! the free-running model (`iotmock_sdk::thermostat`): in steady state it
//! reads the target plus the noise; when the key is removed it relaxes back
//! to the model. Without the key the readings are the free-running model's.
//!
//! Device state: writes key `"temperature"` (a JSON number, °C, the clean
//! value at the sensor's resolution, without injected anomalies) on every
//! reading, for other sensors of the device (humidity, battery).
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): noise,
//! daily mean walk (3 slots), daily amplitude walk (3 slots), thermostat
//! offset and its time (2 slots).

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::thermostat::Regulator;
use iotmock_sdk::weather::{Walk, WalkParams};
use iotmock_sdk::{DAY_MS, Device, Placement, Random, ar1_step, diurnal, quantize, require};
/// Device-state key written with the current temperature.
const STATE_KEY: &str = "temperature";
/// Device-state key a thermostat sets: the temperature to approach, °C.
const TARGET_KEY: &str = "target";

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    placement: Placement,
    mean: Option<f64>,
    amplitude: Option<f64>,
    peak_hour: Option<f64>,
    noise: Option<f64>,
    correlation: Option<f64>,
    resolution: Option<f64>,
    period_ms: Option<f64>,
    weather_sd: Option<f64>,
    weather_correlation: Option<f64>,
    amplitude_variability: Option<f64>,
    tau_s: Option<f64>,
    anomalies: AnomalyConfig,
}

struct Temperature {
    mean: f64,
    amplitude: f64,
    peak_hour: f64,
    noise: f64,
    correlation: f64,
    resolution: f64,
    period_ms: f64,
    mean_walk: WalkParams,
    amplitude_walk: WalkParams,
    tau_ms: f64,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Temperature);

impl Sensor for Temperature {
    type Config = Config;
    type State = Slots<9>;
    /// Plugin 1, layout version 2.
    const STATE_VERSION: u32 = 1002;

    fn new(c: Config) -> Result<Self, String> {
        let outdoor = c.placement == Placement::Outdoor;
        let pick =
            |v: Option<f64>, indoor: f64, out: f64| v.unwrap_or(if outdoor { out } else { indoor });
        let period_ms = c.period_ms.unwrap_or(DAY_MS);
        let correlation = c.correlation.unwrap_or(0.9);
        let weather_correlation = c.weather_correlation.unwrap_or(0.7);
        let tau_s = c.tau_s.unwrap_or(600.0);
        require(
            tau_s > 0.0 && tau_s.is_finite(),
            &format!("tau_s must be a positive number of seconds, got {tau_s}"),
        )?;
        let s = Self {
            tau_ms: tau_s * 1000.0,
            mean: pick(c.mean, 21.0, 12.0),
            amplitude: pick(c.amplitude, 2.0, 5.0),
            peak_hour: c.peak_hour.unwrap_or(15.0),
            noise: pick(c.noise, 0.15, 0.3),
            correlation,
            resolution: c.resolution.unwrap_or(0.01),
            period_ms,
            mean_walk: WalkParams {
                period_ms,
                phi: weather_correlation,
                sigma: pick(c.weather_sd, 0.5, 3.5),
            },
            amplitude_walk: WalkParams {
                period_ms,
                phi: weather_correlation,
                sigma: pick(c.amplitude_variability, 0.2, 0.35),
            },
            anomalies: Anomalies::new(
                c.anomalies,
                Profile {
                    min: -40.0,
                    max: 125.0,
                    spike_size: 8.0,
                    drift_size: 3.0,
                    binary: false,
                },
            )?,
        };
        require(
            (0.0..1.0).contains(&correlation),
            &format!("correlation must be in [0, 1), got {correlation}"),
        )?;
        require(
            (0.0..1.0).contains(&weather_correlation),
            &format!("weather_correlation must be in [0, 1), got {weather_correlation}"),
        )?;
        require(period_ms > 0.0, "period_ms must be positive")?;
        require(
            s.noise >= 0.0
                && s.resolution >= 0.0
                && s.mean_walk.sigma >= 0.0
                && s.amplitude_walk.sigma >= 0.0,
            "noise, resolution, weather_sd and amplitude_variability must not be negative",
        )?;
        require(
            [s.mean, s.amplitude, s.peak_hour]
                .iter()
                .all(|v| v.is_finite()),
            "mean, amplitude and peak_hour must be numbers",
        )?;
        Ok(s)
    }

    fn info(&self) -> Info {
        Info {
            unit: "celsius".into(),
            description: "air temperature: diurnal cycle with day-to-day weather and autocorrelated noise (SHT31-class)".into(),
        }
    }

    fn sample(
        &self,
        device: &Device,
        ts: i64,
        state: Option<Slots<9>>,
    ) -> Result<Sample<Slots<9>>, String> {
        let ts = ts as f64;
        let mut rng = device.random();
        let (injector, own) = state::load(state, &mut rng, |rng| {
            let m = Walk::start(ts, &self.mean_walk, rng).slots();
            let a = Walk::start(ts, &self.amplitude_walk, rng).slots();
            let r = Regulator::start(ts).slots();
            [0.0, m[0], m[1], m[2], a[0], a[1], a[2], r[0], r[1]]
        });
        let mut mean_walk = Walk::from_slots(&own[1..4]);
        let mut amplitude_walk = Walk::from_slots(&own[4..7]);
        let mut regulator = Regulator::from_slots(&own[7..9]);

        let mean = self.mean + mean_walk.value(ts, &self.mean_walk, &mut rng);
        let amplitude = self.amplitude
            * (1.0 + amplitude_walk.value(ts, &self.amplitude_walk, &mut rng)).max(0.0);
        let noise = ar1_step(own[0], self.correlation, self.noise, rng.normal());
        let model = mean + amplitude * diurnal(ts, self.peak_hour, self.period_ms);
        let target = device.state_number(TARGET_KEY);
        let clean = model + regulator.offset_at(ts, model, target, self.tau_ms) + noise;

        let shared = quantize(clean, self.resolution);
        device.set_state(STATE_KEY, &format!("{shared}"));

        let (m, a) = (mean_walk.slots(), amplitude_walk.slots());
        let r = regulator.slots();
        let own = [noise, m[0], m[1], m[2], a[0], a[1], a[2], r[0], r[1]];
        let out = state::finish(injector, &self.anomalies, &own, clean, |v| {
            quantize(v, self.resolution)
        });
        Ok(out.into())
    }
}
