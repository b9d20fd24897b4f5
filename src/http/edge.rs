//! Edge nodes: create, list, show, uplink up/down, delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiJson, Problem};
use crate::edge::{EdgeError, EdgeNodeSpec, EdgeNodeView};

impl From<EdgeError> for ApiError {
    fn from(e: EdgeError) -> Self {
        match e {
            EdgeError::NotFound(_) => ApiError::not_found(e.to_string()),
            EdgeError::Duplicate(_) => ApiError::conflict(e.to_string()),
            EdgeError::Invalid(_) => ApiError::invalid(e.to_string()),
            EdgeError::Store(_) => ApiError::storage(e),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EdgeNodeList {
    pub items: Vec<EdgeNodeView>,
}

/// Creates an edge node: its member devices (`ids`, `tag` or `group`), a
/// pipeline of edge-rule plugins, a batching window, an uplink buffer, a
/// budget and a failure policy. Each rule's config is checked by its
/// plugin.
#[utoipa::path(post, path = "/api/v1/edge-nodes", tag = "edge",
    request_body = EdgeNodeSpec,
    responses((status = 201, body = EdgeNodeView),
        (status = 409, description = "the id is taken", body = Problem),
        (status = 422, description = "a field, plugin or rule config is not valid", body = Problem)))]
pub(super) async fn edge_nodes_create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<EdgeNodeSpec>,
) -> Result<(StatusCode, Json<EdgeNodeView>), ApiError> {
    let view = state.edge.create(spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every edge node with its counters.
#[utoipa::path(get, path = "/api/v1/edge-nodes", tag = "edge",
    responses((status = 200, body = EdgeNodeList)))]
pub(super) async fn edge_nodes_index(State(state): State<AppState>) -> Json<EdgeNodeList> {
    Json(EdgeNodeList {
        items: state.edge.list(),
    })
}

/// One edge node: state (ok or degraded, with the reason), readings in,
/// out, dropped and queued, the uplink and its buffer, per-rule calls and
/// errors, and batch latency.
#[utoipa::path(get, path = "/api/v1/edge-nodes/{id}", tag = "edge",
    params(("id" = String, Path, description = "edge node id")),
    responses((status = 200, body = EdgeNodeView), (status = 404, body = Problem)))]
pub(super) async fn edge_nodes_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EdgeNodeView>, ApiError> {
    Ok(Json(state.edge.get(&id)?))
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum UplinkState {
    Up,
    Down,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UplinkRequest {
    /// `down`: output is kept in the node's buffer; `up`: the buffer is
    /// published in order (before this call answers) and output flows again.
    pub state: UplinkState,
}

/// Takes a node's uplink down or brings it back up.
#[utoipa::path(post, path = "/api/v1/edge-nodes/{id}/uplink", tag = "edge",
    params(("id" = String, Path, description = "edge node id")),
    request_body = UplinkRequest,
    responses((status = 200, body = EdgeNodeView), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn edge_nodes_uplink(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UplinkRequest>,
) -> Result<Json<EdgeNodeView>, ApiError> {
    let up = matches!(request.state, UplinkState::Up);
    Ok(Json(state.edge.set_uplink(&id, up).await?))
}

/// Stops and removes an edge node; its uplink buffer is discarded.
#[utoipa::path(delete, path = "/api/v1/edge-nodes/{id}", tag = "edge",
    params(("id" = String, Path, description = "edge node id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn edge_nodes_destroy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.edge.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
