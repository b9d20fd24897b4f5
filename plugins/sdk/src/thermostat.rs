//! A thermostat's pull on a free-running temperature.
//!
//! A command handler sets the device-state key `"target"` (°C); the
//! temperature sensor then moves its reading towards it with a first-order
//! lag: the regulated temperature is the free-running model plus an offset
//! that relaxes towards `target − model` with time constant `tau`, and back
//! towards 0 when the target is removed. The relaxation is exact in elapsed
//! time (`e^(−Δt/τ)`), so it does not depend on how often the sensor
//! reports, and it draws no random numbers: the same times and the same
//! target give the same values. Without a target the offset stays exactly
//! 0 and the model's readings are unchanged.

/// The regulator's state (2 slots): the current offset and when it was
/// last moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regulator {
    pub offset: f64,
    pub last_ts: f64,
}

impl Regulator {
    pub const SLOTS: usize = 2;

    /// A regulator with no pull yet, at time `ts`.
    pub fn start(ts: f64) -> Self {
        Self {
            offset: 0.0,
            last_ts: ts,
        }
    }

    pub fn from_slots(s: &[f64]) -> Self {
        Self {
            offset: s[0],
            last_ts: s[1],
        }
    }

    pub fn slots(&self) -> [f64; 2] {
        [self.offset, self.last_ts]
    }

    /// Moves the offset to time `ts` and returns it. `model` is the
    /// free-running temperature without noise at `ts`, `target` the
    /// thermostat's setting if there is one, `tau_ms` the time constant.
    /// An earlier `ts` leaves the offset as it is.
    pub fn offset_at(&mut self, ts: f64, model: f64, target: Option<f64>, tau_ms: f64) -> f64 {
        let goal = target.map_or(0.0, |t| t - model);
        let dt = ts - self.last_ts;
        if dt > 0.0 {
            let keep = (-dt / tau_ms).exp();
            self.offset = goal + (self.offset - goal) * keep;
            self.last_ts = ts;
        }
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = 600_000.0;

    #[test]
    fn approaches_the_target_with_a_first_order_lag() {
        let mut r = Regulator::start(0.0);
        let model = 21.0;
        // One time constant closes 1 - 1/e of the gap.
        let at_tau = model + r.offset_at(TAU, model, Some(25.0), TAU);
        let expected = 25.0 - 4.0 * (-1.0f64).exp();
        assert!((at_tau - expected).abs() < 1e-9, "{at_tau} vs {expected}");
        // After five more it is within 0.03 °C.
        let later = model + r.offset_at(6.0 * TAU, model, Some(25.0), TAU);
        assert!((later - 25.0).abs() < 0.03, "{later}");
        // Without a target it relaxes back to the model.
        let back = model + r.offset_at(16.0 * TAU, model, None, TAU);
        assert!((back - model).abs() < 1e-3, "{back}");
    }

    #[test]
    fn the_lag_depends_on_elapsed_time_not_on_the_reporting_rate() {
        let mut fine = Regulator::start(0.0);
        let mut coarse = Regulator::start(0.0);
        for k in 1..=60 {
            fine.offset_at(k as f64 * 10_000.0, 20.0, Some(22.5), TAU);
        }
        coarse.offset_at(600_000.0, 20.0, Some(22.5), TAU);
        assert!((fine.offset - coarse.offset).abs() < 1e-9);
    }

    #[test]
    fn no_target_leaves_the_model_untouched_and_runs_repeat() {
        let mut r = Regulator::start(0.0);
        for k in 1..100 {
            assert_eq!(
                r.offset_at(k as f64 * 1000.0, 19.0 + k as f64, None, TAU),
                0.0
            );
        }
        let run = || {
            let mut r = Regulator::start(0.0);
            (1..50)
                .map(|k| r.offset_at(k as f64 * 60_000.0, 21.0, Some(18.0), TAU))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        // Earlier times do not move it.
        let mut r = Regulator::start(1000.0);
        r.offset_at(500.0, 21.0, Some(30.0), TAU);
        assert_eq!(r.offset, 0.0);
    }
}
