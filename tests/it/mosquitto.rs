//! The broker driven by a client we did not write: Debian's
//! `mosquitto_pub` / `mosquitto_sub` (`apt-get install mosquitto-clients`;
//! installed on first use when missing, so `cargo test` works on a fresh
//! machine where the tests run as root).

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use iotmock::Config;
use rumqttc::QoS;
use serde_json::json;

use crate::broker::{Client, auth_server, options, wait_subscribed};
use crate::support::TestServer;

/// Makes sure the mosquitto clients are installed, once per test run.
fn ensure_clients() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| crate::support::ensure_tool("mosquitto_sub", "mosquitto-clients"));
}

fn base(addr: SocketAddr) -> Vec<String> {
    ensure_clients();
    vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]
}

fn args(addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut a = base(addr);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs a mosquitto command to completion (off the async runtime).
async fn run(bin: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{bin} (install mosquitto-clients): {e}"))
    })
    .await
    .unwrap()
}

async fn pubm(addr: SocketAddr, extra: &[&str]) {
    let out = run("mosquitto_pub", args(addr, extra)).await;
    assert!(
        out.status.success(),
        "mosquitto_pub {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_sub(addr: SocketAddr, extra: &[&str]) -> Child {
    Command::new("mosquitto_sub")
        .args(args(addr, extra))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (install mosquitto-clients)")
}

async fn finish(child: Child) -> (String, String) {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(s: &str) -> Vec<&str> {
    let mut l: Vec<&str> = s.lines().collect();
    l.sort();
    l
}

#[tokio::test]
async fn mosquitto_qos_downgrade_and_wildcards() {
    let server = TestServer::start(Config::ephemeral()).await;
    let sub = spawn_sub(
        server.mqtt,
        &[
            "-i", "m-qos", "-q", "1", "-t", "mq/+/in", "-t", "$SYS/#", "-F", "%t %q %p", "-C", "3",
            "-W", "20",
        ],
    );
    wait_subscribed(&server, "m-qos", "mq/+/in").await;
    for q in ["0", "1", "2"] {
        let topic = format!("mq/{q}/in");
        pubm(server.mqtt, &["-q", q, "-t", &topic, "-m", q]).await;
    }
    pubm(server.mqtt, &["-q", "2", "-t", "mq/x/out", "-m", "no"]).await;
    let (out, err) = finish(sub).await;
    assert_eq!(
        lines(&out),
        ["mq/0/in 0 0", "mq/1/in 1 1", "mq/2/in 1 2"],
        "{err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn mosquitto_retained_set_replace_clear() {
    let server = TestServer::start(Config::ephemeral()).await;
    let a = server.mqtt;
    pubm(a, &["-r", "-q", "1", "-t", "mr/a", "-m", "one"]).await;
    pubm(a, &["-r", "-q", "1", "-t", "mr/a", "-m", "two"]).await;
    pubm(a, &["-q", "1", "-t", "mr/a", "-n"]).await; // empty, not retained
    let out = run(
        "mosquitto_sub",
        args(a, &["-t", "mr/#", "-F", "%r %p", "-C", "1", "-W", "5"]),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 two\n");
    pubm(a, &["-r", "-q", "1", "-t", "mr/a", "-n"]).await; // empty retained: clears
    let out = run(
        "mosquitto_sub",
        args(a, &["-t", "mr/#", "-C", "1", "-W", "1"]),
    )
    .await;
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "timed out, nothing retained");
    server.stop().await;
}

#[tokio::test]
async fn mosquitto_gets_ten_thousand_retained_topics() {
    let server = TestServer::start(Config::ephemeral()).await;
    for i in 0..10_000u32 {
        server
            .server()
            .mqtt()
            .publish(
                &format!("mfleet/d{i:05}/status"),
                &b"online"[..],
                iotmock::Qos::AtMostOnce,
                true,
            )
            .await;
    }
    let out = run(
        "mosquitto_sub",
        args(
            server.mqtt,
            &["-t", "mfleet/#", "-F", "%r %t", "-C", "10000", "-W", "60"],
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let topics: std::collections::HashSet<&str> = text
        .lines()
        .map(|l| l.strip_prefix("1 ").expect("retained"))
        .collect();
    assert_eq!(topics.len(), 10_000);
    server.stop().await;
}

#[tokio::test]
async fn mosquitto_wills() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (mut watcher, _) = Client::connect(options(server.mqtt, "m-will-watch")).await;
    watcher.sub("mwills/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "m-will-watch", "mwills/#").await;
    // Clean: receives one message and disconnects properly. (mosquitto_sub
    // 2.0 refuses `-k 0` itself; keepalive 0 is tested with rumqttc.)
    let clean = spawn_sub(
        server.mqtt,
        &[
            "-i",
            "m-clean",
            "-t",
            "go/#",
            "-C",
            "1",
            "--will-topic",
            "mwills/clean",
            "--will-payload",
            "gone",
        ],
    );
    wait_subscribed(&server, "m-clean", "go/#").await;
    // Abrupt: killed.
    let mut abrupt = spawn_sub(
        server.mqtt,
        &[
            "-i",
            "m-abrupt",
            "-t",
            "go/#",
            "--will-topic",
            "mwills/abrupt",
            "--will-payload",
            "gone",
        ],
    );
    wait_subscribed(&server, "m-abrupt", "go/#").await;
    pubm(server.mqtt, &["-t", "go/1", "-m", "x"]).await;
    let (out, _) = finish(clean).await;
    assert_eq!(out, "x\n");
    abrupt.kill().unwrap();
    let _ = abrupt.wait();
    let m = watcher.next().await;
    assert_eq!(m.topic, "mwills/abrupt");
    assert!(watcher.collect(Duration::from_millis(300)).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn mosquitto_persistent_session_gets_what_it_missed() {
    let server = TestServer::start(Config::ephemeral()).await;
    let a = server.mqtt;
    let first = spawn_sub(
        a,
        &[
            "-c",
            "-i",
            "m-persist",
            "-q",
            "1",
            "-t",
            "mbox/#",
            "-C",
            "1",
        ],
    );
    wait_subscribed(&server, "m-persist", "mbox/#").await;
    pubm(a, &["-q", "1", "-t", "mbox/a", "-m", "first"]).await;
    assert_eq!(finish(first).await.0, "first\n");
    for m in ["a", "b", "c"] {
        pubm(a, &["-q", "1", "-t", "mbox/a", "-m", m]).await;
    }
    let out = run(
        "mosquitto_sub",
        args(
            a,
            &[
                "-c",
                "-i",
                "m-persist",
                "-q",
                "1",
                "-t",
                "mbox/#",
                "-C",
                "3",
                "-W",
                "5",
            ],
        ),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\nc\n");
    server.stop().await;
}

#[tokio::test]
async fn mosquitto_connack_codes_3_1_1_and_5() {
    let server = auth_server().await;
    for version in ["mqttv311", "mqttv5"] {
        let out = run(
            "mosquitto_sub",
            args(
                server.mqtt,
                &[
                    "-V", version, "-u", "dev", "-P", "wrong", "-t", "a", "-C", "1", "-W", "3",
                ],
            ),
        )
        .await;
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success());
        assert!(
            err.contains("bad user name or password"),
            "{version}: {err}"
        );
        let out = run(
            "mosquitto_sub",
            args(
                server.mqtt,
                &["-V", version, "-t", "a", "-C", "1", "-W", "3"],
            ),
        )
        .await;
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("not authori"), "{version}: {err}");
    }
    let out = run(
        "mosquitto_pub",
        args(
            server.mqtt,
            &[
                "-V", "mqttv5", "-u", "dev", "-P", "secret", "-t", "open/x", "-m", "ok",
            ],
        ),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

#[tokio::test]
async fn mosquitto_reconnects_after_an_outage_and_resumes() {
    let server = TestServer::start(Config::ephemeral()).await;
    let sub = spawn_sub(
        server.mqtt,
        &[
            "-c", "-i", "m-out", "-q", "1", "-t", "mo/#", "-C", "2", "-W", "20",
        ],
    );
    wait_subscribed(&server, "m-out", "mo/#").await;
    server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic":"mo/a","payload":"before","qos":1}),
        )
        .await;
    // Let the PUBACK of "before" land: a QoS 1 message still unacknowledged
    // at the outage is (rightly) redelivered on resume.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = server
        .post("/api/v1/mqtt/outage", json!({"duration_ms": 1000}))
        .await;
    assert_eq!(status, 202);
    let (_, body) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic":"mo/a","payload":"during","qos":1}),
        )
        .await;
    assert_eq!(body["outcome"], "held");
    let (out, err) = finish(sub).await;
    assert_eq!(out, "before\nduring\n", "{err}");
    server.stop().await;
}
