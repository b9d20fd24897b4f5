//! Broker measurements, the same for every broker: throughput (N
//! publishers → M subscribers), latency at a fixed rate, and how many
//! connections it holds at what memory. The load comes from rumqttc
//! clients in this process; the broker's CPU and memory from /proc.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::procs::Proc;

/// One throughput case.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Case {
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "QoS {} {} {}->{}",
            self.qos,
            if self.payload >= 1024 {
                format!("{} KiB", self.payload / 1024)
            } else {
                format!("{} B", self.payload)
            },
            self.publishers,
            self.subscribers
        )
    }
}

/// What one throughput run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub sent: u64,
    pub received: u64,
    /// Messages handed to the publishing clients per second.
    pub sent_per_s: f64,
    /// Messages delivered to subscribers per second (first send to last
    /// delivery).
    pub received_per_s: f64,
    /// 1 - received / (sent × subscribers).
    pub loss: f64,
    pub wall_s: f64,
    pub broker_cpu_s: f64,
    /// Broker CPU time / wall time (1.0 = one core busy).
    pub broker_cpu_share: f64,
    /// Delivered messages per second of broker CPU.
    pub per_broker_cpu_s: f64,
    pub broker_rss_bytes: u64,
}

/// One latency run: the delays seen, ns.
pub struct LatencyRun {
    pub sent: u64,
    pub samples_ns: Vec<u64>,
    pub cpu_s: f64,
    pub wall_s: f64,
}

/// Latency over one or more runs at the same rate.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate: u64,
    pub runs: usize,
    pub sent: u64,
    pub received: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub broker_cpu_share: f64,
}

impl Latency {
    pub fn of(rate: u64, runs: &[LatencyRun]) -> Self {
        let mut s: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.samples_ns.iter().copied())
            .collect();
        s.sort_unstable();
        let pct = |q: f64| -> f64 {
            if s.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[rank - 1] as f64 / 1000.0
        };
        let cpu: f64 = runs.iter().map(|r| r.cpu_s).sum();
        let wall: f64 = runs.iter().map(|r| r.wall_s).sum();
        Self {
            rate,
            runs: runs.len(),
            sent: runs.iter().map(|r| r.sent).sum(),
            received: s.len() as u64,
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            max_us: s.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
            broker_cpu_share: if wall > 0.0 { cpu / wall } else { f64::NAN },
        }
    }
}

/// What holding many connections measured.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub attempted: usize,
    /// Connections that got a CONNACK and still answered a PINGREQ after
    /// all were open.
    pub held: usize,
    pub connect_s: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_connection: f64,
    /// Open file descriptors of the broker with every connection open,
    /// per connection (1.0: the socket alone).
    pub fds_per_connection: f64,
    pub error: Option<String>,
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(64);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn client_id(role: &str) -> String {
    format!(
        "bench-{}-{role}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls an event loop until it reports CONNACK (and SUBACK when `subscribe`
/// is set), then keeps polling in a task that calls `on_publish` per
/// incoming message.
async fn drive(
    mut eventloop: EventLoop,
    subscribe: bool,
    mut on_publish: impl FnMut(&[u8]) + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, eventloop.poll())
            .await
            .context("no CONNACK/SUBACK within 10 s")??;
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                connected = true;
                if !subscribe {
                    break;
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    bail!("subscription refused");
                }
                if connected {
                    break;
                }
            }
            _ => {}
        }
    }
    Ok(tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                on_publish(&p.payload);
            }
        }
    }))
}

