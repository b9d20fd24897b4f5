//! Edge rule: a token bucket per key, on reading time (simulated), so the
//! result does not depend on how windows fall.
//!
//! Each key's bucket holds up to `burst` tokens and refills at
//! `per_second` tokens per second of reading time; a reading is forwarded
//! when its key has a whole token (which it spends) and dropped otherwise.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `per_second` | 1.0 | sustained readings per second per key |
//! | `burst` | 1 | readings a key may send at once after a quiet spell |
//! | `by` | `"stream"` | the key: `"stream"` (device and sensor), `"device"` or `"node"` (one bucket for everything) |
//!
//! State: JSON `{"key": [tokens, last_ts]}`.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../wit",
});

use std::collections::BTreeMap;

use exports::iotmock::plugin::edge_rule_api::{Action, EdgeReading, Guest, Outcome, Window};
use iotmock::plugin::types::PluginError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "one")]
    per_second: f64,
    #[serde(default = "one_u")]
    burst: u32,
    #[serde(default)]
    by: By,
}

fn one() -> f64 {
    1.0
}

fn one_u() -> u32 {
    1
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum By {
    #[default]
    Stream,
    Device,
    Node,
}

fn parse(config: &str) -> Result<Config, PluginError> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| PluginError::InvalidConfig(format!("edge-rate-limit config: {e}")))?;
    if config.per_second.is_nan() || config.per_second <= 0.0 || config.burst == 0 {
        return Err(PluginError::InvalidConfig(
            "edge-rate-limit config: per_second must be above 0 and burst at least 1".into(),
        ));
    }
    Ok(config)
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
        let burst = config.burst as f64;
        let mut buckets: BTreeMap<String, (f64, i64)> =
            serde_json::from_slice(&state).unwrap_or_default();
        let mut actions = Vec::with_capacity(readings.len());
        for r in readings {
            let key = match config.by {
                By::Stream => format!("{}/{}", r.device, r.sensor),
                By::Device => r.device.clone(),
                By::Node => String::new(),
            };
            let (tokens, last) = buckets.entry(key).or_insert((burst, r.ts));
            let elapsed = (r.ts - *last).max(0) as f64 / 1000.0;
            *tokens = (*tokens + elapsed * config.per_second).min(burst);
            *last = (*last).max(r.ts);
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                actions.push(Action::Forward(r));
            }
        }
        Ok(Outcome {
            actions,
            state: serde_json::to_vec(&buckets).unwrap_or_default(),
        })
    }
}
