//! Barometric pressure: sea-level pressure drifting with the weather, the
//! small twice-daily atmospheric tide, converted to the station's
//! altitude, plus sensor noise, rounded to the resolution.
//!
//! The weather drift is a bounded random walk (an Ornstein–Uhlenbeck
//! process around `mean`, sampled at anchors every `weather_period_hours`
//! with a smooth path between them): weather systems pass in a few days,
//! and mid-latitude sea-level pressure has a standard deviation of about
//! 8–10 hPa, rarely leaving 960…1050 hPa. With the defaults the pressure
//! changes about 0.4 hPa an hour on average, a few hPa in 3 hours at most,
//! as a barograph shows. The semidiurnal tide is ~0.5 hPa at mid-latitudes
//! (over 1 hPa in the tropics), highest near 10:00 and 22:00 local solar
//! time.
//!
//! Sensor figures: Bosch BMP280 (datasheet BST-BMP280-DS001): range
//! 300…1100 hPa, relative accuracy ±0.12 hPa, absolute ±1 hPa; in its
//! "weather monitoring" setting (forced mode, ×1 oversampling, no IIR
//! filter) RMS noise 26.4 cm of altitude ≈ 0.03 hPa and output resolution
//! 2.62 Pa; ×16 oversampling reaches 0.16 Pa. Default noise 0.03 hPa,
//! reported at 0.01 hPa as most firmware does.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `mean` | 1013.25 | long-run sea-level pressure, hPa |
//! | `altitude_m` | 0 | station altitude, m (readings are station pressure) |
//! | `weather_sd` | 8.0 | standard deviation of the weather drift, hPa |
//! | `weather_tau_hours` | 60 | mean-reversion time of the drift, hours |
//! | `weather_period_hours` | 12 | spacing of the drift's anchors, hours |
//! | `tide` | 0.5 | semidiurnal tide amplitude, hPa |
//! | `tide_peak_hour` | 10 | hour (UTC) of a tide maximum |
//! | `noise` | 0.03 | sensor noise (white), hPa |
//! | `resolution` | 0.01 | hPa (0: no rounding) |
//! | `anomalies` | none | see `iotmock_sdk::anomaly` (spike 20 hPa, drift 5 hPa, range 300…1100 hPa) |
//!
//! Sea-level pressure is kept within 870…1085 hPa (the records).
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): the drift walk
//! (3 slots).

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::physics::station_pressure;
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::weather::{Walk, WalkParams};
use iotmock_sdk::{DAY_MS, Device, HOUR_MS, Random, diurnal, quantize, require};

/// Numbers kept per device after the anomaly injector (see the state
/// layout above).
const STATE_SLOTS: usize = 3;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    mean: f64,
    altitude_m: f64,
    weather_sd: f64,
    weather_tau_hours: f64,
    weather_period_hours: f64,
    tide: f64,
    tide_peak_hour: f64,
    noise: f64,
    resolution: f64,
    anomalies: AnomalyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mean: 1013.25,
            altitude_m: 0.0,
            weather_sd: 8.0,
            weather_tau_hours: 60.0,
            weather_period_hours: 12.0,
            tide: 0.5,
            tide_peak_hour: 10.0,
            noise: 0.03,
            resolution: 0.01,
            anomalies: AnomalyConfig::default(),
        }
    }
}

struct Pressure {
    c: Config,
    walk: WalkParams,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Pressure);

impl Sensor for Pressure {
    type Config = Config;
    type State = Slots<STATE_SLOTS>;
    /// Plugin 3, layout version 1.
    const STATE_VERSION: u32 = 3001;

    fn new(c: Config) -> Result<Self, String> {
        require(
            (300.0..=1100.0).contains(&c.mean),
            &format!(
                "mean is sea-level pressure in 300..1100 hPa, got {}",
                c.mean
            ),
        )?;
        require(
            (-500.0..=9000.0).contains(&c.altitude_m),
            "altitude_m must be in -500..9000 (the BMP280's range)",
        )?;
        require(
            c.weather_tau_hours > 0.0 && c.weather_period_hours > 0.0,
            "weather_tau_hours and weather_period_hours must be positive",
        )?;
        require(
            c.weather_sd >= 0.0 && c.noise >= 0.0 && c.resolution >= 0.0 && c.tide >= 0.0,
            "weather_sd, tide, noise and resolution must not be negative",
        )?;
        require(
            c.tide_peak_hour.is_finite(),
            "tide_peak_hour must be a number",
        )?;
        let walk = WalkParams::with_time_constant(
            c.weather_period_hours * HOUR_MS,
            c.weather_tau_hours * HOUR_MS,
            c.weather_sd,
        );
        let anomalies = Anomalies::new(
            c.anomalies.clone(),
            Profile {
                min: 300.0,
                max: 1100.0,
                spike_size: 20.0,
                drift_size: 5.0,
                binary: false,
            },
        )?;
        Ok(Self { c, walk, anomalies })
    }

    fn info(&self) -> Info {
        Info {
            unit: "hPa".into(),
            description: "barometric pressure: weather drift and atmospheric tide (BMP280-class)"
                .into(),
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
            Walk::start(ts, &self.walk, rng).slots()
        });
        let mut walk = Walk::from_slots(&own);
        let c = &self.c;
        let sea_level = (c.mean
            + walk.value(ts, &self.walk, &mut rng)
            + c.tide * diurnal(ts, c.tide_peak_hour, DAY_MS / 2.0))
        .clamp(870.0, 1085.0);
        let clean = station_pressure(sea_level, c.altitude_m) + c.noise * rng.normal();

        let out = state::finish(injector, &self.anomalies, &walk.slots(), clean, |v| {
            quantize(v, c.resolution)
        });
        Ok(out.into())
    }
}
