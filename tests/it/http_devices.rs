//! The HTTP device API: devices that speak HTTP with their own
//! credentials: telemetry, reported state, connectivity by polling.

use std::time::Duration;

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::TestServer;

/// Provisions a real (not simulated) device; returns its password.
pub async fn real_device(server: &TestServer, id: &str) -> String {
    let (status, created) = server
        .post(
            "/api/v1/devices",
            json!({"id": id, "simulated": false, "metadata": {"serial": "SN-9"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A request as device `user` with `password`.
pub fn as_device(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    user: &str,
    password: &str,
) -> reqwest::RequestBuilder {
    server
        .http
        .request(method, server.url(path))
        .basic_auth(user, Some(password))
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_posted_over_http_arrive_on_mqtt_and_in_the_export() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let password = real_device(&server, "hd-1").await;
    let mut sub = server.subscribe("devices/hd-1/telemetry/#").await;

    let response = as_device(
        &server,
        reqwest::Method::POST,
        "/api/v1/devices/hd-1/telemetry",
        "hd-1",
        &password,
    )
    .json(&json!([
        {"sensor": "temperature", "value": 21.5, "unit": "celsius", "ts": "2026-03-01T10:00:00.250Z"},
        {"sensor": "door", "value": 1, "ts": "2026-03-01T11:00:00+01:00"}
    ]))
    .send()
    .await
    .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2);

    let first = sub.next().await;
    assert_eq!(first.topic, "devices/hd-1/telemetry/temperature");
    assert_eq!(
        first.json(),
        json!({"device":"hd-1","sensor":"temperature","ts":"2026-03-01T10:00:00.250Z","value":21.5,"unit":"celsius"})
    );
    let second = sub.next().await;
    assert_eq!(second.topic, "devices/hd-1/telemetry/door");
    assert_eq!(second.json()["ts"], "2026-03-01T10:00:00.000Z");
    assert_eq!(second.json()["unit"], Value::Null);

    // The answer came after the readings were journaled: the export has them.
    let response = server
        .http
        .get(server.url("/api/v1/telemetry?device=hd-1"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["sensor"], "temperature");
    assert_eq!(lines[0]["value"], 21.5);
    assert_eq!(lines[1]["sensor"], "door");

    // One object (not a list) works too; without ts it is the simulated now.
    let response = as_device(
        &server,
        reqwest::Method::POST,
        "/api/v1/devices/hd-1/telemetry",
        "hd-1",
        &password,
    )
    .json(&json!({"sensor": "temperature", "value": -3}))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let third = sub.next().await.json();
    assert_eq!(third["value"], -3.0);
    let ts = iotmock::parse_rfc3339_ms(third["ts"].as_str().unwrap()).unwrap();
    assert!((crate::support::wall_ms() - ts).abs() < 10_000, "{third}");

    // Every device API request is journaled, without its credentials.
    let (status, page) = server
        .get("/api/v1/http/requests?device=hd-1&path=/api/v1/devices")
        .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert_eq!(items[0]["listener"], "api");
    assert_eq!(items[0]["method"], "POST");
    assert_eq!(items[0]["path"], "/api/v1/devices/hd-1/telemetry");
    assert_eq!(items[0]["status"], 200);
    assert!(items[0]["headers"].get("authorization").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_api_refuses_bad_credentials_and_bad_readings() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let password = real_device(&server, "hd-1").await;
    let other = real_device(&server, "hd-2").await;
    let post = |user: &'static str, password: String, body: Value| {
        let request = as_device(
            &server,
            reqwest::Method::POST,
            "/api/v1/devices/hd-1/telemetry",
            user,
            &password,
        )
        .json(&body);
        async move { request.send().await.unwrap() }
    };
    let reading = json!({"sensor": "t", "value": 1});

    let anonymous = server
        .http
        .post(server.url("/api/v1/devices/hd-1/telemetry"))
        .json(&reading)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic "), "{challenge}");
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );

    let wrong = post("hd-1", "nope".into(), reading.clone()).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().contains_key("www-authenticate"));

    let (status, problem) = json_of(post("hd-2", other, reading.clone()).await).await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("hd-2"),
        "{problem}"
    );

    for (body, needle) in [
        (json!({"sensor": "a/b", "value": 1}), "reading.sensor"),
        (json!({"sensor": "t", "value": "hot"}), "invalid type"),
        (
            json!([{"sensor": "t", "value": 1}, {"sensor": "t", "value": 2, "ts": "yesterday"}]),
            "readings[1].ts",
        ),
        (json!({"sensor": "t", "vaule": 1}), "unknown field"),
        (json!([]), "1 to"),
        (json!(5), "reading object"),
    ] {
        let (status, problem) = json_of(post("hd-1", password.clone(), body.clone()).await).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{body}: {problem}"
        );
    }
    // A refused request publishes nothing, not even its valid readings.
    let text = server
        .http
        .get(server.url("/api/v1/telemetry?device=hd-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "");

    let suspend = server
        .http
        .patch(server.url("/api/v1/devices/hd-1"))
        .json(&json!({"state": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(suspend.status(), 200);
    let suspended = post("hd-1", password.clone(), reading.clone()).await;
    assert_eq!(suspended.status(), 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_state_is_kept_with_the_device_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let password = real_device(&server, "hd-1").await;
    let state_req = |method: reqwest::Method, server: &TestServer| {
        as_device(
            server,
            method,
            "/api/v1/devices/hd-1/state",
            "hd-1",
            &password,
        )
    };

    let (status, empty) = json_of(
        state_req(reqwest::Method::GET, &server)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"state": {}, "updated_at": null}));

    let put = state_req(reqwest::Method::PUT, &server)
        .json(&json!({"fw": "1.0.0", "net": {"rssi": -70, "ip": "10.0.0.2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (status, patched) = json_of(
        state_req(reqwest::Method::PATCH, &server)
            .json(&json!({"fw": "1.1.0", "net": {"ip": null}, "battery": 88}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    let expected = json!({"fw": "1.1.0", "net": {"rssi": -70}, "battery": 88});
    assert_eq!(patched["state"], expected);

    let (status, problem) = json_of(
        state_req(reqwest::Method::PUT, &server)
            .json(&json!(["not", "an", "object"]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("JSON object"));

    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["reported"]["state"], expected);
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["reported"]["state"], expected, "{device}");
    let (status, shown) = json_of(
        state_req(reqwest::Method::GET, &server)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["state"], expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectivity_follows_polling_and_silence_takes_a_device_offline() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.http_device_timeout_ms = 30_000;
    })
    .await;
    let password = real_device(&server, "hd-1").await;
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["connectivity"]["state"], "offline");
    assert_eq!(device["connectivity"]["protocol"], Value::Null);
    let mut status_sub = server.subscribe("devices/hd-1/status").await;

    let poll = || {
        as_device(
            &server,
            reqwest::Method::GET,
            "/api/v1/devices/hd-1/state",
            "hd-1",
            &password,
        )
        .send()
    };
    assert_eq!(poll().await.unwrap().status(), 200);
    let online = status_sub.next().await;
    assert_eq!(online.payload, b"online");
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["connectivity"]["state"], "online", "{device}");
    assert_eq!(device["connectivity"]["protocol"], "http");
    assert_eq!(device["connectivity"]["mode"], "http");
    assert_eq!(device["state"], "active", "first contact activates it");

    // 20 s of silence, a poll, 20 s more: still online (the poll reset it).
    server
        .post("/api/v1/clock/advance", json!({"ms": 20_000}))
        .await;
    assert_eq!(poll().await.unwrap().status(), 200);
    server
        .post("/api/v1/clock/advance", json!({"ms": 20_000}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["connectivity"]["state"], "online", "{device}");
    assert!(status_sub.drain().is_empty(), "no status change yet");

    // Past 30 s since the last poll: offline.
    server
        .post("/api/v1/clock/advance", json!({"ms": 11_000}))
        .await;
    let offline = status_sub.next().await;
    assert_eq!(offline.payload, b"offline");
    let (_, device) = server.get("/api/v1/devices/hd-1").await;
    assert_eq!(device["connectivity"]["state"], "offline", "{device}");
    let (_, listed) = server.get("/api/v1/devices?connectivity=offline").await;
    assert_eq!(listed["total"], 1);

    // The next poll brings it back.
    assert_eq!(poll().await.unwrap().status(), 200);
    assert_eq!(status_sub.next().await.payload, b"online");
    server.stop().await;
}
