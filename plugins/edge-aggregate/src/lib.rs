//! Edge rule: min, max, mean and count of each window's readings, per
//! device and sensor (or per sensor across the node's devices).
//!
//! Aggregated readings are consumed (not forwarded) unless `forward` is
//! set; readings of sensors not in `sensors` pass through untouched.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `sensors` | every sensor | aggregate only these sensors |
//! | `per_device` | true | false: one aggregate per sensor over all the node's devices (`device` is null) |
//! | `forward` | false | also forward the aggregated readings to the next stage |
//!
//! Aggregates come out in (device, sensor) order. A window without
//! readings of a sensor produces no aggregate for it. Stateless.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../wit",
});

use std::collections::BTreeMap;

use exports::iotmock::plugin::edge_rule_api::{
    Action, Aggregate, EdgeReading, Guest, Outcome, Window,
};
use iotmock::plugin::types::PluginError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    sensors: Option<Vec<String>>,
    #[serde(default = "yes")]
    per_device: bool,
    #[serde(default)]
    forward: bool,
}

fn yes() -> bool {
    true
}

fn parse(config: &str) -> Result<Config, PluginError> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(text)
        .map_err(|e| PluginError::InvalidConfig(format!("edge-aggregate config: {e}")))
}

struct Stats {
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
}

struct Plugin;
export!(Plugin);

impl Guest for Plugin {
    fn process(
        config: String,
        _state: Vec<u8>,
        window: Window,
        readings: Vec<EdgeReading>,
    ) -> Result<Outcome, PluginError> {
        let config = parse(&config)?;
        let mut groups: BTreeMap<(Option<String>, String), Stats> = BTreeMap::new();
        let mut actions = Vec::new();
        for r in readings {
            let wanted = config
                .sensors
                .as_ref()
                .is_none_or(|s| s.contains(&r.sensor));
            if !wanted {
                actions.push(Action::Forward(r));
                continue;
            }
            let device = config.per_device.then(|| r.device.clone());
            let stats = groups.entry((device, r.sensor.clone())).or_insert(Stats {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                sum: 0.0,
                count: 0,
            });
            stats.min = stats.min.min(r.value);
            stats.max = stats.max.max(r.value);
            stats.sum += r.value;
            stats.count += 1;
            if config.forward {
                actions.push(Action::Forward(r));
            }
        }
        for ((device, sensor), s) in groups {
            actions.push(Action::Aggregate(Aggregate {
                device,
                sensor,
                window,
                min: s.min,
                max: s.max,
                mean: s.sum / s.count as f64,
                count: s.count,
            }));
        }
        Ok(Outcome {
            actions,
            state: Vec::new(),
        })
    }
}
