//! Dialects end to end: devices speaking a codec plugin's topics and
//! payloads, checked through a real MQTT subscriber and the broker's
//! journal; the `iotmock` plugin against the built-in path, byte for byte;
//! determinism under a seed; a codec swapped mid-stream.

use std::collections::BTreeMap;

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::TestServer;

/// The broker journal's messages on `filter`, in order: (topic, payload).
async fn journal(server: &TestServer, filter: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut since = 0u64;
    loop {
        let filter = filter.replace('+', "%2B").replace('#', "%23");
        let (status, page) = server
            .get(&format!(
                "/api/v1/mqtt/messages?topic={filter}&since={since}&limit=10000"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            return out;
        }
        for item in items {
            assert_eq!(item["payload_encoding"], "utf8", "{item}");
            out.push((
                item["topic"].as_str().unwrap().to_string(),
                item["payload"].as_str().unwrap().to_string(),
            ));
            since = item["cursor"].as_u64().unwrap();
        }
    }
}

async fn advance(server: &TestServer, ms: i64) {
    let (status, body) = server
        .post("/api/v1/clock/advance", json!({ "ms": ms }))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn builtin(name: &str) -> Vec<u8> {
    iotmock::builtin::BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| bytes.to_vec())
        .unwrap_or_else(|| panic!("{name} is built in"))
}

const SITE: &str = r#"{
    "telemetry_topic": "site/{group}/{id}/{sensor}",
    "telemetry_payload": "{{\"v\":{value},\"t\":{ts_ms},\"u\":\"{unit}\"}}",
    "status_topic": "site/{group}/{id}/state"
}"#;

fn site_dialect() -> Value {
    json!({ "plugin": "template", "config": serde_json::from_str::<Value>(SITE).unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_dialect_publishes_on_the_configured_topics() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(3);
    })
    .await;
    let (status, device) = server
        .post(
            "/api/v1/devices",
            json!({
                "id": "d-1", "group": "north",
                "sensors": [{"plugin": "temperature", "interval_ms": 1000}],
                "dialect": site_dialect(),
            }),
        )
        .await;
    assert_eq!(status, 201, "{device}");
    assert_eq!(device["dialect"]["plugin"], "template");
    advance(&server, 5_000).await;

    let messages = journal(&server, "site/#").await;
    assert_eq!(
        messages.first(),
        Some(&("site/north/d-1/state".to_string(), "online".to_string())),
        "the status goes out in the dialect: {messages:?}"
    );
    let readings: Vec<&(String, String)> = messages
        .iter()
        .filter(|(t, _)| t == "site/north/d-1/temperature")
        .collect();
    assert_eq!(readings.len(), 5, "{messages:?}");
    // Nothing in iotmock's own topics for this device.
    assert!(journal(&server, "devices/d-1/#").await.is_empty());

    // The export holds the same readings, whatever the dialect.
    let export = server
        .get_text("/api/v1/telemetry?device=d-1&sensor=temperature")
        .await;
    let exported: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 5, "{export}");
    for ((_, payload), row) in readings.iter().zip(exported) {
        let p: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(p["v"], row["value"], "{payload} vs {row}");
        assert_eq!(p["u"], "celsius");
        let ts = iotmock::clock::parse_rfc3339_ms(row["ts"].as_str().unwrap()).unwrap();
        assert_eq!(p["t"].as_i64().unwrap(), ts);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_dialect_is_refused_naming_the_field() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let cases = [
        (
            json!({"id": "a", "dialect": {"plugin": "template", "config": {"telemetry_topik": "x"}}}),
            vec!["dialect", "telemetry_topik"],
        ),
        (
            json!({"id": "b", "dialect": {"plugin": "template", "config": {"telemetry_topic": "a/{nope}"}}}),
            vec!["dialect", "telemetry_topic", "{nope}"],
        ),
        (
            json!({"id": "c", "dialect": "klingon"}),
            vec!["dialect", "no codec plugin named \"klingon\"", "template"],
        ),
        (
            json!({"id": "d", "dialect": "temperature"}),
            vec!["dialect", "sensor plugin, not a codec"],
        ),
    ];
    for (body, words) in cases {
        let (status, problem) = server.post("/api/v1/devices", body.clone()).await;
        assert_eq!(status, 422, "{body} -> {problem}");
        let detail = problem["detail"].as_str().unwrap();
        for word in words {
            assert!(detail.contains(word), "{body}: {detail:?} lacks {word:?}");
        }
    }
    let (status, problem) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 2, "id_pattern": "b-{n}",
                   "template": {"dialect": {"plugin": "template", "config": {"qos": 7}}}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("template.dialect") && detail.contains("qos"),
        "{detail}"
    );
    // Nothing was made.
    let (_, page) = server.get("/api/v1/devices").await;
    assert_eq!(page["total"], 0, "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialect_is_set_by_bulk_template_and_scenario_and_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let scenario = r#"
[[fleet]]
id_pattern = "s-{n}"
count = 2
dialect = { plugin = "template", config = { telemetry_topic = "plant/{id}/{sensor}" } }
[[fleet.sensors]]
plugin = "temperature"
"#;
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.data_dir = Some(dir.clone());
    })
    .await;
    let (status, created) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 2, "id_pattern": "b-{n}",
                   "template": {"dialect": "template", "simulated": false}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    advance(&server, 1_000).await;
    let mut topics: Vec<String> = journal(&server, "plant/#")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    topics.sort();
    assert_eq!(topics, ["plant/s-1/temperature", "plant/s-2/temperature"]);
    server.stop().await;

    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.data_dir = Some(dir.clone());
    })
    .await;
    let (_, s1) = server.get("/api/v1/devices/s-1").await;
    assert_eq!(
        s1["dialect"],
        json!({"plugin": "template", "config": {"telemetry_topic": "plant/{id}/{sensor}"}})
    );
    let (_, b1) = server.get("/api/v1/devices/b-1").await;
    assert_eq!(b1["dialect"], "template");
    let (_, plain) = server
        .post(
            "/api/v1/devices",
            json!({"id": "plain", "simulated": false}),
        )
        .await;
    assert_eq!(plain["dialect"], "iotmock");
    advance(&server, 1_000).await;
    assert_eq!(
        journal(&server, "plant/#").await.len(),
        2,
        "the restored devices stream in their dialect"
    );
    server.stop().await;
}

