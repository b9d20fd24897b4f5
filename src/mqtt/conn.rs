//! Connections: the TCP listener and one task per client connection.
//!
//! A connection task takes any `AsyncRead + AsyncWrite` stream (plain TCP
//! here; TLS and WebSocket transports wrap theirs and call [`serve`]). It
//! reads the CONNECT, then loops: packets in, handled against the engine's
//! core; deliveries pulled from the session when woken; one write per
//! round. Per-connection state is small and grows only when used: buffers
//! start empty and shrink back after a burst, topic aliases are a map made
//! on first use.
//!
//! Every connection task runs on one thread of its own ([`ConnThread`]), on
//! a current-thread runtime: sockets that become ready together are served
//! in the order they became ready, as a single-threaded broker does, so a
//! SUBSCRIBE that arrived before another client's PUBLISH is handled
//! first. (A multi-thread runtime runs the last task woken first.) A
//! delivery to another client on the same thread needs no cross-thread
//! wake-up either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::aliases::OutAliases;
use super::codec::{
    self, Frame, Inbound, OutPublish, PacketKind, ProtocolError, V5, V31, V311, rc,
};
use super::engine::{Accepted, CONGESTED, DRAINED, Ending, Engine, Listening, Out};
use super::faults::{self, Direction, Verdict};
use super::journal::Origin;
use super::session::{ConnCtl, Msg, NEVER, Will};
use super::tree::SubOpts;
use super::{AuthDecision, PeerCert, topics};
use mqtt5_protocol::ReasonCode;
use mqtt5_protocol::packet::connack::ConnAckPacket;
use mqtt5_protocol::packet::connect::ConnectPacket;
use mqtt5_protocol::packet::suback::{SubAckPacket, SubAckReasonCode};
use mqtt5_protocol::packet::unsuback::{UnsubAckPacket, UnsubAckReasonCode};

/// A client that has not sent CONNECT within this is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries taken from a session per round.
const PULL_BATCH: usize = 256;
/// QoS 2 messages an MQTT 5 client may have waiting for PUBREL (the
/// Receive Maximum in CONNACK); one more is DISCONNECT 0x93.
pub(crate) const RECEIVE_MAXIMUM: u16 = 1024;
/// How long a connection the broker closed is drained before the socket
/// goes.
const LINGER: Duration = Duration::from_millis(500);
/// A publisher waiting for a congested subscriber reads again when the
/// subscriber wrote nothing for this long. Long enough that a client
/// paused by its scheduler or a collector is not taken for one that
/// stopped reading (50 ms was not, on a loaded 2-core machine); short
/// enough that a stuck client costs its publishers one short pause.
pub(crate) const STALLED: Duration = Duration::from_millis(250);
/// Buffers larger than this are given back once empty.
const KEEP_BUFFER: usize = 8 * 1024;

/// The thread every MQTT connection task runs on. It ends, dropping the
/// tasks still on it, when [`ConnThread::stop`] is awaited or the value
/// is dropped.
pub(crate) struct ConnThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl ConnThread {
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (finished, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                // A dropped sender ends the thread as a sent stop does.
                let _ = runtime.block_on(stopped);
                drop(runtime);
                let _ = finished.send(());
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            done: Some(done),
        })
    }

    /// The runtime connection tasks are spawned on.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ends the thread and waits until every task on it is dropped.
    pub(crate) async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

/// Binds `addr` and accepts connections on the connection thread until
/// the task is aborted.
pub(crate) fn listen(
    engine: &Arc<Engine>,
    addr: SocketAddr,
    thread: &Handle,
) -> std::io::Result<Listening> {
    // Bound here so a port in use is this call's error; registered with
    // the connection thread's reactor there.
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let engine = engine.clone();
    let task = thread.spawn(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(%error, "MQTT listener cannot be registered");
                return;
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(engine.clone(), stream, peer, None));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin, and say so at most once per interval.
                    crate::ratelimit::warn_limited!(%error, "MQTT listener cannot accept; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(Listening { addr, task })
}

/// Counts a live connection for as long as it is held.
struct Live<'a>(&'a Engine);
impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes and flushes: TLS and WebSocket streams buffer until flushed
/// (for TCP the flush costs nothing).
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, buf: &[u8]) -> std::io::Result<()> {
    send_counted(stream, buf, &AtomicU64::new(0)).await
}

/// [`send`], counting in `written` the bytes each write call hands to
/// the socket, so that a long write shows its progress.
async fn send_counted<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: &[u8],
    written: &AtomicU64,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = stream.write(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written.fetch_add(n as u64, Ordering::Relaxed);
        buf = &buf[n..];
    }
    stream.flush().await
}

/// Puts the keep-alive deadline `keep_alive` from now (if the client set one).
fn rearm(sleep: std::pin::Pin<&mut tokio::time::Sleep>, keep_alive: Option<Duration>) {
    if let Some(ka) = keep_alive {
        sleep.reset(tokio::time::Instant::now() + ka);
    }
}

