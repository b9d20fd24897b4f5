//! The REST API (axum): one router used by the server and by tests, one
//! file per resource, errors as problem+json. Handlers only translate
//! between HTTP and the modules' handles.

mod admin;
mod certificates;
mod commands;
mod device_api;
mod devices;
mod edge;
mod error;
mod mqtt;
mod openapi_errors;
mod plugins;
pub(crate) mod serve;
mod stubs;
mod system;
mod telemetry;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use utoipa::OpenApi;

pub use admin::{AdminToken, EmptyToken};
pub(crate) use error::{ApiError, Problem};
use openapi_errors::ErrorResponses;
pub use serve::HttpLimits;
pub(crate) use serve::{ListenerCounters, ListenerStats};

use crate::clock::Clock;
use crate::commands::Commands;
use crate::edge::EdgeNodes;
use crate::fleet::Fleet;
use crate::mqtt::MqttHandle;
use crate::plugin::PluginHost;
use crate::stubs::Stubs;
use crate::telemetry::Telemetry;

/// Largest plugin component accepted over HTTP.
const MAX_PLUGIN_BYTES: usize = 64 << 20;
/// Largest bulk-provisioning body (the template is small; this is slack).
const MAX_BULK_BYTES: usize = 16 << 20;
/// Largest other JSON body.
const MAX_JSON_BYTES: usize = 2 << 20;
/// Default of `--max-advance`: the longest span one `POST /clock/advance`
/// moves the clock (a day), so that one request cannot keep the server busy
/// for hours; advance again for more.
pub(crate) const DEFAULT_MAX_ADVANCE_MS: i64 = 86_400_000;

#[derive(Clone, Copy)]
pub(crate) struct Addrs {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

/// What handlers reach: handles of the modules, each cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub addrs: Addrs,
    pub simulation: crate::simulation::Simulation,
    pub clock: Clock,
    pub plugins: PluginHost,
    pub mqtt: MqttHandle,
    pub telemetry: Telemetry,
    pub fleet: Fleet,
    pub edge: EdgeNodes,
    pub stubs: Stubs,
    pub commands: Commands,
    /// The decoders of what clients publish in a dialect (their counters).
    pub inbound: crate::inbound::Inbound,
    /// Required on the admin routes when set.
    pub admin_token: Option<AdminToken>,
    /// The CA, device certificates' issuer, TLS counters.
    pub tls: std::sync::Arc<crate::transport::Tls>,
    pub limits: ApiLimits,
}

/// Bounds on the work and connections clients can cause.
#[derive(Clone)]
pub(crate) struct ApiLimits {
    pub http: HttpLimits,
    pub max_advance_ms: i64,
    pub api_connections: std::sync::Arc<ListenerStats>,
    pub mock_connections: Option<std::sync::Arc<ListenerStats>>,
    pub https_connections: Option<std::sync::Arc<ListenerStats>>,
    pub mock_https_connections: Option<std::sync::Arc<ListenerStats>>,
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
        telemetry::telemetry_stream,
        devices::devices_create,
        devices::devices_bulk_create,
        devices::devices_index,
        devices::devices_show,
        devices::devices_update,
        devices::devices_destroy,
        devices::devices_rotate_credentials,
        devices::devices_connectivity,
        certificates::devices_certificates_create,
        certificates::devices_certificates_index,
        certificates::devices_certificates_destroy,
        certificates::ca_show,
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
        mqtt::mqtt_faults_create,
        mqtt::mqtt_faults_index,
        mqtt::mqtt_faults_destroy,
        mqtt::mqtt_faults_clear,
        mqtt::mqtt_drops_index,
        edge::edge_nodes_create,
        edge::edge_nodes_index,
        edge::edge_nodes_show,
        edge::edge_nodes_uplink,
        edge::edge_nodes_destroy,
        device_api::device_telemetry_create,
        device_api::device_state_show,
        device_api::device_state_replace,
        device_api::device_state_update,
        device_api::device_commands_next,
        device_api::device_acks_create,
        stubs::stubs_create,
        stubs::stubs_index,
        stubs::stubs_show,
        stubs::stubs_destroy,
        stubs::stubs_clear,
        stubs::http_requests,
        stubs::http_verify,
        stubs::mock_prefixed,
    ),
    components(schemas(Problem, stubs::NoStubMatched)),
    modifiers(&DeviceBasicAuth, &ErrorResponses)
)]
struct ApiDoc;

