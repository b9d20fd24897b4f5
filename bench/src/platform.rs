//! The platform measured through its public interface: a spawned
//! `iotmock serve`, its REST API, and MQTT. Simulated fleets, telemetry
//! end to end, command acknowledgements, edge processing, hot reload.
//!
//! Routes that a build does not have (404) make the measurement
//! `Unavailable` instead of an error.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::http::Http;
use crate::procs::Proc;

/// A measurement that a build may lack.
pub enum Outcome<T> {
    Measured(T),
    Unavailable(String),
}

fn http(p: &Proc) -> Http {
    Http::new(p.http.expect("an iotmock process has an HTTP address"))
}

/// A subscriber in this process counting messages (and the distinct
/// devices they came from) on one filter.
struct Counter {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
    count: Arc<AtomicU64>,
    devices: Arc<Mutex<HashSet<String>>>,
}

impl Counter {
    async fn start(p: &Proc, filter: &str) -> anyhow::Result<Self> {
        let mut o = MqttOptions::new(
            format!("bench-count-{}", std::process::id()),
            p.mqtt.ip().to_string(),
            p.mqtt.port(),
        );
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        client.subscribe(filter, QoS::AtMostOnce).await?;
        let count = Arc::new(AtomicU64::new(0));
        let devices = Arc::new(Mutex::new(HashSet::new()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("MQTT subscriber: {e}"),
                Err(_) => bail!("no SUBACK within 10 s"),
            }
        }
        let (c, d) = (count.clone(), devices.clone());
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    c.fetch_add(1, Ordering::Relaxed);
                    // devices/{id}/telemetry/{sensor}
                    if let Some(id) = p.topic.split('/').nth(1) {
                        let mut d = d.lock().unwrap();
                        if !d.contains(id) {
                            d.insert(id.to_string());
                        }
                    }
                }
            }
        });
        Ok(Self {
            client,
            task,
            count,
            devices,
        })
    }

    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.devices.lock().unwrap().clear();
    }

    async fn stop(self) {
        let _ = self.client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

/// A simulated fleet of `devices` at one reading per `interval_ms`, with a
/// subscriber taking all of its telemetry.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub devices: u64,
    pub interval_ms: u64,
    pub provision_s: f64,
    pub window_s: f64,
    /// Readings the server published in the window (`/health`).
    pub published: u64,
    /// Readings the subscriber received in the window.
    pub received: u64,
    pub received_per_s: f64,
    /// Devices the subscriber heard from in the window.
    pub devices_heard: u64,
    pub server_cpu_share: f64,
    /// Server CPU share with no devices, before the first was created.
    pub idle_cpu_share: f64,
    /// Server CPU share per device, percent of one core.
    pub cpu_percent_per_device: f64,
    /// Server CPU time per delivered reading, µs.
    pub cpu_us_per_reading: f64,
    pub server_rss_bytes: u64,
}

async fn published(h: &mut Http) -> anyhow::Result<u64> {
    let a = h.get("/api/v1/health").await?;
    a.body["telemetry"]["published"]
        .as_u64()
        .ok_or_else(|| anyhow!("/health without telemetry.published: {}", a.body))
}

