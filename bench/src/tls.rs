//! MQTT over TLS against both brokers with the same certificates: a CA,
//! a server certificate and a client certificate made here (rcgen), given
//! to iotmock (`--mqtts`, `--tls-cert/--tls-key/--tls-client-ca`) and to
//! mosquitto (`cafile/certfile/keyfile`, `require_certificate true`). Every
//! client presents the certificate; session resumption is off, so each
//! connection is a full handshake with client certificate verification.
//!
//! The clients are raw MQTT 3.1.1 over tokio-rustls, the least client
//! work possible, so the broker's share of the shared cores dominates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::procs::{Kind, Proc};
use crate::report::{Table, ratio, status, thousands};

/// How much to run.
pub struct TlsPlan {
    pub handshake_time: Duration,
    pub handshake_workers: usize,
    pub messages: u64,
    pub publishers: usize,
    pub idle_connections: usize,
}

/// The certificates both brokers get, as files and as the client's DER.
struct Certs {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: Vec<u8>,
}

impl Certs {
    fn make() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "iotmock-bench CA");
        ca.distinguished_name = name;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "bench-device");
        client.distinguished_name = name;
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer)?;

        let write = |name: &str, text: String| -> anyhow::Result<()> {
            std::fs::write(dir.path().join(name), text)?;
            Ok(())
        };
        write("ca.pem", ca_cert.pem())?;
        write(
            "server.pem",
            format!("{}{}", server_cert.pem(), ca_cert.pem()),
        )?;
        write("server.key", server_key.serialize_pem())?;
        Ok(Self {
            ca_der: ca_cert.der().clone(),
            client_chain: vec![client_cert.der().clone()],
            client_key: client_key.serialize_der(),
            dir,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn connector(&self) -> anyhow::Result<TlsConnector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                self.client_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key.clone())),
            )?;
        // Every connection a full handshake: the cost a fleet of devices
        // coming online causes.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

async fn open(connector: &TlsConnector, addr: SocketAddr) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    string(&mut body, client_id);
    let mut out = vec![0x10];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn publish_packet(out: &mut Vec<u8>, topic: &str, qos: u8, pid: u16, payload: &[u8]) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    out.push(0x30 | (qos << 1));
    remaining_length(out, len);
    string(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Opens a TLS MQTT session and waits for a CONNACK that accepts it.
async fn session(
    connector: &TlsConnector,
    addr: SocketAddr,
    client_id: &str,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut s = open(connector, addr).await?;
    s.write_all(&connect_packet(client_id)).await?;
    s.flush().await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("CONNACK {connack:?}");
    }
    Ok(s)
}

