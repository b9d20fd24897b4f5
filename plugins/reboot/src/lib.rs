//! Reboot: answers `received`, then `completed`, then the device goes
//! offline for `offline_ms` (telemetry stops and is buffered; commands
//! wait in its queue) and comes back online. Counts boots in the device
//! state key `"boot_count"`.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `offline_ms` | 5000 | how long the device is down (a command's `params.offline_ms` overrides it) |
//! | `delay_ms` | 100 | time from `received` to `completed` |
//!
//! Commands other than `reboot` are rejected.

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

fn number(v: &Value, key: &str, default: f64) -> Result<f64, PluginError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| PluginError::InvalidConfig(format!("{key} must be a number"))),
    }
}

impl Guest for Plugin {
    fn handle(config: String, device: u32, command: Command) -> Result<Handling, PluginError> {
        let config: Value = serde_json::from_str(&config)
            .map_err(|e| PluginError::InvalidConfig(format!("config is not JSON: {e}")))?;
        let default_offline = number(&config, "offline_ms", 5_000.0)?;
        let delay_ms = number(&config, "delay_ms", 100.0)?.clamp(0.0, 3_600_000.0) as u32;
        if command.name != "reboot" {
            return Ok(Handling {
                replies: vec![Reply {
                    delay_ms: 0,
                    status: AckStatus::Rejected,
                    result: Some(
                        json!({ "error": format!("unknown command {:?}; this device knows reboot", command.name) })
                            .to_string(),
                    ),
                }],
                offline_ms: None,
            });
        }
        let params: Value = serde_json::from_str(&command.params).unwrap_or(Value::Null);
        let offline_ms = params
            .get("offline_ms")
            .and_then(Value::as_f64)
            .unwrap_or(default_offline)
            .clamp(0.0, 86_400_000.0) as u32;
        let boots = host::get_state(device, "boot_count")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        host::set_state(device, "boot_count", &boots.to_string());
        Ok(Handling {
            replies: vec![
                Reply {
                    delay_ms: 0,
                    status: AckStatus::Received,
                    result: None,
                },
                Reply {
                    delay_ms,
                    status: AckStatus::Completed,
                    result: Some(
                        json!({ "rebooting": true, "offline_ms": offline_ms, "boot_count": boots })
                            .to_string(),
                    ),
                },
            ],
            offline_ms: Some(offline_ms),
        })
    }
}