/// The HTTP device API's security scheme: the device's own credentials.
struct DeviceBasicAuth;

impl utoipa::Modify for DeviceBasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// The OpenAPI document of every route.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(crate) fn router(state: AppState) -> Router {
    let admin = Router::new()
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
        .route("/telemetry/stream", get(telemetry::telemetry_stream))
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
        .route(
            "/devices/{id}/certificates",
            post(certificates::devices_certificates_create)
                .get(certificates::devices_certificates_index),
        )
        .route(
            "/devices/{id}/certificates/{serial}",
            axum::routing::delete(certificates::devices_certificates_destroy),
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
        .route("/mqtt/outage", post(mqtt::mqtt_outage))
        .route(
            "/mqtt/faults",
            get(mqtt::mqtt_faults_index)
                .post(mqtt::mqtt_faults_create)
                .delete(mqtt::mqtt_faults_clear),
        )
        .route("/mqtt/drops", get(mqtt::mqtt_drops_index))
        .route(
            "/mqtt/faults/{id}",
            axum::routing::delete(mqtt::mqtt_faults_destroy),
        )
        .route(
            "/edge-nodes",
            post(edge::edge_nodes_create).get(edge::edge_nodes_index),
        )
        .route(
            "/edge-nodes/{id}",
            get(edge::edge_nodes_show).delete(edge::edge_nodes_destroy),
        )
        .route("/edge-nodes/{id}/uplink", post(edge::edge_nodes_uplink))
        .route(
            "/stubs",
            post(stubs::stubs_create)
                .get(stubs::stubs_index)
                .delete(stubs::stubs_clear),
        )
        .route(
            "/stubs/{id}",
            get(stubs::stubs_show).delete(stubs::stubs_destroy),
        )
        .route("/http/requests", get(stubs::http_requests))
        .route("/http/verify", post(stubs::http_verify))
        // Layered before the open routes are merged: only these need the
        // admin token.
        .layer(axum::middleware::from_fn_with_state(
            state.admin_token.clone(),
            admin::require_admin,
        ));
    let api = admin
        .route("/health", get(system::health_show))
        .route("/ca.pem", get(certificates::ca_show))
        .merge(device_api_routes(state.clone()));
    Router::new()
        .nest("/api/v1", api)
        .route("/mock", any(stubs::mock_prefixed))
        .route("/mock/{*path}", any(stubs::mock_prefixed))
        .route("/metrics", get(system::metrics_show))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(state)
}

/// The routes devices call with their own credentials; every request is
/// journaled (`GET /http/requests`).
fn device_api_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/devices/{id}/telemetry",
            post(device_api::device_telemetry_create),
        )
        .route(
            "/devices/{id}/state",
            get(device_api::device_state_show)
                .put(device_api::device_state_replace)
                .patch(device_api::device_state_update),
        )
        .route(
            "/devices/{id}/commands/next",
            get(device_api::device_commands_next),
        )
        .route(
            "/devices/{id}/acks/{command_id}",
            post(device_api::device_acks_create),
        )
        .layer(axum::middleware::from_fn_with_state(
            state,
            device_api::journal_device_api,
        ))
}

/// The `--mock-http` server: every path goes to the stubs as it is.
pub(crate) fn mock_router(state: AppState) -> Router {
    Router::new().fallback(stubs::mock_root).with_state(state)
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
