//! Devices: provisioning, listing, lifecycle, credentials, connectivity.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, Problem};
use crate::fleet::{
    BulkCreate, BulkCreated, ConnectivityRequest, CreateDevice, Credentials, DeviceFilter,
    DevicePage, DeviceView, FleetError, PatchDevice,
};
use crate::ids::DeviceId;

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::NotFound(_) | FleetError::NoCertificate { .. } => {
                ApiError::not_found(e.to_string())
            }
            FleetError::Duplicate(_) => ApiError::conflict(e.to_string()),
            FleetError::Invalid(_) | FleetError::TooMany { .. } => ApiError::invalid(e.to_string()),
            FleetError::Store(_) => ApiError::storage(e),
        }
    }
}

/// Provisions one device. The answer carries its MQTT credentials; the
/// password is shown only here.
#[utoipa::path(post, path = "/api/v1/devices", tag = "devices",
    request_body = CreateDevice,
    responses((status = 201, body = DeviceView),
        (status = 409, description = "the id is taken", body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn devices_create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateDevice>,
) -> Result<(StatusCode, Json<DeviceView>), ApiError> {
    let (id, template) = request.split();
    let id = DeviceId::parse(id).map_err(|e| FleetError::Invalid(e.to_string()))?;
    let view = state.fleet.create(id, template).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Provisions many devices from an id pattern and a template, in one
/// transaction (all or none).
#[utoipa::path(post, path = "/api/v1/devices/bulk", tag = "devices",
    request_body = BulkCreate,
    responses((status = 201, body = BulkCreated),
        (status = 409, description = "an id is taken; nothing was created", body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn devices_bulk_create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<BulkCreate>,
) -> Result<(StatusCode, Json<BulkCreated>), ApiError> {
    let created = state.fleet.create_bulk(request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists devices, filtered, a page at a time (ordered by id).
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    params(DeviceFilter),
    responses((status = 200, body = DevicePage), (status = 422, body = Problem)))]
pub(super) async fn devices_index(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<DeviceFilter>,
) -> Result<Json<DevicePage>, ApiError> {
    Ok(Json(state.fleet.list(&filter)?))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceView), (status = 404, body = Problem)))]
pub(super) async fn devices_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(state.fleet.get(&id)?))
}

/// Changes the fields given. `state` moves the lifecycle: `suspended`
/// refuses the device's credentials and stops its telemetry, `active`
/// brings it back, `decommissioned` is for good.
#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    request_body = PatchDevice,
    responses((status = 200, body = DeviceView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn devices_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<PatchDevice>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(state.fleet.update(&id, patch).await?))
}

/// Deletes a device, its credentials and its retained status.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn devices_destroy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.fleet.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new secret; the old one stops working at once.
#[utoipa::path(post, path = "/api/v1/devices/{id}/credentials", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Credentials), (status = 404, body = Problem)))]
pub(super) async fn devices_rotate_credentials(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Credentials>, ApiError> {
    Ok(Json(state.fleet.rotate(&id).await?))
}

/// Takes a simulated device online or offline, or makes it flaky (seeded
/// spells). Every change is published retained on `devices/{id}/status`;
/// readings taken while offline are buffered and published on return.
#[utoipa::path(post, path = "/api/v1/devices/{id}/connectivity", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    request_body = ConnectivityRequest,
    responses((status = 200, body = DeviceView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn devices_connectivity(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ConnectivityRequest>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(state.fleet.set_connectivity(&id, request).await?))
}
