//! The broker engine at the packet level, with a raw MQTT client built
//! byte by byte (`support::wire`, so that what goes on the wire is
//! exactly what the test says): MQTT 5 properties passed through
//! untouched, Maximum Packet Size honoured, MQTT 3.1, reason codes on
//! protocol errors, takeovers as each protocol version expects, wills and
//! message expiry on the server's clock, and durable state across a
//! restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::support::wire::{
    Raw, Will, connect, packet, props, publish, string, suback, subscribe, user_property,
};
use crate::support::{TestServer, WAIT};

#[tokio::test]
async fn v5_properties_pass_through_untouched_and_small_clients_get_what_fits() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    // Maximum Packet Size 64 (property 0x27).
    let small = [0x27, 0, 0, 0, 64];
    let (mut sub, _) = Raw::open(addr, &connect(5, "small", true, 0, &small, None)).await;
    sub.send(&subscribe(5, 1, "t/#", 0)).await;
    suback(&mut sub).await;
    let (mut publ, _) = Raw::open(addr, &connect(5, "pub", true, 0, &[], None)).await;

    let mut p = Vec::new();
    user_property("z", "1", &mut p);
    user_property("a", "2", &mut p);
    user_property("z", "3", &mut p);
    // A 43-byte packet to the subscriber: what Mosquitto delivers.
    let payload = b"0123456789012345678";
    publ.send(&publish(5, "t/x", 0, 0, &p, payload)).await;
    let (topic, got_props, got_payload) = sub.publish(5).await;
    assert_eq!(topic, "t/x");
    assert_eq!(got_props, p, "user properties in order, nothing added");
    assert_eq!(got_payload, payload);

    // Too large for the subscriber: skipped, counted, and the next one
    // still arrives.
    publ.send(&publish(5, "t/big", 0, 0, &[], &[b'x'; 100]))
        .await;
    publ.send(&publish(5, "t/after", 0, 0, &[], b"ok")).await;
    let (topic, _, _) = sub.publish(5).await;
    assert_eq!(topic, "t/after");
    let (_, clients) = server.get("/api/v1/mqtt/clients").await;
    let small = clients["items"]
        .as_array()
        .or(clients.as_array())
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "small")
        .cloned()
        .expect("the small client listed");
    assert_eq!(small["counters"]["dropped_too_large"], 1, "{small}");
    let (_, drops) = server.get("/api/v1/mqtt/drops").await;
    assert_eq!(drops["items"][0]["topic"], "t/big", "{drops}");
    assert_eq!(drops["items"][0]["reason"], "too_large");
    assert_eq!(drops["items"][0]["client_id"], "small");
    server.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_clients_connect_and_take_part() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (mut old, connack) =
        Raw::open(server.mqtt, &connect(3, "old-device", true, 30, &[], None)).await;
    assert_eq!(connack, [0, 0], "CONNACK accepted");
    old.send(&subscribe(4, 1, "cmd/#", 1)).await;
    suback(&mut old).await;
    let (mut new, _) = Raw::open(server.mqtt, &connect(4, "new", true, 30, &[], None)).await;
    new.send(&publish(4, "cmd/1", 0, 0, &[], b"go")).await;
    let (topic, _, payload) = old.publish(4).await;
    assert_eq!((topic.as_str(), &payload[..]), ("cmd/1", &b"go"[..]));
    server.stop().await;
}

#[tokio::test]
async fn protocol_errors_get_a_disconnect_with_its_reason_code() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let mut alias0 = Vec::new();
    alias0.extend_from_slice(&[0x23, 0, 0]);
    let (mut c, _) = Raw::open(server.mqtt, &connect(5, "alias-zero", true, 0, &[], None)).await;
    c.send(&publish(5, "a", 0, 0, &alias0, b"x")).await;
    let (first, body) = c.packet().await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xe0, 0x94), "topic alias invalid");
    assert!(c.packet().await.is_none(), "then closed");

    let (mut c, _) = Raw::open(
        server.mqtt,
        &connect(5, "alias-unknown", true, 0, &[], None),
    )
    .await;
    c.send(&publish(5, "", 0, 0, &[0x23, 0, 7], b"x")).await;
    let (first, body) = c.packet().await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xe0, 0x82), "protocol error");
    server.stop().await;
}

#[tokio::test]
async fn a_3_1_1_client_taken_over_is_closed_without_a_disconnect_packet() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (mut first, _) = Raw::open(server.mqtt, &connect(4, "same", true, 0, &[], None)).await;
    let (_second, _) = Raw::open(server.mqtt, &connect(4, "same", true, 0, &[], None)).await;
    assert!(
        first.packet().await.is_none(),
        "3.1.1: closed, no DISCONNECT"
    );

    let (mut first, _) = Raw::open(server.mqtt, &connect(5, "same5", true, 0, &[], None)).await;
    let (_second, _) = Raw::open(server.mqtt, &connect(5, "same5", true, 0, &[], None)).await;
    let (p, body) = first.packet().await.expect("MQTT 5: DISCONNECT");
    assert_eq!((p, body[0]), (0xe0, 0x8e), "session taken over");
    server.stop().await;
}

