//! What a hostile or careless client can do to the HTTP side, and what it
//! gets: slow and idle connections are closed, a connection cap answers
//! 503, secrets stay out of the journal, the admin API can require a token,
//! an advance is bounded, and every error is problem+json.

use std::time::{Duration, Instant};

use iotmock::{AdminToken, HttpLimits};
use iotmock::{ClockMode, Config, Server, StartError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{EPHEMERAL, read_ready_line};
use crate::support::raw_http::{read_until_closed, still_open};
use crate::support::{TestServer, WAIT, test_plugin_bytes};

/// A server on `base` whose HTTP listeners have these limits (times in ms).
async fn start_limited(
    header_ms: u64,
    body_ms: u64,
    idle_ms: u64,
    max: usize,
    base: Config,
) -> TestServer {
    TestServer::start(Config {
        http_limits: HttpLimits {
            header_timeout: Duration::from_millis(header_ms),
            body_timeout: Duration::from_millis(body_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections: max,
        },
        ..base
    })
    .await
}

/// Asks for health on a new connection every 20 ms until the answer has
/// `status`; fails with `never` after `WAIT`.
async fn health_until(server: &TestServer, status: u16, never: &str) -> reqwest::Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = reqwest::Client::new()
            .get(server.url("/api/v1/health"))
            .send()
            .await
            .unwrap();
        if response.status() == status {
            return response;
        }
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout() {
    let server = start_limited(500, 10_000, 60_000, 1024, Config::ephemeral()).await;
    let addr = server.server().http_addr();
    let mut partial = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Headers that never end.
        stream
            .write_all(format!("GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-{i}: ").as_bytes())
            .await
            .unwrap();
        partial.push(stream);
    }
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    for stream in partial.iter_mut().chain(silent.iter_mut()) {
        let (answer, _) = read_until_closed(stream).await;
        assert!(
            !answer.contains("200 OK"),
            "an unfinished request got an answer: {answer}"
        );
    }
    let (status, health) = server.get("/api/v1/health").await;
    assert_eq!(status, 200);
    assert!(
        health["http_connections"]["timed_out"].as_u64().unwrap() >= 25,
        "{health}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_at_the_idle_timeout() {
    let server = start_limited(300, 10_000, 1_500, 1024, Config::ephemeral()).await;
    let mut stream = TcpStream::connect(server.server().http_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /api/v1/clock HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive past the header timeout: waiting for a next request is
    // not sending headers slowly.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        still_open(&mut stream).await,
        "closed before the idle timeout"
    );
    read_until_closed(&mut stream).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_problem_json() {
    let server = start_limited(
        10_000,
        500,
        60_000,
        1024,
        Config {
            clock: ClockMode::Manual,
            ..Config::ephemeral()
        },
    )
    .await;
    let mut stream = TcpStream::connect(server.server().http_addr())
        .await
        .unwrap();
    stream
        .write_all(b"POST /api/v1/clock/advance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ms\"")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("--http-body-timeout"), "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_until_one_closes() {
    let server = start_limited(30_000, 30_000, 60_000, 4, Config::ephemeral()).await;
    let addr = server.server().http_addr();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The four are accepted before the next one is refused.
    let refused = health_until(&server, 503, "never refused over the cap").await;
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--http-max-connections"),
        "{problem}"
    );
    drop(held.pop());
    let freed = health_until(&server, 200, "a slot never came free").await;
    let health: Value = freed.json().await.unwrap();
    assert!(health["http_connections"]["refused"].as_u64().unwrap() >= 1);
    assert_eq!(health["http_connections"]["max"], 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_http_listener_reaps_slow_clients_too() {
    let server = start_limited(
        400,
        10_000,
        60_000,
        1024,
        Config {
            mock_http: Some(([127, 0, 0, 1], 0).into()),
            ..Config::ephemeral()
        },
    )
    .await;
    let addr = server.server().mock_http_addr().unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /ota HTTP/1.1\r\nHo").await.unwrap();
    read_until_closed(&mut stream).await;
    let (_, health) = server.get("/api/v1/health").await;
    assert!(
        health["mock_http_connections"]["timed_out"]
            .as_u64()
            .unwrap()
            >= 1,
        "{health}"
    );
    server.stop().await;
}

const BASIC_PW: &str = "Basic ";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "{BASIC_PW}{}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_basic_credential_reaches_the_journal_whatever_the_user_name() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (status, device) = server
        .post("/api/v1/devices", json!({"id": "fw-9", "simulated": false}))
        .await;
    assert_eq!(status, 201, "{device}");
    let password = device["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = server
        .post(
            "/api/v1/stubs",
            json!({"request": {"method": "GET", "path": "/ota"}, "response": {"status": 200}}),
        )
        .await;
    assert_eq!(status, 201);
    for auth in [
        basic("fw-9", &password),
        basic("someone-else", &password),
        basic("fw-9", "a-wrong-password"),
        "Bearer keep-this-token".to_string(),
    ] {
        let response = server
            .http
            .get(server.url("/mock/ota"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let (_, page) = server.get("/api/v1/http/requests?path=/ota").await;
    let text = page.to_string();
    for secret in [password.as_str(), "a-wrong-password"] {
        assert!(!text.contains(secret), "a password was journaled: {text}");
    }
    let encoded = basic("someone-else", &password);
    assert!(!text.contains(&encoded[BASIC_PW.len()..]));
    let headers: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["headers"]["authorization"].as_str().unwrap())
        .collect();
    assert_eq!(
        headers,
        [
            "Basic (redacted; user \"fw-9\")",
            "Basic (redacted; user \"someone-else\")",
            "Basic (redacted; user \"fw-9\")",
            "Bearer keep-this-token",
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_guards_the_api_but_not_health_or_the_device_api() {
    let server = TestServer::start(Config {
        admin_token: Some(AdminToken::new("admin-s3cret").unwrap()),
        ..Config::ephemeral()
    })
    .await;
    let client = &server.http;
    let without = client
        .get(server.url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    assert_eq!(
        without.headers()["content-type"],
        "application/problem+json"
    );
    assert!(
        without.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let problem: Value = without.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("Bearer"));
    let wrong = client
        .get(server.url("/api/v1/openapi.json"))
        .bearer_auth("admin-s3cre")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let created = client
        .post(server.url("/api/v1/devices"))
        .bearer_auth("admin-s3cret")
        .json(&json!({"id": "h-1", "simulated": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let device: Value = created.json().await.unwrap();
    let password = device["credentials"]["password"].as_str().unwrap();

    let health = client
        .get(server.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The device API takes the device's own credentials, not the token.
    let reading = client
        .post(server.url("/api/v1/devices/h-1/telemetry"))
        .basic_auth("h-1", Some(password))
        .json(&json!({"sensor": "t", "value": 1.5}))
        .send()
        .await
        .unwrap();
    assert!(reading.status().is_success(), "{}", reading.status());
    let next = client
        .get(server.url("/api/v1/devices/h-1/commands/next"))
        .basic_auth("h-1", Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_address_without_a_token_refuses_to_start() {
    let open = Config {
        http: ([0, 0, 0, 0], 0).into(),
        ..Config::ephemeral()
    };
    let error = match Server::start(open.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("started on 0.0.0.0 without a token"),
    };
    assert!(matches!(error, StartError::InsecureAdmin { .. }));
    let message = error.to_string();
    for hint in [
        "--admin-token",
        "IOTMOCK_ADMIN_TOKEN",
        "--insecure-admin",
        "127.0.0.1",
    ] {
        assert!(message.contains(hint), "{message}");
    }
    let server = Server::start(Config {
        admin_token: Some(AdminToken::new("t").unwrap()),
        ..open.clone()
    })
    .await
    .expect("a token makes it fine");
    server.shutdown().await;
    let server = Server::start(Config {
        insecure_admin: true,
        ..open
    })
    .await
    .expect("--insecure-admin says it is fine");
    server.shutdown().await;
}

const BUSY_FLEET: &str = r#"
[[fleet]]
id_pattern = "busy-{n}"
count = 50
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advance_refuses_spans_over_the_maximum_and_stops_when_the_client_leaves() {
    let server = TestServer::with_scenario(BUSY_FLEET, |c| c.clock = ClockMode::Manual).await;
    let (_, clock) = server.get("/api/v1/clock").await;
    let start = clock["now_ms"].as_i64().unwrap();
    assert_eq!(clock["max_advance_ms"], 86_400_000);
    for ms in [i64::MAX, 86_400_001] {
        let response = server
            .http
            .post(server.url("/api/v1/clock/advance"))
            .json(&json!({ "ms": ms }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("86400000"),
            "{problem}"
        );
    }
    let (_, clock) = server.get("/api/v1/clock").await;
    assert_eq!(clock["now_ms"].as_i64().unwrap(), start, "nothing moved");

    // A day of 500 readings a second takes long; the client gives up.
    let gave_up = server
        .http
        .post(server.url("/api/v1/clock/advance"))
        .timeout(Duration::from_millis(1_000))
        .json(&json!({ "ms": 86_400_000 }))
        .send()
        .await;
    assert!(gave_up.is_err(), "a day of this fleet answered in a second");
    // The work stops: the clock settles short of the target.
    let mut last = -1;
    let deadline = Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, clock) = server.get("/api/v1/clock").await;
        let now = clock["now_ms"].as_i64().unwrap();
        if now == last {
            break;
        }
        last = now;
        assert!(Instant::now() < deadline, "the advance kept going");
    }
    assert!(
        last > start,
        "the advance made progress before the client left"
    );
    assert!(last < start + 86_400_000, "the advance ran to its end");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_bad_queries_422_as_problem_json() {
    let server = TestServer::start(Config::ephemeral()).await;
    let big = "x".repeat(3 << 20);
    for path in ["/api/v1/stubs", "/api/v1/mqtt/publish", "/api/v1/devices"] {
        let response = server
            .http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(format!("{{\"id\": \"{big}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("2 MiB"),
            "{problem}"
        );
    }
    for query in [
        "/api/v1/commands?limit=many",
        "/api/v1/commands?status=exploded",
        "/api/v1/commands/c-1?wait_ms=-1",
        "/api/v1/devices?limit=x",
        "/api/v1/mqtt/messages?since=yesterday",
        "/api/v1/http/requests?limit=-3",
        "/api/v1/telemetry?limit=x",
    ] {
        let response = server.http.get(server.url(query)).send().await.unwrap();
        assert_eq!(response.status(), 422, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("query string"),
            "{query}: {problem}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_of_a_new_plugin_is_not_listed() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (status, problem) = server
        .put_bytes("/api/v1/plugins/brand-new", b"\0asm not really".to_vec())
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = server.get("/api/v1/plugins/brand-new").await;
    assert_eq!(status, 404);
    let (_, list) = server.get("/api/v1/plugins").await;
    assert!(
        !list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "brand-new"),
        "{list}"
    );
    // A plugin that serves keeps serving, and shows the refusal.
    let (status, _) = server
        .put_bytes(
            "/api/v1/plugins/serving",
            test_plugin_bytes("test_fixed_one.wasm"),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put_bytes("/api/v1/plugins/serving", b"garbage".to_vec())
        .await;
    assert_eq!(status, 422);
    let plugin = server.plugin("serving").await;
    assert_eq!(plugin["status"], "ok", "{plugin}");
    assert!(plugin["last_error"].is_string(), "{plugin}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_declares_what_health_sends_and_problem_json_errors() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (_, doc) = server.get("/api/v1/openapi.json").await;
    let (_, health) = server.get("/api/v1/health").await;
    let schemas = &doc["components"]["schemas"];
    let resolve = |schema: &Value| -> Value {
        let mut schema = schema.clone();
        // `$ref`, possibly wrapped in `oneOf` with null for options.
        if let Some(one_of) = schema["oneOf"].as_array() {
            schema = one_of
                .iter()
                .find(|s| s.get("$ref").is_some())
                .cloned()
                .unwrap_or(schema.clone());
        }
        match schema["$ref"].as_str() {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => schema,
        }
    };
    let declared = &schemas["Health"]["properties"];
    for (key, value) in health.as_object().unwrap() {
        let schema = resolve(&declared[key]);
        assert!(!declared[key].is_null(), "/health sends {key:?} undeclared");
        if let (Some(fields), Some(props)) = (value.as_object(), schema["properties"].as_object()) {
            for field in fields.keys() {
                assert!(
                    props.contains_key(field),
                    "/health sends {key}.{field}, the document declares {:?}",
                    props.keys().collect::<Vec<_>>()
                );
            }
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}: {response}"
                    );
                }
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
            let admin = path.starts_with("/api/v1/")
                && path != "/api/v1/health"
                && operation["tags"][0] != "device-api";
            assert_eq!(
                responses.contains_key("401"),
                admin || operation["tags"][0] == "device-api",
                "{method} {path}"
            );
        }
    }
    server.stop().await;
}

/// Starts the binary with `args` (under `prefix`, e.g. `prlimit`), returns
/// it and the HTTP address of its ready line.
fn spawn_binary(
    prefix: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String, std::thread::JoinHandle<String>) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let bin = crate::support::process::BIN;
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .arg("serve")
        .args(EPHEMERAL)
        .args(["--scenario", "none"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iotmock");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let line = read_ready_line(&mut child);
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("no ready line: {line:?}"));
    let http = ready["http"].as_str().unwrap().to_string();
    (child, http, log)
}

/// Stops it as a user would and returns what it logged.
fn stop_binary(child: std::process::Child, log: std::thread::JoinHandle<String>) -> String {
    crate::support::process::stop(child);
    log.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_a_file_or_the_environment_not_argv() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let (child, http, log) =
        spawn_binary(&[], &["--admin-token-file", file.to_str().unwrap()], &[]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("from-a-file"));
    let client = reqwest::Client::new();
    let url = format!("http://{http}/api/v1/devices");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let ok = client
        .get(&url)
        .bearer_auth("from-a-file")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    stop_binary(child, log);

    let (child, http, log) = spawn_binary(&[], &[], &[("IOTMOCK_ADMIN_TOKEN", "from-the-env")]);
    let url = format!("http://{http}/api/v1/devices");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let ok = client
        .get(&url)
        .bearer_auth("from-the-env")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let log = stop_binary(child, log);
    assert!(!log.contains("from-the-env"), "the token was logged");
}

#[test]
fn the_binary_refuses_a_network_address_without_a_token() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iotmock"))
        .args([
            "serve",
            "--http",
            "0.0.0.0:0",
            "--mqtt",
            "127.0.0.1:0",
            "--scenario",
            "none",
        ])
        .env_remove("IOTMOCK_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no ready line");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-token"), "{stderr}");
    assert!(stderr.contains("--insecure-admin"), "{stderr}");
}

/// CPU time (user + system) the process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_backs_off_and_recovers() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let (child, http, log) = spawn_binary(
        &["prlimit", "--nofile=64:64", "--"],
        &["--http-header-timeout", "60s"],
        &[],
    );
    let pid = child.id();
    let addr: std::net::SocketAddr = http.parse().unwrap();
    // More connections than descriptors: the kernel's backlog holds the
    // ones the server cannot accept.
    let mut clients = Vec::new();
    for _ in 0..100 {
        match TcpStream::connect(addr).await {
            Ok(stream) => clients.push(stream),
            Err(_) => break,
        }
    }
    assert!(clients.len() >= 70, "only {} connected", clients.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // Spinning on accept would take a whole core: ~200 ticks in 2 s.
    assert!(used < 100, "the server used {used} ticks of CPU in 2 s");
    drop(clients);
    // Once the clients leave, it answers again.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = reqwest::Client::new()
            .get(format!("http://{http}/api/v1/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(response) = answer
            && response.status() == 200
        {
            let health: Value = response.json().await.unwrap();
            assert!(
                health["http_connections"]["accept_errors"]
                    .as_u64()
                    .unwrap()
                    > 0,
                "{health}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = stop_binary(child, log);
    let warnings = log
        .lines()
        .filter(|l| l.contains("accepting an HTTP connection failed"))
        .count();
    assert!(warnings >= 1, "the failure was not logged:\n{log}");
    // One line per 10 s interval, not one per failed accept.
    assert!(warnings <= 2, "{warnings} warnings:\n{log}");
}
