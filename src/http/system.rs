//! Health, clock and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::clock::rfc3339_ms;
use crate::commands::CommandCounters;
use crate::telemetry::TelemetryCounters;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// Always "ok" while the server answers.
    pub status: &'static str,
    pub version: &'static str,
    pub http: String,
    pub mqtt: String,
    pub clock: ClockView,
    pub telemetry: TelemetryCounters,
    pub commands: CommandCounters,
    /// What clients published in the dialects devices use, as the codecs
    /// read it (null before the decoders start).
    pub dialects: Option<crate::inbound::InboundCounters>,
    /// The MQTT message journal (`GET /mqtt/messages`, verify).
    pub mqtt_journal: crate::mqtt::JournalStats,
    /// The broker engine's counters (drops by reason, wills, refusals).
    pub mqtt_broker: crate::mqtt::BrokerCounters,
    /// The HTTP request journal (`GET /http/requests`, verify).
    pub http_journal: crate::mqtt::JournalStats,
    /// Connections of the API listener.
    pub http_connections: super::ListenerCounters,
    /// Connections of the `--mock-http` listener, when there is one.
    pub mock_http_connections: Option<super::ListenerCounters>,
    /// Connections of the `--https` and `--mock-https` listeners.
    pub https_connections: Option<super::ListenerCounters>,
    pub mock_https_connections: Option<super::ListenerCounters>,
    /// TLS handshakes and refused client certificates by reason.
    pub tls: crate::transport::TlsCounters,
    /// What clients can make the server hold, and what was refused.
    pub limits: LimitsView,
}

/// The budgets not shown with their journals.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct LimitsView {
    /// Devices in the fleet now.
    pub devices: usize,
    /// Most devices the fleet holds (`--max-devices`).
    pub max_devices: usize,
    /// Largest rendered stub response (`--max-stub-response-bytes`).
    pub max_stub_response_bytes: usize,
    /// Stub requests answered 413 because their response would have
    /// rendered larger.
    pub stub_responses_refused: u64,
    /// The broker's limits (`--mqtt-max-packet-size`, `--mqtt-max-queued`,
    /// `--mqtt-max-queued-bytes`, ...); what they refused is counted in
    /// `mqtt_broker`.
    pub mqtt: crate::mqtt::Limits,
}

/// Whether the server is up, where it listens, and its counters.
#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, body = Health)))]
pub(super) async fn health_show(State(state): State<AppState>) -> Json<Health> {
    let mqtt = state.mqtt.status();
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        http: state.addrs.http.to_string(),
        mqtt: state.addrs.mqtt.to_string(),
        clock: clock_view(&state),
        telemetry: state.telemetry.counters(),
        commands: state.commands.counters(),
        dialects: Some(state.inbound.counters()),
        mqtt_journal: mqtt.journal,
        mqtt_broker: mqtt.broker,
        http_journal: state.stubs.journal().stats(),
        http_connections: state.limits.api_connections.counters(&state.limits.http),
        mock_http_connections: state
            .limits
            .mock_connections
            .as_ref()
            .map(|s| s.counters(&state.limits.http)),
        https_connections: state
            .limits
            .https_connections
            .as_ref()
            .map(|s| s.counters(&state.limits.http)),
        mock_https_connections: state
            .limits
            .mock_https_connections
            .as_ref()
            .map(|s| s.counters(&state.limits.http)),
        tls: state.tls.stats().counters(),
        limits: LimitsView {
            devices: state.fleet.len(),
            max_devices: state.fleet.max_devices(),
            max_stub_response_bytes: state.stubs.limits().max_response_bytes,
            stub_responses_refused: state.stubs.oversized(),
            mqtt: mqtt.limits,
        },
    })
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ClockView {
    /// realtime, manual or xN.
    pub mode: String,
    /// Simulated time, RFC 3339.
    pub now: String,
    /// Simulated time, ms since the Unix epoch.
    pub now_ms: i64,
    /// The longest span one `POST /clock/advance` may move (`--max-advance`).
    pub max_advance_ms: i64,
}

fn clock_view(state: &AppState) -> ClockView {
    let now = state.clock.now_ms();
    ClockView {
        mode: state.clock.mode().to_string(),
        now: rfc3339_ms(now),
        now_ms: now,
        max_advance_ms: state.limits.max_advance_ms,
    }
}

