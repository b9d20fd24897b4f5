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

use std::collections::BTreeMap;

use iotmock_sdk::Device;
use iotmock_sdk::edge::{Action, Aggregate, EdgeRule, Reading, Window};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    sensors: Option<Vec<String>>,
    per_device: bool,
    forward: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sensors: None,
            per_device: true,
            forward: false,
        }
    }
}

struct Stats {
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
}

struct Aggregator(Config);

iotmock_sdk::export_edge_rule!(Aggregator);

impl EdgeRule for Aggregator {
    type Config = Config;
    type State = ();

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self(config))
    }

    fn process(
        &self,
        _node: &Device,
        _state: &mut (),
        window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let config = &self.0;
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
        Ok(actions)
    }
}