/// Grows the server's simulated fleet to each of `sizes` (bulk requests)
/// and measures each size over `window`.
pub async fn fleet(
    p: &Proc,
    sizes: &[u64],
    interval_ms: u64,
    window: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Vec<Fleet>> {
    let mut h = http(p);
    let counter = Counter::start(p, "devices/+/telemetry/#").await?;
    let mut have = 0u64;
    let mut out = Vec::new();
    let idle_window = window.min(Duration::from_secs(2));
    let cpu_before = p.cpu();
    let start = Instant::now();
    tokio::time::sleep(idle_window).await;
    let idle = p.cpu().since(&cpu_before).as_secs_f64() / start.elapsed().as_secs_f64();
    for &size in sizes {
        let add = size.saturating_sub(have);
        let started = Instant::now();
        if add > 0 {
            let a = h
                .post(
                    "/api/v1/devices/bulk",
                    &json!({
                        "count": add,
                        "first": have + 1,
                        "id_pattern": "sim-{n:06}",
                        "template": {
                            "type": "thermometer",
                            "tags": ["bench"],
                            "sensors": [{"plugin": "temperature", "interval_ms": interval_ms}],
                            "simulated": true
                        }
                    }),
                )
                .await?;
            if a.status != 201 {
                bail!(
                    "POST /devices/bulk ({add} devices): {} {}",
                    a.status,
                    a.body
                );
            }
        }
        let provision = started.elapsed();
        have = size;
        // Let every device's first reading come round before measuring.
        tokio::time::sleep(Duration::from_millis(interval_ms.min(5_000) + 500)).await;
        progress(&format!(
            "{size} devices at 1 reading / {interval_ms} ms: measuring {window:?}"
        ));
        let pub_before = published(&mut h).await?;
        counter.reset();
        let cpu_before = p.cpu();
        let start = Instant::now();
        tokio::time::sleep(window).await;
        let received = counter.count.load(Ordering::Relaxed);
        let heard = counter.devices.lock().unwrap().len() as u64;
        let cpu = p.cpu().since(&cpu_before);
        let wall = start.elapsed();
        let pub_after = published(&mut h).await?;
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        out.push(Fleet {
            devices: size,
            interval_ms,
            provision_s: provision.as_secs_f64(),
            window_s: wall.as_secs_f64(),
            published: pub_after - pub_before,
            received,
            received_per_s: received as f64 / wall.as_secs_f64(),
            devices_heard: heard,
            server_cpu_share: share,
            idle_cpu_share: idle,
            cpu_percent_per_device: share * 100.0 / size as f64,
            cpu_us_per_reading: if received > 0 {
                cpu.as_secs_f64() * 1e6 / received as f64
            } else {
                f64::NAN
            },
            server_rss_bytes: p.rss(),
        });
    }
    counter.stop().await;
    Ok(out)
}

/// Latency percentiles of a set of samples, ms.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Self {
        let mut s: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        s.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            if s.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[rank - 1]
        };
        Self {
            n: s.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: s.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Command round trips: POST a command, long-poll it to a final status.
#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    /// `simulated (<handler>)` or `real device over MQTT`.
    pub via: String,
    pub latency: Percentiles,
    /// Final statuses seen, with counts.
    pub statuses: Vec<(String, u64)>,
}

const FINAL: &[&str] = &[
    "completed",
    "rejected",
    "failed",
    "timeout",
    "timed_out",
    "expired",
    "cancelled",
    "canceled",
];

/// Sends `n` commands one after another to device `device` and waits for
/// each to reach a final status.
async fn command_round_trips(
    h: &mut Http,
    device: &str,
    n: usize,
) -> anyhow::Result<Outcome<(Vec<Duration>, Vec<(String, u64)>)>> {
    let mut samples = Vec::with_capacity(n);
    let mut statuses: Vec<(String, u64)> = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let a = h
            .post(
                &format!("/api/v1/devices/{device}/commands"),
                &json!({"name": "set_target", "params": {"target": 20.0 + (i % 5) as f64}, "timeout_ms": 5000}),
            )
            .await?;
        if a.status == 404 || a.status == 405 {
            return Ok(Outcome::Unavailable(format!(
                "POST /devices/{{id}}/commands answered {}",
                a.status
            )));
        }
        if a.status != 202 && a.status != 201 && a.status != 200 {
            bail!("POST /devices/{device}/commands: {} {}", a.status, a.body);
        }
        let id = a.body["id"]
            .as_str()
            .map(String::from)
            .or_else(|| a.body["id"].as_u64().map(|n| n.to_string()))
            .ok_or_else(|| anyhow!("command answer without an id: {}", a.body))?;
        let mut status = a.body["status"].as_str().unwrap_or("").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !FINAL.contains(&status.as_str()) {
            if Instant::now() > deadline {
                bail!("command {id} not final within 10 s (status {status:?})");
            }
            let a = h
                .get(&format!("/api/v1/commands/{id}?wait_ms=5000"))
                .await?;
            if a.status == 404 {
                return Ok(Outcome::Unavailable(format!(
                    "GET /commands/{{id}} answered 404: {}",
                    a.body
                )));
            }
            if a.status != 200 {
                bail!("GET /commands/{id}: {} {}", a.status, a.body);
            }
            status = a.body["status"].as_str().unwrap_or("").to_string();
        }
        samples.push(t.elapsed());
        match statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, c)) => *c += 1,
            None => statuses.push((status, 1)),
        }
    }
    Ok(Outcome::Measured((samples, statuses)))
}

