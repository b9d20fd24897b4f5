//! An energy meter's register driven by a household's power draw.
//!
//! Power follows a daily load profile: a standby base load plus peaks
//! (gaussian bumps in the hour of day, wrapping round midnight), times a
//! slowly varying factor `1 + n` with `n` an AR(1) process (appliances
//! switching on and off). Energy is the integral of power over time, so the
//! register only ever counts up: each reading adds the profile's energy
//! since the previous reading (whole days at once, the rest in steps of at
//! most five minutes) times a factor that is never negative.

use crate::{DAY_MS, HOUR_MS, Random, ar1_step, hour_of_day};

/// One peak of the daily load profile.
#[derive(serde::Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peak {
    /// Hour of the day (UTC) of the peak's top.
    pub hour: f64,
    /// Extra draw at the top, watts.
    pub watts: f64,
    /// Standard deviation of the bump, hours.
    pub width_hours: f64,
}

/// The daily load profile.
#[derive(Clone, Debug)]
pub struct LoadProfile {
    pub base_w: f64,
    pub peaks: Vec<Peak>,
}

/// Integration step for partial days.
const STEP_MS: f64 = 300_000.0;

impl LoadProfile {
    /// Power draw at time `ts`, watts (before the random factor).
    pub fn power_w(&self, ts: f64) -> f64 {
        let hour = hour_of_day(ts);
        let mut watts = self.base_w;
        for peak in &self.peaks {
            let mut d = (hour - peak.hour).rem_euclid(24.0);
            if d > 12.0 {
                d -= 24.0;
            }
            let z = d / peak.width_hours;
            watts += peak.watts * (-0.5 * z * z).exp();
        }
        watts
    }

    /// Energy drawn from `t0` to `t1` (ms), watt-hours (midpoint rule).
    fn integrate(&self, t0: f64, t1: f64) -> f64 {
        if t1 <= t0 {
            return 0.0;
        }
        let steps = ((t1 - t0) / STEP_MS).ceil().max(1.0);
        let dt = (t1 - t0) / steps;
        let mut wh = 0.0;
        for i in 0..steps as usize {
            wh += self.power_w(t0 + (i as f64 + 0.5) * dt) * dt / HOUR_MS;
        }
        wh
    }

    /// Energy of one whole day, watt-hours.
    pub fn daily_wh(&self) -> f64 {
        self.integrate(0.0, DAY_MS)
    }

    /// Energy drawn from `t0` to `t1`, watt-hours; whole days cost one
    /// day's integral, so a long gap is cheap.
    pub fn energy_wh(&self, t0: f64, t1: f64) -> f64 {
        if t1 <= t0 {
            return 0.0;
        }
        let days = ((t1 - t0) / DAY_MS).floor();
        let whole = if days >= 1.0 {
            days * self.daily_wh()
        } else {
            0.0
        };
        whole + self.integrate(t0 + days * DAY_MS, t1)
    }
}

/// Meter state (3 slots).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Meter {
    pub last_ts: f64,
    /// The exact register, kWh.
    pub kwh: f64,
    /// The AR(1) load factor deviation.
    pub noise: f64,
}

impl Meter {
    pub const SLOTS: usize = 3;

    pub fn new(ts: f64, kwh: f64) -> Self {
        Self {
            last_ts: ts,
            kwh,
            noise: 0.0,
        }
    }

    pub fn from_slots(s: &[f64]) -> Self {
        Self {
            last_ts: s[0],
            kwh: s[1],
            noise: s[2],
        }
    }

    pub fn slots(&self) -> [f64; 3] {
        [self.last_ts, self.kwh, self.noise]
    }

    /// Counts up to `ts` and returns the register, kWh. `variability` is
    /// the standard deviation of the load factor, `correlation` its lag-1
    /// autocorrelation between readings. Never decreases; a time before
    /// the previous reading adds nothing.
    pub fn advance(
        &mut self,
        ts: f64,
        profile: &LoadProfile,
        variability: f64,
        correlation: f64,
        rng: &mut impl Random,
    ) -> f64 {
        self.noise = ar1_step(self.noise, correlation, variability, rng.normal());
        if ts > self.last_ts {
            let factor = (1.0 + self.noise).max(0.0);
            self.kwh += profile.energy_wh(self.last_ts, ts) * factor / 1000.0;
            self.last_ts = ts;
        }
        self.kwh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize_down;
    use crate::testing::rng;

    fn household() -> LoadProfile {
        LoadProfile {
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
        }
    }

    #[test]
    fn profile_peaks_and_daily_energy() {
        let p = household();
        assert!(p.power_w(19.0 * HOUR_MS) > 1000.0);
        assert!(p.power_w(3.0 * HOUR_MS) < 200.0);
        // 150 W·24 h + 500·1.5·√(2π) + 900·2·√(2π) ≈ 10.0 kWh.
        let daily = p.daily_wh();
        assert!((daily - 10_000.0).abs() < 150.0, "{daily}");
        // A long gap costs whole days plus the rest.
        let gap = p.energy_wh(1000.0, 1000.0 + 3.5 * DAY_MS);
        let stepwise: f64 = (0..84)
            .map(|h| {
                p.energy_wh(
                    1000.0 + h as f64 * HOUR_MS,
                    1000.0 + (h + 1) as f64 * HOUR_MS,
                )
            })
            .sum();
        assert!((gap - stepwise).abs() < 1.0, "{gap} vs {stepwise}");
    }

    #[test]
    fn energy_is_monotonic_and_adds_up() {
        let p = household();
        let mut r = rng(13);
        let mut meter = Meter::new(0.0, 100.0);
        let mut last_reading = 0.0;
        let mut ts = 0.0;
        for i in 0..200_000 {
            // Irregular intervals, some of them repeated or out of order.
            ts += match i % 7 {
                0 => 0.0,
                1 => -5_000.0,
                _ => r.uniform() * 120_000.0,
            };
            let kwh = meter.advance(ts, &p, 0.3, 0.95, &mut r);
            let reading = quantize_down(kwh, 0.001);
            assert!(reading >= last_reading, "{reading} < {last_reading}");
            last_reading = reading;
        }
        // About 10 kWh a day on average.
        let days = meter.last_ts / DAY_MS;
        let per_day = (meter.kwh - 100.0) / days;
        assert!((per_day - 10.0).abs() < 0.6, "{per_day} kWh/day");
    }
}
