//! Telemetry benchmark: 100,000 simulated devices, each with a temperature
//! sensor reporting every 10 s of simulated time.
//!
//! 1. Real time: after a ramp, CPU share of the whole process (user +
//!    system time from /proc/self/stat over wall time; 1.0 = one core),
//!    resident memory, readings published per second and how far
//!    production lags the clock.
//! 2. Accelerated clock (x1000, far more than can be produced): readings
//!    per second the scheduler sustains when it is the bottleneck.
//!
//! `cargo bench --bench telemetry`; IOTMOCK_BENCH_QUICK=1 for a small
//! smoke run, IOTMOCK_BENCH_SECS=N for the measured real-time span
//! (default 90). Loopback only, bounded in time; stops by itself.

use std::time::{Duration, Instant};

use iotmock::{ClockMode, Config, Server};
use serde_json::{Value, json};

/// Clock ticks per second of /proc/self/stat (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 here.
    (tick(11) + tick(12)) / TICKS_PER_S
}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn health(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn provision(http: &reqwest::Client, base: &str, count: u32) -> Duration {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/devices/bulk"))
        .json(&json!({
            "count": count,
            "id_pattern": "dev-{n:06}",
            "template": {
                "type": "thermometer",
                "sensors": [{"plugin": "temperature", "interval_ms": 10000}],
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.bytes().await.unwrap();
    started.elapsed()
}

fn main() {
    let quick = std::env::var("IOTMOCK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let count: u32 = if quick { 2_000 } else { 100_000 };
    let measure_s: u64 = std::env::var("IOTMOCK_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10 } else { 90 });
    let ramp = Duration::from_secs(if quick { 5 } else { 20 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let http = reqwest::Client::new();

        // 1. Real time.
        let server = Server::start(Config::ephemeral())
            .await
            .expect("server starts");
        let base = format!("http://{}/api/v1", server.http_addr());
        let rss_start = status_kib("VmRSS:");
        let provision_time = provision(&http, &base, count).await;
        tokio::time::sleep(ramp).await;
        let h0 = health(&http, &base).await;
        let (cpu0, wall0) = (cpu_seconds(), Instant::now());
        let mut rss_max = 0;
        let mut lag_max = 0i64;
        while wall0.elapsed() < Duration::from_secs(measure_s) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_max = rss_max.max(status_kib("VmRSS:"));
            let h = health(&http, &base).await;
            let lag = h["clock"]["now_ms"].as_i64().unwrap()
                - h["telemetry"]["produced_until"].as_i64().unwrap();
            lag_max = lag_max.max(lag);
        }
        let (cpu1, wall) = (cpu_seconds(), wall0.elapsed().as_secs_f64());
        let h1 = health(&http, &base).await;
        let published = h1["telemetry"]["published"].as_u64().unwrap()
            - h0["telemetry"]["published"].as_u64().unwrap();
        let failed = h1["telemetry"]["sample_failed"].as_u64().unwrap();
        let cpu_share = (cpu1 - cpu0) / wall;
        let realtime_rate = published as f64 / wall;
        let rss_end = status_kib("VmRSS:");
        server.shutdown().await;

        // 2. Accelerated: the clock runs 1000 times faster than the fleet
        // can be served, so production is the bottleneck.
        let server = Server::start(Config {
            clock: ClockMode::Accelerated(1000.0),
            ..Config::ephemeral()
        })
        .await
        .expect("server starts");
        let base = format!("http://{}/api/v1", server.http_addr());
        provision(&http, &base, count).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let a0 = health(&http, &base).await;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(if quick { 5 } else { 20 })).await;
        let a1 = health(&http, &base).await;
        let accelerated = (a1["telemetry"]["published"].as_u64().unwrap()
            - a0["telemetry"]["published"].as_u64().unwrap()) as f64
            / t0.elapsed().as_secs_f64();
        let calls = a1["telemetry"]["plugin_calls"].as_u64().unwrap()
            - a0["telemetry"]["plugin_calls"].as_u64().unwrap();
        server.shutdown().await;

        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        println!(
            "telemetry benchmark: {count} devices x 1 reading / 10 s ({}), {cores} cores",
            if quick { "quick" } else { "full" }
        );
        println!("{:<52} {:>16} {:>14}", "measure", "result", "target");
        println!(
            "{:<52} {:>14.2} s {:>14}",
            "bulk provision with sensors (one request)",
            provision_time.as_secs_f64(),
            ""
        );
        println!(
            "{:<52} {:>16} {:>14}",
            format!("real time: measured span after a {} s ramp", ramp.as_secs()),
            format!("{wall:.0} s"),
            "60-120 s"
        );
        println!(
            "{:<52} {:>14.0}/s {:>14}",
            "real time: readings published",
            realtime_rate,
            f64::from(count) / 10.0
        );
        println!(
            "{:<52} {:>16.3} {:>14}",
            "real time: CPU share (1.0 = one core)", cpu_share, "< 1.0"
        );
        println!(
            "{:<52} {:>12} MiB {:>14}",
            "real time: resident memory, peak while measuring",
            rss_max / 1024,
            "< 2048 MiB"
        );
        println!(
            "{:<52} {:>12} MiB {:>14}",
            "real time: resident memory at start (no devices)",
            rss_start / 1024,
            ""
        );
        println!(
            "{:<52} {:>13} ms {:>14}",
            "real time: worst production lag behind the clock", lag_max, ""
        );
        println!(
            "{:<52} {:>16} {:>14}",
            "real time: readings lost to failed plugin calls", failed, "0"
        );
        println!(
            "{:<52} {:>14.0}/s {:>14}",
            "accelerated x1000: readings published", accelerated, ""
        );
        println!(
            "{:<52} {:>16} {:>14}",
            "accelerated x1000: batched plugin calls", calls, ""
        );
        println!(
            "JSON: {}",
            json!({
                "devices": count,
                "cores": cores,
                "provision_s": provision_time.as_secs_f64(),
                "measured_s": wall,
                "realtime_readings_per_s": realtime_rate,
                "cpu_share": cpu_share,
                "rss_peak_mib": rss_max / 1024,
                "rss_end_mib": rss_end / 1024,
                "lag_max_ms": lag_max,
                "sample_failed": failed,
                "accelerated_readings_per_s": accelerated,
            })
        );
    });
}