/// Serves one client connection on any byte stream. `cert` is the
/// identity a transport verified (a TLS client certificate), if any.
pub(crate) async fn serve<S>(
    engine: Arc<Engine>,
    mut stream: S,
    peer: SocketAddr,
    cert: Option<PeerCert>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::new();
    let frame = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_frame(&mut stream, &mut rbuf, engine.limits.max_packet_size),
    )
    .await
    {
        Ok(Ok(Some(f))) => f,
        Ok(Err(e)) => {
            if e.code == rc::PACKET_TOO_LARGE {
                engine.counters.count_too_large();
            }
            tracing::debug!(%peer, detail = %e.detail, "MQTT connection closed before CONNECT");
            return;
        }
        _ => return,
    };
    let (connect, version) = match codec::decode_connect(&frame) {
        Ok(c) => c,
        Err(e) => {
            engine
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, detail = %e.detail, "MQTT CONNECT refused");
            if e.code == rc::UNSUPPORTED_VERSION {
                // The client's level is unknown, so answer as 3.1.1 does.
                let mut out = BytesMut::new();
                codec::encode_packet(
                    &mut out,
                    &ConnAckPacket::new_v311(false, ReasonCode::UnsupportedProtocolVersion),
                );
                let _ = send(&mut stream, &out).await;
            }
            return;
        }
    };
    engine.conns.fetch_add(1, Ordering::AcqRel);
    let _live = Live(&engine);
    let ctl = Arc::new(ConnCtl {
        id: engine.next_conn.fetch_add(1, Ordering::Relaxed),
        ..ConnCtl::default()
    });
    let mut out = BytesMut::new();
    let Some(mut conn) = handshake(&engine, &ctl, *connect, version, cert.as_ref(), &mut out)
    else {
        engine
            .counters
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        let _ = send(&mut stream, &out).await;
        let _ = stream.shutdown().await;
        return;
    };
    if send(&mut stream, &out).await.is_err() {
        engine.disconnected(&ctl, &conn.client_id, Ending::Abrupt, None);
        engine
            .observed
            .disconnected(&conn.client_id, conn.user.as_ref(), false);
        return;
    }
    out.clear();
    let (ending, expiry) = run(&engine, &ctl, &mut conn, &mut stream, rbuf, out).await;
    let _ = stream.shutdown().await;
    engine.disconnected(&ctl, &conn.client_id, ending, expiry);
    if !matches!(ending, Ending::Normal | Ending::WithWill) {
        // The broker closed: its last writes (the DISCONNECT, the last
        // acknowledgements) must not meet a reset (see `crate::linger`).
        crate::linger::drain(&mut stream, LINGER, usize::MAX).await;
    }
    engine.observed.disconnected(
        &conn.client_id,
        conn.user.as_ref(),
        ending == Ending::Normal,
    );
}

