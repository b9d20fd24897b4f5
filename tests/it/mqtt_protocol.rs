//! What the broker answers a client that breaks MQTT (a refused CONNECT
//! says why in its CONNACK, a malformed packet closes the connection with
//! the DISCONNECT reason code MQTT 5 gives it), and the parts of MQTT a
//! client relies on beyond publish and subscribe: unsubscribing, topic
//! aliases, No Local, subscription identifiers, wills sent on request,
//! sessions that expire on the server's clock, queues with a stated
//! capacity, and deliveries resent after a reconnect or a restart.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;

use crate::support::wire::{
    Raw, Will, connack_props, connect, packet, prop_u16, props, publish, string, suback, subscribe,
    unsubscribe,
};
use crate::support::{TestServer, metric};

/// Sends `bytes` on a new connection: the first packet back, or `None`
/// when the broker closes it without a word.
async fn first_answer(addr: SocketAddr, bytes: &[u8]) -> (Raw, Option<(u8, Vec<u8>)>) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let mut raw = Raw { s, buf: Vec::new() };
    raw.send(bytes).await;
    let answer = raw.packet().await;
    (raw, answer)
}

/// An MQTT 5 client that sends `bad` once connected: the reason code of
/// the DISCONNECT the broker answers with, after checking that the
/// connection is then closed.
async fn disconnect_code(addr: SocketAddr, bad: &[u8]) -> u8 {
    let (mut c, _) = Raw::open(addr, &connect(5, "", true, 0, &[], None)).await;
    c.send(bad).await;
    loop {
        let (first, body) = c.packet().await.expect("a DISCONNECT before the close");
        if first == 0xe0 {
            assert!(c.packet().await.is_none(), "closed after the DISCONNECT");
            return body[0];
        }
    }
}

#[tokio::test]
async fn a_refused_connect_says_why_in_its_connack() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;

    // Protocol level 6: refused with 0x01 in the 3.1.1 form, since the
    // client's own level is not one the broker speaks.
    let mut level6 = connect(5, "six", true, 0, &[], None);
    level6[8] = 6;
    let (mut raw, answer) = first_answer(addr, &level6).await;
    assert_eq!(answer, Some((0x20, vec![0x00, 0x01])));
    assert!(raw.packet().await.is_none(), "then closed");

    // 3.1.1 and 3.1: an empty client id needs a clean session (3.1.1) and
    // is never allowed in 3.1: "identifier rejected".
    let (_, answer) = first_answer(addr, &connect(4, "", false, 0, &[], None)).await;
    assert_eq!(answer, Some((0x20, vec![0x00, 0x02])));
    let (_, answer) = first_answer(addr, &connect(3, "", true, 0, &[], None)).await;
    assert_eq!(answer, Some((0x20, vec![0x00, 0x02])));

    // MQTT 5: enhanced authentication is not offered (0x8C), a will topic
    // with a wildcard is not a topic name (0x90), a Receive Maximum of 0
    // is a protocol error (0x82).
    let mut scram = vec![0x15];
    string(b"SCRAM-SHA-1", &mut scram);
    let (_, answer) = first_answer(addr, &connect(5, "scram", true, 0, &scram, None)).await;
    let (first, body) = answer.expect("a CONNACK");
    assert_eq!((first, body[1]), (0x20, 0x8c));
    let will = Will {
        topic: "wills/#",
        payload: b"x",
        qos: 0,
        delay_secs: None,
        props: &[],
    };
    let (_, answer) = first_answer(addr, &connect(5, "w", true, 0, &[], Some(&will))).await;
    let (first, body) = answer.expect("a CONNACK");
    assert_eq!((first, body[1]), (0x20, 0x90));
    let (_, answer) = first_answer(addr, &connect(5, "rm0", true, 0, &[0x21, 0, 0], None)).await;
    let (first, body) = answer.expect("a CONNACK");
    assert_eq!((first, body[1]), (0x20, 0x82));

    // Not MQTT at all, a first packet that is not a CONNECT, and a CONNECT
    // with bytes after its payload: closed without an answer, and counted.
    let before = server.metric("iotmock_mqtt_protocol_errors_total").await;
    let mut not_mqtt = connect(4, "x", true, 0, &[], None);
    not_mqtt[7] = b'X';
    let mut trailing = connect(4, "trailing", true, 0, &[], None);
    trailing[1] += 1;
    trailing.push(0);
    for bytes in [
        not_mqtt,
        publish(4, "a", 0, 0, &[], b"no CONNECT first"),
        trailing,
    ] {
        let (_, answer) = first_answer(addr, &bytes).await;
        assert_eq!(answer, None, "closed without a CONNACK");
    }
    let after = server.metric("iotmock_mqtt_protocol_errors_total").await;
    assert_eq!(after, before + 3);
    server.stop().await;
}

