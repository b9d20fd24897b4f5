//! The broker with a Rust client (rumqttc, 3.1.1 and 5) and raw sockets:
//! QoS, retained messages, wills, sessions, auth, journal, verify, clients,
//! outages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotmock::Config;
use iotmock::{AuthDecision, Authorizer, ClientEvent};
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::{TestServer, WAIT};

/// A rumqttc 3.1.1 client whose event loop runs in a task.
pub struct Client {
    pub client: AsyncClient,
    msgs: mpsc::UnboundedReceiver<rumqttc::Publish>,
    conn: mpsc::UnboundedReceiver<Result<bool, String>>,
    task: tokio::task::JoinHandle<()>,
}

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

impl Client {
    /// Starts the event loop; with `reconnect` it keeps polling after an
    /// error (rumqttc then reconnects), else it stops.
    pub fn spawn(options: MqttOptions, reconnect: bool) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (mtx, msgs) = mpsc::unbounded_channel();
        let (ctx, conn) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = mtx.send(p);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        let _ = ctx.send(Ok(c.session_present));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = ctx.send(Err(match e {
                            ConnectionError::ConnectionRefused(code) => format!("refused {code:?}"),
                            other => other.to_string(),
                        }));
                        if !reconnect {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Self {
            client,
            msgs,
            conn,
            task,
        }
    }

    /// Connects and waits for the CONNACK; returns session_present.
    pub async fn connect(options: MqttOptions) -> (Self, bool) {
        let mut c = Self::spawn(options, false);
        let present = c.connected().await;
        (c, present)
    }

    /// The next successful CONNACK (skipping errors); its session_present.
    pub async fn connected(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.conn.recv()).await {
                Ok(Some(Ok(present))) => return present,
                Ok(Some(Err(_))) => continue,
                other => panic!("no CONNACK in time: {other:?}"),
            }
        }
    }

    /// The next connection error.
    pub async fn error(&mut self) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.conn.recv()).await {
                Ok(Some(Err(e))) => return e,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no connection error in time: {other:?}"),
            }
        }
    }

    pub async fn sub(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
    }

    pub async fn next(&mut self) -> rumqttc::Publish {
        tokio::time::timeout(WAIT, self.msgs.recv())
            .await
            .expect("a message in time")
            .expect("client running")
    }

    /// Messages arriving within `quiet` of each other, until none for `quiet`.
    pub async fn collect(&mut self, quiet: Duration) -> Vec<rumqttc::Publish> {
        let mut out = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(quiet, self.msgs.recv()).await {
            out.push(p);
        }
        out
    }

    /// Closes the socket without DISCONNECT (the event loop is dropped).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(WAIT, self.conn.recv()).await;
        self.task.abort();
    }
}

async fn publish(c: &Client, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
    c.client
        .publish(topic, qos, retain, payload.to_vec())
        .await
        .expect("publish");
}

