//! Commands for devices that speak HTTP: long-poll for the next command,
//! acknowledge it over HTTP.

use std::time::{Duration, Instant};

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::http_devices::{as_device, real_device};
use crate::support::TestServer;

async fn next(server: &TestServer, id: &str, password: &str, wait_ms: u64) -> (u16, Value) {
    let response = as_device(
        server,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{id}/commands/next?wait_ms={wait_ms}"),
        id,
        password,
    )
    .send()
    .await
    .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ack(
    server: &TestServer,
    id: &str,
    password: &str,
    command: &str,
    body: Value,
) -> (u16, Value) {
    let response = as_device(
        server,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/acks/{command}"),
        id,
        password,
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_device_long_polls_a_command_acks_it_and_it_completes() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let password = real_device(&server, "hd-1").await;
    let (status, _) = next(&server, "hd-1", &password, 0).await;
    assert_eq!(status, 204, "nothing to do yet");

    let started = Instant::now();
    let poll = {
        let http = server.http.clone();
        let url = server.url("/api/v1/devices/hd-1/commands/next?wait_ms=10000");
        let password = password.clone();
        tokio::spawn(async move {
            let r = http
                .get(url)
                .basic_auth("hd-1", Some(password))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, sent) = server
        .post(
            "/api/v1/devices/hd-1/commands",
            json!({"name": "reboot", "params": {"delay_s": 5}, "timeout_ms": 10000}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let id = sent["id"].as_str().unwrap().to_string();

    let (status, message) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        message,
        json!({"id": id, "name": "reboot", "params": {"delay_s": 5}, "attempt": 1})
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll answered when the command came, not at its end"
    );
    // Fetched once per attempt: the next poll finds nothing.
    let (status, _) = next(&server, "hd-1", &password, 100).await;
    assert_eq!(status, 204);

    let (status, view) = ack(
        &server,
        "hd-1",
        &password,
        &id,
        json!({"status": "received"}),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "received");
    let (status, view) = ack(
        &server,
        "hd-1",
        &password,
        &id,
        json!({"status": "completed", "result": {"rebooted": true}}),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "completed");

    let (_, shown) = server.get(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(shown["result"], json!({"rebooted": true}));

    // Bad acks say what is wrong.
    let (status, problem) = ack(
        &server,
        "hd-1",
        &password,
        "no-such",
        json!({"status": "completed"}),
    )
    .await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = ack(&server, "hd-1", &password, &id, json!({"status": "done"})).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown variant")
    );
    let (status, problem) = next(&server, "hd-1", &password, 600_000).await;
    assert_eq!(status, 422, "{problem}");

    let (_, page) = server
        .get("/api/v1/http/requests?device=hd-1&path=/api/v1/devices/{id}/acks/{command}")
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 4, "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_never_polled_expires_and_one_never_acked_times_out() {
    let server = TestServer::with_scenario("", |c| c.clock = ClockMode::Manual).await;
    let password = real_device(&server, "hd-1").await;
    let other = real_device(&server, "hd-2").await;
    // hd-1 is in touch (online) but never polls for commands.
    let state = as_device(
        &server,
        reqwest::Method::GET,
        "/api/v1/devices/hd-1/state",
        "hd-1",
        &password,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(state.status(), 200);
    let (status, sent) = server
        .post(
            "/api/v1/devices/hd-1/commands",
            json!({"name": "ping", "timeout_ms": 1000, "ttl_ms": 2000}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let never_polled = sent["id"].as_str().unwrap().to_string();

    // hd-2 fetches its command and never answers.
    let (_, sent) = server
        .post(
            "/api/v1/devices/hd-2/commands",
            json!({"name": "ping", "timeout_ms": 1000, "retries": 0}),
        )
        .await;
    let never_acked = sent["id"].as_str().unwrap().to_string();
    let (status, message) = next(&server, "hd-2", &other, 5000).await;
    assert_eq!(status, 200);
    assert_eq!(message["id"], never_acked.as_str());

    let (_, shown) = server
        .get(&format!("/api/v1/commands/{never_polled}"))
        .await;
    assert_eq!(shown["status"], "queued", "{shown}");
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 1000}))
        .await;
    assert_eq!(status, 200);
    let (_, shown) = server
        .get(&format!("/api/v1/commands/{never_acked}?wait_ms=5000"))
        .await;
    assert_eq!(shown["status"], "timed_out", "{shown}");
    let (_, shown) = server
        .get(&format!("/api/v1/commands/{never_polled}"))
        .await;
    assert_eq!(shown["status"], "queued", "{shown}");

    server
        .post("/api/v1/clock/advance", json!({"ms": 1000}))
        .await;
    let (_, shown) = server
        .get(&format!("/api/v1/commands/{never_polled}?wait_ms=5000"))
        .await;
    assert_eq!(shown["status"], "expired", "{shown}");
    // Too late now: a poll finds nothing.
    let (status, _) = next(&server, "hd-1", &password, 300).await;
    assert_eq!(status, 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waiting_in_a_long_poll_stays_online() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.http_device_timeout_ms = 30_000;
    })
    .await;
    let password = real_device(&server, "hd-1").await;
    let mut status_sub = server.subscribe("devices/hd-1/status").await;
    let poll = {
        let http = server.http.clone();
        let url = server.url("/api/v1/devices/hd-1/commands/next?wait_ms=5000");
        let password = password.clone();
        tokio::spawn(async move {
            http.get(url)
                .basic_auth("hd-1", Some(password))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert_eq!(status_sub.next().await.payload, b"online");
    // The device's view counts the poll once it waits.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let (_, device) = server.get("/api/v1/devices/hd-1").await;
        if device["connectivity"]["polling"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{device}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 40 s of simulated time pass while the device waits.
    server
        .post("/api/v1/clock/advance", json!({"ms": 40_000}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["connectivity"]["state"], "online", "{device}");
    assert_eq!(poll.await.unwrap(), 204);
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["connectivity"]["polling"], 0, "{device}");
    // Silent from the end of the poll: offline 30 s later.
    server
        .post("/api/v1/clock/advance", json!({"ms": 29_000}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(status_sub.drain().is_empty());
    server
        .post("/api/v1/clock/advance", json!({"ms": 2_000}))
        .await;
    assert_eq!(status_sub.next().await.payload, b"offline");
    server.stop().await;
}
