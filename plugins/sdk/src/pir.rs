//! A passive-infrared motion detector (HC-SR501 / Panasonic EKMC class)
//! watching a room that people come into and leave.
//!
//! Occupancy is a two-state process: people arrive with a time-of-day rate
//! (`arrivals_per_hour` at `peak_hour`, `night_factor` of it at the
//! trough) and stay an exponential time with mean `stay_ms`; while someone
//! is there, movements come with mean spacing `motion_interval_ms`, so
//! movements arrive in bursts. The detector turns movements into its
//! output pin: a movement sets the output high for `hold_ms`; in
//! retrigger ("H", repeatable) mode a movement while high restarts the
//! hold, in single-trigger ("L") mode it is ignored; after the output falls
//! the detector is blind for `lockout_ms` (the HC-SR501's block time).
//!
//! Between two readings the events are simulated one by one with
//! exponential waits (memoryless, so stopping at the reading's time and
//! continuing from there next time is exact for constant rates). A gap
//! longer than [`HORIZON_MS`] only simulates its last [`HORIZON_MS`].

use crate::{HOUR_MS, Random, day_weight};

/// Longest stretch simulated between two readings.
pub const HORIZON_MS: f64 = 6.0 * HOUR_MS;
/// Safety cap on events simulated per reading.
const MAX_EVENTS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
pub struct PirParams {
    pub arrivals_per_hour: f64,
    pub night_factor: f64,
    pub peak_hour: f64,
    pub stay_ms: f64,
    pub motion_interval_ms: f64,
    pub hold_ms: f64,
    pub lockout_ms: f64,
    pub retrigger: bool,
}

/// The detector's state (4 slots).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pir {
    /// Time of the previous reading.
    pub last_ts: f64,
    /// 1 while someone is in the room.
    pub present: f64,
    /// The output is high before this time.
    pub high_until: f64,
    /// Movements are ignored from `high_until` until this time.
    pub lockout_until: f64,
}

/// What the pin did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PirReading {
    /// The output at the reading's time.
    pub level: bool,
    /// The output was high at some time since the previous reading.
    pub latched: bool,
}

impl Pir {
    pub const SLOTS: usize = 4;

    /// An idle detector in an empty room at `ts`.
    pub fn new(ts: f64) -> Self {
        Self {
            last_ts: ts,
            present: 0.0,
            high_until: ts,
            lockout_until: ts,
        }
    }

    pub fn from_slots(s: &[f64]) -> Self {
        Self {
            last_ts: s[0],
            present: s[1],
            high_until: s[2],
            lockout_until: s[3],
        }
    }

    pub fn slots(&self) -> [f64; 4] {
        [
            self.last_ts,
            self.present,
            self.high_until,
            self.lockout_until,
        ]
    }

    /// A movement at time `t`; whether the detector fired (or extended its
    /// hold).
    pub fn movement(&mut self, t: f64, p: &PirParams) -> bool {
        if t < self.high_until {
            if p.retrigger {
                self.high_until = t + p.hold_ms;
                self.lockout_until = self.high_until + p.lockout_ms;
                return true;
            }
            false
        } else if t >= self.lockout_until {
            self.high_until = t + p.hold_ms;
            self.lockout_until = self.high_until + p.lockout_ms;
            true
        } else {
            false
        }
    }

    /// Arrival rate per ms at time `t`.
    fn arrival_rate(t: f64, p: &PirParams) -> f64 {
        p.arrivals_per_hour / HOUR_MS * day_weight(t, p.peak_hour, p.night_factor)
    }