async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, ProtocolError> {
    loop {
        if let Some(f) = codec::split(buf, max)? {
            return Ok(Some(f));
        }
        match read_some(stream, buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// A connection after CONNACK.
struct Conn {
    client_id: Arc<str>,
    user: Option<Arc<str>>,
    version: u8,
    keep_alive: u16,
    /// Session expiry from CONNECT: 0 forbids setting one on DISCONNECT.
    connect_expiry: u32,
    aliases: Option<HashMap<u16, Arc<str>>>,
    /// The aliases this side sets on its PUBLISHes
    /// (`--mqtt-server-topic-aliases`).
    out_aliases: Option<Box<OutAliases>>,
    /// A packet a reorder fault holds back until the next one is written.
    held_back: Option<Vec<u8>>,
}

fn connack(out: &mut BytesMut, version: u8, present: bool, code: ReasonCode) {
    let p = if version == V5 {
        ConnAckPacket::new(present, code)
    } else {
        ConnAckPacket::new_v311(present, code)
    };
    codec::encode_packet(out, &p);
}

/// Checks a CONNECT and sets up the session; writes the CONNACK to `out`.
/// `None`: refused (the CONNACK says why).
fn handshake(
    engine: &Arc<Engine>,
    ctl: &Arc<ConnCtl>,
    c: ConnectPacket,
    version: u8,
    cert: Option<&PeerCert>,
    out: &mut BytesMut,
) -> Option<Conn> {
    let v5 = version == V5;
    let refuse = |out: &mut BytesMut, code: ReasonCode, why: &str| {
        tracing::debug!(client_id = %c.client_id, reason = why, "MQTT connection refused");
        connack(out, version, false, code);
        None
    };
    if !engine.accepting.load(Ordering::Acquire) {
        return refuse(out, ReasonCode::ServerUnavailable, "the broker is down");
    }
    if engine.faults.active() {
        let verdict = engine.faults.on(&faults::Packet {
            client_id: &c.client_id,
            user: c.username.as_deref(),
            direction: Direction::In,
            kind: PacketKind::Connect,
            topic: None,
        });
        match verdict {
            Verdict::RefuseConnect(code) | Verdict::Disconnect(code) => {
                let code = ReasonCode::from_u8(code).unwrap_or(ReasonCode::NotAuthorized);
                return refuse(out, code, "refused by a fault rule");
            }
            Verdict::Drop => return None,
            _ => {}
        }
    }
    if engine.conns.load(Ordering::Acquire) > engine.limits.max_clients {
        return refuse(out, ReasonCode::QuotaExceeded, "too many clients");
    }
    let mut client_id = c.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        if version == V31 || (version == V311 && !c.clean_start) {
            return refuse(
                out,
                ReasonCode::ClientIdentifierNotValid,
                "empty client id without a clean session",
            );
        }
        client_id = format!("auto-{:016x}", rand::random::<u64>());
        if v5 {
            assigned = Some(client_id.clone());
        }
    }
    if v5 && c.properties.get_authentication_method().is_some() {
        return refuse(
            out,
            ReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not offered",
        );
    }
    if let Some(w) = &c.will
        && topics::valid_topic_name(&w.topic).is_err()
    {
        return refuse(out, ReasonCode::TopicNameInvalid, "invalid will topic");
    }
    // 0 asks for no keep alive: longer than any maximum.
    let server_keep_alive = engine
        .limits
        .max_keep_alive
        .filter(|&max| c.keep_alive == 0 || c.keep_alive > max);
    if server_keep_alive.is_some() && !v5 {
        // An MQTT 3.1.1 client cannot be told to use less (Mosquitto
        // refuses it the same way).
        return refuse(
            out,
            ReasonCode::ClientIdentifierNotValid,
            "keep alive over --mqtt-max-keep-alive",
        );
    }
    let user: Option<Arc<str>> = match &engine.authorizer {
        None => c.username.as_deref().map(Arc::from),
        // The id as sent: empty when the client left it to the server.
        Some(a) => match a.authenticate_peer(
            &c.client_id,
            c.username.as_deref(),
            c.password.as_deref(),
            cert,
        ) {
            AuthDecision::Allow { user } => user.map(Arc::from),
            AuthDecision::BadCredentials => {
                return refuse(out, ReasonCode::BadUsernameOrPassword, "bad credentials");
            }
            AuthDecision::NotAuthorized => {
                return refuse(out, ReasonCode::NotAuthorized, "not authorized");
            }
            AuthDecision::ClientIdNotValid => {
                return refuse(
                    out,
                    ReasonCode::ClientIdentifierNotValid,
                    "a device connects only under its own id",
                );
            }
        },
    };
    let expiry = if v5 {
        c.properties.get_session_expiry_interval().unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        NEVER
    };
    let window = if v5 {
        c.properties.get_receive_maximum().unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    let max_packet = if v5 {
        c.properties
            .get_maximum_packet_size()
            .map_or(usize::MAX, |m| m as usize)
    } else {
        usize::MAX
    };
    if v5 && (window == 0 || max_packet == 0) {
        return refuse(
            out,
            ReasonCode::ProtocolError,
            "receive maximum or maximum packet size 0",
        );
    }
    let now = engine.clock.now_ms();
    let client_id: Arc<str> = client_id.into();
    let will = c.will.as_ref().map(|w| {
        let p = &w.properties;
        let props = if v5 {
            will_props(p)
        } else {
            bytes::Bytes::new()
        };
        Will {
            msg: Arc::new(Msg {
                topic: w.topic.as_str().into(),
                payload: bytes::Bytes::copy_from_slice(&w.payload),
                props,
                qos: w.qos as u8,
                retain: w.retain,
                expires_at: p.message_expiry_interval.map(|s| now + i64::from(s) * 1000),
                from: Some(client_id.clone()),
                to: None,
                encoded: Default::default(),
            }),
            delay_secs: p.will_delay_interval.unwrap_or(0),
        }
    });
    let Accepted {
        session_present,
        subscriptions,
    } = engine.connect(
        ctl,
        &client_id,
        user.clone(),
        version,
        c.clean_start,
        expiry,
        will,
        window,
        max_packet,
    );
    if v5 {
        let mut p = ConnAckPacket::new(session_present, ReasonCode::Success)
            .with_maximum_packet_size(engine.limits.max_packet_size as u32)
            .with_receive_maximum(RECEIVE_MAXIMUM)
            .with_topic_alias_maximum(engine.limits.topic_alias_maximum);
        if let Some(id) = assigned {
            p = p.with_assigned_client_id(id);
        }
        if let Some(secs) = server_keep_alive {
            p = p.with_server_keep_alive(secs);
        }
        codec::encode_packet(out, &p);
    } else {
        connack(out, version, session_present, ReasonCode::Success);
    }
    let keep_alive = server_keep_alive.unwrap_or(c.keep_alive);
    engine.observed.connected(
        &client_id,
        user.as_ref(),
        c.clean_start,
        keep_alive,
        subscriptions,
    );
    Some(Conn {
        client_id,
        user,
        version,
        keep_alive,
        connect_expiry: expiry,
        aliases: None,
        out_aliases: v5
            .then(|| {
                OutAliases::new(
                    engine.limits.server_topic_aliases,
                    c.properties.get_topic_alias_maximum().unwrap_or(0),
                    max_packet,
                )
            })
            .flatten()
            .map(Box::new),
        held_back: None,
    })
}

/// Will properties in a fixed order (the same will, the same bytes).
fn will_props(p: &mqtt5_protocol::WillProperties) -> bytes::Bytes {
    use bytes::BufMut;
    let mut b = BytesMut::new();
    let put_str = |b: &mut BytesMut, s: &[u8]| {
        b.put_u16(s.len() as u16);
        b.put_slice(s);
    };
    if let Some(f) = p.payload_format_indicator {
        b.put_u8(0x01);
        b.put_u8(u8::from(f));
    }
    if let Some(ct) = &p.content_type {
        b.put_u8(0x03);
        put_str(&mut b, ct.as_bytes());
    }
    if let Some(rt) = &p.response_topic {
        b.put_u8(0x08);
        put_str(&mut b, rt.as_bytes());
    }
    if let Some(cd) = &p.correlation_data {
        b.put_u8(0x09);
        put_str(&mut b, cd);
    }
    for (k, v) in &p.user_properties {
        b.put_u8(0x26);
        put_str(&mut b, k.as_bytes());
        put_str(&mut b, v.as_bytes());
    }
    b.freeze()
}

/// What ended the loop.
enum Stop {
    Done(Ending, Option<u32>),
    /// Close with this reason (MQTT 5 DISCONNECT first).
    Error(u8, String),
    Closed(u8),
}

async fn run<S>(
    engine: &Arc<Engine>,
    ctl: &Arc<ConnCtl>,
    conn: &mut Conn,
    stream: &mut S,
    mut rbuf: BytesMut,
    mut out: BytesMut,
) -> (Ending, Option<u32>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let keep_alive =
        (conn.keep_alive > 0).then(|| Duration::from_millis(u64::from(conn.keep_alive) * 1500));
    let sleep = tokio::time::sleep(keep_alive.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(sleep);
    let mut pulled = Vec::new();
    let mut want_pull = true;
    // A congested connection this one waits for, before reading more,
    // with its `written_bytes` at the last look.
    let mut held: Option<(Arc<ConnCtl>, u64)> = None;
    let hold_check = tokio::time::sleep(STALLED);
    tokio::pin!(hold_check);
    // The newest delivery in `out`; the socket has it once `out` is
    // written (what a delivery barrier waits for).
    let mut writing_upto = 0;
    // `out` with topic aliases, when the client gets them.
    let mut aliased = BytesMut::new();
    // Packets the client sent behind its CONNECT, in the same read: handled
    // first, not when the client next sends something.
    let mut buffered = !rbuf.is_empty();
    let stop = loop {
        if want_pull {
            want_pull = false;
            pulled.clear();
            let more = engine.pull(ctl, &conn.client_id, PULL_BATCH, &mut pulled);
            if !pulled.is_empty() {
                let now = engine.clock.now_ms();
                for o in pulled.drain(..) {
                    if let Out::Publish { d, dup: false, .. } = &o {
                        writing_upto = d.seq;
                    }
                    encode_out(&o, conn.version, now, &mut out);
                }
            }
            if more {
                want_pull = true;
            }
        }
        if !out.is_empty() {
            if engine.faults.active() {
                match write_with_faults(engine, conn, stream, &out, ctl).await {
                    Ok(None) => {
                        // A fault's pause may have taken the wake-up
                        // meant for this loop.
                        if let Some(code) = ctl.closing() {
                            break Stop::Closed(code);
                        }
                        want_pull = true;
                    }
                    Ok(Some(code)) => {
                        break Stop::Error(code, "disconnected by a fault rule".into());
                    }
                    Err(()) => break Stop::Done(Ending::Abrupt, None),
                }
            } else {
                if ctl.slowed_by_fault.load(Ordering::Relaxed) {
                    ctl.slowed_by_fault.store(false, Ordering::Relaxed);
                }
                let bytes = match &mut conn.out_aliases {
                    Some(a) => {
                        aliased.clear();
                        a.put_all(&out, &mut aliased);
                        &aliased[..]
                    }
                    None => &out[..],
                };
                if send_counted(stream, bytes, &ctl.written_bytes)
                    .await
                    .is_err()
                {
                    break Stop::Done(Ending::Abrupt, None);
                }
                if aliased.capacity() > KEEP_BUFFER {
                    aliased = BytesMut::new();
                }
            }
            if writing_upto > 0 {
                ctl.written_upto.store(writing_upto, Ordering::Release);
            }
            if ctl.watched.load(Ordering::Relaxed) && ctl.fill.load(Ordering::Relaxed) < DRAINED {
                ctl.watched.store(false, Ordering::Relaxed);
                ctl.drained.notify_waiters();
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = BytesMut::new();
            }
        }
        tokio::select! {
            biased;
            _ = ctl.wake.notified() => {
                if let Some(code) = ctl.closing() {
                    break Stop::Closed(code);
                }
                want_pull = true;
            }
            r = read_more(stream, &mut rbuf, buffered), if held.is_none() => {
                buffered = false;
                match r {
                    Ok(0) | Err(_) => break Stop::Done(Ending::Abrupt, None),
                    Ok(_) => {}
                }
                rearm(sleep.as_mut(), keep_alive);
                let before = engine.store.as_ref().map(|s| s.issued());
                let mut routed = Routed::default();
                let handled = handle_frames(engine, ctl, conn, &mut rbuf, &mut out, &mut want_pull, &mut routed);
                // Acknowledge only what is stored.
                if let (Some(store), Some(before)) = (&engine.store, before) {
                    let issued = store.issued();
                    if issued > before && !store.durable(issued).await {
                        // Its acknowledgements are not sent: the client
                        // sends again.
                        out.clear();
                        break Stop::Error(rc::UNSPECIFIED, "the broker could not store it".into());
                    }
                }
                match handled {
                    Ok(None) => {}
                    Ok(Some(stop)) => break stop,
                    Err(e) => break Stop::Error(e.code, e.detail),
                }
                // Reads go through the thread's buffer (`read_some`): a
                // connection between packets holds none of its own.
                if rbuf.is_empty() && rbuf.capacity() > 0 {
                    rbuf = BytesMut::new();
                }
                // The subscribers this woke write their copies before this
                // client gets its acknowledgement or is read again, as a
                // broker that delivers while it handles the PUBLISH does:
                // the acknowledgement is not on the message's way.
                if routed.any {
                    let_woken_run_first().await;
                }
                // A subscriber this fed is still backed up: wait for it
                // to drain before reading more, as long as it drains.
                if let Some(c) = routed.congested
                    && c.fill.load(Ordering::Relaxed) >= CONGESTED
                    && !c.holds_no_one()
                {
                    c.watched.store(true, Ordering::Relaxed);
                    engine.counters.publishers_paced.fetch_add(1, Ordering::Relaxed);
                    let written = c.written_bytes.load(Ordering::Relaxed);
                    held = Some((c, written));
                    hold_check.as_mut().reset(tokio::time::Instant::now() + STALLED);
                }
            }
            _ = async { held.as_ref().expect("guarded").0.drained.notified().await }, if held.is_some() => {
                held = None;
                rearm(sleep.as_mut(), keep_alive);
            }
            _ = &mut hold_check, if held.is_some() => {
                let (c, written) = held.as_mut().expect("guarded");
                let now_written = c.written_bytes.load(Ordering::Relaxed);
                if now_written == *written
                    || c.closing().is_some()
                    || c.fill.load(Ordering::Relaxed) < DRAINED
                    || c.slowed_by_fault.load(Ordering::Relaxed)
                {
                    // Not draining: the client is not reading. It holds
                    // no one back until it writes again.
                    if now_written == *written {
                        c.stalled_at.store(now_written, Ordering::Relaxed);
                        engine.counters.subscribers_stalled.fetch_add(1, Ordering::Relaxed);
                    }
                    held = None;
                    rearm(sleep.as_mut(), keep_alive);
                } else {
                    *written = now_written;
                    hold_check.as_mut().reset(tokio::time::Instant::now() + STALLED);
                }
            }
            _ = &mut sleep, if keep_alive.is_some() && held.is_none() => {
                break Stop::Error(rc::KEEP_ALIVE_TIMEOUT, "keep alive timed out".into());
            }
            // More deliveries are waiting: take them once reads had their
            // turn.
            _ = tokio::task::yield_now(), if want_pull => {}
        }
    };
    match stop {
        Stop::Done(ending, expiry) => {
            if !out.is_empty() {
                let _ = send(stream, &out).await;
            }
            (ending, expiry)
        }
        Stop::Error(code, detail) => {
            if code == rc::PACKET_TOO_LARGE {
                engine.counters.count_too_large();
            } else if code != rc::KEEP_ALIVE_TIMEOUT {
                engine
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(client_id = %conn.client_id, code, %detail, "MQTT connection closed by the broker");
            // What was handled before the error is answered first.
            if conn.version == V5 {
                codec::encode_disconnect(&mut out, code, Some(&detail));
            }
            if !out.is_empty() {
                let _ = send(stream, &out).await;
            }
            (Ending::Abrupt, None)
        }
        Stop::Closed(code) => {
            if conn.version == V5 {
                codec::encode_disconnect(&mut out, code, None);
            }
            if !out.is_empty() {
                let _ = send(stream, &out).await;
            }
            let ending = if code == rc::SESSION_TAKEN_OVER {
                Ending::TakenOver
            } else {
                Ending::Abrupt
            };
            (ending, None)
        }
    }
}

/// Reads more bytes into `rbuf`, or none when bytes read with the CONNECT
/// are waiting there.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    buffered: bool,
) -> std::io::Result<usize> {
    if buffered {
        return Ok(rbuf.len());
    }
    read_some(stream, rbuf).await
}

/// The most one read takes from a socket.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Each runtime thread's read buffer. A connection reads into it and
    /// keeps only what came, so a packet is taken in one call whatever
    /// room the connection's own buffer had left (reading into that room
    /// took two or three calls for an 80-byte PUBLISH), and a connection
    /// waiting for its next packet reserves nothing for it.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Reads what the stream has, up to [`READ_CHUNK`], onto the end of
/// `rbuf`.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    if rbuf.capacity() - rbuf.len() >= READ_CHUNK {
        // A large packet is coming and `codec::split` made room for it.
        return stream.read_buf(rbuf).await;
    }
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = tokio::io::ReadBuf::new(scratch);
            std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            rbuf.extend_from_slice(buf.filled());
            std::task::Poll::Ready(Ok(buf.filled().len()))
        })
    })
    .await
}