async fn verify(server: &TestServer, body: Value) -> Value {
    let (status, v) = server.post("/api/v1/mqtt/verify", body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn a_delayed_will_fires_when_the_manual_clock_reaches_it_and_is_journaled() {
    let server = TestServer::with_scenario("", |c| c.clock = iotmock::ClockMode::Manual).await;
    let will = Will {
        topic: "wills/w1",
        payload: b"gone",
        qos: 1,
        delay_secs: Some(60),
        props: &[],
    };
    // Session expiry 3600 s so the will waits for its own delay.
    let (c, _) = Raw::open(
        server.mqtt,
        &connect(5, "w1", true, 0, &[0x11, 0, 0, 0x0e, 0x10], Some(&will)),
    )
    .await;
    drop(c);
    // The will's delay counts from when the broker saw the connection go.
    server.let_go("w1").await;
    let since = server.get("/api/v1/mqtt/messages?topic=wills/%23").await.1["next_cursor"].clone();
    // Not yet: 59 s of simulated time.
    let (s, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 59_000}))
        .await;
    assert_eq!(s, 200);
    let v = verify(
        &server,
        json!({"topic":"wills/#","exactly":0,"within_ms":300,"since":since}),
    )
    .await;
    assert_eq!(v["passed"], true, "{v}");
    let (s, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 1_000}))
        .await;
    assert_eq!(s, 200);
    let v = verify(
        &server,
        json!({"topic":"wills/w1","exactly":1,"within_ms":5000,"since":since}),
    )
    .await;
    assert_eq!(v["passed"], true, "{v}");
    let (_, page) = server.get("/api/v1/mqtt/messages?topic=wills/%23").await;
    let item = &page["items"][0];
    assert_eq!(item["origin"], "will", "{item}");
    assert_eq!(item["client_id"], "w1");
    assert_eq!(item["payload"], "gone");
    server.stop().await;
}

#[tokio::test]
async fn queued_messages_expire_on_the_manual_clock() {
    let server = TestServer::with_scenario("", |c| c.clock = iotmock::ClockMode::Manual).await;
    let expiry = [0x11, 0, 0, 0x0e, 0x10];
    let (mut sub, _) = Raw::open(server.mqtt, &connect(5, "away", true, 0, &expiry, None)).await;
    sub.send(&subscribe(5, 1, "q/#", 1)).await;
    suback(&mut sub).await;
    sub.send(&packet(0xe0, &[0])).await;
    drop(sub);
    server.let_go("away").await;
    let (mut publ, _) = Raw::open(server.mqtt, &connect(5, "p", true, 0, &[], None)).await;
    // Message Expiry Interval 10 s and 100 s.
    publ.send(&publish(5, "q/short", 1, 1, &[0x02, 0, 0, 0, 10], b"s"))
        .await;
    publ.send(&publish(5, "q/long", 1, 2, &[0x02, 0, 0, 0, 100], b"l"))
        .await;
    for _ in 0..2 {
        assert_eq!(publ.packet().await.unwrap().0, 0x40, "PUBACK");
    }
    let (s, _) = server
        .post("/api/v1/clock/advance", json!({"ms": 30_000}))
        .await;
    assert_eq!(s, 200);
    let (mut sub, connack) =
        Raw::open(server.mqtt, &connect(5, "away", false, 0, &expiry, None)).await;
    assert_eq!(connack[0], 1, "session present");
    let (topic, p, _) = sub.publish(5).await;
    assert_eq!(topic, "q/long");
    // 100 s minus the 30 s that passed.
    assert_eq!(p, [0x02, 0, 0, 0, 70]);
    let (_, drops) = server.get("/api/v1/mqtt/drops").await;
    assert_eq!(drops["items"][0]["topic"], "q/short", "{drops}");
    assert_eq!(drops["items"][0]["reason"], "expired");
    // The short one is gone: nothing else arrives.
    sub.send(&packet(0x40, &[0, 1])).await;
    sub.silent(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn retained_messages_of_long_topics_and_queued_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let long_topic = format!("site/{}/status", "x".repeat(300));
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (mut sub, _) = Raw::open(server.mqtt, &connect(4, "keeper", false, 0, &[], None)).await;
    sub.send(&subscribe(4, 1, "jobs/#", 1)).await;
    suback(&mut sub).await;
    sub.send(&packet(0xe0, &[])).await;
    drop(sub);
    let (mut publ, _) = Raw::open(server.mqtt, &connect(4, "pub", true, 0, &[], None)).await;
    let mut retained = publish(4, &long_topic, 1, 1, &[], b"kept");
    retained[0] |= 1;
    publ.send(&retained).await;
    publ.send(&publish(4, "jobs/1", 1, 2, &[], b"job")).await;
    for _ in 0..2 {
        assert_eq!(publ.packet().await.unwrap().0, 0x40, "PUBACK once stored");
    }
    drop(publ);
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (mut sub, connack) =
        Raw::open(server.mqtt, &connect(4, "keeper", false, 0, &[], None)).await;
    assert_eq!(connack, [1, 0], "session present after the restart");
    let (topic, _, payload) = sub.publish(4).await;
    assert_eq!((topic.as_str(), &payload[..]), ("jobs/1", &b"job"[..]));
    let mut late = Raw::subscribed(server.mqtt, 4, "late", "site/#", 0).await;
    let (topic, _, payload) = late.publish(4).await;
    assert_eq!((topic, payload), (long_topic, b"kept".to_vec()));
    server.stop().await;
}

#[tokio::test]
async fn a_publish_the_broker_cannot_store_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (mut publ, _) = Raw::open(server.mqtt, &connect(5, "pub", true, 0, &[], None)).await;
    let mut retained = publish(5, "site/1", 1, 1, &[], b"kept");
    retained[0] |= 1;
    publ.send(&retained).await;
    assert_eq!(publ.packet().await.unwrap().0, 0x40, "PUBACK once stored");

    // The broker's file loses its table of retained messages (as a full
    // or failing disk would fail the write).
    rusqlite::Connection::open(data.join("mqtt/broker.db"))
        .unwrap()
        .execute_batch("DROP TABLE retained")
        .unwrap();
    let mut again = publish(5, "site/2", 1, 2, &[], b"lost");
    again[0] |= 1;
    publ.send(&again).await;
    let (first, body) = publ.packet().await.expect("a DISCONNECT, not a PUBACK");
    assert_eq!(
        (first, body[0]),
        (0xe0, 0x80),
        "DISCONNECT, unspecified error"
    );
    assert_eq!(publ.packet().await, None, "then the connection closes");

    // QoS 0 and clean sessions do not touch the store: they go on.
    let mut sub = Raw::subscribed(server.mqtt, 5, "sub", "live/#", 0).await;
    let (mut p0, _) = Raw::open(server.mqtt, &connect(5, "p0", true, 0, &[], None)).await;
    p0.send(&publish(5, "live/1", 0, 0, &[], b"on")).await;
    assert_eq!(sub.publish(5).await.2, b"on");
    server.stop().await;
}

