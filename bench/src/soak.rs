//! The soak run (`--only soak`): iotmock with its default budgets, a fleet
//! of 1,000 devices at 1 Hz, a subscriber reading `devices/#`, and beside
//! them what a hostile test suite sends: a bounded flood of 8 MiB MQTT
//! publishes (firmware images with no subscriber) and stub amplification
//! attempts (`{{request.body}}` × 4,000 answering 1 MiB requests). The
//! server's resident memory is read from /proc at a steady interval and
//! printed as a table with the budgets' own figures from `/health`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::http::Http;
use crate::procs::Proc;
use crate::report::{Table, mib, status, thousands};

/// What resident memory must stay under, with default settings.
pub const RSS_BUDGET: u64 = 1 << 30;
/// Devices and their reading interval.
const DEVICES: u64 = 1_000;
const INTERVAL_MS: u64 = 1_000;
/// The flood: this many publishes of this size, at most one in flight.
const FLOOD_COUNT: u64 = 400;
const FLOOD_BYTES: usize = 8 << 20;
/// One amplification attempt every this long.
const STUB_EVERY: Duration = Duration::from_secs(2);
/// Rows in the table (samples are taken more often; the table shows this
/// many, evenly spread, plus the peak).
const ROWS: usize = 12;

pub async fn run(binary: &std::path::Path, duration: Duration) -> anyhow::Result<(Table, Value)> {
    let p = Proc::iotmock(binary, &["--scenario", "none"])?;
    let mut api = Http::new(p.http.expect("iotmock has an HTTP address"));
    let created = api
        .post(
            "/api/v1/devices/bulk",
            &json!({"count": DEVICES, "id_pattern": "soak-{n:04}",
                    "template": {"sensors": [{"plugin": "temperature", "interval_ms": INTERVAL_MS}]}}),
        )
        .await?;
    if created.status != 201 {
        bail!("creating the fleet: {} {}", created.status, created.body);
    }
    let stub = api
        .post(
            "/api/v1/stubs",
            &json!({"id": "amplify", "request": {"method": "POST", "path": "/amplify"},
                    "response": {"status": 200, "body": "{{request.body}}".repeat(4000)}}),
        )
        .await?;
    if stub.status != 201 {
        bail!("creating the stub: {} {}", stub.status, stub.body);
    }

    let received = Arc::new(AtomicU64::new(0));
    let subscriber = subscribe(&p, received.clone()).await?;
    let flooded = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn(flood(p.mqtt, flooded.clone()));
    let refused = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let amplify = tokio::spawn(amplify(
        p.http.expect("HTTP address"),
        attempts.clone(),
        refused.clone(),
        stop.clone(),
    ));

    let started = Instant::now();
    let every = (duration / 60).max(Duration::from_secs(1));
    let mut samples: Vec<Sample> = Vec::new();
    let mut health_api = Http::new(p.http.expect("HTTP address"));
    while started.elapsed() < duration {
        tokio::time::sleep(every.min(duration.saturating_sub(started.elapsed()))).await;
        let health = health_api.get("/api/v1/health").await?.body;
        samples.push(Sample {
            at: started.elapsed(),
            rss: p.rss(),
            mqtt_journal: health["mqtt_journal"]["bytes"].as_u64().unwrap_or(0),
            telemetry_journal: health["telemetry"]["journal"]["bytes"]
                .as_u64()
                .unwrap_or(0),
            published: health["telemetry"]["published"].as_u64().unwrap_or(0),
            received: received.load(Ordering::Relaxed),
            flooded: flooded.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
        });
        crate::progress(&format!(
            "soak {:.0}/{:.0} s: RSS {}",
            started.elapsed().as_secs_f64(),
            duration.as_secs_f64(),
            mib(p.rss())
        ));
    }
    stop.notify_waiters();
    flood.abort();
    let _ = amplify.await;
    subscriber.abort();
    let mut p = p;
    p.check_alive()?;

    let peak = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let minutes = duration.as_secs_f64() / 60.0;
    let mut table = Table::new(
        &format!(
            "Soak: {DEVICES} devices at 1 Hz, subscriber on devices/#, {FLOOD_COUNT} × 8 MiB publishes, 1 MiB stub amplification every {} s, default budgets, {minutes:.0} min",
            STUB_EVERY.as_secs()
        ),
        &[
            "time",
            "RSS",
            "MQTT journal",
            "telemetry journal",
            "readings published",
            "readings received",
            "8 MiB publishes",
            "stub 413s",
        ],
    );
    let step = samples.len().div_ceil(ROWS).max(1);
    let peak_at = samples.iter().position(|s| s.rss == peak);
    for (i, s) in samples.iter().enumerate() {
        let last = i + 1 == samples.len();
        if i % step == step - 1 || last || Some(i) == peak_at {
            table.row(vec![
                format!(
                    "{:.0} s{}",
                    s.at.as_secs_f64(),
                    if Some(i) == peak_at { " (peak)" } else { "" }
                ),
                mib(s.rss),
                mib(s.mqtt_journal),
                mib(s.telemetry_journal),
                thousands(s.published as f64),
                thousands(s.received as f64),
                s.flooded.to_string(),
                s.refused.to_string(),
            ]);
        }
    }
    table.notes.push(format!(
        "peak resident memory {} against a budget of {}: {}",
        mib(peak),
        mib(RSS_BUDGET),
        status(peak < RSS_BUDGET)
    ));
    table.notes.push(format!(
        "{} amplification attempts, {} refused with 413 before rendering",
        attempts.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    ));
    let raw = json!({
        "duration_s": duration.as_secs_f64(),
        "peak_rss": peak,
        "rss_budget": RSS_BUDGET,
        "samples": samples.iter().map(|s| json!({
            "at_s": s.at.as_secs_f64(), "rss": s.rss, "mqtt_journal": s.mqtt_journal,
            "telemetry_journal": s.telemetry_journal, "published": s.published,
            "received": s.received, "flooded": s.flooded, "refused": s.refused,
        })).collect::<Vec<_>>(),
    });
    Ok((table, raw))
}

