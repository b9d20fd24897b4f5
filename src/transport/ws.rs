//! MQTT over WebSocket: the upgrade on `/mqtt` with subprotocol `mqtt`,
//! and a byte stream over binary messages for the broker engine. MQTT
//! packets may span messages and a message may hold several packets (the
//! standard allows both), so the stream ignores message boundaries.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use super::{HANDSHAKE_TIMEOUT, WS_PATH, WS_PROTOCOL};

/// The WebSocket upgrade; `None` when it failed (logged at debug: a
/// browser or probe on the wrong path is not the server's problem).
pub(crate) async fn accept<S>(stream: S, peer: SocketAddr) -> Option<WsIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's callback contract, not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        if request.uri().path() != WS_PATH {
            return Err(refusal(
                StatusCode::NOT_FOUND,
                format!("MQTT over WebSocket is served on {WS_PATH}"),
            ));
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if offered.contains(&WS_PROTOCOL) {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(WS_PROTOCOL),
            );
        } else if !offered.is_empty() {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                format!("offer the WebSocket subprotocol {WS_PROTOCOL:?}"),
            ));
        }
        Ok(response)
    };
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(stream, callback),
    )
    .await
    {
        Ok(Ok(ws)) => Some(WsIo {
            ws,
            read: Bytes::new(),
        }),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "WebSocket upgrade failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket upgrade timed out");
            None
        }
    }
}

fn refusal(status: StatusCode, detail: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(detail));
    *response.status_mut() = status;
    response
}

/// A WebSocket as a byte stream: reads concatenate binary messages, each
/// write is one binary message.
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message read.
    read: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.read = data,
                // The end: a read of nothing.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // MQTT travels in binary messages only: any other data
                // message closes the connection (MQTT-6.0.0-1).
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a WebSocket text message: MQTT is sent in binary messages",
                    )));
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