/// Where simulated time is.
#[utoipa::path(get, path = "/api/v1/clock", tag = "clock",
    responses((status = 200, body = ClockView)))]
pub(super) async fn clock_show(State(state): State<AppState>) -> Json<ClockView> {
    Json(clock_view(&state))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdvanceRequest {
    /// How far to move a manual clock, ms.
    pub ms: i64,
    /// Answer only once every MQTT message the span produced has reached
    /// every connected client it was routed to: written to its socket
    /// (QoS 0) or acknowledged by it (QoS 1/2).
    #[serde(default)]
    pub wait_delivered: bool,
    /// How long `wait_delivered` waits, ms (default 10000, at most
    /// 60000); past it the answer is 504 naming the clients still waiting.
    pub wait_timeout_ms: Option<u64>,
}

/// The longest `wait_timeout_ms` of an advance.
const MAX_DELIVERY_WAIT_MS: u64 = 60_000;
/// `wait_timeout_ms` when not given.
const DEFAULT_DELIVERY_WAIT_MS: u64 = 10_000;

/// Moves a manual clock forward. Answers once every reading due in the
/// span has been published, in timestamp order, and every edge node has
/// processed the windows that closed in it; with `wait_delivered`, once
/// every MQTT message of the span has reached its connected subscribers
/// too (504 when that takes longer than `wait_timeout_ms`). A span over `max_advance_ms`
/// (`GET /clock`, `--max-advance`) is refused; when the client disconnects,
/// the clock stops where the advance had got to.
#[utoipa::path(post, path = "/api/v1/clock/advance", tag = "clock",
    request_body = AdvanceRequest,
    responses((status = 200, body = ClockView),
        (status = 409, description = "the clock is not manual", body = super::error::Problem),
        (status = 422, description = "a span of 0 or less, or over the maximum; a wait over the maximum", body = super::error::Problem),
        (status = 504, description = "wait_delivered: clients had not received every message of the span in time (the clock did advance)", body = super::error::Problem)))]
