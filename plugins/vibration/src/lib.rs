//! Vibration: the RMS of a 3-axis accelerometer's AC part (gravity
//! removed), in g, over a window of samples; what a condition-monitoring
//! node reports.
//!
//! Chosen reading: the RMS of the dynamic part, not the raw magnitude. At
//! rest it reads the sensor's noise floor (a few mg), not 1 g, so a
//! threshold on it means "is it shaking" whatever the mounting. Bursts of
//! vibration (a machine running, a truck passing) start at random
//! (`bursts_per_hour`), last an exponential time (mean `burst_s`), each at
//! its own level (log-normal around `burst_g`), varying from reading to
//! reading by `burst_variation`. See `iotmock_sdk::bursts`.
//!
//! Sensor figures: Analog Devices ADXL345 (datasheet Rev. E): ±2…±16 g,
//! 3.9 mg/LSB in full resolution, noise at 100 Hz output rate 0.75 LSB rms
//! on x and y and 1.1 LSB rms on z, i.e. 2.9, 2.9 and 4.3 mg, so the
//! vector RMS at rest is √(2.9² + 2.9² + 4.3²) ≈ 5.9 mg (default
//! `noise_g` 0.0059). An RMS over N samples scatters by about 1/√(6N) of
//! itself (3N squared terms): 4 % for the default 100 samples (one second
//! at 100 Hz). Readings stay below 16 g (the largest range).
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `noise_g` | 0.0059 | RMS at rest (the noise floor), g |
//! | `window_samples` | 100 | samples in each RMS window |
//! | `bursts_per_hour` | 2.0 | mean rate of vibration bursts |
//! | `burst_s` | 30 | mean burst length, s |
//! | `burst_g` | 0.3 | median RMS level of a burst, g |
//! | `burst_spread` | 0.5 | log-standard deviation of burst levels |
//! | `burst_variation` | 0.15 | relative variation of the level between readings of one burst |
//! | `resolution` | 0.0001 | g (0: no rounding) |
//! | `anomalies` | none | see `iotmock_sdk::anomaly` (spike 2 g, drift 0.05 g, range 0…16 g) |
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): previous
//! reading time, current burst end (ms), current burst level.

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::bursts::{BurstParams, Bursts};
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::{Device, Random, quantize, require};

/// Largest reading: the ADXL345's widest range.
const MAX_G: f64 = 16.0;

/// Numbers kept per device after the anomaly injector (see the state
/// layout above).
const STATE_SLOTS: usize = 3;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    noise_g: f64,
    window_samples: f64,
    bursts_per_hour: f64,
    burst_s: f64,
    burst_g: f64,
    burst_spread: f64,
    burst_variation: f64,
    resolution: f64,
    anomalies: AnomalyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            noise_g: 0.0059,
            window_samples: 100.0,
            bursts_per_hour: 2.0,
            burst_s: 30.0,
            burst_g: 0.3,
            burst_spread: 0.5,
            burst_variation: 0.15,
            resolution: 0.0001,
            anomalies: AnomalyConfig::default(),
        }
    }
}

struct Vibration {
    c: Config,
    bursts: BurstParams,
    scatter: f64,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Vibration);

impl Sensor for Vibration {
    type Config = Config;
    type State = Slots<STATE_SLOTS>;
    /// Plugin 6, layout version 1.
    const STATE_VERSION: u32 = 6001;

    fn new(c: Config) -> Result<Self, String> {
        require(c.window_samples >= 1.0, "window_samples must be at least 1")?;
        require(
            (0.0..=3600.0).contains(&c.bursts_per_hour),
            "bursts_per_hour must be in 0..3600",
        )?;
        require(c.burst_s > 0.0, "burst_s must be positive")?;
        require(
            [
                c.noise_g,
                c.burst_g,
                c.burst_spread,
                c.burst_variation,
                c.resolution,
            ]
            .iter()
            .all(|v| *v >= 0.0 && v.is_finite()),
            "noise_g, burst_g, burst_spread, burst_variation and resolution must not be negative",
        )?;
        let bursts = BurstParams {
            per_hour: c.bursts_per_hour,
            mean_ms: c.burst_s * 1000.0,
            median: c.burst_g,
            spread: c.burst_spread,
        };
        let anomalies = Anomalies::new(
            c.anomalies.clone(),
            Profile {
                min: 0.0,
                max: MAX_G,
                spike_size: 2.0,
                drift_size: 0.05,
                binary: false,
            },
        )?;
        Ok(Self {
            scatter: 1.0 / (6.0 * c.window_samples).sqrt(),
            c,
            bursts,
            anomalies,
        })
    }

    fn info(&self) -> Info {
        Info {
            unit: "g".into(),
            description: "vibration RMS (gravity removed): ADXL345-class noise floor with bursts"
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
        let (injector, own) = state::load(state, &mut rng, |_| Bursts::new(ts).slots());
        let mut bursts = Bursts::from_slots(&own);
        let burst = bursts
            .advance(ts, &self.bursts, &mut rng)
            .map_or(0.0, |level| {
                level * (1.0 + self.c.burst_variation * rng.normal()).max(0.0)
            });
        let floor = self.c.noise_g * (1.0 + self.scatter * rng.normal()).max(0.0);
        let clean = (floor * floor + burst * burst).sqrt().min(MAX_G);
        let out = state::finish(injector, &self.anomalies, &bursts.slots(), clean, |v| {
            quantize(v, self.c.resolution)
        });
        Ok(out.into())
    }
}
