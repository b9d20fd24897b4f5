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

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../wit",
});

use std::collections::BTreeMap;

use exports::iotmock::plugin::edge_rule_api::{
    Action, DeviceCommand, EdgeReading, Guest, Outcome, Window,
};
use iotmock::plugin::types::PluginError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_sensor")]
    sensor: String,
    #[serde(default = "default_above")]
    above: f64,
    below: Option<f64>,
    #[serde(default = "default_on")]
    on: Command,
    #[serde(default = "default_off")]
    off: Option<Command>,
    target: Option<String>,
    #[serde(default = "yes")]
    forward: bool,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Command {
    name: String,
    #[serde(default)]
    params: Option<serde_json::Value>,
}

fn default_sensor() -> String {
    "temperature".into()
}

fn default_above() -> f64 {
    30.0
}

fn default_on() -> Command {
    Command {
        name: "fan_on".into(),
        params: None,
    }
}

fn default_off() -> Option<Command> {
    Some(Command {
        name: "fan_off".into(),
        params: None,
    })
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
    let config: Config = serde_json::from_str(text)
        .map_err(|e| PluginError::InvalidConfig(format!("edge-local-control config: {e}")))?;
    let below = config.below.unwrap_or(config.above - 2.0);
    if below > config.above {
        return Err(PluginError::InvalidConfig(format!(
            "edge-local-control config: below ({below}) must not exceed above ({})",
            config.above
        )));
    }
    if config.on.name.is_empty() || config.off.as_ref().is_some_and(|c| c.name.is_empty()) {
        return Err(PluginError::InvalidConfig(
            "edge-local-control config: a command needs a name".into(),
        ));
    }
    Ok(config)
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
        let below = config.below.unwrap_or(config.above - 2.0);
        let mut on: BTreeMap<String, bool> = serde_json::from_slice(&state).unwrap_or_default();
        let mut actions = Vec::with_capacity(readings.len());
        for r in readings {
            if r.sensor == config.sensor {
                let target = config.target.as_deref().unwrap_or(&r.device).to_string();
                let is_on = on.get(&target).copied().unwrap_or(false);
                if !is_on && r.value > config.above {
                    actions.push(command(&target, &config.on));
                    on.insert(target, true);
                } else if is_on && r.value < below {
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
        Ok(Outcome {
            actions,
            state: serde_json::to_vec(&on).unwrap_or_default(),
        })
    }
}
