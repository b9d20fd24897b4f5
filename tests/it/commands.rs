//! Commands end to end: sent over HTTP or MQTT, answered by simulated
//! devices' handler plugins or by a real MQTT client playing a device,
//! through every state.

use std::time::Duration;

use iotmock::ClockMode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{Subscriber, TestServer};

async fn manual_server() -> TestServer {
    TestServer::with_scenario("", |c| c.clock = ClockMode::Manual).await
}

async fn device(server: &TestServer, id: &str, handler: Value) {
    let mut body = json!({
        "id": id,
        "tags": ["hvac"],
        "sensors": [{"plugin": "temperature", "interval_ms": 60000}],
    });
    if !handler.is_null() {
        body["command_handler"] = handler;
    }
    let (status, created) = server.post("/api/v1/devices", body).await;
    assert_eq!(status, 201, "{created}");
}

async fn send(server: &TestServer, device: &str, body: Value) -> Value {
    let (status, cmd) = server
        .post(&format!("/api/v1/devices/{device}/commands"), body)
        .await;
    assert_eq!(status, 202, "{cmd}");
    cmd
}

async fn show(server: &TestServer, id: &str) -> Value {
    let (status, cmd) = server.get(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(status, 200, "{cmd}");
    cmd
}

async fn wait_final(server: &TestServer, id: &str) -> Value {
    let (status, cmd) = server
        .get(&format!("/api/v1/commands/{id}?wait_ms=10000"))
        .await;
    assert_eq!(status, 200, "{cmd}");
    cmd
}

fn history(cmd: &Value) -> Vec<String> {
    cmd["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermostat_completes_and_its_target_is_device_state() {
    let server = manual_server().await;
    device(&server, "th-1", json!("thermostat")).await;
    let mut sub = server.subscribe("devices/th-1/+/+").await;

    let cmd = send(
        &server,
        "th-1",
        json!({"name": "set_target", "params": {"target": 27.5}}),
    )
    .await;
    let id = cmd["id"].as_str().unwrap().to_string();
    assert_eq!(cmd["status"], "sent", "an online device gets it at once");

    let delivered = sub
        .next_where(|m| m.topic == format!("devices/th-1/commands/{id}"))
        .await;
    assert_eq!(
        delivered.json(),
        json!({"id": id, "name": "set_target", "params": {"target": 27.5}, "attempt": 1})
    );
    let received = sub
        .next_where(|m| m.topic == format!("devices/th-1/acks/{id}"))
        .await;
    assert_eq!(received.json()["status"], "received");
    assert_eq!(show(&server, &id).await["status"], "received");

    // The handler answers `completed` 50 simulated ms later.
    server.advance(49).await;
    assert_eq!(show(&server, &id).await["status"], "received");
    server.advance(1).await;
    let done = show(&server, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"target": 27.5}));
    assert_eq!(done["attempts"], 1);
    assert_eq!(history(&done), ["queued", "sent", "received", "completed"]);
    let completed = sub
        .next_where(|m| m.topic == format!("devices/th-1/acks/{id}"))
        .await;
    assert_eq!(completed.json()["status"], "completed");

    // The target is the device's shared state: the handler reads it back
    // (with the temperature sensor's first reading, a minute in).
    server.advance(60_000).await;
    let cmd = send(&server, "th-1", json!({"name": "get_state"})).await;
    let state = wait_final(&server, cmd["id"].as_str().unwrap()).await;
    assert_eq!(state["status"], "completed");
    assert_eq!(state["result"]["target"], 27.5);
    assert!(
        state["result"]["temperature"].is_number(),
        "the temperature sensor's last value is shared too: {state}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_failed_answers_are_final_with_their_result() {
    let server = manual_server().await;
    device(&server, "th-1", json!("thermostat")).await;
    device(
        &server,
        "fw-1",
        json!({"plugin": "firmware", "config": {"failure_rate": 1.0, "steps": 3, "step_ms": 100}}),
    )
    .await;

    let cmd = send(
        &server,
        "th-1",
        json!({"name": "set_target", "params": {"target": 90}}),
    )
    .await;
    let rejected = wait_final(&server, cmd["id"].as_str().unwrap()).await;
    assert_eq!(rejected["status"], "rejected");
    assert!(
        rejected["result"]["error"]
            .as_str()
            .unwrap()
            .contains("outside"),
        "{rejected}"
    );

    let cmd = send(
        &server,
        "fw-1",
        json!({"name": "update_firmware", "params": {"version": "2.0.0"}}),
    )
    .await;
    let id = cmd["id"].as_str().unwrap();
    server.advance(400).await;
    let failed = show(&server, id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["result"]["error"], "image verification failed");
    // received, three progress acks, failed.
    let acks = failed["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 5, "{failed}");
    let progress: Vec<&Value> = acks
        .iter()
        .filter(|a| a["ignored"] == "progress")
        .map(|a| &a["result"]["progress"])
        .collect();
    assert_eq!(progress, [&json!(33), &json!(66), &json!(100)]);
    assert_eq!(history(&failed), ["queued", "sent", "received", "failed"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_device_times_out_after_its_retries_with_the_same_id() {
    let server = manual_server().await;
    device(
        &server,
        "mute-1",
        json!({"plugin": "flaky-acks", "config": {"drop_rate": 1.0, "duplicate_rate": 0.0}}),
    )
    .await;
    let mut sub = server.subscribe("devices/mute-1/commands/+").await;
    let cmd = send(
        &server,
        "mute-1",
        json!({"name": "ping", "timeout_ms": 1000, "retries": 2, "backoff_ms": 500}),
    )
    .await;
    let id = cmd["id"].as_str().unwrap();
    // Attempts at 0, 1500 (timeout 1000 + backoff 500) and 3500 (+1000
    // + 1000); the last times out at 4500.
    server.advance(4499).await;
    assert_eq!(show(&server, id).await["status"], "sent");
    server.advance(1).await;
    let timed_out = show(&server, id).await;
    assert_eq!(timed_out["status"], "timed_out", "{timed_out}");
    assert_eq!(timed_out["attempts"], 3);
    assert!(
        timed_out["reason"]
            .as_str()
            .unwrap()
            .contains("attempt 3 of 3")
    );
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let m = sub.next().await;
        assert_eq!(m.topic, format!("devices/mute-1/commands/{id}"));
        attempts.push(m.json()["attempt"].as_u64().unwrap());
    }
    assert_eq!(attempts, [1, 2, 3]);
    let sent_at: Vec<&str> = timed_out["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "sent")
        .map(|t| t["at"].as_str().unwrap())
        .collect();
    assert_eq!(sent_at.len(), 3);
    assert!(sent_at[1].ends_with("00:00:01.500Z"), "{sent_at:?}");
    assert!(sent_at[2].ends_with("00:00:03.500Z"), "{sent_at:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_lets_a_command_expire_and_gets_the_next_on_return() {
    let server = manual_server().await;
    device(&server, "th-1", json!("thermostat")).await;
    let mut sub = server.subscribe("devices/th-1/commands/+").await;
    let (status, _) = server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "offline"}),
        )
        .await;
    assert_eq!(status, 200);

    let stale = send(
        &server,
        "th-1",
        json!({"name": "get_state", "ttl_ms": 2000}),
    )
    .await;
    assert_eq!(stale["status"], "queued");
    let fresh = send(
        &server,
        "th-1",
        json!({"name": "set_target", "params": {"target": 19}, "ttl_ms": 60000}),
    )
    .await;
    server.advance(2000).await;
    let expired = show(&server, stale["id"].as_str().unwrap()).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["attempts"], 0, "an expired command was never sent");
    assert!(sub.drain().is_empty(), "nothing goes to an offline device");

    let (status, _) = server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "online"}),
        )
        .await;
    assert_eq!(status, 200);
    let m = sub.next().await;
    assert_eq!(
        m.topic,
        format!("devices/th-1/commands/{}", fresh["id"].as_str().unwrap())
    );
    server.advance(100).await;
    let done = wait_final(&server, fresh["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(history(&done), ["queued", "sent", "received", "completed"]);
    server.stop().await;
}

/// A real device played by an MQTT client: connects as `device`, answers
/// what it is sent with `answer`.
pub(crate) struct RealDevice {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<(String, Value)>,
}

impl RealDevice {
    pub(crate) async fn connect(server: &TestServer, device: &str) -> Self {
        let mut options = MqttOptions::new(device, "127.0.0.1", server.mqtt.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_credentials(device, "unused-in-open-mode");
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        client
            .subscribe(format!("devices/{device}/commands/+"), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body: Value = serde_json::from_slice(&p.payload).unwrap();
                        if tx.send((p.topic.clone(), body)).is_err() {
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
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("SUBACK in time")
            .unwrap();
        Self {
            client,
            commands: rx,
        }
    }

    pub(crate) async fn next_command(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(10), self.commands.recv())
            .await
            .expect("a command in time")
            .expect("connected")
    }

    /// A command received so far, without waiting.
    pub(crate) fn try_command(&mut self) -> Option<(String, Value)> {
        self.commands.try_recv().ok()
    }

    async fn ack(&self, device: &str, id: &str, body: Value) {
        self.client
            .publish(
                format!("devices/{device}/acks/{id}"),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .unwrap();
    }
}

async fn real_device(server: &TestServer, id: &str) {
    let (status, created) = server
        .post("/api/v1/devices", json!({"id": id, "simulated": false}))
        .await;
    assert_eq!(status, 201, "{created}");
}

async fn wait_status(server: &TestServer, id: &str, status: &str) -> Value {
    for _ in 0..200 {
        let cmd = show(server, id).await;
        if cmd["status"] == status {
            return cmd;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "command {id} never reached {status}: {}",
        show(server, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_device_gets_queued_command_on_connect_and_duplicates_are_ignored() {
    let server = TestServer::with_scenario("", |_| {}).await;
    real_device(&server, "gw-1").await;
    let cmd = send(
        &server,
        "gw-1",
        json!({"name": "open_valve", "params": {"valve": 2}, "timeout_ms": 10000}),
    )
    .await;
    let id = cmd["id"].as_str().unwrap().to_string();
    assert_eq!(cmd["status"], "queued");

    let mut dev = RealDevice::connect(&server, "gw-1").await;
    let (topic, body) = dev.next_command().await;
    assert_eq!(topic, format!("devices/gw-1/commands/{id}"));
    assert_eq!(body["name"], "open_valve");
    assert_eq!(body["params"], json!({"valve": 2}));

    dev.ack("gw-1", &id, json!({"id": id, "status": "received"}))
        .await;
    wait_status(&server, &id, "received").await;
    dev.ack("gw-1", &id, json!({"id": id, "status": "received"}))
        .await;
    dev.ack(
        "gw-1",
        &id,
        json!({"id": id, "status": "completed", "result": {"open": true}}),
    )
    .await;
    let done = wait_status(&server, &id, "completed").await;
    assert_eq!(done["result"], json!({"open": true}));
    // A duplicate of the final ack changes nothing.
    dev.ack(
        "gw-1",
        &id,
        json!({"id": id, "status": "failed", "result": {"open": false}}),
    )
    .await;
    let mut after = done.clone();
    for _ in 0..200 {
        after = show(&server, &id).await;
        if after["acks_total"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(after["acks_total"], 4, "{after}");
    assert_eq!(after["status"], "completed");
    assert_eq!(after["result"], json!({"open": true}));
    let ignored: Vec<&Value> = after["acks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["ignored"])
        .collect();
    assert_eq!(
        ignored,
        [
            &Value::Null,
            &json!("duplicate"),
            &Value::Null,
            &json!("late")
        ]
    );
    assert_eq!(history(&after), ["queued", "sent", "received", "completed"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_survive_a_restart_and_are_delivered_once() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    real_device(&server, "gw-2").await;
    let cmd = send(
        &server,
        "gw-2",
        json!({"name": "sync", "ttl_ms": 600000, "timeout_ms": 10000}),
    )
    .await;
    let id = cmd["id"].as_str().unwrap().to_string();
    assert_eq!(cmd["status"], "queued");
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    let restored = show(&server, &id).await;
    assert_eq!(restored["status"], "queued", "{restored}");
    let next = send(
        &server,
        "gw-2",
        json!({"name": "sync-2", "timeout_ms": 120000}),
    )
    .await;
    assert_ne!(next["id"], id, "ids are not reused after a restart");

    let mut dev = RealDevice::connect(&server, "gw-2").await;
    let (topic, _) = dev.next_command().await;
    assert_eq!(topic, format!("devices/gw-2/commands/{id}"));
    dev.ack("gw-2", &id, json!({"status": "completed"})).await;
    let done = wait_status(&server, &id, "completed").await;
    assert_eq!(done["attempts"], 1, "delivered once: {done}");
    // The second command went out too; the server stops before its ack.
    let (topic, _) = dev.next_command().await;
    let in_flight = next["id"].as_str().unwrap().to_string();
    assert_eq!(topic, format!("devices/gw-2/commands/{in_flight}"));
    assert_eq!(show(&server, &in_flight).await["status"], "sent");
    drop(dev);
    server.stop().await;

    // A third start: the final state is kept, and the in-flight command
    // takes its late ack.
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    let again = show(&server, &id).await;
    assert_eq!(again["status"], "completed");
    assert_eq!(again["attempts"], 1);
    assert_eq!(show(&server, &in_flight).await["status"], "sent");
    let dev = RealDevice::connect(&server, "gw-2").await;
    dev.ack("gw-2", &in_flight, json!({"status": "completed"}))
        .await;
    let done = wait_status(&server, &in_flight, "completed").await;
    assert_eq!(done["attempts"], 1, "{done}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_command_reports_each_device_and_a_summary() {
    let server = manual_server().await;
    for n in 1..=3 {
        device(&server, &format!("th-{n}"), json!("thermostat")).await;
    }
    let (status, _) = server
        .post(
            "/api/v1/devices",
            json!({"id": "other", "tags": ["lab"], "command_handler": "thermostat"}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, batch) = server
        .post(
            "/api/v1/commands",
            json!({"devices": {"tag": "hvac"}, "name": "set_target", "params": {"target": 18}}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(batch["total"], 3);
    server.advance(100).await;
    let (status, done) = server
        .get(&format!(
            "/api/v1/commands/batches/{}?wait_ms=5000",
            batch["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["summary"], json!({"completed": 3}));
    let devices: Vec<&str> = done["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["th-1", "th-2", "th-3"]);

    let (status, page) = server
        .get(&format!(
            "/api/v1/commands?batch={}&status=completed",
            batch["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 3);

    let (status, problem) = server
        .post(
            "/api/v1/commands",
            json!({"devices": {"tag": "hvac", "group": "x"}, "name": "n"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"].as_str().unwrap().contains("exactly one"),
        "{problem}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_end_publishing_a_command_gets_the_simulated_answer() {
    let server = TestServer::with_scenario("", |_| {}).await;
    device(&server, "th-9", json!("thermostat")).await;
    let mut acks = server.subscribe("devices/th-9/acks/+").await;
    let backend = Subscriber::connect(server.mqtt, "backend/#").await;
    backend
        .client
        .publish(
            "devices/th-9/commands/job-42",
            QoS::AtLeastOnce,
            false,
            json!({"id": "job-42", "name": "set_target", "params": {"target": 22}}).to_string(),
        )
        .await
        .unwrap();
    let first = acks.next().await;
    assert_eq!(first.topic, "devices/th-9/acks/job-42");
    assert_eq!(first.json()["status"], "received");
    let second = acks.next().await;
    assert_eq!(second.json()["status"], "completed");
    assert_eq!(second.json()["result"], json!({"target": 22.0}));
    let cmd = wait_final(&server, "job-42").await;
    assert_eq!(cmd["origin"], "mqtt");
    assert_eq!(cmd["status"], "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_takes_the_device_offline_and_back() {
    let server = manual_server().await;
    device(
        &server,
        "rb-1",
        json!({"plugin": "reboot", "config": {"offline_ms": 3000, "delay_ms": 100}}),
    )
    .await;
    let mut status = server.subscribe("devices/rb-1/status").await;
    assert_eq!(status.next().await.payload, b"online");
    let cmd = send(&server, "rb-1", json!({"name": "reboot"})).await;
    server.advance(100).await;
    let done = show(&server, cmd["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(status.next().await.payload, b"offline");
    let (_, dev) = server.get("/api/v1/devices/rb-1").await;
    assert_eq!(dev["connectivity"]["state"], "offline");

    // A command sent while it reboots waits for it.
    let later = send(
        &server,
        "rb-1",
        json!({"name": "reboot", "params": {"offline_ms": 0}}),
    )
    .await;
    assert_eq!(later["status"], "queued");
    server.advance(3000).await;
    assert_eq!(status.next().await.payload, b"online");
    server.advance(100).await;
    let later = show(&server, later["id"].as_str().unwrap()).await;
    assert_eq!(later["status"], "completed", "{later}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_say_what_to_fix_and_only_queued_commands_cancel() {
    let server = manual_server().await;
    device(&server, "th-1", json!("thermostat")).await;
    let (status, problem) = server
        .post("/api/v1/devices/nope/commands", json!({"name": "x"}))
        .await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = server
        .post(
            "/api/v1/devices/th-1/commands",
            json!({"name": "x", "retries": 100}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("retries"));
    let (status, problem) = server
        .post("/api/v1/devices/th-1/commands", json!({"nam": "x"}))
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = server.get("/api/v1/commands/none").await;
    assert_eq!(status, 404, "{problem}");

    let sent = send(&server, "th-1", json!({"name": "get_state"})).await;
    let (status, problem) = server
        .post(
            &format!("/api/v1/commands/{}/cancel", sent["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{problem}");

    server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "offline"}),
        )
        .await;
    let queued = send(
        &server,
        "th-1",
        json!({"name": "get_state", "id": "mine-1"}),
    )
    .await;
    assert_eq!(queued["id"], "mine-1");
    let (status, problem) = server
        .post(
            "/api/v1/devices/th-1/commands",
            json!({"name": "x", "id": "mine-1"}),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    let (status, cancelled) = server
        .post("/api/v1/commands/mine-1/cancel", json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "cancelled");
    server
        .post(
            "/api/v1/devices/th-1/connectivity",
            json!({"state": "online"}),
        )
        .await;
    server.advance(1000).await;
    assert_eq!(show(&server, "mine-1").await["status"], "cancelled");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_devices_answer_through_their_declared_handler() {
    let scenario = r#"
[[fleet]]
id_pattern = "fw-{n}"
count = 2
command_handler = { plugin = "firmware", config = { failure_rate = 0.0, steps = 1, step_ms = 10 } }
"#;
    let server = TestServer::with_scenario(scenario, |_| {}).await;
    let (_, dev) = server.get("/api/v1/devices/fw-2").await;
    assert_eq!(dev["command_handler"]["plugin"], "firmware", "{dev}");
    let cmd = send(
        &server,
        "fw-2",
        json!({"name": "update_firmware", "params": {"version": "3.1"}}),
    )
    .await;
    let done = wait_final(&server, cmd["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"version": "3.1"}));
    server.stop().await;

    let bad =
        TestServer::refused("[[fleet]]\nid = \"a\"\ncommand_handler = \"Not A Name\"\n").await;
    assert!(bad.contains("command_handler"), "{bad}");
}

/// The temperature readings of a device in the export, oldest first.
async fn temperatures(server: &TestServer, device: &str) -> Vec<f64> {
    let response = server
        .http
        .get(server.url(&format!(
            "/api/v1/telemetry?device={device}&sensor=temperature&limit=100000"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["value"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_target_moves_the_temperature_the_sensor_produces() {
    let scenario = r#"
[[fleet]]
id = "room"
command_handler = "thermostat"
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 60000
config = { mean = 20.0, amplitude = 0.0, noise = 0.02, weather_sd = 0.0, amplitude_variability = 0.0, tau_s = 600 }
"#;
    let server = TestServer::with_scenario(scenario, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(11);
    })
    .await;
    server.advance(3_600_000).await;
    let before = temperatures(&server, "room").await;
    let last = *before.last().unwrap();
    assert!((last - 20.0).abs() < 0.5, "free-running room: {last}");

    let cmd = send(
        &server,
        "room",
        json!({"name": "set_target", "params": {"target": 26.0}}),
    )
    .await;
    server.advance(7_200_000).await;
    let done = show(&server, cmd["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let after = temperatures(&server, "room").await;
    let newest = *after.last().unwrap();
    // Two hours is twelve time constants: the room is at the target.
    assert!(
        (newest - 26.0).abs() < 0.3,
        "room after set_target: {newest}"
    );
    // And it got there gradually, not in one step.
    let first_after = after[before.len()];
    assert!(
        first_after < 24.0,
        "a first-order lag, not a jump: {first_after}"
    );
    server.stop().await;
}
