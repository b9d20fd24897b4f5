//! The state vector layout shared by every shipped sensor plugin.
//!
//! ```text
//! index  0      layout tag: identifies the plugin and its layout version
//!        1..=8  anomaly injector (see anomaly::Injector::SLOTS):
//!               1 seed, 2 draws, 3 stuck readings left, 4 stuck value,
//!               5 drift readings left, 6 drift length, 7 drift end offset,
//!               8 dropout readings left
//!        9..    the plugin's own state (documented in each plugin)
//! ```
//!
//! A state that does not match (another length, another tag, a value that
//! is not finite: e.g. what an older version of the plugin returned before
//! a hot reload) is ignored and the device starts afresh. Every value is a
//! finite number, integers stay below 2^53, so the vector survives a JSON
//! round trip exactly.

use crate::Random;
use crate::anomaly::{Anomalies, Injector};

/// Slots the SDK owns at the start of the state vector.
pub const SDK_SLOTS: usize = 1 + Injector::SLOTS;

/// Splits a state vector into the anomaly injector and the plugin's `N`
/// own slots, or `None` when it is not a state this layout wrote.
pub fn restore<const N: usize>(state: &[f64], tag: f64) -> Option<(Injector, [f64; N])> {
    if state.len() != SDK_SLOTS + N || state[0] != tag || !state.iter().all(|v| v.is_finite()) {
        return None;
    }
    let injector = Injector::from_slots(&state[1..SDK_SLOTS]);
    let mut own = [0.0; N];
    own.copy_from_slice(&state[SDK_SLOTS..]);
    Some((injector, own))
}

/// The state vector for the next request.
pub fn save<const N: usize>(tag: f64, injector: &Injector, own: &[f64; N]) -> Vec<f64> {
    let mut state = Vec::with_capacity(SDK_SLOTS + N);
    state.push(tag);
    injector.write_slots(&mut state);
    state.extend(own.iter().map(|v| if v.is_finite() { *v } else { 0.0 }));
    state
}

/// The state for this request: what the host handed back, or a fresh
/// start (the injector's seed is the first draw, then `fresh` builds the
/// plugin's own slots).
pub fn load<const N: usize, R: Random>(
    state: &[f64],
    tag: f64,
    rng: &mut R,
    fresh: impl FnOnce(&mut R) -> [f64; N],
) -> (Injector, [f64; N]) {
    restore(state, tag).unwrap_or_else(|| {
        let injector = Injector::new(rng.next_u64());
        (injector, fresh(rng))
    })
}

/// One finished sample, before it becomes the WIT record.
pub struct Outcome {
    pub value: Option<f64>,
    pub anomaly: Option<&'static str>,
    pub state: Vec<f64>,
}

/// Applies anomalies to the clean reading, rounds what is reported with
/// `round` (the sensor's resolution) and packs the next state.
pub fn finish<const N: usize>(
    tag: f64,
    mut injector: Injector,
    anomalies: &Anomalies,
    own: &[f64; N],
    clean: f64,
    round: impl Fn(f64) -> f64,
) -> Outcome {
    let (value, anomaly) = injector.apply(anomalies, clean);
    Outcome {
        value: value.map(round),
        anomaly,
        state: save(tag, &injector, own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let injector = Injector::new(12345);
        let state = save(7.0, &injector, &[1.0, 2.0]);
        assert_eq!(state.len(), SDK_SLOTS + 2);
        let (back, own) = restore::<2>(&state, 7.0).unwrap();
        assert_eq!(back, injector);
        assert_eq!(own, [1.0, 2.0]);
        assert!(restore::<2>(&state, 8.0).is_none());
        assert!(restore::<3>(&state, 7.0).is_none());
        assert!(restore::<1>(&[0.3], 7.0).is_none());
        assert!(restore::<2>(&[], 7.0).is_none());
    }
}
