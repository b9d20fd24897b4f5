//! A program that embeds the server moves simulated time through
//! `Server::simulation()`, and gets what `POST /clock/advance` gives: the
//! same readings in the same order, and the same refusals.

use iotmock::ClockMode;
use serde_json::{Value, json};

use crate::support::TestServer;

const SCENARIO: &str = r#"
[[fleet]]
id_pattern = "e-{n}"
count = 2
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#;

async fn seeded() -> TestServer {
    TestServer::with_scenario(SCENARIO, |c| {
        c.clock = ClockMode::Manual;
        c.seed = Some(11);
    })
    .await
}

/// Every reading the export holds, in order.
async fn readings(server: &TestServer) -> Vec<Value> {
    server
        .get_text("/api/v1/telemetry?limit=10000")
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_advances_time_as_the_api_does() {
    let by_api = seeded().await;
    let by_library = seeded().await;
    let simulation = by_library.server().simulation();
    assert_eq!(simulation.mode(), ClockMode::Manual);
    let start = simulation.now_ms();
    let (_, clock) = by_library.get("/api/v1/clock").await;
    assert_eq!(clock["now_ms"], json!(start), "{clock}");

    by_api.advance(5_000).await;
    let now = simulation
        .advance(5_000)
        .await
        .expect("a manual clock moves");
    assert_eq!(now, start + 5_000);
    assert_eq!(simulation.now_ms(), now);
    let expected = readings(&by_api).await;
    assert_eq!(expected.len(), 10, "2 devices x 5 s at 1 Hz");
    assert_eq!(readings(&by_library).await, expected);

    // The refusals the API turns into 422s.
    let error = simulation.advance(0).await.unwrap_err();
    assert!(error.to_string().contains("positive number"), "{error}");
    by_api.stop().await;
    by_library.stop().await;

    let realtime = TestServer::with_scenario("", |_| {}).await;
    let simulation = realtime.server().simulation();
    assert_eq!(simulation.mode(), ClockMode::Realtime);
    let error = simulation.advance(1_000).await.unwrap_err();
    assert!(
        error.to_string().contains("--clock manual"),
        "says how to get a clock that moves: {error}"
    );
    realtime.stop().await;
}
