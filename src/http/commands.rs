//! Commands: send to a device or a selection of the fleet, follow their
//! states (long-poll until final), list, cancel.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, Problem};
use crate::commands::{
    BatchView, CommandError, CommandFilter, CommandPage, CommandRequest, CommandView,
    FleetCommandRequest,
};

/// The longest a long-poll may wait.
const MAX_WAIT_MS: u64 = 60_000;

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NoDevice(_) | CommandError::NotFound(_) | CommandError::NoBatch(_) => {
                ApiError::not_found(e.to_string())
            }
            CommandError::Invalid(_) => ApiError::invalid(e.to_string()),
            CommandError::Conflict(_) => ApiError::conflict(e.to_string()),
            CommandError::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", e.to_string())
            }
            CommandError::Store(_) => ApiError::storage(e),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    /// Wait up to this long (wall ms, at most 60,000) for a final state.
    pub wait_ms: Option<u64>,
}

fn wait_of(q: &WaitQuery) -> Result<Option<Duration>, ApiError> {
    match q.wait_ms {
        None | Some(0) => Ok(None),
        Some(ms) if ms <= MAX_WAIT_MS => Ok(Some(Duration::from_millis(ms))),
        Some(ms) => Err(ApiError::invalid(format!(
            "wait_ms: {ms} is too long; use 0 to {MAX_WAIT_MS}"
        ))),
    }
}

/// Sends a command to a device. It is delivered at once when the device is
/// online, else it waits (up to `ttl_ms`) for the device to come online.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "device id")),
    request_body = CommandRequest,
    responses((status = 202, body = CommandView),
        (status = 404, description = "no such device", body = Problem),
        (status = 409, description = "the command id is taken", body = Problem),
        (status = 422, body = Problem),
        (status = 429, description = "the device's queue is full", body = Problem)))]
pub(super) async fn commands_create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let view = state.commands.submit(&id, request).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// Sends one command to each device of a selection (`ids`, `tag`, `group`
/// or `all`); the answer lists the per-device commands and a summary.
#[utoipa::path(post, path = "/api/v1/commands", tag = "commands",
    request_body = FleetCommandRequest,
    responses((status = 202, body = BatchView),
        (status = 404, description = "a listed device does not exist", body = Problem),
        (status = 422, body = Problem),
        (status = 429, description = "a device's queue is full; nothing was sent", body = Problem)))]
pub(super) async fn commands_fleet_create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<FleetCommandRequest>,
) -> Result<(StatusCode, Json<BatchView>), ApiError> {
    let view = state.commands.submit_fleet(request).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// Lists commands, oldest first, filtered, a page at a time.
#[utoipa::path(get, path = "/api/v1/commands", tag = "commands",
    params(CommandFilter),
    responses((status = 200, body = CommandPage), (status = 422, body = Problem)))]
pub(super) async fn commands_index(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<CommandFilter>,
) -> Result<Json<CommandPage>, ApiError> {
    Ok(Json(state.commands.list(&filter)?))
}

/// A command with its history and acks; with `wait_ms`, answers as soon as
/// it is final or when the wait is over.
#[utoipa::path(get, path = "/api/v1/commands/{id}", tag = "commands",
    params(("id" = String, Path, description = "command id"), WaitQuery),
    responses((status = 200, body = CommandView), (status = 404, body = Problem)))]
pub(super) async fn commands_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<CommandView>, ApiError> {
    let view = match wait_of(&query)? {
        Some(wait) => state.commands.wait(&id, wait).await?,
        None => state.commands.get(&id)?,
    };
    Ok(Json(view))
}

/// Cancels a command that has not been delivered yet.
#[utoipa::path(post, path = "/api/v1/commands/{id}/cancel", tag = "commands",
    params(("id" = String, Path, description = "command id")),
    responses((status = 200, body = CommandView),
        (status = 404, body = Problem),
        (status = 409, description = "the command is no longer queued", body = Problem)))]
pub(super) async fn commands_cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(state.commands.cancel(&id).await?))
}

/// A fleet command's per-device outcomes and summary; with `wait_ms`,
/// answers as soon as every command is final or when the wait is over.
#[utoipa::path(get, path = "/api/v1/commands/batches/{id}", tag = "commands",
    params(("id" = String, Path, description = "fleet command id"), WaitQuery),
    responses((status = 200, body = BatchView), (status = 404, body = Problem)))]
pub(super) async fn commands_batch_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<BatchView>, ApiError> {
    let view = match wait_of(&query)? {
        Some(wait) => state.commands.wait_batch(&id, wait).await?,
        None => state.commands.batch(&id)?,
    };
    Ok(Json(view))
}