fn encode_out(o: &Out, version: u8, now: i64, out: &mut BytesMut) {
    match o {
        Out::Publish { d, pid, dup } => match d
            .sub_ids
            .is_none()
            .then(|| d.msg.shared_packet(version, d.qos))
            .flatten()
        {
            Some(p) => p.put(d.qos, d.retain, *dup, *pid, out),
            None => OutPublish {
                topic: &d.msg.topic,
                payload: &d.msg.payload,
                props: &d.msg.props,
                qos: d.qos,
                retain: d.retain,
                dup: *dup,
                pid: *pid,
                expiry_secs: d.msg.expiry_left(now),
                sub_ids: d.sub_ids.as_deref().unwrap_or(&[]),
            }
            .encode(version, out),
        },
        Out::PubRel(pid) => codec::encode_ack(out, 6, *pid, 0, version),
    }
}

/// What the PUBLISHes of one read did.
#[derive(Default)]
struct Routed {
    /// A PUBLISH was handled.
    any: bool,
    /// The fullest connection they were queued for, past [`CONGESTED`].
    congested: Option<Arc<ConnCtl>>,
}

/// Goes to the back of the connection thread's run queue once, behind
/// the tasks woken so far (`yield_now` would wait for the next poll of
/// the reactor as well).
async fn let_woken_run_first() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Handles every whole packet in `rbuf`. `Ok(Some)`: the connection ends.
/// `routed`: what the PUBLISHes handled did.
fn handle_frames(
    engine: &Arc<Engine>,
    ctl: &Arc<ConnCtl>,
    conn: &mut Conn,
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
    want_pull: &mut bool,
    routed: &mut Routed,
) -> Result<Option<Stop>, ProtocolError> {
    while let Some(frame) = codec::split(rbuf, engine.limits.max_packet_size)? {
        let packet = codec::decode(frame, conn.version)?;
        if engine.faults.active() {
            let topic = match &packet {
                Inbound::Publish(p) => std::str::from_utf8(&p.topic).ok(),
                _ => None,
            };
            match engine.faults.on(&faults::Packet {
                client_id: &conn.client_id,
                user: conn.user.as_deref(),
                direction: Direction::In,
                kind: packet.kind(),
                topic,
            }) {
                Verdict::Drop => continue,
                Verdict::Disconnect(code) => {
                    return Err(ProtocolError::new(code, "disconnected by a fault rule"));
                }
                _ => {}
            }
        }
        match packet {
            Inbound::Publish(p) => {
                publish(engine, ctl, conn, p, out, &mut routed.congested)?;
                routed.any = true;
            }
            Inbound::PubAck { pid } => {
                if engine.finished(&conn.client_id, pid) {
                    *want_pull = true;
                }
            }
            Inbound::PubRec { pid, code } => match engine.received(&conn.client_id, pid, code) {
                Some(true) => codec::encode_ack(out, 6, pid, 0, conn.version),
                Some(false) => *want_pull = true,
                None => codec::encode_ack(out, 6, pid, rc::PACKET_ID_NOT_FOUND, conn.version),
            },
            Inbound::PubRel { pid } => {
                let code = if engine.release(&conn.client_id, pid) {
                    rc::SUCCESS
                } else {
                    rc::PACKET_ID_NOT_FOUND
                };
                codec::encode_ack(out, 7, pid, code, conn.version);
            }
            Inbound::PubComp { pid } => {
                if engine.finished(&conn.client_id, pid) {
                    *want_pull = true;
                }
            }
            Inbound::Subscribe(s) => {
                let sub_id = s.properties.get_subscription_identifier();
                if sub_id == Some(0) {
                    return Err(ProtocolError::new(
                        rc::PROTOCOL_ERROR,
                        "subscription identifier 0",
                    ));
                }
                let mut filters = Vec::with_capacity(s.filters.len());
                for f in &s.filters {
                    let o = &f.options;
                    if o.no_local && f.filter.starts_with("$share/") {
                        return Err(ProtocolError::new(
                            rc::PROTOCOL_ERROR,
                            "no local on a shared subscription",
                        ));
                    }
                    filters.push((
                        f.filter.clone(),
                        SubOpts {
                            qos: o.qos as u8,
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: o.retain_handling as u8,
                            sub_id,
                        },
                    ));
                }
                let codes = engine.subscribe(
                    &conn.client_id,
                    conn.user.as_deref(),
                    conn.version,
                    &filters,
                );
                let mut ack = if conn.version == V5 {
                    SubAckPacket::new(s.packet_id)
                } else {
                    SubAckPacket::new_v311(s.packet_id)
                };
                for c in codes {
                    ack = ack.add_reason_code(
                        SubAckReasonCode::from_u8(c).unwrap_or(SubAckReasonCode::UnspecifiedError),
                    );
                }
                codec::encode_packet(out, &ack);
                *want_pull = true;
            }
            Inbound::Unsubscribe(u) => {
                let existed = engine.unsubscribe(&conn.client_id, &u.filters);
                let mut ack = if conn.version == V5 {
                    UnsubAckPacket::new(u.packet_id)
                } else {
                    UnsubAckPacket::new_v311(u.packet_id)
                };
                for e in existed {
                    ack = ack.add_reason_code(if e {
                        UnsubAckReasonCode::Success
                    } else {
                        UnsubAckReasonCode::NoSubscriptionExisted
                    });
                }
                codec::encode_packet(out, &ack);
            }
            Inbound::PingReq => codec::encode_pingresp(out),
            Inbound::Disconnect(d) => {
                let expiry = d.properties.get_session_expiry_interval();
                if expiry.is_some_and(|e| e > 0) && conn.connect_expiry == 0 {
                    return Err(ProtocolError::new(
                        rc::PROTOCOL_ERROR,
                        "session expiry set on DISCONNECT after 0 on CONNECT",
                    ));
                }
                let ending = if u8::from(d.reason_code) == 0x04 {
                    Ending::WithWill
                } else {
                    Ending::Normal
                };
                return Ok(Some(Stop::Done(ending, expiry)));
            }
            Inbound::Connect => {
                return Err(ProtocolError::new(rc::PROTOCOL_ERROR, "a second CONNECT"));
            }
            Inbound::Auth => {
                return Err(ProtocolError::new(
                    rc::PROTOCOL_ERROR,
                    "AUTH without enhanced authentication",
                ));
            }
        }
    }
    Ok(None)
}

