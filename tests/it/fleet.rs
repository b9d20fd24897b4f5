//! The device fleet over HTTP: provisioning, identity, lifecycle,
//! connectivity, durable storage.

use std::collections::BTreeSet;

use iotmock::ClockMode;
use serde_json::json;

use crate::support::TestServer;
use crate::support::wire::{Raw, connack_props, connect_as, properties};

fn thermometer(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "type": "thermometer",
        "tags": ["floor-1", "east"],
        "group": "building-a",
        "metadata": {"serial": "SN-1"},
        "sensors": [{"plugin": "temperature", "interval_ms": 1000}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_one_device_and_read_it_back() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (status, created) = server.post("/api/v1/devices", thermometer("th-1")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "th-1");
    assert_eq!(created["state"], "active");
    assert_eq!(created["credentials"]["username"], "th-1");
    let password = created["credentials"]["password"].as_str().unwrap();
    assert_eq!(password.len(), 32);

    let (status, shown) = server.get("/api/v1/devices/th-1").await;
    assert_eq!(status, 200);
    assert!(
        shown.get("credentials").is_none(),
        "the password is shown only once"
    );
    assert_eq!(shown["type"], "thermometer");
    assert_eq!(shown["tags"], json!(["floor-1", "east"]));
    assert_eq!(shown["metadata"]["serial"], "SN-1");
    assert_eq!(shown["connectivity"]["state"], "online");

    let (status, problem) = server.post("/api/v1/devices", thermometer("th-1")).await;
    assert_eq!(status, 409, "{problem}");

    let (status, problem) = server.post("/api/v1/devices", thermometer("th/2")).await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("A-Z, a-z, 0-9"),
        "{problem}"
    );

    let mut unknown_field = thermometer("th-3");
    unknown_field["colour"] = json!("red");
    let (status, problem) = server.post("/api/v1/devices", unknown_field).await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"].as_str().unwrap().contains("colour"),
        "{problem}"
    );

    let (status, problem) = server
        .post(
            "/api/v1/devices",
            json!({"id": "x", "sensors": [{"plugin": "no-such-sensor"}]}),
        )
        .await;
    assert_eq!(status, 422);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("sensors[0].plugin") && detail.contains("temperature"),
        "{detail}"
    );

    // Its telemetry flows.
    let mut sub = server.subscribe("devices/th-1/telemetry/temperature").await;
    assert_eq!(sub.next().await.json()["device"], "th-1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_provisioning_makes_unique_ids_and_credentials() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (status, body) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 1000, "id_pattern": "sensor-{n:05}", "template": {"tags": ["bulk"], "simulated": false}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], 1000);
    let devices = body["devices"].as_array().unwrap();
    let ids: BTreeSet<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let secrets: BTreeSet<&str> = devices
        .iter()
        .map(|d| d["credentials"]["password"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(secrets.len(), 1000);
    assert!(ids.contains("sensor-00001") && ids.contains("sensor-01000"));

    // All or none: a clash creates nothing.
    let (status, _) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 5, "id_pattern": "sensor-{n:05}", "first": 998}),
        )
        .await;
    assert_eq!(status, 409);
    let (_, page) = server.get("/api/v1/devices?limit=1").await;
    assert_eq!(page["total"], 1000);

    // Pagination walks every device exactly once.
    let mut cursor: Option<String> = None;
    let mut walked = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/devices?tag=bulk&limit=300&cursor={c}"),
            None => "/api/v1/devices?tag=bulk&limit=300".to_string(),
        };
        let (status, page) = server.get(&path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 1000);
        walked.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(walked.len(), 1000);
    assert!(walked.windows(2).all(|w| w[0] < w[1]));

    // Filters.
    let (_, page) = server
        .get("/api/v1/devices?state=provisioned&connectivity=offline&limit=1")
        .await;
    assert_eq!(
        page["total"], 1000,
        "real devices wait for their first connection"
    );
    let (_, page) = server.get("/api/v1/devices?tag=nope").await;
    assert_eq!(page["total"], 0);
    let (status, problem) = server.get("/api/v1/devices?state=sleeping").await;
    assert_eq!(status, 422, "{problem}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectivity_changes_show_in_api_and_status_topic_and_offline_readings_follow() {
    let server = TestServer::with_scenario("", |c| c.clock = ClockMode::Manual).await;
    let mut status_sub = server.subscribe("devices/th-1/status").await;
    let (status, _) = server.post("/api/v1/devices", thermometer("th-1")).await;
    assert_eq!(status, 201);
    let first = status_sub.next().await;
    assert_eq!(first.payload, b"online");

    let mut readings = server.subscribe("devices/th-1/telemetry/+").await;
    let (status, view) = server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "offline"}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["connectivity"]["state"], "offline");
    assert_eq!(status_sub.next().await.payload, b"offline");
    let (_, page) = server.get("/api/v1/devices?connectivity=offline").await;
    assert_eq!(page["total"], 1);

    // Ten seconds offline: nothing is published, ten readings wait.
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 10_000}))
        .await;
    assert_eq!(status, 200);
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["buffered"], 10, "{health}");
    assert!(readings.drain().is_empty());

    // Back online: they arrive in order.
    let (status, _) = server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "online"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(status_sub.next().await.payload, b"online");
    let mut stamps = Vec::new();
    for _ in 0..10 {
        stamps.push(
            readings.next().await.json()["ts"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["buffered"], 0);
    assert_eq!(health["telemetry"]["buffer_dropped"], 0);

    let (status, problem) = server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "asleep"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_overflow_is_counted_exactly() {
    let server = TestServer::with_scenario("", |c| c.clock = ClockMode::Manual).await;
    server.post("/api/v1/devices", thermometer("th-1")).await;
    server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "offline"}),
        )
        .await;
    // 1,500 readings due at one a second; the buffer keeps 1,000.
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 1_500_000}))
        .await;
    assert_eq!(status, 200);
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["buffered"], 1000, "{health}");
    assert_eq!(health["telemetry"]["buffer_dropped"], 500, "{health}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_patch_delete_and_rotate() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (_, created) = server.post("/api/v1/devices", thermometer("th-1")).await;
    let old_password = created["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, view) = server
        .http
        .patch(server.url("/api/v1/devices/th-1"))
        .json(&json!({"state": "suspended", "tags": ["moved"]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!(status, 200, "{view:?}");
    let (_, shown) = server.get("/api/v1/devices/th-1").await;
    assert_eq!(shown["state"], "suspended");
    assert_eq!(shown["tags"], json!(["moved"]));
    assert_eq!(shown["connectivity"]["state"], "offline");

    let (status, rotated) = server
        .post("/api/v1/devices/th-1/credentials", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_ne!(rotated["password"].as_str().unwrap(), old_password);

    let response = server
        .http
        .patch(server.url("/api/v1/devices/th-1"))
        .json(&json!({"state": "provisioned"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);

    let (status, _) = server.delete("/api/v1/devices/th-1").await;
    assert_eq!(status, 204);
    let (status, _) = server.get("/api/v1/devices/th-1").await;
    assert_eq!(status, 404);
    let (status, _) = server.delete("/api/v1/devices/th-1").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_credentials_survive_a_restart_with_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (_, bulk) = server
        .post("/api/v1/devices/bulk", json!({"count": 50, "id_pattern": "d-{n:02}", "template": {"group": "g1", "simulated": false}}))
        .await;
    server
        .http
        .patch(server.url("/api/v1/devices/d-07"))
        .json(&json!({"state": "suspended"}))
        .send()
        .await
        .unwrap();
    let (_, rotated) = server
        .post("/api/v1/devices/d-08/credentials", json!({}))
        .await;
    server.delete("/api/v1/devices/d-09").await;
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (_, page) = server.get("/api/v1/devices?group=g1&limit=1000").await;
    assert_eq!(page["total"], 49);
    let (_, d7) = server.get("/api/v1/devices/d-07").await;
    assert_eq!(d7["state"], "suspended");
    assert_eq!(d7["group"], "g1");
    let (status, _) = server.get("/api/v1/devices/d-09").await;
    assert_eq!(status, 404);
    assert_eq!(bulk["created"], 50);
    assert!(rotated["password"].is_string());
    server.stop().await;
}

async fn auth_fleet_server(data_dir: Option<std::path::PathBuf>) -> TestServer {
    TestServer::with_scenario("", |c| {
        c.mqtt_auth = crate::support::device_auth();
        c.data_dir = data_dir;
    })
    .await
}

fn login(server: &TestServer, client_id: &str, user: &str, password: &str) -> rumqttc::MqttOptions {
    let mut options = crate::broker::options(server.mqtt, client_id);
    options.set_credentials(user, password);
    options
}

async fn wait_device(
    server: &TestServer,
    id: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let (_, device) = server.get(&format!("/api/v1/devices/{id}")).await;
        if check(&device) {
            return device;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "device {id} never got there: {device}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_credentials_admit_refuse_and_confine_mqtt_clients() {
    use crate::broker::Client;
    use rumqttc::QoS;
    let server = auth_fleet_server(None).await;
    let (_, one) = server
        .post(
            "/api/v1/devices",
            json!({"id": "dev-1", "simulated": false}),
        )
        .await;
    let (_, two) = server
        .post(
            "/api/v1/devices",
            json!({"id": "dev-2", "simulated": false}),
        )
        .await;
    let secret_one = one["credentials"]["password"].as_str().unwrap().to_string();
    let secret_two = two["credentials"]["password"].as_str().unwrap().to_string();
    assert_eq!(one["state"], "provisioned");

    // A back end as admin watches everything.
    let (mut admin, _) = Client::connect(login(
        &server,
        "backend",
        "admin",
        crate::support::ADMIN_PASSWORD,
    ))
    .await;
    admin.sub("devices/#", QoS::AtLeastOnce).await;
    crate::broker::wait_subscribed(&server, "backend", "devices/#").await;

    // Wrong secret and unknown device: bad user name or password.
    let mut wrong = Client::spawn(login(&server, "w", "dev-1", "not-the-secret"), false);
    assert!(wrong.error().await.contains("BadUserNamePassword"));
    let mut unknown = Client::spawn(login(&server, "u", "dev-99", &secret_one), false);
    assert!(unknown.error().await.contains("BadUserNamePassword"));
    let mut anonymous = Client::spawn(crate::broker::options(server.mqtt, "anon"), false);
    assert!(anonymous.error().await.contains("NotAuthorized"));

    // The right secret under another client id is refused: a device
    // connects only as itself, so it cannot take dev-2's session over.
    let mut other_id = Client::spawn(login(&server, "dev-2", "dev-1", &secret_one), false);
    let refused = other_id.error().await;
    assert!(
        refused.contains("ClientIdentifierNotValid") || refused.contains("BadClientId"),
        "{refused}"
    );

    // The right secret connects; the device becomes active and online.
    let (device, _) = Client::connect(login(&server, "dev-1", "dev-1", &secret_one)).await;
    let view = wait_device(&server, "dev-1", |d| d["connectivity"]["state"] == "online").await;
    assert_eq!(view["state"], "active");
    assert_eq!(view["connectivity"]["connect_count"], 1);
    let status = admin.next().await;
    assert_eq!(
        (status.topic.as_str(), &status.payload[..]),
        ("devices/dev-1/status", &b"online"[..])
    );

    // It may publish under its own topics only.
    device
        .client
        .publish(
            "devices/dev-2/telemetry/t",
            QoS::AtLeastOnce,
            false,
            "spoof",
        )
        .await
        .unwrap();
    device
        .client
        .publish(
            "devices/dev-1/commands/x",
            QoS::AtLeastOnce,
            false,
            "self-command",
        )
        .await
        .unwrap();
    device
        .client
        .publish("devices/dev-1/telemetry/t", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    let got = admin.next().await;
    assert_eq!(
        got.topic, "devices/dev-1/telemetry/t",
        "the spoofed publishes never arrive"
    );
    assert_eq!(&got.payload[..], b"mine");

    // Disconnecting takes it offline.
    device.disconnect().await;
    wait_device(&server, "dev-1", |d| {
        d["connectivity"]["state"] == "offline"
    })
    .await;
    let status = admin.next().await;
    assert_eq!(&status.payload[..], b"offline");

    // Suspended: refused as not authorized, even with the right secret.
    let response = server
        .http
        .patch(server.url("/api/v1/devices/dev-2"))
        .json(&json!({"state": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut suspended = Client::spawn(login(&server, "s", "dev-2", &secret_two), false);
    assert!(suspended.error().await.contains("NotAuthorized"));

    // A rotated secret replaces the old one at once.
    let (_, rotated) = server
        .post("/api/v1/devices/dev-1/credentials", json!({}))
        .await;
    let mut old = Client::spawn(login(&server, "o", "dev-1", &secret_one), false);
    assert!(old.error().await.contains("BadUserNamePassword"));
    let (again, _) = Client::connect(login(
        &server,
        "dev-1",
        "dev-1",
        rotated["password"].as_str().unwrap(),
    ))
    .await;
    again.disconnect().await;

    // Under no client id a device is admitted too: the broker assigns a
    // fresh one (and tells an MQTT 5 client), which takes no session
    // over, and the user name still names the device.
    let rotated = rotated["password"].as_str().unwrap();
    for level in [4, 5] {
        let (mut raw, connack) =
            Raw::open(server.mqtt, &connect_as(level, "", "dev-1", rotated)).await;
        assert_eq!(connack[1], 0, "MQTT level {level} admitted: {connack:?}");
        if level == 5 {
            let assigned = properties(connack_props(&connack))
                .into_iter()
                .find(|(id, _)| *id == 0x12)
                .map(|(_, v)| String::from_utf8_lossy(&v[2..]).into_owned());
            assert!(
                assigned.as_ref().is_some_and(|id| id.starts_with("auto-")),
                "{assigned:?}"
            );
        }
        wait_device(&server, "dev-1", |d| d["connectivity"]["state"] == "online").await;
        raw.send(&[0xe0, 0x00]).await;
        wait_device(&server, "dev-1", |d| {
            d["connectivity"]["state"] == "offline"
        })
        .await;
    }
    admin.disconnect().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_still_work_after_a_restart_with_data_dir() {
    use crate::broker::Client;
    let dir = tempfile::tempdir().unwrap();
    let server = auth_fleet_server(Some(dir.path().to_path_buf())).await;
    let (_, bulk) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 20, "id_pattern": "r-{n:02}", "template": {"simulated": false}}),
        )
        .await;
    server.stop().await;

    let server = auth_fleet_server(Some(dir.path().to_path_buf())).await;
    let (_, page) = server.get("/api/v1/devices?limit=1000").await;
    assert_eq!(page["total"], 20);
    for device in bulk["devices"].as_array().unwrap().iter().step_by(7) {
        let id = device["id"].as_str().unwrap();
        let password = device["credentials"]["password"].as_str().unwrap();
        let (client, _) = Client::connect(login(&server, id, id, password)).await;
        client.disconnect().await;
    }
    server.stop().await;
}
