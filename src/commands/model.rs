//! Commands as the API and the store see them: requests, states, records
//! and views.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::rfc3339_ms;
use crate::plugin::ReplyStatus;

/// Per-attempt timeout when a request names none, simulated ms.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// How long a command may wait for an offline device by default, simulated ms.
pub(crate) const DEFAULT_TTL_MS: u64 = 60_000;
/// First retry's wait after a timeout by default; doubled per retry.
pub(crate) const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// The longest wait between two attempts.
pub(crate) const MAX_BACKOFF_MS: u64 = 60_000;
pub(crate) const MAX_RETRIES: u32 = 20;
/// Acks kept per command (the rest are counted, not kept).
pub(crate) const MAX_ACKS_KEPT: usize = 64;

/// Where a command is in its life. The last six are final: once there, a
/// command never moves again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CommandStatus {
    /// Waiting for its device to be online (or for a retry's turn).
    Queued,
    /// Delivered to the device; no ack yet.
    Sent,
    /// The device said it got it.
    Received,
    Completed,
    Rejected,
    Failed,
    /// No final ack after the last attempt's timeout.
    TimedOut,
    /// The device stayed offline past the command's TTL; never delivered.
    Expired,
    Cancelled,
}

impl CommandStatus {
    pub(crate) fn is_final(self) -> bool {
        !matches!(
            self,
            CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Received
        )
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Received => "received",
            CommandStatus::Completed => "completed",
            CommandStatus::Rejected => "rejected",
            CommandStatus::Failed => "failed",
            CommandStatus::TimedOut => "timed_out",
            CommandStatus::Expired => "expired",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    pub(crate) const ALL: [CommandStatus; 9] = [
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Received,
        CommandStatus::Completed,
        CommandStatus::Rejected,
        CommandStatus::Failed,
        CommandStatus::TimedOut,
        CommandStatus::Expired,
        CommandStatus::Cancelled,
    ];
}

/// What a device may answer, on `devices/{id}/acks/{command_id}` or over
/// HTTP.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Received,
    Completed,
    Rejected,
    Failed,
}

impl From<ReplyStatus> for AckStatus {
    fn from(s: ReplyStatus) -> Self {
        match s {
            ReplyStatus::Received => AckStatus::Received,
            ReplyStatus::Completed => AckStatus::Completed,
            ReplyStatus::Rejected => AckStatus::Rejected,
            ReplyStatus::Failed => AckStatus::Failed,
        }
    }
}

impl From<AckStatus> for ReplyStatus {
    fn from(s: AckStatus) -> Self {
        match s {
            AckStatus::Received => ReplyStatus::Received,
            AckStatus::Completed => ReplyStatus::Completed,
            AckStatus::Rejected => ReplyStatus::Rejected,
            AckStatus::Failed => ReplyStatus::Failed,
        }
    }
}

/// Which ack completes a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CompleteOn {
    /// A `completed` (or `rejected` / `failed`) ack: the device did it.
    #[default]
    Completed,
    /// The first `received` ack already completes it: the device got it.
    Received,
}

/// Body of `POST /devices/{id}/commands`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandRequest {
    /// Your own id for the command (letters, digits, `-`, `_`, `.`; at most
    /// 64); one is made up when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Any JSON; `{}` when absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Option<Value>,
    /// How long each attempt waits for a final ack, simulated ms (default 5,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Attempts after the first when one times out (default 0, at most 20).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Wait before the first retry, doubled for each further one (capped at
    /// 60,000), simulated ms (default 1,000).
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// How long the command may wait for an offline device, simulated ms
    /// (default 60,000).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// `completed` (default) or `received`.
    #[serde(default)]
    pub complete_on: Option<CompleteOn>,
}

/// Which devices a fleet command goes to: exactly one of the fields.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// `true`: every device in the fleet.
    #[serde(default)]
    pub all: Option<bool>,
}

