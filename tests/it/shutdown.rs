//! `Server::shutdown` leaves the data directory free: every write that
//! was answered with a 2xx is stored, every write that came too late gets
//! an error (never a hang), and when it returns no database file is open
//! any more, so a new server may start on the same `--data-dir` at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::support::{Subscriber, TestServer, device_auth};

/// Files under `dir` that this process holds open.
fn open_files_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    let mut held: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect();
    held.sort();
    held
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every device id the server holds.
async fn device_ids(server: &TestServer) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/devices?limit=1000&cursor={c}"),
            None => "/api/v1/devices?limit=1000".to_string(),
        };
        let (status, page) = server.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            ids.insert(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
}

/// Posts devices `{prefix}-0`, `{prefix}-1`, ... until one is not
/// accepted; returns the ids answered 201 and how the first other answer
/// looked. Each request must be answered (or fail) well within the
/// timeout: a hang fails the test.
async fn post_until_refused(
    http: reqwest::Client,
    base: String,
    prefix: String,
) -> (Vec<String>, String) {
    let mut acked = Vec::new();
    for n in 0.. {
        let id = format!("{prefix}-{n}");
        let sent = http
            .post(format!("{base}/api/v1/devices"))
            .json(&json!({"id": id, "simulated": false}))
            .send();
        let answer = tokio::time::timeout(Duration::from_secs(30), sent)
            .await
            .unwrap_or_else(|_| panic!("POST {id} during shutdown hung"));
        match answer {
            Ok(response) if response.status().as_u16() == 201 => acked.push(id),
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                return (acked, format!("{status}: {body}"));
            }
            Err(error) => return (acked, error.to_string()),
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_starts_on_the_data_dir_at_once_with_every_answered_write() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let mut devices = BTreeSet::new();
    let mut stubs = BTreeSet::new();
    let mut commands = Vec::new();
    for round in 0..4 {
        let start_dir = dir.clone();
        let server = TestServer::with_scenario("", |c| c.data_dir = Some(start_dir)).await;
        // Everything answered by the servers before is back.
        let found = device_ids(&server).await;
        assert!(
            devices.is_subset(&found),
            "round {round}: lost {:?}",
            devices.difference(&found).collect::<Vec<_>>()
        );
        let (_, listed) = server.get("/api/v1/stubs").await;
        let found: BTreeSet<String> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(found, stubs, "round {round}: {listed}");
        for (command, device) in &commands {
            let (status, view) = server.get(&format!("/api/v1/commands/{command}")).await;
            assert_eq!((status, &view["device"]), (200, &json!(device)), "{view}");
        }
        if round > 0 {
            // Retained by the broker of every round before.
            let mut kept = Subscriber::connect(server.mqtt, "kept/#").await;
            let mut topics = BTreeSet::new();
            for _ in 0..round {
                let message = kept.next().await;
                assert!(message.retain, "{}", message.topic);
                topics.insert(message.topic);
            }
            let expected: BTreeSet<String> = (0..round).map(|r| format!("kept/{r}")).collect();
            assert_eq!(topics, expected);
        }

        // One change in each of the other stores: stubs, commands, broker.
        let stub = format!("s{round}");
        let (status, body) = server
            .post(
                "/api/v1/stubs",
                json!({"id": stub, "request": {"method": "GET", "path": format!("/{stub}")},
                       "response": {"status": 200}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        stubs.insert(stub);
        let device = format!("cmd-{round}");
        let (status, body) = server
            .post("/api/v1/devices", json!({"id": device, "simulated": false}))
            .await;
        assert_eq!(status, 201, "{body}");
        devices.insert(device.clone());
        let (status, body) = server
            .post(
                &format!("/api/v1/devices/{device}/commands"),
                json!({"name": "reboot", "ttl_ms": 3_600_000}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        commands.push((body["id"].as_str().unwrap().to_string(), device));
        let (status, body) = server
            .post(
                "/api/v1/mqtt/publish",
                json!({"topic": format!("kept/{round}"), "payload": "x", "qos": 1, "retain": true}),
            )
            .await;
        assert_eq!(
            (status, &body["outcome"]),
            (202, &json!("routed")),
            "{body}"
        );

        // Writers busy when the shutdown comes.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                tokio::spawn(post_until_refused(
                    server.http.clone(),
                    server.base.clone(),
                    format!("r{round}-w{w}"),
                ))
            })
            .collect();
        let before = devices.len();
        while device_ids(&server).await.len() < before + 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.stop().await;

        // Shut down: no file under the data dir is open, and SQLite's last
        // close folded each WAL back into its database.
        assert_eq!(
            open_files_under(&dir),
            Vec::<PathBuf>::new(),
            "round {round}"
        );
        let left: Vec<String> = files_under(&dir)
            .into_iter()
            .filter(|f| f.ends_with("-wal") || f.ends_with("-shm"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "round {round}");

        for writer in writers {
            let (acked, refused) = tokio::time::timeout(Duration::from_secs(60), writer)
                .await
                .expect("every write in flight at shutdown was answered or refused")
                .unwrap();
            assert!(!refused.is_empty());
            devices.extend(acked);
        }
    }
    assert!(devices.len() > 80, "{} writes answered", devices.len());
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir.clone())).await;
    let found = device_ids(&server).await;
    assert!(
        devices.is_subset(&found),
        "lost {:?}",
        devices.difference(&found).collect::<Vec<_>>()
    );
    server.stop().await;
    assert_eq!(open_files_under(&dir), Vec::<PathBuf>::new());
}

/// Threads of this process whose name starts with `prefix`: `sqlite
/// <file>` own a database; `iotmock-` are the server's own (plugin
/// workers, the plugins' epoch ticker, the MQTT connections).
fn threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Waits (briefly) for the count to settle: a thread's entry in /proc can
/// outlive its join by a moment, and a plugin worker ends once its queue
/// closes.
async fn threads_become(prefix: &str, n: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = threads(prefix);
        if now == n || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Set in the process that runs [`the_server_threads_end_with_the_shutdown`]
/// alone.
const ALONE: &str = "IOTMOCK_TEST_ALONE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_threads_end_with_the_shutdown() {
    if std::env::var_os(ALONE).is_none() {
        // Other tests of this binary start servers in parallel, so the
        // process's threads are counted in a process of its own that runs
        // only this test.
        let name = "shutdown::the_server_threads_end_with_the_shutdown";
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads", "1", "--nocapture"])
                .env(ALONE, "1")
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    assert_eq!((threads("sqlite "), threads("iotmock-")), (0, 0));
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(dir)).await;
    // The fleet, commands, edge nodes, stubs and the broker.
    assert_eq!(threads("sqlite "), 5);
    assert!(threads("iotmock-") > 0, "plugin workers run");
    let (status, body) = server
        .post("/api/v1/devices", json!({"id": "t-1", "simulated": false}))
        .await;
    assert_eq!(status, 201, "{body}");
    server.stop().await;
    assert_eq!(threads_become("sqlite ", 0).await, 0);
    assert_eq!(
        threads_become("iotmock-", 0).await,
        0,
        "server threads left"
    );

    // Without --data-dir the fleet lives in an in-memory database, on a
    // thread that the shutdown ends as well. The broker's device access
    // and the dialect decoders hold the fleet that holds them: nothing
    // of it outlives the server all the same.
    let server = TestServer::with_scenario("", |c| {
        c.mqtt_auth = device_auth();
    })
    .await;
    let (status, body) = server
        .post(
            "/api/v1/devices",
            json!({"id": "tb-1", "simulated": false, "dialect": "thingsboard"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(threads("sqlite "), 1);
    server.stop().await;
    assert_eq!(threads_become("sqlite ", 0).await, 0);
    assert_eq!(
        threads_become("iotmock-", 0).await,
        0,
        "server threads left"
    );
}

/// A fleet that streams, for the test below.
const STREAMING: &str = r#"
[[fleet]]
id_pattern = "s-{n}"
count = 3
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 50
"#;

/// Nothing of a stopped server goes on running in the program that
/// embeds it: every task it started (the telemetry scheduler, the
/// followers of the broker, the timers of flaky and HTTP devices, the
/// dialect decoders, the command engine, edge nodes, the plugin watcher)
/// has ended when `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_of_a_stopped_server_runs_on() {
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    let plugins = tempfile::tempdir().unwrap();
    let dir = plugins.path().to_path_buf();
    let server = TestServer::with_scenario(STREAMING, |c| {
        c.plugins_dir = Some(dir);
        c.mqtt_auth = device_auth();
    })
    .await;
    while server
        .get_text("/api/v1/telemetry?limit=1")
        .await
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (path, body) in [
        (
            "/api/v1/devices",
            json!({"id": "tb-1", "simulated": false, "dialect": "thingsboard"}),
        ),
        (
            "/api/v1/devices/s-1/connectivity",
            json!({"state": "flaky", "mean_online_ms": 100, "mean_offline_ms": 100}),
        ),
        ("/api/v1/devices/s-2/commands", json!({"name": "reboot"})),
        (
            "/api/v1/edge-nodes",
            json!({"id": "gw-1", "devices": {"ids": ["s-3"]},
                   "rules": [{"plugin": "edge-aggregate", "config": {"forward": true}}]}),
        ),
    ] {
        let (status, body) = server.post(path, body).await;
        assert!((200..=202).contains(&status), "{path}: {status} {body}");
    }
    let (_, device) = server
        .post(
            "/api/v1/devices",
            json!({"id": "http-1", "simulated": false}),
        )
        .await;
    let password = device["credentials"]["password"].as_str().unwrap();
    let heard = server
        .http
        .post(server.url("/api/v1/devices/http-1/telemetry"))
        .basic_auth("http-1", Some(password))
        .json(&json!({"sensor": "temperature", "value": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(heard.status(), 200);
    assert!(
        runtime.num_alive_tasks() > before + 10,
        "the server runs its tasks here"
    );

    server.stop().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while runtime.num_alive_tasks() > before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runtime.num_alive_tasks(), before, "tasks left running");
}
