//! Battery voltage: a primary cell's discharge curve over its configured
//! lifetime, lower in the cold, with a new battery fitted when the old one
//! reaches its cutoff.
//!
//! The fraction of capacity used grows with simulated time
//! (`lifetime_days` from full to empty at 20 °C). The voltage is the
//! chemistry's curve at that fraction (see `iotmock_sdk::battery`) minus a
//! sag below 20 °C, read from the device state key `"temperature"` when
//! present (else `ambient_c`), plus ADC noise, rounded to the resolution.
//! When the voltage under those conditions reaches `cutoff_v` and
//! `replace` is on, the battery is replaced: the reading is a full one
//! again. A cold night can therefore kill a nearly empty battery early,
//! as in the field.
//!
//! Cell figures: Saft LS14500 (Li-SOCl2, AA): 3.6 V nominal, 3.67 V open
//! circuit, flat plateau, 2.0 V cutoff, −60…+85 °C; Energizer E91
//! (alkaline AA): 1.5 V nominal, ~1.6 V fresh, 0.8–0.9 V end; Energizer
//! CR2032: 3.0 V nominal, 2.0 V cutoff.
//! ADC figures: Nordic nRF52 SAADC at 12 bits over its 3.6 V input range
//! (0.6 V reference, gain 1/6): 0.88 mV per step, a couple of steps of
//! noise: default noise 2 mV, resolution 1 mV.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `chemistry` | `"li-socl2"` | `"li-socl2"`, `"alkaline-2aa"` or `"cr2032"` |
//! | `lifetime_days` | 730 | days from full to empty at 20 °C |
//! | `cutoff_v` | chemistry's end voltage (2.0 / 1.8 / 2.0) | the device dies (or the battery is replaced) at this voltage |
//! | `replace` | true | fit a new battery at cutoff; false: stays at its end voltage |
//! | `start_used` | 0.0 | fraction of capacity already used at the first reading |
//! | `start_random` | false | start each device at its own random fraction in [0, 0.9) instead (a fleet of mixed ages) |
//! | `ambient_c` | 20.0 | temperature used when the device has no `"temperature"` |
//! | `noise` | 0.002 | ADC noise (white), V |
//! | `resolution` | 0.001 | V (0: no rounding) |
//! | `anomalies` | none | see `iotmock_sdk::anomaly` (spike 0.3 V, drift 0.2 V, range 0…5 V) |
//!
//! Device state: reads key `"temperature"` (a JSON number, °C) once per
//! reading.
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): previous
//! reading time (ms), fraction used, batteries replaced so far.

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::battery::Chemistry;
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::{DAY_MS, Device, Random, quantize, require};

/// Device-state key read for the temperature.
const TEMPERATURE_KEY: &str = "temperature";

/// Numbers kept per device after the anomaly injector (see the state
/// layout above).
const STATE_SLOTS: usize = 3;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    chemistry: Chemistry,
    lifetime_days: f64,
    cutoff_v: Option<f64>,
    replace: bool,
    start_used: f64,
    start_random: bool,
    ambient_c: f64,
    noise: f64,
    resolution: f64,
    anomalies: AnomalyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chemistry: Chemistry::default(),
            lifetime_days: 730.0,
            cutoff_v: None,
            replace: true,
            start_used: 0.0,
            start_random: false,
            ambient_c: 20.0,
            noise: 0.002,
            resolution: 0.001,
            anomalies: AnomalyConfig::default(),
        }
    }
}

struct Battery {
    c: Config,
    cutoff_v: f64,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Battery);

impl Sensor for Battery {
    type Config = Config;
    type State = Slots<STATE_SLOTS>;
    /// Plugin 5, layout version 1.
    const STATE_VERSION: u32 = 5001;

    fn new(c: Config) -> Result<Self, String> {
        require(
            c.lifetime_days > 0.0 && c.lifetime_days.is_finite(),
            "lifetime_days must be positive",
        )?;
        require(
            (0.0..1.0).contains(&c.start_used),
            "start_used must be in [0, 1)",
        )?;
        let cutoff_v = c.cutoff_v.unwrap_or(c.chemistry.cutoff_v());
        require(
            cutoff_v >= 0.0 && cutoff_v < c.chemistry.voltage(0.0, 20.0),
            &format!("cutoff_v must be below a fresh battery's voltage, got {cutoff_v}"),
        )?;
        require(
            c.noise >= 0.0 && c.resolution >= 0.0 && c.ambient_c.is_finite(),
            "noise and resolution must not be negative; ambient_c must be a number",
        )?;
        let anomalies = Anomalies::new(
            c.anomalies.clone(),
            Profile {
                min: 0.0,
                max: 5.0,
                spike_size: 0.3,
                drift_size: 0.2,
                binary: false,
            },
        )?;
        Ok(Self {
            c,
            cutoff_v,
            anomalies,
        })
    }

    fn info(&self) -> Info {
        Info {
            unit: "volt".into(),
            description: "battery voltage: discharge curve over its lifetime, cold sag, replacement at cutoff".into(),
        }
    }

    fn sample(
        &self,
        device: &Device,
        ts: i64,
        state: Option<Slots<STATE_SLOTS>>,
    ) -> Result<Sample<Slots<STATE_SLOTS>>, String> {
        let ts = ts as f64;
        let c = &self.c;
        let mut rng = device.random();
        let (injector, own) = state::load(state, &mut rng, |rng| {
            let used = if c.start_random {
                0.9 * rng.uniform()
            } else {
                c.start_used
            };
            [ts, used, 0.0]
        });
        let [last_ts, mut used, mut replaced] = own;
        if ts > last_ts {
            used = (used + (ts - last_ts) / (c.lifetime_days * DAY_MS)).min(1.0);
        }
        let temperature = device.state_number(TEMPERATURE_KEY).unwrap_or(c.ambient_c);
        let mut volts = c.chemistry.voltage(used, temperature);
        if c.replace && (volts <= self.cutoff_v || used >= 1.0) {
            used = 0.0;
            replaced += 1.0;
            volts = c.chemistry.voltage(used, temperature);
        }
        let clean = (volts + c.noise * rng.normal()).max(0.0);
        let own = [ts.max(last_ts), used, replaced];
        let out = state::finish(injector, &self.anomalies, &own, clean, |v| {
            quantize(v, c.resolution)
        });
        Ok(out.into())
    }
}
