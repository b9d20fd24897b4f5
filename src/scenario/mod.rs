//! The scenario file: what is simulated. It is read in two steps, the raw
//! serde form (unknown keys refused by name) and then the validated form,
//! where fleets are expanded into devices with checked ids.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::telemetry::OfflineBuffer;

/// The scenario `iotmock serve` runs when none is given.
pub const DEMO: &str = include_str!("demo.toml");
/// How the built-in demo is named in errors.
pub const DEMO_ORIGIN: &str = "(built-in demo)";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {origin}: {detail}")]
    Parse { origin: String, detail: String },
    #[error("scenario {origin}: {detail}")]
    Invalid { origin: String, detail: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    seed: Option<u64>,
    /// Where simulated time starts, RFC 3339; `--start-time` overrides it.
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    fleet: Vec<RawFleet>,
    #[serde(default)]
    edge_node: Vec<crate::edge::EdgeNodeSpec>,
    /// Mock HTTP endpoints, as in `POST /api/v1/stubs`.
    #[serde(default)]
    stubs: Vec<crate::stubs::StubDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    id: Option<String>,
    id_pattern: Option<String>,
    count: Option<u32>,
    #[serde(default = "default_first")]
    first: u32,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    sensors: Vec<SensorSpec>,
    /// A command-handler plugin: a name, or `{ plugin, config }`.
    #[serde(default)]
    command_handler: Option<crate::fleet::HandlerSpec>,
    /// The topics and payloads the devices speak: a codec plugin's name,
    /// or `{ plugin, config }` (default `iotmock`).
    #[serde(default)]
    dialect: Option<crate::dialect::DialectSpec>,
    #[serde(default)]
    buffer: Option<OfflineBuffer>,
}

fn default_first() -> u32 {
    1
}

/// A sensor a device carries.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
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
    pub fn sensor_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.plugin)
    }
}

/// A device as the scenario declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub id: String,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub group: Option<String>,
    pub sensors: Vec<SensorSpec>,
    pub command_handler: Option<crate::fleet::HandlerSpec>,
    pub dialect: Option<crate::dialect::DialectSpec>,
    /// The offline buffer of each sensor; None: the default.
    pub buffer: Option<OfflineBuffer>,
}

/// A validated scenario.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub seed: Option<u64>,
    /// Where simulated time starts, ms since the epoch.
    pub start_time_ms: Option<i64>,
    pub devices: Vec<DeviceSpec>,
    /// `[[edge_node]]` tables, checked when the server starts them.
    pub edge_nodes: Vec<crate::edge::EdgeNodeSpec>,
    pub stubs: Vec<crate::stubs::StubDef>,
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn demo() -> Self {
        Self::parse(DEMO, DEMO_ORIGIN).expect("the built-in demo scenario is valid")
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            detail: e.to_string(),
        })?;
        let invalid = |detail: String| ScenarioError::Invalid {
            origin: origin.to_string(),
            detail,
        };
        let start_time_ms = match &raw.start_time {
            None => None,
            Some(text) => Some(crate::clock::parse_rfc3339_ms(text).ok_or_else(|| {
                invalid(format!(
                    "start_time {text:?} is not an RFC 3339 time: write e.g. \"2026-06-01T09:00:00Z\""
                ))
            })?),
        };
        let mut devices = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, fleet) in raw.fleet.into_iter().enumerate() {
            let at = format!("fleet #{}", i + 1);
            let ids = match (&fleet.id, &fleet.id_pattern, fleet.count) {
                (Some(id), None, None | Some(1)) => vec![id.clone()],
                (None, Some(pattern), Some(count)) => expand_pattern(pattern, fleet.first, count)
                    .map_err(|e| invalid(format!("{at}: {e}")))?,
                _ => {
                    return Err(invalid(format!(
                        "{at}: give either `id` (one device) or `id_pattern` with `count`"
                    )));
                }
            };
            for sensor in &fleet.sensors {
                check_sensor(sensor).map_err(|e| invalid(format!("{at}: {e}")))?;
            }
            if let Some(handler) = &fleet.command_handler
                && !crate::plugin::valid_name(handler.plugin())
            {
                return Err(invalid(format!(
                    "{at}: command_handler {:?} is not a valid plugin name (a-z, 0-9, '-', '_')",
                    handler.plugin()
                )));
            }
            if let Some(dialect) = &fleet.dialect
                && !crate::plugin::valid_name(dialect.plugin())
            {
                return Err(invalid(format!(
                    "{at}: dialect {:?} is not a valid plugin name (a-z, 0-9, '-', '_')",
                    dialect.plugin()
                )));
            }
            if let Some(buffer) = &fleet.buffer {
                buffer
                    .validate()
                    .map_err(|e| invalid(format!("{at}: {e}")))?;
            }
            let mut names = BTreeSet::new();
            for sensor in &fleet.sensors {
                if !names.insert(sensor.sensor_name()) {
                    return Err(invalid(format!(
                        "{at}: two sensors are named {:?}; give one a `name`",
                        sensor.sensor_name()
                    )));
                }
            }
            for id in ids {
                validate_device_id(&id).map_err(|e| invalid(format!("{at}: {e}")))?;
                if !seen.insert(id.clone()) {
                    return Err(invalid(format!("{at}: device id {id:?} is declared twice")));
                }
                devices.push(DeviceSpec {
                    id,
                    kind: fleet.kind.clone(),
                    tags: fleet.tags.clone(),
                    group: fleet.group.clone(),
                    sensors: fleet.sensors.clone(),
                    command_handler: fleet.command_handler.clone(),
                    dialect: fleet.dialect.clone(),
                    buffer: fleet.buffer,
                });
            }
        }
        let mut stub_ids = BTreeSet::new();
        for (i, def) in raw.stubs.iter().enumerate() {
            let id = def
                .id
                .clone()
                .unwrap_or_else(|| format!("scenario-stub-{}", i + 1));
            if !stub_ids.insert(id.clone()) {
                return Err(invalid(format!(
                    "stubs #{}: id {id:?} is used twice",
                    i + 1
                )));
            }
            crate::stubs::Stub::compile(def.clone(), id, "scenario", 0, 0)
                .map_err(|e| invalid(format!("stubs #{}: {e}", i + 1)))?;
        }
        Ok(Self {
            seed: raw.seed,
            start_time_ms,
            devices,
            edge_nodes: raw.edge_node,
            stubs: raw.stubs,
        })
    }
}

