//! A thermostat. `set_target {"target": 21.5}` writes the device state key
//! `"target"` (a JSON number, °C), which the `temperature` sensor of the
//! same device follows; `get_state` answers the target and the last
//! temperature reading.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `min` | 5.0 | lowest target accepted, °C |
//! | `max` | 35.0 | highest target accepted, °C |
//! | `delay_ms` | 50 | time from the `received` ack to the `completed` one |
//!
//! Answers: `received` at once, then `completed` with `{"target": t}`;
//! `rejected` with `{"error": ...}` for a target that is missing, not a
//! number or out of range, and for unknown commands.

wit_bindgen::generate!({
    world: "command-handler",
    path: "../../wit",
});

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use exports::iotmock::plugin::command_handler_api::{AckStatus, Command, Guest, Handling, Reply};
use iotmock::plugin::host;
use iotmock::plugin::types::PluginError;
use serde_json::{Value, json};

struct Plugin;
export!(Plugin);

fn number(config: &Value, key: &str, default: f64) -> Result<f64, PluginError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| PluginError::InvalidConfig(format!("{key} must be a number"))),
    }
}

fn reply(delay_ms: u32, status: AckStatus, result: Value) -> Reply {
    Reply {
        delay_ms,
        status,
        result: Some(result.to_string()),
    }
}

fn reject(message: String) -> Handling {
    Handling {
        replies: vec![reply(0, AckStatus::Rejected, json!({ "error": message }))],
        offline_ms: None,
    }
}

impl Guest for Plugin {
    fn handle(config: String, device: u32, command: Command) -> Result<Handling, PluginError> {
        let config: Value = serde_json::from_str(&config)
            .map_err(|e| PluginError::InvalidConfig(format!("config is not JSON: {e}")))?;
        let min = number(&config, "min", 5.0)?;
        let max = number(&config, "max", 35.0)?;
        let delay_ms = number(&config, "delay_ms", 50.0)?.clamp(0.0, 3_600_000.0) as u32;
        let params: Value = serde_json::from_str(&command.params).unwrap_or(Value::Null);
        match command.name.as_str() {
            "set_target" => {
                let Some(target) = params.get("target").and_then(Value::as_f64) else {
                    return Ok(reject("params.target must be a number (°C)".to_string()));
                };
                if !(min..=max).contains(&target) {
                    return Ok(reject(format!(
                        "target {target} °C is outside {min}…{max} °C"
                    )));
                }
                host::set_state(device, "target", &target.to_string());
                Ok(Handling {
                    replies: vec![
                        reply(0, AckStatus::Received, Value::Null),
                        reply(delay_ms, AckStatus::Completed, json!({ "target": target })),
                    ],
                    offline_ms: None,
                })
            }
            "get_state" => {
                let read = |key: &str| {
                    host::get_state(device, key)
                        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                        .unwrap_or(Value::Null)
                };
                let state = json!({ "target": read("target"), "temperature": read("temperature") });
                Ok(Handling {
                    replies: vec![reply(0, AckStatus::Completed, state)],
                    offline_ms: None,
                })
            }
            other => Ok(reject(format!(
                "unknown command {other:?}; a thermostat knows set_target and get_state"
            ))),
        }
    }
}