/// Body of `POST /commands`: a command for a selection of the fleet.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FleetCommandRequest {
    pub devices: Selection,
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Option<Value>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub complete_on: Option<CompleteOn>,
}

impl FleetCommandRequest {
    pub(crate) fn per_device(&self) -> CommandRequest {
        CommandRequest {
            id: None,
            name: self.name.clone(),
            params: self.params.clone(),
            timeout_ms: self.timeout_ms,
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            ttl_ms: self.ttl_ms,
            complete_on: self.complete_on,
        }
    }
}

/// An ack as a device sends it (an `id` in an MQTT payload is allowed
/// and not read: the topic names the command).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub(crate) struct DeviceAck {
    pub status: AckStatus,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// Who started a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Origin {
    /// `POST /devices/{id}/commands` or `POST /commands`.
    Api,
    /// A client published on `devices/{id}/commands/{command_id}` itself.
    Mqtt,
    /// An edge node's local-control rule.
    Edge,
}

/// Where an ack came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AckSource {
    /// The simulated device's command handler.
    Simulated,
    Mqtt,
    Http,
}

/// One state change.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Transition {
    pub status: CommandStatus,
    /// Simulated time, RFC 3339.
    #[serde(with = "ts")]
    #[schema(value_type = String)]
    pub at: i64,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One ack the device sent, kept whether it moved the command or not.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct AckRecord {
    pub status: AckStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[serde(with = "ts")]
    #[schema(value_type = String)]
    pub at: i64,
    /// The attempt in flight when it arrived.
    pub attempt: u32,
    pub source: AckSource,
    /// Why it did not move the command: `duplicate` (the same status
    /// again), `progress` (a further `received` carrying a result), `late`
    /// (after a final state), or absent when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// A command: what the API shows and the store keeps.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct CommandView {
    pub id: String,
    pub device: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub params: Value,
    pub status: CommandStatus,
    /// Deliveries so far (1 after the first send).
    pub attempts: u32,
    /// 1 + retries.
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_ms: u64,
    pub ttl_ms: u64,
    pub complete_on: CompleteOn,
    /// The result of the ack that made the command final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why a command timed out, expired or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub origin: Origin,
    /// The fleet command this is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    #[serde(with = "ts")]
    #[schema(value_type = String)]
    pub created_at: i64,
    #[serde(with = "ts")]
    #[schema(value_type = String)]
    pub updated_at: i64,
    /// Until when it may wait for an offline device.
    #[serde(with = "ts")]
    #[schema(value_type = String)]
    pub expires_at: i64,
    /// Every state change, oldest first.
    pub history: Vec<Transition>,
    /// The acks received (the first 64; `acks_total` counts all).
    pub acks: Vec<AckRecord>,
    pub acks_total: u64,
}

/// Body of `POST /commands` answered: one command per selected device.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchView {
    pub id: String,
    pub name: String,
    /// Commands per status.
    #[schema(value_type = Object)]
    pub summary: std::collections::BTreeMap<&'static str, u64>,
    pub total: u64,
    /// Whether every command reached a final state.
    pub done: bool,
    pub commands: Vec<BatchItem>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchItem {
    pub device: String,
    pub id: String,
    pub status: CommandStatus,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Filters of `GET /commands`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandFilter {
    pub device: Option<String>,
    pub status: Option<CommandStatus>,
    pub name: Option<String>,
    pub batch: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CommandPage {
    pub items: Vec<CommandView>,
    pub next_cursor: Option<String>,
}

/// What a device gets: on MQTT `devices/{id}/commands/{command_id}`, or
/// from `GET /devices/{id}/commands/next`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CommandMessage {
    pub id: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub params: Value,
    /// 1 for the first delivery; a retry repeats the id with a higher
    /// attempt, so devices can de-duplicate.
    pub attempt: u32,
}

/// Simulated ms as RFC 3339 on the wire, ms in memory.
mod ts {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_ms(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        crate::clock::parse_rfc3339_ms(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}")))
    }
}
