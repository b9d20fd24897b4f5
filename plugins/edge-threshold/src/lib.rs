//! Edge rule: a range filter and a deadband, per device and sensor.
//!
//! A reading of a filtered sensor is forwarded when it passes the range
//! check *and* the deadband check; otherwise it is dropped. Readings of
//! other sensors pass through untouched.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `sensor` | every sensor | only readings of this sensor are filtered |
//! | `min` | none | lower bound of the range (inclusive) |
//! | `max` | none | upper bound of the range (inclusive) |
//! | `mode` | `"inside"` | `"inside"`: keep readings within [min, max]; `"outside"`: keep only readings outside it (exceedances) |
//! | `deadband` | 0 | keep a reading only when it differs from the last one kept for its device and sensor by at least this much (the first one is always kept) |
//!
//! State: the last kept value per device and sensor, so the
//! deadband holds across windows.

use std::collections::BTreeMap;

use iotmock_sdk::Device;
use iotmock_sdk::edge::{Action, EdgeRule, Reading, Window};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    sensor: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    mode: Mode,
    deadband: f64,
}

#[derive(Deserialize, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Inside,
    Outside,
}

struct Threshold(Config);

iotmock_sdk::export_edge_rule!(Threshold);

impl EdgeRule for Threshold {
    type Config = Config;
    /// The last kept value per "device/sensor".
    type State = BTreeMap<String, f64>;

    fn new(config: Config) -> Result<Self, String> {
        if let (Some(min), Some(max)) = (config.min, config.max)
            && min > max
        {
            return Err(format!("min ({min}) is above max ({max})"));
        }
        if config.deadband.is_nan() || config.deadband < 0.0 {
            return Err("deadband must be 0 or more".into());
        }
        Ok(Self(config))
    }

    fn process(
        &self,
        _node: &Device,
        last: &mut BTreeMap<String, f64>,
        _window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let config = &self.0;
        let mut actions = Vec::with_capacity(readings.len());
        for r in readings {
            if config.sensor.as_deref().is_some_and(|s| s != r.sensor) {
                actions.push(Action::Forward(r));
                continue;
            }
            let inside =
                config.min.is_none_or(|m| r.value >= m) && config.max.is_none_or(|m| r.value <= m);
            let in_range = match config.mode {
                Mode::Inside => inside,
                Mode::Outside => !inside,
            };
            if !in_range {
                continue;
            }
            let key = format!("{}/{}", r.device, r.sensor);
            let moved = last
                .get(&key)
                .is_none_or(|prev| (r.value - prev).abs() >= config.deadband);
            if moved {
                if config.deadband > 0.0 {
                    last.insert(key, r.value);
                }
                actions.push(Action::Forward(r));
            }
        }
        Ok(actions)
    }
}