async fn fault(server: &TestServer, rule: Value) -> String {
    let (status, v) = server.post("/api/v1/mqtt/faults", rule).await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn fired(server: &TestServer, id: &str) -> u64 {
    let (_, v) = server.get("/api/v1/mqtt/faults").await;
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["fired"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("rule {id} listed: {v}"))
}

#[tokio::test]
async fn a_withheld_puback_makes_the_client_resend_and_the_resend_is_acknowledged() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let id = fault(
        &server,
        json!({"match": {"client": "fw-*", "packet": "puback"}, "action": "withhold_ack", "count": 1}),
    )
    .await;
    let (mut fw, _) = Raw::open(server.mqtt, &connect(4, "fw-1", true, 0, &[], None)).await;
    fw.send(&publish(4, "up/1", 1, 5, &[], b"x")).await;
    fw.silent(Duration::from_millis(300)).await;
    let mut again = publish(4, "up/1", 1, 5, &[], b"x");
    again[0] |= 0x08;
    fw.send(&again).await;
    let (first, body) = fw.packet().await.expect("PUBACK for the resend");
    assert_eq!((first, &body[..]), (0x40, &[0u8, 5][..]));
    assert_eq!(fired(&server, &id).await, 1);
    let (_, v) = server.get("/api/v1/mqtt/faults").await;
    assert_eq!(v["log"][0]["packet"], "puback", "{v}");
    server.stop().await;
}

#[tokio::test]
async fn duplicate_and_reorder_reach_a_real_subscriber() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let mut sub = Raw::subscribed(server.mqtt, 4, "sub", "d/#", 1).await;
    fault(
        &server,
        json!({"match": {"client": "sub", "topic": "d/dup"}, "action": "duplicate"}),
    )
    .await;
    let (mut publ, _) = Raw::open(server.mqtt, &connect(4, "p", true, 0, &[], None)).await;
    publ.send(&publish(4, "d/dup", 1, 1, &[], b"once")).await;
    let (f1, b1) = sub.packet().await.unwrap();
    let (f2, b2) = sub.packet().await.unwrap();
    assert_eq!((f1, f2), (0x32, 0x3a), "the second copy carries DUP");
    assert_eq!(b1, b2, "same packet id and payload");

    server.delete("/api/v1/mqtt/faults").await;
    fault(
        &server,
        json!({"match": {"client": "sub", "topic": "d/first"}, "action": "reorder", "count": 1}),
    )
    .await;
    publ.send(&publish(4, "d/first", 0, 0, &[], b"1")).await;
    publ.send(&publish(4, "d/second", 0, 0, &[], b"2")).await;
    let (t1, _, _) = sub.publish(4).await;
    let (t2, _, _) = sub.publish(4).await;
    assert_eq!((t1.as_str(), t2.as_str()), ("d/second", "d/first"));
    server.stop().await;
}

#[tokio::test]
async fn refused_connections_and_fault_disconnects_carry_their_reason_codes() {
    let server = TestServer::with_scenario("", |_| {}).await;
    fault(
        &server,
        json!({"match": {"client": "blocked"}, "action": "refuse_connect", "reason_code": 0x88}),
    )
    .await;
    let s = TcpStream::connect(server.mqtt).await.unwrap();
    let mut raw = Raw { s, buf: Vec::new() };
    raw.send(&connect(5, "blocked", true, 0, &[], None)).await;
    let (first, body) = raw.packet().await.unwrap();
    assert_eq!((first, body[1]), (0x20, 0x88), "CONNACK server unavailable");

    fault(
        &server,
        json!({"match": {"client": "chatty", "direction": "in", "packet": "publish"}, "action": "disconnect", "after": 2, "reason_code": 0x97}),
    )
    .await;
    let (mut c, _) = Raw::open(server.mqtt, &connect(5, "chatty", true, 0, &[], None)).await;
    for i in 1..=3u16 {
        c.send(&publish(5, "x", 1, i, &[], b"p")).await;
    }
    assert_eq!(c.packet().await.unwrap().0, 0x40);
    assert_eq!(c.packet().await.unwrap().0, 0x40);
    let (first, body) = c.packet().await.expect("DISCONNECT");
    assert_eq!(
        (first, body[0]),
        (0xe0, 0x97),
        "quota exceeded, as the rule says"
    );
    server.stop().await;
}

