//! The HTTP device API: what a device that speaks HTTP instead of MQTT
//! uses, authenticated with its own credentials (HTTP basic auth, the same
//! user name and password as for MQTT). Posting telemetry, reporting state;
//! every authenticated request counts as contact for its connectivity.
//! On `--https`, a device may instead present its client certificate
//! (subject CN = its id) and send no credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, Problem};
use crate::clock::{parse_rfc3339_ms, wall_ms};
use crate::fleet::ReportMode;
use crate::fleet::{AuthOutcome, ReportedState};
use crate::mqtt::PeerCert;
use crate::stubs::HttpEntry;
use crate::stubs::serve::{basic_credentials, header_pairs, query_pairs};
use crate::telemetry::Reading;

/// Most readings in one request.
pub(super) const MAX_READINGS: usize = 10_000;
/// Largest device API request body.
pub(super) const MAX_DEVICE_BODY: usize = 4 << 20;

/// Where the journal middleware learns which device a request
/// authenticated as.
#[derive(Clone, Default)]
struct DeviceSlot(Arc<Mutex<Option<String>>>);

/// A request authenticated as the device named by the path's `{id}`.
///
/// Missing or wrong credentials: 401 with `WWW-Authenticate: Basic`. A
/// suspended or decommissioned device, or credentials of another device:
/// 403. On success the request counts as the device's contact (it is
/// marked online; silence takes it offline again).
pub(super) struct DeviceAuth {
    pub id: String,
}

fn unauthorized(detail: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"iotmock devices\", charset=\"UTF-8\""),
    );
    response
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()).into_response())?;
        let id = params.get("id").cloned().unwrap_or_default();
        let (user, outcome) = match (
            basic_credentials(&parts.headers),
            parts.extensions.get::<PeerCert>(),
        ) {
            (Some((user, password)), _) => {
                let outcome = state.fleet.authenticate(&user, &password);
                (user, outcome)
            }
            (None, Some(cert)) => {
                let user = cert.common_name.clone();
                (user.clone(), state.fleet.authenticate_cert(&user))
            }
            (None, None) => {
                return Err(unauthorized(
                    "send the device's credentials with HTTP basic auth: user name = device id, password = its secret (as for MQTT); or, on --https, present the device's client certificate",
                ));
            }
        };
        match outcome {
            AuthOutcome::Ok => {}
            AuthOutcome::Unknown | AuthOutcome::WrongSecret => {
                return Err(unauthorized(
                    "wrong device user name or password (or a certificate of a device that no longer exists); a rotated secret replaces the old one (POST /api/v1/devices/{id}/credentials)",
                ));
            }
            AuthOutcome::NotAllowed => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("device {user:?} is suspended or decommissioned: its credentials are refused until it is active again"),
                )
                .into_response());
            }
        }
        if user != id {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("these are the credentials of device {user:?}, which may use only /api/v1/devices/{user}/..., not device {id:?}"),
            )
            .into_response());
        }
        if let Some(slot) = parts.extensions.get::<DeviceSlot>() {
            *slot.0.lock().unwrap() = Some(user.clone());
        }
        state.fleet.http_contact(&user).await;
        Ok(DeviceAuth { id: user })
    }
}

/// Journals every device API request with its answer.
pub(super) async fn journal_device_api(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_DEVICE_BODY).await {
        Ok(b) => b,
        Err(error) => {
            return ApiError::body_failed(
                &error,
                &format!(
                    "device API requests carry at most {MAX_DEVICE_BODY} bytes; split the readings"
                ),
            )
            .into_response();
        }
    };
    let slot = DeviceSlot::default();
    parts.extensions.insert(slot.clone());
    // Nesting strips the prefix; the journal shows the path as requested.
    let path = format!("/api/v1{}", parts.uri.path());
    let mut entry = HttpEntry {
        cursor: 0,
        wall_ms: wall_ms(),
        sim_ms: state.clock.now_ms(),
        listener: "api",
        method: parts.method.to_string(),
        path,
        query: query_pairs(&parts.uri),
        headers: header_pairs(&parts.headers)
            .into_iter()
            // The journal is readable by anyone on the API: keep secrets out.
            .filter(|(n, _)| n != "authorization")
            .collect(),
        body: body.clone(),
        body_truncated: false,
        stub: None,
        device: None,
        status: None,
        fault: None,
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    entry.device = slot.0.lock().unwrap().take();
    entry.status = Some(response.status().as_u16());
    state.stubs.journal().push(entry);
    response
}

/// One reading as a device posts it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadingIn {
    /// The sensor's name: 1 to 128 of `A-Z a-z 0-9 . _ -` (a topic level).
    pub sensor: String,
    /// A finite number.
    pub value: f64,
    /// RFC 3339 (`2026-01-01T00:00:00.000Z`, or with an offset); absent:
    /// the simulated time now.
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct TelemetryAccepted {
    /// Readings published (and journaled for export).
    pub accepted: usize,
    /// Of those, held by an MQTT outage: they are routed when it ends.
    pub held: usize,
}

