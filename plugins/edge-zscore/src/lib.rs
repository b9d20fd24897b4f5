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
//! State: count, mean and sum of squared deviations per device and sensor.

use std::collections::BTreeMap;

use iotmock_sdk::Device;
use iotmock_sdk::edge::{Action, Alert, EdgeRule, Reading, Severity, Window};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    sensor: Option<String>,
    threshold: f64,
    min_samples: u64,
    forward: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sensor: None,
            threshold: 3.0,
            min_samples: 10,
            forward: true,
        }
    }
}

struct ZScore(Config);

iotmock_sdk::export_edge_rule!(ZScore);

impl EdgeRule for ZScore {
    type Config = Config;
    /// (count, mean, m2) per "device/sensor".
    type State = BTreeMap<String, (u64, f64, f64)>;

    fn new(config: Config) -> Result<Self, String> {
        if config.threshold.is_nan() || config.threshold <= 0.0 {
            return Err("threshold must be above 0".into());
        }
        Ok(Self(config))
    }

    fn process(
        &self,
        _node: &Device,
        stats: &mut Self::State,
        _window: Window,
        readings: Vec<Reading>,
    ) -> Result<Vec<Action>, String> {
        let config = &self.0;
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
                            Severity::Critical
                        } else {
                            Severity::Warning
                        };
                        actions.push(Action::Alert(Alert {
                            device: r.device.clone(),
                            sensor: r.sensor.clone(),
                            severity,
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
        Ok(actions)
    }
}
