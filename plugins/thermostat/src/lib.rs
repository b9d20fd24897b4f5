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

use iotmock_sdk::Device;
use iotmock_sdk::command::{AckStatus, Command, CommandHandler, Handling, Reply};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    min: f64,
    max: f64,
    delay_ms: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min: 5.0,
            max: 35.0,
            delay_ms: 50.0,
        }
    }
}

struct Thermostat {
    min: f64,
    max: f64,
    delay_ms: u32,
}

iotmock_sdk::export_command_handler!(Thermostat);

impl CommandHandler for Thermostat {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        Ok(Self {
            min: c.min,
            max: c.max,
            delay_ms: c.delay_ms.clamp(0.0, 3_600_000.0) as u32,
        })
    }

    fn handle(&self, device: &Device, command: Command) -> Result<Handling, String> {
        let (min, max) = (self.min, self.max);
        match command.name.as_str() {
            "set_target" => {
                let Some(target) = command.params().get("target").and_then(Value::as_f64) else {
                    return Ok(Handling::reply(Reply::rejected(
                        "params.target must be a number (°C)",
                    )));
                };
                if !(min..=max).contains(&target) {
                    return Ok(Handling::reply(Reply::rejected(format!(
                        "target {target} °C is outside {min}…{max} °C"
                    ))));
                }
                device.set_state("target", &target.to_string());
                Ok(Handling::replies([
                    Reply::new(AckStatus::Received, Some(Value::Null)),
                    Reply::completed(json!({ "target": target })).after_ms(self.delay_ms),
                ]))
            }
            "get_state" => {
                let read = |key: &str| {
                    device
                        .state(key)
                        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                        .unwrap_or(Value::Null)
                };
                let state = json!({ "target": read("target"), "temperature": read("temperature") });
                Ok(Handling::reply(Reply::completed(state)))
            }
            other => Ok(Handling::reply(Reply::rejected(format!(
                "unknown command {other:?}; a thermostat knows set_target and get_state"
            )))),
        }
    }
}