#[tokio::test]
async fn probabilistic_drops_repeat_under_the_same_seed() {
    async fn run(seed: u64) -> Vec<String> {
        let server = TestServer::with_scenario("", |c| c.seed = Some(seed)).await;
        let (mut sub, _) = Raw::open(server.mqtt, &connect(4, "s", true, 0, &[], None)).await;
        sub.send(&subscribe(4, 1, "r/#", 0)).await;
        suback(&mut sub).await;
        fault(&server, json!({"match": {"client": "s", "packet": "publish"}, "action": "drop", "probability": 0.5})).await;
        let (mut publ, _) = Raw::open(server.mqtt, &connect(4, "p", true, 0, &[], None)).await;
        for i in 0..40 {
            publ.send(&publish(4, &format!("r/{i}"), 0, 0, &[], b"v"))
                .await;
        }
        publ.send(&publish(4, "end", 0, 0, &[], b"")).await;
        // A marker the subscriber does not filter on would not arrive; wait
        // for the last one the rule let through instead.
        let mut got = Vec::new();
        while let Ok(Some((first, body))) = sub.packet_within(Duration::from_millis(500)).await {
            if first >> 4 == 3 {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                got.push(String::from_utf8(body[2..2 + tl].to_vec()).unwrap());
            }
        }
        server.stop().await;
        got
    }
    let a = run(11).await;
    let b = run(11).await;
    assert!(
        !a.is_empty() && a.len() < 40,
        "about half dropped: {}",
        a.len()
    );
    assert_eq!(a, b);
}

#[tokio::test]
async fn a_client_past_the_receive_maximum_gets_disconnect_0x93() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let (mut c, connack) = Raw::open(server.mqtt, &connect(5, "flood", true, 0, &[], None)).await;
    // Receive Maximum (0x21) 1024 in the CONNACK properties.
    assert!(
        connack.windows(3).any(|w| w == [0x21, 0x04, 0x00]),
        "{connack:?}"
    );
    let mut burst = Vec::new();
    for pid in 1..=1025u16 {
        burst.extend_from_slice(&publish(5, "q2", 2, pid, &[], b"m"));
    }
    c.send(&burst).await;
    let mut pubrecs = 0;
    loop {
        let (first, body) = c.packet().await.expect("PUBRECs, then DISCONNECT");
        match first {
            0x50 => pubrecs += 1,
            0xe0 => {
                assert_eq!(body[0], 0x93, "receive maximum exceeded");
                break;
            }
            other => panic!("unexpected packet {other:#x}"),
        }
    }
    assert_eq!(pubrecs, 1024);
    server.stop().await;
}

#[tokio::test]
async fn delay_and_throttle_hold_back_what_a_client_receives() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let mut sub = Raw::subscribed(server.mqtt, 4, "slow", "s/#", 0).await;
    let (mut publ, _) = Raw::open(server.mqtt, &connect(4, "p", true, 0, &[], None)).await;

    let delay = fault(
        &server,
        json!({"match": {"client": "slow", "topic": "s/late"}, "action": "delay", "delay_ms": 400}),
    )
    .await;
    let sent = std::time::Instant::now();
    publ.send(&publish(4, "s/late", 0, 0, &[], b"x")).await;
    let (topic, _, _) = sub.publish(4).await;
    assert_eq!(topic, "s/late");
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "{:?}",
        sent.elapsed()
    );
    server.delete(&format!("/api/v1/mqtt/faults/{delay}")).await;

    // 5 packets of about 1 KB at 5,000 bytes/s: at least 0.8 s.
    fault(
        &server,
        json!({"match": {"client": "slow", "topic": "s/bulk"}, "action": "throttle", "bytes_per_sec": 5000}),
    )
    .await;
    let sent = std::time::Instant::now();
    for _ in 0..5 {
        publ.send(&publish(4, "s/bulk", 0, 0, &[], &[b'b'; 1000]))
            .await;
    }
    for _ in 0..5 {
        let (topic, _, payload) = sub.publish(4).await;
        assert_eq!((topic.as_str(), payload.len()), ("s/bulk", 1000));
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(800),
        "{:?}",
        sent.elapsed()
    );
    server.stop().await;
}

