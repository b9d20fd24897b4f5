//! Plugins over HTTP: list, upload (hot reload) and delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use super::error::{ApiBytes, ApiError, Problem};
use crate::plugin::{LoadError, PluginInfo, PluginSource};

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PluginList {
    pub items: Vec<PluginInfo>,
}

/// Every plugin: world, content hash, load time, status, last error and
/// call counts.
#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins",
    responses((status = 200, body = PluginList)))]
pub(super) async fn plugins_index(State(state): State<AppState>) -> Json<PluginList> {
    Json(PluginList {
        items: state.plugins.list(),
    })
}

/// One plugin.
#[utoipa::path(get, path = "/api/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "plugin name")),
    responses((status = 200, body = PluginInfo), (status = 404, body = Problem)))]
pub(super) async fn plugins_show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    state
        .plugins
        .info(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no plugin named {name:?} is loaded")))
}

/// Installs a component (the request body) as plugin `name`, replacing the
/// serving version atomically. A component that does not compile, imports
/// what the host does not give, or implements another world than the
/// serving version is refused, and the old version keeps serving.
#[utoipa::path(put, path = "/api/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "plugin name")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "a WebAssembly component"),
    responses((status = 200, body = PluginInfo),
        (status = 422, description = "refused; the old version keeps serving", body = Problem)))]
pub(super) async fn plugins_update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<PluginInfo>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the body is empty: send the component's bytes (application/wasm)",
        ));
    }
    state
        .plugins
        .load_async(name, body.to_vec(), PluginSource::Api)
        .await
        .map(Json)
        .map_err(load_error)
}

/// Removes a plugin. A built-in plugin cannot be removed; deleting an
/// override of one brings the built-in back.
#[utoipa::path(delete, path = "/api/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "plugin name")),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn plugins_destroy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.plugins.remove(&name).map_err(load_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn load_error(e: LoadError) -> ApiError {
    match e {
        LoadError::NotFound(_) => ApiError::not_found(e.to_string()),
        LoadError::BuiltIn { .. } => ApiError::conflict(e.to_string()),
        LoadError::WrongWorld { .. } => ApiError::conflict(e.to_string()),
        LoadError::Io { .. } => ApiError::internal(e),
        _ => ApiError::invalid(e.to_string()),
    }
}
