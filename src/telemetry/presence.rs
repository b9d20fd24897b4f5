//! Whether a device is reachable at a given simulated time. Telemetry asks
//! it for every reading (offline readings are buffered); the fleet sets it.
//! A flaky device's spells are drawn from its own seeded stream, so they
//! fall at the same simulated times in every run.

use std::sync::Mutex;

use crate::random::DeviceRng;

#[derive(Debug)]
pub(crate) struct Presence(Mutex<Mode>);

#[derive(Debug)]
enum Mode {
    Online,
    Offline,
    Flaky(Flaky),
}

#[derive(Debug)]
struct Flaky {
    rng: DeviceRng,
    mean_online_ms: f64,
    mean_offline_ms: f64,
    online: bool,
    /// When the current spell ends.
    next_flip: i64,
}

impl Flaky {
    fn spell(&mut self, online: bool) -> i64 {
        let mean = if online {
            self.mean_online_ms
        } else {
            self.mean_offline_ms
        };
        // Exponential spell lengths, at least 1 ms.
        ((-(1.0 - self.rng.next_f64()).ln()) * mean).max(1.0) as i64
    }

    fn advance_to(&mut self, t: i64) {
        while self.next_flip <= t {
            self.online = !self.online;
            let spell = self.spell(self.online);
            self.next_flip += spell;
        }
    }
}

impl Presence {
    pub(crate) fn new(online: bool) -> Self {
        Self(Mutex::new(if online {
            Mode::Online
        } else {
            Mode::Offline
        }))
    }

    pub(crate) fn set(&self, online: bool) {
        *self.0.lock().unwrap() = if online { Mode::Online } else { Mode::Offline };
    }

    /// Alternates online and offline spells from `now`, starting online.
    pub(crate) fn set_flaky(
        &self,
        rng: DeviceRng,
        now: i64,
        mean_online_ms: u64,
        mean_offline_ms: u64,
    ) {
        let mut flaky = Flaky {
            rng,
            mean_online_ms: mean_online_ms.max(1) as f64,
            mean_offline_ms: mean_offline_ms.max(1) as f64,
            online: true,
            next_flip: now,
        };
        flaky.next_flip = now + flaky.spell(true);
        *self.0.lock().unwrap() = Mode::Flaky(flaky);
    }

    /// Whether the device is online at simulated time `t` (for a flaky
    /// device, `t` should not go backwards).
    pub(crate) fn online_at(&self, t: i64) -> bool {
        match &mut *self.0.lock().unwrap() {
            Mode::Online => true,
            Mode::Offline => false,
            Mode::Flaky(f) => {
                f.advance_to(t);
                f.online
            }
        }
    }

    /// For a flaky device, when its current spell ends.
    pub(crate) fn next_flip(&self) -> Option<i64> {
        match &*self.0.lock().unwrap() {
            Mode::Flaky(f) => Some(f.next_flip),
            _ => None,
        }
    }

    pub(crate) fn mode(&self) -> &'static str {
        match &*self.0.lock().unwrap() {
            Mode::Online => "online",
            Mode::Offline => "offline",
            Mode::Flaky(_) => "flaky",
        }
    }

    pub(crate) fn is_flaky(&self) -> bool {
        matches!(&*self.0.lock().unwrap(), Mode::Flaky(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_spells_are_seeded() {
        let spells = |seed| {
            let p = Presence::new(true);
            p.set_flaky(DeviceRng::derive(seed, "d", "connectivity"), 0, 1000, 500);
            (0..200).map(|i| p.online_at(i * 100)).collect::<Vec<_>>()
        };
        let a = spells(1);
        assert_eq!(a, spells(1));
        assert_ne!(a, spells(2));
        assert!(a.iter().any(|o| *o) && a.iter().any(|o| !*o));
    }
}