/// A slow link a fault rule stages for one client is that client's
/// alone: its queue fills and drops, counted, and the publisher it shares
/// with others is not paced down to its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_a_fault_throttles_holds_no_one_back() {
    // Room for what one read brings (16 KiB: about 150 of these), not
    // for all of them.
    let server = TestServer::with_scenario("", |c| c.mqtt_max_queued = 300).await;
    let addr = server.mqtt;
    const N: u32 = 1000;
    let mut old = Raw::subscribed(addr, 4, "throttled", "link/#", 0).await;
    let mut fast = Raw::subscribed(addr, 4, "fast", "link/#", 0).await;
    // About 18 of these messages a second.
    fault(
        &server,
        json!({"match": {"client": "throttled"}, "action": "throttle", "bytes_per_sec": 2000}),
    )
    .await;
    let (mut publ, _) = Raw::open(addr, &connect(4, "pub", true, 0, &[], None)).await;
    let mut burst = Vec::new();
    for i in 0..N {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(100, b'.');
        burst.extend_from_slice(&publish(4, "link/n", 0, 0, &[], &payload));
    }
    publ.send(&burst).await;
    // Paced to the throttled client, these would take about a minute.
    tokio::time::timeout(WAIT, async {
        for i in 0..N {
            let (_, _, payload) = fast.publish(4).await;
            assert_eq!(payload[..4], i.to_be_bytes(), "in order, none lost");
        }
    })
    .await
    .expect("every message within 10 s: the publisher was not paced to the throttled client");
    let (_, clients) = server.get("/api/v1/mqtt/clients").await;
    let throttled = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "throttled")
        .unwrap();
    assert!(
        throttled["counters"]["dropped_queue_full"]
            .as_u64()
            .unwrap()
            > 0,
        "{throttled}"
    );
    // Taken over midway through its slow writes, the old connection ends
    // now, not when those writes would have.
    let (_new, _) = Raw::open(addr, &connect(4, "throttled", true, 0, &[], None)).await;
    tokio::time::timeout(WAIT, async { while old.packet().await.is_some() {} })
        .await
        .expect("the old connection closed within 10 s");
    server.stop().await;
}

#[tokio::test]
async fn packets_over_the_maximum_packet_size_are_refused_and_counted() {
    // By default the broker takes up to 16 MiB, and says so in CONNACK
    // (Maximum Packet Size, property 0x27).
    let server = TestServer::with_scenario("", |_| {}).await;
    let (_c, connack) = Raw::open(server.mqtt, &connect(5, "default", true, 0, &[], None)).await;
    assert!(
        connack
            .windows(5)
            .any(|w| w == [0x27, 0x01, 0x00, 0x00, 0x00]),
        "16 MiB advertised: {connack:?}"
    );
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.mqtt_max_packet_size = 2048).await;
    let (mut sub, connack) =
        Raw::open(server.mqtt, &connect(5, "watcher", true, 0, &[], None)).await;
    assert!(
        connack
            .windows(5)
            .any(|w| w == [0x27, 0x00, 0x00, 0x08, 0x00]),
        "2048 advertised: {connack:?}"
    );
    sub.send(&subscribe(5, 1, "fw/#", 0)).await;
    suback(&mut sub).await;

    // Under the maximum: delivered as usual.
    let (mut v5, _) = Raw::open(server.mqtt, &connect(5, "fw-5", true, 0, &[], None)).await;
    v5.send(&publish(5, "fw/ok", 0, 0, &[], &[7u8; 1500])).await;
    let (topic, _, payload) = sub.publish(5).await;
    assert_eq!((topic.as_str(), payload.len()), ("fw/ok", 1500));

    // Over it: MQTT 5 gets DISCONNECT 0x95 (Packet too large), then EOF.
    v5.send(&publish(5, "fw/image", 0, 0, &[], &[7u8; 4000]))
        .await;
    let (first, body) = v5.packet().await.expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xe0, 0x95), "packet too large");
    assert!(v5.packet().await.is_none(), "then closed");

    // MQTT 3.1.1 has no DISCONNECT from the server: the socket closes.
    let (mut v4, _) = Raw::open(server.mqtt, &connect(4, "fw-4", true, 0, &[], None)).await;
    v4.send(&publish(4, "fw/image", 0, 0, &[], &[7u8; 4000]))
        .await;
    assert!(v4.packet().await.is_none(), "closed without a packet");

    // Neither image reached the subscriber; both refusals are counted and
    // the limit is in /health and /metrics.
    sub.silent(Duration::from_millis(200)).await;
    let (_, health) = server.get("/api/v1/health").await;
    assert_eq!(health["mqtt_broker"]["packets_too_large"], 2, "{health}");
    assert_eq!(
        health["limits"]["mqtt"]["max_packet_size"], 2048,
        "{health}"
    );
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("iotmock_mqtt_packets_too_large_total 2")
            && metrics.contains("iotmock_mqtt_max_packet_size_bytes 2048"),
        "{metrics}"
    );
    server.stop().await;
}

