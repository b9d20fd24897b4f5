//! The device model and the shapes the API reads and writes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(crate) use crate::dialect::DialectSpec;
use crate::ids::DeviceId;
use crate::telemetry::{OfflineBuffer, SensorSpec};

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Lifecycle {
    /// Created; a real device that has not connected yet.
    Provisioned,
    /// In service: simulated devices stream, real devices have connected.
    Active,
    /// Credentials refused, no telemetry; can be made active again.
    Suspended,
    /// Out of service for good: credentials refused, no telemetry.
    Decommissioned,
}

impl Lifecycle {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Provisioned => "provisioned",
            Lifecycle::Active => "active",
            Lifecycle::Suspended => "suspended",
            Lifecycle::Decommissioned => "decommissioned",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioned" => Lifecycle::Provisioned,
            "active" => Lifecycle::Active,
            "suspended" => Lifecycle::Suspended,
            "decommissioned" => Lifecycle::Decommissioned,
            _ => return None,
        })
    }

    /// Whether the device's credentials are accepted.
    pub(crate) fn may_connect(self) -> bool {
        matches!(self, Lifecycle::Provisioned | Lifecycle::Active)
    }
}

crate::plugin::spec::plugin_spec! {
    /// The command handler of a simulated device: a plugin name, or a plugin
    /// with its configuration (`{"plugin":"firmware","config":{...}}`).
    HandlerSpec
}

/// A device's stored fields. Bulk-created devices share their template's
/// tags, metadata and sensors (the `Arc`s), which keeps a large fleet small.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub id: String,
    pub kind: Option<String>,
    pub tags: Arc<Vec<String>>,
    pub group: Option<String>,
    pub metadata: Arc<Map<String, Value>>,
    pub sensors: Arc<Vec<SensorSpec>>,
    pub command_handler: Option<HandlerSpec>,
    /// None: the default dialect (`iotmock`).
    pub dialect: Option<DialectSpec>,
    pub simulated: bool,
    /// Offline buffer of each of its sensors.
    pub buffer: OfflineBuffer,
    pub state: Lifecycle,
    /// Simulated time, ms.
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a device is made from: the body of `POST /devices` without the id,
/// and the `template` of `POST /devices/bulk`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceTemplate {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub sensors: Vec<SensorSpec>,
    /// A command-handler plugin that answers for a simulated device.
    #[serde(default)]
    pub command_handler: Option<HandlerSpec>,
    /// The topics and payloads the device speaks: a codec plugin's name,
    /// or `{"plugin", "config"}` (default `iotmock`).
    #[serde(default)]
    pub dialect: Option<DialectSpec>,
    /// false: a real device that connects itself.
    #[serde(default = "yes")]
    pub simulated: bool,
    /// Where readings wait while the device is offline, per sensor
    /// (default: 1,000 readings, `drop_oldest`).
    #[serde(default)]
    pub buffer: Option<OfflineBuffer>,
}

fn yes() -> bool {
    true
}

/// A device as a scenario file declares it, its id already checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceSpec {
    pub id: DeviceId,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub group: Option<String>,
    pub sensors: Vec<SensorSpec>,
    pub command_handler: Option<HandlerSpec>,
    pub dialect: Option<DialectSpec>,
    /// The offline buffer of each sensor; None: the default.
    pub buffer: Option<OfflineBuffer>,
}

/// Body of `POST /devices`. It repeats the template's fields instead of
/// `#[serde(flatten)]`-ing a [`DeviceTemplate`], because serde cannot refuse
/// unknown fields through a flattened struct, and naming a mistyped field is
/// worth the repetition.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDevice {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub sensors: Vec<SensorSpec>,
    #[serde(default)]
    pub command_handler: Option<HandlerSpec>,
    /// The topics and payloads the device speaks (default `iotmock`).
    #[serde(default)]
    pub dialect: Option<DialectSpec>,
    #[serde(default = "yes")]
    pub simulated: bool,
    #[serde(default)]
    pub buffer: Option<OfflineBuffer>,
}

impl CreateDevice {
    pub(crate) fn split(self) -> (String, DeviceTemplate) {
        (
            self.id,
            DeviceTemplate {
                kind: self.kind,
                tags: self.tags,
                group: self.group,
                metadata: self.metadata,
                sensors: self.sensors,
                command_handler: self.command_handler,
                dialect: self.dialect,
                simulated: self.simulated,
                buffer: self.buffer,
            },
        )
    }
}