fn publish(
    engine: &Arc<Engine>,
    ctl: &Arc<ConnCtl>,
    conn: &mut Conn,
    p: codec::InPublish,
    out: &mut BytesMut,
    congested: &mut Option<Arc<ConnCtl>>,
) -> Result<(), ProtocolError> {
    let text = std::str::from_utf8(&p.topic).expect("checked by the codec");
    let topic: Arc<str> = match p.alias {
        Some(a) if a == 0 || a > engine.limits.topic_alias_maximum => {
            return Err(ProtocolError::new(
                rc::TOPIC_ALIAS_INVALID,
                format!(
                    "topic alias {a} outside 1..={}",
                    engine.limits.topic_alias_maximum
                ),
            ));
        }
        Some(a) if text.is_empty() => match conn.aliases.as_ref().and_then(|m| m.get(&a)) {
            Some(t) => t.clone(),
            None => {
                return Err(ProtocolError::new(
                    rc::PROTOCOL_ERROR,
                    format!("topic alias {a} was never set"),
                ));
            }
        },
        Some(a) => {
            let t: Arc<str> = text.into();
            conn.aliases.get_or_insert_default().insert(a, t.clone());
            t
        }
        None => text.into(),
    };
    if topics::valid_topic_name(&topic).is_err() {
        return Err(ProtocolError::new(
            rc::TOPIC_NAME_INVALID,
            "invalid topic name",
        ));
    }
    let allowed = engine
        .authorizer
        .as_ref()
        .is_none_or(|a| a.may_publish(&conn.client_id, conn.user.as_deref(), &topic));
    let code = if allowed {
        rc::SUCCESS
    } else {
        rc::NOT_AUTHORIZED
    };
    if allowed {
        let msg = Arc::new(Msg {
            topic,
            payload: p.payload,
            props: p.props,
            qos: p.qos,
            retain: p.retain,
            expires_at: p
                .expiry_secs
                .map(|s| engine.clock.now_ms() + i64::from(s) * 1000),
            from: Some(conn.client_id.clone()),
            to: None,
            encoded: Default::default(),
        });
        let journal = |msg: &Msg| {
            engine.observed.published(
                &msg.topic,
                &msg.payload,
                msg.qos,
                msg.retain,
                Some((&conn.client_id, conn.user.as_ref())),
                Origin::Client,
                None,
            )
        };
        if p.qos == 2 {
            // A resent QoS 2 PUBLISH (same id before PUBREL) is not
            // routed again.
            let m = msg.clone();
            let limit = if conn.version == V5 {
                usize::from(RECEIVE_MAXIMUM)
            } else {
                usize::MAX
            };
            match engine.route_qos2(ctl, &conn.client_id, p.pid, msg, limit, congested) {
                Ok(true) => journal(&m),
                Ok(false) => {}
                Err(()) => {
                    return Err(ProtocolError::new(
                        rc::RECEIVE_MAXIMUM_EXCEEDED,
                        format!("more than {RECEIVE_MAXIMUM} QoS 2 messages waiting for PUBREL"),
                    ));
                }
            }
        } else {
            journal(&msg);
            engine.route_from(Some(ctl), msg, congested);
        }
    } else {
        tracing::debug!(client_id = %conn.client_id, topic = %topic, "publish refused by the ACL");
    }
    match p.qos {
        1 => codec::encode_ack(out, 4, p.pid, code, conn.version),
        2 => codec::encode_ack(out, 5, p.pid, code, conn.version),
        _ => {}
    }
    Ok(())
}

