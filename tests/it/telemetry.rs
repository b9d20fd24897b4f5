//! Telemetry end to end: the demo fleet, the manual clock, determinism.

use std::collections::{BTreeMap, BTreeSet};

use iotmock::{ClockMode, ScenarioChoice};
use serde_json::json;

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_readings_arrive_from_every_device() {
    let server = TestServer::with_scenario("", |c| c.scenario = ScenarioChoice::Demo).await;
    let mut sub = server.subscribe("devices/+/telemetry/temperature").await;
    let mut seen = BTreeSet::new();
    while seen.len() < 10 {
        let message = sub.next().await;
        let reading = message.json();
        let device = reading["device"].as_str().unwrap().to_string();
        assert_eq!(
            message.topic,
            format!("devices/{device}/telemetry/temperature")
        );
        assert_eq!(reading["sensor"], "temperature");
        assert_eq!(reading["unit"], "celsius");
        let value = reading["value"].as_f64().unwrap();
        assert!(
            (10.0..35.0).contains(&value),
            "implausible room temperature {value}"
        );
        let ts = reading["ts"].as_str().unwrap();
        assert!(
            iotmock::parse_rfc3339_ms(ts).is_some(),
            "ts {ts} is RFC 3339 with ms"
        );
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
        seen.insert(device);
    }
    let expected: BTreeSet<String> = (1..=10).map(|n| format!("demo-{n:02}")).collect();
    assert_eq!(seen, expected);
    server.stop().await;
}

const THREE_DEVICES: &str = r#"
[[fleet]]
id_pattern = "t-{n}"
count = 3
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#;

/// Advances a manual clock and returns what a subscriber got, in order.
async fn manual_run(seed: u64, advance_ms: i64, expected: usize) -> Vec<(String, String, f64)> {
    let server = TestServer::with_scenario(THREE_DEVICES, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(seed);
    })
    .await;
    let mut sub = server.subscribe("devices/+/telemetry/#").await;
    let (status, clock) = server
        .post("/api/v1/clock/advance", json!({ "ms": advance_ms }))
        .await;
    assert_eq!(status, 200, "{clock}");
    assert_eq!(
        clock["now_ms"].as_i64().unwrap(),
        iotmock::MANUAL_EPOCH_MS + advance_ms
    );
    let mut out = Vec::new();
    for _ in 0..expected {
        let r = sub.next().await.json();
        out.push((
            r["device"].as_str().unwrap().to_string(),
            r["ts"].as_str().unwrap().to_string(),
            r["value"].as_f64().unwrap(),
        ));
    }
    assert!(sub.drain().is_empty(), "no more readings than due");
    server.stop().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_clock_produces_every_due_reading_in_timestamp_order() {
    let readings = manual_run(1, 10_000, 30).await;
    let mut per_device: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (device, ts, _) in &readings {
        per_device.entry(device).or_default().push(ts);
    }
    assert_eq!(per_device.len(), 3);
    for (device, stamps) in &per_device {
        assert_eq!(
            stamps.len(),
            10,
            "{device}: one reading per second for 10 s"
        );
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "{device}: {stamps:?}"
        );
    }
    let all: Vec<&String> = readings.iter().map(|(_, ts, _)| ts).collect();
    assert!(
        all.windows(2).all(|w| w[0] <= w[1]),
        "published in timestamp order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_the_same_values_and_another_seed_does_not() {
    let a = manual_run(7, 5_000, 15).await;
    let b = manual_run(7, 5_000, 15).await;
    let c = manual_run(8, 5_000, 15).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// A server on a manual clock under `seed`, advanced by `ms`.
async fn advanced(scenario: &str, seed: u64, ms: i64) -> TestServer {
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(seed);
    })
    .await;
    server.advance(ms).await;
    server
}

