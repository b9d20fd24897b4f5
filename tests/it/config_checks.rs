//! Every configuration is checked before it is accepted: sensor configs by
//! their plugin (`describe`), over the API and in a scenario; plugin names
//! in a scenario as over the API; and a plugin whose calls fail says so in
//! `/plugins` while the others keep serving.

use iotmock::ScenarioChoice;
use serde_json::json;

use crate::support::TestServer;
use crate::support::process::serve_ephemeral;

fn detail(problem: &serde_json::Value) -> &str {
    problem["detail"].as_str().expect("a problem detail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_config_typo_is_a_422_naming_device_sensor_and_field() {
    let server = TestServer::with_scenario("", |_| {}).await;

    let (status, problem) = server
        .post(
            "/api/v1/devices",
            json!({"id": "th-1", "sensors": [{"plugin": "temperature", "name": "air",
                   "config": {"amplitud": 2}}]}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["status"], 422);
    let d = detail(&problem);
    for part in [
        "\"th-1\"",
        "\"air\"",
        "\"temperature\"",
        "unknown field `amplitud`",
    ] {
        assert!(d.contains(part), "{part} missing from: {d}");
    }
    // Nothing was created.
    assert_eq!(server.get("/api/v1/devices/th-1").await.0, 404);

    // A bad value names its field too.
    let (status, problem) = server
        .post(
            "/api/v1/devices",
            json!({"id": "th-1", "sensors": [{"plugin": "humidity", "config": {"noise": "high"}}]}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(detail(&problem).contains("field `noise`"), "{problem}");

    // Bulk: the template is checked once, before any device is made.
    let (status, problem) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 5, "id_pattern": "b-{n}", "template": {
                "sensors": [{"plugin": "pressure", "config": {"altitude_m": 100, "colour": "red"}}]}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let d = detail(&problem);
    assert!(
        d.contains("b-{n}") && d.contains("\"pressure\"") && d.contains("`colour`"),
        "{d}"
    );
    assert_eq!(server.get("/api/v1/devices?limit=10").await.1["total"], 0);

    // PATCH: a good device cannot be given a bad sensor config.
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "th-1", "sensors": [{"plugin": "temperature", "config": {"amplitude": 2}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let response = server
        .http
        .patch(server.url("/api/v1/devices/th-1"))
        .json(&json!({"sensors": [{"plugin": "temperature", "config": {"mean": 20, "amplitude": -1, "tau": 5}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        detail(&problem).contains("\"th-1\"") && detail(&problem).contains("`tau`"),
        "{problem}"
    );
    let device = server.get("/api/v1/devices/th-1").await.1;
    assert_eq!(device["sensors"][0]["config"], json!({"amplitude": 2}));
    server.stop().await;
}

/// Starts the binary on `scenario` and returns (success, stderr, stdout).
fn serve_scenario(scenario: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, scenario).unwrap();
    let output = serve_ephemeral()
        .arg("--scenario")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_scenario_with_a_typo_refuses_to_start_naming_device_sensor_and_field() {
    let (ok, stderr, stdout) = serve_scenario(
        r#"
[[fleet]]
id_pattern = "room-{n}"
count = 3
[[fleet.sensors]]
plugin = "temperature"
name = "air"
config = { mean = 21.0, amplitud = 2.0 }
"#,
    );
    assert!(!ok, "started: {stdout}");
    assert!(stdout.is_empty(), "no ready line: {stdout}");
    for part in [
        "typo.toml",
        "\"room-1\"",
        "\"air\"",
        "unknown field `amplitud`",
    ] {
        assert!(stderr.contains(part), "{part} missing from: {stderr}");
    }
    assert_eq!(
        stderr.matches("unknown field").count(),
        1,
        "said once: {stderr}"
    );
}

#[test]
fn misspelled_plugin_names_in_a_scenario_refuse_start_up() {
    let (ok, stderr, _) =
        serve_scenario("[[fleet]]\nid = \"a\"\n[[fleet.sensors]]\nplugin = \"temperatur\"\n");
    assert!(!ok);
    assert!(
        stderr.contains("\"a\"")
            && stderr.contains("sensors[0].plugin")
            && stderr.contains("\"temperatur\"")
            && stderr.contains("temperature"),
        "names the device, the field, and what is loaded: {stderr}"
    );

    let (ok, stderr, _) =
        serve_scenario("[[fleet]]\nid = \"a\"\ncommand_handler = \"thermostatt\"\n");
    assert!(!ok);
    assert!(
        stderr.contains("\"a\"")
            && stderr.contains("command_handler")
            && stderr.contains("\"thermostatt\""),
        "{stderr}"
    );

    let (ok, stderr, _) = serve_scenario(
        "[[edge_node]]\nid = \"gw\"\ndevices = { tag = \"x\" }\n[[edge_node.rules]]\nplugin = \"edge-treshold\"\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("\"gw\"") && stderr.contains("edge-treshold"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_calls_fail_shows_failing_and_others_keep_serving() {
    // `probe` starts as a plugin that takes any config; then a stricter
    // version (the temperature model) replaces it, which refuses the
    // config its device already has: every call fails from then on.
    let server = TestServer::with_scenario(
        r#"
[[fleet]]
id = "good"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 50
"#,
        |_| {},
    )
    .await;
    let (status, body) = server
        .put_bytes(
            "/api/v1/plugins/probe",
            crate::support::test_plugin_bytes("test_fixed_one.wasm"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "odd", "sensors": [{"plugin": "probe", "interval_ms": 50,
                   "config": {"scale": 3}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.plugin("probe").await["status"], "ok");

    let temperature = crate::support::shipped_plugin_bytes("temperature");
    let (status, body) = server.put_bytes("/api/v1/plugins/probe", temperature).await;
    assert_eq!(status, 200, "{body}");
    let probe = server
        .wait_plugin("probe", |p| p["status"] == "failing")
        .await;
    assert!(
        probe["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown field `scale`"),
        "{probe}"
    );

    // The other plugin and its device carry on.
    let mut sub = server.subscribe("devices/good/telemetry/temperature").await;
    sub.next().await;
    assert_eq!(server.plugin("temperature").await["status"], "ok");
    assert_eq!(server.plugin("probe").await["status"], "failing");

    // A config refused when it is checked is the plugin doing its job, not
    // a failure of the plugin.
    let (status, _) = server
        .post(
            "/api/v1/devices",
            json!({"id": "typo", "sensors": [{"plugin": "temperature", "config": {"amplitud": 1}}]}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(server.plugin("temperature").await["status"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_and_a_good_scenario_still_start() {
    let server = TestServer::with_scenario("", |c| c.scenario = ScenarioChoice::Demo).await;
    assert_eq!(server.get("/api/v1/devices?limit=100").await.1["total"], 10);
    server.stop().await;
}