/// Writes `out` packet by packet through the fault rules. `Ok(Some(code))`:
/// a rule disconnects the client.
async fn write_with_faults<S>(
    engine: &Engine,
    conn: &mut Conn,
    stream: &mut S,
    out: &[u8],
    ctl: &ConnCtl,
) -> Result<Option<u8>, ()>
where
    S: AsyncWrite + Unpin,
{
    let written = &ctl.written_bytes;
    let mut pending = BytesMut::with_capacity(out.len());
    let mut slowed = false;
    let aliases = &mut conn.out_aliases;
    // Aliases are set in the order packets reach the socket.
    let emit =
        |aliases: &mut Option<Box<OutAliases>>, pending: &mut BytesMut, pkt: &[u8]| match aliases {
            Some(a) => a.put(pkt, pending),
            None => pending.extend_from_slice(pkt),
        };
    let mut i = 0;
    while i < out.len() {
        // The engine's own output: always whole packets.
        let Ok(Some((header, body_len))) = codec::fixed_header(&out[i..]) else {
            break;
        };
        let len = header + body_len;
        let pkt = &out[i..i + len];
        i += len;
        let kind = PacketKind::of_first_byte(pkt[0]).unwrap_or(PacketKind::Publish);
        let topic = (kind == PacketKind::Publish)
            .then(|| {
                let body = &pkt[header..];
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                std::str::from_utf8(&body[2..2 + tl]).ok()
            })
            .flatten();
        let verdict = engine.faults.on(&faults::Packet {
            client_id: &conn.client_id,
            user: conn.user.as_deref(),
            direction: Direction::Out,
            kind,
            topic,
        });
        match verdict {
            Verdict::Pass | Verdict::RefuseConnect(_) => emit(aliases, &mut pending, pkt),
            Verdict::Drop => {
                if kind == PacketKind::Publish {
                    engine.fault_dropped(&conn.client_id, topic.unwrap_or(""), (pkt[0] >> 1) & 3);
                }
            }
            Verdict::Duplicate => {
                emit(aliases, &mut pending, pkt);
                let start = pending.len();
                emit(aliases, &mut pending, pkt);
                if kind == PacketKind::Publish && (pkt[0] >> 1) & 3 > 0 {
                    pending[start] |= 0x08;
                }
            }
            Verdict::Reorder => {
                if let Some(prev) = conn.held_back.replace(pkt.to_vec()) {
                    emit(aliases, &mut pending, &prev);
                }
                continue;
            }
            Verdict::Delay(ms) => {
                slowed = true;
                ctl.slowed_by_fault.store(true, Ordering::Relaxed);
                flush(stream, &mut pending, written).await?;
                if !pause(ctl, Duration::from_millis(ms)).await {
                    return Ok(None);
                }
                emit(aliases, &mut pending, pkt);
            }
            Verdict::Throttle(bps) => {
                slowed = true;
                ctl.slowed_by_fault.store(true, Ordering::Relaxed);
                flush(stream, &mut pending, written).await?;
                emit(aliases, &mut pending, pkt);
                let secs = pending.len() as f64 / bps as f64;
                flush(stream, &mut pending, written).await?;
                if !pause(ctl, Duration::from_secs_f64(secs)).await {
                    return Ok(None);
                }
            }
            Verdict::Disconnect(code) => {
                flush(stream, &mut pending, written).await?;
                return Ok(Some(code));
            }
        }
        if let Some(prev) = conn.held_back.take() {
            emit(aliases, &mut pending, &prev);
        }
    }
    ctl.slowed_by_fault.store(slowed, Ordering::Relaxed);
    flush(stream, &mut pending, written).await?;
    Ok(None)
}

/// Sleeps for `d`, unless the connection is told to close first
/// (`false`): a slow link staged by a fault rule does not hold up a
/// takeover or the broker's shutdown.
async fn pause(ctl: &ConnCtl, d: Duration) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        if ctl.closing().is_some() {
            return false;
        }
        tokio::select! {
            _ = &mut sleep => return true,
            _ = ctl.wake.notified() => {}
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pending: &mut BytesMut,
    written: &AtomicU64,
) -> Result<(), ()> {
    if !pending.is_empty() {
        send_counted(stream, pending, written)
            .await
            .map_err(|_| ())?;
        pending.clear();
    }
    Ok(())
}