struct Sample {
    at: Duration,
    rss: u64,
    mqtt_journal: u64,
    telemetry_journal: u64,
    published: u64,
    received: u64,
    flooded: u64,
    refused: u64,
}

fn options(p: std::net::SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(
        format!("{id}-{}", std::process::id()),
        p.ip().to_string(),
        p.port(),
    );
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(16 << 20, 16 << 20);
    o
}

/// A subscriber on `devices/#` that reads everything and counts it.
async fn subscribe(
    p: &Proc,
    received: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (client, mut eventloop) = AsyncClient::new(options(p.mqtt, "soak-sub"), 1000);
    client.subscribe("devices/#", QoS::AtMostOnce).await?;
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
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = event {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
}

/// Publishes the firmware images, QoS 1, one at a time, on a topic nobody
/// reads.
async fn flood(addr: std::net::SocketAddr, sent: Arc<AtomicU64>) {
    let mut o = options(addr, "soak-flood");
    o.set_inflight(1);
    let (client, mut eventloop) = AsyncClient::new(o, 4);
    let image = bytes::Bytes::from(vec![0x5Au8; FLOOD_BYTES]);
    let publisher = tokio::spawn(async move {
        for _ in 0..FLOOD_COUNT {
            if client
                .publish_bytes("firmware/image", QoS::AtLeastOnce, false, image.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    while let Ok(event) = eventloop.poll().await {
        if let Event::Incoming(Packet::PubAck(_)) = event
            && sent.fetch_add(1, Ordering::Relaxed) + 1 >= FLOOD_COUNT
        {
            break;
        }
    }
    publisher.abort();
}

/// Sends a 1 MiB body to the amplifying stub every [`STUB_EVERY`].
async fn amplify(
    addr: std::net::SocketAddr,
    attempts: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut http = Http::new(addr);
    let body = Value::String("a".repeat(1 << 20));
    loop {
        let answer = http
            .post("/mock/amplify", &body)
            .await
            .context("amplification attempt")?;
        attempts.fetch_add(1, Ordering::Relaxed);
        if answer.status == 413 {
            refused.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(STUB_EVERY) => {}
            _ = stop.notified() => return Ok(()),
        }
    }
}