    /// Simulates up to `ts` and reads the output.
    pub fn advance(&mut self, ts: f64, p: &PirParams, rng: &mut impl Random) -> PirReading {
        let mut latched = self.high_until > self.last_ts;
        let mut t = self.last_ts;
        if ts - t > HORIZON_MS {
            t = ts - HORIZON_MS;
        }
        let leave = 1.0 / p.stay_ms;
        let motion = 1.0 / p.motion_interval_ms;
        for _ in 0..MAX_EVENTS {
            if t >= ts {
                break;
            }
            let rate = if self.present > 0.0 {
                leave + motion
            } else {
                Self::arrival_rate(t, p)
            };
            if rate <= 0.0 {
                break;
            }
            t += rng.exponential(1.0 / rate);
            if t >= ts {
                break;
            }
            if self.present > 0.0 && rng.uniform() * rate < leave {
                self.present = 0.0;
                continue;
            }
            // An arrival is itself a movement; so is a movement while there.
            self.present = 1.0;
            latched |= self.movement(t, p);
        }
        if ts > self.last_ts {
            self.last_ts = ts;
        }
        PirReading {
            level: ts < self.high_until,
            latched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng;

    fn params(retrigger: bool) -> PirParams {
        PirParams {
            arrivals_per_hour: 6.0,
            night_factor: 0.05,
            peak_hour: 14.0,
            stay_ms: 120_000.0,
            motion_interval_ms: 8_000.0,
            hold_ms: 5_000.0,
            lockout_ms: 2_500.0,
            retrigger,
        }
    }

    /// Runs of equal levels at a fine reading interval: (level, length ms).
    fn runs(retrigger: bool, step: f64, hours: f64) -> Vec<(bool, f64)> {
        let p = params(retrigger);
        let mut r = rng(21);
        let mut pir = Pir::new(0.0);
        let mut out: Vec<(bool, f64)> = Vec::new();
        let mut ts = 0.0;
        while ts < hours * HOUR_MS {
            ts += step;
            let level = pir.advance(ts, &p, &mut r).level;
            match out.last_mut() {
                Some((l, len)) if *l == level => *len += step,
                _ => out.push((level, step)),
            }
        }
        out
    }

    #[test]
    fn output_holds_and_locks_out() {
        for retrigger in [true, false] {
            let rs = runs(retrigger, 100.0, 48.0);
            let highs: Vec<f64> = rs.iter().filter(|r| r.0).map(|r| r.1).collect();
            assert!(highs.len() > 50, "too few triggers: {}", highs.len());
            // Inner runs only: the first and last may be cut by the window.
            for w in rs[1..rs.len() - 1].windows(2) {
                let ((l0, len0), (_, len1)) = (w[0], w[1]);
                if l0 {
                    // Never shorter than the hold; exactly the hold in
                    // single-trigger mode.
                    assert!(len0 >= 5_000.0 - 100.0, "high for {len0}");
                    if !retrigger {
                        assert!(len0 <= 5_000.0 + 100.0, "high for {len0}");
                    }
                    // The low that follows lasts at least the lockout.
                    assert!(len1 >= 2_500.0 - 100.0, "low for {len1}");
                }
            }
            if retrigger {
                assert!(highs.iter().any(|&h| h > 10_000.0), "no retriggered hold");
            }
        }
    }

    #[test]
    fn movement_rules() {
        let p = params(false);
        let mut pir = Pir::new(0.0);
        assert!(pir.movement(1_000.0, &p));
        assert!(!pir.movement(3_000.0, &p)); // high, single trigger
        assert!(!pir.movement(7_000.0, &p)); // lockout until 8_500
        assert!(pir.movement(8_500.0, &p));
        let p = params(true);
        let mut pir = Pir::new(0.0);
        assert!(pir.movement(1_000.0, &p));
        assert!(pir.movement(5_000.0, &p)); // extends to 10_000
        assert_eq!(pir.high_until, 10_000.0);
        assert!(!pir.movement(11_000.0, &p)); // lockout until 12_500
    }

    #[test]
    fn more_motion_by_day_than_by_night() {
        let p = params(true);
        let mut r = rng(8);
        let mut pir = Pir::new(0.0);
        let (mut day, mut night) = (0, 0);
        let step = 10_000.0;
        let mut ts = 0.0;
        while ts < 60.0 * 24.0 * HOUR_MS {
            ts += step;
            if pir.advance(ts, &p, &mut r).latched {
                let h = crate::hour_of_day(ts);
                if (10.0..18.0).contains(&h) {
                    day += 1;
                } else if !(6.0..22.0).contains(&h) {
                    night += 1;
                }
            }
        }
        assert!(day > 5 * night.max(1), "day {day} night {night}");
    }

    #[test]
    fn latched_sees_short_pulses_between_sparse_readings() {
        let p = params(false);
        let mut r = rng(4);
        let mut pir = Pir::new(0.0);
        let (mut level, mut latched) = (0, 0);
        for i in 1..20_000 {
            let reading = pir.advance(i as f64 * 60_000.0, &p, &mut r);
            level += reading.level as u32;
            latched += reading.latched as u32;
        }
        assert!(
            latched > 3 * level.max(1),
            "latched {latched} level {level}"
        );
    }
}
