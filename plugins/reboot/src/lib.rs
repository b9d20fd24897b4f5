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

use iotmock_sdk::Device;
use iotmock_sdk::command::{Command, CommandHandler, Handling, Reply};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    offline_ms: f64,
    delay_ms: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            offline_ms: 5_000.0,
            delay_ms: 100.0,
        }
    }
}

struct Reboot {
    offline_ms: f64,
    delay_ms: u32,
}

iotmock_sdk::export_command_handler!(Reboot);

impl CommandHandler for Reboot {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        Ok(Self {
            offline_ms: c.offline_ms,
            delay_ms: c.delay_ms.clamp(0.0, 3_600_000.0) as u32,
        })
    }

    fn handle(&self, device: &Device, command: Command) -> Result<Handling, String> {
        if command.name != "reboot" {
            return Ok(Handling::reply(Reply::rejected(format!(
                "unknown command {:?}; this device knows reboot",
                command.name
            ))));
        }
        let offline_ms = command
            .params()
            .get("offline_ms")
            .and_then(Value::as_f64)
            .unwrap_or(self.offline_ms)
            .clamp(0.0, 86_400_000.0) as u32;
        let boots = device
            .state("boot_count")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        device.set_state("boot_count", &boots.to_string());
        Ok(Handling::replies([
            Reply::received(),
            Reply::completed(
                json!({ "rebooting": true, "offline_ms": offline_ms, "boot_count": boots }),
            )
            .after_ms(self.delay_ms),
        ])
        .then_offline_ms(offline_ms))
    }
}
