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
//! State: the last kept value per device and sensor (JSON), so the
//! deadband holds across windows.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../wit",
});

use std::collections::BTreeMap;

use exports::iotmock::plugin::edge_rule_api::{Action, EdgeReading, Guest, Outcome, Window};
use iotmock::plugin::types::PluginError;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    sensor: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    deadband: f64,
}

#[derive(Deserialize, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Inside,
    Outside,
}

fn parse(config: &str) -> Result<Config, PluginError> {
    let config: Config = if config.trim().is_empty() {
        Config::default()
    } else {
        serde_json::from_str(config)
            .map_err(|e| PluginError::InvalidConfig(format!("edge-threshold config: {e}")))?
    };
    if let (Some(min), Some(max)) = (config.min, config.max)
        && min > max
    {
        return Err(PluginError::InvalidConfig(format!(
            "edge-threshold config: min ({min}) is above max ({max})"
        )));
    }
    if config.deadband.is_nan() || config.deadband < 0.0 {
        return Err(PluginError::InvalidConfig(
            "edge-threshold config: deadband must be 0 or more".into(),
        ));
    }
    Ok(config)
}

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn process(
        config: String,
        state: Vec<u8>,
        _window: Window,
        readings: Vec<EdgeReading>,
    ) -> Result<Outcome, PluginError> {
        let config = parse(&config)?;
        let mut last: BTreeMap<String, f64> = serde_json::from_slice(&state).unwrap_or_default();
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
        let state = if last.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(&last).unwrap_or_default()
        };
        Ok(Outcome { actions, state })
    }
}