const FLEET: &str = r#"
[[fleet]]
id_pattern = "t-{n}"
count = 3
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#;

/// The journal of a seeded manual-clock run of [`FLEET`], with the
/// `iotmock` plugin uploaded over the API first when `through_plugin`.
async fn iotmock_run(through_plugin: bool) -> Vec<(String, String)> {
    let server = TestServer::with_scenario(FLEET, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(11);
    })
    .await;
    if through_plugin {
        let (status, info) = server
            .put_bytes("/api/v1/plugins/iotmock", builtin("iotmock"))
            .await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["source"]["kind"], "api");
        assert_eq!(info["world"], "codec");
    }
    advance(&server, 20_000).await;
    let messages = journal(&server, "devices/+/telemetry/#").await;
    let (_, health) = server.get("/api/v1/health").await;
    let stats = &health["telemetry"];
    if through_plugin {
        let (_, plugin) = server.get("/api/v1/plugins/iotmock").await;
        assert!(plugin["calls"].as_u64().unwrap() > 0, "{plugin}");
    }
    assert_eq!(stats["encode_failed"], 0, "{stats}");
    server.stop().await;
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iotmock_plugin_writes_the_built_in_bytes() {
    let native = iotmock_run(false).await;
    let plugin = iotmock_run(true).await;
    assert_eq!(native.len(), 60, "3 devices x 20 s at 1 Hz");
    assert_eq!(
        native, plugin,
        "the same topics and payloads, byte for byte"
    );
}

