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

use iotmock_sdk::Device;
use iotmock_sdk::command::{AckStatus, Command, CommandHandler, Handling, Reply};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    steps: f64,
    step_ms: f64,
    failure_rate: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            steps: 4.0,
            step_ms: 500.0,
            failure_rate: 0.1,
        }
    }
}

struct Firmware {
    steps: u32,
    step_ms: u32,
    failure_rate: f64,
}

iotmock_sdk::export_command_handler!(Firmware);

impl CommandHandler for Firmware {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(0.0..=100.0).contains(&c.steps) {
            return Err("steps must be 0 to 100".to_string());
        }
        if !(0.0..=3_600_000.0).contains(&c.step_ms) {
            return Err("step_ms must be 0 to 3600000".to_string());
        }
        if !(0.0..=1.0).contains(&c.failure_rate) {
            return Err("failure_rate must be 0 to 1".to_string());
        }
        Ok(Self {
            steps: c.steps as u32,
            step_ms: c.step_ms as u32,
            failure_rate: c.failure_rate,
        })
    }

    fn handle(&self, device: &Device, command: Command) -> Result<Handling, String> {
        let (steps, step_ms) = (self.steps, self.step_ms);
        if command.name != "update_firmware" {
            return Ok(Handling::reply(Reply::rejected(format!(
                "unknown command {:?}; this device knows update_firmware",
                command.name
            ))));
        }
        let params = command.params();
        let Some(version) = params.get("version").and_then(Value::as_str) else {
            return Ok(Handling::reply(Reply::rejected(
                "params.version must be a string",
            )));
        };
        let mut replies = Vec::from([Reply::received()]);
        for k in 1..=steps {
            let progress = json!({ "progress": k * 100 / steps.max(1) });
            replies.push(Reply::new(AckStatus::Received, Some(progress)).after_ms(step_ms));
        }
        // One draw per attempt, whatever the outcome, so the stream stays
        // aligned across runs.
        let fails = device.random_f64() < self.failure_rate;
        if fails {
            let error = json!({ "error": "image verification failed", "version": version });
            replies.push(Reply::new(AckStatus::Failed, Some(error)).after_ms(step_ms));
        } else {
            device.set_state("firmware_version", &Value::from(version).to_string());
            replies.push(Reply::completed(json!({ "version": version })).after_ms(step_ms));
        }
        Ok(Handling::replies(replies))
    }
}
