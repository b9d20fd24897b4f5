//! No acknowledgement without durability: with `--data-dir`, a change is
//! answered only once it is stored; one that cannot be stored is a 503
//! that says so and leaves nothing behind. A database file that is empty
//! or not iotmock's stops the start instead of an empty start.

use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::commands::RealDevice;
use crate::support::TestServer;

/// Holds a database's write lock, as a failing disk would refuse every
/// write: the server's writes wait out SQLite's busy timeout, then fail.
fn hold_write_lock(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open the database");
    conn.execute_batch("BEGIN EXCLUSIVE;")
        .expect("take the write lock");
    conn
}

fn assert_storage_failed(what: &str, status: u16, problem: &Value) {
    assert_eq!(status, 503, "{what}: {problem}");
    assert_eq!(
        problem["type"], "https://iotmock.dev/problems/storage-failed",
        "{what}: {problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("could not be stored under --data-dir, so it was not made"),
        "{what}: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_cannot_be_stored_are_refused_with_503_and_not_made() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    let (status, _) = server
        .post("/api/v1/devices", json!({"id": "gw-1", "simulated": false}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = server
        .post(
            "/api/v1/stubs",
            json!({"id": "kept", "request": {"method": "GET", "path": "/kept"},
                   "response": {"status": 200}}),
        )
        .await;
    assert_eq!(status, 201);
    // The device listens for commands: one that is sent would arrive.
    let mut device = RealDevice::connect(&server, "gw-1").await;
    // A command waits for a device that is away; cancelling it is a change.
    let (status, _) = server
        .post(
            "/api/v1/devices",
            json!({"id": "gw-away", "simulated": false}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, queued) = server
        .post(
            "/api/v1/devices/gw-away/commands",
            json!({"id": "cmd-queued", "name": "reboot", "timeout_ms": 60000}),
        )
        .await;
    assert_eq!((status, &queued["status"]), (202, &json!("queued")));

    let locks: Vec<_> = ["iotmock.db", "commands.db", "stubs.db", "edge.db"]
        .iter()
        .map(|file| hold_write_lock(&dir.join(file)))
        .collect();
    let (command, new_device, stub, edge, stub_delete, cancel) = tokio::join!(
        server.post(
            "/api/v1/devices/gw-1/commands",
            json!({"id": "cmd-lost", "name": "reboot", "timeout_ms": 60000}),
        ),
        server.post("/api/v1/devices", json!({"id": "gw-2", "simulated": false})),
        server.post(
            "/api/v1/stubs",
            json!({"id": "lost", "request": {"method": "GET", "path": "/lost"},
                   "response": {"status": 200}}),
        ),
        server.post(
            "/api/v1/edge-nodes",
            json!({"id": "edge-lost", "devices": {"ids": ["gw-1"]},
                   "rules": [{"plugin": "edge-aggregate"}]}),
        ),
        server.delete("/api/v1/stubs/kept"),
        server.post("/api/v1/commands/cmd-queued/cancel", json!({})),
    );
    assert_storage_failed("command", command.0, &command.1);
    assert_storage_failed("device", new_device.0, &new_device.1);
    assert_storage_failed("stub", stub.0, &stub.1);
    assert_storage_failed("edge node", edge.0, &edge.1);
    assert_storage_failed("stub delete", stub_delete.0, &stub_delete.1);
    assert_storage_failed("command cancel", cancel.0, &cancel.1);
    drop(locks);

    // Nothing half-done: none of it is in memory, nothing went out.
    let (status, _) = server.get("/api/v1/commands/cmd-lost").await;
    assert_eq!(status, 404, "the refused command is not kept");
    let (status, _) = server.get("/api/v1/devices/gw-2").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/v1/stubs/lost").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/v1/edge-nodes/edge-lost").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/v1/stubs/kept").await;
    assert_eq!(status, 200, "a delete that was not stored did not happen");
    let (_, health) = server.get("/api/v1/health").await;
    let (_, still) = server.get("/api/v1/commands/cmd-queued").await;
    assert_eq!(
        still["status"], "queued",
        "a cancel that was not stored did not happen: {still}"
    );
    assert_eq!(health["commands"]["submitted"], 1, "{health}");
    assert_eq!(health["commands"]["store_errors"], 2, "{health}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(device.try_command().is_none(), "no command was published");

    // With storage back, the same command is accepted, and survives.
    let (status, body) = server
        .post(
            "/api/v1/devices/gw-1/commands",
            json!({"id": "cmd-lost", "name": "reboot", "timeout_ms": 60000}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, cancelled) = server
        .post("/api/v1/commands/cmd-queued/cancel", json!({}))
        .await;
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")));
    server.stop().await;
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    let (status, command) = server.get("/api/v1/commands/cmd-lost").await;
    assert_eq!(status, 200, "{command}");
    let (_, cancelled) = server.get("/api/v1/commands/cmd-queued").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let (status, _) = server.get("/api/v1/devices/gw-2").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/v1/stubs/kept").await;
    assert_eq!(status, 200);
    server.stop().await;
}

type Answer<'a> = Pin<Box<dyn Future<Output = (String, u16, Value)> + Send + 'a>>;

/// One API call, labelled for the assertion that checks its status.
fn call<'a>(
    server: &'a TestServer,
    label: String,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
) -> Answer<'a> {
    Box::pin(async move {
        let mut request = server.http.request(method, server.url(&path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            label,
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_at_the_same_time_all_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    // Things the concurrent round changes or removes.
    let (status, _) = server
        .post("/api/v1/devices", json!({"id": "away", "simulated": false}))
        .await;
    assert_eq!(status, 201);
    for i in 0..10 {
        let (status, _) = server
            .post(
                "/api/v1/devices",
                json!({"id": format!("pre-{i}"), "simulated": false}),
            )
            .await;
        assert_eq!(status, 201);
    }
    for i in 0..5 {
        let (status, _) = server
            .post(
                "/api/v1/stubs",
                json!({"id": format!("old-{i}"), "request": {"method": "GET", "path": format!("/old/{i}")},
                       "response": {"status": 200}}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (status, _) = server
        .post(
            "/api/v1/edge-nodes",
            json!({"id": "edge-pre", "devices": {"ids": ["away"]},
                   "rules": [{"plugin": "edge-aggregate"}]}),
        )
        .await;
    assert_eq!(status, 201);

    // One round of every kind of change, all in flight together, so the
    // stores take them in whatever order they arrive.
    let post = reqwest::Method::POST;
    let mut calls: Vec<Answer<'_>> = Vec::new();
    for i in 0..30 {
        calls.push(call(
            &server,
            format!("device dev-{i}"),
            post.clone(),
            "/api/v1/devices".into(),
            Some(json!({"id": format!("dev-{i}"), "simulated": false, "tags": [format!("t{i}")]})),
        ));
        calls.push(call(
            &server,
            format!("command cmd-{i}"),
            post.clone(),
            "/api/v1/devices/away/commands".into(),
            Some(json!({"id": format!("cmd-{i}"), "name": "reboot", "ttl_ms": 3_600_000})),
        ));
    }
    for i in 0..20 {
        calls.push(call(
            &server,
            format!("stub stub-{i}"),
            post.clone(),
            "/api/v1/stubs".into(),
            Some(json!({"id": format!("stub-{i}"),
                        "request": {"method": "GET", "path": format!("/s/{i}")},
                        "response": {"status": 200, "body": format!("stub {i}")}})),
        ));
    }
    for i in 0..10 {
        calls.push(call(
            &server,
            format!("edge node edge-{i}"),
            post.clone(),
            "/api/v1/edge-nodes".into(),
            Some(
                json!({"id": format!("edge-{i}"), "devices": {"ids": [format!("dev-{i}")]},
                        "rules": [{"plugin": "edge-aggregate"}]}),
            ),
        ));
        calls.push(call(
            &server,
            format!("patch pre-{i}"),
            reqwest::Method::PATCH,
            format!("/api/v1/devices/pre-{i}"),
            Some(json!({"tags": ["patched"], "state": "suspended"})),
        ));
    }
    for i in 0..5 {
        calls.push(call(
            &server,
            format!("stub delete old-{i}"),
            reqwest::Method::DELETE,
            format!("/api/v1/stubs/old-{i}"),
            None,
        ));
    }
    calls.push(call(
        &server,
        "uplink down".into(),
        post.clone(),
        "/api/v1/edge-nodes/edge-pre/uplink".into(),
        Some(json!({"state": "down"})),
    ));
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(answers.len(), 106);
    for (label, status, body) in &answers {
        assert!(
            matches!(status, 200 | 201 | 202 | 204),
            "{label}: {status} {body}"
        );
    }
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    for i in 0..30 {
        let (status, device) = server.get(&format!("/api/v1/devices/dev-{i}")).await;
        assert_eq!(status, 200, "dev-{i}: {device}");
        assert_eq!(device["tags"], json!([format!("t{i}")]), "{device}");
        let (status, command) = server.get(&format!("/api/v1/commands/cmd-{i}")).await;
        assert_eq!(status, 200, "cmd-{i}: {command}");
        assert_eq!(command["status"], "queued", "{command}");
        assert_eq!(command["device"], "away", "{command}");
    }
    for i in 0..20 {
        let response = server
            .http
            .get(server.url(&format!("/mock/s/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "stub-{i}");
        assert_eq!(response.text().await.unwrap(), format!("stub {i}"));
    }
    for i in 0..10 {
        let (status, node) = server.get(&format!("/api/v1/edge-nodes/edge-{i}")).await;
        assert_eq!(status, 200, "edge-{i}: {node}");
        let (_, device) = server.get(&format!("/api/v1/devices/pre-{i}")).await;
        assert_eq!(device["tags"], json!(["patched"]), "{device}");
        assert_eq!(device["state"], "suspended", "{device}");
    }
    for i in 0..5 {
        let (status, _) = server.get(&format!("/api/v1/stubs/old-{i}")).await;
        assert_eq!(status, 404, "old-{i} stays deleted");
    }
    let (_, node) = server.get("/api/v1/edge-nodes/edge-pre").await;
    assert_eq!(node["uplink"]["state"], "down", "{node}");
    server.stop().await;
}

#[test]
fn an_empty_or_foreign_database_stops_the_start() {
    let cases: [(&[u8], &str); 2] = [
        (b"", "is empty (zero bytes)"),
        (
            b"a note someone saved here: not a database at all, but long enough to have a header",
            "is not an iotmock database (not an SQLite file)",
        ),
    ];
    for (content, needle) in cases {
        let data = tempfile::tempdir().unwrap();
        let db = data.path().join("iotmock.db");
        std::fs::write(&db, content).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_iotmock"))
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--scenario",
                "none",
                "--data-dir",
            ])
            .arg(data.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stderr.contains("iotmock.db"), "{stderr}");
        assert!(output.stdout.is_empty(), "no ready line");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            content,
            "the file is left as it was"
        );
    }
}