/// Exports everything after advancing a manual clock.
async fn export_run(seed: u64) -> (String, String) {
    let server = advanced(THREE_DEVICES, seed, 10_000).await;
    let jsonl = server
        .http
        .get(server.url("/api/v1/telemetry"))
        .send()
        .await
        .unwrap();
    assert_eq!(jsonl.headers()["content-type"], "application/x-ndjson");
    let jsonl = jsonl.text().await.unwrap();
    let csv = server
        .http
        .get(server.url("/api/v1/telemetry?format=csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await;
    (jsonl, csv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_byte_identical_under_the_same_seed() {
    let (a, a_csv) = export_run(7).await;
    let (b, b_csv) = export_run(7).await;
    let (c, _) = export_run(8).await;
    assert_eq!(a.lines().count(), 30);
    assert_eq!(a, b, "same seed, same calls: same bytes");
    assert_eq!(a_csv, b_csv);
    assert_ne!(a, c);
    let mut lines = a_csv.lines();
    assert_eq!(lines.next(), Some("device,sensor,ts,value,unit,anomaly"));
    assert_eq!(lines.count(), 30);
    for line in a.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["unit"], "celsius");
    }
}

/// Humidity reads the temperature its device's temperature sensor writes
/// to the shared state. Both are due at the same instants, and the two
/// plugins' calls of a round run on different workers at once.
const TEMPERATURE_AND_HUMIDITY: &str = r#"
[[fleet]]
id_pattern = "th-{n}"
count = 40
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
[[fleet.sensors]]
plugin = "humidity"
interval_ms = 1000
"#;

async fn humidity_export(seed: u64) -> String {
    let server = advanced(TEMPERATURE_AND_HUMIDITY, seed, 30_000).await;
    let export = server
        .http
        .get(server.url("/api/v1/telemetry?sensor=humidity&limit=10000"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await;
    export
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_reading_each_others_state_are_deterministic() {
    let first = humidity_export(11).await;
    assert_eq!(first.lines().count(), 40 * 30, "{first}");
    for _ in 0..2 {
        assert_eq!(
            humidity_export(11).await,
            first,
            "same seed: the same humidity, whichever sensor call ran first"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_filters_and_pages() {
    let server = TestServer::with_scenario(THREE_DEVICES, |c| c.clock = ClockMode::Manual).await;
    server
        .post("/api/v1/clock/advance", json!({ "ms": 10_000 }))
        .await;
    let get = |path: String| {
        let http = server.http.clone();
        let url = server.url(&path);
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let next = r
                .headers()
                .get("x-next-cursor")
                .map(|v| v.to_str().unwrap().to_string());
            (status, next, r.text().await.unwrap())
        }
    };
    let (_, _, one) = get("/api/v1/telemetry?device=t-2&sensor=temperature".into()).await;
    assert_eq!(one.lines().count(), 10);
    assert!(one.lines().all(|l| l.contains("\"device\":\"t-2\"")));

    let start = iotmock::rfc3339_ms(iotmock::MANUAL_EPOCH_MS + 5_000);
    let (_, _, late) = get(format!("/api/v1/telemetry?since={start}")).await;
    assert_eq!(late.lines().count(), 15, "readings at or after t+5 s");

    let mut cursor = None;
    let mut all = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/telemetry?limit=7&cursor={c}"),
            None => "/api/v1/telemetry?limit=7".to_string(),
        };
        let (status, next, page) = get(path).await;
        assert_eq!(status, 200);
        all.extend(page.lines().map(str::to_string));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let (_, _, whole) = get("/api/v1/telemetry".into()).await;
    assert_eq!(
        all.join("\n") + "\n",
        whole,
        "pages add up to the whole, no repeats"
    );

    let (status, _, problem) = get("/api/v1/telemetry?since=yesterday".into()).await;
    assert_eq!(status, 422, "{problem}");
    let (status, _, _) = get("/api/v1/telemetry?format=xml".into()).await;
    assert_eq!(status, 422);
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["telemetry"]["journal_len"], 30);
    assert_eq!(health["telemetry"]["journal_evicted"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_pages_say_in_the_body_when_more_follow() {
    let server = TestServer::with_scenario(THREE_DEVICES, |c| c.clock = ClockMode::Manual).await;
    server
        .post("/api/v1/clock/advance", json!({ "ms": 10_000 }))
        .await;
    let mut readings = Vec::new();
    let mut path = "/api/v1/telemetry?limit=7&trailer=true".to_string();
    let mut pages = 0;
    loop {
        let body = server.get_text(&path).await;
        pages += 1;
        let mut lines: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        let trailer = lines.pop().expect("a trailer line");
        assert_eq!(
            trailer.as_object().map(|o| o.len()),
            Some(1),
            "the trailer is only {{\"next_cursor\"}}: {trailer}"
        );
        assert!(lines.iter().all(|r| r.get("device").is_some()));
        readings.extend(lines);
        match trailer["next_cursor"].as_u64() {
            Some(next) => path = format!("/api/v1/telemetry?limit=7&trailer=true&cursor={next}"),
            None => {
                assert!(trailer["next_cursor"].is_null(), "{trailer}");
                break;
            }
        }
    }
    assert_eq!(readings.len(), 30);
    assert_eq!(pages, 5);
    // Without it the body is the readings alone, as before.
    let plain = server.get_text("/api/v1/telemetry?limit=7").await;
    assert_eq!(plain.lines().count(), 7);
    let (status, problem) = server
        .get("/api/v1/telemetry?format=csv&trailer=true")
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("x-next-cursor")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_sets_the_start_time_and_the_flag_overrides_it() {
    let scenario = format!("start_time = \"2026-07-01T08:00:00Z\"\n{THREE_DEVICES}");
    let server = TestServer::with_scenario(&scenario, |c| c.clock = ClockMode::Manual).await;
    let (_, clock) = server.get("/api/v1/clock").await;
    assert_eq!(clock["now"], "2026-07-01T08:00:00.000Z");
    let mut sub = server.subscribe("devices/t-1/telemetry/#").await;
    server
        .post("/api/v1/clock/advance", json!({ "ms": 1_000 }))
        .await;
    let ts = sub.next().await.json()["ts"].as_str().unwrap().to_string();
    assert!(ts.starts_with("2026-07-01T08:00:0"), "{ts}");
    server.stop().await;

    let start = iotmock::parse_rfc3339_ms("2030-01-01T12:00:00Z").unwrap();
    let server = TestServer::with_scenario(&scenario, |c| {
        c.clock = ClockMode::Manual;
        c.start_time_ms = Some(start);
    })
    .await;
    let (_, clock) = server.get("/api/v1/clock").await;
    assert_eq!(clock["now_ms"], start);
    server.stop().await;
}