/// Command acknowledgement latency against a simulated device with the
/// `handler` command-handler plugin.
pub async fn commands_simulated(
    p: &Proc,
    handler: &str,
    n: usize,
) -> anyhow::Result<Outcome<Commands>> {
    let mut h = http(p);
    let device = "cmd-sim-1";
    // The handler with no simulated delay between its `received` and
    // `completed` answers (the form with a config), else by name alone.
    let mut refused = String::new();
    let mut created = false;
    for spec in [
        json!({"plugin": handler, "config": {"delay_ms": 0}}),
        json!(handler),
    ] {
        let a = h
            .post(
                "/api/v1/devices",
                &json!({"id": device, "type": "thermostat", "command_handler": spec, "simulated": true}),
            )
            .await?;
        match a.status {
            201 => {
                created = true;
                break;
            }
            400 | 422 => {
                refused = a.body["detail"]
                    .as_str()
                    .map_or_else(|| a.body.to_string(), String::from);
            }
            _ => bail!("POST /devices: {} {}", a.status, a.body),
        }
    }
    if !created {
        return Ok(Outcome::Unavailable(format!(
            "a device with command handler {handler:?} is refused: {refused}"
        )));
    }
    Ok(match command_round_trips(&mut h, device, n).await? {
        Outcome::Measured((samples, statuses)) => Outcome::Measured(Commands {
            via: format!("simulated device, handler {handler}"),
            latency: Percentiles::of(&samples),
            statuses,
        }),
        Outcome::Unavailable(why) => Outcome::Unavailable(why),
    })
}