/// Complete packets at the front of `buf`: (first byte, body range).
fn packets(buf: &[u8]) -> (Vec<(u8, std::ops::Range<usize>)>, usize) {
    let mut out = Vec::new();
    let mut i = 0;
    'outer: while i < buf.len() {
        let first = buf[i];
        let mut len = 0usize;
        let mut shift = 0;
        let mut j = i + 1;
        loop {
            let Some(&b) = buf.get(j) else { break 'outer };
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            j += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if j + len > buf.len() {
            break;
        }
        out.push((first, j..j + len));
        i = j + len;
    }
    (out, i)
}

/// Full handshakes (TLS, CONNECT, CONNACK, DISCONNECT) per second by
/// `workers` clients for `time`, and the broker CPU they cost.
async fn handshakes(
    p: &Proc,
    addr: SocketAddr,
    certs: &Certs,
    plan: &TlsPlan,
) -> anyhow::Result<(f64, f64)> {
    let connector = certs.connector()?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = p.cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..plan.handshake_workers {
        let (connector, done, stop) = (connector.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut s = session(&connector, addr, &format!("hs-{w}-{n}")).await?;
                s.write_all(&[0xe0, 0]).await?;
                let _ = s.shutdown().await;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(plan.handshake_time).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = p.cpu().since(&cpu0).as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    Ok((n / secs, n / cpu.max(1e-6)))
}

/// `publishers` clients send `messages` each at `qos` to one subscriber;
/// deliveries per second and per broker CPU-second.
async fn throughput(
    p: &Proc,
    addr: SocketAddr,
    certs: &Certs,
    plan: &TlsPlan,
    qos: u8,
) -> anyhow::Result<(f64, f64, u64)> {
    let connector = certs.connector()?;
    let topic = format!("bench/tls/{qos}");
    let mut sub = session(&connector, addr, &format!("sub-{qos}")).await?;
    let mut packet = vec![0x82];
    let mut body = vec![0, 1];
    string(&mut body, &topic);
    body.push(qos);
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    sub.write_all(&packet).await?;
    sub.flush().await?;
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).await?;
    let expected = plan.messages * plan.publishers as u64;
    // End-to-end flow control: publishers stay at most this many messages
    // ahead of the subscriber, below both brokers' queue bound (10,000),
    // so the figure is what a broker sustains without dropping.
    const AHEAD: u64 = 4_000;
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let cpu0 = p.cpu();
    let started = Instant::now();
    let counted = received.clone();
    let receiver = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        let mut last = Instant::now();
        while got < expected {
            let n = match tokio::time::timeout(Duration::from_secs(3), sub.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
            };
            buf.extend_from_slice(&chunk[..n]);
            let (found, used) = packets(&buf);
            let mut acks = Vec::new();
            for (first, body) in found {
                if first >> 4 == 3 {
                    got += 1;
                    counted.store(got, Ordering::Relaxed);
                    last = Instant::now();
                    if (first >> 1) & 3 == 1 {
                        let b = &buf[body];
                        let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
                        acks.extend_from_slice(&[0x40, 2, b[2 + tl], b[3 + tl]]);
                    }
                }
            }
            buf.drain(..used);
            if !acks.is_empty() {
                sub.write_all(&acks).await?;
                sub.flush().await?;
            }
        }
        anyhow::Ok((got, last))
    });
    let payload = vec![b'x'; 64];
    let mut senders = Vec::new();
    for i in 0..plan.publishers {
        let s = session(&connector, addr, &format!("pub-{qos}-{i}")).await?;
        let (topic, payload, messages) = (topic.clone(), payload.clone(), plan.messages);
        let (sent, received) = (sent.clone(), received.clone());
        senders.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(s);
            // QoS 1: at most 64 unacknowledged, as a device library would.
            let window = Arc::new(tokio::sync::Semaphore::new(64));
            let acks = {
                let window = window.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 16 * 1024];
                    while let Ok(n) = rd.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let (found, used) = packets(&buf);
                        let n = found.iter().filter(|(f, _)| f >> 4 == 4).count();
                        window.add_permits(n);
                        buf.drain(..used);
                    }
                })
            };
            let mut out = Vec::with_capacity(64 * 1024);
            for m in 0..messages {
                while sent.load(Ordering::Relaxed) >= received.load(Ordering::Relaxed) + AHEAD {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if qos == 1 {
                    window.acquire().await?.forget();
                }
                publish_packet(&mut out, &topic, qos, (m % 65_535 + 1) as u16, &payload);
                if out.len() > 32 * 1024 || m + 1 == messages || qos == 1 || m % 256 == 255 {
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    out.clear();
                }
            }
            if qos == 1 {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), window.acquire_many(64)).await;
            }
            wr.write_all(&[0xe0, 0]).await?;
            wr.flush().await?;
            acks.abort();
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let (got, last) = receiver.await??;
    let secs = last.duration_since(started).as_secs_f64().max(1e-6);
    let cpu = p.cpu().since(&cpu0).as_secs_f64();
    Ok((
        got as f64 / secs,
        got as f64 / cpu.max(1e-6),
        expected - got.min(expected),
    ))
}