#[tokio::test]
async fn malformed_packets_close_the_connection_with_their_reason_code() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    let malformed = 0x81;
    let protocol_error = 0x82;
    let topic_name_invalid = 0x90;
    let payload_format_invalid = 0x99;
    // A SUBSCRIBE with properties `p` and one filter.
    let subscribe_with = |p: &[u8], filter: &str, options: u8| {
        let mut b = vec![0, 1];
        props(p, &mut b);
        string(filter.as_bytes(), &mut b);
        b.push(options);
        packet(0x82, &b)
    };
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "PUBLISH with QoS 3",
            packet(0x36, &[0, 1, b'a', 0, 1, 0]),
            malformed,
        ),
        (
            "DUP on a QoS 0 PUBLISH",
            packet(0x38, &[0, 1, b'a', 0]),
            malformed,
        ),
        ("packet id 0", publish(5, "a", 1, 0, &[], b"x"), malformed),
        ("topic not UTF-8", packet(0x30, &[0, 1, 0xff, 0]), malformed),
        (
            "topic with a wildcard",
            publish(5, "a/+", 0, 0, &[], b"x"),
            topic_name_invalid,
        ),
        (
            "truncated property",
            publish(5, "a", 0, 0, &[0x02, 0, 0], b""),
            malformed,
        ),
        (
            "property not allowed on PUBLISH",
            publish(5, "a", 0, 0, &[0x11, 0, 0, 0, 1], b"x"),
            protocol_error,
        ),
        (
            "a property given twice",
            publish(5, "a", 0, 0, &[0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9], b"x"),
            protocol_error,
        ),
        (
            "payload format indicator 2",
            publish(5, "a", 0, 0, &[0x01, 2], b"x"),
            protocol_error,
        ),
        (
            "a UTF-8 payload that is not",
            publish(5, "a", 0, 0, &[0x01, 1], &[0xff, 0xfe]),
            payload_format_invalid,
        ),
        (
            "content type not UTF-8",
            publish(5, "a", 0, 0, &[0x03, 0, 1, 0xff], b"x"),
            malformed,
        ),
        (
            "response topic with a wildcard",
            publish(5, "a", 0, 0, &[0x08, 0, 3, b'r', b'/', b'#'], b"x"),
            protocol_error,
        ),
        (
            "SUBSCRIBE without a filter",
            packet(0x82, &[0, 1, 0]),
            protocol_error,
        ),
        (
            "UNSUBSCRIBE without a filter",
            packet(0xa2, &[0, 1, 0]),
            protocol_error,
        ),
        (
            "subscription identifier 0",
            subscribe_with(&[0x0b, 0], "a", 0),
            protocol_error,
        ),
        (
            "No Local on a shared subscription",
            subscribe_with(&[], "$share/g/a", 0x04),
            protocol_error,
        ),
        (
            "acknowledgement with reserved flags",
            packet(0x42, &[0, 1]),
            malformed,
        ),
        (
            "acknowledgement without a packet id",
            packet(0x40, &[]),
            malformed,
        ),
        ("PINGREQ with a body", packet(0xc0, &[0]), malformed),
        (
            "a second CONNECT",
            connect(5, "again", true, 0, &[], None),
            protocol_error,
        ),
        ("AUTH", packet(0xf0, &[0x18, 0]), protocol_error),
        (
            "a CONNACK from a client",
            packet(0x20, &[0, 0, 0]),
            protocol_error,
        ),
        (
            "session expiry on DISCONNECT after 0 on CONNECT",
            packet(0xe0, &[0x00, 5, 0x11, 0, 0, 0, 10]),
            protocol_error,
        ),
        (
            "remaining length over 4 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            malformed,
        ),
    ];
    for (what, bytes, code) in cases {
        assert_eq!(
            disconnect_code(addr, &bytes).await,
            code,
            "{what}: DISCONNECT reason code"
        );
    }

    // MQTT 3.1.1 has no DISCONNECT from the server: a DISCONNECT with a
    // body just closes the connection.
    let (mut c, _) = Raw::open(addr, &connect(4, "old", true, 0, &[], None)).await;
    c.send(&packet(0xe0, &[0])).await;
    assert!(c.packet().await.is_none(), "closed, no packet");
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_says_which_filters_existed() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    let (mut publ, _) = Raw::open(addr, &connect(4, "pub", true, 0, &[], None)).await;
    for level in [5u8, 4] {
        let id = format!("unsub-{level}");
        let (mut c, _) = Raw::open(addr, &connect(level, &id, true, 0, &[], None)).await;
        c.send(&subscribe(level, 1, &format!("{id}/a"), 0)).await;
        suback(&mut c).await;
        c.send(&subscribe(level, 2, &format!("{id}/b"), 0)).await;
        suback(&mut c).await;
        c.send(&unsubscribe(
            level,
            3,
            &[&format!("{id}/a"), "never/subscribed"],
        ))
        .await;
        let (first, body) = c.packet().await.expect("UNSUBACK");
        assert_eq!(first, 0xb0);
        if level == 5 {
            // Packet id, no properties, then one reason code per filter:
            // success, "no subscription existed".
            assert_eq!(body, [0, 3, 0, 0x00, 0x11]);
        } else {
            assert_eq!(body, [0, 3], "3.1.1: the packet id only");
        }
        publ.send(&publish(4, &format!("{id}/a"), 0, 0, &[], b"gone"))
            .await;
        publ.send(&publish(4, &format!("{id}/b"), 0, 0, &[], b"kept"))
            .await;
        let (topic, _, payload) = c.publish(level).await;
        assert_eq!((topic, payload), (format!("{id}/b"), b"kept".to_vec()));
        c.silent(Duration::from_millis(200)).await;
        // The broker lists what is left.
        let (_, clients) = server.get("/api/v1/mqtt/clients").await;
        let listed = clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id.as_str())
            .cloned()
            .expect("listed");
        let filters: Vec<&String> = listed["subscriptions"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(filters, [&format!("{id}/b")], "{listed}");
    }
    server.stop().await;
}

