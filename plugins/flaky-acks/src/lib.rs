//! A device with an unreliable link back: for every delivery it drops its
//! answer, duplicates it, or answers late, at seeded rates — to test
//! retries, de-duplication and timeouts. Any command name is accepted and
//! completed with `{"attempt": n}` when answered.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `drop_rate` | 0.3 | probability that the device stays silent |
//! | `duplicate_rate` | 0.2 | probability that it sends the `completed` ack twice |
//! | `delay_ms` | 0 | delay before answering |
//! | `jitter_ms` | 0 | extra delay, uniform in 0…jitter_ms |
//!
//! Two draws from the device's seeded stream per delivery.

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

impl Guest for Plugin {
    fn handle(config: String, device: u32, command: Command) -> Result<Handling, PluginError> {
        let config: Value = serde_json::from_str(&config)
            .map_err(|e| PluginError::InvalidConfig(format!("config is not JSON: {e}")))?;
        let drop_rate = number(&config, "drop_rate", 0.3)?;
        let duplicate_rate = number(&config, "duplicate_rate", 0.2)?;
        let delay_ms = number(&config, "delay_ms", 0.0)?.clamp(0.0, 3_600_000.0);
        let jitter_ms = number(&config, "jitter_ms", 0.0)?.clamp(0.0, 3_600_000.0);
        if !(0.0..=1.0).contains(&drop_rate)
            || !(0.0..=1.0).contains(&duplicate_rate)
            || drop_rate + duplicate_rate > 1.0
        {
            return Err(PluginError::InvalidConfig(
                "drop_rate and duplicate_rate must be 0 to 1 and add up to at most 1".to_string(),
            ));
        }
        let fate = host::random_f64(device);
        let jitter = host::random_f64(device) * jitter_ms;
        let delay = (delay_ms + jitter) as u32;
        let done = Reply {
            delay_ms: delay,
            status: AckStatus::Completed,
            result: Some(json!({ "attempt": command.attempt }).to_string()),
        };
        let replies = if fate < drop_rate {
            Vec::new()
        } else if fate < drop_rate + duplicate_rate {
            let mut again = done.clone();
            again.delay_ms = 0;
            Vec::from([done, again])
        } else {
            Vec::from([done])
        };
        Ok(Handling {
            replies,
            offline_ms: None,
        })
    }
}
