//! Anomalies with ground truth, shared by every sensor plugin.
//!
//! Config (the `anomalies` object of each plugin's JSON config; every
//! field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `spike` | 0 | chance per reading of a one-reading spike |
//! | `stuck` | 0 | chance per reading that the sensor freezes (episode) |
//! | `drift` | 0 | chance per reading that a calibration drift begins (episode) |
//! | `dropout` | 0 | chance per reading that a burst of missing readings begins |
//! | `out_of_range` | 0 | chance per reading of a value outside the sensor's range |
//! | `spike_size` | per plugin | spike height, sensor units (the spike is ±size·U(0.5, 1.5), kept within the range) |
//! | `drift_size` | per plugin | offset reached at the end of a drift episode, sensor units |
//! | `stuck_readings` | 30 | mean length of a stuck episode, readings |
//! | `drift_readings` | 200 | mean length of a drift episode, readings |
//! | `dropout_readings` | 5 | mean length of a dropout burst, readings |
//!
//! Rates are per reading: for one-reading anomalies (spike, out-of-range)
//! the rate is the fraction of readings hit; for episodes (stuck, drift,
//! dropout) it is the chance that an episode begins at a reading where none
//! of that kind is running, and episode lengths are geometric with the
//! configured mean. With dropout rate r and mean burst L the fraction of
//! missing readings is r·L / (1 + r·L).
//!
//! Every affected reading carries its label in the sample's `anomaly`
//! field: "dropout" (value none), "out-of-range", "spike", "stuck",
//! "drift", in that order of precedence when several apply at once.
//! - stuck: the reading freezes at the value it had when the episode began;
//! - drift: an offset ramps linearly from 0 to ±`drift_size` over the
//!   episode, then the sensor is back in calibration;
//! - out-of-range: a value beyond the sensor's measuring range by 5–50 % of
//!   the span (what a broken wire or a bad conversion reports).
//!
//! For on/off sensors ([`Profile::binary`]) a spike inverts the reading, a
//! drift makes false triggers ever more likely (chance rising to
//! `drift_size`), and out-of-range reads 2 or -1.
//!
//! The injector draws from its own counter-based stream (seeded once from
//! the host stream and kept in the state), never from the host stream, so
//! the clean signal is the same with anomalies on or off: a run with
//! anomalies can be compared reading by reading with a clean run of the
//! same seed.

use crate::{Counter, Random};

/// The `anomalies` config object.
#[derive(serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    pub spike: f64,
    pub stuck: f64,
    pub drift: f64,
    pub dropout: f64,
    pub out_of_range: f64,
    pub spike_size: Option<f64>,
    pub drift_size: Option<f64>,
    pub stuck_readings: f64,
    pub drift_readings: f64,
    pub dropout_readings: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            spike: 0.0,
            stuck: 0.0,
            drift: 0.0,
            dropout: 0.0,
            out_of_range: 0.0,
            spike_size: None,
            drift_size: None,
            stuck_readings: 30.0,
            drift_readings: 200.0,
            dropout_readings: 5.0,
        }
    }
}

impl AnomalyConfig {
    /// Checks the ranges, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("spike", self.spike),
            ("stuck", self.stuck),
            ("drift", self.drift),
            ("dropout", self.dropout),
            ("out_of_range", self.out_of_range),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "anomalies.{name} is a rate per reading in [0, 1], got {rate}"
                ));
            }
        }
        for (name, size) in [
            ("spike_size", self.spike_size),
            ("drift_size", self.drift_size),
        ] {
            if let Some(size) = size
                && !(size >= 0.0 && size.is_finite())
            {
                return Err(format!("anomalies.{name} must be >= 0, got {size}"));
            }
        }
        for (name, len) in [
            ("stuck_readings", self.stuck_readings),
            ("drift_readings", self.drift_readings),
            ("dropout_readings", self.dropout_readings),
        ] {
            if !(len >= 1.0 && len.is_finite()) {
                return Err(format!("anomalies.{name} must be >= 1, got {len}"));
            }
        }
        Ok(())
    }

    /// Whether any anomaly can start.
    pub fn any(&self) -> bool {
        self.spike > 0.0
            || self.stuck > 0.0
            || self.drift > 0.0
            || self.dropout > 0.0
            || self.out_of_range > 0.0
    }
}

