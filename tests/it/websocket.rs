//! MQTT over WebSocket (`--ws`) and over WebSocket in TLS (`--wss`), with
//! a real WebSocket client (tungstenite) carrying MQTT packets in binary
//! messages: a browser or a gateway talking to the same broker as TCP
//! clients, its will fired when the WebSocket closes without a DISCONNECT.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use iotmock::Config;
use iotmock::MqttTransport;
use rumqttc::QoS;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::wire::{Will, connect, publish, subscribe};
use crate::support::{TestServer, WAIT};

/// An MQTT client over a WebSocket: packets out as binary messages, and
/// packets in read across message boundaries.
struct WsClient<S> {
    ws: WebSocketStream<S>,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// The upgrade on `/mqtt` offering the `mqtt` subprotocol.
    async fn upgrade(stream: S, addr: SocketAddr, scheme: &str) -> Self {
        let mut request = format!("{scheme}://{addr}/mqtt")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("the WebSocket upgrade");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "mqtt",
            "the subprotocol is confirmed"
        );
        Self {
            ws,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next MQTT packet (first byte, body), or `None` when the
    /// WebSocket closes.
    async fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((first, body, used)) = split_packet(&self.buf) {
                self.buf.drain(..used);
                return Some((first, body));
            }
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a WebSocket message in time");
            match message {
                Some(Ok(Message::Binary(data))) => self.buf.extend_from_slice(&data),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A whole packet at the start of `buf`: (first byte, body, bytes used).
fn split_packet(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let body = buf.get(i..i + len)?;
    Some((buf[0], body.to_vec(), i + len))
}

fn ws_config() -> Config {
    let any = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    Config {
        ws: any,
        wss: any,
        ..Config::ephemeral()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_meets_tcp_clients_and_its_will_fires_on_close() {
    let server = TestServer::start(ws_config()).await;
    let mut tcp = server.subscribe("ws/#").await;
    let addr = server.server().transport_addr(MqttTransport::Ws).unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = WsClient::upgrade(stream, addr, "ws").await;
    let will = Will {
        topic: "ws/will",
        payload: b"lost",
        qos: 0,
        delay_secs: None,
        props: &[],
    };
    client
        .send(connect(4, "browser", true, 30, &[], Some(&will)))
        .await;
    assert_eq!(client.packet().await, Some((0x20, vec![0, 0])), "CONNACK");
    client.send(subscribe(4, 1, "to-browser/#", 0)).await;
    assert_eq!(client.packet().await.map(|p| p.0), Some(0x90), "SUBACK");

    // A TCP client's message reaches the WebSocket client ...
    tcp.client
        .publish("to-browser/1", QoS::AtMostOnce, false, b"hello".to_vec())
        .await
        .unwrap();
    let (first, body) = client.packet().await.expect("a PUBLISH");
    assert_eq!(first, 0x30);
    assert_eq!(&body[..14], b"\0\x0cto-browser/1");
    assert_eq!(&body[14..], b"hello");

    // ... and the other way round; a WebSocket ping between them is
    // answered.
    client.ws.send(Message::Ping(vec![1].into())).await.unwrap();
    client
        .send(publish(4, "ws/from-browser", 0, 0, &[], b"hi"))
        .await;
    let m = tcp.next_where(|m| m.topic == "ws/from-browser").await;
    assert_eq!(m.payload, b"hi");
    client.send(vec![0xc0, 0]).await;
    assert_eq!(client.packet().await, Some((0xd0, vec![])), "PINGRESP");

    // Closing the WebSocket without a DISCONNECT is an abrupt end: the
    // will is published.
    client.ws.close(None).await.unwrap();
    let m = tcp.next_where(|m| m.topic == "ws/will").await;
    assert_eq!(m.payload, b"lost");

    // A text message is not MQTT: the broker closes the connection
    // (MQTT-6.0.0-1), an abrupt end too.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut texting = WsClient::upgrade(stream, addr, "ws").await;
    let will = Will {
        topic: "ws/text-will",
        ..will
    };
    texting
        .send(connect(4, "texting", true, 30, &[], Some(&will)))
        .await;
    assert_eq!(texting.packet().await, Some((0x20, vec![0, 0])), "CONNACK");
    texting
        .ws
        .send(Message::Text("not mqtt".into()))
        .await
        .unwrap();
    assert_eq!(texting.packet().await, None, "the connection closes");
    let m = tcp.next_where(|m| m.topic == "ws/text-will").await;
    assert_eq!(m.payload, b"lost");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_secure_websocket_trusts_the_built_in_ca() {
    let server = TestServer::start(ws_config()).await;
    let mut tcp = server.subscribe("wss/#").await;
    let pem = server.get_text("/api/v1/ca.pem").await;
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = server.server().transport_addr(MqttTransport::Wss).unwrap();
    let tcp_stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp_stream)
        .await
        .expect("the TLS handshake with the built-in CA's certificate");
    let mut client = WsClient::upgrade(stream, addr, "wss").await;
    client
        .send(connect(5, "secure-browser", true, 30, &[], None))
        .await;
    let (first, body) = client.packet().await.expect("CONNACK");
    assert_eq!((first, body[1]), (0x20, 0x00), "accepted");
    client.send(publish(5, "wss/up", 1, 1, &[], b"ok")).await;
    let (first, body) = client.packet().await.expect("PUBACK");
    assert_eq!((first, &body[..2]), (0x40, &[0u8, 1][..]));
    let m = tcp.next_where(|m| m.topic == "wss/up").await;
    assert_eq!(m.payload, b"ok");
    // A clean end: DISCONNECT, then the close.
    client.send(vec![0xe0, 0]).await;
    assert_eq!(client.packet().await, None, "closed by the broker");
    server.stop().await;
}
