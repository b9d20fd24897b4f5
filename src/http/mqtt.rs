//! The MQTT bridge: publish from HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiJson, Problem};
use crate::mqtt::{Qos, topics};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
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

/// Publishes a message as the server (for back ends that only speak HTTP).
#[utoipa::path(post, path = "/api/v1/mqtt/publish", tag = "mqtt",
    request_body = PublishRequest,
    responses((status = 202, description = "routed to subscribers"),
        (status = 422, body = Problem)))]
pub async fn mqtt_publish(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PublishRequest>,
) -> Result<StatusCode, ApiError> {
    topics::valid_topic_name(&request.topic)
        .map_err(|e| ApiError::invalid(format!("topic {:?}: {e}", request.topic)))?;
    let payload = match request.payload {
        serde_json::Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    state
        .mqtt
        .publish(&request.topic, payload, request.qos, request.retain)
        .await;
    Ok(StatusCode::ACCEPTED)
}
