//! The scenario file: what is simulated. It is read in two steps, the raw
//! serde form (unknown keys refused by name) and then the validated form,
//! where fleets are expanded into devices with checked ids.
//!
//! It only reads files: each part owns the shape of what it runs (the
//! fleet its `DeviceSpec`, telemetry its `SensorSpec`, edge and stubs
//! their definitions) and the checks of it, and the server hands the
//! validated scenario's specs to the parts. Nothing below the server
//! depends on this module.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::fleet::{DeviceSpec, HandlerSpec};
use crate::ids::{DeviceId, PluginName, StubId, expand_pattern};
use crate::telemetry::{OfflineBuffer, SensorSpec, check_sensor};

/// The scenario `iotmock serve` runs when none is given.
pub const DEMO: &str = include_str!("demo.toml");
/// How the built-in demo is named in errors.
pub(crate) const DEMO_ORIGIN: &str = "(built-in demo)";

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
    command_handler: Option<HandlerSpec>,
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

/// A validated scenario.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scenario {
    pub seed: Option<u64>,
    /// Where simulated time starts, ms since the epoch.
    pub start_time_ms: Option<i64>,
    pub devices: Vec<DeviceSpec>,
    /// `[[edge_node]]` tables, checked when the server starts them.
    pub edge_nodes: Vec<crate::edge::EdgeNodeSpec>,
    pub stubs: Vec<crate::stubs::StubDef>,
}

impl Scenario {
    pub(crate) fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub(crate) fn demo() -> Self {
        Self::parse(DEMO, DEMO_ORIGIN).expect("the built-in demo scenario is valid")
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
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
            if let Some(handler) = &fleet.command_handler {
                PluginName::parse(handler.plugin())
                    .map_err(|e| invalid(format!("{at}: command_handler {e}")))?;
            }
            if let Some(dialect) = &fleet.dialect {
                PluginName::parse(dialect.plugin())
                    .map_err(|e| invalid(format!("{at}: dialect {e}")))?;
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
                let id = DeviceId::parse(id).map_err(|e| invalid(format!("{at}: {e}")))?;
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
            let id = StubId::parse(id).map_err(|e| invalid(format!("stubs #{}: {e}", i + 1)))?;
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
    fn refusals_say_what_to_fix() {
        let refused = |text: &str| Scenario::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            refused("[[fleet]]\nid_pattern = \"d-{n}\"\n"),
            "scenario t.toml: fleet #1: give either `id` (one device) or `id_pattern` with `count`"
        );
        assert_eq!(
            refused(
                "[[fleet]]\nid = \"d\"\n[[fleet.sensors]]\nplugin = \"temperature\"\n\
                 [[fleet.sensors]]\nplugin = \"temperature\"\n"
            ),
            "scenario t.toml: fleet #1: two sensors are named \"temperature\"; give one a `name`"
        );
        let stub =
            "[[stubs]]\nid = \"s\"\nrequest = { path = \"/a\" }\nresponse = { status = 200 }\n";
        assert_eq!(
            refused(&format!("{stub}{stub}")),
            "scenario t.toml: stubs #2: id \"s\" is used twice"
        );
        let missing = std::path::Path::new("/nonexistent/scenario.toml");
        let error = Scenario::from_file(missing).unwrap_err().to_string();
        assert!(
            error.starts_with("reading scenario /nonexistent/scenario.toml: "),
            "{error}"
        );
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
}
