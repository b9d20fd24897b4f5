//! Firmware update: `update_firmware {"version": "1.2.3"}` answers
//! `received`, then progress acks (`received` with `{"progress": N}`),
//! then `completed` with `{"version"}` — or `failed` with an error at the
//! configured rate, drawn from the device's seeded random stream (the same
//! seed fails the same updates). On success the device state key
//! `"firmware_version"` holds the new version.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `steps` | 4 | progress acks (0 to 100) |
//! | `step_ms` | 500 | time between two progress acks |
//! | `failure_rate` | 0.1 | probability that an update fails (0 to 1) |
//!
//! Commands other than `update_firmware` are rejected, as is an update
//! without a `version` string.

wit_bindgen::generate!({
    world: "command-handler",
    path: "../../wit",
});

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use exports::iotmock::plugin::command_handler_api::{AckStatus, Command, Guest, Handling, Reply};
use iotmock::plugin::host;
use iotmock::plugin::types::PluginError;
use serde_json::{Value, json};

struct Plugin;
export!(Plugin);

fn number(v: &Value, key: &str, default: f64) -> Result<f64, PluginError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| PluginError::InvalidConfig(format!("{key} must be a number"))),
    }
}

fn reply(delay_ms: u32, status: AckStatus, result: Value) -> Reply {
    Reply {
        delay_ms,
        status,
        result: (!result.is_null()).then(|| result.to_string()),
    }
}

impl Guest for Plugin {
    fn handle(config: String, device: u32, command: Command) -> Result<Handling, PluginError> {
        let config: Value = serde_json::from_str(&config)
            .map_err(|e| PluginError::InvalidConfig(format!("config is not JSON: {e}")))?;
        let steps = number(&config, "steps", 4.0)?;
        let step_ms = number(&config, "step_ms", 500.0)?;
        let failure_rate = number(&config, "failure_rate", 0.1)?;
        if !(0.0..=100.0).contains(&steps) {
            return Err(PluginError::InvalidConfig(
                "steps must be 0 to 100".to_string(),
            ));
        }
        if !(0.0..=3_600_000.0).contains(&step_ms) {
            return Err(PluginError::InvalidConfig(
                "step_ms must be 0 to 3600000".to_string(),
            ));
        }
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(PluginError::InvalidConfig(
                "failure_rate must be 0 to 1".to_string(),
            ));
        }
        let (steps, step_ms) = (steps as u32, step_ms as u32);
        let rejected = |message: String| Handling {
            replies: Vec::from([reply(0, AckStatus::Rejected, json!({ "error": message }))]),
            offline_ms: None,
        };
        if command.name != "update_firmware" {
            return Ok(rejected(format!(
                "unknown command {:?}; this device knows update_firmware",
                command.name
            )));
        }
        let params: Value = serde_json::from_str(&command.params).unwrap_or(Value::Null);
        let Some(version) = params.get("version").and_then(Value::as_str) else {
            return Ok(rejected("params.version must be a string".to_string()));
        };
        let mut replies = Vec::from([reply(0, AckStatus::Received, Value::Null)]);
        for k in 1..=steps {
            replies.push(reply(
                step_ms,
                AckStatus::Received,
                json!({ "progress": k * 100 / steps.max(1) }),
            ));
        }
        // One draw per attempt, whatever the outcome, so the stream stays
        // aligned across runs.
        let fails = host::random_f64(device) < failure_rate;
        if fails {
            replies.push(reply(
                step_ms,
                AckStatus::Failed,
                json!({ "error": "image verification failed", "version": version }),
            ));
        } else {
            host::set_state(
                device,
                "firmware_version",
                &Value::from(version).to_string(),
            );
            replies.push(reply(
                step_ms,
                AckStatus::Completed,
                json!({ "version": version }),
            ));
        }
        Ok(Handling {
            replies,
            offline_ms: None,
        })
    }
}
