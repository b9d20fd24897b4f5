//! The MQTT bridge: publish from HTTP, read the journal, verify, list
//! clients, read the status, cause an outage, break packets on purpose.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, Problem};
use crate::mqtt::DropEvent;
use crate::mqtt::faults::{FaultEvent, FaultRule, FaultSpec};
use crate::mqtt::{ClientInfo, MqttError, PublishOutcome, Qos, Status, VerifySpec, topics};
use crate::verify::Verdict;

/// Largest page of `GET /mqtt/messages`.
const MAX_PAGE: usize = 10_000;
/// Longest outage.
const MAX_OUTAGE_MS: u64 = 3_600_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    pub topic: String,
    /// A string is sent as its UTF-8 bytes; any other JSON value is sent as
    /// its JSON text.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// 0, 1 or 2.
    #[serde(default)]
    #[schema(value_type = u8, minimum = 0, maximum = 2)]
    pub qos: Qos,
    #[serde(default)]
    pub retain: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PublishResponse {
    /// `routed`; during an outage `held` (QoS 1/2 or retained: routed when
    /// the broker is back) or `dropped` (QoS 0: counted in the status).
    pub outcome: PublishOutcome,
}

/// Publishes a message as the server (for back ends that only speak HTTP).
#[utoipa::path(post, path = "/api/v1/mqtt/publish", tag = "mqtt",
    request_body = PublishRequest,
    responses((status = 202, description = "accepted; `outcome` says whether it was routed, held or dropped", body = PublishResponse),
        (status = 422, body = Problem)))]
pub(super) async fn mqtt_publish(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PublishRequest>,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    topics::valid_topic_name(&request.topic)
        .map_err(|e| ApiError::invalid(format!("topic {:?}: {e}", request.topic)))?;
    let payload = match request.payload {
        serde_json::Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let outcome = state
        .mqtt
        .publish(&request.topic, payload, request.qos, request.retain)
        .await;
    Ok((StatusCode::ACCEPTED, Json(PublishResponse { outcome })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    /// A topic filter (`+` and `#` wildcards); all topics when absent.
    pub topic: Option<String>,
    /// Only messages with a cursor above this (default 0: all kept).
    pub since: Option<u64>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct MessagesPage {
    /// `{"cursor","received_at","sim_time","topic","payload","payload_encoding":"utf8"|"base64","qos","retain","client_id"}`;
    /// `client_id` is null for the server's own publishes; `"to"`, only
    /// on a message addressed to one device, is that device's id.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<crate::mqtt::Entry>,
    /// Pass as `since` for the next page.
    pub next_cursor: u64,
    /// True when this page stopped at `limit` and newer messages are left:
    /// ask again with `since=next_cursor` (false: this page reached the
    /// newest message; later ones may still arrive).
    pub more: bool,
    /// Messages evicted from the journal since the start (it was full).
    pub evicted: u64,
}

/// Recent MQTT messages (clients' and the server's), oldest first.
#[utoipa::path(get, path = "/api/v1/mqtt/messages", tag = "mqtt",
    params(MessagesQuery),
    responses((status = 200, body = MessagesPage), (status = 422, body = Problem)))]
pub(super) async fn mqtt_messages(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MessagesQuery>,
) -> Result<Json<MessagesPage>, ApiError> {
    if let Some(filter) = &query.topic {
        topics::valid_filter(filter)
            .map_err(|e| ApiError::invalid(format!("topic filter {filter:?}: {e}")))?;
    }
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(format!(
            "limit {limit} is out of range: use 1 to {MAX_PAGE}"
        )));
    }
    let page = state
        .mqtt
        .messages(query.topic.as_deref(), query.since.unwrap_or(0), limit);
    Ok(Json(MessagesPage {
        items: page.items,
        next_cursor: page.next_cursor,
        more: page.more,
        evicted: page.evicted,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyRequest {
    /// A topic filter (`+` and `#` wildcards).
    pub topic: String,
    /// Count only messages whose JSON payload contains this subset.
    #[schema(value_type = Option<Object>)]
    pub payload_contains: Option<serde_json::Value>,
    pub at_least: Option<u64>,
    pub at_most: Option<u64>,
    pub exactly: Option<u64>,
    /// How long to wait for the answer to be settled (default 0, at most
    /// 60,000). `at_least` returns as soon as it is reached; `at_most` and
    /// `exactly` fail as soon as they are exceeded, else pass at the end.
    #[serde(default)]
    pub within_ms: u64,
    /// Count only messages with a cursor above this (default 0: everything
    /// in the journal). Take it from `GET /mqtt/status` (`journal.cursor`)
    /// before the action under test.
    #[serde(default)]
    pub since: u64,
}

/// Checks that the expected MQTT messages were published, waiting up to
/// `within_ms`. Always 200: read `passed`.
#[utoipa::path(post, path = "/api/v1/mqtt/verify", tag = "mqtt",
    request_body = VerifyRequest,
    responses((status = 200, body = Verdict), (status = 422, body = Problem)))]
pub(super) async fn mqtt_verify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Json<Verdict>, ApiError> {
    topics::valid_filter(&request.topic)
        .map_err(|e| ApiError::invalid(format!("topic filter {:?}: {e}", request.topic)))?;
    let (expect, within) = crate::verify::expectation(
        request.at_least,
        request.at_most,
        request.exactly,
        request.within_ms,
    )
    .map_err(ApiError::invalid)?;
    let spec = VerifySpec {
        filter: request.topic,
        contains: request.payload_contains,
        expect,
        within,
        since: request.since,
    };
    Ok(Json(state.mqtt.verify(&spec).await))
}

/// Connected MQTT clients and their subscriptions.
#[utoipa::path(get, path = "/api/v1/mqtt/clients", tag = "mqtt",
    responses((status = 200, body = Vec<ClientInfo>)))]