/// RFC 3339 with `Z` or a `+HH:MM` / `-HH:MM` offset.
fn parse_ts(ts: &str) -> Option<i64> {
    if let Some(ms) = parse_rfc3339_ms(ts) {
        return Some(ms);
    }
    let (base, offset) = ts.split_at(ts.len().checked_sub(6)?);
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = offset[1..].split_once(':')?;
    let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
    let utc = parse_rfc3339_ms(&format!("{base}Z"))?;
    Some(utc - sign * minutes * 60_000)
}

fn reading(device: &Arc<str>, at: &str, item: Value, now: i64) -> Result<Reading, ApiError> {
    let r: ReadingIn = serde_json::from_value(item).map_err(|e| {
        ApiError::invalid(format!(
            "{at}: {e}; a reading is {{\"sensor\",\"value\",\"ts\"?,\"unit\"?}}"
        ))
    })?;
    let sensor_ok = !r.sensor.is_empty()
        && r.sensor.len() <= 128
        && r.sensor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !sensor_ok {
        return Err(ApiError::invalid(format!(
            "{at}.sensor {:?}: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-' (it is an MQTT topic level)",
            r.sensor
        )));
    }
    if !r.value.is_finite() {
        return Err(ApiError::invalid(format!(
            "{at}.value must be a finite number"
        )));
    }
    let ts = match &r.ts {
        None => now,
        Some(ts) => parse_ts(ts).ok_or_else(|| {
            ApiError::invalid(format!(
                "{at}.ts {ts:?} is not an RFC 3339 time: use e.g. 2026-01-01T12:00:00.000Z, or leave it out for the simulated time now"
            ))
        })?,
    };
    if let Some(unit) = &r.unit
        && unit.len() > 64
    {
        return Err(ApiError::invalid(format!(
            "{at}.unit is longer than 64 characters"
        )));
    }
    let unit_json = serde_json::to_string(&r.unit).expect("JSON serializes");
    Ok(Reading {
        device: device.clone(),
        sensor: r.sensor.into(),
        ts,
        value: r.value,
        unit_json: unit_json.into(),
        anomaly: None,
    })
}

/// Publishes readings from the device: one object or a list. Each goes to
/// `devices/{id}/telemetry/{sensor}` with the same JSON as simulated
/// readings and into the telemetry export; the answer comes after all of
/// them are published and journaled. All or none: one bad reading refuses
/// the request.
#[utoipa::path(post, path = "/api/v1/devices/{id}/telemetry", tag = "device-api",
    params(("id" = String, Path, description = "device id (the basic-auth user)")),
    request_body(content = Vec<ReadingIn>, description = "one reading or a list of them"),
    security(("device_basic" = [])),
    responses((status = 200, body = TelemetryAccepted),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn device_telemetry_create(
    State(state): State<AppState>,
    auth: DeviceAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<TelemetryAccepted>, ApiError> {
    let device: Arc<str> = auth.id.into();
    let now = state.clock.now_ms();
    let readings = match body {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_READINGS {
                return Err(ApiError::invalid(format!(
                    "send 1 to {MAX_READINGS} readings, got {}",
                    items.len()
                )));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| reading(&device, &format!("readings[{i}]"), item, now))
                .collect::<Result<Vec<_>, _>>()?
        }
        item @ Value::Object(_) => vec![reading(&device, "reading", item, now)?],
        other => {
            return Err(ApiError::invalid(format!(
                "the body must be a reading object or a list of them, not {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "a string",
                }
            )));
        }
    };
    let accepted = readings.len();
    let outcomes = state.telemetry.ingest(&state.mqtt, readings).await;
    let held = outcomes
        .iter()
        .filter(|o| matches!(o, crate::mqtt::PublishOutcome::Held))
        .count();
    Ok(Json(TelemetryAccepted { accepted, held }))
}

/// The state a device reported.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ReportedView {
    #[schema(value_type = Object)]
    pub state: Value,
    /// Simulated time of the last write; null before the first.
    pub updated_at: Option<String>,
}

impl From<Option<ReportedState>> for ReportedView {
    fn from(r: Option<ReportedState>) -> Self {
        match r {
            Some(r) => Self {
                state: Value::Object((*r.state).clone()),
                updated_at: Some(r.updated_at),
            },
            None => Self {
                state: Value::Object(Map::new()),
                updated_at: None,
            },
        }
    }
}

