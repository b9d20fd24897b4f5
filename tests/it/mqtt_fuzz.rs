//! Malformed MQTT on purpose: seeded mutations of valid client sessions
//! (MQTT 3.1, 3.1.1 and 5; QoS 0/1/2; properties, wills, topic aliases,
//! shared subscriptions, persistent sessions) sent by many clients at
//! once to a real `iotmock serve` process. Whatever arrives, the broker
//! answers with a reason code or a close: it never panics, and it goes
//! on serving everyone else and stops cleanly afterwards.
//!
//! `IOTMOCK_FUZZ_ROUNDS` (default 600) and `IOTMOCK_FUZZ_SEED` run it
//! longer or elsewhere; each round draws from its own stream (the seed
//! plus the round), so a failing round replays alone.

use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{read_ready_line, serve_ephemeral};
use crate::support::wire::{
    Raw, Will, connect, packet, props, publish, string, subscribe, unsubscribe, user_property,
    varint_at,
};

const CLIENTS: [&str; 6] = ["fz-a", "fz-b", "fz-c", "fz-d", "", "fz-e"];
const TOPICS: [&str; 7] = ["a", "a/b", "a/b/c", "$SYS/x", "", "x/+", "d/é/1"];
const FILTERS: [&str; 9] = [
    "#",
    "a/#",
    "+/b",
    "a/b/c",
    "$share/g/a/#",
    "$share//a",
    "a/#/b",
    "",
    "+",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_mqtt_sessions_never_break_the_broker() {
    let rounds: u64 = env_or("IOTMOCK_FUZZ_ROUNDS", 600);
    let seed: u64 = env_or("IOTMOCK_FUZZ_SEED", 0x1077_0c4b);
    let data = tempfile::tempdir().unwrap();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let (mut child, mqtt, http) = start(data.path(), &stderr);
    let api = reqwest::Client::new();

    // The fault paths see the same garbage: a duplicated delivery now
    // and then, and a delayed one.
    for rule in [
        json!({"match": {"direction": "out", "packet": "publish"}, "action": "duplicate", "probability": 0.1}),
        json!({"match": {"client": "fz-b"}, "action": "delay", "delay_ms": 5}),
    ] {
        let r = api
            .post(format!("{http}/api/v1/mqtt/faults"))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    // Which packet types the broker sent back, over all rounds: the
    // sessions reached every part of it, not only the CONNECT check.
    let mut answered = 0u16;
    let mut round = 0;
    while round < rounds {
        let batch: Vec<_> = (round..(round + 8).min(rounds))
            .map(|r| {
                let mut rng = Pcg64Mcg::seed_from_u64(seed.wrapping_add(r));
                let mut script = session(&mut rng);
                if rng.random_bool(0.85) {
                    mutate(&mut rng, &mut script);
                }
                tokio::spawn(play(mqtt, script, rng.random()))
            })
            .collect();
        for task in batch {
            answered |= task.await.unwrap();
        }
        round += 8;
    }

    for (kind, name) in [
        (2, "CONNACK"),
        (3, "PUBLISH"),
        (4, "PUBACK"),
        (5, "PUBREC"),
        (6, "PUBREL"),
        (7, "PUBCOMP"),
        (9, "SUBACK"),
        (11, "UNSUBACK"),
        (13, "PINGRESP"),
        (14, "DISCONNECT"),
    ] {
        assert!(answered & 1 << kind != 0, "no {name} in {rounds} sessions");
    }

    // Everyone else is still served: a subscriber hears a QoS 1 publish,
    // and a retained one is kept.
    let mut sub = Raw::subscribed(mqtt, 4, "after-sub", "after/#", 1).await;
    let (mut publ, _) = Raw::open(mqtt, &connect(5, "after-pub", true, 0, &[], None)).await;
    let mut kept = publish(5, "after/kept", 1, 7, &[], b"still here");
    kept[0] |= 0x01;
    publ.send(&kept).await;
    let puback = publ.packet().await.expect("a PUBACK");
    assert_eq!(puback.0, 0x40, "PUBACK, got {puback:?}");
    assert_eq!(sub.publish(4).await.2, b"still here");
    let health: serde_json::Value = api
        .get(format!("{http}/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(
        !log.contains("panicked"),
        "the broker panicked (seed {seed:#x}):\n{log}"
    );
    assert!(
        status.success(),
        "a clean stop after the fuzzing: {status:?}\n{log}"
    );

    // What the hostile sessions left in the store loads back.
    let (child, mqtt, _) = start(data.path(), &stderr);
    let mut again = Raw::subscribed(mqtt, 4, "again", "after/kept", 1).await;
    assert_eq!(again.publish(4).await.2, b"still here");
    crate::support::process::stop(child);
    let log = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(!log.contains("panicked"), "after the restart:\n{log}");
}

/// `iotmock serve` on `data`, its stderr to `log`: the child, its MQTT
/// address and its API's base URL.
fn start(
    data: &std::path::Path,
    log: &tempfile::NamedTempFile,
) -> (std::process::Child, std::net::SocketAddr, String) {
    let mut child = serve_ephemeral()
        .args(["--scenario", "none", "--mqtt-server-topic-aliases", "4"])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(log.path())
                .unwrap(),
        )
        .spawn()
        .expect("start iotmock");
    let ready: serde_json::Value =
        serde_json::from_str(&read_ready_line(&mut child)).expect("ready line is JSON");
    let mqtt = ready["mqtt"].as_str().unwrap().parse().unwrap();
    let http = format!("http://{}", ready["http"].as_str().unwrap());
    (child, mqtt, http)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        let v = v.trim();
        v.strip_prefix("0x")
            .map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// Sends `script` in chunks of random size, reads whatever comes back
/// until the broker closes or goes quiet, and lets go. Returns the packet
/// types that came back, one bit each.
async fn play(addr: std::net::SocketAddr, script: Vec<u8>, chunk_seed: u64) -> u16 {
    let mut rng = Pcg64Mcg::seed_from_u64(chunk_seed);
    let Ok(mut s) = TcpStream::connect(addr).await else {
        panic!("the broker stopped accepting connections");
    };
    let mut rest = &script[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(512));
        if s.write_all(&rest[..n]).await.is_err() {
            break;
        }
        rest = &rest[n..];
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(
        Duration::from_millis(80).min(deadline - tokio::time::Instant::now()),
        s.read(&mut buf),
    )
    .await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let mut kinds = 0u16;
    let mut rest = &got[..];
    while let Some((len, n)) = rest.get(1..).and_then(varint_at) {
        kinds |= 1 << (rest[0] >> 4);
        rest = rest.get(1 + n + len..).unwrap_or_default();
    }
    kinds
}

/// A valid client session: CONNECT, then up to 12 packets of any kind.
fn session(rng: &mut Pcg64Mcg) -> Vec<u8> {
    let level = [3, 4, 5][rng.random_range(0..3)];
    let v5 = level == 5;
    let mut cprops = Vec::new();
    if v5 {
        for _ in 0..rng.random_range(0..4) {
            match rng.random_range(0..5) {
                0 => cprops.extend([0x11, 0, 0, 0, rng.random_range(0..3)]),
                1 => cprops.extend([0x21, 0, rng.random_range(0..4)]),
                2 => cprops.extend([0x27, 0, 0, rng.random_range(0..2), rng.random()]),
                3 => cprops.extend([0x22, 0, rng.random_range(0..4)]),
                _ => user_property("k", "v", &mut cprops),
            }
        }
    }
    let will_topic = pick(rng, &TOPICS);
    let will = rng.random_bool(0.3).then(|| Will {
        topic: will_topic,
        payload: b"gone",
        qos: rng.random_range(0..3),
        delay_secs: (v5 && rng.random_bool(0.5)).then(|| rng.random_range(0..2)),
        props: &[],
    });
    let mut out = connect(
        level,
        pick(rng, &CLIENTS),
        rng.random_bool(0.6),
        [0, 1, 60][rng.random_range(0..3)],
        &cprops,
        will.as_ref(),
    );
    for _ in 0..rng.random_range(0..12) {
        let pid = rng.random_range(0..4u16);
        let pkt = match rng.random_range(0..9) {
            0 | 1 => subscribe(level, pid, pick(rng, &FILTERS), rng.random_range(0..0x40)),
            2 => unsubscribe(level, pid, &[pick(rng, &FILTERS)]),
            3..=5 => {
                let mut p = Vec::new();
                if v5 {
                    for _ in 0..rng.random_range(0..3) {
                        match rng.random_range(0..5) {
                            0 => p.extend([0x23, 0, rng.random_range(0..4)]),
                            1 => p.extend([0x02, 0, 0, 0, rng.random_range(0..2)]),
                            2 => {
                                p.push(0x08);
                                string(pick(rng, &TOPICS).as_bytes(), &mut p);
                            }
                            3 => p.extend([0x01, rng.random_range(0..2)]),
                            _ => user_property("trace", "1", &mut p),
                        }
                    }
                }
                let payload: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
                let mut pkt = publish(
                    level,
                    pick(rng, &TOPICS),
                    rng.random_range(0..3),
                    pid,
                    &p,
                    &payload,
                );
                if rng.random_bool(0.2) {
                    pkt[0] |= 0x01; // retain
                }
                pkt
            }
            6 => {
                let kind = [0x40, 0x50, 0x62, 0x70][rng.random_range(0..4)];
                packet(kind, &pid.to_be_bytes())
            }
            7 => vec![0xc0, 0x00],
            _ => {
                let mut b = Vec::new();
                if v5 {
                    b.push([0x00, 0x04, 0x81][rng.random_range(0..3)]);
                    props(&[], &mut b);
                }
                packet(0xe0, &b)
            }
        };
        out.extend(pkt);
    }
    out
}

/// One to four edits: a byte changed, a bit flipped, random bytes put
/// in, a stretch repeated, the session cut short, or its CONNECT left out.
fn mutate(rng: &mut Pcg64Mcg, script: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        if script.is_empty() {
            return;
        }
        let at = rng.random_range(0..script.len());
        match rng.random_range(0..6) {
            0 => script[at] = rng.random(),
            1 => script[at] ^= 1 << rng.random_range(0..8),
            2 => {
                let junk: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
                script.splice(at..at, junk);
            }
            3 => {
                let end = (at + rng.random_range(1..32)).min(script.len());
                let stretch = script[at..end].to_vec();
                script.splice(end..end, stretch);
            }
            4 => script.truncate(at),
            _ => {
                let connect_len = 2 + usize::from(script.get(1).copied().unwrap_or(0) & 0x7f);
                script.drain(..connect_len.min(script.len()));
            }
        }
    }
}

fn pick<'a>(rng: &mut Pcg64Mcg, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}