/// Waits until the broker lists `id` with `filter` among its subscriptions.
pub async fn wait_subscribed(server: &TestServer, id: &str, filter: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, clients) = server.get("/api/v1/mqtt/clients").await;
        let found = clients.as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["client_id"] == id && !c["subscriptions"][filter].is_null())
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never subscribed to {filter}: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (sub, _) = Client::connect(options(server.mqtt, "qos-sub")).await;
    let mut sub = sub;
    for (filter, qos) in [
        ("q/0", QoS::AtMostOnce),
        ("q/1", QoS::AtLeastOnce),
        ("q/2", QoS::ExactlyOnce),
    ] {
        sub.sub(filter, qos).await;
        wait_subscribed(&server, "qos-sub", filter).await;
    }
    let (publisher, _) = Client::connect(options(server.mqtt, "qos-pub")).await;
    let levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for (s, _) in levels.iter().enumerate() {
        for (p, pq) in levels.iter().enumerate() {
            publish(
                &publisher,
                &format!("q/{s}"),
                format!("{p}").as_bytes(),
                *pq,
                false,
            )
            .await;
            let m = sub.next().await;
            assert_eq!(m.topic, format!("q/{s}"));
            assert_eq!(m.payload.as_ref(), format!("{p}").as_bytes());
            assert_eq!(m.qos as usize, s.min(p), "sub {s} pub {p}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn retained_set_replace_clear_and_empty_non_retained_keeps_it() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (publisher, _) = Client::connect(options(server.mqtt, "ret-pub")).await;
    publish(&publisher, "r/a", b"one", QoS::AtLeastOnce, true).await;
    publish(&publisher, "r/a", b"two", QoS::AtLeastOnce, true).await;
    publish(&publisher, "r/a", b"", QoS::AtLeastOnce, false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s1, _) = Client::connect(options(server.mqtt, "ret-s1")).await;
    s1.sub("r/#", QoS::AtLeastOnce).await;
    let m = s1.next().await;
    assert_eq!((m.payload.as_ref(), m.retain), (&b"two"[..], true));
    publish(&publisher, "r/a", b"", QoS::AtLeastOnce, true).await;
    let cleared = s1.next().await; // the live empty publish itself
    assert!(cleared.payload.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s2, _) = Client::connect(options(server.mqtt, "ret-s2")).await;
    s2.sub("r/#", QoS::AtLeastOnce).await;
    assert!(s2.collect(Duration::from_millis(500)).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn ten_thousand_retained_topics_reach_a_wildcard_subscriber() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (publisher, _) = Client::connect(options(server.mqtt, "fleet-pub")).await;
    const N: usize = 10_000;
    for i in 0..N {
        publish(
            &publisher,
            &format!("fleet/d{i:05}/status"),
            b"online",
            QoS::AtMostOnce,
            true,
        )
        .await;
    }
    // The last one retained means all are (one connection, in order).
    let started = Instant::now();
    loop {
        let (_, page) = server
            .get("/api/v1/mqtt/messages?topic=fleet/d09999/status")
            .await;
        if page["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "publishes not through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut sub, _) = Client::connect(options(server.mqtt, "fleet-sub")).await;
    sub.sub("fleet/+/status", QoS::AtLeastOnce).await;
    let mut topics = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while topics.len() < N && Instant::now() < deadline {
        let m = sub.next().await;
        assert!(m.retain);
        topics.insert(m.topic);
    }
    assert_eq!(topics.len(), N);
    server.stop().await;
}

#[tokio::test]
async fn wills_fire_on_abrupt_close_and_keepalive_expiry_but_not_on_disconnect() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (mut watcher, _) = Client::connect(options(server.mqtt, "will-watch")).await;
    watcher.sub("wills/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "will-watch", "wills/#").await;

    let with_will = |id: &str| {
        let mut o = options(server.mqtt, id);
        o.set_last_will(LastWill::new(
            format!("wills/{id}"),
            "gone",
            QoS::AtLeastOnce,
            false,
        ));
        o
    };
    let (clean, _) = Client::connect(with_will("clean")).await;
    clean.disconnect().await;
    let (abrupt, _) = Client::connect(with_will("abrupt")).await;
    abrupt.kill().await;
    let m = watcher.next().await;
    assert_eq!(
        m.topic, "wills/abrupt",
        "the clean disconnect must not send its will"
    );

    // A raw client that stops talking: keepalive 1 s, never pings.
    let mut raw = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
    raw.write_all(&connect_packet(
        "silent",
        1,
        Some(("wills/silent", b"gone")),
        None,
    ))
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let started = Instant::now();
    let m = watcher.next().await;
    assert_eq!(m.topic, "wills/silent");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "will came too early"
    );
    drop(raw);
    assert!(watcher.collect(Duration::from_millis(300)).await.is_empty());
    server.stop().await;
}

/// A 3.1.1 CONNECT: clean session, optional will (QoS 0) and credentials.
pub fn connect_packet(
    id: &str,
    keepalive: u16,
    will: Option<(&str, &[u8])>,
    creds: Option<(&str, &str)>,
) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut flags = 0x02u8;
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    body.push(4);
    if will.is_some() {
        flags |= 0x04;
    }
    if creds.is_some() {
        flags |= 0xC0;
    }
    body.push(flags);
    body.extend_from_slice(&keepalive.to_be_bytes());
    field(&mut body, id.as_bytes());
    if let Some((t, p)) = will {
        field(&mut body, t.as_bytes());
        field(&mut body, p);
    }
    if let Some((u, p)) = creds {
        field(&mut body, u.as_bytes());
        field(&mut body, p.as_bytes());
    }
    assert!(body.len() < 128);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn persistent_sessions_queue_qos1_while_away() {
    let server = TestServer::start(Config::ephemeral()).await;
    let persistent = || {
        let mut o = options(server.mqtt, "persist-1");
        o.set_clean_session(false);
        o
    };
    let (c, _) = Client::connect(persistent()).await;
    c.sub("inbox/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "persist-1", "inbox/#").await;
    c.disconnect().await;
    let (publisher, _) = Client::connect(options(server.mqtt, "persist-pub")).await;
    for i in 0..5 {
        publish(
            &publisher,
            "inbox/a",
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    publish(
        &publisher,
        "inbox/a",
        b"q0-dropped-while-away",
        QoS::AtMostOnce,
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, present) = Client::connect(persistent()).await;
    assert!(present, "session_present on resume");
    let got: Vec<String> = c
        .collect(Duration::from_millis(700))
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    // The resumed subscriptions are listed without a new SUBSCRIBE.
    wait_subscribed(&server, "persist-1", "inbox/#").await;
    server.stop().await;
}

#[tokio::test]
async fn wildcards_sys_and_keepalive_zero() {
    let server = TestServer::start(Config::ephemeral()).await;
    let mut o = options(server.mqtt, "ka0");
    o.set_keep_alive(Duration::ZERO);
    let (mut c, _) = Client::connect(o).await;
    c.sub("$SYS/#", QoS::AtLeastOnce).await;
    c.sub("w/+/x", QoS::AtLeastOnce).await;
    c.sub("h/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "ka0", "h/#").await;
    wait_subscribed(&server, "ka0", "$SYS/#").await;
    let (p, _) = Client::connect(options(server.mqtt, "wild-pub")).await;
    for t in ["w/a/x", "w/a/y", "w/a/b/x", "h", "h/1/2", "other"] {
        publish(&p, t, b"1", QoS::AtLeastOnce, false).await;
    }
    let mut got: Vec<String> = c
        .collect(Duration::from_millis(500))
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    got.sort();
    assert_eq!(got, ["h", "h/1/2", "w/a/x"]);
    server.stop().await;
}

struct TestAuth;

impl Authorizer for TestAuth {
    fn authenticate(&self, _id: &str, user: Option<&str>, pw: Option<&[u8]>) -> AuthDecision {
        match (user, pw) {
            (Some("dev"), Some(b"secret")) => AuthDecision::Allow {
                user: Some("dev".into()),
            },
            (Some(_), _) => AuthDecision::BadCredentials,
            (None, _) => AuthDecision::NotAuthorized,
        }
    }
    fn may_publish(&self, _id: &str, _user: Option<&str>, topic: &str) -> bool {
        !topic.starts_with("forbidden/")
    }
    fn may_subscribe(&self, _id: &str, _user: Option<&str>, filter: &str) -> bool {
        !filter.starts_with("secret/")
    }
}

pub async fn auth_server() -> TestServer {
    TestServer::start(Config {
        mqtt_authorizer: Some(Arc::new(TestAuth)),
        ..Config::ephemeral()
    })
    .await
}

#[tokio::test]
async fn connack_codes_and_acls_with_3_1_1_and_5() {
    let server = auth_server().await;
    // 3.1.1
    let mut o = options(server.mqtt, "bad-pw");
    o.set_credentials("dev", "wrong");
    assert_eq!(
        Client::spawn(o, false).error().await,
        "refused BadUserNamePassword"
    );
    let o = options(server.mqtt, "no-user");
    assert_eq!(
        Client::spawn(o, false).error().await,
        "refused NotAuthorized"
    );
    // Raw bytes too: the return code in the CONNACK.
    for (creds, code) in [(Some(("dev", "wrong")), 4u8), (None, 5u8)] {
        let mut raw = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
        raw.write_all(&connect_packet("raw", 30, None, creds))
            .await
            .unwrap();
        let mut connack = [0u8; 4];
        raw.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, code]);
    }
    // 5
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
    for (creds, expected) in [
        (Some(("dev", "wrong")), V5Code::BadUserNamePassword),
        (None, V5Code::NotAuthorized),
    ] {
        let mut o = rumqttc::v5::MqttOptions::new("v5-client", "127.0.0.1", server.mqtt.port());
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 10);
        match tokio::time::timeout(WAIT, eventloop.poll())
            .await
            .expect("answer")
        {
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, expected)
            }
            other => panic!("expected refusal {expected:?}, got {other:?}"),
        }
    }
    // Allowed, with ACLs: a denied subscribe gets a failure SUBACK, a denied
    // publish is dropped.
    let mut o = options(server.mqtt, "dev-1");
    o.set_credentials("dev", "secret");
    let mut ok = Client::spawn(o, false);
    ok.connected().await;
    ok.sub("secret/#", QoS::AtLeastOnce).await;
    ok.sub("open/#", QoS::AtLeastOnce).await;
    ok.sub("forbidden/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "dev-1", "forbidden/#").await;
    let (_, clients) = server.get("/api/v1/mqtt/clients").await;
    let me = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "dev-1")
        .unwrap()
        .clone();
    assert_eq!(me["user"], "dev");
    assert!(me["subscriptions"]["secret/#"].is_null(), "{me}");
    publish(&ok, "forbidden/x", b"no", QoS::AtLeastOnce, false).await;
    publish(&ok, "open/x", b"yes", QoS::AtLeastOnce, false).await;
    assert_eq!(ok.next().await.topic, "open/x");
    assert!(ok.collect(Duration::from_millis(300)).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn journal_verify_and_clients() {
    let server = TestServer::start(Config::ephemeral()).await;
    let (_, status) = server.get("/api/v1/mqtt/status").await;
    let since = status["journal"]["cursor"].as_u64().unwrap();
    let (c, _) = Client::connect(options(server.mqtt, "jv-1")).await;
    publish(
        &c,
        "dev/1/t",
        br#"{"v":1,"unit":"C"}"#,
        QoS::AtLeastOnce,
        false,
    )
    .await;
    publish(
        &c,
        "dev/1/t",
        br#"{"v":2,"unit":"C"}"#,
        QoS::AtMostOnce,
        true,
    )
    .await;
    publish(&c, "dev/1/bin", &[0xff, 0x00, 0x01], QoS::AtMostOnce, false).await;
    let (status, body) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic":"dev/1/cmd","payload":{"go":true},"qos":1}),
        )
        .await;
    assert_eq!((status, &body["outcome"]), (202, &json!("routed")));

    // Waits for the messages to arrive, then passes at once.
    let (status, v) = server
        .post("/api/v1/mqtt/verify", json!({"topic":"dev/+/t","payload_contains":{"unit":"C"},"at_least":2,"within_ms":5000,"since":since}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["passed"].as_bool(), v["matched"].as_u64()),
        (Some(true), Some(2)),
        "{v}"
    );
    assert!(v["waited_ms"].as_u64().unwrap() < 4000);

    // Fails when it should, and shows the near misses.
    let (_, v) = server
        .post("/api/v1/mqtt/verify", json!({"topic":"dev/+/t","payload_contains":{"v":3},"exactly":1,"within_ms":300,"since":since}))
        .await;
    assert_eq!(
        (v["passed"].as_bool(), v["matched"].as_u64()),
        (Some(false), Some(0)),
        "{v}"
    );
    assert_eq!(v["expected"], "exactly 1");
    assert_eq!(v["near_misses"].as_array().unwrap().len(), 2);
    assert!(v["waited_ms"].as_u64().unwrap() >= 300);
    // at_most fails as soon as it is exceeded.
    let (_, v) = server
        .post(
            "/api/v1/mqtt/verify",
            json!({"topic":"dev/#","at_most":1,"within_ms":5000,"since":since}),
        )
        .await;
    assert_eq!(v["passed"], false, "{v}");
    assert!(v["waited_ms"].as_u64().unwrap() < 4000);
    let (status, _) = server
        .post("/api/v1/mqtt/verify", json!({"topic":"a/#/b","at_least":1}))
        .await;
    assert_eq!(status, 422);

    let (_, page) = server
        .get(&format!(
            "/api/v1/mqtt/messages?topic=dev/%23&since={since}"
        ))
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{page}");
    assert_eq!(page["more"], false, "{page}");
    let (_, cut) = server
        .get(&format!(
            "/api/v1/mqtt/messages?topic=dev/%23&since={since}&limit=3"
        ))
        .await;
    assert_eq!(cut["items"].as_array().unwrap().len(), 3, "{cut}");
    assert_eq!(cut["more"], true, "the body says a page was cut: {cut}");
    // Client publishes and the HTTP one race; find them by content.
    let find = |topic: &str, retain: bool| {
        items
            .iter()
            .find(|i| i["topic"] == topic && i["retain"] == retain)
            .unwrap_or_else(|| panic!("{topic} in {page}"))
    };
    let first = find("dev/1/t", false);
    assert_eq!(
        (&first["client_id"], &first["qos"]),
        (&json!("jv-1"), &json!(1))
    );
    assert_eq!(find("dev/1/t", true)["payload"], r#"{"v":2,"unit":"C"}"#);
    let bin = find("dev/1/bin", false);
    assert_eq!(
        (&bin["payload_encoding"], &bin["payload"]),
        (&json!("base64"), &json!("/wAB"))
    );
    let server_msg = find("dev/1/cmd", false);
    assert_eq!(server_msg["client_id"], Value::Null);
    assert_eq!(server_msg["payload"], r#"{"go":true}"#);
    let (_, page2) = server
        .get(&format!(
            "/api/v1/mqtt/messages?since={}&limit=1",
            page["next_cursor"]
        ))
        .await;
    assert!(page2["items"].as_array().unwrap().is_empty());

    // Clients and the event stream.
    let mut events = server.server().mqtt().events();
    let (c2, _) = Client::connect(options(server.mqtt, "jv-2")).await;
    c2.sub("x/#", QoS::ExactlyOnce).await;
    wait_subscribed(&server, "jv-2", "x/#").await;
    let (_, clients) = server.get("/api/v1/mqtt/clients").await;
    let ids: Vec<&str> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["jv-1", "jv-2"]);
    assert_eq!(clients[1]["subscriptions"]["x/#"], 2);
    c2.disconnect().await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        [
            ClientEvent::Connected {
                client_id: "jv-2".into(),
                user: None
            },
            ClientEvent::Disconnected {
                client_id: "jv-2".into(),
                user: None,
                clean: true
            },
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn journal_eviction_is_counted_exactly() {
    let server = TestServer::start(Config {
        journal_capacity: 5,
        ..Config::ephemeral()
    })
    .await;
    for i in 0..12 {
        server
            .post(
                "/api/v1/mqtt/publish",
                json!({"topic":"e/x","payload":format!("{i}")}),
            )
            .await;
    }
    let (_, page) = server.get("/api/v1/mqtt/messages").await;
    assert_eq!(page["evicted"], 7);
    let payloads: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["7", "8", "9", "10", "11"]);
    let (_, status) = server.get("/api/v1/mqtt/status").await;
    let mut journal = status["journal"].clone();
    let bytes = journal["bytes"].take().as_u64().unwrap();
    assert!(
        bytes > 0 && bytes < 5 * 1024,
        "five small messages: {journal}"
    );
    assert_eq!(
        journal,
        json!({"capacity":5,"len":5,"evicted":7,"evicted_by_bytes":0,"cursor":12,
               "max_bytes":128 << 20,"bytes":null})
    );
    server.stop().await;
}

#[tokio::test]
async fn outage_disconnects_refuses_and_comes_back_with_sessions_and_retained() {
    let server = TestServer::start(Config::ephemeral()).await;
    let mut o = options(server.mqtt, "out-1");
    o.set_clean_session(false);
    let mut c = Client::spawn(o, true);
    c.connected().await;
    c.sub("cmd/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "out-1", "cmd/#").await;
    let (_, body) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic":"cfg/a","payload":"kept","qos":1,"retain":true}),
        )
        .await;
    assert_eq!(body["outcome"], "routed");
    // A session that is away during the outage, with messages queued for it.
    let away = || {
        let mut o = options(server.mqtt, "out-away");
        o.set_clean_session(false);
        o
    };
    let (a, _) = Client::connect(away()).await;
    a.sub("inbox/#", QoS::AtLeastOnce).await;
    wait_subscribed(&server, "out-away", "inbox/#").await;
    a.disconnect().await;
    for i in 0..3 {
        server
            .post(
                "/api/v1/mqtt/publish",
                json!({"topic":"inbox/a","payload":format!("before-{i}"),"qos":1}),
            )
            .await;
    }
    let mut events = server.server().mqtt().events();

    let (status, body) = server
        .post("/api/v1/mqtt/outage", json!({"duration_ms": 1500}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "outage");
    let (status, _) = server
        .post("/api/v1/mqtt/outage", json!({"duration_ms": 10}))
        .await;
    assert_eq!(status, 409);
    assert!(!c.error().await.is_empty());
    // out-1 is disconnected, not cleanly (out-away's own DISCONNECT, sent
    // before the outage, may be heard first on a busy machine).
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ClientEvent::Disconnected { client_id, .. } if client_id == "out-away" => {}
            ClientEvent::Disconnected {
                client_id, clean, ..
            } => {
                assert_eq!((client_id.as_str(), clean), ("out-1", false));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // Refused while down; in-process publishes follow the policy.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(server.mqtt).await.is_err());
    let (_, b0) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic":"cmd/x","payload":"q0","qos":0}),
        )
        .await;
    let (_, b1) = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic":"cmd/x","payload":"q1","qos":1}),
        )
        .await;
    assert_eq!(
        (b0["outcome"].as_str(), b1["outcome"].as_str()),
        (Some("dropped"), Some("held"))
    );
    let (_, status) = server.get("/api/v1/mqtt/status").await;
    assert_eq!(status["state"], "outage");
    assert_eq!(status["clients"], 0);
    assert_eq!(status["outage_policy"]["dropped"], 1);
    assert_eq!(status["outage_policy"]["held_now"], 1);

    // Back by itself, same port; the client resumes its session.
    let present = c.connected().await;
    assert!(present, "session resumed after the outage");
    let m = c.next().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_ref()),
        ("cmd/x", &b"q1"[..])
    );
    let (_, status) = server.get("/api/v1/mqtt/status").await;
    assert_eq!(status["state"], "up");
    assert_eq!(status["outage_policy"]["replayed"], 1);
    // Journaled once, when routed: the dropped one never.
    let (_, journal) = server.get("/api/v1/mqtt/messages?topic=cmd/x").await;
    let payloads: Vec<&str> = journal["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["q1"], "{journal}");
    let (mut fresh, _) = Client::connect(options(server.mqtt, "out-2")).await;
    fresh.sub("cfg/#", QoS::AtLeastOnce).await;
    let m = fresh.next().await;
    assert_eq!((m.payload.as_ref(), m.retain), (&b"kept"[..], true));
    // The session that was away finds its queue as it left it.
    let (mut a, present) = Client::connect(away()).await;
    assert!(present, "the away session survived the outage");
    let got: Vec<String> = a
        .collect(Duration::from_millis(700))
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(got, ["before-0", "before-1", "before-2"]);
    server.stop().await;
}
