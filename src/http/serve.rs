//! The HTTP listeners' connection handling (the API and `--mock-http`):
//! an accept loop that backs off on errors instead of spinning, a cap on
//! concurrent connections, and per-connection deadlines so that a client
//! that opens connections and sends nothing, or sends its headers or body a
//! byte at a time, is disconnected instead of holding a descriptor forever.
//!
//! The deadlines, all wall time:
//! - headers: from the connection's accept, or from the first byte of a
//!   later request on a kept-alive connection, to the end of its headers;
//! - body: from the end of the headers to the end of the body (a handler
//!   reading the body gets a timeout error, answered with 408);
//! - idle: a kept-alive connection with no request under way.
//!
//! Responses take as long as they take (long polls, event streams).

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::mqtt::PeerCert;
use crate::ratelimit::{RateLimit, WARN_INTERVAL};
use crate::stubs::listener::{ConnHandle, ResettableIo};
use crate::transport::Tls;

/// Default of `--http-header-timeout`.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--http-body-timeout`.
pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--http-idle-timeout`.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `--http-max-connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long the accept loop waits after a failed accept (out of file
/// descriptors, most often) before trying again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connection limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// Longest wait for a request's body.
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Counters of one listener, for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    open: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ListenerCounters {
    /// Connections open now.
    pub open: u64,
    /// The most that may be open at once (`--http-max-connections`).
    pub max: u64,
    /// Connections answered 503 because `max` were open.
    pub refused: u64,
    /// Connections closed because headers, body or the next request did
    /// not come in time.
    pub timed_out: u64,
    /// Failed accepts (file descriptors exhausted, most often).
    pub accept_errors: u64,
}

impl ListenerStats {
    pub(crate) fn counters(&self, limits: &HttpLimits) -> ListenerCounters {
        ListenerCounters {
            open: self.open.load(Ordering::Relaxed),
            max: limits.max_connections as u64,
            refused: self.refused.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// A running listener: stop it with `stop`, then await `task`.
pub(crate) struct Serving {
    pub stop: oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves `app` on `listener` until `stop` fires; open requests may then
/// finish. With `tls`, every connection starts with a TLS handshake, and a
/// verified client certificate reaches handlers as a request extension
/// ([`PeerCert`]).
pub(crate) fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<ListenerStats>,
    tls: Option<Arc<Tls>>,
) -> Serving {
    let (stop, mut stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let slots = Arc::new(Semaphore::new(max));
        let (closing_tx, closing) = watch::channel(false);
        let accept_warning = RateLimit::new(WARN_INTERVAL);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop_rx => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = accept_warning.admit() {
                        tracing::warn!(%error, suppressed, backoff_ms = ACCEPT_BACKOFF.as_millis() as u64,
                            "accepting an HTTP connection failed; backing off");
                    }
                    // Out of descriptors: retrying at once would spin a core
                    // until a connection closes.
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(
                        stream,
                        Ctx {
                            remote,
                            app: app.clone(),
                            limits,
                            stats: stats.clone(),
                            closing: closing.clone(),
                        },
                        permit,
                        tls.clone(),
                    ));
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    if tls.is_none() {
                        tokio::spawn(refuse(stream, max));
                    }
                    // Over TLS the answer would need a handshake first: the
                    // connection is closed (counted all the same).
                }
            }
        }
        drop(listener);
        let _ = closing_tx.send(true);
        // Every connection holds a slot until it ends: taking all of them
        // waits for the last one.
        let _ = slots.acquire_many(max as u32).await;
    });
    Serving { stop, task }
}