pub(super) async fn mqtt_clients(State(state): State<AppState>) -> Json<Vec<ClientInfo>> {
    Json(state.mqtt.clients())
}

/// The broker's state (`up` or `outage`), journal, clients, limits and the
/// outage policy's counters.
#[utoipa::path(get, path = "/api/v1/mqtt/status", tag = "mqtt",
    responses((status = 200, body = Status)))]
pub(super) async fn mqtt_status(State(state): State<AppState>) -> Json<Status> {
    Json(state.mqtt.status())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OutageRequest {
    /// 1 to 3,600,000.
    pub duration_ms: u64,
}

/// Takes the broker down on purpose: every client is disconnected (wills
/// fire), connections are refused, and the listener comes back on the same
/// port after `duration_ms`. Sessions and retained messages survive.
#[utoipa::path(post, path = "/api/v1/mqtt/outage", tag = "mqtt",
    request_body = OutageRequest,
    responses((status = 202, body = Status), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn mqtt_outage(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<OutageRequest>,
) -> Result<(StatusCode, Json<Status>), ApiError> {
    if request.duration_ms == 0 || request.duration_ms > MAX_OUTAGE_MS {
        return Err(ApiError::invalid(format!(
            "duration_ms {} is out of range: use 1 to {MAX_OUTAGE_MS}",
            request.duration_ms
        )));
    }
    match state
        .mqtt
        .outage(Duration::from_millis(request.duration_ms))
    {
        Ok(status) => {
            state
                .fleet
                .broker_outage(Duration::from_millis(request.duration_ms))
                .await;
            Ok((StatusCode::ACCEPTED, Json(status)))
        }
        Err(e @ (MqttError::AlreadyDown { .. } | MqttError::Stopped)) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Fault rules and the log of their firings.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct FaultList {
    pub rules: Vec<FaultRule>,
    /// Firings after `since`, oldest first (a bounded log).
    pub log: Vec<FaultEvent>,
    /// Firings the log no longer holds.
    pub log_evicted: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct FaultLogQuery {
    /// Only firings with a sequence number above this.
    #[serde(default)]
    pub since: u64,
}

/// Adds a packet-level fault rule: drop, delay, duplicate, reorder,
/// withhold_ack, disconnect, refuse_connect or throttle, on the packets
/// its `match` selects. Draws come from the server's seed.
#[utoipa::path(post, path = "/api/v1/mqtt/faults", tag = "mqtt",
    request_body = FaultSpec,
    responses((status = 201, body = FaultRule), (status = 422, body = Problem)))]
pub(super) async fn mqtt_faults_create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<FaultSpec>,
) -> Result<(StatusCode, Json<FaultRule>), ApiError> {
    let rule = state
        .mqtt
        .fault_add(spec)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(rule)))
}

/// The fault rules with how often each matched and fired, and the log of
/// firings.
#[utoipa::path(get, path = "/api/v1/mqtt/faults", tag = "mqtt", params(FaultLogQuery),
    responses((status = 200, body = FaultList)))]
pub(super) async fn mqtt_faults_index(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FaultLogQuery>,
) -> Json<FaultList> {
    let (log, log_evicted) = state.mqtt.fault_log(q.since);
    Json(FaultList {
        rules: state.mqtt.fault_rules(),
        log,
        log_evicted,
    })
}

/// Removes one fault rule.
#[utoipa::path(delete, path = "/api/v1/mqtt/faults/{id}", tag = "mqtt",
    params(("id" = String, Path, description = "rule id, e.g. f-1")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn mqtt_faults_destroy(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .mqtt
        .fault_remove(&id)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes every fault rule.
#[utoipa::path(delete, path = "/api/v1/mqtt/faults", tag = "mqtt",
    responses((status = 204)))]
pub(super) async fn mqtt_faults_clear(State(state): State<AppState>) -> StatusCode {
    state.mqtt.faults_clear();
    StatusCode::NO_CONTENT
}

/// Messages that did not reach a client, with the reason.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct DropList {
    /// After `since`, oldest first (a bounded log).
    pub items: Vec<DropEvent>,
    /// Entries the log no longer holds.
    pub evicted: u64,
}

/// The drop log: each message the broker did not deliver to a client
/// (`queue_full`, `expired`, `too_large`, `fault`), with the client and
/// topic.
#[utoipa::path(get, path = "/api/v1/mqtt/drops", tag = "mqtt", params(FaultLogQuery),
    responses((status = 200, body = DropList)))]
pub(super) async fn mqtt_drops_index(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<FaultLogQuery>,
) -> Json<DropList> {
    let (items, evicted) = state.mqtt.drops(q.since);
    Json(DropList { items, evicted })
}
