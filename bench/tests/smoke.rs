//! The benchmark harness, in a tiny run (`iotmock-bench --smoke`): every
//! part still starts, measures and reports, so the full benchmark cannot
//! rot between the times someone runs it.
//!
//! It drives the `iotmock` binary the harness finds by itself (`IOTMOCK_BIN`,
//! else the one beside it in the target folder): build the server first,
//! `cargo build --release --workspace && cargo test --release -p iotmock-bench`.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_harness_smoke_run_reports_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_iotmock-bench"))
        .args(["--smoke", "--json"])
        .arg(&json_path)
        .output()
        .expect("run iotmock-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "iotmock-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON report written"))
            .expect("the report is JSON");
    assert_eq!(report["errors"], Value::Array(vec![]), "{stdout}");

    // The printed tables are the JSON's tables.
    let tables = report["tables"].as_array().expect("tables");
    let titles: Vec<&str> = tables
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    for part in [
        "Broker throughput",
        "Broker latency",
        "Concurrent MQTT connections",
        "The seed's five",
        "Plugins",
        "MQTT over TLS",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(part)),
            "no table {part:?} in {titles:?}"
        );
    }
    for table in tables {
        assert!(stdout.contains(table["title"].as_str().unwrap()));
        let rows = table["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "empty table {}", table["title"]);
        for row in rows {
            let status = row.as_array().unwrap().last().unwrap().as_str().unwrap();
            assert!(
                ["PASS", "MISS", "n/a", "-"].contains(&status),
                "row {row} has status {status:?}"
            );
        }
    }

    // Measurements are real: messages went through iotmock's broker, and
    // the connections were held.
    let results = &report["results"];
    for run in results["throughput"].as_array().unwrap() {
        let iotmock = &run["iotmock"][0];
        assert!(iotmock["sent"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(
            iotmock["received"],
            iotmock["sent"].as_u64().unwrap() * run["case"]["subscribers"].as_u64().unwrap(),
            "{run}"
        );
    }
    for l in results["latency"].as_array().unwrap() {
        assert!(l["iotmock"]["received"].as_u64().unwrap() > 0, "{l}");
        assert!(l["iotmock"]["p99_us"].as_f64().unwrap() > 0.0, "{l}");
    }
    let tls = &results["tls"][0];
    assert_eq!(tls["broker"], "iotmock");
    assert!(tls["handshakes_per_s"].as_f64().unwrap() > 0.0, "{tls}");
    assert_eq!(
        (tls["qos0_lost"].as_u64(), tls["qos1_lost"].as_u64()),
        (Some(0), Some(0)),
        "{tls}"
    );
    let c = &results["connections"][0];
    assert_eq!(c["broker"], "iotmock");
    assert_eq!(c["result"]["held"], c["result"]["attempted"], "{c}");
    let fleet = &results["platform"]["fleet"][0];
    assert_eq!(fleet["devices_heard"], fleet["devices"], "{fleet}");
    assert!(
        results["platform"]["end_to_end"]["received"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(results["plugins"]["sampling"]["readings"].as_u64().unwrap() > 0);
    assert!(
        results["plugins"]["edge_rule_calls"]["calls"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        results["plugins"]["hot_reload"]["latency"]["n"]
            .as_u64()
            .unwrap()
            >= 1
    );
}
