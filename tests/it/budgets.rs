//! Byte budgets: whatever a client sends, the journals, the live stream
//! queues, stub rendering and the fleet stay within their stated bounds,
//! and each bound is visible in `/health` and `/metrics` with what it
//! evicted or refused.

use std::time::{Duration, Instant};

use iotmock::ClockMode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::support::{TestServer, WAIT, metric};

/// Polls `/health` until `check` holds.
async fn wait_health(server: &TestServer, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, health) = server.get("/api/v1/health").await;
        assert_eq!(status, 200);
        if check(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "health never reached the expected state: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_mqtt_publishes_are_evicted_from_the_journal_by_bytes() {
    let budget = 8 << 20;
    let server = TestServer::with_scenario("", |c| c.journal_max_bytes = budget).await;
    let mut options = MqttOptions::new("firmware-pusher", "127.0.0.1", server.mqtt.port());
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (acked_tx, mut acked) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                let _ = acked_tx.send(());
            }
        }
    });
    // 40 firmware images of 1 MiB: five times the budget.
    let image = vec![0xA5u8; 1 << 20];
    for _ in 0..40 {
        client
            .publish("fw/image", QoS::AtLeastOnce, false, image.clone())
            .await
            .unwrap();
    }
    for _ in 0..40 {
        tokio::time::timeout(WAIT, acked.recv())
            .await
            .expect("PUBACK in time")
            .unwrap();
    }
    let health = wait_health(&server, |h| {
        h["mqtt_journal"]["cursor"].as_u64() >= Some(40)
    })
    .await;
    let journal = &health["mqtt_journal"];
    let bytes = journal["bytes"].as_u64().unwrap();
    assert_eq!(journal["max_bytes"], budget as u64, "{journal}");
    assert!(bytes <= budget as u64, "{journal}");
    assert!(bytes >= 6 << 20, "keeps what fits: {journal}");
    let len = journal["len"].as_u64().unwrap();
    assert!((6..=8).contains(&len), "{journal}");
    assert_eq!(journal["evicted"].as_u64().unwrap(), 40 - len, "{journal}");
    assert_eq!(journal["evicted_by_bytes"], journal["evicted"], "{journal}");

    // The newest images are the ones kept, and a reader is told of the gap.
    let (status, page) = server.get("/api/v1/mqtt/messages?topic=fw/%23").await;
    assert_eq!(status, 200);
    let cursors: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(cursors.last(), Some(&40), "{cursors:?}");
    assert_eq!(cursors.len() as u64, len);

    let metrics = server.get_text("/metrics").await;
    assert_eq!(
        metric(&metrics, "iotmock_mqtt_journal_max_bytes"),
        budget as u64
    );
    assert!(metric(&metrics, "iotmock_mqtt_journal_bytes") <= budget as u64);
    assert_eq!(
        metric(&metrics, "iotmock_mqtt_journal_evicted_total"),
        40 - len
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_journal_is_bounded_by_bytes() {
    let budget = 1 << 20;
    let server = TestServer::with_scenario("", |c| c.http_journal_max_bytes = budget).await;
    let body = vec![b'x'; 60 << 10];
    for _ in 0..50 {
        let response = server
            .http
            .post(server.url("/mock/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "no stub: still journaled");
    }
    let (_, health) = server.get("/api/v1/health").await;
    let journal = &health["http_journal"];
    assert_eq!(journal["cursor"], 50, "{journal}");
    assert!(
        journal["bytes"].as_u64().unwrap() <= budget as u64,
        "{journal}"
    );
    let len = journal["len"].as_u64().unwrap();
    assert!(
        (10..=17).contains(&len),
        "about 1 MiB of 60 KiB bodies: {journal}"
    );
    assert_eq!(journal["evicted_by_bytes"].as_u64().unwrap(), 50 - len);
    let metrics = server.get_text("/metrics").await;
    assert_eq!(metric(&metrics, "iotmock_http_journal_entries"), len);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telemetry_journal_is_bounded_by_bytes() {
    let scenario = r#"
[[fleet]]
id = "t-1"
sensors = [{ plugin = "temperature", interval_ms = 100 }]
"#;
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.telemetry_limits.journal_max_bytes = 20_000;
    })
    .await;
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 60_000}))
        .await;
    assert_eq!(status, 200);
    let (_, health) = server.get("/api/v1/health").await;
    let t = &health["telemetry"];
    assert_eq!(t["published"], 600, "{t}");
    let journal = &t["journal"];
    assert!(journal["bytes"].as_u64().unwrap() <= 20_000, "{journal}");
    let len = journal["len"].as_u64().unwrap();
    assert!(len > 50 && len < 600, "{journal}");
    assert_eq!(journal["evicted_by_bytes"].as_u64().unwrap(), 600 - len);
    // The export answers what is kept: the newest readings.
    let export = server
        .get_text("/api/v1/telemetry?device=t-1&format=jsonl&limit=10000")
        .await;
    assert_eq!(export.lines().count() as u64, len);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stub_that_would_render_gigabytes_is_refused_before_rendering() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (status, _) = server
        .post(
            "/api/v1/stubs",
            json!({
                "id": "echo-4000",
                "request": {"method": "POST", "path": "/echo"},
                "response": {"status": 200, "body": "{{request.body}}".repeat(4000)}
            }),
        )
        .await;
    assert_eq!(status, 201);

    // 1 MiB in, 4 GiB out: refused at once, nothing rendered.
    let started = Instant::now();
    let response = server
        .http
        .post(server.url("/mock/echo"))
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("--max-stub-response-bytes"), "{problem}");
    assert!(detail.contains("echo-4000"), "{problem}");
    assert!(
        started.elapsed() < WAIT,
        "measuring costs at most the budget"
    );

    // A small request renders as before: 10 bytes × 4000.
    let response = server
        .http
        .post(server.url("/mock/echo"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 40_000);

    let (_, requests) = server.get("/api/v1/http/requests?stub=echo-4000").await;
    let statuses: Vec<&Value> = requests["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, [&json!(413), &json!(200)], "{requests}");
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["limits"]["stub_responses_refused"], 1, "{health}");
    assert_eq!(
        health["limits"]["max_stub_response_bytes"],
        8 << 20,
        "{health}"
    );
    let metrics = server.get_text("/metrics").await;
    assert_eq!(metric(&metrics, "iotmock_stub_responses_refused_total"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_subscribers_share_one_byte_budget() {
    let scenario = r#"
[[fleet]]
id_pattern = "s-{n:03}"
count = 100
sensors = [{ plugin = "temperature", interval_ms = 10 }]
"#;
    let budget = 256 << 10;
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.telemetry_limits.stream_max_bytes = budget;
    })
    .await;
    // Three subscribers that ask for the largest queue and never read.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let response = server
            .http
            .get(server.url("/api/v1/telemetry/stream?queue=100000"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        idle.push(response);
    }
    wait_health(&server, |h| h["telemetry"]["stream_subscribers"] == 3).await;
    // 300,000 readings: far more than the sockets can take.
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 30_000}))
        .await;
    assert_eq!(status, 200);
    let (_, health) = server.get("/api/v1/health").await;
    let t = &health["telemetry"];
    assert!(t["published"].as_u64().unwrap() >= 300_000, "{t}");
    assert_eq!(t["stream_max_bytes"], budget as u64, "{t}");
    assert!(
        t["stream_queued_bytes"].as_u64().unwrap() <= budget as u64,
        "{t}"
    );
    assert!(t["stream_missed_by_bytes"].as_u64().unwrap() > 0, "{t}");
    let metrics = server.get_text("/metrics").await;
    assert!(metric(&metrics, "iotmock_telemetry_stream_queued_bytes") <= budget as u64);
    drop(idle);
    wait_health(&server, |h| {
        h["telemetry"]["stream_subscribers"] == 0 && h["telemetry"]["stream_queued_bytes"] == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_stops_at_max_devices_and_says_where_it_stands() {
    let server = TestServer::with_scenario("", |c| c.max_devices = 100).await;
    let bulk = |count: u32, pattern: &str| json!({"count": count, "id_pattern": pattern, "template": {"simulated": false}});
    let (status, body) = server
        .post("/api/v1/devices/bulk", bulk(60, "a-{n:03}"))
        .await;
    assert_eq!(status, 201, "{body}");

    let (status, problem) = server
        .post("/api/v1/devices/bulk", bulk(1_000_000, "b-{n:07}"))
        .await;
    assert_eq!(status, 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("at most 100"), "{problem}");
    assert!(detail.contains("has 60"), "{problem}");
    assert!(detail.contains("--max-devices"), "{problem}");

    let (status, _) = server
        .post("/api/v1/devices/bulk", bulk(41, "c-{n:03}"))
        .await;
    assert_eq!(status, 422, "one over the cap");
    let (status, _) = server
        .post("/api/v1/devices/bulk", bulk(40, "c-{n:03}"))
        .await;
    assert_eq!(status, 201, "up to the cap");
    let (status, problem) = server
        .post(
            "/api/v1/devices",
            json!({"id": "one-more", "simulated": false}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["type"], "https://iotmock.dev/problems/invalid-input",
        "{problem}"
    );

    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["limits"]["devices"], 100, "{health}");
    assert_eq!(health["limits"]["max_devices"], 100, "{health}");
    let metrics = server.get_text("/metrics").await;
    assert_eq!(metric(&metrics, "iotmock_max_devices"), 100);
    let (status, _) = server.delete("/api/v1/devices/a-001").await;
    assert_eq!(status, 204);
    let (status, _) = server
        .post(
            "/api/v1/devices",
            json!({"id": "one-more", "simulated": false}),
        )
        .await;
    assert_eq!(status, 201, "room again after a delete");
    server.stop().await;
}
