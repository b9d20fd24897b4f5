//! The test harness: start a server in-process on ephemeral ports, talk to
//! it over real HTTP and real MQTT.

#![allow(dead_code)]

pub mod process;
pub mod raw_http;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iotmock::{Config, ScenarioChoice, Server};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The MQTT `admin` user's password of test servers under `--mqtt-auth
/// devices`.
pub const ADMIN_PASSWORD: &str = "admin-secret";

/// `--mqtt-auth devices`, with [`ADMIN_PASSWORD`].
pub fn device_auth() -> iotmock::MqttAuth {
    iotmock::MqttAuth::Devices {
        admin_password: ADMIN_PASSWORD.into(),
    }
}

pub struct TestServer {
    server: Option<Server>,
    pub http: reqwest::Client,
    pub base: String,
    pub mqtt: SocketAddr,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.http_addr());
        let mqtt = server.mqtt_addr();
        Self {
            server: Some(server),
            http: reqwest::Client::new(),
            base,
            mqtt,
        }
    }

    /// A server running the given scenario text.
    pub async fn with_scenario(scenario: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            scenario: ScenarioChoice::Inline(scenario.to_string()),
            ..Config::ephemeral()
        };
        // Test machines are shared and noisy: a first plugin call can pass
        // the 250 ms default while other tests compile components. Tests of
        // the deadline itself set their own.
        config.plugin_limits.call_timeout = Duration::from_secs(5);
        tweak(&mut config);
        Self::start(config).await
    }

    /// Why a server with the given scenario text does not start.
    pub async fn refused(scenario: &str) -> String {
        let config = Config {
            scenario: ScenarioChoice::Inline(scenario.to_string()),
            ..Config::ephemeral()
        };
        match Server::start(config).await {
            Ok(server) => {
                server.shutdown().await;
                panic!("the scenario was accepted: {scenario}")
            }
            Err(error) => error.to_string(),
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        decode(response).await
    }

    /// The body of a GET as text (exports, metrics), after checking 200.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("a text body")
    }

    /// The value of the Prometheus sample `name` at `GET /metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        metric(&self.get_text("/metrics").await, name)
    }

    /// Waits until the broker has let go of client `id`'s connection (it
    /// is no longer listed): the broker sees a closed socket a moment
    /// after the client closes it.
    pub async fn let_go(&self, id: &str) {
        tokio::time::timeout(WAIT, async {
            loop {
                let (_, clients) = self.get("/api/v1/mqtt/clients").await;
                if !clients
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["client_id"] == id)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("client {id} still connected"));
    }

    /// Advances the manual clock by `ms` (`POST /clock/advance`).
    pub async fn advance(&self, ms: i64) {
        let (status, body) = self
            .post("/api/v1/clock/advance", serde_json::json!({ "ms": ms }))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        decode(response).await
    }

    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .put(self.url(path))
            .header("content-type", "application/wasm")
            .body(body)
            .send()
            .await
            .expect("PUT");
        decode(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        decode(response).await
    }

    /// The plugin list entry named `name`.
    pub async fn plugin(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/plugins/{name}")).await;
        assert_eq!(status, 200, "plugin {name}: {body}");
        body
    }

    /// Polls the plugin list until `check` holds for plugin `name`.
    pub async fn wait_plugin(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(&format!("/api/v1/plugins/{name}")).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "plugin {name} never reached the expected state: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn subscribe(&self, filter: &str) -> Subscriber {
        Subscriber::connect(self.mqtt, filter).await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// The folder where the build put every component of `plugins/`: the
/// shipped plugins and the test plugins (`test_*.wasm`).
pub const PLUGINS_DIR: &str = env!("IOTMOCK_PLUGINS_DIR");

/// A test plugin component built with the server (`plugins/testing/`).
pub fn test_plugin(file: &str) -> PathBuf {
    let path = PathBuf::from(PLUGINS_DIR).join(file);
    assert!(
        path.exists(),
        "test plugin {} was not built",
        path.display()
    );
    path
}

pub fn test_plugin_bytes(file: &str) -> Vec<u8> {
    std::fs::read(test_plugin(file)).expect("read test plugin")
}

/// The component of the shipped plugin `name` (`temperature`,
/// `codec-template`), as the server embeds it.
pub fn shipped_plugin_bytes(name: &str) -> Vec<u8> {
    test_plugin_bytes(&format!("{}.wasm", name.replace('-', "_")))
}

/// Wall-clock time, ms since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// One message as an MQTT client received it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
}

/// A real MQTT client (rumqttc) subscribed to one filter.
pub struct Subscriber {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Subscriber {
    pub async fn connect(addr: SocketAddr, filter: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
        let mut subacked_tx = Some(subacked_tx);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let message = Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            qos: p.qos,
                            retain: p.retain,
                        };
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subacked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(WAIT, subacked_rx)
            .await
            .expect("SUBACK in time")
            .expect("SUBACK");
        Self { client, rx }
    }

    /// The next message, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an MQTT message in time")
            .expect("subscriber still connected")
    }

    /// Skips messages until one satisfies `check`.
    pub async fn next_where(&mut self, check: impl Fn(&Message) -> bool) -> Message {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.rx.recv())
                .await
                .expect("a matching MQTT message in time")
                .expect("subscriber still connected");
            if check(&message) {
                return message;
            }
        }
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }
}

/// Makes sure the command `tool` exists, installing Debian's `package`
/// when it does not (the tests run as root on a fresh machine), so that
/// `cargo test --release` needs no set-up of its own.
pub fn ensure_tool(tool: &str, package: &str) {
    let present = || {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return;
    }
    let installed = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && present(),
        "{tool} is missing and could not be installed: run `apt-get install {package}`"
    );
}

/// The value of the Prometheus sample `name` in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}
