//! Broker throughput and memory: N rumqttc publishers → 1 subscriber over
//! loopback, 64-byte payloads, QoS 0 and QoS 1; then resident memory of
//! this process (the broker runs in it) during and after a 5 s QoS 0 + QoS 1
//! flood with a slow subscriber. Bounded in count and time; prints a table.
//!
//! `cargo bench --bench broker`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iotmock::ClockMode;
use iotmock::bench::{Broker, Clock, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const PUBLISHERS: usize = 4;
const PAYLOAD: [u8; 64] = [b'x'; 64];

fn opts(addr: std::net::SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o
}

/// A subscriber counting messages; `delay` per message makes it slow.
async fn subscriber(
    addr: std::net::SocketAddr,
    id: &str,
    qos: QoS,
    delay: Option<Duration>,
) -> (AsyncClient, Arc<AtomicU64>) {
    let (client, mut eventloop) = AsyncClient::new(opts(addr, id), 1000);
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    client.subscribe("bench/#", qos).await.unwrap();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::Publish(_)) => {
                    c.fetch_add(1, Ordering::Relaxed);
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    rx.await.unwrap();
    (client, count)
}

/// Starts PUBLISHERS clients each publishing `per` messages (or until
/// `stop`); returns their tasks.
fn publishers(
    addr: std::net::SocketAddr,
    tag: &str,
    qos: QoS,
    per: u64,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..PUBLISHERS)
        .map(|i| {
            let (client, mut eventloop) =
                AsyncClient::new(opts(addr, &format!("{tag}-pub-{i}")), 1000);
            tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let stop = stop.clone();
            tokio::spawn(async move {
                let topic = format!("bench/{i}");
                let mut sent = 0;
                while sent < per && !stop.load(Ordering::Relaxed) {
                    client
                        .publish(&topic, qos, false, PAYLOAD.to_vec())
                        .await
                        .unwrap();
                    sent += 1;
                }
                sent
            })
        })
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn throughput(addr: std::net::SocketAddr, qos: QoS, per: u64) -> (u64, u64, f64) {
    let tag = format!("tp{}", qos as u8);
    let (_sub, count) = subscriber(addr, &format!("{tag}-sub"), qos, None).await;
    let total = per * PUBLISHERS as u64;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = publishers(addr, &tag, qos, per, stop);
    for t in tasks {
        t.await.unwrap();
    }
    // Wait until the subscriber has everything, or 2 s without progress
    // (QoS 0 may be dropped under overload; that is what we measure).
    let mut last = (0, Instant::now());
    loop {
        let n = count.load(Ordering::Relaxed);
        if n >= total {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = count.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    (total, received, received as f64 / secs)
}

#[tokio::main]
async fn main() {
    let mut config = MqttConfig::new(([127, 0, 0, 1], 0).into());
    config.journal_capacity = 10_000;
    let broker = Broker::start(&config, Clock::new(ClockMode::Realtime))
        .await
        .expect("broker");
    let addr = broker.local_addr();
    let idle = rss_kib();
    println!(
        "machine: {} cores; {PUBLISHERS} publishers -> 1 subscriber, 64 B payloads, loopback, journal 10,000",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!();
    println!("| run | published | received | msg/s (received) |");
    println!("|---|---:|---:|---:|");
    for (qos, per) in [(QoS::AtMostOnce, 50_000u64), (QoS::AtLeastOnce, 25_000)] {
        let (total, received, rate) = throughput(addr, qos, per).await;
        println!("| QoS {} | {total} | {received} | {rate:.0} |", qos as u8);
    }

    // Flood: publishers as fast as they can for 5 s, a subscriber that takes
    // 1 ms per message (QoS 1, so its session queue fills to its limit).
    let (_slow, slow_count) = subscriber(
        addr,
        "slow-sub",
        QoS::AtLeastOnce,
        Some(Duration::from_millis(1)),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = publishers(addr, "flood0", QoS::AtMostOnce, u64::MAX, stop.clone());
    tasks.extend(publishers(
        addr,
        "flood1",
        QoS::AtLeastOnce,
        u64::MAX,
        stop.clone(),
    ));
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for t in tasks {
        published += t.await.unwrap();
    }
    let during = rss_kib();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib();
    println!();
    println!("| flood (5 s, 8 publishers QoS 0+1, 1 slow QoS 1 subscriber) | value |");
    println!("|---|---:|");
    println!("| published | {published} |");
    println!(
        "| received by the slow subscriber | {} |",
        slow_count.load(Ordering::Relaxed)
    );
    println!("| RSS idle (broker started) | {} MiB |", idle / 1024);
    println!("| RSS peak during the flood | {} MiB |", peak / 1024);
    println!("| RSS at the end of the flood | {} MiB |", during / 1024);
    println!("| RSS 3 s after | {} MiB |", after / 1024);
    broker.shutdown().await;
}
