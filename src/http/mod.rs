//! The REST API (axum): one router used by the server and by tests, one
//! file per resource, errors as problem+json. Handlers only translate
//! between HTTP and the modules' handles.

mod commands;
mod devices;
mod error;
mod mqtt;
mod plugins;
mod system;
mod telemetry;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use utoipa::OpenApi;

pub use error::{ApiError, Problem};

use crate::clock::Clock;
use crate::commands::Commands;
use crate::fleet::Fleet;
use crate::mqtt::MqttHandle;
use crate::plugin::PluginHost;
use crate::telemetry::Telemetry;

/// Largest plugin component accepted over HTTP.
const MAX_PLUGIN_BYTES: usize = 64 << 20;
/// Largest bulk-provisioning body (the template is small; this is slack).
const MAX_BULK_BYTES: usize = 16 << 20;

#[derive(Clone, Copy)]
pub struct Addrs {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

/// What handlers reach: handles of the modules, each cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub addrs: Addrs,
    pub clock: Clock,
    pub plugins: PluginHost,
    pub mqtt: MqttHandle,
    pub telemetry: Telemetry,
    pub fleet: Fleet,
    pub commands: Commands,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "iotmock",
        description = "A mock IoT platform: MQTT broker, device fleet, telemetry, commands, edge nodes and WebAssembly plugins."
    ),
    paths(
        system::health_show,
        system::clock_show,
        system::clock_advance,
        system::metrics_show,
        plugins::plugins_index,
        plugins::plugins_show,
        plugins::plugins_update,
        plugins::plugins_destroy,
        mqtt::mqtt_publish,
        telemetry::telemetry_export,
        devices::devices_create,
        devices::devices_bulk_create,
        devices::devices_index,
        devices::devices_show,
        devices::devices_update,
        devices::devices_destroy,
        devices::devices_rotate_credentials,
        devices::devices_connectivity,
        commands::commands_create,
        commands::commands_fleet_create,
        commands::commands_index,
        commands::commands_show,
        commands::commands_cancel,
        commands::commands_batch_show,
        mqtt::mqtt_messages,
        mqtt::mqtt_verify,
        mqtt::mqtt_clients,
        mqtt::mqtt_status,
        mqtt::mqtt_outage,
    ),
    components(schemas(Problem))
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(system::health_show))
        .route("/openapi.json", get(|| async { axum::Json(openapi()) }))
        .route("/clock", get(system::clock_show))
        .route("/clock/advance", post(system::clock_advance))
        .route("/plugins", get(plugins::plugins_index))
        .route(
            "/plugins/{name}",
            get(plugins::plugins_show)
                .put(plugins::plugins_update)
                .delete(plugins::plugins_destroy)
                .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/mqtt/publish", post(mqtt::mqtt_publish))
        .route("/telemetry", get(telemetry::telemetry_export))
        .route(
            "/devices",
            post(devices::devices_create).get(devices::devices_index),
        )
        .route(
            "/devices/bulk",
            post(devices::devices_bulk_create).layer(DefaultBodyLimit::max(MAX_BULK_BYTES)),
        )
        .route(
            "/devices/{id}",
            get(devices::devices_show)
                .patch(devices::devices_update)
                .delete(devices::devices_destroy),
        )
        .route(
            "/devices/{id}/credentials",
            post(devices::devices_rotate_credentials),
        )
        .route(
            "/devices/{id}/connectivity",
            post(devices::devices_connectivity),
        )
        .route("/devices/{id}/commands", post(commands::commands_create))
        .route(
            "/commands",
            post(commands::commands_fleet_create).get(commands::commands_index),
        )
        .route("/commands/{id}", get(commands::commands_show))
        .route("/commands/{id}/cancel", post(commands::commands_cancel))
        .route("/commands/batches/{id}", get(commands::commands_batch_show))
        .route("/mqtt/messages", get(mqtt::mqtt_messages))
        .route("/mqtt/verify", post(mqtt::mqtt_verify))
        .route("/mqtt/clients", get(mqtt::mqtt_clients))
        .route("/mqtt/status", get(mqtt::mqtt_status))
        .route("/mqtt/outage", post(mqtt::mqtt_outage));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(system::metrics_show))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {}; the API lives under /api/v1 (see /api/v1/openapi.json)",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{} is not allowed on {}; see /api/v1/openapi.json",
            method,
            uri.path()
        ),
    )
}