/// PUBLISH packets already in a raw client's socket, read without
/// waiting for more.
fn publishes_already_received(raw: &mut Raw) -> usize {
    let mut chunk = [0u8; 65536];
    loop {
        match raw.s.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    let mut count = 0;
    let mut i = 0;
    while i + 1 < raw.buf.len() {
        let first = raw.buf[i];
        let (mut len, mut j, mut shift) = (0usize, i + 1, 0);
        loop {
            let b = raw.buf[j];
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            j += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        assert!(j + len <= raw.buf.len(), "a packet cut short");
        if first >> 4 == 3 {
            count += 1;
        }
        i = j + len;
    }
    raw.buf.clear();
    count
}

const TWENTY_DEVICES: &str = r#"
[[fleet]]
id_pattern = "b-{n}"
count = 20
[[fleet.sensors]]
plugin = "temperature"
interval_ms = 1000
"#;

#[tokio::test]
async fn an_advance_with_wait_delivered_returns_after_subscribers_have_the_span() {
    let server = TestServer::with_scenario(TWENTY_DEVICES, |c| {
        c.clock = iotmock::ClockMode::Manual;
    })
    .await;
    let mut sub = Raw::subscribed(server.mqtt, 5, "watcher", "devices/+/telemetry/#", 0).await;
    let published = |h: &Value| h["telemetry"]["published"].as_u64().unwrap();
    let (_, health) = server.get("/api/v1/health").await;
    let before = published(&health);

    // QoS 0: every reading of the span is in the subscriber's socket when
    // the advance answers (read here without waiting).
    let (status, clock) = server
        .post(
            "/api/v1/clock/advance",
            json!({"ms": 10_000, "wait_delivered": true}),
        )
        .await;
    assert_eq!(status, 200, "{clock}");
    let got = publishes_already_received(&mut sub);
    let (_, health) = server.get("/api/v1/health").await;
    let span = published(&health) - before;
    assert!(span >= 200, "20 devices for 10 s: {span}");
    assert_eq!(got as u64, span, "every reading of the span had arrived");

    // QoS 1 counts once acknowledged: a subscriber that never sends PUBACK
    // holds the barrier until its timeout, and the answer names it. (Acks
    // of commands are QoS 1; readings are QoS 0.)
    let _mute = Raw::subscribed(server.mqtt, 5, "mute", "devices/+/acks/+", 1).await;
    let (status, command) = server
        .post("/api/v1/devices/b-1/commands", json!({"name": "ping"}))
        .await;
    assert_eq!(status, 202, "{command}");
    let (status, problem) = server
        .post(
            "/api/v1/clock/advance",
            json!({"ms": 2_000, "wait_delivered": true, "wait_timeout_ms": 300}),
        )
        .await;
    assert_eq!(status, 504, "{problem}");
    assert_eq!(
        problem["type"], "https://iotmock.dev/problems/delivery-timeout",
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("mute (0 queued, ") && detail.contains(" unacknowledged"),
        "{detail}"
    );
    assert!(!detail.contains("watcher"), "{detail}");
    let (status, problem) = server
        .post(
            "/api/v1/clock/advance",
            json!({"ms": 1_000, "wait_delivered": true, "wait_timeout_ms": 600_000}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    server.stop().await;
}

/// Firmware often writes CONNECT and its first packets in one go, without
/// waiting for CONNACK: the packets behind the CONNECT are handled at once,
/// not when the client next sends something.
#[tokio::test]
async fn packets_sent_with_the_connect_in_one_write_are_handled() {
    let server = TestServer::with_scenario("", |_| {}).await;
    for level in [4u8, 5] {
        let topic = format!("pipelined/{level}");
        let mut burst = connect(level, &format!("eager-{level}"), true, 0, &[], None);
        burst.extend(subscribe(level, 1, &topic, 1));
        burst.extend(publish(level, &topic, 1, 2, &[], b"hello"));
        let s = TcpStream::connect(server.mqtt).await.unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        raw.send(&burst).await;
        let mut seen = Vec::new();
        // CONNACK, SUBACK, PUBACK and the message itself (its own
        // subscription), in whichever order the last two come.
        while seen.len() < 4 {
            let (first, _) = raw
                .packet()
                .await
                .unwrap_or_else(|| panic!("level {level}: the connection closed after {seen:x?}"));
            seen.push(first >> 4);
        }
        assert_eq!(
            seen[..2],
            [2, 9],
            "level {level}: CONNACK then SUBACK, got {seen:?}"
        );
        let mut rest = seen[2..].to_vec();
        rest.sort();
        assert_eq!(
            rest,
            [3, 4],
            "level {level}: PUBLISH and PUBACK, got {seen:?}"
        );
    }
    server.stop().await;
}

/// SUBSCRIBE (MQTT 5) with properties, such as a subscription identifier.
fn subscribe_v5_with(pid: u16, filter: &str, options: u8, p: &[u8]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    props(p, &mut b);
    string(filter.as_bytes(), &mut b);
    b.push(options);
    packet(0x82, &b)
}

#[tokio::test]
async fn one_publish_reaches_every_subscriber_with_its_own_version_qos_flags_and_identifiers() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    // Subscription identifier 7 (property 0x0B), QoS 1.
    let (mut ids, _) = Raw::open(addr, &connect(5, "with-id", true, 0, &[], None)).await;
    ids.send(&subscribe_v5_with(1, "fan/#", 1, &[0x0B, 7]))
        .await;
    suback(&mut ids).await;
    let mut plain = Raw::subscribed(addr, 5, "plain", "fan/#", 0).await;
    // Retain as published (option 0x08), QoS 1.
    let mut rap = Raw::subscribed(addr, 5, "rap", "fan/#", 0x09).await;
    let mut old = Raw::subscribed(addr, 4, "v311", "fan/#", 1).await;

    let (mut publ, _) = Raw::open(addr, &connect(5, "pub", true, 0, &[], None)).await;
    let mut p = Vec::new();
    user_property("k", "v", &mut p);
    // QoS 1, retained.
    let mut first = publish(5, "fan/a", 1, 11, &p, b"one");
    first[0] |= 0x01;
    publ.send(&first).await;
    publ.send(&publish(5, "fan/a", 1, 12, &p, b"two")).await;

    let mut with_id = p.clone();
    with_id.extend_from_slice(&[0x0B, 7]);
    for (raw, level, first_byte, props, name) in [
        (&mut ids, 5, 0x32, &with_id, "with-id"),
        (&mut plain, 5, 0x30, &p, "plain"),
        (&mut rap, 5, 0x33, &p, "rap"),
        (&mut old, 4, 0x32, &Vec::new(), "v311"),
    ] {
        let one = raw.publish_parts(level).await;
        assert_eq!(one.first, first_byte, "{name}: QoS and retain of its own");
        assert_eq!(one.topic, "fan/a", "{name}");
        assert_eq!(&one.props, props, "{name}: its own properties");
        assert_eq!(one.payload, b"one", "{name}");
        let two = raw.publish_parts(level).await;
        assert_eq!(two.first, first_byte & !0x01, "{name}: not retained");
        assert_eq!(&two.props, props, "{name}");
        assert_eq!(two.payload, b"two", "{name}");
        if first_byte & 0x06 != 0 {
            let (a, b) = (one.pid.unwrap(), two.pid.unwrap());
            assert!(a != 0 && b != 0 && a != b, "{name}: packet ids {a} {b}");
        } else {
            assert_eq!((one.pid, two.pid), (None, None), "{name}");
        }
    }

    // The retained message, to a subscriber that comes later: retain set,
    // the publisher's properties, QoS 1 granted.
    let (mut late, _) = Raw::open(addr, &connect(5, "late", true, 0, &[], None)).await;
    late.send(&subscribe_v5_with(1, "fan/#", 1, &[0x0B, 9]))
        .await;
    let retained = late.publish_parts(5).await;
    assert_eq!(retained.first, 0x33);
    let mut late_props = p.clone();
    late_props.extend_from_slice(&[0x0B, 9]);
    assert_eq!(retained.props, late_props);
    assert_eq!(retained.payload, b"one");
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_gets_a_publishers_messages_in_order_while_it_reads_slowly_or_fast() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    const N: u32 = 1500;
    // Reads nothing until every message is sent: its socket fills, so
    // writes to it are cut short and the rest waits in its session.
    let mut slow = Raw::subscribed(addr, 4, "slow", "seq/#", 1).await;
    // Reads as fast as it can.
    let mut fast = Raw::subscribed(addr, 5, "fast", "seq/#", 0).await;
    let fast_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            let (_, _, payload) = fast.publish(5).await;
            got.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
        }
        got
    });

    // Every third message QoS 1, the rest QoS 0; 4 KiB each, written in
    // bursts of 50 packets.
    let (mut publ, _) = Raw::open(addr, &connect(4, "seq-pub", true, 0, &[], None)).await;
    let mut burst = Vec::new();
    for i in 0..N {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(4096, b'.');
        let qos = u8::from(i % 3 == 0);
        burst.extend_from_slice(&publish(
            4,
            "seq/n",
            qos,
            (i % 60_000 + 1) as u16,
            &[],
            &payload,
        ));
        if i % 50 == 49 {
            publ.send(&burst).await;
            burst.clear();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    publ.send(&burst).await;

    let fast_got = tokio::time::timeout(WAIT, fast_reader)
        .await
        .expect("the fast subscriber got everything in time")
        .unwrap();
    assert_eq!(
        fast_got,
        (0..N).collect::<Vec<_>>(),
        "the fast subscriber, in order"
    );

    let mut slow_got = Vec::new();
    while slow_got.len() < N as usize {
        let m = slow.publish_parts(4).await;
        if let Some(pid) = m.pid {
            let mut ack = vec![0x40, 2];
            ack.extend_from_slice(&pid.to_be_bytes());
            slow.send(&ack).await;
        }
        slow_got.push(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
    }
    assert_eq!(
        slow_got,
        (0..N).collect::<Vec<_>>(),
        "the slow subscriber, in order"
    );
    server.stop().await;
}

#[tokio::test]
async fn packets_of_any_size_arrive_whole_however_the_bytes_are_cut() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    let mut sub = Raw::subscribed(addr, 4, "sizes-sub", "sizes/#", 0).await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..6 {
            let (topic, _, payload) = sub.publish(4).await;
            got.push((topic, payload));
        }
        got
    });

    // Payloads on both sides of the broker's 16 KiB read, one of them a
    // megabyte, each filled with its own pattern.
    let sizes = [3usize, 20 * 1024, 1024 * 1024, 1, 16 * 1024 - 5, 100 * 1024];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|b| (b * 7 + i * 31) as u8).collect())
        .collect();
    let mut bytes = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        bytes.extend_from_slice(&publish(4, &format!("sizes/{i}"), 0, 0, &[], p));
    }
    // The first four in one write; the rest cut at odd places, the
    // broker reading whatever has come between pauses.
    let first_four: usize = (0..4)
        .map(|i| publish(4, &format!("sizes/{i}"), 0, 0, &[], &payloads[i]).len())
        .sum();
    let (head, tail) = bytes.split_at(first_four);
    let (mut publ, _) = Raw::open(addr, &connect(4, "sizes-pub", true, 0, &[], None)).await;
    publ.send(head).await;
    for piece in tail.chunks(7_001) {
        publ.send(piece).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let got = tokio::time::timeout(WAIT, reader)
        .await
        .expect("every packet arrived in time")
        .unwrap();
    for (i, (topic, payload)) in got.iter().enumerate() {
        assert_eq!(topic, &format!("sizes/{i}"));
        assert_eq!(payload.len(), sizes[i], "payload {i}'s length");
        assert!(payload == &payloads[i], "payload {i} arrived altered");
    }
    server.stop().await;
}