/// What a plugin says about its readings so anomalies look like its own.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Measuring range; out-of-range values fall outside it.
    pub min: f64,
    pub max: f64,
    /// Default spike height and drift end offset, in sensor units.
    pub spike_size: f64,
    pub drift_size: f64,
    /// An on/off sensor (readings 0 or 1).
    pub binary: bool,
}

/// Resolved settings: the config with the plugin's defaults filled in.
#[derive(Clone, Debug)]
pub struct Anomalies {
    pub config: AnomalyConfig,
    pub profile: Profile,
}

impl Anomalies {
    pub fn new(config: AnomalyConfig, profile: Profile) -> Result<Self, String> {
        config.validate()?;
        let mut profile = profile;
        if let Some(size) = config.spike_size {
            profile.spike_size = size;
        }
        if let Some(size) = config.drift_size {
            profile.drift_size = size;
        }
        Ok(Self { config, profile })
    }
}

/// The kinds of anomaly a reading can carry, named in the sample's
/// `anomaly` field by [`Anomaly::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// One reading far off the signal, within the measuring range.
    Spike,
    /// The same value repeated for a run of readings.
    Stuck,
    /// An offset that grows over a run of readings.
    Drift,
    /// No reading at all.
    Dropout,
    /// A value beyond the sensor's measuring range.
    OutOfRange,
}

impl Anomaly {
    /// The label readings carry: "spike", "stuck", "drift", "dropout" or
    /// "out-of-range".
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::Spike => "spike",
            Anomaly::Stuck => "stuck",
            Anomaly::Drift => "drift",
            Anomaly::Dropout => "dropout",
            Anomaly::OutOfRange => "out-of-range",
        }
    }
}

pub const SPIKE: Anomaly = Anomaly::Spike;
pub const STUCK: Anomaly = Anomaly::Stuck;
pub const DRIFT: Anomaly = Anomaly::Drift;
pub const DROPOUT: Anomaly = Anomaly::Dropout;
pub const OUT_OF_RANGE: Anomaly = Anomaly::OutOfRange;

/// One device-sensor's anomaly state; lives in the state vector (8 slots).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Injector {
    rng: Counter,
    stuck_left: f64,
    stuck_value: f64,
    drift_left: f64,
    drift_len: f64,
    drift_end: f64,
    dropout_left: f64,
}

impl Injector {
    /// Slots taken in the state vector.
    pub const SLOTS: usize = 8;