/// Command acknowledgement latency against a real device played by this
/// process over MQTT: it answers every command on
/// `devices/{id}/acks/{command_id}` with `completed`.
pub async fn commands_real(p: &Proc, n: usize) -> anyhow::Result<Outcome<Commands>> {
    let mut h = http(p);
    let device = "cmd-real-1";
    let a = h
        .post(
            "/api/v1/devices",
            &json!({"id": device, "type": "thermostat", "simulated": false}),
        )
        .await?;
    if a.status != 201 {
        bail!("POST /devices: {} {}", a.status, a.body);
    }
    // A raw MQTT 3.1.1 device with TCP_NODELAY: the PUBACK of a command
    // and the ack that follows go out in one write. (A client with Nagle's
    // algorithm on holds the second until the broker's delayed ACK of the
    // first, ~40 ms, and would measure itself.) The server runs with open
    // MQTT admission: the client id names the device.
    let stream = crate::broker::connect_raw(p.mqtt, device).await?;
    let (mut read, mut write) = stream.into_split();
    let filter = format!("devices/{device}/commands/+");
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut frame = Vec::new();
    crate::broker::push_packet(&mut frame, 0x82, &body);
    write.write_all(&frame).await?;
    let (header, suback) = tokio::time::timeout(
        Duration::from_secs(10),
        crate::broker::read_packet(&mut read),
    )
    .await
    .context("device: no SUBACK within 10 s")??;
    if header >> 4 != 9 || suback.last().is_none_or(|c| *c >= 0x80) {
        bail!("device: subscription refused ({header:#x} {suback:?})");
    }
    let task = tokio::spawn(async move {
        let mut next_id = 0u16;
        while let Ok((header, body)) = crate::broker::read_packet(&mut read).await {
            if header >> 4 != 3 || body.len() < 2 {
                continue;
            }
            let qos = (header >> 1) & 3;
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let Some(topic) = body.get(2..2 + topic_len) else {
                continue;
            };
            let topic = String::from_utf8_lossy(topic).into_owned();
            let Some(command_id) = topic.rsplit('/').next() else {
                continue;
            };
            let mut out = Vec::new();
            if qos > 0
                && let Some(id) = body.get(2 + topic_len..4 + topic_len)
            {
                crate::broker::push_packet(&mut out, 0x40, id);
            }
            next_id = next_id.checked_add(1).unwrap_or(1);
            let ack = json!({"id": command_id, "status": "completed", "result": {}}).to_string();
            crate::broker::push_publish(
                &mut out,
                &format!("devices/cmd-real-1/acks/{command_id}"),
                1,
                next_id,
                ack.as_bytes(),
            );
            if write.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let result = command_round_trips(&mut h, device, n).await;
    task.abort();
    Ok(match result? {
        Outcome::Measured((samples, statuses)) => Outcome::Measured(Commands {
            via: "real device over MQTT".into(),
            latency: Percentiles::of(&samples),
            statuses,
        }),
        Outcome::Unavailable(why) => Outcome::Unavailable(why),
    })
}

/// Edge processing latency as the edge node reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub devices: u64,
    pub window_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The node's answer, for the fields this harness does not read.
    pub node: Value,
}

/// Finds a percentile in an edge node's answer: the first number under a
/// key that names the percentile (`p50`, `p50_ms`, `p50_us`, ...) inside an
/// object whose key mentions latency. Returns ms.
fn find_latency(v: &Value, pct: &str, in_latency: bool) -> Option<f64> {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let lk = k.to_ascii_lowercase();
                let latency_here = in_latency || lk.contains("latency");
                if latency_here
                    && lk.starts_with(pct)
                    && let Some(n) = x.as_f64()
                {
                    let ms = if lk.ends_with("_us") {
                        n / 1000.0
                    } else if lk.ends_with("_ns") {
                        n / 1e6
                    } else if lk.ends_with("_s") && !lk.ends_with("_ms") {
                        n * 1000.0
                    } else {
                        n
                    };
                    return Some(ms);
                }
                if let Some(found) = find_latency(x, pct, latency_here) {
                    return Some(found);
                }
            }
            None
        }
        Value::Array(items) => items.iter().find_map(|x| find_latency(x, pct, in_latency)),
        _ => None,
    }
}

/// An edge node over `devices` simulated devices with the pass-through
/// rule `rule`; after `window`, the node's own latency figures.
pub async fn edge(
    p: &Proc,
    rule: &str,
    devices: u64,
    window: Duration,
) -> anyhow::Result<Outcome<Edge>> {
    let mut h = http(p);
    let a = h.get("/api/v1/edge-nodes").await?;
    if a.status == 404 || a.status == 405 {
        return Ok(Outcome::Unavailable(format!(
            "GET /edge-nodes answered {}",
            a.status
        )));
    }
    let a = h
        .post(
            "/api/v1/devices/bulk",
            &json!({
                "count": devices,
                "id_pattern": "edge-dev-{n:04}",
                "template": {
                    "tags": ["edge-bench"],
                    "sensors": [{"plugin": "temperature", "interval_ms": 100}],
                    "simulated": true
                }
            }),
        )
        .await?;
    if a.status != 201 {
        bail!("POST /devices/bulk: {} {}", a.status, a.body);
    }
    let a = h
        .post(
            "/api/v1/edge-nodes",
            &json!({
                "id": "bench-edge",
                "devices": {"tag": "edge-bench"},
                "rules": [{"plugin": rule, "config": {}}],
                "window_ms": 100,
                "buffer": {"capacity": 10000, "policy": "drop_oldest"}
            }),
        )
        .await?;
    if a.status == 404 || a.status == 405 {
        return Ok(Outcome::Unavailable(format!(
            "POST /edge-nodes answered {}",
            a.status
        )));
    }
    if !(200..300).contains(&a.status) {
        bail!("POST /edge-nodes: {} {}", a.status, a.body);
    }
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let a = h.get("/api/v1/edge-nodes/bench-edge").await?;
    if a.status != 200 {
        bail!("GET /edge-nodes/bench-edge: {} {}", a.status, a.body);
    }
    let (Some(p50), Some(p99)) = (
        find_latency(&a.body, "p50", false),
        find_latency(&a.body, "p99", false),
    ) else {
        return Ok(Outcome::Unavailable(format!(
            "GET /edge-nodes/{{id}} has no latency percentiles: {}",
            a.body
        )));
    };
    Ok(Outcome::Measured(Edge {
        devices,
        window_s: start.elapsed().as_secs_f64(),
        p50_ms: p50,
        p99_ms: p99,
        node: a.body,
    }))
}

