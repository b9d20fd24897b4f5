//! Plugin isolation: a sensor plugin that never returns is quarantined,
//! its calls refused without reaching a worker, and a healthy fleet beside
//! it keeps its rate; once it is gone the scheduler has caught up.

use std::time::Duration;

use iotmock::ClockMode;
use iotmock::PluginLimits;
use serde_json::{Value, json};

use crate::support::{TestServer, test_plugin_bytes};

/// Healthy devices, one reading a simulated second each.
const HEALTHY: u32 = 1_000;
/// Simulated time runs this much faster than wall time.
const SPEED: f64 = 5.0;
/// Wall time each rate is measured over.
const WINDOW: Duration = Duration::from_secs(4);

/// Published readings and simulated time, from one `/health`.
async fn progress(server: &TestServer) -> (u64, i64, i64) {
    let (status, health) = server.get("/api/v1/health").await;
    assert_eq!(status, 200);
    (
        health["telemetry"]["published"].as_u64().unwrap(),
        health["clock"]["now_ms"].as_i64().unwrap(),
        health["telemetry"]["produced_until"].as_i64().unwrap(),
    )
}

/// Readings published per simulated second over [`WINDOW`].
async fn rate(server: &TestServer) -> f64 {
    let (c0, t0, _) = progress(server).await;
    tokio::time::sleep(WINDOW).await;
    let (c1, t1, _) = progress(server).await;
    (c1 - c0) as f64 * 1000.0 / (t1 - t0) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_is_quarantined_and_the_fleet_keeps_its_rate() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Accelerated(SPEED);
        c.plugin_limits = PluginLimits {
            call_timeout: Duration::from_millis(100),
            ..PluginLimits::default()
        };
    })
    .await;
    let (status, body) = server
        .put_bytes("/api/v1/plugins/spin", test_plugin_bytes("test_spin.wasm"))
        .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": HEALTHY, "id_pattern": "ok-{n:04}",
                   "template": {"sensors": [{"plugin": "temperature", "interval_ms": 1000}]}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Every device has had its first reading.
    tokio::time::sleep(Duration::from_millis((1500.0 / SPEED) as u64 + 500)).await;

    let alone = rate(&server).await;
    assert!(
        alone > 0.8 * f64::from(HEALTHY),
        "the healthy fleet alone publishes about {HEALTHY} readings a simulated second, got {alone:.0}"
    );

    // A sensor that loops forever, asked every 10 ms of simulated time.
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "spinner", "sensors": [{"plugin": "spin", "interval_ms": 10}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let beside = rate(&server).await;

    let spin = server
        .wait_plugin("spin", |p| p["status"] == "quarantined")
        .await;
    assert!(spin["quarantined_until"].is_string(), "{spin}");
    let reason = spin["quarantine_reason"].as_str().unwrap();
    assert!(
        reason.contains("ran past its deadline 3 times in a row"),
        "{spin}"
    );
    assert!(spin["refused_calls"].as_u64().unwrap() > 0, "{spin}");
    assert!(
        beside >= 0.95 * alone,
        "beside the spinning plugin the fleet published {beside:.0} readings a simulated second, alone {alone:.0}"
    );
    let (_, health) = server.get("/api/v1/health").await;
    assert!(
        health["telemetry"]["sample_failed"].as_u64().unwrap() > 0,
        "the spinner's readings are counted as failed: {health}"
    );

    // Gone: the scheduler has caught up, and the rate is what it was.
    let (status, _) = server.delete("/api/v1/devices/spinner").await;
    assert_eq!(status, 204);
    let after = rate(&server).await;
    assert!(
        after >= 0.95 * alone,
        "after the spinner left the fleet published {after:.0} readings a simulated second, alone {alone:.0}"
    );
    let (_, now, produced) = progress(&server).await;
    assert!(
        now - produced < 2_000,
        "production is {} simulated ms behind the clock",
        now - produced
    );
    let probe: Value = server.plugin("temperature").await;
    assert_eq!(probe["status"], "ok", "{probe}");
    server.stop().await;
}
