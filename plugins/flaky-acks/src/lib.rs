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

use iotmock_sdk::Device;
use iotmock_sdk::command::{Command, CommandHandler, Handling, Reply};
use serde_json::json;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    drop_rate: f64,
    duplicate_rate: f64,
    delay_ms: f64,
    jitter_ms: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            drop_rate: 0.3,
            duplicate_rate: 0.2,
            delay_ms: 0.0,
            jitter_ms: 0.0,
        }
    }
}

struct FlakyAcks {
    drop_rate: f64,
    duplicate_rate: f64,
    delay_ms: f64,
    jitter_ms: f64,
}

iotmock_sdk::export_command_handler!(FlakyAcks);

impl CommandHandler for FlakyAcks {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&c.drop_rate)
            || !(0.0..=1.0).contains(&c.duplicate_rate)
            || c.drop_rate + c.duplicate_rate > 1.0
        {
            return Err(
                "drop_rate and duplicate_rate must be 0 to 1 and add up to at most 1".to_string(),
            );
        }
        Ok(Self {
            drop_rate: c.drop_rate,
            duplicate_rate: c.duplicate_rate,
            delay_ms: c.delay_ms.clamp(0.0, 3_600_000.0),
            jitter_ms: c.jitter_ms.clamp(0.0, 3_600_000.0),
        })
    }

    fn handle(&self, device: &Device, command: Command) -> Result<Handling, String> {
        let fate = device.random_f64();
        let jitter = device.random_f64() * self.jitter_ms;
        let delay = (self.delay_ms + jitter) as u32;
        let done = Reply::completed(json!({ "attempt": command.attempt })).after_ms(delay);
        Ok(if fate < self.drop_rate {
            Handling::silent()
        } else if fate < self.drop_rate + self.duplicate_rate {
            let again = done.clone().after_ms(0);
            Handling::replies([done, again])
        } else {
            Handling::reply(done)
        })
    }
}