/// The arrival of the first reading with `value` received at or after
/// `since`; an error after 10 s.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, f64)>,
    value: f64,
    since: Instant,
) -> anyhow::Result<Instant> {
    let deadline = since + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((at, v))) if v == value && at >= since => return Ok(at),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the MQTT subscriber stopped"),
            Err(_) => bail!("no reading with value {value} within 10 s"),
        }
    }
}

/// Hot reload through the folder watcher of a spawned server: the time
/// from writing a new `probe.wasm` (temporary file + rename) to the first
/// MQTT reading with the new plugin's value.
#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    pub latency: Percentiles,
}

pub async fn hot_reload(binary: &Path, reloads: usize) -> anyhow::Result<Reload> {
    let fixtures = Path::new(iotmock::bench::TEST_PLUGINS_DIR);
    let one = std::fs::read(fixtures.join("test_fixed_one.wasm"))
        .context("test plugin fixed-one (built with the library)")?;
    let two = std::fs::read(fixtures.join("test_fixed_two.wasm"))
        .context("test plugin fixed-two (built with the library)")?;
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::write(plugins.join("probe.wasm"), &one)?;
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        "[[fleet]]\nid = \"probe-1\"\n[[fleet.sensors]]\nplugin = \"probe\"\ninterval_ms = 5\n",
    )?;
    let server = Proc::iotmock(
        binary,
        &[
            "--plugins",
            plugins.to_str().context("a UTF-8 temporary path")?,
            "--scenario",
            scenario.to_str().context("a UTF-8 temporary path")?,
        ],
    )?;
    let mut o = MqttOptions::new(
        format!("bench-reload-{}", std::process::id()),
        server.mqtt.ip().to_string(),
        server.mqtt.port(),
    );
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    client
        .subscribe("devices/probe-1/telemetry/#", QoS::AtMostOnce)
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, f64)>();
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(m)) = event
                && let Some(v) = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v["value"].as_f64())
                && tx.send((Instant::now(), v)).is_err()
            {
                return;
            }
        }
    });
    let result = async {
        wait_for(&mut rx, 1.0, Instant::now()).await?;
        let mut samples = Vec::new();
        let mut current = 1.0;
        for _ in 0..reloads {
            let (bytes, value) = if current == 1.0 {
                (&two, 2.0)
            } else {
                (&one, 1.0)
            };
            while rx.try_recv().is_ok() {}
            let written = Instant::now();
            let temp = plugins.join("probe.wasm.tmp");
            std::fs::write(&temp, bytes)?;
            std::fs::rename(&temp, plugins.join("probe.wasm"))?;
            let seen = wait_for(&mut rx, value, written).await?;
            samples.push(seen - written);
            current = value;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(Reload {
            latency: Percentiles::of(&samples),
        })
    }
    .await;
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    drop(server);
    result
}