/// Clients of one run, disconnected and stopped when dropped.
#[derive(Default)]
struct Clients {
    clients: Vec<AsyncClient>,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    async fn close(self) {
        for c in &self.clients {
            let _ = c.try_disconnect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// N publishers → M subscribers, `per_publisher` messages each as fast as
/// the clients go, bounded by `limit`.
pub async fn throughput(
    broker: &Proc,
    case: Case,
    per_publisher: u64,
    limit: Duration,
) -> anyhow::Result<Throughput> {
    let addr = broker.mqtt;
    let run = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let topic_base = format!("bench/{}/{run}", std::process::id());
    let q = qos(case.qos);
    let mut clients = Clients::default();
    let received = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(std::sync::Mutex::new(Instant::now()));
    for _ in 0..case.subscribers {
        let (client, eventloop) = AsyncClient::new(options(addr, &client_id("sub")), 1000);
        client.subscribe(format!("{topic_base}/#"), q).await?;
        let count = received.clone();
        let last = last_delivery.clone();
        let mut n = 0u64;
        clients.tasks.push(
            drive(eventloop, true, move |_| {
                count.fetch_add(1, Ordering::Relaxed);
                n += 1;
                // The clock is read once per 64 deliveries: cheap, and close
                // enough at these rates.
                if n.is_multiple_of(64) {
                    *last.lock().unwrap() = Instant::now();
                }
            })
            .await?,
        );
        clients.clients.push(client);
    }
    let mut publishers = Vec::new();
    for _ in 0..case.publishers {
        let (client, eventloop) = AsyncClient::new(options(addr, &client_id("pub")), 1000);
        clients.tasks.push(drive(eventloop, false, |_| {}).await?);
        publishers.push(client.clone());
        clients.clients.push(client);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let payload = vec![b'x'; case.payload];
    let cpu_before = broker.cpu();
    let start = Instant::now();
    let sending: Vec<JoinHandle<u64>> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let topic = format!("{topic_base}/{i}");
            let payload = payload.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < per_publisher && !stop.load(Ordering::Relaxed) {
                    if client
                        .publish(&topic, q, false, payload.clone())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let deadline = start + limit;
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut sent = 0;
    for t in sending {
        sent += t.await.unwrap_or(0);
    }
    let sent_wall = start.elapsed();
    stopper.abort();
    // Wait for the deliveries: all of them, or 1 s without progress, or
    // the limit plus 2 s.
    let expected = sent * case.subscribers as u64;
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    loop {
        let n = received.load(Ordering::Relaxed);
        if n >= expected {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        if start.elapsed() > limit + Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = received.load(Ordering::Relaxed);
    let end = if got >= expected {
        Instant::now()
    } else {
        (*last_delivery.lock().unwrap()).max(start + sent_wall)
    };
    let wall = end.duration_since(start).max(Duration::from_millis(1));
    let cpu = broker.cpu().since(&cpu_before);
    let rss = broker.rss();
    clients.close().await;
    let cpu_s = cpu.as_secs_f64();
    Ok(Throughput {
        sent,
        received: got,
        sent_per_s: sent as f64 / sent_wall.as_secs_f64().max(1e-3),
        received_per_s: got as f64 / wall.as_secs_f64(),
        loss: if expected == 0 {
            0.0
        } else {
            1.0 - got as f64 / expected as f64
        },
        wall_s: wall.as_secs_f64(),
        broker_cpu_s: cpu_s,
        broker_cpu_share: cpu_s / wall.as_secs_f64(),
        per_broker_cpu_s: if cpu_s > 0.0 { got as f64 / cpu_s } else { 0.0 },
        broker_rss_bytes: rss,
    })
}

/// One publisher → one subscriber per broker at a fixed rate, every
/// broker in the same run: broker `b` of `n` gets its message `b / n` of a
/// period after the first broker's, so that no two are in flight together,
/// and a burst of load from elsewhere on the machine falls on all of them
/// alike. Each payload carries its send time; the subscriber takes the
/// difference. `first` rotates which broker leads the period.
pub async fn latency(
    brokers: &[&Proc],
    first: usize,
    qos_level: u8,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Vec<LatencyRun>> {
    let q = qos(qos_level);
    let base = Instant::now();
    let mut clients = Clients::default();
    let mut lanes = Vec::with_capacity(brokers.len());
    for broker in brokers {
        let run = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let topic = format!("lat/{}/{run}", std::process::id());
        let samples = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let (sub, eventloop) = AsyncClient::new(options(broker.mqtt, &client_id("lsub")), 1000);
        sub.subscribe(&topic, q).await?;
        {
            let samples = samples.clone();
            clients.tasks.push(
                drive(eventloop, true, move |payload| {
                    let now = base.elapsed().as_nanos() as u64;
                    if let Some(sent) = payload.get(..8) {
                        let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
                        samples.lock().unwrap().push(now.saturating_sub(sent));
                    }
                })
                .await?,
            );
        }
        clients.clients.push(sub);
        let publisher = RawPublisher::connect(broker.mqtt, &client_id("lpub")).await?;
        lanes.push((topic, samples, publisher));
    }

    let n = brokers.len().max(1);
    let count = rate * duration.as_millis() as u64 / 1000;
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let cpu_before: Vec<_> = brokers.iter().map(|b| b.cpu()).collect();
    let start = Instant::now();
    let mut payload = vec![b'x'; 64];
    for i in 0..count {
        for slot in 0..n {
            let b = (first + slot) % n;
            let at = start + period * i as u32 + period * slot as u32 / n as u32;
            let now = Instant::now();
            if at > now {
                tokio::time::sleep_until(at.into()).await;
            }
            let (topic, _, publisher) = &mut lanes[b];
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
            publisher.publish(topic, qos_level, &payload)?;
        }
    }
    let wait_until = Instant::now() + Duration::from_secs(2);
    while lanes
        .iter()
        .any(|(_, s, _)| (s.lock().unwrap().len() as u64) < count)
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = start.elapsed();
    let cpu: Vec<_> = brokers
        .iter()
        .zip(&cpu_before)
        .map(|(b, before)| b.cpu().since(before))
        .collect();
    let mut runs = Vec::with_capacity(n);
    for ((_, samples, publisher), cpu) in lanes.into_iter().zip(cpu) {
        publisher.close().await;
        let samples_ns = std::mem::take(&mut *samples.lock().unwrap());
        runs.push(LatencyRun {
            sent: count,
            samples_ns,
            cpu_s: cpu.as_secs_f64(),
            wall_s: wall.as_secs_f64(),
        });
    }
    clients.close().await;
    Ok(runs)
}

/// A publisher on a raw MQTT 3.1.1 connection with TCP_NODELAY: rumqttc
/// cannot turn Nagle's algorithm off, and with it a QoS 0 publish waits
/// for the broker's delayed ACK of the one before (tens of ms), which
/// would measure the client instead of the broker. It answers PUBREC with
/// PUBREL for QoS 2 and ignores the other acknowledgements.
struct RawPublisher {
    frames: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
    next_id: u16,
}

impl RawPublisher {
    async fn connect(addr: SocketAddr, id: &str) -> anyhow::Result<Self> {
        let stream = connect_raw(addr, id).await?;
        let (mut read, mut write) = stream.into_split();
        let (frames, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let answers = frames.clone();
        let reader = tokio::spawn(async move {
            while let Ok((header, body)) = read_packet(&mut read).await {
                // PUBREC: release the message.
                if header >> 4 == 5 && body.len() >= 2 {
                    let _ = answers.send(vec![0x62, 0x02, body[0], body[1]]);
                }
            }
        });
        Ok(Self {
            frames,
            writer,
            reader,
            next_id: 0,
        })
    }

    fn publish(&mut self, topic: &str, qos: u8, payload: &[u8]) -> anyhow::Result<()> {
        if qos > 0 {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        }
        let mut frame = Vec::with_capacity(8 + topic.len() + payload.len());
        push_publish(&mut frame, topic, qos, self.next_id, payload);
        self.frames
            .send(frame)
            .map_err(|_| anyhow::anyhow!("the publisher's connection closed"))
    }

    async fn close(self) {
        let _ = self.frames.send(vec![0xE0, 0x00]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.writer.abort();
        self.reader.abort();
    }
}

/// Opens `n` MQTT 3.1.1 connections (a raw CONNECT each, keepalive 10
/// minutes: nothing but the connection itself), checks that every one is
/// still answered with a PINGRESP once all are open, and measures the
/// broker's resident memory before and after.
pub async fn connections(broker: &Proc, n: usize) -> Connections {
    let addr = broker.mqtt;
    let rss_before = broker.rss();
    let fds_before = crate::procs::open_fds(broker.pid());
    let start = Instant::now();
    let mut result = Connections {
        attempted: n,
        held: 0,
        connect_s: 0.0,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_before,
        bytes_per_connection: 0.0,
        fds_per_connection: 0.0,
        error: None,
    };
    // Open in waves of 64 concurrent handshakes (within any listen backlog).
    let mut streams: Vec<TcpStream> = Vec::with_capacity(n);
    let mut first_error = None;
    let prefix = format!(
        "conn-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    for wave in (0..n).collect::<Vec<_>>().chunks(64) {
        let handshakes: Vec<_> = wave
            .iter()
            .map(|i| {
                let id = format!("{prefix}-{i}");
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(10), connect_raw(addr, &id)).await
                })
            })
            .collect();
        for h in handshakes {
            match h.await {
                Ok(Ok(Ok(stream))) => streams.push(stream),
                Ok(Ok(Err(e))) => {
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Ok(Err(_)) => {
                    first_error.get_or_insert_with(|| "CONNECT timed out (10 s)".into());
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    result.connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    result.rss_after_bytes = broker.rss();
    let fds_after = crate::procs::open_fds(broker.pid());
    // Every connection still served?
    let mut held = 0;
    for chunk in streams.chunks_mut(500) {
        let pings: Vec<_> = chunk
            .iter_mut()
            .map(|s| tokio::time::timeout(Duration::from_secs(10), ping(s)))
            .collect();
        for p in futures_join(pings).await {
            if matches!(p, Ok(Ok(()))) {
                held += 1;
            }
        }
    }
    result.held = held;
    if held > 0 {
        result.bytes_per_connection =
            result.rss_after_bytes.saturating_sub(rss_before) as f64 / held as f64;
        result.fds_per_connection = fds_after.saturating_sub(fds_before) as f64 / held as f64;
    }
    if held < n {
        result.error = Some(
            first_error
                .unwrap_or_else(|| format!("{} connections did not answer a PINGREQ", n - held)),
        );
    }
    drop(streams);
    // Let the broker notice the closes before the next measurement.
    tokio::time::sleep(Duration::from_millis(500)).await;
    result
}

/// Awaits futures concurrently without an extra dependency.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Reads one MQTT packet: the first header byte and the body.
pub async fn read_packet(read: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 1];
    read.read_exact(&mut header).await?;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        read.read_exact(&mut b).await?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    read.read_exact(&mut body).await?;
    Ok((header[0], body))
}

/// Appends one MQTT packet: header byte, remaining length, body.
pub fn push_packet(out: &mut Vec<u8>, header: u8, body: &[u8]) {
    out.push(header);
    let mut len = body.len();
    loop {
        let mut b = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

/// Appends a PUBLISH packet.
pub fn push_publish(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) {
    let mut body = Vec::with_capacity(4 + topic.len() + payload.len());
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    push_packet(out, 0x30 | (qos << 1), &body);
}

/// An MQTT 3.1.1 connection with TCP_NODELAY, clean session, keepalive 10
/// minutes, after its CONNACK.
pub async fn connect_raw(addr: SocketAddr, client_id: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let id = client_id.as_bytes();
    // Variable header: protocol name, level 4, clean session, keepalive 600 s.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("CONNACK refused: {connack:02x?}");
    }
    Ok(stream)
}

async fn ping(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream.write_all(&[0xC0, 0]).await?;
    let mut resp = [0u8; 2];
    stream.read_exact(&mut resp).await?;
    if resp != [0xD0, 0] {
        bail!("not a PINGRESP: {resp:02x?}");
    }
    Ok(())
}
