//! Motion: a PIR detector's output, 1 while it signals motion, else 0.
//!
//! People come into the watched area with a time-of-day rate (busiest at
//! `peak_hour`, `night_factor` of that at night), stay a while and move
//! every few seconds while there, so detections come in bursts. The
//! detector holds its output high for `hold_ms` after a detection
//! (restarted by new motion in retrigger mode) and is blind for
//! `lockout_ms` after the output falls. See `iotmock_sdk::pir`.
//!
//! Sensor figures: HC-SR501 module: hold ("delay") time adjustable from
//! about 0.3 s to 200 s (5 s is the usual factory setting of the pot),
//! block time 2.5 s, jumper for repeatable (H) or single (L) trigger,
//! range up to 7 m in a 120° cone. Panasonic EKMC (PaPIRs) digital
//! sensors: output held while motion is seen, up to 5 m (standard lens)
//! or 12 m (long-distance). The defaults follow the HC-SR501 in H mode.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `arrivals_per_hour` | 4.0 | people entering per hour at the busiest time |
//! | `night_factor` | 0.05 | arrival rate at the quietest time, as a fraction of the peak |
//! | `peak_hour` | 14.0 | busiest hour of the day (UTC) |
//! | `stay_s` | 180 | mean time someone stays, s |
//! | `motion_interval_s` | 20 | mean time between movements while someone is there, s |
//! | `hold_ms` | 5000 | output high time after a detection |
//! | `lockout_ms` | 2500 | blind time after the output falls |
//! | `retrigger` | true | motion while high restarts the hold (H mode); false: L mode |
//! | `report` | `"level"` | `"level"`: the output at the reading's time; `"latched"`: 1 if the output was high at any time since the previous reading (nothing missed between sparse readings) |
//! | `anomalies` | none | see `iotmock_sdk::anomaly`; on this on/off sensor a spike inverts the reading, a drift brings more and more false triggers (up to `drift_size` = 0.5 chance), out-of-range reads 2 or -1 |
//!
//! State (after the anomaly injector, see `iotmock_sdk::state`): previous
//! reading time, occupancy, output-high-until, lockout-until (ms).

use iotmock_sdk::anomaly::{Anomalies, AnomalyConfig, Profile};
use iotmock_sdk::pir::{Pir, PirParams};
use iotmock_sdk::sensor::{Info, Sample, Sensor};
use iotmock_sdk::state::{self, Slots};
use iotmock_sdk::{Device, require};

/// Numbers kept per device after the anomaly injector (see the state
/// layout above).
const STATE_SLOTS: usize = 4;

#[derive(serde::Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Report {
    #[default]
    Level,
    Latched,
}

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    arrivals_per_hour: f64,
    night_factor: f64,
    peak_hour: f64,
    stay_s: f64,
    motion_interval_s: f64,
    hold_ms: f64,
    lockout_ms: f64,
    retrigger: bool,
    report: Report,
    anomalies: AnomalyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            arrivals_per_hour: 4.0,
            night_factor: 0.05,
            peak_hour: 14.0,
            stay_s: 180.0,
            motion_interval_s: 20.0,
            hold_ms: 5000.0,
            lockout_ms: 2500.0,
            retrigger: true,
            report: Report::Level,
            anomalies: AnomalyConfig::default(),
        }
    }
}

struct Motion {
    pir: PirParams,
    report: Report,
    anomalies: Anomalies,
}

iotmock_sdk::export_sensor!(Motion);

impl Sensor for Motion {
    type Config = Config;
    type State = Slots<STATE_SLOTS>;
    /// Plugin 4, layout version 1.
    const STATE_VERSION: u32 = 4001;

    fn new(c: Config) -> Result<Self, String> {
        require(
            c.arrivals_per_hour >= 0.0 && c.arrivals_per_hour <= 3600.0,
            "arrivals_per_hour must be in 0..3600",
        )?;
        require(
            (0.0..=1.0).contains(&c.night_factor),
            "night_factor must be in [0, 1]",
        )?;
        require(
            c.stay_s > 0.0 && c.motion_interval_s >= 0.1,
            "stay_s must be positive and motion_interval_s at least 0.1",
        )?;
        require(
            (0.0..=3_600_000.0).contains(&c.hold_ms) && (0.0..=3_600_000.0).contains(&c.lockout_ms),
            "hold_ms and lockout_ms must be in 0..3600000",
        )?;
        require(c.peak_hour.is_finite(), "peak_hour must be a number")?;
        Ok(Self {
            pir: PirParams {
                arrivals_per_hour: c.arrivals_per_hour,
                night_factor: c.night_factor,
                peak_hour: c.peak_hour,
                stay_ms: c.stay_s * 1000.0,
                motion_interval_ms: c.motion_interval_s * 1000.0,
                hold_ms: c.hold_ms,
                lockout_ms: c.lockout_ms,
                retrigger: c.retrigger,
            },
            report: c.report,
            anomalies: Anomalies::new(
                c.anomalies,
                Profile {
                    min: 0.0,
                    max: 1.0,
                    spike_size: 1.0,
                    drift_size: 0.5,
                    binary: true,
                },
            )?,
        })
    }

    fn info(&self) -> Info {
        Info {
            unit: "boolean".into(),
            description:
                "PIR motion (0/1): bursty time-of-day occupancy, hold and lockout (HC-SR501-class)"
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
        let (injector, own) = state::load(state, &mut rng, |_| Pir::new(ts).slots());
        let mut pir = Pir::from_slots(&own);
        let reading = pir.advance(ts, &self.pir, &mut rng);
        let on = match self.report {
            Report::Level => reading.level,
            Report::Latched => reading.latched,
        };
        let clean = if on { 1.0 } else { 0.0 };
        let out = state::finish(injector, &self.anomalies, &pir.slots(), clean, f64::round);
        Ok(out.into())
    }
}