pub(super) async fn clock_advance(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AdvanceRequest>,
) -> Result<Json<ClockView>, ApiError> {
    let clock_error = |e: crate::clock::ClockError| match e {
        crate::clock::ClockError::NotManual(_) => ApiError::conflict(e.to_string()),
        crate::clock::ClockError::BadStep(_) => ApiError::invalid(e.to_string()),
    };
    state.clock.check_advance(request.ms).map_err(clock_error)?;
    let max = state.limits.max_advance_ms;
    if request.ms > max {
        return Err(ApiError::invalid(format!(
            "ms: {} is more than one advance may move, {max} ms (--max-advance); advance in steps of at most that",
            request.ms
        )));
    }
    let wait_ms = request.wait_timeout_ms.unwrap_or(DEFAULT_DELIVERY_WAIT_MS);
    if wait_ms > MAX_DELIVERY_WAIT_MS {
        return Err(ApiError::invalid(format!(
            "wait_timeout_ms: {wait_ms} is more than {MAX_DELIVERY_WAIT_MS}; wait in several calls"
        )));
    }
    state
        .simulation
        .advance(request.ms)
        .await
        .map_err(clock_error)?;
    if request.wait_delivered
        && let Err(pending) = state
            .simulation
            .wait_delivered(std::time::Duration::from_millis(wait_ms))
            .await
    {
        let shown: Vec<String> = pending
            .iter()
            .take(10)
            .map(|p| {
                format!(
                    "{} ({} queued, {} unacknowledged{})",
                    p.client_id,
                    p.queued,
                    p.inflight,
                    if p.writing { ", a write under way" } else { "" }
                )
            })
            .collect();
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "delivery-timeout",
            format!(
                "the clock advanced to {}, but after {wait_ms} ms {} connected client(s) had not received every message of the span: {}{}; a QoS 1/2 subscriber must acknowledge what it receives (or pass a longer wait_timeout_ms)",
                rfc3339_ms(state.clock.now_ms()),
                pending.len(),
                shown.join(", "),
                if pending.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(Json(clock_view(&state)))
}

/// Counters in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(super) async fn metrics_show(State(state): State<AppState>) -> impl IntoResponse {
    use std::fmt::Write;
    let t = state.telemetry.counters();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP iotmock_{name} {help}\n# TYPE iotmock_{name} counter\niotmock_{name} {value}"
        );
    };
    counter(
        "telemetry_published_total",
        "Readings published.",
        t.published,
    );
    counter(
        "telemetry_dropouts_total",
        "Readings the sensor model left out.",
        t.dropouts,
    );
    counter(
        "telemetry_sample_failed_total",
        "Readings lost to failed plugin calls.",
        t.sample_failed,
    );
    counter(
        "telemetry_invalid_values_total",
        "Readings that were not finite numbers.",
        t.invalid_values,
    );
    counter(
        "telemetry_buffer_dropped_total",
        "Readings an offline buffer had no room for.",
        t.buffer_dropped,
    );
    counter(
        "telemetry_stream_missed_total",
        "Readings live stream subscribers missed because they fell behind.",
        t.stream_missed,
    );
    counter(
        "telemetry_plugin_calls_total",
        "Batched sensor plugin calls.",
        t.plugin_calls,
    );
    let c = state.commands.counters();
    counter(
        "commands_submitted_total",
        "Commands submitted.",
        c.submitted,
    );
    counter(
        "commands_deliveries_total",
        "Command sends to devices, retries included.",
        c.deliveries,
    );
    counter("commands_retries_total", "Command retries.", c.retries);
    counter("commands_acks_total", "Acks received.", c.acks);
    counter(
        "commands_acks_ignored_total",
        "Duplicate, progress and late acks.",
        c.acks_ignored,
    );
    counter(
        "commands_acks_unknown_total",
        "Acks for unknown commands.",
        c.acks_unknown,
    );
    counter(
        "commands_tap_dropped_total",
        "Acks the engine had no room for.",
        c.tap_dropped,
    );
    let mqtt = state.mqtt.status();
    counter(
        "mqtt_journal_evicted_total",
        "MQTT messages evicted from the journal (raise --journal-capacity).",
        mqtt.journal.evicted,
    );
    counter(
        "mqtt_outage_dropped_total",
        "In-process QoS 0 publishes dropped while the broker was down.",
        mqtt.outage_policy.dropped,
    );
    counter(
        "mqtt_outage_evicted_total",
        "Publishes held during an outage that the full buffer evicted.",
        mqtt.outage_policy.held_evicted,
    );
    let b = mqtt.broker;
    for (name, help, value) in [
        (
            "mqtt_received_total",
            "Messages the broker accepted for routing.",
            b.received,
        ),
        (
            "mqtt_deliveries_total",
            "Deliveries queued for sessions.",
            b.deliveries,
        ),
        (
            "mqtt_dropped_queue_full_total",
            "Messages dropped at a full session queue.",
            b.dropped_queue_full,
        ),
        (
            "mqtt_dropped_expired_total",
            "Messages that expired before they were sent.",
            b.dropped_expired,
        ),
        (
            "mqtt_dropped_too_large_total",
            "Messages over a client's Maximum Packet Size.",
            b.dropped_too_large,
        ),
        (
            "mqtt_dropped_fault_total",
            "Messages dropped by a fault rule.",
            b.dropped_fault,
        ),
        (
            "mqtt_wills_published_total",
            "Wills the broker published.",
            b.wills_published,
        ),
        (
            "mqtt_connections_refused_total",
            "CONNECTs answered with a refusal.",
            b.connections_refused,
        ),
        (
            "mqtt_protocol_errors_total",
            "Connections closed for a protocol error.",
            b.protocol_errors,
        ),
        (
            "mqtt_packets_too_large_total",
            "Packets over the broker's Maximum Packet Size, refused.",
            b.packets_too_large,
        ),
        (
            "mqtt_publishers_paced_total",
            "Times a publisher was read no faster than a congested subscriber drained.",
            b.publishers_paced,
        ),
        (
            "mqtt_subscribers_stalled_total",
            "Times a congested subscriber stopped reading and publishers stopped waiting for it.",
            b.subscribers_stalled,
        ),
    ] {
        counter(name, help, value);
    }
    let http_journal = state.stubs.journal().stats();
    counter(
        "http_journal_evicted_total",
        "HTTP requests evicted from the journal (raise --http-journal-capacity or --http-journal-max-bytes).",
        http_journal.evicted,
    );
    counter(
        "stub_responses_refused_total",
        "Stub requests answered 413: the response would have rendered larger than --max-stub-response-bytes.",
        state.stubs.oversized(),
    );
    counter(
        "telemetry_journal_evicted_total",
        "Readings evicted from the telemetry export journal.",
        t.journal.evicted,
    );
    counter(
        "telemetry_stream_missed_by_bytes_total",
        "Readings live stream subscribers missed because all their queues together were at --stream-max-bytes.",
        t.stream_missed_by_bytes,
    );
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP iotmock_{name} {help}\n# TYPE iotmock_{name} gauge\niotmock_{name} {value}"
        );
    };
    for (name, what, j) in [
        ("mqtt_journal", "the MQTT message journal", mqtt.journal),
        ("http_journal", "the HTTP request journal", http_journal),
        (
            "telemetry_journal",
            "the telemetry export journal",
            t.journal,
        ),
    ] {
        gauge(
            &format!("{name}_bytes"),
            &format!("Bytes held by {what}."),
            j.bytes as u64,
        );
        gauge(
            &format!("{name}_max_bytes"),
            &format!("Byte budget of {what}."),
            j.max_bytes as u64,
        );
        gauge(
            &format!("{name}_entries"),
            &format!("Entries held by {what}."),
            j.len as u64,
        );
    }
    gauge(
        "telemetry_stream_queued_bytes",
        "Bytes queued for live telemetry stream subscribers, over all of them.",
        t.stream_queued_bytes,
    );
    gauge(
        "telemetry_stream_max_bytes",
        "Byte budget of all live stream queues together.",
        t.stream_max_bytes,
    );
    gauge("devices", "Devices in the fleet.", state.fleet.len() as u64);
    gauge(
        "mqtt_max_packet_size_bytes",
        "The largest MQTT packet a client may send (--mqtt-max-packet-size).",
        mqtt.limits.max_packet_size as u64,
    );
    gauge(
        "mqtt_max_queued_bytes_per_session",
        "Bytes queued per MQTT session before the oldest is dropped (--mqtt-max-queued-bytes).",
        mqtt.limits.max_queued_bytes_per_session as u64,
    );
    gauge(
        "max_devices",
        "Most devices the fleet holds (--max-devices).",
        state.fleet.max_devices() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP iotmock_mqtt_clients Connected MQTT clients.\n# TYPE iotmock_mqtt_clients gauge\niotmock_mqtt_clients {}",
        mqtt.clients
    );
    let _ = writeln!(
        out,
        "# HELP iotmock_commands Commands by state.\n# TYPE iotmock_commands gauge"
    );
    for (status, n) in &c.by_status {
        let _ = writeln!(out, "iotmock_commands{{status=\"{status}\"}} {n}");
    }
    let tls = state.tls.stats().counters();
    let _ = writeln!(
        out,
        "# HELP iotmock_tls_handshakes_total Completed TLS handshakes (MQTT and HTTP).\n# TYPE iotmock_tls_handshakes_total counter\niotmock_tls_handshakes_total {}\n# HELP iotmock_tls_client_certificates_total TLS handshakes with a verified client certificate.\n# TYPE iotmock_tls_client_certificates_total counter\niotmock_tls_client_certificates_total {}",
        tls.handshakes, tls.with_certificate
    );
    let _ = writeln!(
        out,
        "# HELP iotmock_tls_refused_total TLS clients refused, by reason (certificate checks at the handshake and at MQTT CONNECT).\n# TYPE iotmock_tls_refused_total counter"
    );
    for (reason, n) in &tls.refused {
        let _ = writeln!(out, "iotmock_tls_refused_total{{reason=\"{reason}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP iotmock_telemetry_streams Active sensor streams.\n# TYPE iotmock_telemetry_streams gauge\niotmock_telemetry_streams {}",
        t.streams
    );
    for p in state.plugins.list() {
        let _ = writeln!(
            out,
            "iotmock_plugin_calls_total{{plugin=\"{}\"}} {}",
            p.name, p.calls
        );
        let _ = writeln!(
            out,
            "iotmock_plugin_failures_total{{plugin=\"{}\"}} {}",
            p.name, p.failures
        );
    }
    state.edge.write_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