/// A seeded manual-clock run of [`FLEET`] in the template dialect.
async fn template_run(seed: u64) -> Vec<(String, String)> {
    let scenario = format!("{FLEET}\n");
    let server = TestServer::with_scenario(&scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(seed);
    })
    .await;
    let (status, body) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 3, "id_pattern": "x-{n}", "template": {
                "group": "g", "dialect": site_dialect(),
                "sensors": [{"plugin": "pressure", "interval_ms": 700},
                            {"plugin": "temperature", "interval_ms": 1000}]}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    advance(&server, 15_000).await;
    let messages = journal(&server, "#").await;
    server.stop().await;
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialect_is_deterministic_under_a_seed() {
    let a = template_run(5).await;
    let b = template_run(5).await;
    let c = template_run(6).await;
    let site = a.iter().filter(|(t, _)| t.starts_with("site/")).count();
    assert!(site > 60, "{a:?}");
    // Not assert_eq!: a failure would print two whole journals.
    assert!(a == b, "same seed, same calls: the same journal");
    assert!(a != c, "another seed, other values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_swapped_mid_stream_changes_payloads_without_loss_or_repeat() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(2);
    })
    .await;
    // "mine" starts as the template dialect (its default topics are
    // iotmock's, with a short payload) and becomes the iotmock codec.
    let (status, info) = server
        .put_bytes("/api/v1/plugins/mine", builtin("template"))
        .await;
    assert_eq!(status, 200, "{info}");
    let (status, body) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 4, "id_pattern": "m-{n}", "template": {
                "dialect": "mine",
                "sensors": [{"plugin": "temperature", "interval_ms": 250}]}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    advance(&server, 5_000).await;
    let (status, info) = server
        .put_bytes("/api/v1/plugins/mine", builtin("iotmock"))
        .await;
    assert_eq!(status, 200, "{info}");
    advance(&server, 5_000).await;

    let messages = journal(&server, "devices/+/telemetry/#").await;
    let mut per_device: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
    for (topic, payload) in &messages {
        let device = topic.split('/').nth(1).unwrap().to_string();
        let p: Value = serde_json::from_str(payload).unwrap();
        let (ts, new) = match &p["ts"] {
            Value::Number(n) => (n.as_i64().unwrap(), false),
            Value::String(s) => (iotmock::clock::parse_rfc3339_ms(s).unwrap(), true),
            other => panic!("no ts in {payload}: {other}"),
        };
        per_device.entry(device).or_default().push((ts, new));
    }
    assert_eq!(per_device.len(), 4);
    let start = iotmock::clock::MANUAL_EPOCH_MS;
    for (device, seen) in per_device {
        assert_eq!(
            seen.len(),
            40,
            "{device}: 10 s at 4 Hz, none lost: {seen:?}"
        );
        let ts: Vec<i64> = seen.iter().map(|s| s.0).collect();
        let mut sorted = ts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ts, sorted, "{device}: in order, none repeated");
        // The old payloads up to the swap, the new ones after it.
        let switch = seen.iter().position(|s| s.1).expect("new payloads");
        assert!(seen[..switch].iter().all(|s| !s.1 && s.0 <= start + 5_000));
        assert!(seen[switch..].iter().all(|s| s.1 && s.0 > start + 5_000));
    }
    server.stop().await;
}

