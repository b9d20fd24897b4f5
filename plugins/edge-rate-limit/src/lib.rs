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
//! State: tokens and the last reading time per key.

use std::collections::BTreeMap;

use iotmock_sdk::Device;
use iotmock_sdk::edge::{Action, EdgeRule, Reading, Window};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    per_second: f64,
    burst: u32,
    by: By,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            per_second: 1.0,
            burst: 1,
            by: By::Stream,
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum By {
    Stream,
    Device,
    Node,
}

struct RateLimit(Config);

iotmock_sdk::export_edge_rule!(RateLimit);

impl EdgeRule for RateLimit {
    type Config = Config;
    /// (tokens, last reading time) per key.
    type State = BTreeMap<String, (f64, i64)>;

    fn new(config: Config) -> Result<Self, String> {
        if config.per_second.is_nan() || config.per_second <= 0.0 || config.burst == 0 {
            return Err("per_second must be above 0 and burst at least 1".into());
        }
        Ok(Self(config))
    }

    fn process(
        &self,
        _node: &Device,
        buckets: &mut Self::State,
        _window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let config = &self.0;
        let burst = config.burst as f64;
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
        Ok(actions)
    }
}
