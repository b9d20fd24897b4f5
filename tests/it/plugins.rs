//! Plugins: hot reload from the watched folder and over HTTP, refusal of
//! bad components with the old version serving, containment of runaway
//! plugins.

use std::time::Duration;

use iotmock::PluginLimits;
use serde_json::json;

use crate::support::{TestServer, test_plugin, test_plugin_bytes};

/// One device with one sensor read from plugin `probe` every 20 ms.
const PROBE_SCENARIO: &str = r#"
[[fleet]]
id = "p-1"
[[fleet.sensors]]
plugin = "probe"
interval_ms = 20
"#;

fn value_of(message: &crate::support::Message) -> f64 {
    message.json()["value"].as_f64().expect("numeric value")
}

/// Gives the server device `p-1` reading plugin `probe` every 20 ms (the
/// plugin must be loaded: a device's sensors are checked by their plugin).
async fn add_probe_device(server: &TestServer) {
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "p-1", "sensors": [{"plugin": "probe", "interval_ms": 20}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_dropped_into_folder_then_replaced_changes_readings_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_scenario("", |c| {
        c.plugins_dir = Some(dir.path().to_path_buf());
    })
    .await;
    let mut sub = server.subscribe("devices/p-1/telemetry/probe").await;

    std::fs::copy(
        test_plugin("test_fixed_one.wasm"),
        dir.path().join("probe.wasm"),
    )
    .unwrap();
    server.wait_plugin("probe", |p| p["status"] == "ok").await;
    add_probe_device(&server).await;
    let first = sub.next_where(|m| value_of(m) == 1.0).await;
    assert_eq!(first.json()["device"], "p-1");
    let info = server.plugin("probe").await;
    assert_eq!(info["world"], "sensor");
    assert_eq!(info["source"]["kind"], "file");
    let first_version = info["version"].as_u64().unwrap();

    std::fs::copy(
        test_plugin("test_fixed_two.wasm"),
        dir.path().join("probe.wasm"),
    )
    .unwrap();
    sub.next_where(|m| value_of(m) == 2.0).await;
    let info = server.plugin("probe").await;
    assert!(info["version"].as_u64().unwrap() > first_version, "{info}");
    assert_eq!(info["status"], "ok");

    // Once the new version serves, the old one never answers again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sub.drain();
    for _ in 0..5 {
        assert_eq!(value_of(&sub.next().await), 2.0);
    }

    // Deleting the file unloads the plugin.
    std::fs::remove_file(dir.path().join("probe.wasm")).unwrap();
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    while server.get("/api/v1/plugins/probe").await.0 != 404 {
        assert!(std::time::Instant::now() < deadline, "probe never unloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_plugin_hot_swaps_and_delete_removes() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let mut sub = server.subscribe("devices/p-1/telemetry/probe").await;

    let (status, info) = server
        .put_bytes(
            "/api/v1/plugins/probe",
            test_plugin_bytes("test_fixed_one.wasm"),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["source"]["kind"], "api");
    assert_eq!(info["hash"].as_str().unwrap().len(), 64);
    add_probe_device(&server).await;
    sub.next_where(|m| value_of(m) == 1.0).await;

    let (status, _) = server
        .put_bytes(
            "/api/v1/plugins/probe",
            test_plugin_bytes("test_fixed_two.wasm"),
        )
        .await;
    assert_eq!(status, 200);
    sub.next_where(|m| value_of(m) == 2.0).await;

    let (status, _) = server.delete("/api/v1/plugins/probe").await;
    assert_eq!(status, 204);
    let (status, problem) = server.get("/api/v1/plugins/probe").await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = server.delete("/api/v1/plugins/temperature").await;
    assert_eq!(status, 409, "built-in plugins stay: {problem}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        test_plugin("test_fixed_one.wasm"),
        dir.path().join("probe.wasm"),
    )
    .unwrap();
    let server = TestServer::with_scenario(PROBE_SCENARIO, |c| {
        c.plugins_dir = Some(dir.path().to_path_buf());
    })
    .await;
    let mut sub = server.subscribe("devices/p-1/telemetry/probe").await;
    sub.next_where(|m| value_of(m) == 1.0).await;
    let version = server.plugin("probe").await["version"].as_u64().unwrap();

    // Not a component at all, written into the watched folder.
    std::fs::write(dir.path().join("probe.wasm"), b"this is not wasm").unwrap();
    let info = server
        .wait_plugin("probe", |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not a WebAssembly component"))
        })
        .await;
    assert_eq!(
        info["version"].as_u64().unwrap(),
        version,
        "old version still serving: {info}"
    );
    assert_eq!(info["status"], "ok");

    // A truncated build of the other plugin.
    let mut truncated = test_plugin_bytes("test_fixed_two.wasm");
    truncated.truncate(truncated.len() / 2);
    let (status, problem) = server.put_bytes("/api/v1/plugins/probe", truncated).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["status"], 422);
    assert!(
        problem["detail"].as_str().unwrap().contains("probe"),
        "{problem}"
    );

    // A component of another world.
    let (status, problem) = server
        .put_bytes(
            "/api/v1/plugins/probe",
            test_plugin_bytes("test_edge_pass.wasm"),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("edge-rule") && detail.contains("sensor"),
        "{detail}"
    );

    // A component importing what the host does not give, named in the error.
    let (status, problem) = server
        .put_bytes(
            "/api/v1/plugins/sneaky",
            test_plugin_bytes("test_foreign_import.wasm"),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("acme:sneaky/net"),
        "{problem}"
    );
    // Refused over the API under a new name: the answer said why, and no
    // plugin of that name is listed.
    let (status, _) = server.get("/api/v1/plugins/sneaky").await;
    assert_eq!(status, 404);

    // Through all of it the first version kept serving.
    let info = server.plugin("probe").await;
    assert_eq!(info["version"].as_u64().unwrap(), version);
    assert!(
        info["last_error"].as_str().unwrap().contains("edge-rule"),
        "{info}"
    );
    sub.drain();
    for _ in 0..3 {
        assert_eq!(value_of(&sub.next().await), 1.0);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_plugins_are_stopped_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    for (file, name) in [
        ("test_spin.wasm", "spin"),
        ("test_hog.wasm", "hog"),
        ("test_crash.wasm", "crash"),
        ("test_fixed_one.wasm", "probe"),
    ] {
        std::fs::copy(test_plugin(file), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    let scenario = r#"
[[fleet]]
id = "bad-1"
sensors = [
  { plugin = "spin", interval_ms = 200 },
  { plugin = "hog", interval_ms = 200 },
  { plugin = "crash", interval_ms = 200 },
]
[[fleet]]
id = "good-1"
sensors = [{ plugin = "probe", interval_ms = 20 }]
"#;
    let server = TestServer::with_scenario(scenario, |c| {
        c.plugins_dir = Some(dir.path().to_path_buf());
        c.plugin_limits = PluginLimits {
            call_timeout: Duration::from_millis(100),
            max_memory_bytes: 8 << 20,
            ..PluginLimits::default()
        };
    })
    .await;

    // A plugin that keeps hitting its deadline goes on to quarantine.
    let unhealthy =
        |p: &serde_json::Value| p["status"] == "unhealthy" || p["status"] == "quarantined";
    let spin = server.wait_plugin("spin", unhealthy).await;
    assert!(
        spin["last_error"]
            .as_str()
            .unwrap()
            .contains("deadline of 100 ms"),
        "{spin}"
    );
    let hog = server.wait_plugin("hog", unhealthy).await;
    assert!(
        hog["last_error"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{hog}"
    );
    let crash = server.wait_plugin("crash", unhealthy).await;
    assert!(
        crash["last_error"].as_str().unwrap().contains("trapped"),
        "{crash}"
    );

    // Each keeps failing on every call (a fresh instance each time), and
    // the others keep serving.
    let failures = server.plugin("spin").await["failures"].as_u64().unwrap();
    let mut sub = server.subscribe("devices/good-1/telemetry/probe").await;
    for _ in 0..5 {
        assert_eq!(value_of(&sub.next().await), 1.0);
    }
    server
        .wait_plugin("spin", |p| p["failures"].as_u64().unwrap() > failures)
        .await;
    let (status, health) = server.get("/api/v1/health").await;
    assert_eq!(status, 200);
    assert!(
        health["telemetry"]["sample_failed"].as_u64().unwrap() >= 3,
        "{health}"
    );
    assert_eq!(server.plugin("probe").await["status"], "ok");
    let (status, _) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic": "still/up", "payload": "yes"}),
        )
        .await;
    assert_eq!(status, 202);
    server.stop().await;
}