/// Answers a connection over the cap with 503 problem+json and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = serde_json::json!({
        "type": "https://iotmock.dev/problems/too-many-connections",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("{max} connections are open on this listener, the most it takes (--http-max-connections); close idle ones or retry later"),
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        // Read the request head first: a client still sending it would take
        // an early answer for a broken connection.
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Decrements the open-connection gauge when a connection task ends.
struct OpenGuard(Arc<ListenerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection task needs besides its stream.
struct Ctx {
    remote: std::net::SocketAddr,
    app: Router,
    limits: HttpLimits,
    stats: Arc<ListenerStats>,
    closing: watch::Receiver<bool>,
}

async fn connection(
    stream: TcpStream,
    ctx: Ctx,
    _slot: OwnedSemaphorePermit,
    tls: Option<Arc<Tls>>,
) {
    let _open = OpenGuard(ctx.stats.clone());
    // Dripped bodies go out chunk by chunk, not coalesced.
    let _ = stream.set_nodelay(true);
    let (io, handle) = ResettableIo::new(stream);
    match tls {
        None => drive(io, handle, None, ctx).await,
        Some(tls) => {
            if let Some((io, cert)) = tls.accept(io, ctx.remote, "https").await {
                drive(io, handle, cert, ctx).await;
            }
        }
    }
}

async fn drive<I>(io: I, handle: ConnHandle, cert: Option<PeerCert>, ctx: Ctx)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ctx {
        remote,
        app,
        limits,
        stats,
        mut closing,
    } = ctx;
    let activity = Arc::new(Activity::new());
    let io = ActivityIo {
        inner: io,
        activity: activity.clone(),
    };
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let guard = activity.request_started();
            let mut request =
                request.map(|body| Body::new(DeadlineBody::new(body, limits.body_timeout)));
            request.extensions_mut().insert(ConnectInfo(handle.clone()));
            if let Some(cert) = &cert {
                request.extensions_mut().insert(cert.clone());
            }
            let mut app = app.clone();
            // Boxed: the connection is polled without its shutdown (see
            // `linger`), which wants an `Unpin` future.
            Box::pin(async move {
                let mut response = tower_service::Service::call(&mut app, request).await?;
                // A body refused (too large) or cut off (too slow) was not
                // read to its end, so the connection cannot carry another
                // request: say so, or a client's pool would reuse it.
                if matches!(
                    response.status(),
                    hyper::StatusCode::PAYLOAD_TOO_LARGE | hyper::StatusCode::REQUEST_TIMEOUT
                ) {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                // The request counts as under way until its response has
                // been sent (or abandoned), however long it streams.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(GuardedBody {
                        body,
                        _guard: guard,
                    })
                }))
            })
        })
    };
    let mut conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    loop {
        let deadline = activity.deadline(&limits);
        let woke = tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(error) = result {
                    tracing::debug!(%remote, %error, "HTTP connection ended with an error");
                }
                Wake::Done
            }
            _ = activity.changed.notified() => Wake::Changed,
            _ = sleep_until(deadline) => Wake::Deadline,
            _ = closing.wait_for(|c| *c) => Wake::Closing,
        };
        match woke {
            Wake::Done => {
                linger(conn.into_parts().io.into_inner()).await;
                return;
            }
            Wake::Changed => {}
            Wake::Deadline => {
                if activity
                    .deadline(&limits)
                    .is_some_and(|d| d <= Instant::now())
                {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "HTTP connection timed out waiting for a request");
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            Wake::Closing => {
                Pin::new(&mut conn).graceful_shutdown();
                let _ = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
                linger(conn.into_parts().io.into_inner()).await;
                return;
            }
        }
    }
}

enum Wake {
    /// The connection has nothing more to serve.
    Done,
    Changed,
    Deadline,
    Closing,
}

/// How long a connection the server ends keeps reading what the client
/// still sends, and how much of it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 16 << 20;

/// Ends a connection the way clients can read: the answer is sent, the
/// write side is closed, and what the client is still sending (the rest
/// of a body refused with 413 before it was read) is drained (see
/// [`crate::linger`]).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    if io.shutdown().await.is_ok() {
        crate::linger::drain(&mut io, LINGER, LINGER_BYTES).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its deadlines.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Whether a request has been served on this connection.
    served: AtomicBool,
    /// Ms after `start` when the last request ended.
    idle_since: AtomicU64,
    /// Ms after `start` of the first byte read while no request was under
    /// way; `u64::MAX` when none.
    first_byte: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(u64::MAX),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64, plus: Duration) -> Instant {
        self.start + Duration::from_millis(ms) + plus
    }

    /// When the connection must be closed if nothing changes; `None` while
    /// a request is under way.
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let first_byte = self.first_byte.load(Ordering::Acquire);
        if !self.served.load(Ordering::Acquire) {
            // A new connection owes its first request's headers.
            return Some(self.at(0, limits.header_timeout));
        }
        if first_byte != u64::MAX {
            return Some(self.at(first_byte, limits.header_timeout));
        }
        Some(self.at(self.idle_since.load(Ordering::Acquire), limits.idle_timeout))
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.first_byte.load(Ordering::Acquire) == u64::MAX
        {
            self.first_byte.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.first_byte.store(u64::MAX, Ordering::Release);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }
}

/// Held by a response body: the request is under way until it drops.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.now_ms(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// The connection's stream, telling [`Activity`] when bytes arrive.
struct ActivityIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The error of a request body that did not arrive within the body
/// timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] when it is not complete
/// within `timeout` of the end of the headers.
struct DeadlineBody {
    body: hyper::body::Incoming,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(body: hyper::body::Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body holding its request's [`RequestGuard`].
struct GuardedBody {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_connection_state() {
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            max_connections: 1,
        };
        let activity = Arc::new(Activity::new());
        let start = activity.start;
        // A fresh connection owes its headers.
        assert_eq!(
            activity.deadline(&limits),
            Some(start + limits.header_timeout)
        );
        let guard = activity.request_started();
        assert_eq!(activity.deadline(&limits), None, "a request is under way");
        drop(guard);
        let idle = activity.deadline(&limits).expect("idle deadline");
        assert!(idle >= start + limits.idle_timeout);
        // A byte of the next request starts its header deadline.
        activity.bytes_read();
        let header = activity.deadline(&limits).expect("header deadline");
        assert!(header < idle);
    }
}
