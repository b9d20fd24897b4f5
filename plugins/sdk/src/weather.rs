//! Slow, bounded random walks for weather: a value that wanders from one
//! period to the next (a day for a daily mean, half a day for pressure).
//!
//! The walk is an AR(1) process sampled at anchor points `period_ms` apart
//! (a discretely sampled Ornstein–Uhlenbeck process: it wanders but always
//! comes back towards 0, with stationary standard deviation `sigma` and
//! correlation `phi` from one anchor to the next). Between anchors the
//! value follows a smoothstep, so it has no jumps at midnight. The walk
//! lives in three state slots and advances only with the request's time:
//! the same times give the same values, whatever the wall clock says.

use crate::{Random, ar1_step, ar1_steps, smoothstep};

/// A walk's state (3 slots): the anchor index and the values at the start
/// and end of the current period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Walk {
    pub index: f64,
    pub from: f64,
    pub to: f64,
}

/// How a walk moves.
#[derive(Clone, Copy, Debug)]
pub struct WalkParams {
    pub period_ms: f64,
    /// Correlation between consecutive anchors, in [0, 1).
    pub phi: f64,
    /// Stationary standard deviation.
    pub sigma: f64,
}

impl WalkParams {
    /// Anchor correlation for a mean-reversion time constant `tau_ms`.
    pub fn with_time_constant(period_ms: f64, tau_ms: f64, sigma: f64) -> Self {
        Self {
            period_ms,
            phi: (-period_ms / tau_ms).exp(),
            sigma,
        }
    }
}

impl Walk {
    pub const SLOTS: usize = 3;

    /// A walk at time `ts`, drawn from its stationary distribution.
    pub fn start(ts: f64, p: &WalkParams, rng: &mut impl Random) -> Self {
        let from = p.sigma * rng.normal();
        let to = ar1_step(from, p.phi, p.sigma, rng.normal());
        Self {
            index: (ts / p.period_ms).floor(),
            from,
            to,
        }
    }

    pub fn from_slots(s: &[f64]) -> Self {
        Self {
            index: s[0],
            from: s[1],
            to: s[2],
        }
    }

    pub fn slots(&self) -> [f64; 3] {
        [self.index, self.from, self.to]
    }

    /// The walk's value at `ts`, moving its anchors forward when `ts` is in
    /// a later period (one draw for the next period, two after a gap).
    /// Earlier times read the current period's start.
    pub fn value(&mut self, ts: f64, p: &WalkParams, rng: &mut impl Random) -> f64 {
        let position = ts / p.period_ms;
        let index = position.floor();
        let ahead = index - self.index;
        if ahead >= 1.0 {
            self.from = if ahead == 1.0 {
                self.to
            } else {
                ar1_steps(self.to, p.phi, p.sigma, ahead - 1.0, rng.normal())
            };
            self.to = ar1_step(self.from, p.phi, p.sigma, rng.normal());
            self.index = index;
        }
        let t = smoothstep(position - self.index);
        self.from + (self.to - self.from) * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DAY_MS;
    use crate::testing::*;

    #[test]
    fn walk_is_deterministic_continuous_and_bounded() {
        let p = WalkParams {
            period_ms: DAY_MS,
            phi: 0.7,
            sigma: 3.0,
        };
        let mut r = rng(11);
        let mut w = Walk::start(0.0, &p, &mut r);
        let mut daily = Vec::new();
        let mut prev = w.value(0.0, &p, &mut r);
        let step = 600_000.0; // 10 minutes
        for i in 1..(2000 * 144) {
            let ts = i as f64 * step;
            let v = w.value(ts, &p, &mut r);
            // Smooth: a 10-minute step never moves more than a small part
            // of a day's change.
            assert!((v - prev).abs() < 1.0, "jump {prev} -> {v}");
            prev = v;
            if i % 144 == 0 {
                daily.push(v);
            }
        }
        assert!((std_dev(&daily) - 3.0).abs() < 0.4, "{}", std_dev(&daily));
        assert!((lag1(&daily) - 0.7).abs() < 0.06, "{}", lag1(&daily));

        // Same seed, same times: same values.
        let mut a = rng(5);
        let mut b = rng(5);
        let mut wa = Walk::start(0.0, &p, &mut a);
        let mut wb = Walk::start(0.0, &p, &mut b);
        for ts in [1e6, 9e7, 5e9, 5.1e9] {
            assert_eq!(wa.value(ts, &p, &mut a), wb.value(ts, &p, &mut b));
        }
    }
}
