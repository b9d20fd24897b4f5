//! What a device's sensor is declared as (in the scenario file and in
//! `POST /devices`), and the checks that need neither the plugin host nor
//! the fleet. Telemetry owns it because telemetry runs it; the fleet
//! stores it with the device and the scenario reads it from the file.

use serde::{Deserialize, Serialize};

use crate::ids::{PluginName, SensorName};

/// A sensor a device carries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SensorSpec {
    /// Name in topics and exports; defaults to the plugin's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A loaded sensor plugin.
    pub plugin: String,
    /// Time between readings, simulated ms.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Each gap between readings is `interval_ms` moved by a whole number
    /// of ms drawn uniformly from [-jitter_ms, +jitter_ms] (the device's
    /// seeded jitter stream; below `interval_ms`). Default 0: a steady beat.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter_ms: u64,
    /// Given to the plugin as JSON.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn default_interval() -> u64 {
    1000
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl SensorSpec {
    pub(crate) fn sensor_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.plugin)
    }
}

/// Checks a sensor declaration (the plugin itself is checked when the
/// device starts, since plugins can arrive later).
pub(crate) fn check_sensor(sensor: &SensorSpec) -> Result<(), String> {
    PluginName::parse(sensor.plugin.as_str()).map_err(|e| format!("sensor plugin {e}"))?;
    if let Some(name) = &sensor.name {
        SensorName::parse(name.as_str()).map_err(|e| e.to_string())?;
    }
    if sensor.interval_ms == 0 {
        return Err(format!(
            "sensor {:?}: interval_ms must be at least 1",
            sensor.sensor_name()
        ));
    }
    if sensor.jitter_ms >= sensor.interval_ms {
        return Err(format!(
            "sensor {:?}: jitter_ms ({}) must be less than interval_ms ({})",
            sensor.sensor_name(),
            sensor.jitter_ms,
            sensor.interval_ms
        ));
    }
    if !sensor.config.is_object() {
        return Err(format!(
            "sensor {:?}: config must be a table/object",
            sensor.sensor_name()
        ));
    }
    Ok(())
}
