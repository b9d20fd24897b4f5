//! Fleet benchmark: provision 100,000 devices in bulk over HTTP, then
//! measure resident memory per device and list/filter latency.
//!
//! `cargo bench --bench fleet` (IOTMOCK_BENCH_QUICK=1 for a small smoke run).
//! Loopback only; bounded in count; stops by itself.

use std::time::{Duration, Instant};

use iotmock::{Config, Server};
use serde_json::json;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let quick = std::env::var("IOTMOCK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let count: u32 = if quick { 2_000 } else { 100_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = Server::start(Config::ephemeral()).await.expect("server starts");
        let base = format!("http://{}/api/v1", server.http_addr());
        let http = reqwest::Client::new();
        let before = rss_kib();

        // Idle real devices (no telemetry): the registry and store alone.
        let started = Instant::now();
        let response = http
            .post(format!("{base}/devices/bulk"))
            .json(&json!({
                "count": count,
                "id_pattern": "dev-{n:06}",
                "template": {"type": "meter", "tags": ["bench", "floor-1"], "group": "site-a", "simulated": false}
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.unwrap();
        let provision = started.elapsed();
        assert_eq!(body["created"], count);
        drop(body);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = rss_kib();
        let per_device = (after.saturating_sub(before)) as f64 * 1024.0 / f64::from(count);

        let mut list = Vec::new();
        let mut filtered = Vec::new();
        for i in 0..50 {
            let t = Instant::now();
            let r = http.get(format!("{base}/devices?limit=100&cursor=dev-{:06}", i * 997 % count)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            list.push(t.elapsed());
            let t = Instant::now();
            let r = http.get(format!("{base}/devices?tag=floor-1&group=site-a&state=provisioned&limit=100")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            filtered.push(t.elapsed());
        }
        list.sort();
        filtered.sort();
        let get = {
            let t = Instant::now();
            for i in 0..200u32 {
                let r = http.get(format!("{base}/devices/dev-{:06}", 1 + i * 7 % count)).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
            t.elapsed() / 200
        };

        println!();
        println!("fleet benchmark: {count} devices ({})", if quick { "quick" } else { "full" });
        println!("{:<44} {:>14} {:>14}", "measure", "result", "target");
        println!("{:<44} {:>12.2} s {:>14}", "bulk provision (one request, one transaction)", provision.as_secs_f64(), "< 10 s");
        println!("{:<44} {:>10.0} B/dev {:>14}", "resident memory per idle device", per_device, "< 2048 B");
        println!("{:<44} {:>11.2} ms {:>14}", "GET /devices page of 100, p50", percentile(&list, 0.5).as_secs_f64() * 1e3, "");
        println!("{:<44} {:>11.2} ms {:>14}", "GET /devices page of 100, p99", percentile(&list, 0.99).as_secs_f64() * 1e3, "");
        println!("{:<44} {:>11.2} ms {:>14}", "GET /devices tag+group+state filter, p50", percentile(&filtered, 0.5).as_secs_f64() * 1e3, "");
        println!("{:<44} {:>11.2} ms {:>14}", "GET /devices tag+group+state filter, p99", percentile(&filtered, 0.99).as_secs_f64() * 1e3, "");
        println!("{:<44} {:>11.2} ms {:>14}", "GET /devices/{id}, mean", get.as_secs_f64() * 1e3, "");
        println!(
            "JSON: {}",
            json!({
                "devices": count,
                "provision_s": provision.as_secs_f64(),
                "rss_bytes_per_device": per_device,
                "list_p50_ms": percentile(&list, 0.5).as_secs_f64() * 1e3,
                "list_p99_ms": percentile(&list, 0.99).as_secs_f64() * 1e3,
                "filter_p50_ms": percentile(&filtered, 0.5).as_secs_f64() * 1e3,
                "filter_p99_ms": percentile(&filtered, 0.99).as_secs_f64() * 1e3,
                "get_mean_ms": get.as_secs_f64() * 1e3,
            })
        );
        server.shutdown().await;
    });
}