/// The state the device reported (`{}` before it reports any). Admins see
/// it as `reported` in `GET /devices/{id}`.
#[utoipa::path(get, path = "/api/v1/devices/{id}/state", tag = "device-api",
    params(("id" = String, Path, description = "device id (the basic-auth user)")),
    security(("device_basic" = [])),
    responses((status = 200, body = ReportedView), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(super) async fn device_state_show(
    State(state): State<AppState>,
    auth: DeviceAuth,
) -> Result<Json<ReportedView>, ApiError> {
    Ok(Json(state.fleet.reported(&auth.id)?.into()))
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid(
            "the reported state must be a JSON object, e.g. {\"firmware\":\"1.2.0\"}",
        )),
    }
}

/// Replaces the reported state (a JSON object, at most 64 KiB), stored
/// with the device.
#[utoipa::path(put, path = "/api/v1/devices/{id}/state", tag = "device-api",
    params(("id" = String, Path, description = "device id (the basic-auth user)")),
    request_body(content = Object),
    security(("device_basic" = [])),
    responses((status = 200, body = ReportedView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn device_state_replace(
    State(state): State<AppState>,
    auth: DeviceAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ReportedView>, ApiError> {
    let r = state
        .fleet
        .report(&auth.id, object(body)?, ReportMode::Replace)
        .await?;
    Ok(Json(Some(r).into()))
}

/// Merges into the reported state (JSON merge patch, RFC 7396: keys are
/// set, nested objects merged, `null` removes a key).
#[utoipa::path(patch, path = "/api/v1/devices/{id}/state", tag = "device-api",
    params(("id" = String, Path, description = "device id (the basic-auth user)")),
    request_body(content = Object),
    security(("device_basic" = [])),
    responses((status = 200, body = ReportedView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn device_state_update(
    State(state): State<AppState>,
    auth: DeviceAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ReportedView>, ApiError> {
    let r = state
        .fleet
        .report(&auth.id, object(body)?, ReportMode::Merge)
        .await?;
    Ok(Json(Some(r).into()))
}

/// Longest long poll for a command.
pub(super) const MAX_POLL_MS: u64 = 60_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct NextQuery {
    /// Wait up to this long (wall ms, 0 to 60,000; default 0) for a
    /// command.
    pub wait_ms: Option<u64>,
}

/// The next command for the device (long poll): answers with
/// `{"id","name","params","attempt"}` as soon as one is waiting for it
/// (including one sent while the poll waits) and not yet fetched in its
/// current attempt, or 204 when none came within `wait_ms`. A command to an HTTP
/// device is delivered when the device polls: its `timeout_ms` runs from
/// the fetch, and one never fetched expires after its `ttl_ms`. A retry repeats the id with a higher `attempt`. The device is
/// online while it polls, however long the wait.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/next", tag = "device-api",
    params(("id" = String, Path, description = "device id (the basic-auth user)"), NextQuery),
    security(("device_basic" = [])),
    responses((status = 200, body = crate::commands::CommandMessage),
        (status = 204, description = "no command within wait_ms"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn device_commands_next(
    State(state): State<AppState>,
    auth: DeviceAuth,
    ApiQuery(q): ApiQuery<NextQuery>,
) -> Result<Response, ApiError> {
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > MAX_POLL_MS {
        return Err(ApiError::invalid(format!(
            "wait_ms {wait_ms} is too long: use 0 to {MAX_POLL_MS} and poll again"
        )));
    }
    let _listening = state.fleet.http_long_poll(&auth.id);
    let wait = std::time::Duration::from_millis(wait_ms);
    match state.commands.next_for(&auth.id, wait).await {
        Some(message) => Ok(Json(message).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// A device's answer to a command, as it posts it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AckIn {
    /// `received`, `completed`, `rejected` or `failed`.
    pub status: crate::commands::AckStatus,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// Acknowledges a command (the same statuses as an MQTT ack on
/// `devices/{id}/acks/{command_id}`); answers with the command as it is now.
#[utoipa::path(post, path = "/api/v1/devices/{id}/acks/{command_id}", tag = "device-api",
    params(("id" = String, Path, description = "device id (the basic-auth user)"),
        ("command_id" = String, Path, description = "the command's id")),
    request_body = AckIn,
    security(("device_basic" = [])),
    responses((status = 200, body = crate::commands::CommandView),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "no such command for this device", body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn device_acks_create(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(path): Path<(String, String)>,
    ApiJson(ack): ApiJson<AckIn>,
) -> Result<Json<crate::commands::CommandView>, ApiError> {
    let command_id = path.1;
    let ack = crate::commands::DeviceAck {
        status: ack.status,
        result: ack.result,
    };
    let view = state.commands.ack(&auth.id, &command_id, ack).await?;
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_offsets() {
        let z = parse_ts("2026-01-01T12:00:00.000Z").unwrap();
        assert_eq!(parse_ts("2026-01-01T13:30:00+01:30"), Some(z));
        assert_eq!(parse_ts("2026-01-01T10:00:00.000-02:00"), Some(z));
        assert_eq!(parse_ts("yesterday"), None);
        assert_eq!(parse_ts("2026-01-01T12:00:00*01:00"), None);
    }
}
