//! The live telemetry stream (server-sent events) read by a real HTTP
//! client, jitter, and dropout records in the export.

use std::time::Instant;

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::{TestServer, WAIT};

/// One server-sent event: its type and its data.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    kind: String,
    data: Value,
    id: Option<u64>,
}

/// An SSE reader over a real reqwest response.
struct EventStream {
    response: reqwest::Response,
    pending: String,
}

impl EventStream {
    async fn open(server: &TestServer, query: &str) -> Self {
        Self::open_after(server, query, None).await
    }

    /// Opens the stream as a reconnecting EventSource does, with the id of
    /// the last event it received.
    async fn open_after(server: &TestServer, query: &str, last_event_id: Option<u64>) -> Self {
        let mut request = server
            .http
            .get(server.url(&format!("/api/v1/telemetry/stream{query}")));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("GET stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            pending: String::new(),
        }
    }

    /// The next event (comments skipped), failing the test after [`WAIT`].
    async fn next(&mut self) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut kind = "message".to_string();
                let mut data = None;
                let mut id = None;
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = k.to_string();
                    } else if let Some(i) = line.strip_prefix("id: ") {
                        id = Some(i.parse().expect("a numeric event id"));
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(d).expect("JSON data"));
                    }
                }
                if let Some(data) = data {
                    return Event { kind, data, id };
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event in time")
                .expect("stream readable")
                .expect("stream still open");
            self.pending.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

const FLEET: &str = r#"
[[fleet]]
id_pattern = "t-{n}"
count = 3
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
[[fleet.sensors]]
plugin = "humidity"
interval_ms = 2000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stream_sends_published_readings_filtered_by_device_and_sensor() {
    let server = TestServer::with_scenario(FLEET, |c| c.clock = ClockMode::Manual).await;
    let mut one = EventStream::open(&server, "?device=t-2&sensor=temperature").await;
    let mut all = EventStream::open(&server, "").await;
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 10_000}))
        .await;
    assert_eq!(status, 200);

    let export = server
        .http
        .get(server.url("/api/v1/telemetry?device=t-2&sensor=temperature"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expected: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), 10);
    for want in &expected {
        let event = one.next().await;
        assert_eq!(event.kind, "reading");
        assert_eq!(
            &event.data, want,
            "the stream carries the published payload"
        );
    }

    // The unfiltered stream sees every published reading, in order.
    let (_, health) = server.get("/api/v1/health").await;
    let published = health["telemetry"]["published"].as_u64().unwrap();
    assert_eq!(published, 3 * 10 + 3 * 5);
    assert_eq!(health["telemetry"]["stream_subscribers"], 2);
    let mut last = String::new();
    let mut sensors = std::collections::BTreeSet::new();
    for _ in 0..published {
        let event = all.next().await;
        assert_eq!(event.kind, "reading");
        let ts = event.data["ts"].as_str().unwrap().to_string();
        assert!(ts >= last, "in publishing order: {last} then {ts}");
        last = ts;
        sensors.insert(event.data["sensor"].as_str().unwrap().to_string());
    }
    assert_eq!(sensors.len(), 2);

    // A later reading still arrives: the stream stays open.
    server
        .post("/api/v1/clock/advance", json!({"ms": 1_000}))
        .await;
    let event = one.next().await;
    assert_eq!(event.data["device"], "t-2");

    // Closing a stream unsubscribes it.
    drop(all);
    let deadline = Instant::now() + WAIT;
    loop {
        // Subscribers are noticed gone on their next write.
        server
            .post("/api/v1/clock/advance", json!({"ms": 1_000}))
            .await;
        let (_, health) = server.get("/api/v1/health").await;
        if health["telemetry"]["stream_subscribers"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.get("/api/v1/health").await.1["telemetry"]["stream_missed"],
        0
    );

    let (_, doc) = server.get("/api/v1/openapi.json").await;
    assert!(doc["paths"]["/api/v1/telemetry/stream"]["get"].is_object());
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("iotmock_telemetry_stream_missed_total 0"));

    for bad in [
        "?queue=0",
        "?queue=100001",
        "?include=everything",
        "?colour=red",
    ] {
        let response = server
            .http
            .get(server.url(&format!("/api/v1/telemetry/stream{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_client_is_told_how_many_readings_it_missed() {
    // 40 devices, one reading a second each, 1,000 s: 40,000 readings
    // (about 5 MB of events), far more than the socket buffers hold for a
    // client that does not read, with a queue of 10.
    let scenario = r#"
[[fleet]]
id_pattern = "s-{n:02}"
count = 40
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#;
    let server = TestServer::with_scenario(scenario, |c| c.clock = ClockMode::Manual).await;
    let mut slow = EventStream::open(&server, "?queue=10").await;
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 1_000_000}))
        .await;
    assert_eq!(status, 200);
    let (_, health) = server.get("/api/v1/health").await;
    let published = health["telemetry"]["published"].as_u64().unwrap();
    assert_eq!(published, 40_000);

    let (mut readings, mut missed, mut markers) = (0u64, 0u64, 0u64);
    let mut last_ts = String::new();
    while readings + missed < published {
        let event = slow.next().await;
        match event.kind.as_str() {
            "reading" => {
                let ts = event.data["ts"].as_str().unwrap().to_string();
                assert!(ts >= last_ts);
                last_ts = ts;
                readings += 1;
            }
            "missed" => {
                missed += event.data["missed"].as_u64().unwrap();
                markers += 1;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    eprintln!("slow client: {readings} readings, {missed} missed in {markers} gaps");
    assert_eq!(
        readings + missed,
        published,
        "every reading is accounted for"
    );
    assert!(markers >= 1 && missed > 0, "the client fell behind");
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["stream_missed"], missed, "{health}");
    server.stop().await;
}

/// Exports everything (optionally with dropouts) after a manual run.
async fn run_and_export(scenario: &str, seed: u64, advance_ms: i64, query: &str) -> String {
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(seed);
    })
    .await;
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": advance_ms}))
        .await;
    assert_eq!(status, 200);
    let text = server
        .http
        .get(server.url(&format!("/api/v1/telemetry{query}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await;
    text
}

fn stamps(export: &str, device: &str) -> Vec<i64> {
    export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["device"] == device)
        .map(|r| iotmock::parse_rfc3339_ms(r["ts"].as_str().unwrap()).unwrap())
        .collect()
}

const JITTERY: &str = r#"
[[fleet]]
id_pattern = "j-{n}"
count = 2
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
jitter_ms = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_jitter_varies_intervals_within_bounds_and_stays_deterministic() {
    let a = run_and_export(JITTERY, 3, 200_000, "").await;
    let b = run_and_export(JITTERY, 3, 200_000, "").await;
    let c = run_and_export(JITTERY, 4, 200_000, "").await;
    assert_eq!(a, b, "same seed: byte-identical export");
    assert_ne!(a, c);
    for device in ["j-1", "j-2"] {
        let ts = stamps(&a, device);
        assert!(ts.len() > 150, "{device}: {}", ts.len());
        let gaps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| (700..=1300).contains(g)),
            "{device}: gaps within 1000 ± 300 ms: {gaps:?}"
        );
        let distinct: std::collections::BTreeSet<i64> = gaps.iter().copied().collect();
        assert!(distinct.len() > 50, "{device}: gaps vary: {distinct:?}");
        let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
        assert!(*lo < 800 && *hi > 1200, "{device}: spread {lo}..{hi}");
        let mean = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
        assert!((mean - 1000.0).abs() < 30.0, "{device}: mean gap {mean}");
    }

    // Without jitter the beat is steady.
    let steady = run_and_export(&JITTERY.replace("jitter_ms = 300\n", ""), 3, 200_000, "").await;
    let steady_ts = stamps(&steady, "j-1");
    let gaps: std::collections::BTreeSet<i64> = steady_ts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.into_iter().collect::<Vec<_>>(), [1000]);

    let server = TestServer::with_scenario("", |_| {}).await;
    let (status, problem) = server
        .post(
            "/api/v1/devices",
            json!({"id": "x", "sensors": [{"plugin": "temperature", "interval_ms": 1000, "jitter_ms": 1000}]}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("jitter_ms"),
        "{problem}"
    );
    server.stop().await;
}

