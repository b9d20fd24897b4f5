//! The state every shipped sensor plugin keeps for a device: the anomaly
//! injector (see [`Injector`]) and `N` numbers of the plugin's own
//! (documented in each plugin), written with the SDK's [`codec`].
//!
//! A plugin names its layout with [`Sensor::STATE_VERSION`]: the shipped
//! ones use their old layout tags (plugin number × 1000 + layout version),
//! so a device's state never passes from one plugin to another or from one
//! layout to the next; on a mismatch the device starts afresh. Numbers that
//! are not finite are written as 0.
//!
//! [`codec`]: crate::codec
//! [`Sensor::STATE_VERSION`]: crate::sensor::Sensor::STATE_VERSION

use crate::Random;
use crate::anomaly::{Anomalies, Anomaly, Injector};
use crate::codec::{Codec, Decoder, Encoder};

/// The anomaly injector and the plugin's `N` own numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slots<const N: usize> {
    pub injector: Injector,
    pub own: [f64; N],
}

impl<const N: usize> Codec for Slots<N> {
    fn encode(&self, out: &mut Encoder) {
        for &w in self.injector.slots().iter().chain(&self.own) {
            (if w.is_finite() { w } else { 0.0 }).encode(out);
        }
    }

    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        let mut words = [0.0; Injector::SLOTS];
        for w in &mut words {
            *w = f64::decode(input).filter(|v| v.is_finite())?;
        }
        let mut own = [0.0; N];
        for w in &mut own {
            *w = f64::decode(input).filter(|v| v.is_finite())?;
        }
        Some(Self {
            injector: Injector::from_slots(&words),
            own,
        })
    }
}

/// The state for this request: what the host handed back, or a fresh
/// start (the injector's seed is the first draw, then `fresh` builds the
/// plugin's own slots).
pub fn load<const N: usize, R: Random>(
    state: Option<Slots<N>>,
    rng: &mut R,
    fresh: impl FnOnce(&mut R) -> [f64; N],
) -> (Injector, [f64; N]) {
    match state {
        Some(s) => (s.injector, s.own),
        None => {
            let injector = Injector::new(rng.next_u64());
            (injector, fresh(rng))
        }
    }
}

/// One finished sample.
pub struct Outcome<const N: usize> {
    pub value: Option<f64>,
    pub anomaly: Option<Anomaly>,
    pub state: Slots<N>,
}

/// Applies anomalies to the clean reading, rounds what is reported with
/// `round` (the sensor's resolution) and packs the next state.
pub fn finish<const N: usize>(
    mut injector: Injector,
    anomalies: &Anomalies,
    own: &[f64; N],
    clean: f64,
    round: impl Fn(f64) -> f64,
) -> Outcome<N> {
    let (value, anomaly) = injector.apply(anomalies, clean);
    Outcome {
        value: value.map(round),
        anomaly,
        state: Slots {
            injector,
            own: *own,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{load, save};

    #[test]
    fn round_trip_and_mismatch() {
        let slots = Slots {
            injector: Injector::new(12345),
            own: [1.0, f64::NAN],
        };
        let bytes = save(7, &slots);
        let back = load::<Slots<2>>(7, &bytes).unwrap();
        assert_eq!(back.injector, slots.injector);
        assert_eq!(back.own, [1.0, 0.0]);
        assert!(load::<Slots<2>>(8, &bytes).is_none());
        assert!(load::<Slots<3>>(7, &bytes).is_none());
        assert!(load::<Slots<1>>(7, &bytes).is_none());
    }
}