/// A real device played by an MQTT client connected with the device's
/// user name, subscribed to `filter`.
async fn real_device(
    server: &TestServer,
    device: &str,
    filter: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(device, "127.0.0.1", server.mqtt.port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    options.set_credentials(device, "unused-in-open-mode");
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(crate::support::WAIT, ready_rx)
        .await
        .expect("SUBACK in time")
        .unwrap();
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_device_in_a_dialect_reports_gets_commands_and_acks() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let dialect = json!({"plugin": "template", "config": {
        "telemetry_topic": "site/{id}/{sensor}",
        "value_field": "reading",
        "command_topic": "site/{id}/cmd/{command_id}",
        "command_payload": "{{\"op\":\"{name}\",\"args\":{params}}}",
        "ack_topic": "site/{id}/ack/{command_id}"
    }});
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "r-1", "simulated": false, "dialect": dialect}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (client, mut inbox) = real_device(&server, "r-1", "site/r-1/cmd/+").await;

    // Readings in the dialect land in the export.
    client
        .publish(
            "site/r-1/temperature",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"reading": 21.5}"#.to_vec(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let export = server.get_text("/api/v1/telemetry?device=r-1").await;
        if let Some(line) = export.lines().next() {
            let row: Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["sensor"], "temperature");
            assert_eq!(row["value"], 21.5);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reading exported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A command goes out in the dialect; the ack in the dialect completes it.
    let (status, command) = server
        .post(
            "/api/v1/devices/r-1/commands",
            json!({"name": "reboot", "params": {"delay": 2}}),
        )
        .await;
    assert_eq!(status, 202, "{command}");
    let id = command["id"].as_str().unwrap().to_string();
    let (topic, payload) = tokio::time::timeout(crate::support::WAIT, inbox.recv())
        .await
        .expect("a command in time")
        .unwrap();
    assert_eq!(topic, format!("site/r-1/cmd/{id}"));
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload, json!({"op": "reboot", "args": {"delay": 2}}));
    client
        .publish(
            format!("site/r-1/ack/{id}"),
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"status": "completed", "result": {"uptime": 0}}"#.to_vec(),
        )
        .await
        .unwrap();
    let (status, done) = server
        .get(&format!("/api/v1/commands/{id}?wait_ms=5000"))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"uptime": 0}));
    // Nothing went out on iotmock's own command topic.
    assert!(journal(&server, "devices/r-1/#").await.is_empty());
    let (_, health) = server.get("/api/v1/health").await;
    let dialects = &health["dialects"];
    assert_eq!(dialects["readings"], 1, "{dialects}");
    assert_eq!(dialects["acks"], 1, "{dialects}");
    assert_eq!(dialects["failed"], 0, "{dialects}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_device_speaks_thingsboard() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(4);
    })
    .await;
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "tb-sim", "dialect": "thingsboard", "command_handler": "thermostat",
                   "sensors": [{"plugin": "temperature", "interval_ms": 1000},
                               {"name": "t2", "plugin": "temperature", "interval_ms": 1000}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    advance(&server, 3_000).await;
    let telemetry = journal(&server, "v1/devices/me/telemetry").await;
    assert!(!telemetry.is_empty());
    let mut count = 0;
    for (_, payload) in &telemetry {
        let p: Value = serde_json::from_str(payload).unwrap();
        let entries = match p {
            Value::Array(items) => items,
            one => vec![one],
        };
        for e in entries {
            assert!(e["ts"].as_i64().unwrap() >= iotmock::clock::MANUAL_EPOCH_MS);
            count += e["values"].as_object().unwrap().len();
        }
    }
    assert_eq!(count, 6, "2 sensors x 3 s at 1 Hz: {telemetry:?}");

    // A command is an RPC request numbered 1, and the handler's answer
    // goes out as the RPC response with the same number.
    let (status, command) = server
        .post(
            "/api/v1/devices/tb-sim/commands",
            json!({"name": "set_target", "params": {"target": 23.5}}),
        )
        .await;
    assert_eq!(status, 202, "{command}");
    let id = command["id"].as_str().unwrap();
    advance(&server, 1_000).await;
    let (_, done) = server
        .get(&format!("/api/v1/commands/{id}?wait_ms=5000"))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let rpc = journal(&server, "v1/devices/me/rpc/#").await;
    assert_eq!(
        rpc.first(),
        Some(&(
            "v1/devices/me/rpc/request/1".to_string(),
            r#"{"method":"set_target","params":{"target":23.5}}"#.to_string()
        )),
        "{rpc:?}"
    );
    let response = rpc
        .iter()
        .find(|(t, _)| t == "v1/devices/me/rpc/response/1")
        .unwrap_or_else(|| panic!("no RPC response: {rpc:?}"));
    let result: Value = serde_json::from_str(&response.1).unwrap();
    assert_eq!(result, done["result"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_dialect_numbers_its_messages_and_reads_them_back() {
    let server = TestServer::with_scenario("", |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(8);
    })
    .await;
    let mut sub = server.subscribe("packed/#").await;
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "p-1", "dialect": "packed",
                   "sensors": [{"plugin": "temperature", "interval_ms": 1000}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    advance(&server, 3_000).await;
    let export = server.get_text("/api/v1/telemetry?device=p-1").await;
    let rows: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{export}");
    for (seq, row) in rows.iter().enumerate() {
        let m = sub.next().await;
        assert_eq!(m.topic, "packed/p-1");
        let p = &m.payload;
        assert_eq!(p.len(), 21 + "temperature".len());
        assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), seq as u32);
        let ts = i64::from_be_bytes(p[4..12].try_into().unwrap());
        let value = f64::from_be_bytes(p[12..20].try_into().unwrap());
        assert_eq!(
            ts,
            iotmock::clock::parse_rfc3339_ms(row["ts"].as_str().unwrap()).unwrap()
        );
        assert_eq!(value, row["value"].as_f64().unwrap());
        assert_eq!(&p[21..], b"temperature");
    }

    // A real device publishing the same layout lands in the export.
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "p-2", "dialect": "packed", "simulated": false}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (client, _inbox) = real_device(&server, "p-2", "packed/p-2/none").await;
    let mut payload = Vec::new();
    payload.extend_from_slice(&7u32.to_be_bytes());
    payload.extend_from_slice(&1_767_225_600_500i64.to_be_bytes());
    payload.extend_from_slice(&3.25f64.to_be_bytes());
    payload.push(3);
    payload.extend_from_slice(b"rpm");
    client
        .publish("packed/p-2", rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let export = server.get_text("/api/v1/telemetry?device=p-2").await;
        if let Some(line) = export.lines().next() {
            let row: Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["sensor"], "rpm");
            assert_eq!(row["value"], 3.25);
            assert_eq!(row["ts"], "2026-01-01T00:00:00.500Z");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reading exported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}
