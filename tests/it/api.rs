//! The REST API's contract: health, OpenAPI, problem+json errors, the MQTT
//! bridge.

use serde_json::json;

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_openapi_describe_the_server() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (status, health) = server.get("/api/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mqtt"], server.mqtt.to_string());
    assert_eq!(health["clock"]["mode"], "realtime");

    let (status, doc) = server.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/health",
        "/api/v1/plugins",
        "/api/v1/plugins/{name}",
        "/api/v1/mqtt/publish",
        "/api/v1/clock/advance",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI documents {path}");
    }

    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("iotmock_telemetry_published_total"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problem_json_that_say_what_to_fix() {
    let server = TestServer::with_scenario("", |_| {}).await;

    let response = server
        .http
        .get(server.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    assert!(problem["title"].is_string() && problem["type"].is_string());

    let response = server
        .http
        .post(server.url("/api/v1/mqtt/publish"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let (status, problem) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic": "a", "payload": 1, "colour": "red"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"].as_str().unwrap().contains("colour"),
        "{problem}"
    );

    let (status, problem) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic": "a/#", "payload": 1}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"].as_str().unwrap().contains("wildcard"),
        "{problem}"
    );

    let (status, problem) = server
        .post("/api/v1/clock/advance", json!({"ms": 1000}))
        .await;
    assert_eq!(
        status, 409,
        "a realtime clock cannot be advanced: {problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--clock manual")
    );

    let response = server
        .http
        .patch(server.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_reaches_mqtt_subscribers_and_retains() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let mut live = server.subscribe("cloud/#").await;
    let (status, _) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic": "cloud/config", "payload": {"rate": 5}, "qos": 1, "retain": true}),
        )
        .await;
    assert_eq!(status, 202);
    let message = live.next().await;
    assert_eq!(message.topic, "cloud/config");
    assert_eq!(message.json(), json!({"rate": 5}));
    assert_eq!(message.qos, rumqttc::QoS::AtLeastOnce);

    // A later subscriber gets the retained message.
    let mut late = server.subscribe("cloud/+").await;
    let retained = late.next().await;
    assert!(retained.retain);
    assert_eq!(retained.payload, br#"{"rate":5}"#);
    server.stop().await;
}
