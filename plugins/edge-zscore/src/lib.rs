//! Edge rule: flags readings far from their stream's running mean.
//!
//! For each device and sensor it keeps a running count, mean and variance
//! (Welford) across windows in its state. A reading whose z-score
//! `(value - mean) / sd` exceeds `threshold` in absolute value, once at
//! least `min_samples` readings have been seen, raises an alert
//! (`severity` "warning", or "critical" beyond twice the threshold). Every
//! reading then joins the statistics. Readings are forwarded unless
//! `forward` is false.
//!
//! Config (JSON, every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `sensor` | every sensor | only this sensor is checked (others pass through) |
//! | `threshold` | 3.0 | z-score above which a reading is anomalous |
//! | `min_samples` | 10 | readings a stream needs before it can alert |
//! | `forward` | true | forward checked readings to the next stage |
//!
//! State: JSON `{"device/sensor": [count, mean, m2]}`.

wit_bindgen::generate!({
    world: "edge-rule",
    path: "../../wit",
});

use std::collections::BTreeMap;

use exports::iotmock::plugin::edge_rule_api::{Action, Alert, EdgeReading, Guest, Outcome, Window};
use iotmock::plugin::types::PluginError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    sensor: Option<String>,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "default_min_samples")]
    min_samples: u64,
    #[serde(default = "yes")]
    forward: bool,
}

fn default_threshold() -> f64 {
    3.0
}

fn default_min_samples() -> u64 {
    10
}

fn yes() -> bool {
    true
}

fn parse(config: &str) -> Result<Config, PluginError> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| PluginError::InvalidConfig(format!("edge-zscore config: {e}")))?;
    if config.threshold.is_nan() || config.threshold <= 0.0 {
        return Err(PluginError::InvalidConfig(
            "edge-zscore config: threshold must be above 0".into(),
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
        let mut stats: BTreeMap<String, (u64, f64, f64)> =
            serde_json::from_slice(&state).unwrap_or_default();
        let mut actions = Vec::with_capacity(readings.len());
        for r in readings {
            if config.sensor.as_deref().is_some_and(|s| s != r.sensor) {
                actions.push(Action::Forward(r));
                continue;
            }
            let entry = stats
                .entry(format!("{}/{}", r.device, r.sensor))
                .or_insert((0, 0.0, 0.0));
            let (n, mean, m2) = *entry;
            if n >= config.min_samples.max(2) {
                let sd = (m2 / (n - 1) as f64).sqrt();
                if sd > 0.0 {
                    let z = (r.value - mean) / sd;
                    if z.abs() > config.threshold {
                        let severity = if z.abs() > 2.0 * config.threshold {
                            "critical"
                        } else {
                            "warning"
                        };
                        actions.push(Action::Alert(Alert {
                            device: r.device.clone(),
                            sensor: r.sensor.clone(),
                            severity: severity.into(),
                            message: format!(
                                "z-score {z:.2} (mean {mean:.3}, sd {sd:.3}, {n} readings)"
                            ),
                            value: r.value,
                        }));
                    }
                }
            }
            let n = n + 1;
            let delta = r.value - mean;
            let mean = mean + delta / n as f64;
            let m2 = m2 + delta * (r.value - mean);
            *entry = (n, mean, m2);
            if config.forward {
                actions.push(Action::Forward(r));
            }
        }
        Ok(Outcome {
            actions,
            state: serde_json::to_vec(&stats).unwrap_or_default(),
        })
    }
}