#[tokio::test]
async fn topic_aliases_no_local_and_subscription_identifiers() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    let (mut me, _) = Raw::open(addr, &connect(5, "me", true, 0, &[], None)).await;
    // No Local (0x04) at QoS 1 with subscription identifier 7.
    let mut b = vec![0, 1];
    props(&[0x0b, 7], &mut b);
    string(b"room/#", &mut b);
    b.push(0x04 | 1);
    me.send(&packet(0x82, &b)).await;
    suback(&mut me).await;

    // My own publish is not sent back to me.
    me.send(&publish(5, "room/mine", 0, 0, &[], b"echo")).await;
    me.silent(Duration::from_millis(200)).await;

    // Another client sets alias 1 with its first publish and uses it
    // alone with the second: both arrive on the full topic, carrying my
    // subscription identifier.
    let (mut other, _) = Raw::open(addr, &connect(5, "other", true, 0, &[], None)).await;
    other
        .send(&publish(5, "room/long/topic", 0, 0, &[0x23, 0, 1], b"1"))
        .await;
    other.send(&publish(5, "", 0, 0, &[0x23, 0, 1], b"2")).await;
    for expected in [b"1", b"2"] {
        let (topic, p, payload) = me.publish(5).await;
        assert_eq!(topic, "room/long/topic");
        assert_eq!(payload, expected);
        assert_eq!(p, [0x0b, 7], "subscription identifier, no alias");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_will_is_sent_when_the_client_disconnects_asking_for_it() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let mut watcher = Raw::subscribed(server.mqtt, 5, "watcher", "wills/#", 0).await;
    // Payload format, content type, response topic, correlation data and
    // a user property on the will reach the subscriber with it.
    let mut wp = vec![0x01, 1, 0x03];
    string(b"text/plain", &mut wp);
    wp.push(0x08);
    string(b"replies/w", &mut wp);
    wp.push(0x09);
    string(b"c1", &mut wp);
    wp.push(0x26);
    string(b"k", &mut wp);
    string(b"v", &mut wp);
    let will = Will {
        topic: "wills/leaving",
        payload: b"bye",
        qos: 0,
        delay_secs: None,
        props: &wp,
    };
    let (mut c, _) = Raw::open(
        server.mqtt,
        &connect(5, "leaving", true, 0, &[], Some(&will)),
    )
    .await;
    // DISCONNECT with reason 0x04, "disconnect with will message".
    c.send(&packet(0xe0, &[0x04, 0])).await;
    let (topic, p, payload) = watcher.publish(5).await;
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("wills/leaving", &b"bye"[..])
    );
    assert_eq!(p, wp, "the will's properties, in order");
    let (_, page) = server.get("/api/v1/mqtt/messages?topic=wills/%23").await;
    let item = &page["items"][0];
    assert_eq!(item["origin"], "will", "{item}");
    assert_eq!(item["client_id"], "leaving");
    server.stop().await;
}

