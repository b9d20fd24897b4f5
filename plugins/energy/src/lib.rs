//! Energy: an electricity meter's import register, kWh, that only counts
//! up, driven by a household's power draw with a daily load profile.
//!
//! Power is a standby base load plus daily peaks (a morning and an evening
//! one by default), times a load factor that wanders from reading to
//! reading (AR(1), never below zero); the register adds the energy of the
//! profile since the previous reading times that factor, and the reading
//! is the register rounded down to the meter's resolution, as a register
//! shows it. See `iotmock_sdk::energy`. Without injected anomalies the
//! readings never decrease.
//!
//! Figures: the default profile draws about 10 kWh a day (3.6 MWh a
//! year, a typical European household): 150 W standby, +500 W around
//! 07:30 UTC (σ 1.5 h), +900 W around 19:00 UTC (σ 2 h). Meter: Eastron
//! SDM120-class DIN-rail meter, accuracy class 1 (IEC 62053-21), pulse
//! output 1000 imp/kWh, so 0.001 kWh (1 Wh) resolution; registers have
//! 5 whole digits (range 0…99999.999 kWh).
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `base_w` | 150 | standby power, W |
//! | `peaks` | `[{"hour":7.5,"watts":500,"width_hours":1.5},{"hour":19,"watts":900,"width_hours":2}]` | daily peaks: hour (UTC), extra watts at the top, σ in hours |
//! | `variability` | 0.3 | standard deviation of the load factor around 1 |
//! | `correlation` | 0.95 | lag-1 autocorrelation of the load factor between readings |
//! | `initial_kwh` | 0 | register at the first reading, kWh |
//! | `resolution` | 0.001 | kWh (0: no rounding) |
//! | `anomalies` | none | see `iotmock_sdk::anomaly` (spike 5 kWh, drift 0.5 kWh, range 0…99999.999 kWh); anomalies may break monotonicity, they are flagged |
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): previous
//! reading time (ms), register (kWh, unrounded), load factor deviation.

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::energy::{LoadProfile, Meter, Peak};
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::{Device, quantize_down, require};

/// The register's capacity.
const MAX_KWH: f64 = 99_999.999;

/// Numbers kept per device after the anomaly injector (see the state
/// layout above).
const STATE_SLOTS: usize = 3;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    base_w: f64,
    peaks: Vec<Peak>,
    variability: f64,
    correlation: f64,
    initial_kwh: f64,
    resolution: f64,
    anomalies: AnomalyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_w: 150.0,
            peaks: vec![
                Peak {
                    hour: 7.5,
                    watts: 500.0,
                    width_hours: 1.5,
                },
                Peak {
                    hour: 19.0,
                    watts: 900.0,
                    width_hours: 2.0,
                },
            ],
            variability: 0.3,
            correlation: 0.95,
            initial_kwh: 0.0,
            resolution: 0.001,
            anomalies: AnomalyConfig::default(),
        }
    }
}

struct Energy {
    profile: LoadProfile,
    variability: f64,
    correlation: f64,
    initial_kwh: f64,
    resolution: f64,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Energy);

impl Sensor for Energy {
    type Config = Config;
    type State = Slots<STATE_SLOTS>;
    /// Plugin 7, layout version 1.
    const STATE_VERSION: u32 = 7001;

    fn new(c: Config) -> Result<Self, String> {
        require(
            c.base_w >= 0.0 && c.base_w.is_finite(),
            "base_w must not be negative",
        )?;
        require(c.peaks.len() <= 24, "at most 24 peaks")?;
        for (i, p) in c.peaks.iter().enumerate() {
            require(
                p.watts >= 0.0
                    && p.width_hours > 0.0
                    && p.width_hours <= 12.0
                    && p.hour.is_finite(),
                &format!(
                    "peaks[{i}]: watts must not be negative and width_hours must be in (0, 12]"
                ),
            )?;
        }
        require(
            c.variability >= 0.0 && (0.0..1.0).contains(&c.correlation),
            "variability must not be negative and correlation must be in [0, 1)",
        )?;
        require(
            (0.0..=MAX_KWH).contains(&c.initial_kwh) && c.resolution >= 0.0,
            "initial_kwh must be in 0..99999.999 and resolution must not be negative",
        )?;
        Ok(Self {
            profile: LoadProfile {
                base_w: c.base_w,
                peaks: c.peaks,
            },
            variability: c.variability,
            correlation: c.correlation,
            initial_kwh: c.initial_kwh,
            resolution: c.resolution,
            anomalies: Anomalies::new(
                c.anomalies,
                Profile {
                    min: 0.0,
                    max: MAX_KWH,
                    spike_size: 5.0,
                    drift_size: 0.5,
                    binary: false,
                },
            )?,
        })
    }

    fn info(&self) -> Info {
        Info {
            unit: "kWh".into(),
            description: "energy meter register: monotonic, driven by a daily load profile".into(),
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
        let (injector, own) = state::load(state, &mut rng, |_| {
            Meter::new(ts, self.initial_kwh).slots()
        });
        let mut meter = Meter::from_slots(&own);
        let clean = meter.advance(
            ts,
            &self.profile,
            self.variability,
            self.correlation,
            &mut rng,
        );
        let out = state::finish(injector, &self.anomalies, &meter.slots(), clean, |v| {
            quantize_down(v, self.resolution)
        });
        Ok(out.into())
    }
}
