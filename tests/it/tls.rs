//! Secure transports with clients we did not write: mosquitto_pub/sub
//! over TLS with device certificates, `openssl s_client` for handshakes,
//! curl for HTTPS. (Paho over TLS, ws and wss: python/tests/test_tls.py.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use iotmock::MqttTransport;
use iotmock::{Config, MqttAuth, ScenarioChoice};
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, TestServer, WAIT, device_auth, ensure_tool};

fn ensure_tools() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        ensure_tool("mosquitto_sub", "mosquitto-clients");
        ensure_tool("openssl", "openssl");
        ensure_tool("curl", "curl");
    });
}

fn tls_config(auth: MqttAuth) -> Config {
    let any = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    Config {
        mqtt_auth: auth,
        mqtts: any,
        ws: any,
        wss: any,
        https: any,
        mock_https: any,
        ..Config::ephemeral()
    }
}

fn mqtts(server: &TestServer) -> SocketAddr {
    server
        .server()
        .transport_addr(MqttTransport::Tls)
        .expect("--mqtts runs")
}

/// A device certificate written to files: (cert, key).
struct DeviceFiles {
    cert: PathBuf,
    key: PathBuf,
    serial: String,
}

/// Files in a temporary directory that lives as long as the test.
struct Files {
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Files {
    async fn new(server: &TestServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pem = server.get_text("/api/v1/ca.pem").await;
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        std::fs::write(&ca, pem).unwrap();
        Self { dir, ca }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Issues a certificate for `device` with `body` and writes it out.
    async fn issue(&self, server: &TestServer, device: &str, body: Value) -> DeviceFiles {
        let (status, issued) = server
            .post(&format!("/api/v1/devices/{device}/certificates"), body)
            .await;
        assert_eq!(status, 201, "{issued}");
        self.save(device, &issued)
    }

    fn save(&self, device: &str, issued: &Value) -> DeviceFiles {
        let serial = issued["serial"].as_str().unwrap().to_string();
        DeviceFiles {
            cert: self.write(
                &format!("{device}-{serial}.crt"),
                issued["certificate"].as_str().unwrap(),
            ),
            key: self.write(
                &format!("{device}-{serial}.key"),
                issued["private_key"].as_str().expect("a key made for us"),
            ),
            serial,
        }
    }
}

async fn create_device(server: &TestServer, id: &str) {
    let (status, body) = server
        .post("/api/v1/devices", json!({"id": id, "simulated": false}))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn run(bin: &'static str, args: Vec<String>) -> Output {
    ensure_tools();
    tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e}"))
    })
    .await
    .unwrap()
}

fn tls_args(addr: SocketAddr, ca: &Path) -> Vec<String> {
    vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        addr.port().to_string(),
        "--cafile".into(),
        ca.display().to_string(),
    ]
}

/// mosquitto_pub over TLS with a device certificate, as client `id`.
async fn pub_with_cert(
    addr: SocketAddr,
    ca: &Path,
    device: &DeviceFiles,
    id: &str,
    topic: &str,
) -> Output {
    let mut args = tls_args(addr, ca);
    args.extend(
        [
            "--cert",
            &device.cert.display().to_string(),
            "--key",
            &device.key.display().to_string(),
            "-i",
            id,
            "-t",
            topic,
            "-m",
            "42",
            "-q",
            "1",
            "-V",
            "mqttv311",
        ]
        .map(String::from),
    );
    run("mosquitto_pub", args).await
}

