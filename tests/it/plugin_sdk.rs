//! The plugin SDK from a plugin author's side: `iotmock plugin new` makes a
//! crate outside the checkout, one cargo command builds it, and the
//! component hot-reloads into a running server through its plugins folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::support::TestServer;

/// Runs `iotmock plugin new NAME --world WORLD --dir PARENT`.
fn scaffold(name: &str, world: &str, parent: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_iotmock"))
        .args(["plugin", "new", name, "--world", world, "--dir"])
        .arg(parent)
        .output()
        .expect("run iotmock plugin new");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plugin new {name}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cargo build --release --target wasm32-wasip2"),
        "{stdout}"
    );
    let dir = parent.join(name);
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains("cargo build --release --target wasm32-wasip2"),
        "{readme}"
    );
    dir
}

/// Builds a scaffolded crate with the README's one command, offline (the
/// dependencies are those of `plugins/`, already in cargo's cache), into a
/// target folder shared by test runs so that only the crate itself is
/// compiled again. Returns the component.
fn build(dir: &Path) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plugin-scaffolds");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--offline",
        ])
        .env("CARGO_TARGET_DIR", &target);
    // As a user's shell would have it: none of the outer build's settings.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.file_name().unwrap().to_str().unwrap().replace('-', "_");
    let wasm = target.join(format!("wasm32-wasip2/release/{file}.wasm"));
    assert!(wasm.exists(), "{} was not built", wasm.display());
    wasm
}

fn value_of(message: &crate::support::Message) -> f64 {
    message.json()["value"].as_f64().expect("numeric value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffolded_plugins_build_outside_the_checkout_and_hot_reload() {
    let work = tempfile::tempdir().unwrap();
    let sensor = scaffold("probe-sensor", "sensor", work.path());
    let handler = scaffold("probe-handler", "command-handler", work.path());
    let rule = scaffold("probe-rule", "edge-rule", work.path());
    // The same name again is refused, and nothing is overwritten.
    let again = Command::new(env!("CARGO_BIN_EXE_iotmock"))
        .args([
            "plugin",
            "new",
            "probe-sensor",
            "--world",
            "sensor",
            "--dir",
        ])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let plugins = tempfile::tempdir().unwrap();
    let server = TestServer::with_scenario("", |c| {
        c.plugins_dir = Some(plugins.path().to_path_buf());
    })
    .await;

    // Sensor: dropped into the folder of a running server, it loads and
    // produces readings from the template's model (with no step, a walk
    // that stays at its mean).
    std::fs::copy(build(&sensor), plugins.path().join("probe-sensor.wasm")).unwrap();
    let info = server
        .wait_plugin("probe-sensor", |p| p["status"] == "ok")
        .await;
    assert_eq!(info["world"], "sensor");
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "p-1", "sensors": [{"plugin": "probe-sensor", "interval_ms": 20, "config": {"step": 0}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut sub = server.subscribe("devices/p-1/telemetry/probe-sensor").await;
    let reading = sub.next().await;
    assert_eq!(value_of(&reading), 20.0, "{:?}", reading.json());
    assert_eq!(reading.json()["unit"], "units");
    // The SDK refuses an unknown config key by name.
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "p-2", "sensors": [{"plugin": "probe-sensor", "config": {"stpe": 0}}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `stpe`"),
        "{body}"
    );

    // Change the model, rebuild, copy again: the running server swaps it
    // in and the device's readings move towards the new mean.
    let lib = sensor.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains("mean: 20.0,"), "template changed: {source}");
    std::fs::write(&lib, source.replace("mean: 20.0,", "mean: 70.0,")).unwrap();
    let version = server.plugin("probe-sensor").await["version"].clone();
    std::fs::copy(build(&sensor), plugins.path().join("probe-sensor.wasm")).unwrap();
    server
        .wait_plugin("probe-sensor", |p| {
            p["status"] == "ok" && p["version"] != version
        })
        .await;
    sub.next_where(|m| value_of(m) > 20.0).await;

    // Command handler: a simulated device answers through it.
    std::fs::copy(build(&handler), plugins.path().join("probe-handler.wasm")).unwrap();
    let info = server
        .wait_plugin("probe-handler", |p| p["status"] == "ok")
        .await;
    assert_eq!(info["world"], "command-handler");
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "h-1", "command_handler": "probe-handler"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post("/api/v1/devices/h-1/commands", json!({"name": "ping"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .get(&format!("/api/v1/commands/{id}?wait_ms=10000"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["result"], json!({"pong": 1}), "{body}");

    // Edge rule: an edge node runs it, and its config is checked by it.
    std::fs::copy(build(&rule), plugins.path().join("probe-rule.wasm")).unwrap();
    let info = server
        .wait_plugin("probe-rule", |p| p["status"] == "ok")
        .await;
    assert_eq!(info["world"], "edge-rule");
    let node = |deadband: f64| {
        json!({"id": "n-1", "devices": {"ids": ["p-1"]},
               "rules": [{"plugin": "probe-rule", "config": {"deadband": deadband}}]})
    };
    let (status, body) = server.post("/api/v1/edge-nodes", node(-1.0)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("deadband must be 0 or more"),
        "{body}"
    );
    let (status, body) = server.post("/api/v1/edge-nodes", node(0.5)).await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_previous_wit_package_is_refused_by_name() {
    let plugins = tempfile::tempdir().unwrap();
    let server = TestServer::with_scenario("", |c| {
        c.plugins_dir = Some(plugins.path().to_path_buf());
    })
    .await;
    let old = crate::support::test_plugin_bytes("test_old_package.wasm");

    let (status, body) = server.put_bytes("/api/v1/plugins/old", old.clone()).await;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    for part in [
        "\"old\"",
        "iotmock:plugin@0.1.0",
        "iotmock:plugin@0.2.0",
        "rebuild it",
        "cargo build --release --target wasm32-wasip2",
    ] {
        assert!(detail.contains(part), "{part} missing: {detail}");
    }
    assert_eq!(server.get("/api/v1/plugins/old").await.0, 404);

    // Over a serving version in the watched folder: refused with the
    // reason, and the serving version carries on.
    std::fs::copy(
        crate::support::test_plugin("test_fixed_one.wasm"),
        plugins.path().join("old.wasm"),
    )
    .unwrap();
    let serving = server.wait_plugin("old", |p| p["status"] == "ok").await;
    std::fs::write(plugins.path().join("old.wasm"), old).unwrap();
    let info = server
        .wait_plugin("old", |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("iotmock:plugin@0.1.0"))
        })
        .await;
    assert_eq!(info["version"], serving["version"], "{info}");
    assert_eq!(info["status"], "ok", "{info}");
    server.stop().await;
}
