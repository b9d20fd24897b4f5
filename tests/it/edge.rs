//! Edge nodes end to end: rule pipelines on real readings, the uplink
//! topics seen by a real MQTT client, outages of the uplink, runaway rules
//! and hot swaps, all under a manual clock.

use std::collections::BTreeMap;
use std::time::Duration;

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::{Message, Subscriber, TestServer, test_plugin_bytes};

/// Three member devices tagged `edge` and one outsider, each reading a
/// temperature around 30 °C once a second.
const FLEET: &str = r#"
[[fleet]]
id_pattern = "t-{n}"
count = 3
tags = ["edge"]
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
config = { mean = 30.0, amplitude = 0.0, noise = 1.5, weather_sd = 0.0 }

[[fleet]]
id = "outsider"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
config = { mean = 30.0, amplitude = 0.0, noise = 1.5, weather_sd = 0.0 }
"#;

async fn start(scenario: &str) -> TestServer {
    TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(7);
    })
    .await
}

async fn node(server: &TestServer, id: &str) -> Value {
    let (status, body) = server.get(&format!("/api/v1/edge-nodes/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn create(server: &TestServer, spec: Value) -> Value {
    let (status, body) = server.post("/api/v1/edge-nodes", spec).await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn uplink(server: &TestServer, id: &str, state: &str) -> Value {
    let (status, body) = server
        .post(
            &format!("/api/v1/edge-nodes/{id}/uplink"),
            json!({ "state": state }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn load_test_rule(server: &TestServer, name: &str, file: &str) {
    let (status, body) = server
        .put_bytes(&format!("/api/v1/plugins/{name}"), test_plugin_bytes(file))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Exactly `n` messages, then nothing more for a moment.
async fn collect(sub: &mut Subscriber, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(sub.next().await);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let extra = sub.drain();
    assert!(
        extra.is_empty(),
        "{} more messages than expected, first {:?}",
        extra.len(),
        extra.first().map(|m| &m.topic)
    );
    out
}

/// Raw readings until `n` of them come from devices other than the
/// outsider; the outsider's are left out.
async fn collect_members(sub: &mut Subscriber, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = sub.next().await.json();
        if r["device"] != "outsider" {
            out.push(r);
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let extra: Vec<Value> = sub
        .drain()
        .iter()
        .map(Message::json)
        .filter(|r| r["device"] != "outsider")
        .collect();
    assert!(
        extra.is_empty(),
        "more member readings than counted: {extra:?}"
    );
    out
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| u(&m.json()["seq"])).collect()
}

fn ts_ms(v: &Value) -> i64 {
    iotmock::parse_rfc3339_ms(v.as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_then_aggregate_publish_exactly_what_the_config_says() {
    let scenario = format!(
        r#"{FLEET}
[[edge_node]]
id = "gw-1"
devices = {{ tag = "edge" }}
window_ms = 5000
[[edge_node.rules]]
plugin = "edge-threshold"
config = {{ sensor = "temperature", min = 30.0 }}
[[edge_node.rules]]
plugin = "edge-aggregate"
config = {{ forward = true }}
"#
    );
    let server = start(&scenario).await;
    let mut raw = server.subscribe("devices/+/telemetry/temperature").await;
    let mut readings = server.subscribe("edge/gw-1/uplink/readings/#").await;
    let mut aggregates = server.subscribe("edge/gw-1/uplink/aggregates").await;

    server.advance(20_000).await;
    let stats = node(&server, "gw-1").await;
    assert_eq!(stats["state"], "ok", "{stats}");
    assert_eq!(stats["members"], 3);
    let members_in = u(&stats["readings"]["in"]) as usize;
    assert!(members_in >= 60, "{stats}");

    // The tap saw every member reading; those of the window still open
    // (at the clock's time) wait in the queue.
    let member_raw = collect_members(&mut raw, members_in).await;
    let end = iotmock::MANUAL_EPOCH_MS + 20_000;
    let queued = member_raw.iter().filter(|r| ts_ms(&r["ts"]) >= end).count();
    assert_eq!(u(&stats["readings"]["queued"]) as usize, queued);
    let member_raw: Vec<&Value> = member_raw
        .iter()
        .filter(|r| ts_ms(&r["ts"]) < end)
        .collect();

    // Readings: exactly the members' readings of 30 °C or more, in order.
    let expected: Vec<(String, i64, f64)> = member_raw
        .iter()
        .filter(|r| r["value"].as_f64().unwrap() >= 30.0)
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_string(),
                ts_ms(&r["ts"]),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < member_raw.len(),
        "the threshold must keep some and drop some"
    );
    let got = collect(&mut readings, expected.len()).await;
    let got_tuples: Vec<(String, i64, f64)> = got
        .iter()
        .map(|m| {
            let r = m.json();
            assert_eq!(
                m.topic,
                format!(
                    "edge/gw-1/uplink/readings/{}/temperature",
                    r["device"].as_str().unwrap()
                )
            );
            assert_eq!(r["node"], "gw-1");
            assert_eq!(r["unit"], "celsius");
            assert!(r.get("unprocessed").is_none());
            (
                r["device"].as_str().unwrap().to_string(),
                ts_ms(&r["ts"]),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let mut sorted_expected = expected.clone();
    let key = |t: &(String, i64, f64)| (t.1, t.0.clone());
    sorted_expected.sort_by_key(key);
    let mut sorted_got = got_tuples.clone();
    sorted_got.sort_by_key(key);
    assert_eq!(sorted_got, sorted_expected);
    let s = seqs(&got);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "seq increases: {s:?}");

    // Aggregates: min/max/mean/count per device and 5 s window of the
    // readings that passed the threshold.
    let mut groups: BTreeMap<(i64, String), Vec<f64>> = BTreeMap::new();
    for (device, ts, value) in &expected {
        let start = ts.div_euclid(5000) * 5000;
        groups
            .entry((start, device.clone()))
            .or_default()
            .push(*value);
    }
    let got = collect(&mut aggregates, groups.len()).await;
    assert_eq!(
        u(&node(&server, "gw-1").await["aggregates_out"]),
        groups.len() as u64
    );
    for m in &got {
        let a = m.json();
        let start = ts_ms(&a["window"]["start"]);
        assert_eq!(ts_ms(&a["window"]["end"]), start + 5000);
        let values = &groups[&(start, a["device"].as_str().unwrap().to_string())];
        assert_eq!(a["sensor"], "temperature");
        assert_eq!(u(&a["count"]) as usize, values.len(), "{a}");
        let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert_eq!(a["min"].as_f64().unwrap(), min, "{a}");
        assert_eq!(a["max"].as_f64().unwrap(), max, "{a}");
        assert!((a["mean"].as_f64().unwrap() - mean).abs() < 1e-9, "{a}");
    }

    let stats = node(&server, "gw-1").await;
    assert_eq!(u(&stats["readings"]["out"]), expected.len() as u64);
    assert_eq!(
        u(&stats["readings"]["filtered"]),
        (member_raw.len() - expected.len()) as u64
    );
    assert_eq!(u(&stats["readings"]["dropped"]), 0);
    assert_eq!(
        u(&stats["rules"][0]["calls"]),
        4,
        "one call per 5 s window: {stats}"
    );
    assert_eq!(stats["rules"][1]["plugin"], "edge-aggregate");
    assert!(stats["latency"]["p99_ms"].as_f64().is_some(), "{stats}");
    server.stop().await;
}

/// Two devices, one reading a second each.
const PAIR: &str = r#"
[[fleet]]
id_pattern = "d-{n}"
count = 2
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#;

fn pass_node(id: &str, capacity: usize, policy: &str) -> Value {
    json!({
        "id": id,
        "devices": {"ids": ["d-1", "d-2"]},
        "rules": [{"plugin": "pass"}],
        "window_ms": 1000,
        "buffer": {"capacity": capacity, "policy": policy},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_outage_delivers_everything_in_order_within_capacity_and_counts_overflow() {
    let server = start(PAIR).await;
    load_test_rule(&server, "pass", "test_edge_pass.wasm").await;
    create(&server, pass_node("roomy", 1000, "drop_oldest")).await;
    create(&server, pass_node("keep-new", 5, "drop_oldest")).await;
    create(&server, pass_node("keep-old", 5, "drop_newest")).await;
    let mut subs = Vec::new();
    for id in ["roomy", "keep-new", "keep-old"] {
        subs.push(
            server
                .subscribe(&format!("edge/{id}/uplink/readings/#"))
                .await,
        );
        let view = uplink(&server, id, "down").await;
        assert_eq!(view["uplink"]["state"], "down");
    }

    server.advance(10_000).await;
    let n = u(&node(&server, "roomy").await["readings"]["in"]);
    assert!(n >= 19, "two devices for 10 s: {n}");
    // Nothing went out while the uplink was down.
    let (_, journal) = server
        .get("/api/v1/mqtt/messages?topic=edge/%2B/uplink/%23")
        .await;
    assert_eq!(journal["items"].as_array().unwrap().len(), 0, "{journal}");
    for (id, buffered, dropped) in [
        ("roomy", n, 0),
        ("keep-new", 5, n - 5),
        ("keep-old", 5, n - 5),
    ] {
        let stats = node(&server, id).await;
        assert_eq!(u(&stats["readings"]["in"]), n, "{stats}");
        assert_eq!(u(&stats["uplink"]["buffered"]), buffered, "{id}: {stats}");
        assert_eq!(u(&stats["uplink"]["dropped"]), dropped, "{id}: {stats}");
        assert_eq!(u(&stats["readings"]["out"]), 0);
    }

    for id in ["roomy", "keep-new", "keep-old"] {
        let view = uplink(&server, id, "up").await;
        assert_eq!(view["uplink"]["state"], "up");
        assert_eq!(view["uplink"]["buffered"], 0, "flushed before the answer");
    }
    let roomy = collect(&mut subs[0], n as usize).await;
    assert_eq!(seqs(&roomy), (1..=n).collect::<Vec<_>>(), "all, in order");
    let newest = collect(&mut subs[1], 5).await;
    assert_eq!(
        seqs(&newest),
        (n - 4..=n).collect::<Vec<_>>(),
        "the newest five"
    );
    let oldest = collect(&mut subs[2], 5).await;
    assert_eq!(
        seqs(&oldest),
        (1..=5).collect::<Vec<_>>(),
        "the oldest five"
    );
    for (id, out) in [("roomy", n), ("keep-new", 5), ("keep-old", 5)] {
        let stats = node(&server, id).await;
        assert_eq!(u(&stats["readings"]["out"]), out, "{stats}");
        assert_eq!(u(&stats["uplink"]["flushed"]), out, "{stats}");
    }

    // Back up: new readings flow straight through, numbering continues.
    server.advance(2000).await;
    let m = u(&node(&server, "roomy").await["readings"]["in"]);
    let more = collect(&mut subs[0], (m - n) as usize).await;
    assert_eq!(seqs(&more), (n + 1..=m).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_rules_are_stopped_and_the_node_degrades_while_the_server_serves() {
    let server = start(PAIR).await;
    load_test_rule(&server, "pass", "test_edge_pass.wasm").await;
    load_test_rule(&server, "spinner", "test_edge_spin.wasm").await;
    load_test_rule(&server, "hog", "test_edge_hog.wasm").await;
    let ids = json!({"ids": ["d-1", "d-2"]});
    create(
        &server,
        json!({"id": "looping", "devices": ids, "rules": [{"plugin": "spinner"}],
               "budget": {"time_ms": 50}, "on_error": "pass_through"}),
    )
    .await;
    create(
        &server,
        json!({"id": "hungry", "devices": ids, "rules": [{"plugin": "pass"}, {"plugin": "hog"}],
               "budget": {"memory_mib": 4, "queue": 1000}, "on_error": "hold"}),
    )
    .await;
    create(
        &server,
        json!({"id": "healthy", "devices": ids, "rules": [{"plugin": "pass"}]}),
    )
    .await;
    let mut looping = server.subscribe("edge/looping/uplink/readings/#").await;
    let mut hungry = server.subscribe("edge/hungry/uplink/readings/#").await;

    server.advance(3000).await;
    let (status, health) = server.get("/api/v1/health").await;
    assert_eq!(status, 200, "{health}");

    // The loop is stopped at its 50 ms budget; the batch passes through.
    let stats = node(&server, "looping").await;
    assert_eq!(stats["state"], "degraded", "{stats}");
    let reason = stats["reason"].as_str().unwrap();
    assert!(
        reason.contains("deadline") && reason.contains("spinner"),
        "{reason}"
    );
    assert_eq!(
        u(&stats["rules"][0]["errors"]),
        3,
        "one per window: {stats}"
    );
    let n = u(&stats["readings"]["in"]);
    assert_eq!(u(&stats["readings"]["unprocessed"]), n);
    let passed = collect(&mut looping, n as usize).await;
    assert!(passed.iter().all(|m| m.json()["unprocessed"] == true));
    assert_eq!(seqs(&passed), (1..=n).collect::<Vec<_>>());

    // The allocation is stopped at 4 MiB; the batch is held for retry.
    let stats = node(&server, "hungry").await;
    assert_eq!(stats["state"], "degraded", "{stats}");
    let reason = stats["reason"].as_str().unwrap();
    assert!(
        reason.contains("memory") && reason.contains("hog"),
        "{reason}"
    );
    assert_eq!(u(&stats["readings"]["queued"]), n, "held: {stats}");
    assert_eq!(u(&stats["readings"]["out"]), 0);
    assert_eq!(u(&stats["rules"][0]["errors"]), 0, "the first rule is fine");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("iotmock_edge_degraded{node=\"hungry\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iotmock_edge_degraded{node=\"healthy\"} 0"),
        "{metrics}"
    );

    // Other nodes on the same devices are untouched.
    let stats = node(&server, "healthy").await;
    assert_eq!(stats["state"], "ok", "{stats}");
    assert_eq!(u(&stats["readings"]["out"]), n);

    // Replacing the hog releases the held readings, once each, in order.
    load_test_rule(&server, "hog", "test_edge_pass.wasm").await;
    server.advance(1000).await;
    let stats = node(&server, "hungry").await;
    assert_eq!(stats["state"], "ok", "{stats}");
    assert!(stats["last_error"].as_str().unwrap().contains("memory"));
    let m = u(&stats["readings"]["in"]);
    let released = collect(&mut hungry, m as usize).await;
    assert_eq!(seqs(&released), (1..=m).collect::<Vec<_>>());
    assert_eq!(u(&stats["readings"]["dropped"]), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swapping_a_rule_mid_stream_loses_and_repeats_nothing() {
    let scenario = r#"
[[fleet]]
id_pattern = "h-{n}"
count = 3
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 250
"#;
    let server = start(scenario).await;
    load_test_rule(&server, "probe", "test_edge_pass.wasm").await;
    create(
        &server,
        json!({"id": "swap", "devices": {"ids": ["h-1", "h-2", "h-3"]},
               "rules": [{"plugin": "probe"}], "window_ms": 500}),
    )
    .await;
    let mut sub = server.subscribe("edge/swap/uplink/readings/#").await;

    let mut swap = None;
    for step in 0..30 {
        if step == 10 {
            // The swap races the clock: it lands between some two batches.
            let http = server.http.clone();
            let url = server.url("/api/v1/plugins/probe");
            let bytes = test_plugin_bytes("test_edge_offset.wasm");
            swap = Some(tokio::spawn(async move {
                http.put(url)
                    .header("content-type", "application/wasm")
                    .body(bytes)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        if step == 20 {
            assert_eq!(swap.take().unwrap().await.unwrap(), 200);
        }
        server.advance(300).await;
    }
    let stats = node(&server, "swap").await;
    let n = u(&stats["readings"]["in"]);
    assert_eq!(u(&stats["readings"]["out"]), n, "{stats}");
    let got = collect(&mut sub, n as usize).await;
    assert_eq!(
        seqs(&got),
        (1..=n).collect::<Vec<_>>(),
        "no loss, no repeat"
    );
    let swapped: Vec<bool> = got
        .iter()
        .map(|m| m.json()["value"].as_f64().unwrap() >= 1000.0)
        .collect();
    let first_new = swapped
        .iter()
        .position(|s| *s)
        .expect("the new version ran");
    assert!(first_new > 0, "the old version ran first");
    assert!(
        swapped[first_new..].iter().all(|s| *s),
        "once swapped, every reading went through the new version"
    );
    assert_eq!(stats["state"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_control_commands_follow_the_hysteresis() {
    let server = start(FLEET).await;
    create(
        &server,
        json!({"id": "ctl", "devices": {"tag": "edge"}, "window_ms": 2000,
               "rules": [{"plugin": "edge-local-control",
                          "config": {"sensor": "temperature", "above": 31.0, "below": 29.0}}]}),
    )
    .await;
    let mut raw = server.subscribe("devices/+/telemetry/temperature").await;
    let mut commands = server.subscribe("edge/ctl/uplink/commands").await;
    server.advance(30_000).await;
    let stats = node(&server, "ctl").await;
    let n = u(&stats["readings"]["in"]) as usize;
    let raw = collect_members(&mut raw, n).await;
    let end = iotmock::MANUAL_EPOCH_MS + 30_000;

    // What the hysteresis must do, reading by reading.
    let mut on: BTreeMap<String, bool> = BTreeMap::new();
    let mut expected = Vec::new();
    for r in raw.iter().filter(|r| ts_ms(&r["ts"]) < end) {
        let device = r["device"].as_str().unwrap().to_string();
        let value = r["value"].as_f64().unwrap();
        let state = on.entry(device.clone()).or_default();
        if !*state && value > 31.0 {
            *state = true;
            expected.push((device, "fan_on"));
        } else if *state && value < 29.0 {
            *state = false;
            expected.push((device, "fan_off"));
        }
    }
    assert!(expected.len() >= 2, "the noise crosses both thresholds");
    let got = collect(&mut commands, expected.len()).await;
    let mut got: Vec<(String, &str)> = got
        .iter()
        .map(|m| {
            let c = m.json();
            assert_eq!(c["node"], "ctl");
            let name = if c["name"] == "fan_on" {
                "fan_on"
            } else {
                "fan_off"
            };
            (c["device"].as_str().unwrap().to_string(), name)
        })
        .collect();
    // Per device, the order is the readings' order.
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected_sorted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edge_node_requests_get_problem_details() {
    let server = start(PAIR).await;
    let base =
        json!({"id": "n", "devices": {"ids": ["d-1"]}, "rules": [{"plugin": "edge-threshold"}]});
    let cases = [
        (
            json!({"rules": [{"plugin": "nope"}]}),
            "no edge-rule plugin named \"nope\"",
        ),
        (
            json!({"rules": [{"plugin": "temperature"}]}),
            "is a sensor plugin",
        ),
        (
            json!({"rules": [{"plugin": "edge-threshold", "config": {"min": 5, "max": 1}}]}),
            "rules[0].config",
        ),
        (
            json!({"rules": [{"plugin": "edge-threshold", "config": {"minimum": 5}}]}),
            "unknown field",
        ),
        (json!({"devices": {}}), "exactly one of"),
        (
            json!({"devices": {"tag": "a", "group": "b"}}),
            "exactly one of",
        ),
        (json!({"rules": []}), "rules: give 1 to"),
        (json!({"window_ms": 0}), "window_ms"),
        (json!({"id": "a/b"}), "edge node id"),
        (
            json!({"buffer": {"capacity": 5, "policy": "drop_some"}}),
            "drop_oldest",
        ),
        (json!({"budget": {"time_ms": 0}}), "budget.time_ms"),
    ];
    for (patch, needle) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let response = server
            .http
            .post(server.url("/api/v1/edge-nodes"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{body} -> {detail}");
    }
    create(&server, base.clone()).await;
    let (status, problem) = server.post("/api/v1/edge-nodes", base).await;
    assert_eq!(status, 409, "{problem}");
    let (status, _) = server.get("/api/v1/edge-nodes/missing").await;
    assert_eq!(status, 404);
    let (status, problem) = server
        .post("/api/v1/edge-nodes/n/uplink", json!({"state": "sideways"}))
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, list) = server.get("/api/v1/edge-nodes").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["id"], "n");
    assert_eq!(list["items"][0]["uplink"]["state"], "up");
    let (status, _) = server.delete("/api/v1/edge-nodes/n").await;
    assert_eq!(status, 204);
    let (status, _) = server.get("/api/v1/edge-nodes/n").await;
    assert_eq!(status, 404);

    let (_, doc) = server.get("/api/v1/openapi.json").await;
    for path in [
        "/api/v1/edge-nodes",
        "/api/v1/edge-nodes/{id}",
        "/api/v1/edge-nodes/{id}/uplink",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI documents {path}");
    }
    let spec = &doc["components"]["schemas"]["EdgeNodeSpec"];
    assert!(spec["properties"].get("window_ms").is_some(), "{spec}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_then_zscore_forward_and_alert_as_configured() {
    let scenario = r#"
[[fleet]]
id_pattern = "z-{n}"
count = 2
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
config = { anomalies = { spike = 0.1 } }
"#;
    let server = start(scenario).await;
    create(
        &server,
        json!({"id": "z", "devices": {"ids": ["z-1", "z-2"]}, "window_ms": 3000,
        "rules": [
            {"plugin": "edge-rate-limit", "config": {"per_second": 0.5, "burst": 1}},
            {"plugin": "edge-zscore", "config": {"threshold": 3.0, "min_samples": 5}}
        ]}),
    )
    .await;
    let mut raw = server.subscribe("devices/+/telemetry/temperature").await;
    let mut readings = server.subscribe("edge/z/uplink/readings/#").await;
    let mut alerts = server.subscribe("edge/z/uplink/alerts").await;
    server.advance(60_000).await;
    let n = u(&node(&server, "z").await["readings"]["in"]) as usize;
    let end = iotmock::MANUAL_EPOCH_MS + 60_000;
    let raw: Vec<Value> = collect_members(&mut raw, n)
        .await
        .into_iter()
        .filter(|r| ts_ms(&r["ts"]) < end)
        .collect();

    // The same token bucket and running statistics, by hand.
    let mut buckets: BTreeMap<String, (f64, i64)> = BTreeMap::new();
    let mut stats: BTreeMap<String, (u64, f64, f64)> = BTreeMap::new();
    let mut kept = Vec::new();
    let mut expected_alerts = Vec::new();
    for r in &raw {
        let device = r["device"].as_str().unwrap().to_string();
        let ts = ts_ms(&r["ts"]);
        let value = r["value"].as_f64().unwrap();
        let (tokens, last) = buckets.entry(device.clone()).or_insert((1.0, ts));
        *tokens = (*tokens + (ts - *last).max(0) as f64 / 1000.0 * 0.5).min(1.0);
        *last = (*last).max(ts);
        if *tokens < 1.0 {
            continue;
        }
        *tokens -= 1.0;
        kept.push((device.clone(), ts));
        let (count, mean, m2) = stats.entry(device.clone()).or_insert((0, 0.0, 0.0));
        if *count >= 5 {
            let sd = (*m2 / (*count - 1) as f64).sqrt();
            let z = (value - *mean) / sd;
            if sd > 0.0 && z.abs() > 3.0 {
                let severity = if z.abs() > 6.0 { "critical" } else { "warning" };
                expected_alerts.push((device.clone(), value.to_bits(), severity));
            }
        }
        *count += 1;
        let delta = value - *mean;
        *mean += delta / *count as f64;
        *m2 += delta * (value - *mean);
    }
    assert!(
        kept.len() * 2 <= raw.len() + 2,
        "about every other reading is kept"
    );
    assert!(!expected_alerts.is_empty(), "the spikes raise alerts");

    let got = collect(&mut readings, kept.len()).await;
    let mut got: Vec<(String, i64)> = got
        .iter()
        .map(|m| {
            let r = m.json();
            (r["device"].as_str().unwrap().to_string(), ts_ms(&r["ts"]))
        })
        .collect();
    got.sort();
    kept.sort();
    assert_eq!(got, kept);

    let got = collect(&mut alerts, expected_alerts.len()).await;
    let mut got: Vec<(String, u64, String)> = got
        .iter()
        .map(|m| {
            let a = m.json();
            assert_eq!(a["sensor"], "temperature");
            assert!(a["message"].as_str().unwrap().starts_with("z-score"));
            (
                a["device"].as_str().unwrap().to_string(),
                a["value"].as_f64().unwrap().to_bits(),
                a["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected: Vec<(String, u64, String)> = expected_alerts
        .into_iter()
        .map(|(d, v, s)| (d, v, s.to_string()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(
        u(&node(&server, "z").await["alerts_out"]),
        expected.len() as u64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_nodes_and_their_uplink_state_survive_a_restart_with_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let boot = |data: std::path::PathBuf| {
        TestServer::with_scenario(PAIR, move |c| {
            c.clock = ClockMode::Manual;
            c.data_dir = Some(data);
        })
    };
    let server = boot(data.clone()).await;
    create(
        &server,
        json!({"id": "kept", "devices": {"ids": ["d-1"]}, "window_ms": 2000,
               "rules": [{"plugin": "edge-threshold", "config": {"min": 10}}],
               "buffer": {"capacity": 7, "policy": "drop_newest"}}),
    )
    .await;
    create(
        &server,
        json!({"id": "gone", "devices": {"ids": ["d-2"]}, "rules": [{"plugin": "edge-aggregate"}]}),
    )
    .await;
    uplink(&server, "kept", "down").await;
    let (status, _) = server.delete("/api/v1/edge-nodes/gone").await;
    assert_eq!(status, 204);
    server.stop().await;

    let server = boot(data).await;
    let kept = node(&server, "kept").await;
    assert_eq!(kept["spec"]["window_ms"], 2000);
    assert_eq!(kept["spec"]["rules"][0]["config"]["min"], 10);
    assert_eq!(kept["spec"]["buffer"]["policy"], "drop_newest");
    assert_eq!(kept["uplink"]["state"], "down");
    let (status, _) = server.get("/api/v1/edge-nodes/gone").await;
    assert_eq!(status, 404, "a deleted node stays deleted");
    // The restored node works: it buffers while its uplink is down.
    server.advance(4000).await;
    let kept = node(&server, "kept").await;
    assert!(u(&kept["uplink"]["buffered"]) > 0, "{kept}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_real_devices_publish_over_mqtt_reach_their_node() {
    let server = start("").await;
    load_test_rule(&server, "pass", "test_edge_pass.wasm").await;
    create(
        &server,
        json!({"id": "gw", "devices": {"ids": ["real-1"]}, "rules": [{"plugin": "pass"}]}),
    )
    .await;
    let mut out = server.subscribe("edge/gw/uplink/readings/#").await;
    let device = server.subscribe("devices/real-1/commands/#").await;
    let publish = |topic: &str, payload: &str| {
        let (client, topic, payload) = (
            device.client.clone(),
            topic.to_string(),
            payload.to_string(),
        );
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    };
    publish(
        "devices/real-1/telemetry/temp",
        r#"{"value": 21.5, "unit": "celsius", "ts": "2026-01-01T00:00:00.250Z"}"#,
    )
    .await;
    publish("devices/real-1/telemetry/level", "7").await;
    publish("devices/real-1/telemetry/temp", "not a reading").await;
    publish("devices/other/telemetry/temp", "1").await;
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let stats = node(&server, "gw").await;
        if u(&stats["readings"]["in"]) == 2 && u(&stats["readings"]["invalid_in"]) == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.advance(1000).await;
    let got = collect(&mut out, 2).await;
    let first = got[0].json();
    assert_eq!(got[0].topic, "edge/gw/uplink/readings/real-1/temp");
    assert_eq!(first["value"], 21.5);
    assert_eq!(first["unit"], "celsius");
    assert_eq!(first["ts"], "2026-01-01T00:00:00.250Z");
    assert_eq!(first["seq"], 1);
    assert_eq!(got[1].topic, "edge/gw/uplink/readings/real-1/level");
    assert_eq!(got[1].json()["value"], 7.0);
    assert_eq!(got[1].json()["seq"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_control_command_is_issued_and_completed() {
    // A thermostat that runs hot: the node lowers its target when it reads
    // above 25 °C, and the device's command handler answers.
    let scenario = r#"
[[fleet]]
id = "room-1"
command_handler = "thermostat"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
config = { mean = 30.0, amplitude = 0.0, noise = 0.1, weather_sd = 0.0 }

[[edge_node]]
id = "ctl"
devices = { ids = ["room-1"] }
[[edge_node.rules]]
plugin = "edge-local-control"
config = { above = 25.0, below = 20.0, on = { name = "set_target", params = { target = 18.0 } }, off = { name = "set_target", params = { target = 21.0 } } }
"#;
    let server = start(scenario).await;
    let mut uplink = server.subscribe("edge/ctl/uplink/commands").await;
    server.advance(3000).await;

    let issued = uplink.next().await.json();
    assert_eq!(issued["device"], "room-1");
    assert_eq!(issued["name"], "set_target");
    assert_eq!(issued["params"]["target"], 18.0);
    assert_eq!(issued["status"], "submitted", "{issued}");
    let id = issued["command_id"].as_str().unwrap().to_string();
    // Hysteresis: one command while the room stays hot.
    server.advance(5000).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        uplink.drain().is_empty(),
        "one command, not one per reading"
    );

    let (status, command) = server
        .get(&format!("/api/v1/commands/{id}?wait_ms=5000"))
        .await;
    assert_eq!(status, 200, "{command}");
    assert_eq!(command["status"], "completed", "{command}");
    assert_eq!(command["device"], "room-1");
    assert_eq!(command["origin"], "edge", "{command}");
    assert_eq!(command["result"]["target"], 18.0, "{command}");
    let stats = node(&server, "ctl").await;
    assert_eq!(u(&stats["commands"]["issued"]), 1, "{stats}");
    assert_eq!(u(&stats["commands"]["failed"]), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_edge_node_with_a_bad_rule_stops_the_start_with_its_name() {
    let scenario = r#"
[[edge_node]]
id = "gw"
devices = { group = "g" }
[[edge_node.rules]]
plugin = "edge-threshold"
config = { mode = "sideways" }
"#;
    let config = iotmock::Config {
        scenario: iotmock::ScenarioChoice::Inline(scenario.into()),
        ..iotmock::Config::ephemeral()
    };
    let error = match iotmock::Server::start(config).await {
        Ok(_) => panic!("a bad rule config must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("\"gw\"") && error.contains("rules[0].config") && error.contains("sideways"),
        "{error}"
    );
    let unknown =
        "[[edge_node]]\nid = \"gw\"\ndevices = { ids = [\"a\"] }\nrules = []\nwindow = 5\n";
    let config = iotmock::Config {
        scenario: iotmock::ScenarioChoice::Inline(unknown.into()),
        ..iotmock::Config::ephemeral()
    };
    let error = match iotmock::Server::start(config).await {
        Ok(_) => panic!("an unknown key must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("window"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_running_clock_windows_close_on_their_own() {
    let scenario = r#"
[[fleet]]
id = "live-1"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 50

[[edge_node]]
id = "live"
devices = { ids = ["live-1"] }
window_ms = 200
[[edge_node.rules]]
plugin = "edge-aggregate"
"#;
    let server = TestServer::with_scenario(scenario, |_| {}).await;
    let mut aggregates = server.subscribe("edge/live/uplink/aggregates").await;
    let mut last_end = 0;
    for _ in 0..3 {
        let a = aggregates.next().await.json();
        assert_eq!(a["device"], "live-1");
        assert!(u(&a["count"]) >= 1, "{a}");
        let start = ts_ms(&a["window"]["start"]);
        assert!(start >= last_end, "windows follow each other: {a}");
        last_end = ts_ms(&a["window"]["end"]);
    }
    server.stop().await;
}

/// Exactly `n` raw readings forwarded on a node's uplink, counted by device.
async fn uplink_devices(sub: &mut Subscriber, n: usize) -> BTreeMap<String, usize> {
    let mut by_device = BTreeMap::new();
    for m in collect(sub, n).await {
        *by_device
            .entry(m.json()["device"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    by_device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_node_follows_devices_created_retagged_and_deleted() {
    let server = start(FLEET).await;
    load_test_rule(&server, "pass", "test_edge_pass.wasm").await;
    let view = create(
        &server,
        json!({"id": "tagged", "devices": {"tag": "edge"}, "rules": [{"plugin": "pass"}],
               "window_ms": 1000}),
    )
    .await;
    assert_eq!(view["members"], 3);
    let mut sub = server.subscribe("edge/tagged/uplink/readings/#").await;

    // A device created with the tag joins at once.
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "late", "tags": ["edge"],
                   "sensors": [{"plugin": "temperature", "interval_ms": 1000}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(node(&server, "tagged").await["members"], 4);
    server.advance(5_000).await;
    // Five readings each from the three members and the newcomer.
    let seen = uplink_devices(&mut sub, 20).await;
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [
            ("late".to_string(), 5),
            ("t-1".to_string(), 5),
            ("t-2".to_string(), 5),
            ("t-3".to_string(), 5)
        ]
    );

    // Retagging one member out, and the outsider in, moves them.
    for (id, tags) in [("t-1", json!(["other"])), ("outsider", json!(["edge"]))] {
        let response = server
            .http
            .patch(server.url(&format!("/api/v1/devices/{id}")))
            .json(&json!({ "tags": tags }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Deleting a member takes it out.
    let (status, _) = server.delete("/api/v1/devices/t-2").await;
    assert_eq!(status, 204);
    assert_eq!(node(&server, "tagged").await["members"], 3);
    server.advance(5_000).await;
    let seen = uplink_devices(&mut sub, 15).await;
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [
            ("late".to_string(), 5),
            ("outsider".to_string(), 5),
            ("t-3".to_string(), 5)
        ]
    );
    server.stop().await;
}