/// Body of `POST /devices/bulk`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkCreate {
    /// How many devices, 1 to 1,000,000.
    pub count: u32,
    /// Ids from a pattern with `{n}` or `{n:0W}`, e.g. `sensor-{n:05}`.
    pub id_pattern: String,
    /// The first n (default 1).
    #[serde(default)]
    pub first: Option<u32>,
    #[serde(default)]
    pub template: DeviceTemplate,
    /// Issue each device a certificate too (PEM certificate and private
    /// key in the answer, shown only there).
    #[serde(default)]
    pub certificates: bool,
}

/// Body of `PATCH /devices/{id}`: fields given are replaced.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchDevice {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub sensors: Option<Vec<SensorSpec>>,
    #[serde(default)]
    pub command_handler: Option<HandlerSpec>,
    /// Lifecycle: `active`, `suspended` or `decommissioned`.
    #[serde(default)]
    pub state: Option<Lifecycle>,
    /// A new offline buffer, applied at once (readings beyond a smaller
    /// capacity give way by the new policy and are counted as dropped).
    #[serde(default)]
    pub buffer: Option<OfflineBuffer>,
    /// Another dialect, from the next message on. A simulated device that
    /// is online says goodbye in the old dialect and hello in the new one;
    /// its codec state starts afresh.
    #[serde(default)]
    pub dialect: Option<DialectSpec>,
}

/// A device's MQTT credentials: username is the device id.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Credentials {
    pub username: String,
    /// Shown only when created or rotated; only a salted hash is kept.
    pub password: String,
}

/// Connectivity as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ConnectivityView {
    /// `online` or `offline`.
    pub state: &'static str,
    /// What a simulated device was told: `online`, `offline` or `flaky`;
    /// `mqtt` for a real device (its connection decides), `http` for one
    /// whose last contact was the HTTP device API (polling decides).
    pub mode: &'static str,
    /// How the device last reached the server, `mqtt` or `http`; null
    /// before its first contact.
    pub protocol: Option<&'static str>,
    pub last_seen: Option<String>,
    pub connect_count: u64,
    /// Long polls (`GET /devices/{id}/commands/next`) waiting now; an HTTP
    /// device stays online while one waits.
    pub polling: u32,
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub tags: Arc<Vec<String>>,
    pub group: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Arc<Map<String, Value>>,
    #[schema(value_type = Vec<SensorSpec>)]
    pub sensors: Arc<Vec<SensorSpec>>,
    pub command_handler: Option<HandlerSpec>,
    /// The topics and payloads the device speaks.
    pub dialect: DialectSpec,
    pub simulated: bool,
    pub state: Lifecycle,
    pub connectivity: ConnectivityView,
    /// Offline buffer of each of its sensors.
    pub buffer: OfflineBuffer,
    pub telemetry: DeviceTelemetry,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// The state the device reported over HTTP (`PUT /devices/{id}/state`);
    /// null until it does.
    pub reported: Option<super::ReportedState>,
}

/// A device's telemetry counters (since the server started).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceTelemetry {
    /// Readings waiting in its offline buffers now.
    pub buffered: u64,
    /// Readings its offline buffers had no room for.
    pub buffer_dropped: u64,
}

/// Body of `POST /devices/{id}/connectivity`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectivityRequest {
    pub state: ConnectivityMode,
    /// flaky: mean length of an online spell, simulated ms (default 30,000).
    #[serde(default)]
    pub mean_online_ms: Option<u64>,
    /// flaky: mean length of an offline spell, simulated ms (default 5,000).
    #[serde(default)]
    pub mean_offline_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConnectivityMode {
    Online,
    Offline,
    Flaky,
}

/// Filters of `GET /devices`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceFilter {
    /// Devices carrying this tag.
    pub tag: Option<String>,
    pub group: Option<String>,
    /// Lifecycle state.
    pub state: Option<Lifecycle>,
    /// `online` or `offline`.
    pub connectivity: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of `GET /devices`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct DevicePage {
    pub items: Vec<DeviceView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
    /// Devices matching the filter, over all pages.
    pub total: usize,
}

/// One entry of the bulk answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedDevice {
    pub id: String,
    pub credentials: Credentials,
    /// With `"certificates": true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<super::certificates::IssuedCertificate>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BulkCreated {
    pub created: usize,
    pub devices: Vec<CreatedDevice>,
}
