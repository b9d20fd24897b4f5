//! Command benchmark: 1,000 simulated thermostats answer commands through
//! their WASM handler; measures the round trip a back end sees (POST the
//! command, long-poll `GET /commands/{id}?wait_ms=` until it is final) and
//! the throughput, over HTTP on loopback. Also a fleet command to all
//! 1,000 at once.
//!
//! `cargo bench --bench commands` (IOTMOCK_BENCH_QUICK=1 for a small smoke
//! run). Loopback only; bounded in count; stops by itself.

use std::time::{Duration, Instant};

use iotmock::{Config, Server};
use serde_json::{Value, json};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let quick = std::env::var("IOTMOCK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let devices: usize = if quick { 100 } else { 1_000 };
    let commands: usize = if quick { 500 } else { 10_000 };
    let concurrency: usize = 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = Server::start(Config::ephemeral()).await.expect("server starts");
        let base = format!("http://{}/api/v1", server.http_addr());
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{base}/devices/bulk"))
            .json(&json!({
                "count": devices,
                "id_pattern": "th-{n:04}",
                "template": {
                    "tags": ["bench"],
                    "command_handler": {"plugin": "thermostat", "config": {"delay_ms": 0}}
                }
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);

        // Warm-up: every worker instantiates the handler once.
        for n in 0..50 {
            round_trip(&http, &base, &format!("th-{:04}", n % devices + 1)).await;
        }

        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let http = http.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = w;
                while n < commands {
                    let device = format!("th-{:04}", n % devices + 1);
                    latencies.push(round_trip(&http, &base, &device).await);
                    n += concurrency;
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();

        // One sequential client: latency without queueing behind others.
        let mut single = Vec::new();
        for n in 0..(commands / 10).max(100) {
            single.push(round_trip(&http, &base, &format!("th-{:04}", n % devices + 1)).await);
        }
        single.sort();

        // A fleet command to every device, waited on as one.
        let fleet_started = Instant::now();
        let response = http
            .post(format!("{base}/commands"))
            .json(&json!({"devices": {"tag": "bench"}, "name": "set_target", "params": {"target": 20}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let batch: Value = response.json().await.unwrap();
        let done: Value = http
            .get(format!("{base}/commands/batches/{}?wait_ms=60000", batch["id"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let fleet_elapsed = fleet_started.elapsed();
        assert_eq!(done["done"], true, "{done}");
        assert_eq!(done["summary"]["completed"], devices as u64);

        println!("commands benchmark: {devices} simulated thermostats (WASM handler), HTTP on loopback");
        println!(
            "  {commands} commands, {concurrency} concurrent clients: {:.0} commands/s; round trip p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            commands as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap()),
        );
        println!(
            "  one client, {} commands in sequence: round trip p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            single.len(),
            ms(percentile(&single, 0.5)),
            ms(percentile(&single, 0.99)),
            ms(*single.last().unwrap()),
        );
        println!(
            "  fleet command to all {devices}: every ack in {:.1} ms",
            ms(fleet_elapsed)
        );
        server.shutdown().await;
    });
}

/// POST a command, long-poll until it is final; the time a back end waits.
async fn round_trip(http: &reqwest::Client, base: &str, device: &str) -> Duration {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/devices/{device}/commands"))
        .json(&json!({"name": "set_target", "params": {"target": 21.5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let cmd: Value = response.json().await.unwrap();
    let id = cmd["id"].as_str().unwrap();
    let done: Value = http
        .get(format!("{base}/commands/{id}?wait_ms=10000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    started.elapsed()
}