/// Checks a sensor declaration (the plugin itself is checked when the
/// device starts, since plugins can arrive later).
pub fn check_sensor(sensor: &SensorSpec) -> Result<(), String> {
    if !crate::plugin::valid_name(&sensor.plugin) {
        return Err(format!(
            "sensor plugin {:?} is not a valid plugin name (a-z, 0-9, '-', '_')",
            sensor.plugin
        ));
    }
    if let Some(name) = &sensor.name {
        validate_segment(name).map_err(|e| format!("sensor name {name:?}: {e}"))?;
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

/// Device ids appear in MQTT topics and URLs: 1 to 128 characters from
/// A-Z, a-z, 0-9, '.', '_' and '-'.
pub fn validate_device_id(id: &str) -> Result<(), String> {
    validate_segment(id).map_err(|e| format!("device id {id:?}: {e}"))
}

fn validate_segment(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("must be 1 to 128 characters long".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {c:?}; use only A-Z, a-z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Expands `dev-{n:05}` (or `{n}`) for n = first, first+1, ...
pub fn expand_pattern(pattern: &str, first: u32, count: u32) -> Result<Vec<String>, String> {
    let start = pattern
        .find("{n")
        .ok_or_else(|| format!("id_pattern {pattern:?} has no {{n}} or {{n:0W}} placeholder"))?;
    let end = start
        + pattern[start..]
            .find('}')
            .ok_or_else(|| format!("id_pattern {pattern:?}: unclosed placeholder"))?;
    let spec = &pattern[start + 2..end];
    let width = match spec {
        "" => 0,
        _ => spec
            .strip_prefix(":0")
            .or_else(|| spec.strip_prefix(':'))
            .and_then(|w| w.parse::<usize>().ok())
            .ok_or_else(|| {
                format!(
                    "id_pattern {pattern:?}: placeholder must be {{n}} or {{n:0W}}, e.g. {{n:05}}"
                )
            })?,
    };
    let (head, tail) = (&pattern[..start], &pattern[end + 1..]);
    Ok((0..count)
        .map(|i| format!("{head}{:0width$}{tail}", u64::from(first) + u64::from(i)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_has_ten_thermometers() {
        let demo = Scenario::demo();
        assert_eq!(demo.devices.len(), 10);
        assert_eq!(demo.devices[0].id, "demo-01");
        assert_eq!(demo.devices[9].id, "demo-10");
        assert_eq!(demo.devices[0].sensors[0].sensor_name(), "temperature");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            Scenario::parse("[[fleet]]\nid = \"a\"\ncolour = \"red\"\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn bad_ids_and_duplicates_are_refused() {
        let err = Scenario::parse("[[fleet]]\nid = \"a/b\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
        let err =
            Scenario::parse("[[fleet]]\nid = \"a\"\n[[fleet]]\nid = \"a\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn start_time_is_rfc3339() {
        let s = Scenario::parse("start_time = \"2026-06-01T09:00:00+02:00\"\n", "t").unwrap();
        assert_eq!(
            s.start_time_ms,
            crate::clock::parse_rfc3339_ms("2026-06-01T07:00:00Z")
        );
        let err = Scenario::parse("start_time = \"9am\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("start_time \"9am\""), "{err}");
    }

    #[test]
    fn patterns_expand() {
        assert_eq!(
            expand_pattern("s-{n:03}", 1, 2).unwrap(),
            ["s-001", "s-002"]
        );
        assert_eq!(expand_pattern("{n}x", 9, 2).unwrap(), ["9x", "10x"]);
        assert!(expand_pattern("none", 1, 1).is_err());
    }
}