/// mosquitto_sub over TLS as the admin, waiting for `count` messages.
fn admin_sub(addr: SocketAddr, ca: &Path, filter: &str, count: usize) -> Child {
    ensure_tools();
    let mut args = tls_args(addr, ca);
    args.extend(
        [
            "-u",
            "admin",
            "-P",
            ADMIN_PASSWORD,
            "-t",
            filter,
            "-q",
            "1",
            "-C",
            &count.to_string(),
            "-W",
            "20",
            "-v",
        ]
        .map(String::from),
    );
    Command::new("mosquitto_sub")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

async fn finish(child: Child) -> String {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the broker lists a client subscribed to `filter`.
async fn wait_subscribed(server: &TestServer, filter: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, clients) = server.get("/api/v1/mqtt/clients").await;
        if clients
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["subscriptions"].get(filter).is_some())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no subscriber on {filter}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn patch(server: &TestServer, device: &str, body: Value) -> u16 {
    server
        .http
        .patch(server.url(&format!("/api/v1/devices/{device}")))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn refused(server: &TestServer, reason: &str) -> u64 {
    let (_, health) = server.get("/api/v1/health").await;
    health["tls"]["refused"][reason].as_u64().unwrap()
}

#[tokio::test]
async fn mosquitto_device_certificate_is_the_device() {
    let server = TestServer::start(tls_config(device_auth())).await;
    let files = Files::new(&server).await;
    create_device(&server, "dev-1").await;
    let dev = files.issue(&server, "dev-1", json!({})).await;
    let addr = mqtts(&server);

    let sub = admin_sub(addr, &files.ca, "devices/dev-1/telemetry/#", 1);
    wait_subscribed(&server, "devices/dev-1/telemetry/#").await;
    // No password: the certificate says who it is.
    let out = pub_with_cert(addr, &files.ca, &dev, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(finish(sub).await.trim(), "devices/dev-1/telemetry/t 42");

    // The device's ACLs hold: another device's topic is not its own.
    let (_, before) = server
        .get("/api/v1/mqtt/messages?topic=devices/dev-2/%23")
        .await;
    let _ = pub_with_cert(addr, &files.ca, &dev, "dev-1", "devices/dev-2/telemetry/t").await;
    let (_, after) = server
        .get("/api/v1/mqtt/messages?topic=devices/dev-2/%23")
        .await;
    assert_eq!(before["items"], after["items"]);

    // Its own id only: CONNACK "identifier rejected".
    let out = pub_with_cert(addr, &files.ca, &dev, "someone-else", "devices/dev-1/x").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("identifier rejected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, health) = server.get("/api/v1/health").await;
    assert!(
        health["tls"]["with_certificate"].as_u64().unwrap() >= 3,
        "{health}"
    );
    let (status, list) = server.get("/api/v1/devices/dev-1/certificates").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["serial"], dev.serial.as_str());
    assert_eq!(list["items"][0]["status"], "valid");
    // The private key is in the issuing answer only.
    assert!(list["items"][0].get("private_key").is_none());
    server.stop().await;
}

#[tokio::test]
async fn revoked_expired_foreign_and_suspended_certificates_are_refused() {
    let server = TestServer::start(tls_config(device_auth())).await;
    let files = Files::new(&server).await;
    let addr = mqtts(&server);
    create_device(&server, "dev-1").await;
    let good = files
        .issue(&server, "dev-1", json!({"valid_days": 30}))
        .await;
    let revoked = files.issue(&server, "dev-1", json!({})).await;
    let expired = files
        .issue(
            &server,
            "dev-1",
            json!({"not_before": "2020-01-01T00:00:00Z", "not_after": "2020-02-01T00:00:00Z"}),
        )
        .await;
    let other = TestServer::start(tls_config(device_auth())).await;
    create_device(&other, "dev-1").await;
    let foreign = files.issue(&other, "dev-1", json!({})).await;

    let (status, _) = server
        .delete(&format!(
            "/api/v1/devices/dev-1/certificates/{}",
            revoked.serial
        ))
        .await;
    assert_eq!(status, 204);
    let (status, problem) = server
        .delete("/api/v1/devices/dev-1/certificates/00ff")
        .await;
    assert_eq!(status, 404, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("certificates lists them")
    );

    for (cert, reason) in [
        (&revoked, "revoked"),
        (&expired, "expired"),
        (&foreign, "unknown_ca"),
    ] {
        let before = refused(&server, reason).await;
        let out = pub_with_cert(addr, &files.ca, cert, "dev-1", "devices/dev-1/telemetry/t").await;
        assert!(!out.status.success(), "{reason} certificate accepted");
        assert_eq!(refused(&server, reason).await, before + 1, "{reason}");
    }
    let metrics = server.get_text("/metrics").await;
    for reason in ["revoked", "expired", "unknown_ca"] {
        assert!(
            metrics.contains(&format!(
                "iotmock_tls_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{metrics}"
        );
    }
    let (_, list) = server.get("/api/v1/devices/dev-1/certificates").await;
    let statuses: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["valid", "revoked", "expired"]);

    // A suspended device's good certificate: CONNACK not authorized.
    assert_eq!(
        patch(&server, "dev-1", json!({"state": "suspended"})).await,
        200
    );
    let out = pub_with_cert(addr, &files.ca, &good, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(refused(&server, "device_not_active").await, 1);

    // The server kept serving: back in service, the good one works.
    assert_eq!(
        patch(&server, "dev-1", json!({"state": "active"})).await,
        200
    );
    let out = pub_with_cert(addr, &files.ca, &good, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A deleted device's certificates go with it: a device made again
    // under the same id does not inherit them.
    server.delete("/api/v1/devices/dev-1").await;
    create_device(&server, "dev-1").await;
    let out = pub_with_cert(addr, &files.ca, &good, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(!out.status.success());
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn certificates_mode_requires_a_device_certificate() {
    let server = TestServer::start(tls_config(MqttAuth::Certificates {
        admin_password: ADMIN_PASSWORD.into(),
    }))
    .await;
    let files = Files::new(&server).await;
    let addr = mqtts(&server);
    let (status, device) = server
        .post(
            "/api/v1/devices",
            json!({"id": "dev-1", "simulated": false}),
        )
        .await;
    assert_eq!(status, 201);
    let password = device["credentials"]["password"].as_str().unwrap();
    // The password alone, even over TLS, is not enough.
    let mut args = tls_args(addr, &files.ca);
    args.extend(
        [
            "-u",
            "dev-1",
            "-P",
            password,
            "-i",
            "dev-1",
            "-t",
            "devices/dev-1/x",
            "-m",
            "1",
        ]
        .map(String::from),
    );
    let out = run("mosquitto_pub", args).await;
    assert!(!out.status.success());
    assert_eq!(refused(&server, "certificate_required").await, 1);
    // With the certificate it is.
    let dev = files.issue(&server, "dev-1", json!({})).await;
    let out = pub_with_cert(addr, &files.ca, &dev, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Back ends keep the admin password (no certificate).
    let sub = admin_sub(addr, &files.ca, "devices/+/telemetry/#", 1);
    wait_subscribed(&server, "devices/+/telemetry/#").await;
    let out = pub_with_cert(addr, &files.ca, &dev, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(out.status.success());
    assert!(finish(sub).await.contains("devices/dev-1/telemetry/t 42"));
    server.stop().await;
}

#[tokio::test]
async fn a_device_csr_is_signed_with_the_device_as_subject() {
    let server = TestServer::start(tls_config(device_auth())).await;
    let files = Files::new(&server).await;
    create_device(&server, "dev-csr").await;
    let key = files.dir.path().join("own.key");
    let csr = files.dir.path().join("own.csr");
    let out = run(
        "openssl",
        [
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-subj",
            "/CN=admin",
            "-out",
            &csr.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, issued) = server
        .post(
            "/api/v1/devices/dev-csr/certificates",
            json!({"csr": std::fs::read_to_string(&csr).unwrap()}),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    assert!(
        issued.get("private_key").is_none(),
        "the device kept its key"
    );
    let cert = files.write("own.crt", issued["certificate"].as_str().unwrap());
    let out = run(
        "openssl",
        [
            "x509",
            "-noout",
            "-subject",
            "-in",
            &cert.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    // The subject is ours, not what the request asked for.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CN=dev-csr")
            || String::from_utf8_lossy(&out.stdout).contains("CN = dev-csr"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dev = DeviceFiles {
        cert,
        key,
        serial: issued["serial"].as_str().unwrap().into(),
    };
    let out = pub_with_cert(
        mqtts(&server),
        &files.ca,
        &dev,
        "dev-csr",
        "devices/dev-csr/telemetry/t",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad requests say what to fix.
    for (body, needle) in [
        (json!({"csr": "not a csr"}), "CERTIFICATE REQUEST"),
        (json!({"valid_days": 0}), "valid_days must be"),
        (json!({"not_after": "tomorrow"}), "RFC 3339"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let (status, problem) = server
            .post("/api/v1/devices/dev-csr/certificates", body)
            .await;
        assert_eq!(status, 422, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    let (status, _) = server
        .post("/api/v1/devices/nobody/certificates", json!({}))
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn openssl_s_client_sees_the_handshake_cases() {
    let server = TestServer::start(tls_config(device_auth())).await;
    let files = Files::new(&server).await;
    create_device(&server, "dev-1").await;
    let dev = files.issue(&server, "dev-1", json!({})).await;
    let addr = mqtts(&server);
    let s_client = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "s_client",
            "-connect",
            &format!("localhost:{}", addr.port()),
            "-CAfile",
            &files.ca.display().to_string(),
            "-verify_return_error",
            "-tls1_2",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        run("openssl", args)
    };
    // The server certificate chains to the CA and names localhost.
    let out = s_client(&["-verify_hostname", "localhost"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    // A client certificate is asked for and accepted.
    let (cert, key) = (
        dev.cert.display().to_string(),
        dev.key.display().to_string(),
    );
    let out = s_client(&["-cert", &cert, "-key", &key]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoked: the handshake fails with the "certificate revoked" alert.
    server
        .delete(&format!(
            "/api/v1/devices/dev-1/certificates/{}",
            dev.serial
        ))
        .await;
    let out = s_client(&["-cert", &cert, "-key", &key]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate revoked"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn curl_reaches_the_api_device_api_and_stubs_over_https() {
    let server = TestServer::start(tls_config(device_auth())).await;
    let files = Files::new(&server).await;
    let https = server.server().https_addr().unwrap();
    let mock_https = server.server().mock_https_addr().unwrap();
    let curl = |url: String, extra: Vec<String>| {
        let mut args = vec![
            "-sS".to_string(),
            "--cacert".into(),
            files.ca.display().to_string(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        args.extend(extra);
        args.push(url);
        async move {
            let out = run("curl", args).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let (body, code) = text.rsplit_once('\n').unwrap();
            (code.parse::<u16>().unwrap(), body.to_string())
        }
    };
    let (code, body) = curl(
        format!("https://localhost:{}/api/v1/health", https.port()),
        vec![],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(health["https_connections"]["open"].as_u64().unwrap() >= 1);

    let (status, _) = server
        .post(
            "/api/v1/stubs",
            json!({"request": {"method": "GET", "path": "/ota/manifest.json"},
                   "response": {"status": 200, "body": {"version": "2.0.1"}}}),
        )
        .await;
    assert_eq!(status, 201);
    let (code, body) = curl(
        format!("https://127.0.0.1:{}/ota/manifest.json", mock_https.port()),
        vec![],
    )
    .await;
    assert_eq!((code, body.contains("2.0.1")), (200, true), "{body}");

    // An HTTP device authenticates with its certificate, no password.
    create_device(&server, "dev-h").await;
    let dev = files.issue(&server, "dev-h", json!({})).await;
    let telemetry = |device: &str| {
        format!(
            "https://localhost:{}/api/v1/devices/{device}/telemetry",
            https.port()
        )
    };
    let with_cert = vec![
        "--cert".to_string(),
        dev.cert.display().to_string(),
        "--key".into(),
        dev.key.display().to_string(),
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        r#"{"sensor":"t","value":21.5}"#.into(),
    ];
    let (code, body) = curl(telemetry("dev-h"), with_cert.clone()).await;
    assert!((200..300).contains(&code), "{code} {body}");
    // Not another device's path.
    create_device(&server, "dev-other").await;
    let (code, _) = curl(telemetry("dev-other"), with_cert).await;
    assert_eq!(code, 403);
    // No certificate and no password: 401.
    let (code, _) = curl(
        telemetry("dev-h"),
        vec![
            "-d".into(),
            "{}".into(),
            "-H".into(),
            "content-type: application/json".into(),
        ],
    )
    .await;
    assert_eq!(code, 401);
    let (_, readings) = server.get("/api/v1/telemetry?device=dev-h").await;
    assert!(readings.to_string().contains("21.5"), "{readings}");
    server.stop().await;
}

#[tokio::test]
async fn a_simulated_fleet_streams_to_a_tls_subscriber() {
    let scenario = r#"
[[fleet]]
id = "tls-sim-1"
sensors = [{ plugin = "temperature", interval_ms = 50 }]
"#;
    let mut config = tls_config(device_auth());
    config.scenario = ScenarioChoice::Inline(scenario.into());
    let server = TestServer::start(config).await;
    let files = Files::new(&server).await;
    let sub = admin_sub(
        mqtts(&server),
        &files.ca,
        "devices/tls-sim-1/telemetry/#",
        3,
    );
    let out = finish(sub).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in lines {
        let (topic, payload) = line.split_once(' ').unwrap();
        assert!(topic.starts_with("devices/tls-sim-1/telemetry/"), "{line}");
        let reading: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(reading["device"], "tls-sim-1");
        assert!(reading["value"].is_number(), "{reading}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bulk_provisioning_issues_certificates() {
    let server = TestServer::start(tls_config(device_auth())).await;
    let files = Files::new(&server).await;
    let (status, created) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 3, "id_pattern": "fw-{n:02}", "certificates": true,
                   "template": {"simulated": false}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let devices = created["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3);
    let third = &devices[2];
    assert_eq!(third["id"], "fw-03");
    let dev = files.save("fw-03", &third["certificate"]);
    let out = pub_with_cert(
        mqtts(&server),
        &files.ca,
        &dev,
        "fw-03",
        "devices/fw-03/telemetry/t",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the flag, no certificates.
    let (_, plain) = server
        .post(
            "/api/v1/devices/bulk",
            json!({"count": 1, "id_pattern": "plain-{n}"}),
        )
        .await;
    assert!(plain["devices"][0].get("certificate").is_none(), "{plain}");
    server.stop().await;
}

#[tokio::test]
async fn the_ca_and_revocations_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let config = || Config {
        data_dir: Some(data.path().to_path_buf()),
        ..tls_config(device_auth())
    };
    let server = TestServer::start(config()).await;
    let files = Files::new(&server).await;
    create_device(&server, "dev-1").await;
    let good = files.issue(&server, "dev-1", json!({})).await;
    let revoked = files.issue(&server, "dev-1", json!({})).await;
    server
        .delete(&format!(
            "/api/v1/devices/dev-1/certificates/{}",
            revoked.serial
        ))
        .await;
    let ca_before = server.server().ca_pem().to_string();
    server.stop().await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No device key anywhere in the data directory.
    let key_text = std::fs::read_to_string(&good.key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    for entry in walk(data.path()) {
        // A database's -wal and -shm files go when its writer thread,
        // which may outlive the server's shutdown, closes the file; what
        // they held is then in the database file itself.
        let bytes = match std::fs::read(&entry) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", entry.display()),
        };
        assert!(
            !bytes
                .windows(key_body.len())
                .any(|w| w == key_body.as_bytes()),
            "a device key in {}",
            entry.display()
        );
    }

    let server = TestServer::start(config()).await;
    assert_eq!(server.server().ca_pem(), ca_before);
    let addr = mqtts(&server);
    let out = pub_with_cert(addr, &files.ca, &good, "dev-1", "devices/dev-1/telemetry/t").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pub_with_cert(
        addr,
        &files.ca,
        &revoked,
        "dev-1",
        "devices/dev-1/telemetry/t",
    )
    .await;
    assert!(!out.status.success(), "a revoked certificate came back");
    let (_, list) = server.get("/api/v1/devices/dev-1/certificates").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    server.stop().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn listeners_are_named_in_the_ready_line_and_clashes_say_which_flag() {
    let server = TestServer::start(tls_config(MqttAuth::Open)).await;
    let ready: Value = serde_json::from_str(&server.server().ready_line()).unwrap();
    for key in ["http", "mqtt", "mqtts", "ws", "wss", "https", "mock_https"] {
        let addr: SocketAddr = ready[key].as_str().unwrap().parse().unwrap();
        assert_ne!(addr.port(), 0, "{key}");
    }
    // A WebSocket upgrade on another path, or without the mqtt
    // subprotocol, is refused with a status that says so.
    let ws = server.server().transport_addr(MqttTransport::Ws).unwrap();
    for (path, protocol, expected) in [("/other", "mqtt", "404"), ("/mqtt", "chat", "400")] {
        let out = run(
            "curl",
            [
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Sec-WebSocket-Version: 13",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "-H",
                &format!("Sec-WebSocket-Protocol: {protocol}"),
                &format!("http://{ws}{path}"),
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{path} {protocol}"
        );
    }
    let taken = server.server().transport_addr(MqttTransport::Tls).unwrap();
    for (flag, config) in [
        (
            "--mqtts",
            Config {
                mqtts: Some(taken),
                ..Config::ephemeral()
            },
        ),
        (
            "--wss",
            Config {
                wss: Some(taken),
                ..Config::ephemeral()
            },
        ),
        (
            "--https",
            Config {
                https: Some(taken),
                ..Config::ephemeral()
            },
        ),
    ] {
        let error = iotmock::Server::start(config).await.err().expect("a clash");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{flag} {taken} is in use")),
            "{error}"
        );
    }
    server.stop().await;
}

/// Why a server with these TLS settings (and data directory) does not
/// start.
async fn tls_refusal(tls: iotmock::TlsSettings, data_dir: Option<PathBuf>) -> String {
    let config = Config {
        tls,
        data_dir,
        ..Config::ephemeral()
    };
    match iotmock::Server::start(config).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the server started")
        }
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn tls_files_that_do_not_load_are_refused_naming_the_file_and_the_fix() {
    use iotmock::TlsSettings;
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("server.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let error = tls_refusal(
        TlsSettings {
            cert: Some(not_pem.clone()),
            key: Some(not_pem.clone()),
            ..TlsSettings::default()
        },
        None,
    )
    .await;
    assert_eq!(
        error,
        format!(
            "TLS: {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
            not_pem.display()
        )
    );

    // A certificate with a key that is not one.
    let server = TestServer::start(Config::ephemeral()).await;
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, server.get_text("/api/v1/ca.pem").await).unwrap();
    server.stop().await;
    let error = tls_refusal(
        TlsSettings {
            cert: Some(cert.clone()),
            key: Some(not_pem.clone()),
            ..TlsSettings::default()
        },
        None,
    )
    .await;
    assert!(
        error.starts_with(&format!("TLS: {}: ", not_pem.display()))
            && error.ends_with("give a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        "{error}"
    );
    let error = tls_refusal(
        TlsSettings {
            cert: Some(cert),
            ..TlsSettings::default()
        },
        None,
    )
    .await;
    assert!(
        error.contains("--tls-cert and --tls-key go together"),
        "{error}"
    );

    // A stored CA that no longer loads: the server says which folder and
    // what removing it costs, rather than making a new CA behind the
    // user's back.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tls")).unwrap();
    std::fs::write(data.join("tls/ca.pem"), "garbage").unwrap();
    std::fs::write(data.join("tls/ca.key"), "garbage").unwrap();
    let error = tls_refusal(TlsSettings::default(), Some(data.clone())).await;
    assert!(
        error.starts_with(&format!(
            "TLS: {}: the stored CA does not load (",
            data.join("tls").display()
        )) && error.contains("remove ca.pem and ca.key to make a new one"),
        "{error}"
    );
}

#[tokio::test]
async fn tls_name_adds_a_name_the_server_certificate_covers() {
    let server = TestServer::start(Config {
        tls: iotmock::TlsSettings {
            names: vec!["broker.test".into()],
            ..Default::default()
        },
        ..tls_config(MqttAuth::Open)
    })
    .await;
    let pem = server.get_text("/api/v1/ca.pem").await;
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(client);
    let handshake = |name: &'static str| {
        let connector = connector.clone();
        let addr = mqtts(&server);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            connector.connect(name, tcp).await
        }
    };
    let mut stream = handshake("broker.test")
        .await
        .expect("the extra name is in the certificate");
    // MQTT over it: CONNECT, CONNACK accepted.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(&crate::support::wire::connect(
            4,
            "named",
            true,
            0,
            &[],
            None,
        ))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let error = handshake("other.test")
        .await
        .expect_err("a name the certificate does not cover");
    assert!(
        error.to_string().contains("certificate"),
        "refused for the certificate: {error}"
    );
    server.stop().await;
}