const DROPPY: &str = r#"
[[fleet]]
id_pattern = "d-{n}"
count = 2
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
config = { anomalies = { dropout = 0.05, dropout_readings = 4 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_dropouts_are_in_the_export_on_request_and_never_on_mqtt() {
    let server = TestServer::with_scenario(DROPPY, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(11);
    })
    .await;
    let mut sub = server.subscribe("devices/+/telemetry/#").await;
    let mut live = EventStream::open(&server, "?device=d-1&include=dropouts").await;
    let (status, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 600_000}))
        .await;
    assert_eq!(status, 200);
    let (_, health) = server.get("/api/v1/health").await;
    let published = health["telemetry"]["published"].as_u64().unwrap();
    let dropouts = health["telemetry"]["dropouts"].as_u64().unwrap();
    assert_eq!(
        published + dropouts,
        2 * 600,
        "every due reading is one or the other"
    );
    assert!(dropouts > 10, "{health}");

    let get = |query: &'static str| {
        let http = server.http.clone();
        let url = server.url(&format!("/api/v1/telemetry{query}"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let plain = get("").await;
    assert_eq!(plain.lines().count() as u64, published);
    assert!(!plain.contains("null") && !plain.contains("dropout"));

    let with = get("?include=dropouts").await;
    let records: Vec<Value> = with
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let missing: Vec<&Value> = records.iter().filter(|r| r["value"].is_null()).collect();
    assert_eq!(missing.len() as u64, dropouts);
    assert!(missing.iter().all(|r| r["anomaly"] == "dropout"));
    // Together they make a steady beat per device: no gaps, no repeats.
    for device in ["d-1", "d-2"] {
        let ts = stamps(&with, device);
        assert_eq!(ts.len(), 600);
        assert!(ts.windows(2).all(|w| w[1] - w[0] == 1000), "{device}");
    }
    let csv = get("?include=dropouts&format=csv").await;
    assert_eq!(
        csv.lines()
            .filter(|l| l.ends_with(",,celsius,dropout"))
            .count() as u64,
        dropouts,
        "CSV: an empty value"
    );

    // MQTT carries the published readings only.
    let mut on_mqtt = 0;
    while on_mqtt < published {
        let reading = sub.next().await.json();
        assert!(reading["value"].is_number(), "{reading}");
        on_mqtt += 1;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(sub.drain().is_empty());

    // The live stream, asked for dropouts, has them in place.
    let d1_dropouts = missing.iter().filter(|r| r["device"] == "d-1").count();
    let mut seen = 0;
    for _ in 0..600 {
        let event = live.next().await;
        if event.data["value"].is_null() {
            seen += 1;
        }
    }
    assert_eq!(seen, d1_dropouts);

    let response = server
        .http
        .get(server.url("/api/v1/telemetry?include=gaps"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_stream_client_resumes_after_its_last_event_id() {
    let server = TestServer::with_scenario(FLEET, |c| c.clock = ClockMode::Manual).await;
    let advance = |ms: i64| {
        let request = server
            .http
            .post(server.url("/api/v1/clock/advance"))
            .json(&json!({ "ms": ms }));
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };
    let query = "?device=t-1&sensor=temperature";
    let mut stream = EventStream::open(&server, query).await;
    advance(3_000).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(stream.next().await);
    }
    let ids: Vec<u64> = first.iter().map(|e| e.id.expect("an id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    // The client drops after the second event; more readings come while
    // it is away.
    drop(stream);
    advance(4_000).await;

    let mut resumed = EventStream::open_after(&server, query, Some(ids[1])).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(resumed.next().await);
    }
    assert!(got.iter().all(|e| e.kind == "reading"), "{got:?}");
    assert_eq!(got[0], first[2], "the third reading again, as it was");
    let ms = |e: &Event| iotmock::parse_rfc3339_ms(e.data["ts"].as_str().unwrap()).unwrap();
    let steps: Vec<i64> = got.windows(2).map(|w| ms(&w[1]) - ms(&w[0])).collect();
    assert_eq!(
        steps, [1000; 4],
        "every reading after the last one seen, once, in order: {got:?}"
    );
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    // Then the live ones, with nothing repeated.
    advance(1_000).await;
    let live = resumed.next().await;
    assert_eq!(ms(&live) - ms(&got[4]), 1000, "{live:?}");
    assert!(live.id > got[4].id);

    // An id the journal cannot answer for (from an earlier run) says so,
    // then replays what is kept.
    let mut stale = EventStream::open_after(&server, query, Some(u64::MAX / 2)).await;
    let gap = stale.next().await;
    assert_eq!(gap.kind, "gap", "{gap:?}");
    assert_eq!(stale.next().await, first[0]);

    let response = server
        .http
        .get(server.url("/api/v1/telemetry/stream"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    server.stop().await;
}
