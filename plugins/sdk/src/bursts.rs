//! Bursts of activity on a quiet background: a machine that runs now and
//! then, a truck going by. Bursts start as a Poisson process (`per_hour`),
//! last an exponential time (mean `mean_ms`), and each has its own level,
//! log-normal around `median` with log-standard deviation `spread`.

use crate::{HOUR_MS, Random};

/// Safety cap on bursts simulated per reading.
const MAX_BURSTS: usize = 10_000;

#[derive(Clone, Copy, Debug)]
pub struct BurstParams {
    pub per_hour: f64,
    pub mean_ms: f64,
    pub median: f64,
    pub spread: f64,
}

/// Burst state (3 slots).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bursts {
    pub last_ts: f64,
    /// The current (or last) burst ends at this time.
    pub end: f64,
    /// Its level.
    pub level: f64,
}

impl Bursts {
    pub const SLOTS: usize = 3;

    pub fn new(ts: f64) -> Self {
        Self {
            last_ts: ts,
            end: ts,
            level: 0.0,
        }
    }

    pub fn from_slots(s: &[f64]) -> Self {
        Self {
            last_ts: s[0],
            end: s[1],
            level: s[2],
        }
    }

    pub fn slots(&self) -> [f64; 3] {
        [self.last_ts, self.end, self.level]
    }

    /// The level of the burst running at `ts`, if one is.
    pub fn advance(&mut self, ts: f64, p: &BurstParams, rng: &mut impl Random) -> Option<f64> {
        if ts < self.end {
            self.last_ts = self.last_ts.max(ts);
            return Some(self.level);
        }
        // Start where the previous reading or burst left off; a burst that
        // began more than 20 mean lengths ago is over with certainty.
        let mut t = self.last_ts.max(self.end).max(ts - 20.0 * p.mean_ms);
        self.last_ts = self.last_ts.max(ts);
        if p.per_hour <= 0.0 {
            return None;
        }
        let mean_gap = HOUR_MS / p.per_hour;
        for _ in 0..MAX_BURSTS {
            t += rng.exponential(mean_gap);
            if t >= ts {
                return None;
            }
            self.end = t + rng.exponential(p.mean_ms);
            self.level = p.median * (p.spread * rng.normal()).exp();
            if self.end > ts {
                return Some(self.level);
            }
            t = self.end;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn busy_fraction_matches_rate_and_length() {
        let p = BurstParams {
            per_hour: 4.0,
            mean_ms: 60_000.0,
            median: 0.3,
            spread: 0.5,
        };
        let mut r = rng(2);
        let mut b = Bursts::new(0.0);
        let n = 500_000;
        let mut busy = 0;
        let mut levels = Vec::new();
        for i in 1..=n {
            if let Some(level) = b.advance(i as f64 * 5_000.0, &p, &mut r) {
                busy += 1;
                levels.push(level.ln());
            }
        }
        // Alternating renewal: busy fraction = L / (gap + L) = 1 / 16.
        let fraction = busy as f64 / n as f64;
        assert!((fraction - 1.0 / 16.0).abs() < 0.006, "{fraction}");
        assert!((mean(&levels) - 0.3_f64.ln()).abs() < 0.1);
    }
}