/// Packets from different clients are handled in the order they arrived,
/// as a single-threaded broker handles them: a SUBSCRIBE sent before
/// another client's PUBLISH gets that PUBLISH, even when the broker is
/// busy and finds both sockets ready at once. (The test runs on two
/// threads, so a broker that ran its connections on the test's runtime
/// would be scheduled as a multi-thread runtime schedules them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_sent_before_another_clients_publish_gets_it() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    // Keeps the broker busy, so events pile up between its wake-ups.
    let mut noise_sub = Raw::subscribed(addr, 4, "noise-sub", "noise", 0).await;
    let drain = tokio::spawn(async move { while noise_sub.packet().await.is_some() {} });
    let (mut noise, _) = Raw::open(addr, &connect(4, "noise", true, 0, &[], None)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = tokio::spawn({
        let stop = stop.clone();
        async move {
            let burst = publish(4, "noise", 0, 0, &[], &[0; 64]).repeat(64);
            while !stop.load(Ordering::Relaxed) {
                noise.send(&burst).await;
                tokio::task::yield_now().await;
            }
        }
    });

    let (mut sub, _) = Raw::open(addr, &connect(5, "order-sub", true, 0, &[], None)).await;
    let (mut publ, _) = Raw::open(addr, &connect(5, "order-pub", true, 0, &[], None)).await;
    let mut missed = Vec::new();
    for round in 0..100u16 {
        // The broker is done writing to this client: a packet that came
        // while it wrote would be queued behind the write in the kernel.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let topic = format!("order/{round}");
        sub.send(&subscribe(5, round + 1, &topic, 0)).await;
        publ.send(&publish(5, &topic, 0, 0, &[], b"first")).await;
        suback(&mut sub).await;
        // Sent only after the SUBACK: had the first been handled before
        // the SUBSCRIBE, this would be what arrives.
        publ.send(&publish(5, &topic, 0, 0, &[], b"second")).await;
        let (got_topic, _, payload) = sub.publish(5).await;
        assert_eq!(got_topic, topic, "round {round}");
        if payload == b"first" {
            let (got_topic, _, payload) = sub.publish(5).await;
            assert_eq!(
                (got_topic.as_str(), payload.as_slice()),
                (topic.as_str(), &b"second"[..])
            );
        } else {
            assert_eq!(payload, b"second", "round {round}");
            missed.push(round);
        }
    }
    // A broker that serves the later socket first misses most rounds (73
    // to 83 of 100 measured); the kernel itself may put a packet behind
    // one sent after it on another socket now and then, on a loaded
    // machine.
    assert!(
        missed.len() <= 5,
        "rounds whose PUBLISH was handled before the SUBSCRIBE sent ahead of it: {missed:?}"
    );
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    server.stop().await;
    drain.abort();
}