/// A session expiry interval (property 0x11) of `secs`.
fn expiry(secs: u32) -> Vec<u8> {
    let mut p = vec![0x11];
    p.extend_from_slice(&secs.to_be_bytes());
    p
}

#[tokio::test]
async fn sessions_expire_on_the_servers_clock_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let start = |data: std::path::PathBuf| {
        TestServer::with_scenario("", move |c| {
            c.clock = iotmock::ClockMode::Manual;
            c.data_dir = Some(data);
        })
    };
    let server = start(data.clone()).await;
    let sixty = expiry(60);
    for id in ["keep", "gone", "brief"] {
        let (mut c, connack) = Raw::open(server.mqtt, &connect(5, id, true, 0, &sixty, None)).await;
        assert_eq!(connack[0], 0, "{id}: a new session");
        c.send(&subscribe(5, 1, &format!("{id}/#"), 1)).await;
        suback(&mut c).await;
        if id == "brief" {
            // DISCONNECT setting the expiry to 0: the session ends now.
            c.send(&packet(0xe0, &[0x00, 5, 0x11, 0, 0, 0, 0])).await;
        } else {
            c.send(&packet(0xe0, &[0])).await;
        }
        assert!(c.packet().await.is_none());
        server.let_go(id).await;
    }
    let (mut brief, connack) =
        Raw::open(server.mqtt, &connect(5, "brief", false, 0, &sixty, None)).await;
    assert_eq!(connack[0], 0, "brief: no session to resume");
    brief
        .send(&packet(0xe0, &[0x00, 5, 0x11, 0, 0, 0, 0]))
        .await;
    server.stop().await;

    // The sessions are stored with their expiry and count again from the
    // restart: at 30 s "keep" is still there; at 61 s "gone" has ended.
    let server = start(data.clone()).await;
    server.advance(30_000).await;
    let (mut keep, connack) =
        Raw::open(server.mqtt, &connect(5, "keep", false, 0, &sixty, None)).await;
    assert_eq!(connack[0], 1, "keep: session present after the restart");
    keep.send(&packet(0xe0, &[0])).await;
    server.let_go("keep").await;
    server.advance(31_000).await;
    let (_, connack) = Raw::open(server.mqtt, &connect(5, "gone", false, 0, &sixty, None)).await;
    assert_eq!(connack[0], 0, "gone: expired 60 s after the restart");
    let (_, connack) = Raw::open(server.mqtt, &connect(5, "brief", false, 0, &sixty, None)).await;
    assert_eq!(connack[0], 0, "brief: ended and not stored");
    server.stop().await;
}

