//! Edge rule: local control. When a reading of `sensor` rises above
//! `above`, it commands the device (by default the one that sent the
//! reading) with `on`; once the reading falls below `below`, with `off`.
//! The gap between the two thresholds is the hysteresis: a value wobbling
//! around one threshold sends one command, not one per reading.
//!
//! Config (JSON):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `sensor` | `"temperature"` | the sensor watched |
//! | `above` | 30.0 | switch on when a reading is above this |
//! | `below` | `above` − 2 | switch off when a reading is below this (must not exceed `above`) |
//! | `on` | `{"name":"fan_on","params":{}}` | the command sent when switching on |
//! | `off` | `{"name":"fan_off","params":{}}` | the command sent when switching off; `null`: none |
//! | `target` | the reading's device | send every command to this device instead |
//! | `forward` | true | forward every reading to the next stage |
//!
//! Each device starts "off". State: JSON `{"device": true|false}` (on or off).

use std::collections::BTreeMap;

use iotmock_sdk::Device;
use iotmock_sdk::edge::{Action, DeviceCommand, EdgeRule, Reading, Window};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    sensor: String,
    above: f64,
    below: Option<f64>,
    on: Command,
    off: Option<Command>,
    target: Option<String>,
    forward: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sensor: "temperature".into(),
            above: 30.0,
            below: None,
            on: Command {
                name: "fan_on".into(),
                params: None,
            },
            off: Some(Command {
                name: "fan_off".into(),
                params: None,
            }),
            target: None,
            forward: true,
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Command {
    name: String,
    #[serde(default)]
    params: Option<serde_json::Value>,
}

fn command(device: &str, c: &Command) -> Action {
    let params = c
        .params
        .as_ref()
        .map_or_else(|| "{}".to_string(), |p| p.to_string());
    Action::Command(DeviceCommand {
        device: device.to_string(),
        name: c.name.clone(),
        params,
    })
}

struct LocalControl {
    config: Config,
    below: f64,
}

iotmock_sdk::export_edge_rule!(LocalControl);

impl EdgeRule for LocalControl {
    type Config = Config;
    /// Whether each target device was last switched on.
    type State = BTreeMap<String, bool>;

    fn new(config: Config) -> Result<Self, String> {
        let below = config.below.unwrap_or(config.above - 2.0);
        if below > config.above {
            return Err(format!(
                "below ({below}) must not exceed above ({})",
                config.above
            ));
        }
        if config.on.name.is_empty() || config.off.as_ref().is_some_and(|c| c.name.is_empty()) {
            return Err("a command needs a name".into());
        }
        Ok(Self { config, below })
    }

    fn process(
        &self,
        _node: &Device,
        on: &mut Self::State,
        _window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let config = &self.config;
        let mut actions = Vec::with_capacity(readings.len());
        for r in readings {
            if r.sensor == config.sensor {
                let target = config.target.as_deref().unwrap_or(&r.device).to_string();
                let is_on = on.get(&target).copied().unwrap_or(false);
                if !is_on && r.value > config.above {
                    actions.push(command(&target, &config.on));
                    on.insert(target, true);
                } else if is_on && r.value < self.below {
                    if let Some(off) = &config.off {
                        actions.push(command(&target, off));
                    }
                    on.insert(target, false);
                }
            }
            if config.forward {
                actions.push(Action::Forward(r));
            }
        }
        Ok(actions)
    }
}