    /// A fresh injector with no episode running. `seed` comes from the
    /// host stream; only its low 53 bits are kept, so it fits in an f64.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Counter {
                seed: seed & ((1 << 53) - 1),
                drawn: 0,
            },
            stuck_left: 0.0,
            stuck_value: 0.0,
            drift_left: 0.0,
            drift_len: 0.0,
            drift_end: 0.0,
            dropout_left: 0.0,
        }
    }

    pub fn from_slots(s: &[f64]) -> Self {
        Self {
            rng: Counter {
                seed: s[0] as u64,
                drawn: s[1] as u64,
            },
            stuck_left: s[2],
            stuck_value: s[3],
            drift_left: s[4],
            drift_len: s[5],
            drift_end: s[6],
            dropout_left: s[7],
        }
    }

    pub fn write_slots(&self, out: &mut Vec<f64>) {
        out.extend_from_slice(&self.slots());
    }

    /// The numbers [`Injector::from_slots`] reads back.
    pub fn slots(&self) -> [f64; Self::SLOTS] {
        [
            self.rng.seed as f64,
            // Wraps long before 2^53 draws would lose precision.
            (self.rng.drawn % (1 << 53)) as f64,
            self.stuck_left,
            self.stuck_value,
            self.drift_left,
            self.drift_len,
            self.drift_end,
            self.dropout_left,
        ]
    }

    /// Applies anomalies to one clean reading: the value to report (none
    /// for a dropout) and the label of the anomaly, if any. Draws nothing
    /// when no rate is set and no episode runs.
    pub fn apply(&mut self, settings: &Anomalies, value: f64) -> (Option<f64>, Option<Anomaly>) {
        let (c, p) = (&settings.config, &settings.profile);
        let rng = &mut self.rng;
        let mut value = value;
        let mut label = None;

        if self.dropout_left <= 0.0 && rng.chance(c.dropout) {
            self.dropout_left = rng.geometric(c.dropout_readings);
        }

        if self.drift_left <= 0.0 && rng.chance(c.drift) {
            self.drift_len = rng.geometric(c.drift_readings);
            self.drift_left = self.drift_len;
            self.drift_end = if p.binary {
                p.drift_size
            } else {
                rng.sign() * p.drift_size
            };
        }
        if self.drift_left > 0.0 {
            let progress = (self.drift_len - self.drift_left + 1.0) / self.drift_len;
            if p.binary {
                // A creeping false trigger, e.g. a PIR heated by the sun.
                if value < 0.5 && rng.chance(progress * self.drift_end) {
                    value = 1.0;
                }
            } else {
                value += self.drift_end * progress;
            }
            self.drift_left -= 1.0;
            label = Some(DRIFT);
        }

        if self.stuck_left <= 0.0 && rng.chance(c.stuck) {
            self.stuck_left = rng.geometric(c.stuck_readings);
            self.stuck_value = value;
        }
        if self.stuck_left > 0.0 {
            value = self.stuck_value;
            self.stuck_left -= 1.0;
            label = Some(STUCK);
        }

        if rng.chance(c.spike) {
            value = if p.binary {
                1.0 - value.round()
            } else {
                // A spike stays within the range (leaving it is the
                // out-of-range anomaly): it points the other way when its
                // own way would leave, e.g. upwards on a reading near 0.
                let jump = rng.sign() * p.spike_size * (0.5 + rng.uniform());
                let within = |v: f64| (p.min..=p.max).contains(&v);
                if within(value + jump) || !within(value - jump) {
                    (value + jump).clamp(p.min, p.max)
                } else {
                    value - jump
                }
            };
            label = Some(SPIKE);
        }

        if rng.chance(c.out_of_range) {
            value = if p.binary {
                if rng.sign() > 0.0 { 2.0 } else { -1.0 }
            } else {
                let beyond = (p.max - p.min) * (0.05 + 0.45 * rng.uniform());
                if rng.sign() > 0.0 {
                    p.max + beyond
                } else {
                    p.min - beyond
                }
            };
            label = Some(OUT_OF_RANGE);
        }

        if self.dropout_left > 0.0 {
            self.dropout_left -= 1.0;
            return (None, Some(DROPOUT));
        }
        (Some(value), label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mean;

    const PROFILE: Profile = Profile {
        min: -40.0,
        max: 125.0,
        spike_size: 8.0,
        drift_size: 3.0,
        binary: false,
    };

    fn settings(config: AnomalyConfig) -> Anomalies {
        Anomalies::new(config, PROFILE).unwrap()
    }

    fn run(
        config: AnomalyConfig,
        n: usize,
        clean: impl Fn(usize) -> f64,
    ) -> Vec<(Option<f64>, Option<Anomaly>)> {
        let s = settings(config);
        let mut inj = Injector::new(0xDEAD_BEEF);
        (0..n)
            .map(|i| {
                // Round-trip the state every reading, as the host does.
                let mut slots = Vec::new();
                inj.write_slots(&mut slots);
                inj = Injector::from_slots(&slots);
                inj.apply(&s, clean(i))
            })
            .collect()
    }

    fn count(out: &[(Option<f64>, Option<Anomaly>)], label: Anomaly) -> usize {
        out.iter().filter(|(_, l)| *l == Some(label)).count()
    }

    #[test]
    fn no_rates_no_anomalies_no_draws() {
        let s = settings(AnomalyConfig::default());
        let mut inj = Injector::new(1);
        for i in 0..1000 {
            assert_eq!(inj.apply(&s, i as f64), (Some(i as f64), None));
        }
        assert_eq!(inj, Injector::new(1));
    }

    #[test]
    fn one_reading_anomaly_rates_are_within_tolerance() {
        let n = 200_000;
        for (field, label) in [("spike", SPIKE), ("out_of_range", OUT_OF_RANGE)] {
            let config: AnomalyConfig =
                serde_json::from_str(&format!(r#"{{"{field}": 0.01}}"#)).unwrap();
            let out = run(config, n, |_| 20.0);
            let rate = count(&out, label) as f64 / n as f64;
            // Binomial sd at p = 0.01, n = 2e5 is 2.2e-4; allow ~4.5 sd.
            assert!((rate - 0.01).abs() < 0.001, "{field}: {rate}");
            assert_eq!(
                count(&out, label),
                out.iter().filter(|(v, _)| *v != Some(20.0)).count()
            );
        }
    }

    #[test]
    fn spikes_have_the_configured_size_and_out_of_range_leaves_the_range() {
        let config = AnomalyConfig {
            spike: 0.05,
            out_of_range: 0.05,
            ..Default::default()
        };
        for (v, label) in run(config, 50_000, |_| 20.0) {
            let v = v.unwrap();
            match label {
                Some(SPIKE) => assert!((4.0..=12.0).contains(&(v - 20.0).abs()), "{v}"),
                Some(OUT_OF_RANGE) => assert!(!(-40.0..=125.0).contains(&v), "{v}"),
                None => assert_eq!(v, 20.0),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn episode_start_rates_and_lengths_match_the_config() {
        let n = 400_000;
        let config = AnomalyConfig {
            stuck: 0.002,
            stuck_readings: 30.0,
            ..Default::default()
        };
        let out = run(config, n, |i| i as f64);
        let runs = runs_of(&out, STUCK);
        let mean_len = mean(&runs);
        assert!(
            (mean_len - 30.0).abs() < 3.0,
            "stuck mean length {mean_len}"
        );
        // Starts per reading outside an episode.
        let outside = n - runs.iter().sum::<f64>() as usize;
        let start_rate = runs.len() as f64 / outside as f64;
        assert!(
            (start_rate - 0.002).abs() < 0.0003,
            "stuck start rate {start_rate}"
        );
        // Stuck readings repeat the value the episode began with (the clean
        // signal climbs by 1 each reading); only an episode starting right
        // as the previous one ends may change it.
        let pairs: Vec<bool> = out
            .windows(2)
            .filter(|w| w[0].1 == Some(STUCK) && w[1].1 == Some(STUCK))
            .map(|w| w[0].0 == w[1].0)
            .collect();
        let same = pairs.iter().filter(|&&b| b).count() as f64 / pairs.len() as f64;
        assert!(same > 0.99, "{same}");
    }

    #[test]
    fn drift_ramps_to_its_size_and_resets() {
        let config = AnomalyConfig {
            drift: 0.001,
            drift_readings: 100.0,
            ..Default::default()
        };
        let out = run(config, 200_000, |_| 0.0);
        let mut max_offset: f64 = 0.0;
        for (v, l) in &out {
            match l {
                Some(DRIFT) => max_offset = max_offset.max(v.unwrap().abs()),
                None => assert_eq!(*v, Some(0.0)),
                _ => panic!(),
            }
        }
        assert!((max_offset - 3.0).abs() < 1e-9, "{max_offset}");
        let runs = runs_of(&out, DRIFT);
        assert!((mean(&runs) - 100.0).abs() < 15.0, "{}", mean(&runs));
    }

    #[test]
    fn dropouts_come_in_bursts() {
        let n = 400_000;
        let config = AnomalyConfig {
            dropout: 0.01,
            dropout_readings: 5.0,
            ..Default::default()
        };
        let out = run(config, n, |_| 1.0);
        assert!(
            out.iter()
                .all(|(v, l)| v.is_none() == (*l == Some(DROPOUT)))
        );
        let runs = runs_of(&out, DROPOUT);
        let mean_len = mean(&runs);
        assert!((mean_len - 5.0).abs() < 0.3, "mean burst {mean_len}");
        // Missing fraction r·L / (1 + r·L) = 0.05 / 1.05.
        let missing = runs.iter().sum::<f64>() / n as f64;
        assert!((missing - 0.05 / 1.05).abs() < 0.004, "missing {missing}");
        // Bursty: given one reading is missing, the next one is missing far
        // more often than the overall missing fraction (independent
        // dropouts would make the two equal).
        let both = out
            .windows(2)
            .filter(|w| w[0].0.is_none() && w[1].0.is_none())
            .count() as f64;
        let after_missing = both / (runs.iter().sum::<f64>());
        assert!(
            after_missing > 0.75,
            "P(missing | missing before) {after_missing}"
        );
        assert!(runs.iter().filter(|&&r| r >= 5.0).count() as f64 > 0.3 * runs.len() as f64);
    }

    #[test]
    fn binary_anomalies_stay_binary_except_out_of_range() {
        let s = Anomalies::new(
            AnomalyConfig {
                spike: 0.01,
                drift: 0.001,
                stuck: 0.001,
                out_of_range: 0.001,
                ..Default::default()
            },
            Profile {
                min: 0.0,
                max: 1.0,
                spike_size: 1.0,
                drift_size: 0.5,
                binary: true,
            },
        )
        .unwrap();
        let mut inj = Injector::new(77);
        let mut seen_oor = false;
        for i in 0..100_000 {
            let (v, l) = inj.apply(&s, (i / 50 % 2) as f64);
            let v = v.unwrap();
            if l == Some(OUT_OF_RANGE) {
                assert!(v == 2.0 || v == -1.0);
                seen_oor = true;
            } else {
                assert!(v == 0.0 || v == 1.0, "{v} {l:?}");
            }
        }
        assert!(seen_oor);
    }

    #[test]
    fn spikes_stay_within_the_range() {
        let s = Anomalies::new(
            AnomalyConfig {
                spike: 0.5,
                ..Default::default()
            },
            Profile {
                min: 0.0,
                max: 16.0,
                spike_size: 2.0,
                drift_size: 0.05,
                binary: false,
            },
        )
        .unwrap();
        let mut inj = Injector::new(5);
        for _ in 0..10_000 {
            if let (Some(v), Some(SPIKE)) = inj.apply(&s, 0.006) {
                assert!((1.0..=3.1).contains(&v), "{v}");
            }
        }
    }

    #[test]
    fn bad_rates_are_named() {
        let c = AnomalyConfig {
            dropout: 1.5,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("dropout"));
        let err = serde_json::from_str::<AnomalyConfig>(r#"{"spikes": 0.1}"#).unwrap_err();
        assert!(err.to_string().contains("spikes"));
    }

    fn runs_of(out: &[(Option<f64>, Option<Anomaly>)], label: Anomaly) -> Vec<f64> {
        let mut runs = Vec::new();
        let mut current = 0.0;
        for (_, l) in out {
            if *l == Some(label) {
                current += 1.0;
            } else if current > 0.0 {
                runs.push(current);
                current = 0.0;
            }
        }
        if current > 0.0 {
            runs.push(current);
        }
        runs
    }
}
