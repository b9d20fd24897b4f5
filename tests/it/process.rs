//! The `iotmock` binary as a user runs it: the ready line, clean shutdown
//! on SIGTERM, clear errors.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::process::{BIN, read_ready_line, serve_ephemeral, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_ready_line_and_stops_on_sigterm() {
    let mut child = serve_ephemeral()
        .args(["--scenario", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iotmock");
    let line = read_ready_line(&mut child);
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
    let output = serve_ephemeral()
        .arg("--scenario")
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
    let output = Command::new(BIN).arg("scenario").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[[fleet]]") && text.contains("temperature"));
}

/// Starts `iotmock serve ARGS` and returns its ready line, or its exit and
/// stderr when it stops instead.
fn start(args: &[&str]) -> Result<(std::process::Child, serde_json::Value), (bool, String)> {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iotmock");
    let line = read_ready_line(&mut child);
    if line.is_empty() {
        let output = child.wait_with_output().unwrap();
        return Err((
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok((
        child,
        serde_json::from_str(&line).expect("ready line is JSON"),
    ))
}

/// A port nothing listens on (right now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_port_in_use_is_one_sentence_naming_the_flag_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for flag in ["--mqtt", "--http", "--mock-http"] {
        let mut args = vec!["--scenario", "none"];
        for other in ["--mqtt", "--http"] {
            if other != flag {
                args.extend([other, "127.0.0.1:0"]);
            }
        }
        args.extend([flag, addr.as_str()]);
        let (ok, stderr) = start(&args).map(|(c, _)| stop(c)).unwrap_err();
        assert!(!ok, "{flag}: exit code 1");
        let sentence = format!("{flag} {addr} is in use");
        assert!(stderr.contains(&sentence), "{flag}: {stderr}");
        assert!(
            stderr.contains(&format!("pass {flag} 127.0.0.1:0 for a free port")),
            "{flag}: {stderr}"
        );
        assert_eq!(
            stderr.matches("in use").count(),
            1,
            "the cause is said once: {stderr}"
        );
        // Checked before anything started: no broker, no fleet.
        assert!(!stderr.contains("fleet ready"), "{flag}: {stderr}");
    }
}

#[test]
fn a_bare_port_and_a_host_name_are_accepted_as_addresses() {
    let (http, mqtt) = (free_port(), free_port());
    let (child, ready) = start(&[
        "--scenario",
        "none",
        "--http",
        &http.to_string(),
        "--mqtt",
        &format!("localhost:{mqtt}"),
    ])
    .unwrap_or_else(|(_, stderr)| panic!("did not start: {stderr}"));
    assert_eq!(ready["http"], format!("127.0.0.1:{http}"));
    assert!(
        ready["mqtt"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{mqtt}")),
        "{ready}"
    );
    stop(child);

    let output = Command::new(BIN)
        .args(["serve", "--http", "http://localhost:8080"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PORT") && stderr.contains("HOST:PORT") && stderr.contains("IP:PORT"),
        "the accepted forms are shown: {stderr}"
    );
}

#[test]
fn serve_help_names_the_ready_line_environment_and_exit_codes() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for part in [
        r#"{"event":"ready","http":"#,
        "RUST_LOG",
        "IOTMOCK_CACHE_DIR",
        "IOTMOCK_ADMIN_PASSWORD",
        "Exit codes",
        "--start-time",
        "2026-01-01T00:00:00Z",
    ] {
        assert!(
            help.contains(part),
            "{part} missing from serve --help:\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_time_moves_the_first_reading() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("one.toml");
    std::fs::write(
        &scenario,
        "[[fleet]]\nid = \"t-1\"\n[[fleet.sensors]]\nplugin = \"temperature\"\ninterval_ms = 1000\n",
    )
    .unwrap();
    let first_ts = |start: Option<&str>| {
        let scenario = scenario.clone();
        let start = start.map(str::to_string);
        async move {
            let mut args = vec![
                "--http",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--clock",
                "manual",
                "--scenario",
                scenario.to_str().unwrap(),
            ];
            if let Some(start) = &start {
                args.extend(["--start-time", start.as_str()]);
            }
            let (child, ready) = start_or_panic(&args);
            let base = format!("http://{}", ready["http"].as_str().unwrap());
            let http = reqwest::Client::new();
            let advanced = http
                .post(format!("{base}/api/v1/clock/advance"))
                .json(&serde_json::json!({"ms": 2000}))
                .send()
                .await
                .unwrap();
            assert_eq!(advanced.status(), 200);
            let export = http
                .get(format!("{base}/api/v1/telemetry?device=t-1&limit=1"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            stop(child);
            let first: serde_json::Value =
                serde_json::from_str(export.lines().next().expect("one reading")).unwrap();
            iotmock::parse_rfc3339_ms(first["ts"].as_str().unwrap()).unwrap()
        }
    };
    let default = first_ts(None).await;
    let epoch = iotmock::MANUAL_EPOCH_MS;
    assert!((epoch..epoch + 1000).contains(&default), "{default}");
    let moved = first_ts(Some("2026-06-01T09:00:00+02:00")).await;
    let start = iotmock::parse_rfc3339_ms("2026-06-01T07:00:00Z").unwrap();
    assert!((start..start + 1000).contains(&moved), "{moved}");
    // The same offset into the first interval: only the start moved.
    assert_eq!(moved - start, default - epoch);

    let output = Command::new(BIN)
        .args(["serve", "--start-time", "tomorrow"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RFC 3339"));
}

fn start_or_panic(args: &[&str]) -> (std::process::Child, serde_json::Value) {
    start(args).unwrap_or_else(|(_, stderr)| panic!("did not start: {stderr}"))
}