/// A subscriber that reads more slowly than a publisher sends is not
/// flooded into dropping: the publisher is read only as fast as the
/// subscriber drains (as TCP paces a sender). A subscriber that does not
/// read at all holds no one back: its queue fills and drops, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_paces_its_publisher_and_one_that_never_reads_holds_no_one_back() {
    let server = TestServer::with_scenario("", |c| c.mqtt_max_queued = 1000).await;
    let addr = server.mqtt;
    const N: u32 = 20_000;
    // Subscribes, then never reads.
    let stuck = Raw::subscribed(addr, 4, "stuck", "pace/#", 0).await;
    let mut slow = Raw::subscribed(addr, 4, "slow", "pace/#", 0).await;
    let reader = tokio::spawn(async move {
        // Until the last message, or nothing for a while.
        let mut got = Vec::with_capacity(N as usize);
        while let Ok(Some((_, body))) = slow.packet_within(WAIT).await {
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let payload = &body[2 + topic_len..];
            let n = u32::from_be_bytes(payload[..4].try_into().unwrap());
            got.push(n);
            if n == N - 1 {
                break;
            }
            if got.len() % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        got
    });
    // QoS 0, 1 KiB each, as fast as the broker takes them.
    let (mut publ, _) = Raw::open(addr, &connect(4, "fast-pub", true, 0, &[], None)).await;
    let mut burst = Vec::new();
    for i in 0..N {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(1024, b'.');
        burst.extend_from_slice(&publish(4, "pace/n", 0, 0, &[], &payload));
        if i % 100 == 99 {
            publ.send(&burst).await;
            burst.clear();
        }
    }
    let got = reader.await.unwrap();
    let (_, drops) = server.get("/api/v1/mqtt/drops").await;
    let items = drops["items"].as_array().unwrap();
    let slow_drops = items.iter().filter(|d| d["client_id"] == "slow").count();
    assert!(
        got.iter().copied().eq(0..N),
        "every message, in order: got {} of {N}, the first gap after {:?}; {slow_drops} dropped for it",
        got.len(),
        got.iter().zip(0..).find(|(n, i)| **n != *i).map(|(_, i)| i)
    );
    assert!(
        !items.is_empty() && items.iter().all(|d| d["client_id"] == "stuck"),
        "only the client that never reads lost messages: {drops}"
    );
    // Both are counted: the publisher waited for `slow`, and stopped
    // waiting for `stuck`.
    assert!(server.metric("iotmock_mqtt_publishers_paced_total").await > 0);
    assert!(
        server
            .metric("iotmock_mqtt_subscribers_stalled_total")
            .await
            > 0
    );
    drop(stuck);
    server.stop().await;
}
