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
            iotmock::clock::parse_rfc3339_ms(ts).is_some(),
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
        iotmock::clock::MANUAL_EPOCH_MS + advance_ms
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