/// Resident memory added per idle TLS MQTT connection.
async fn idle_memory(p: &Proc, addr: SocketAddr, certs: &Certs, n: usize) -> anyhow::Result<f64> {
    let connector = certs.connector()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = p.rss();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(session(&connector, addr, &format!("idle-{i}")).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = p.rss();
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Runs every measurement against iotmock and, when given, mosquitto.
pub async fn run(
    iotmock_bin: &Path,
    mosquitto_bin: Option<&Path>,
    plan: &TlsPlan,
) -> anyhow::Result<(Table, Value)> {
    let certs = Certs::make().context("making the benchmark's certificates")?;
    let path = |n: &str| certs.path(n).display().to_string();
    let mut procs = vec![Proc::iotmock(
        iotmock_bin,
        &[
            "--scenario",
            "none",
            "--mqtts",
            "127.0.0.1:0",
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server.key"),
            "--tls-client-ca",
            &path("ca.pem"),
        ],
    )?];
    if let Some(m) = mosquitto_bin {
        procs.push(Proc::mosquitto_with(
            m,
            &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                path("ca.pem"),
                path("server.pem"),
                path("server.key")
            ),
        )?);
    }
    let mut results: Vec<Value> = Vec::new();
    for p in &procs {
        let addr = match p.kind {
            Kind::Iotmock => p.ready_addr("mqtts")?,
            Kind::Mosquitto => p.mqtt,
        };
        crate::progress(&format!("tls: {} handshakes", p.kind.name()));
        let (hs_rate, hs_cpu) = handshakes(p, addr, &certs, plan).await?;
        let mut row = json!({"broker": p.kind.name(), "handshakes_per_s": hs_rate, "handshakes_per_cpu_s": hs_cpu});
        for qos in [0u8, 1] {
            crate::progress(&format!("tls: {} QoS {qos} throughput", p.kind.name()));
            let (rate, per_cpu, lost) = throughput(p, addr, &certs, plan, qos).await?;
            row[format!("qos{qos}_per_s")] = json!(rate);
            row[format!("qos{qos}_per_cpu_s")] = json!(per_cpu);
            row[format!("qos{qos}_lost")] = json!(lost);
        }
        crate::progress(&format!("tls: {} idle connections", p.kind.name()));
        row["bytes_per_idle_connection"] =
            json!(idle_memory(p, addr, &certs, plan.idle_connections).await?);
        results.push(row);
    }
    let mut table = Table::new(
        "MQTT over TLS (client certificates required, full handshakes, 64 B payloads, publishers at most 4,000 messages ahead of the subscriber; target: iotmock >= 1.0x mosquitto)",
        &["measure", "iotmock", "mosquitto", "ratio", "verdict"],
    );
    let fmt_row = |table: &mut Table,
                   label: &str,
                   key: &str,
                   higher_better: bool,
                   fmt: &dyn Fn(f64) -> String| {
        let a = results[0][key].as_f64().unwrap_or(0.0);
        let b = results.get(1).and_then(|r| r[key].as_f64());
        let (cell_b, r, verdict) = match b {
            Some(b) => {
                let (r, text) = if higher_better {
                    ratio(a, b)
                } else {
                    ratio(b, a)
                };
                (fmt(b), text, status(r >= 1.0))
            }
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        table.row(vec![label.into(), fmt(a), cell_b, r, verdict]);
    };
    let num = thousands;
    fmt_row(
        &mut table,
        "TLS handshakes/s",
        "handshakes_per_s",
        true,
        &num,
    );
    fmt_row(
        &mut table,
        "handshakes per broker CPU-s",
        "handshakes_per_cpu_s",
        true,
        &num,
    );
    fmt_row(&mut table, "QoS 0 deliveries/s", "qos0_per_s", true, &num);
    fmt_row(
        &mut table,
        "QoS 0 deliveries per broker CPU-s",
        "qos0_per_cpu_s",
        true,
        &num,
    );
    fmt_row(&mut table, "QoS 1 deliveries/s", "qos1_per_s", true, &num);
    fmt_row(
        &mut table,
        "QoS 1 deliveries per broker CPU-s",
        "qos1_per_cpu_s",
        true,
        &num,
    );
    fmt_row(
        &mut table,
        "memory per idle TLS connection",
        "bytes_per_idle_connection",
        false,
        &|x| format!("{:.1} KiB", x / 1024.0),
    );
    table.notes.push(format!(
        "{} handshake clients for {:.0} s; {} publishers x {} messages to 1 subscriber per QoS; {} idle connections; the memory ratio is mosquitto/iotmock (lower memory is better). Lost: {}.",
        plan.handshake_workers,
        plan.handshake_time.as_secs_f64(),
        plan.publishers,
        plan.messages,
        plan.idle_connections,
        results
            .iter()
            .map(|r| format!("{} q0 {} q1 {}", r["broker"], r["qos0_lost"], r["qos1_lost"]))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok((table, json!(results)))
}
