//! Per-device offline buffers: capacity and policy from the API and the
//! scenario, exact overflow counts, delivery in order over MQTT, storage.

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::TestServer;

fn ts_ms(reading: &Value) -> i64 {
    iotmock::parse_rfc3339_ms(reading["ts"].as_str().unwrap()).unwrap()
}

/// A device with a 5-reading buffer under `policy`: online for 5 s, then
/// offline for exactly 12 readings, then back. Returns what the MQTT
/// subscriber got after the return and the last online reading's time.
async fn offline_spell(policy: &str) -> (Vec<i64>, i64, TestServer) {
    let server = TestServer::with_scenario("", |c| c.clock = ClockMode::Manual).await;
    let mut sub = server.subscribe("devices/b-1/telemetry/#").await;
    let (status, created) = server
        .post(
            "/api/v1/devices",
            json!({
                "id": "b-1",
                "sensors": [{"plugin": "temperature", "interval_ms": 1000}],
                "buffer": {"capacity": 5, "policy": policy},
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["buffer"], json!({"capacity": 5, "policy": policy}));

    server
        .post("/api/v1/clock/advance", json!({"ms": 5_000}))
        .await;
    let mut last = 0;
    for _ in 0..5 {
        last = ts_ms(&sub.next().await.json());
    }
    let (status, _) = server
        .post(
            "/api/v1/devices/b-1/connectivity",
            json!({"state": "offline"}),
        )
        .await;
    assert_eq!(status, 200);
    // The next reading after `last` is due at last + 1 s; 12 s later the
    // twelfth is due exactly at the new time.
    let (_, clock) = server.get("/api/v1/clock").await;
    let now = clock["now_ms"].as_i64().unwrap();
    server
        .post("/api/v1/clock/advance", json!({"ms": last + 12_000 - now}))
        .await;
    assert!(sub.drain().is_empty(), "nothing is published while offline");
    let (_, view) = server.get("/api/v1/devices/b-1").await;
    assert_eq!(
        view["telemetry"],
        json!({"buffered": 5, "buffer_dropped": 7}),
        "{view}"
    );

    server
        .post(
            "/api/v1/devices/b-1/connectivity",
            json!({"state": "online"}),
        )
        .await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(ts_ms(&sub.next().await.json()));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(sub.drain().is_empty(), "only what the buffer kept");
    (got, last, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_buffer_drop_oldest_keeps_the_newest_and_counts_the_rest() {
    let (got, last, server) = offline_spell("drop_oldest").await;
    let want: Vec<i64> = (8..=12).map(|k| last + k * 1000).collect();
    assert_eq!(got, want, "the newest five, in order");
    let (_, view) = server.get("/api/v1/devices/b-1").await;
    assert_eq!(
        view["telemetry"],
        json!({"buffered": 0, "buffer_dropped": 7})
    );
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["buffer_dropped"], 7);
    assert_eq!(health["telemetry"]["buffered"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_buffer_drop_newest_keeps_the_oldest_and_counts_the_rest() {
    let (got, last, server) = offline_spell("drop_newest").await;
    let want: Vec<i64> = (1..=5).map(|k| last + k * 1000).collect();
    assert_eq!(got, want, "the oldest five, in order");
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["buffer_dropped"], 7);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_buffer_is_validated_configurable_everywhere_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let scenario = r#"
[[fleet]]
id = "from-scenario"
buffer = { capacity = 42, policy = "drop_newest" }
[[fleet.sensors]]
plugin = "temperature"
"#;
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.data_dir = Some(data.clone());
    })
    .await;
    let (_, view) = server.get("/api/v1/devices/from-scenario").await;
    assert_eq!(
        view["buffer"],
        json!({"capacity": 42, "policy": "drop_newest"})
    );

    for (body, field) in [
        (json!({"capacity": 100_001}), "buffer.capacity"),
        (
            json!({"capacity": 10, "policy": "drop_random"}),
            "drop_random",
        ),
        (json!({"capacity": -1}), "capacity"),
        (json!({"size": 10}), "size"),
    ] {
        let (status, problem) = server
            .post("/api/v1/devices", json!({"id": "bad", "buffer": body}))
            .await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }
    let (status, bulk) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 3, "id_pattern": "bulk-{n}", "template": {"buffer": {"capacity": 7}}}),
        )
        .await;
    assert_eq!(status, 201, "{bulk}");
    let (_, view) = server.get("/api/v1/devices/bulk-2").await;
    assert_eq!(
        view["buffer"],
        json!({"capacity": 7, "policy": "drop_oldest"})
    );
    let (_, view) = server.post("/api/v1/devices", json!({"id": "plain"})).await;
    assert_eq!(
        view["buffer"],
        json!({"capacity": 1000, "policy": "drop_oldest"})
    );

    // PATCH applies at once: a smaller buffer drops the excess by its policy.
    server
        .post(
            "/api/v1/devices",
            json!({"id": "p-1", "sensors": [{"plugin": "temperature", "interval_ms": 1000}]}),
        )
        .await;
    server
        .post(
            "/api/v1/devices/p-1/connectivity",
            json!({"state": "offline"}),
        )
        .await;
    server
        .post("/api/v1/clock/advance", json!({"ms": 10_000}))
        .await;
    let (_, view) = server.get("/api/v1/devices/p-1").await;
    assert_eq!(view["telemetry"]["buffered"], 10, "{view}");
    let response = server
        .http
        .patch(server.url("/api/v1/devices/p-1"))
        .json(&json!({"buffer": {"capacity": 4, "policy": "drop_newest"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, view) = server.get("/api/v1/devices/p-1").await;
    assert_eq!(
        view["telemetry"],
        json!({"buffered": 4, "buffer_dropped": 6})
    );
    server.stop().await;

    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.data_dir = Some(data.clone());
    })
    .await;
    for (id, want) in [
        (
            "from-scenario",
            json!({"capacity": 42, "policy": "drop_newest"}),
        ),
        ("bulk-3", json!({"capacity": 7, "policy": "drop_oldest"})),
        ("p-1", json!({"capacity": 4, "policy": "drop_newest"})),
    ] {
        let (_, view) = server.get(&format!("/api/v1/devices/{id}")).await;
        assert_eq!(view["buffer"], want, "{id} after a restart");
    }
    server.stop().await;

    let err = iotmock::Server::start(iotmock::Config {
        scenario: iotmock::ScenarioChoice::Inline(
            "[[fleet]]\nid = \"x\"\nbuffer = { capacity = 1000000 }\n".into(),
        ),
        ..iotmock::Config::ephemeral()
    })
    .await
    .err()
    .expect("a scenario with too big a buffer is refused");
    assert!(err.to_string().contains("buffer.capacity"), "{err}");
}
