//! Mock HTTP endpoints: matchers, templates, delays, sequences, faults,
//! near misses, the request journal and verify, and the `--mock-http`
//! listener.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http_devices::{as_device, real_device};
use crate::support::TestServer;

async fn add_stub(server: &TestServer, stub: Value) -> Value {
    let (status, body) = server.post("/api/v1/stubs", stub).await;
    assert_eq!(status, 201, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_with_matchers_template_delay_and_sequence() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let password = real_device(&server, "fw-1").await;
    let put = as_device(
        &server,
        reqwest::Method::PUT,
        "/api/v1/devices/fw-1/state",
        "fw-1",
        &password,
    )
    .json(&json!({"fw": "1.4.2"}))
    .send()
    .await
    .unwrap();
    assert_eq!(put.status(), 200);

    add_stub(
        &server,
        json!({
            "id": "ota",
            "request": {
                "method": "GET",
                "path": "/ota/{device}/manifest",
                "query": {"channel": {"matches": "^(stable|beta)$"}},
                "headers": {"User-Agent": {"contains": "fw/"}}
            },
            "responses": [
                {"status": 503, "body": "busy, try call {{stub.calls}} again"},
                {"status": 200, "headers": {"x-device": "{{device.id}}"},
                 "body": {"device": "{{request.path.device}}", "current": "{{device.state.fw}}",
                          "channel": "{{request.query.channel}}", "at": "{{now}}", "call": "{{stub.calls}}"}}
            ],
            "delay_ms": 150
        }),
    )
    .await;

    let fetch = || {
        as_device(
            &server,
            reqwest::Method::GET,
            "/mock/ota/fw-1/manifest?channel=stable",
            "fw-1",
            &password,
        )
        .header("user-agent", "acme fw/1.4.2")
        .send()
    };
    let started = Instant::now();
    let first = fetch().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the delay is applied"
    );
    assert_eq!(first.status(), 503);
    assert_eq!(first.text().await.unwrap(), "busy, try call 1 again");

    let second = fetch().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-device"], "fw-1");
    assert_eq!(second.headers()["content-type"], "application/json");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["device"], "fw-1");
    assert_eq!(body["current"], "1.4.2");
    assert_eq!(body["channel"], "stable");
    assert_eq!(body["call"], 2, "a lone placeholder keeps its JSON type");
    let at = iotmock::parse_rfc3339_ms(body["at"].as_str().unwrap()).unwrap();
    assert!((crate::support::wall_ms() - at).abs() < 10_000);

    // After the last response of the sequence: the last one repeats.
    let third = fetch().await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(third.json::<Value>().await.unwrap()["call"], 3);

    let (_, listed) = server.get("/api/v1/stubs").await;
    assert_eq!(listed["items"][0]["id"], "ota");
    assert_eq!(listed["items"][0]["calls"], 3);
    let (_, page) = server
        .get("/api/v1/http/requests?stub=ota&device=fw-1")
        .await;
    let entry = &page["items"][0];
    assert_eq!(entry["path"], "/ota/fw-1/manifest", "{page}");
    assert_eq!(entry["query"]["channel"], "stable");
    assert_eq!(entry["status"], 503);
    assert_eq!(
        entry["headers"]["authorization"], "Basic (redacted; user \"fw-1\")",
        "the device's secret is not journaled"
    );

    // A request missing the header does not match.
    let plain = server
        .http
        .get(server.url("/mock/ota/fw-1/manifest?channel=stable"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_json_body_decide_between_stubs() {
    let server = TestServer::with_scenario("", |_| {}).await;
    add_stub(
        &server,
        json!({"id": "fallback", "request": {"path": "/api/report"}, "response": {"status": 202, "body": "any"}}),
    )
    .await;
    add_stub(
        &server,
        json!({"id": "alarm", "priority": 10,
               "request": {"method": "POST", "path": "/api/report", "json": {"kind": "alarm", "zones": [3]}},
               "response": {"status": 201, "body": {"echo": "{{request.body.kind}}", "zone": "{{request.body.zones.0}}"}}}),
    )
    .await;
    // Same priority as the fallback but newer: tried first; its body
    // matcher keeps it from matching here.
    add_stub(
        &server,
        json!({"id": "newer", "request": {"path": "/api/report", "body": {"contains": "never"}}, "response": {"status": 500}}),
    )
    .await;

    let post = |body: Value| {
        server
            .http
            .post(server.url("/mock/api/report"))
            .json(&body)
            .send()
    };
    let alarm = post(json!({"kind": "alarm", "zones": [1, 3], "extra": true}))
        .await
        .unwrap();
    assert_eq!(alarm.status(), 201);
    assert_eq!(
        alarm.json::<Value>().await.unwrap(),
        json!({"echo": "alarm", "zone": 1})
    );
    let other = post(json!({"kind": "heartbeat"})).await.unwrap();
    assert_eq!(other.status(), 202);
    assert_eq!(other.text().await.unwrap(), "any");

    let (_, listed) = server.get("/api/v1/stubs").await;
    let order: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["alarm", "newer", "fallback"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_reset_hang_malformed_and_drip() {
    let server = TestServer::with_scenario("", |_| {}).await;
    for (id, response) in [
        ("reset", json!({"fault": "reset"})),
        ("hang", json!({"fault": "hang"})),
        (
            "malformed",
            json!({"fault": "malformed", "body": {"version": "2.0.0", "url": "http://x/fw.bin"}}),
        ),
        (
            "drip",
            json!({"fault": "drip", "drip": {"chunk_bytes": 8, "interval_ms": 60},
                   "body": "0123456789abcdef0123456789abcdef0123456789abcdef"}),
        ),
    ] {
        add_stub(
            &server,
            json!({"id": id, "request": {"path": format!("/{id}")}, "response": response}),
        )
        .await;
    }

    let reset = server.http.get(server.url("/mock/reset")).send().await;
    let error = reset.expect_err("a reset connection gives the client an error");
    assert!(!error.is_timeout(), "{error:?}");

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let started = Instant::now();
    let hang = impatient.get(server.url("/mock/hang")).send().await;
    let error = hang.expect_err("a hanging stub never answers");
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));

    let malformed = server
        .http
        .get(server.url("/mock/malformed"))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 200);
    assert_eq!(malformed.headers()["content-type"], "application/json");
    let text = malformed.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "not parseable: {text}"
    );
    assert!(text.starts_with("{\"url\":"), "{text}");

    let started = Instant::now();
    let mut drip = server
        .http
        .get(server.url("/mock/drip"))
        .send()
        .await
        .unwrap();
    assert_eq!(drip.headers()["content-length"], "48");
    let mut chunks = Vec::new();
    while let Some(chunk) = drip.chunk().await.unwrap() {
        chunks.push((started.elapsed(), chunk));
    }
    let whole: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.to_vec()).collect();
    assert_eq!(whole, b"0123456789abcdef0123456789abcdef0123456789abcdef");
    assert!(chunks.len() >= 3, "arrived in pieces: {}", chunks.len());
    assert!(
        started.elapsed() >= Duration::from_millis(5 * 60),
        "six chunks 60 ms apart take 300 ms, took {:?}",
        started.elapsed()
    );

    // The journal records the faults.
    let (_, page) = server.get("/api/v1/http/requests?stub=reset").await;
    assert_eq!(page["items"][0]["fault"], "reset");
    assert_eq!(page["items"][0]["status"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_request_names_the_closest_stub_and_why() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let none = server.http.get(server.url("/mock/x")).send().await.unwrap();
    assert_eq!(none.status(), 404);
    let problem: Value = none.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("POST /api/v1/stubs")
    );

    add_stub(
        &server,
        json!({"id": "config", "request": {"method": "GET", "path": "/devices/{id}/config",
               "query": {"v": "2"}, "headers": {"accept": {"contains": "json"}}},
               "response": {"body": {}}}),
    )
    .await;
    add_stub(
        &server,
        json!({"id": "elsewhere", "request": {"path": "/other"}, "response": {}}),
    )
    .await;
    let response = server
        .http
        .get(server.url("/mock/devices/d1/config?v=1"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["closest"]["stub"], "config", "{problem}");
    let mismatches = problem["closest"]["mismatches"].as_array().unwrap();
    assert_eq!(mismatches.len(), 2, "{problem}");
    assert_eq!(
        mismatches[0],
        json!({"field": "query.v", "expected": "equals \"2\"", "got": "\"1\""})
    );
    assert_eq!(mismatches[1]["field"], "headers.accept");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("closest is stub \"config\"") && detail.contains("query.v"),
        "{detail}"
    );

    let (_, page) = server.get("/api/v1/http/requests?unmatched=true").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_and_fails_when_it_should() {
    let server = TestServer::with_scenario("", |_| {}).await;
    add_stub(
        &server,
        json!({"id": "ingest", "request": {"method": "POST", "path": "/ingest/{device}"}, "response": {"status": 204}}),
    )
    .await;
    let send = |device: &str, body: Value| {
        server
            .http
            .post(server.url(&format!("/mock/ingest/{device}")))
            .json(&body)
            .send()
    };
    assert_eq!(send("a", json!({"n": 1})).await.unwrap().status(), 204);
    assert_eq!(send("b", json!({"n": 2})).await.unwrap().status(), 204);

    let verify = |spec: Value| server.post("/api/v1/http/verify", spec);
    let (status, v) = verify(json!({"stub": "ingest", "at_least": 2})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(v["matched"], 2);

    let (_, v) = verify(json!({"path": "/ingest/{device}", "method": "POST", "exactly": 1})).await;
    assert_eq!(v["passed"], false, "{v}");
    assert_eq!(v["expected"], "exactly 1");

    let (_, v) =
        verify(json!({"path": "/ingest/a", "body_contains": {"n": 2}, "at_least": 1})).await;
    assert_eq!(v["passed"], false, "{v}");
    assert_eq!(v["near_misses"][0]["path"], "/ingest/a", "{v}");

    let (_, v) = verify(json!({"path": "/ingest", "body_contains": {"n": 2}, "exactly": 1})).await;
    assert_eq!(v["passed"], true, "{v}");
    let cursor = v["cursor"].as_u64().unwrap();

    // Waits for a request that comes later.
    let later = {
        let client = server.http.clone();
        let url = server.url("/mock/ingest/c");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client
                .post(url)
                .json(&json!({"n": 3}))
                .send()
                .await
                .unwrap();
        })
    };
    let (_, v) =
        verify(json!({"stub": "ingest", "since": cursor, "at_least": 1, "within_ms": 5000})).await;
    assert_eq!(v["passed"], true, "{v}");
    assert!(v["waited_ms"].as_u64().unwrap() >= 200, "{v}");
    later.await.unwrap();

    // at_most fails as soon as it is exceeded; a quiet window passes.
    let (_, v) = verify(json!({"stub": "ingest", "at_most": 0, "within_ms": 5000})).await;
    assert_eq!(v["passed"], false);
    assert!(v["waited_ms"].as_u64().unwrap() < 1000, "{v}");
    let (_, v) =
        verify(json!({"stub": "ingest", "since": v["cursor"], "at_most": 0, "within_ms": 200}))
            .await;
    assert_eq!(v["passed"], true, "{v}");

    let (status, problem) = verify(json!({"stub": "ingest", "at_least": 1, "exactly": 1})).await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("only one"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_http_port_serves_real_paths() {
    let server = TestServer::with_scenario("", |c| {
        c.mock_http = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    add_stub(
        &server,
        json!({"id": "time", "request": {"path": "/api/time"}, "response": {"body": {"path": "{{request.path}}"}}}),
    )
    .await;
    let mock = server.server().mock_http_addr().expect("a mock listener");
    assert!(server.server().ready_line().contains(&mock.to_string()));

    let real = server
        .http
        .get(format!("http://{mock}/api/time"))
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), 200);
    assert_eq!(
        real.json::<Value>().await.unwrap(),
        json!({"path": "/api/time"})
    );
    // On the API port the same stub is under /mock; the bare path is not a stub.
    let prefixed = server
        .http
        .get(server.url("/mock/api/time"))
        .send()
        .await
        .unwrap();
    assert_eq!(prefixed.status(), 200);
    let bare = server
        .http
        .get(server.url("/api/time"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 404);

    let unmatched = server
        .http
        .get(format!("http://{mock}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(unmatched.status(), 404);
    let problem: Value = unmatched.json().await.unwrap();
    assert_eq!(problem["closest"]["stub"], "time");

    let (_, page) = server.get("/api/v1/http/requests?stub=time").await;
    let listeners: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["listener"].as_str().unwrap())
        .collect();
    assert_eq!(listeners, ["mock_http", "mock"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stubs_come_from_the_scenario_and_bad_ones_are_refused() {
    let scenario = r#"
[[stubs]]
id = "health"
request = { method = "GET", path = "/health" }
response = { status = 200, body = "ok" }

[[stubs]]
request = { path = "/flaky" }
after_last = "cycle"
responses = [{ status = 503 }, { status = 200 }]
"#;
    let server = TestServer::with_scenario(scenario, |_| {}).await;
    let (_, listed) = server.get("/api/v1/stubs").await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert!(items.iter().all(|s| s["source"] == "scenario"));
    let health = server
        .http
        .get(server.url("/mock/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            server
                .http
                .get(server.url("/mock/flaky"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, [503, 200, 503, 200], "cycle starts over");

    for (stub, needle) in [
        (json!({"request": {"path": "/x"}}), "response"),
        (
            json!({"request": {"path": "x"}, "response": {}}),
            "start with /",
        ),
        (
            json!({"request": {"path": "/x", "query": {"a": {"regex": "."}}}, "response": {}}),
            "request.query.a",
        ),
        (
            json!({"request": {"path": "/x"}, "response": {"body": "{{request.nope}}"}}),
            "placeholder",
        ),
        (
            json!({"request": {"path": "/x"}, "response": {}, "delay_ms": {"normal": {"mean": 5}}}),
            "stddev",
        ),
        (
            json!({"request": {"path": "/x"}, "response": {"fault": "boom"}}),
            "unknown variant",
        ),
        (
            json!({"request": {"path": "/x"}, "response": {}, "colour": 1}),
            "unknown field",
        ),
    ] {
        let (status, problem) = server.post("/api/v1/stubs", stub.clone()).await;
        assert_eq!(status, 422, "{stub}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{stub}: {problem}"
        );
    }
    let (status, _) = server
        .post(
            "/api/v1/stubs",
            json!({"id": "health", "request": {"path": "/h"}, "response": {}}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = server.delete("/api/v1/stubs/health").await;
    assert_eq!(status, 204);
    let (status, _) = server.delete("/api/v1/stubs/health").await;
    assert_eq!(status, 404);
    let gone = server
        .http
        .get(server.url("/mock/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    let bad =
        TestServer::refused("[[stubs]]\nrequest = { path = \"nope\" }\nresponse = {}\n").await;
    assert!(bad.contains("stubs #1"), "{bad}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_the_http_routes() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (status, doc) = server.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    for (path, methods) in [
        ("/api/v1/devices/{id}/telemetry", &["post"][..]),
        ("/api/v1/devices/{id}/state", &["get", "put", "patch"]),
        ("/api/v1/devices/{id}/commands/next", &["get"]),
        ("/api/v1/devices/{id}/acks/{command_id}", &["post"]),
        ("/api/v1/stubs", &["get", "post", "delete"]),
        ("/api/v1/stubs/{id}", &["get", "delete"]),
        ("/api/v1/http/requests", &["get"]),
        ("/api/v1/http/verify", &["post"]),
        ("/mock/{path}", &["get"]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path].get(method).is_some(),
                "OpenAPI documents {method} {path}"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["device_basic"]["scheme"],
        "basic"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_journal_is_bounded_and_counts_evictions() {
    let server = TestServer::with_scenario("", |c| c.http_journal_capacity = 2).await;
    add_stub(
        &server,
        json!({"request": {"path": "/p/{n}"}, "response": {"status": 204}}),
    )
    .await;
    for n in 1..=3 {
        let r = server
            .http
            .get(server.url(&format!("/mock/p/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let (_, page) = server.get("/api/v1/http/requests").await;
    assert_eq!(page["capacity"], 2);
    assert_eq!(page["evicted"], 1);
    let paths: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/p/2", "/p/3"]);
    // The eviction shows where operators look too.
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["http_journal"]["evicted"], 1, "{health}");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("iotmock_http_journal_evicted_total 1\n"),
        "{metrics}"
    );
    let (_, v) = server
        .post("/api/v1/http/verify", json!({"path": "/p", "exactly": 3}))
        .await;
    assert_eq!(v["passed"], false);
    assert!(v["detail"].as_str().unwrap().contains("evicted"), "{v}");
    let (status, problem) = server.get("/api/v1/http/requests?limit=0").await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = server.get("/api/v1/http/requests?since=soon").await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("RFC 3339"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_stubs_on_mock_http_from_its_flags() {
    use crate::support::process::{read_ready_line, serve_ephemeral};
    use std::process::Stdio;
    let mut child = serve_ephemeral()
        .args([
            "--scenario",
            "none",
            "--mock-http",
            "127.0.0.1:0",
            "--http-journal-capacity",
            "5",
            "--http-device-timeout",
            "2m",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iotmock");
    let line = read_ready_line(&mut child);
    let ready: Value = serde_json::from_str(&line).expect("ready line is JSON");
    let http = ready["http"].as_str().unwrap().to_string();
    let mock = ready["mock_http"]
        .as_str()
        .expect("mock_http in the ready line");
    let client = reqwest::Client::new();
    let created = client
        .post(format!("http://{http}/api/v1/stubs"))
        .json(&json!({"request": {"path": "/fw/latest"}, "response": {"body": "2.0.0"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let answer = client
        .get(format!("http://{mock}/fw/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "2.0.0");
    let page: Value = client
        .get(format!("http://{http}/api/v1/http/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["capacity"], 5);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_stubs_survive_a_restart_with_data_dir_and_deleted_ones_stay_deleted() {
    let scenario = r#"
[[stubs]]
id = "time"
request = { path = "/time" }
response = { status = 200, body = "scenario" }
"#;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let boot = |data: std::path::PathBuf| {
        TestServer::with_scenario(scenario, move |c| c.data_dir = Some(data))
    };
    let body_of = |server: &TestServer, path: &str| {
        let request = server.http.get(server.url(path));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let server = boot(data.clone()).await;
    // Two stubs of equal priority on one path: the newer answers.
    for (id, body) in [("older", "older"), ("newer", "newer")] {
        add_stub(
            &server,
            json!({"id": id, "request": {"path": "/cfg"}, "response": {"body": body}}),
        )
        .await;
    }
    add_stub(
        &server,
        json!({"id": "gone", "request": {"path": "/gone"}, "response": {"body": "x"}}),
    )
    .await;
    // An API stub replacing the scenario's, under its id.
    let (status, _) = server.delete("/api/v1/stubs/time").await;
    assert_eq!(status, 204);
    add_stub(
        &server,
        json!({"id": "time", "request": {"path": "/time"}, "response": {"body": "api"}}),
    )
    .await;
    let (status, _) = server.delete("/api/v1/stubs/gone").await;
    assert_eq!(status, 204);
    server.stop().await;

    let server = boot(data.clone()).await;
    let (_, listed) = server.get("/api/v1/stubs").await;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["time", "newer", "older"], "{listed}");
    assert_eq!(body_of(&server, "/mock/cfg").await, (200, "newer".into()));
    assert_eq!(body_of(&server, "/mock/time").await, (200, "api".into()));
    assert_eq!(body_of(&server, "/mock/gone").await.0, 404);
    // A stub made after the restart is newer than the restored ones.
    add_stub(
        &server,
        json!({"id": "newest", "request": {"path": "/cfg"}, "response": {"body": "newest"}}),
    )
    .await;
    assert_eq!(body_of(&server, "/mock/cfg").await, (200, "newest".into()));
    // Clearing removes the stored ones too; the scenario's come back.
    let (status, cleared) = server.delete("/api/v1/stubs").await;
    assert_eq!((status, cleared["deleted"].as_u64()), (200, Some(4)));
    server.stop().await;

    let server = boot(data).await;
    let (_, listed) = server.get("/api/v1/stubs").await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["source"], "scenario");
    assert_eq!(
        body_of(&server, "/mock/time").await,
        (200, "scenario".into())
    );
    server.stop().await;
}