#[tokio::test]
async fn a_full_session_queue_drops_the_oldest_and_counts_it() {
    let server = TestServer::with_scenario("", |c| c.mqtt_max_queued = 2).await;
    let addr = server.mqtt;
    let (mut away, _) = Raw::open(addr, &connect(4, "away", false, 0, &[], None)).await;
    away.send(&subscribe(4, 1, "f/#", 1)).await;
    suback(&mut away).await;
    away.send(&packet(0xe0, &[])).await;
    drop(away);
    server.let_go("away").await;
    let (mut publ, _) = Raw::open(addr, &connect(4, "pub", true, 0, &[], None)).await;
    for (pid, topic) in [(1u16, "f/1"), (2, "f/2"), (3, "f/3")] {
        publ.send(&publish(4, topic, 1, pid, &[], b"m")).await;
        assert_eq!(publ.packet().await.unwrap().0, 0x40, "PUBACK");
    }
    // Each PUBACK came once the message was routed: the drop is logged.
    let (_, drops) = server.get("/api/v1/mqtt/drops").await;
    let dropped: Vec<(&str, &str, &str)> = drops["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["topic"].as_str().unwrap(),
                d["reason"].as_str().unwrap(),
                d["client_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(dropped, [("f/1", "queue_full", "away")], "{drops}");

    let (mut away, connack) = Raw::open(addr, &connect(4, "away", false, 0, &[], None)).await;
    assert_eq!(connack, [1, 0]);
    for expected in ["f/2", "f/3"] {
        let (first, body) = away.packet().await.expect("a queued PUBLISH");
        assert_eq!(first, 0x32);
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        assert_eq!(&body[2..2 + tl], expected.as_bytes());
        away.send(&packet(0x40, &body[2 + tl..4 + tl])).await;
    }
    away.silent(Duration::from_millis(200)).await;
    let metrics = server.get_text("/metrics").await;
    assert_eq!(metric(&metrics, "iotmock_mqtt_dropped_queue_full_total"), 1);
    server.stop().await;
}

#[tokio::test]
async fn unacknowledged_deliveries_are_resent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let addr = server.mqtt;
    let (mut keeper, _) = Raw::open(addr, &connect(4, "keeper", false, 0, &[], None)).await;
    keeper.send(&subscribe(4, 1, "r/#", 2)).await;
    suback(&mut keeper).await;
    let (mut publ, _) = Raw::open(addr, &connect(4, "pub", true, 0, &[], None)).await;
    publ.send(&publish(4, "r/1", 1, 1, &[], b"one")).await;
    assert_eq!(publ.packet().await.unwrap().0, 0x40, "PUBACK");
    publ.send(&publish(4, "r/2", 2, 2, &[], b"two")).await;
    assert_eq!(publ.packet().await.unwrap(), (0x50, vec![0, 2]), "PUBREC");
    publ.send(&packet(0x62, &[0, 2])).await;
    assert_eq!(publ.packet().await.unwrap(), (0x70, vec![0, 2]), "PUBCOMP");

    // The QoS 1 message is left unacknowledged; the QoS 2 one is received
    // (PUBREC) but not completed.
    let (first, body) = keeper.packet().await.expect("r/1");
    assert_eq!(first, 0x32);
    let pid1 = [body[5], body[6]];
    let (first, body) = keeper.packet().await.expect("r/2");
    assert_eq!(first, 0x34);
    let pid2 = [body[5], body[6]];
    keeper.send(&packet(0x50, &pid2)).await;
    assert_eq!(
        keeper.packet().await.unwrap(),
        (0x62, pid2.to_vec()),
        "PUBREL"
    );
    drop(keeper);
    drop(publ);
    server.stop().await;

    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (mut keeper, connack) =
        Raw::open(server.mqtt, &connect(4, "keeper", false, 0, &[], None)).await;
    assert_eq!(connack, [1, 0], "session present");
    // The PUBLISH again with DUP set, then the PUBREL again.
    let (first, body) = keeper.packet().await.expect("r/1 resent");
    assert_eq!(first, 0x3a, "QoS 1 with DUP");
    assert_eq!(&body[..5], b"\0\x03r/1");
    assert_eq!([body[5], body[6]], pid1);
    assert_eq!(&body[7..], b"one");
    assert_eq!(
        keeper.packet().await.unwrap(),
        (0x62, pid2.to_vec()),
        "PUBREL resent"
    );
    keeper.send(&packet(0x40, &pid1)).await;
    keeper.send(&packet(0x70, &pid2)).await;
    keeper.silent(Duration::from_millis(200)).await;
    keeper.send(&packet(0xe0, &[])).await;
    drop(keeper);
    server.let_go("keeper").await;
    server.stop().await;

    // Acknowledged: nothing is resent after another restart.
    let server = TestServer::with_scenario("", |c| c.data_dir = Some(data.clone())).await;
    let (mut keeper, connack) =
        Raw::open(server.mqtt, &connect(4, "keeper", false, 0, &[], None)).await;
    assert_eq!(connack, [1, 0]);
    keeper.silent(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_pubrec_with_an_error_ends_a_qos2_delivery() {
    let server = TestServer::with_scenario("", |_| {}).await;
    let addr = server.mqtt;
    let mut sub = Raw::subscribed(addr, 5, "picky", "q2/#", 2).await;
    let (mut publ, _) = Raw::open(addr, &connect(4, "pub", true, 0, &[], None)).await;
    let v = server
        .post(
            "/api/v1/mqtt/publish",
            json!({"topic": "q2/a", "payload": "no", "qos": 2}),
        )
        .await;
    assert_eq!(v.0, 202, "{}", v.1);
    let (first, body) = sub.packet().await.expect("q2/a");
    assert_eq!(first, 0x34);
    // PUBREC with 0x80 "unspecified error": no PUBREL follows.
    sub.send(&packet(0x50, &[body[6], body[7], 0x80])).await;
    sub.silent(Duration::from_millis(300)).await;
    publ.send(&publish(4, "q2/b", 0, 0, &[], b"next")).await;
    let (topic, _, payload) = sub.publish(5).await;
    assert_eq!((topic.as_str(), &payload[..]), ("q2/b", &b"next"[..]));
    server.stop().await;
}

/// `--mqtt-max-keep-alive`: an MQTT 5 client asking for a longer keep
/// alive (or none) is told the broker's in CONNACK and held to it; a
/// 3.1.1 client, which cannot be told, is refused.
#[tokio::test]
async fn a_maximum_keep_alive_is_told_to_mqtt5_clients_and_enforced() {
    let server = TestServer::with_scenario("", |c| c.mqtt_max_keep_alive = Some(1)).await;
    let addr = server.mqtt;
    for (asked, told) in [(120, Some(1)), (0, Some(1)), (1, None)] {
        let (_, connack) = Raw::open(addr, &connect(5, "ka", true, asked, &[], None)).await;
        assert_eq!(connack[1], 0, "accepted");
        assert_eq!(
            prop_u16(connack_props(&connack), 0x13),
            told,
            "Server Keep Alive for a client asking {asked} s"
        );
    }
    // Held to it, and listed so: silent for 1.5 s, it is disconnected
    // (0x8D).
    let (mut quiet, _) = Raw::open(addr, &connect(5, "quiet", true, 120, &[], None)).await;
    let (_, clients) = server.get("/api/v1/mqtt/clients").await;
    let listed = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "quiet");
    assert_eq!(listed.unwrap()["keep_alive"], 1, "{clients}");
    let started = std::time::Instant::now();
    let (first, body) = quiet.packet().await.expect("a DISCONNECT");
    assert_eq!((first, body[0]), (0xe0, 0x8d));
    assert!(started.elapsed() < Duration::from_secs(5));
    // MQTT 3.1.1: refused with 2 when it asks for more, welcome within.
    let (_, connack) = Raw::open(addr, &connect(4, "old", true, 120, &[], None)).await;
    assert_eq!(connack, [0, 2]);
    let (_, connack) = Raw::open(addr, &connect(4, "old", true, 1, &[], None)).await;
    assert_eq!(connack, [0, 0]);
    server.stop().await;
}

/// `--mqtt-server-topic-aliases`: the broker sends a topic once with an
/// alias, then the alias alone, and gives the least recently used alias
/// to a new topic; a client that allows none gets whole topics. A packet
/// a fault rule drops never carries the alias the client would miss.
#[tokio::test]
async fn the_broker_sets_topic_aliases_on_what_it_sends_when_the_client_allows() {
    let server = TestServer::with_scenario("", |c| c.mqtt_server_topic_aliases = 8).await;
    let addr = server.mqtt;
    // Topic Alias Maximum 2.
    let (mut two, _) = Raw::open(addr, &connect(5, "two", true, 0, &[0x22, 0, 2], None)).await;
    two.send(&subscribe(5, 1, "al/#", 2)).await;
    suback(&mut two).await;
    let mut none = Raw::subscribed(addr, 5, "none", "al/#", 2).await;
    // The first delivery to `two` is dropped on its way out.
    let (status, _) = server
        .post(
            "/api/v1/mqtt/faults",
            json!({"match": {"client": "two", "direction": "out", "packet": "publish"}, "action": "drop", "count": 1}),
        )
        .await;
    assert_eq!(status, 201);
    let (mut publ, _) = Raw::open(addr, &connect(5, "pub", true, 0, &[], None)).await;
    let sent = ["al/x", "al/a", "al/a", "al/b", "al/a", "al/c", "al/b"];
    for (i, topic) in sent.iter().enumerate() {
        let qos = (i % 3) as u8;
        publ.send(&publish(5, topic, qos, i as u16 + 1, &[], topic.as_bytes()))
            .await;
    }
    let mut got = Vec::new();
    for _ in 1..sent.len() {
        let p = two.publish_parts(5).await;
        if let Some(pid) = p.pid {
            let ack = if p.first & 0x06 == 2 { 0x40 } else { 0x50 };
            two.send(&packet(ack, &pid.to_be_bytes())).await;
        }
        got.push((
            p.topic,
            prop_u16(&p.props, 0x23),
            String::from_utf8(p.payload).unwrap(),
        ));
    }
    let want = |t: &str, a: u16, p: &str| (t.to_string(), Some(a), p.to_string());
    assert_eq!(
        got,
        [
            // al/x was dropped: al/a gets alias 1, not 2.
            want("al/a", 1, "al/a"),
            want("", 1, "al/a"),
            want("al/b", 2, "al/b"),
            want("", 1, "al/a"),
            // al/b is the least recently used: al/c takes its alias.
            want("al/c", 2, "al/c"),
            want("al/b", 1, "al/b"),
        ]
    );
    for topic in sent {
        let p = none.publish_parts(5).await;
        assert_eq!((p.topic.as_str(), prop_u16(&p.props, 0x23)), (topic, None));
    }
    server.stop().await;
}
