//! Edge benchmark: 1,000 simulated devices reading once a second feed one
//! edge node whose two-rule pipeline (edge-threshold, then edge-zscore)
//! runs once per 1 s window. The manual clock is advanced a window at a
//! time; each advance returns once the window's batch is processed, and
//! the node reports that batch's latency (window close → output handed to
//! the uplink, publishing included).
//!
//! `cargo bench --bench edge` (IOTMOCK_BENCH_QUICK=1 for a small smoke run).
//! Loopback only; bounded in count; stops by itself.

use std::time::Instant;

use iotmock::{ClockMode, Config, ScenarioChoice, Server};
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let quick = std::env::var("IOTMOCK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let devices = 1000;
    let windows = if quick { 30 } else { 300 };
    let scenario = format!(
        r#"
[[fleet]]
id_pattern = "b-{{n:04}}"
count = {devices}
tags = ["bench"]
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = Config {
            scenario: ScenarioChoice::Inline(scenario),
            clock: ClockMode::Manual,
            seed: Some(1),
            ..Config::ephemeral()
        };
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}/api/v1", server.http_addr());
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{base}/edge-nodes"))
            .json(&json!({
                "id": "bench",
                "devices": {"tag": "bench"},
                "rules": [
                    {"plugin": "edge-threshold", "config": {"sensor": "temperature", "min": -40.0, "max": 125.0}},
                    {"plugin": "edge-zscore", "config": {"threshold": 4.0}}
                ],
                "window_ms": 1000
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

        let mut batch_ms = Vec::with_capacity(windows);
        let mut per_reading_us = Vec::with_capacity(windows);
        let mut readings = 0u64;
        let started = Instant::now();
        for _ in 0..windows {
            let r = http
                .post(format!("{base}/clock/advance"))
                .json(&json!({"ms": 1000}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let node: Value = http
                .get(format!("{base}/edge-nodes/bench"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let latency = &node["latency"];
            let n = latency["last_readings"].as_u64().unwrap();
            let ms = latency["last_ms"].as_f64().unwrap();
            if n > 0 {
                batch_ms.push(ms);
                per_reading_us.push(ms * 1000.0 / n as f64);
                readings += n;
            }
        }
        let wall = started.elapsed();
        let node: Value = http
            .get(format!("{base}/edge-nodes/bench"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(node["state"], "ok", "{node}");
        assert_eq!(node["readings"]["dropped"], 0, "{node}");
        batch_ms.sort_by(f64::total_cmp);
        per_reading_us.sort_by(f64::total_cmp);
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

        println!();
        println!(
            "edge benchmark: {devices} devices, 2-rule pipeline (edge-threshold -> edge-zscore), \
             1 s windows, {} batches, {readings} readings, {cores} cores ({})",
            batch_ms.len(),
            if quick { "quick" } else { "full" }
        );
        println!("{:<52} {:>12} {:>12}", "measure", "result", "target");
        println!("{:<52} {:>9.2} ms", "batch latency p50 (window close -> uplink)", percentile(&batch_ms, 0.5));
        println!("{:<52} {:>9.2} ms", "batch latency p99", percentile(&batch_ms, 0.99));
        println!("{:<52} {:>9.2} ms", "batch latency max", batch_ms[batch_ms.len() - 1]);
        println!("{:<52} {:>9.2} µs", "per reading p50 (batch latency / batch size)", percentile(&per_reading_us, 0.5));
        println!("{:<52} {:>9.2} µs {:>12}", "per reading p99", percentile(&per_reading_us, 0.99), "< 1000 µs");
        println!("{:<52} {:>9.0} /s", "readings through the pipeline per second of wall time", readings as f64 / wall.as_secs_f64());
        println!(
            "JSON: {}",
            json!({
                "devices": devices,
                "batches": batch_ms.len(),
                "readings": readings,
                "batch_p50_ms": percentile(&batch_ms, 0.5),
                "batch_p99_ms": percentile(&batch_ms, 0.99),
                "batch_max_ms": batch_ms[batch_ms.len() - 1],
                "per_reading_p50_us": percentile(&per_reading_us, 0.5),
                "per_reading_p99_us": percentile(&per_reading_us, 0.99),
            })
        );
        server.shutdown().await;
    });
}
