//! The `iotmock` binary as a user runs it: the ready line, clean shutdown
//! on SIGTERM, clear errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_ready_line_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotmock"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--scenario",
            "none",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iotmock");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
    assert_eq!(ready["event"], "ready");
    let http = ready["http"].as_str().unwrap();
    assert!(ready["mqtt"].as_str().unwrap().starts_with("127.0.0.1:"));

    let health: serde_json::Value = reqwest::get(format!("http://{http}/api/v1/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "iotmock did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
}

#[test]
fn bad_scenario_fails_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[fleet]]\nid = \"x\"\nsensorz = []\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_iotmock"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--scenario",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sensorz"), "{stderr}");
    assert!(output.stdout.is_empty(), "no ready line");
}

#[test]
fn scenario_command_prints_the_demo() {
    let output = Command::new(env!("CARGO_BIN_EXE_iotmock"))
        .arg("scenario")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[[fleet]]") && text.contains("temperature"));
}
