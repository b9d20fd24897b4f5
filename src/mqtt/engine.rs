//! The broker engine's core: sessions, the subscription tree and retained
//! messages under one lock, and the operations connections and the server
//! perform on them (connect, route, pull, acknowledge, subscribe,
//! disconnect), plus the timers that run on the server's clock (will
//! delay, session expiry).
//!
//! One std mutex guards the core: every operation is a short map update
//! or a tree walk, never held across an `.await`; wake-ups and I/O happen
//! after it is released. The listener and the per-connection tasks are in
//! `conn.rs`; the packet formats in `codec.rs`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::auth::Authorizer;
use super::codec::{OutPublish, V5, rc};
use super::journal::Origin;
use super::observed::Observed;
use super::session::{
    Addressee, ConnCtl, Delivery, Enqueued, Flight, Link, Msg, NEVER, Session, SessionCounters,
    Will,
};
use super::store::{Loaded, Op, RELEASED, SENT, Store};
use super::tree::{Filter, Hit, SubOpts, Tree, parse_filter};
use super::{FastMap, Qos};
use crate::clock::{Clock, wall_ms};

/// The end of one connected client's deliveries at a moment.
pub(crate) struct Mark {
    client_id: Arc<str>,
    ctl: Arc<ConnCtl>,
    upto: u64,
}

/// A client that has not yet received everything up to its mark.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PendingDelivery {
    /// The client's MQTT client id.
    pub client_id: String,
    /// Messages still waiting in its queue.
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages taken from the queue whose write to the socket has not
    /// finished.
    pub writing: bool,
}

/// Engine-wide counters (read into [`super::BrokerCounters`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub dropped_fault: AtomicU64,
    pub received: AtomicU64,
    pub routed_deliveries: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_offline_qos0: AtomicU64,
    pub wills_published: AtomicU64,
    pub connections_refused: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub packets_too_large: AtomicU64,
    pub publishers_paced: AtomicU64,
    pub subscribers_stalled: AtomicU64,
}

impl Counters {
    /// A packet over the broker's maximum: a protocol error of its own
    /// kind, counted both ways so `/health` can tell it apart.
    pub(super) fn count_too_large(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        self.packets_too_large.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Will { client: Arc<str>, generation: u64 },
    SessionEnd { client: Arc<str>, generation: u64 },
}

#[derive(Default)]
struct Core {
    sessions: FastMap<Arc<str>, Session>,
    tree: Tree,
    retained: FastMap<Arc<str>, Arc<Msg>>,
    /// (due sim ms, sequence) → timer.
    timers: BTreeMap<(i64, u64), Timer>,
    timer_seq: u64,
    /// Session generations, unique across sessions: a timer set for a
    /// session that was since replaced never matches its successor.
    generations: u64,
    /// Reused per route: matching subscriptions.
    hits: Vec<Hit>,
}

impl Core {
    /// Sets a timer; timers due at the same time fire in the order set.
    fn schedule(&mut self, due: i64, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((due, self.timer_seq), timer);
    }
}

/// A publisher stops reading while a connection it just queued for is
/// this full (thousandths of the queue's budget in messages or bytes)...
pub(super) const CONGESTED: usize = 250;
/// ...until that queue is below this, or the connection wrote nothing
/// for [`super::conn::STALLED`] (a client that does not read does not
/// hold anyone back: its queue fills and drops, counted).
pub(super) const DRAINED: usize = 125;

/// Wakes the connections a message was queued for and, for a client's
/// message (`from`), picks the fullest congested one other than the
/// publisher's own that still drains.
fn wake_all(
    wakes: Vec<Arc<ConnCtl>>,
    from: Option<&ConnCtl>,
    congested: &mut Option<Arc<ConnCtl>>,
) {
    for w in wakes {
        if from.is_some_and(|f| f.id != w.id) && !w.stalled() {
            let fill = w.fill.load(Ordering::Relaxed);
            if fill >= CONGESTED
                && congested
                    .as_ref()
                    .is_none_or(|c| c.fill.load(Ordering::Relaxed) < fill)
            {
                *congested = Some(w.clone());
            }
        }
        w.wake.notify_one();
    }
}

/// Dropped messages kept in the drop log.
pub(crate) const DROP_LOG_CAPACITY: usize = 10_000;

/// Why a message did not reach a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DropReason {
    /// The session's queue was full.
    QueueFull,
    /// It expired before it could be sent.
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
    /// A packet fault rule dropped it.
    Fault,
}

/// One dropped message, as the drop log keeps it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DropEvent {
    pub seq: u64,
    /// Simulated time, RFC 3339.
    pub sim_time: String,
    pub client_id: String,
    pub topic: String,
    pub qos: u8,
    pub reason: DropReason,
}

#[derive(Default)]
struct DropLog {
    entries: std::collections::VecDeque<DropEvent>,
    seq: u64,
    evicted: u64,
}

pub(crate) struct Engine {
    // A std mutex: see the module comment.
    core: Mutex<Core>,
    // A std mutex: held to push or copy, never across an await.
    drops: Mutex<DropLog>,
    pub observed: Arc<Observed>,
    pub clock: Clock,
    pub limits: super::Limits,
    pub authorizer: Option<Arc<dyn Authorizer>>,
    pub counters: Counters,
    timers_changed: Notify,
    /// Live connections (after CONNECT was read).
    pub conns: AtomicUsize,
    pub next_conn: AtomicU64,
    /// False during an outage and after shutdown: CONNECTs are refused.
    pub accepting: AtomicBool,
    stopped: Notify,
    /// Durable state under `--data-dir`; `None` keeps it in memory.
    pub store: Option<Store>,
    pub faults: super::faults::Faults,
}

/// What a CONNECT got.
pub(crate) struct Accepted {
    pub session_present: bool,
    pub subscriptions: BTreeMap<String, Qos>,
}

/// One packet to write to a connection.
pub(crate) enum Out {
    Publish { d: Delivery, pid: u16, dup: bool },
    PubRel(u16),
}

/// How a connection ended, for its will and session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// DISCONNECT with reason 0x00: no will.
    Normal,
    /// DISCONNECT with reason 0x04: the will is published.
    WithWill,
    /// Anything else: network error, protocol error, keepalive, outage.
    Abrupt,
    /// Closed because another connection took the session over.
    TakenOver,
}

/// Wills to publish once the core lock is released.
type Wills = Vec<(Arc<str>, Option<Arc<str>>, Arc<Msg>)>;

impl Engine {
    pub(super) fn new(
        observed: Arc<Observed>,
        clock: Clock,
        limits: super::Limits,
        authorizer: Option<Arc<dyn Authorizer>>,
        store: Option<(Store, Loaded)>,
        seed: u64,
    ) -> Arc<Self> {
        let mut core = Core::default();
        let store = store.map(|(store, loaded)| {
            load_into(&mut core, loaded, clock.now_ms());
            store
        });
        Arc::new(Self {
            core: Mutex::new(core),
            drops: Mutex::default(),
            observed,
            clock,
            limits,
            authorizer,
            counters: Counters::default(),
            timers_changed: Notify::new(),
            conns: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            accepting: AtomicBool::new(true),
            stopped: Notify::new(),
            store,
            faults: super::faults::Faults::new(seed),
        })
    }

    /// Queues a store write (with `--data-dir`); call under the core lock.
    fn persist(&self, op: impl FnOnce() -> Op) {
        if let Some(store) = &self.store {
            store.push(op());
        }
    }

    /// Logs a dropped message (bounded: the oldest entry is evicted and
    /// counted).
    fn log_drop(&self, client_id: &str, msg: &Msg, qos: u8, reason: DropReason) {
        let mut log = self.drops.lock().unwrap();
        log.seq += 1;
        if log.entries.len() == DROP_LOG_CAPACITY {
            log.entries.pop_front();
            log.evicted += 1;
        }
        let seq = log.seq;
        log.entries.push_back(DropEvent {
            seq,
            sim_time: crate::clock::rfc3339_ms(self.clock.now_ms()),
            client_id: client_id.to_string(),
            topic: msg.topic.to_string(),
            qos,
            reason,
        });
    }

    /// Drops logged after `since`, and how many the log evicted.
    pub(super) fn drop_log(&self, since: u64) -> (Vec<DropEvent>, u64) {
        let log = self.drops.lock().unwrap();
        (
            log.entries
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
            log.evicted,
        )
    }

    fn persist_session(&self, s: &Session) {
        if s.persistent() {
            self.persist(|| Op::SessionPut {
                client_id: s.client_id.clone(),
                user: s.user.clone(),
                version: s.version,
                expiry_secs: s.expiry_secs,
                subs: s.subs.iter().map(|(f, o)| (f.clone(), *o)).collect(),
            });
        }
    }

    // ---- connecting ----

    /// Sets up the session of an accepted CONNECT: resumes or replaces the
    /// old one, takes over a live connection of the same id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect(
        &self,
        ctl: &Arc<ConnCtl>,
        client_id: &Arc<str>,
        user: Option<Arc<str>>,
        version: u8,
        clean_start: bool,
        expiry_secs: u32,
        will: Option<Will>,
        window: u16,
        max_packet: usize,
    ) -> Accepted {
        let mut wills: Wills = Vec::new();
        let accepted = {
            let mut core = self.core.lock().unwrap();
            let core = &mut *core;
            let mut resumable = false;
            if let Some(old) = core.sessions.get_mut(client_id) {
                if let Some(link) = old.link.take() {
                    link.ctl.close_with(rc::SESSION_TAKEN_OVER);
                    // The old connection closed without DISCONNECT: its
                    // will goes out unless it was to wait (the new
                    // connection arrived within its delay).
                    if let Some(w) = old.will.take()
                        && (w.delay_secs == 0 || clean_start)
                    {
                        wills.push((old.client_id.clone(), old.user.clone(), w.msg));
                    }
                } else if let Some(w) = old.will.take()
                    && clean_start
                {
                    // A delayed will of an ended connection, pre-empted by a
                    // new connection: not sent (MQTT-3.1.3-9).
                    drop(w);
                }
                resumable = !clean_start && old.user == user;
            }
            if !resumable && let Some(old) = core.sessions.remove(client_id) {
                remove_subscriptions(&mut core.tree, &old);
                if old.persistent() {
                    self.persist(|| Op::SessionDel(client_id.clone()));
                }
            }
            let session = core
                .sessions
                .entry(client_id.clone())
                .or_insert_with(|| Session::new(client_id.clone(), version));
            session.user = user;
            session.version = version;
            session.expiry_secs = expiry_secs;
            session.will = will;
            core.generations += 1;
            session.generation = core.generations;
            session.resend = !session.inflight.is_empty();
            session.connected_at_ms = wall_ms();
            session.clean_start = clean_start;
            session.link = Some(Link {
                ctl: ctl.clone(),
                window: window.min(self.limits.max_inflight).max(1),
                max_packet,
            });
            self.persist_session(session);
            Accepted {
                session_present: resumable,
                subscriptions: session
                    .subs
                    .iter()
                    .map(|(f, o)| (f.clone(), Qos::try_from(o.qos).unwrap_or_default()))
                    .collect(),
            }
        };
        self.publish_wills(wills);
        accepted
    }

    /// The connection `ctl` of `client_id` ended.
    pub(super) fn disconnected(
        &self,
        ctl: &ConnCtl,
        client_id: &Arc<str>,
        ending: Ending,
        expiry_override: Option<u32>,
    ) {
        let now = self.clock.now_ms();
        let mut wills: Wills = Vec::new();
        let mut timers_changed = false;
        {
            let mut core = self.core.lock().unwrap();
            let core = &mut *core;
            let Some(session) = core.sessions.get_mut(client_id) else {
                return;
            };
            if !session.is_link(ctl) || ending == Ending::TakenOver {
                return;
            }
            session.link = None;
            core.generations += 1;
            session.generation = core.generations;
            if let Some(e) = expiry_override {
                session.expiry_secs = e;
                self.persist_session(session);
            }
            let will = session.will.take();
            let expiry = session.expiry_secs;
            let generation = session.generation;
            let user = session.user.clone();
            match (ending, will) {
                (Ending::Normal, _) | (_, None) => {}
                (_, Some(w)) if w.delay_secs == 0 || expiry == 0 => {
                    wills.push((client_id.clone(), user, w.msg));
                }
                (_, Some(w)) => {
                    let delay = w.delay_secs.min(expiry);
                    session.will = Some(w);
                    core.schedule(
                        now + i64::from(delay) * 1000,
                        Timer::Will {
                            client: client_id.clone(),
                            generation,
                        },
                    );
                    timers_changed = true;
                }
            }
            if expiry == 0 {
                if let Some(old) = core.sessions.remove(client_id) {
                    remove_subscriptions(&mut core.tree, &old);
                    if expiry_override.is_some() {
                        self.persist(|| Op::SessionDel(client_id.clone()));
                    }
                }
            } else if expiry != NEVER {
                core.schedule(
                    now + i64::from(expiry) * 1000,
                    Timer::SessionEnd {
                        client: client_id.clone(),
                        generation,
                    },
                );
                timers_changed = true;
            }
        }
        if timers_changed {
            self.timers_changed.notify_one();
        }
        self.publish_wills(wills);
    }

    fn publish_wills(&self, wills: Wills) {
        for (client, user, msg) in wills {
            let allowed = self
                .authorizer
                .as_ref()
                .is_none_or(|a| a.may_publish(&client, user.as_deref(), &msg.topic));
            if !allowed {
                tracing::debug!(client_id = %client, topic = %msg.topic, "will not published: not authorized");
                continue;
            }
            self.counters
                .wills_published
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client_id = %client, topic = %msg.topic, "publishing will");
            self.observed.published(
                &msg.topic,
                &msg.payload,
                msg.qos,
                msg.retain,
                Some((&client, user.as_ref())),
                Origin::Will,
                None,
            );
            self.route(msg);
        }
    }

    // ---- routing ----

    /// Routes a message to every matching session; answers how many
    /// sessions it was queued for.
    pub(super) fn route(&self, msg: Arc<Msg>) -> usize {
        self.route_from(None, msg, &mut None)
    }

    /// [`Engine::route`] for a client's PUBLISH (`from`): also answers, in
    /// `congested`, the fullest connection it queued for (other than the
    /// publisher's own) whose queue is past [`CONGESTED`].
    pub(super) fn route_from(
        &self,
        from: Option<&ConnCtl>,
        msg: Arc<Msg>,
        congested: &mut Option<Arc<ConnCtl>>,
    ) -> usize {
        let mut wakes: Vec<Arc<ConnCtl>> = Vec::new();
        let n = {
            let mut core = self.core.lock().unwrap();
            self.route_locked(&mut core, &msg, &mut wakes)
        };
        wake_all(wakes, from, congested);
        n
    }

    /// A client's PUBLISH at QoS 2: routed unless its packet id is already
    /// waiting for PUBREL (a resend). Answers whether it was new.
    /// `Err(())`: the client already has `limit` QoS 2 messages waiting
    /// for PUBREL (its Receive Maximum is exceeded).
    pub(super) fn route_qos2(
        &self,
        ctl: &ConnCtl,
        client_id: &str,
        pid: u16,
        msg: Arc<Msg>,
        limit: usize,
        congested: &mut Option<Arc<ConnCtl>>,
    ) -> Result<bool, ()> {
        let mut wakes = Vec::new();
        {
            let mut core = self.core.lock().unwrap();
            let Some(session) = core.sessions.get_mut(client_id) else {
                return Ok(false);
            };
            if !session.is_link(ctl) || session.awaiting_rel.contains(&pid) {
                return Ok(false);
            }
            if session.awaiting_rel.len() >= limit {
                return Err(());
            }
            session.awaiting_rel.insert(pid);
            self.route_locked(&mut core, &msg, &mut wakes);
        }
        wake_all(wakes, Some(ctl), congested);
        Ok(true)
    }

    /// PUBREL received: answers whether the packet id was known.
    pub(super) fn release(&self, client_id: &str, pid: u16) -> bool {
        let mut core = self.core.lock().unwrap();
        core.sessions
            .get_mut(client_id)
            .is_some_and(|s| s.awaiting_rel.remove(&pid))
    }

    fn route_locked(
        &self,
        core: &mut Core,
        msg: &Arc<Msg>,
        wakes: &mut Vec<Arc<ConnCtl>>,
    ) -> usize {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        // An addressed message is not kept as its topic's retained one:
        // the next device to subscribe there is not its addressee, and it
        // must not take the place of a retained message meant for all.
        if msg.retain && msg.to.is_none() {
            if msg.payload.is_empty() {
                if core.retained.remove(&msg.topic).is_some() {
                    self.persist(|| Op::RetainClear(msg.topic.clone()));
                }
            } else {
                msg.share_encodings();
                core.retained.insert(msg.topic.clone(), msg.clone());
                self.persist(|| Op::RetainSet(msg.clone()));
            }
        }
        let mut hits = std::mem::take(&mut core.hits);
        hits.clear();
        {
            let sessions = &core.sessions;
            let to = msg.to.as_deref();
            // Shared groups pick a member that is connected and, for an
            // addressed message, the addressee's.
            core.tree.matches(&msg.topic, &mut hits, &|c| {
                sessions.get(c).is_none_or(|s| {
                    s.link.is_none() || to.is_some_and(|to| !to.is(c, s.user.as_deref()))
                })
            });
        }
        if hits.len() > 1 {
            hits.sort_unstable_by(|a, b| a.client.cmp(&b.client));
            // Likely more than one delivery: laid out once, shared.
            msg.share_encodings();
        }
        let mut routed = 0;
        let mut i = 0;
        while i < hits.len() {
            let client = hits[i].client.clone();
            let mut qos: Option<u8> = None;
            let mut rap = false;
            let mut ids: Vec<u32> = Vec::new();
            while i < hits.len() && hits[i].client == client {
                let h = &hits[i];
                i += 1;
                if h.opts.no_local && !h.shared && msg.from.as_deref() == Some(&*client) {
                    continue;
                }
                qos = Some(qos.unwrap_or(0).max(h.opts.qos));
                rap |= h.opts.retain_as_published;
                if let Some(id) = h.opts.sub_id {
                    ids.push(id);
                }
            }
            let Some(qos) = qos else { continue };
            let Some(session) = core.sessions.get_mut(&client) else {
                continue;
            };
            // Like no-local, addressing leaves a session out before
            // anything is counted for it.
            if let Some(to) = &msg.to
                && !to.is(&client, session.user.as_deref())
            {
                continue;
            }
            let qos = qos.min(msg.qos);
            if session.link.is_none() && (qos == 0 || !session.persistent()) {
                self.counters
                    .dropped_offline_qos0
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let d = Delivery {
                seq: 0,
                msg: msg.clone(),
                qos,
                retain: msg.retain && rap,
                sub_ids: (!ids.is_empty()).then(|| ids.into_boxed_slice()),
            };
            let stored = qos > 0 && session.persistent();
            match session.enqueue(
                d,
                self.limits.max_queued_per_session,
                self.limits.max_queued_bytes_per_session,
            ) {
                Enqueued::Queued => {}
                Enqueued::QueuedDroppedOldest(old) => {
                    self.counters
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    self.log_drop(&client, &old.msg, old.qos, DropReason::QueueFull);
                    if old.qos > 0 && stored {
                        self.persist(|| Op::MsgDel {
                            client_id: client.clone(),
                            seq: old.seq,
                        });
                    }
                }
                Enqueued::Dropped => {
                    self.counters
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    self.log_drop(&client, msg, qos, DropReason::QueueFull);
                }
            }
            if stored && let Some(d) = session.queue.back() {
                let d = d.clone();
                self.persist(|| Op::MsgAdd {
                    client_id: client.clone(),
                    seq: d.seq,
                    d,
                });
            }
            routed += 1;
            if let Some(link) = &session.link {
                link.ctl.fill.store(
                    session.fill(
                        self.limits.max_queued_per_session,
                        self.limits.max_queued_bytes_per_session,
                    ),
                    Ordering::Relaxed,
                );
                wakes.push(link.ctl.clone());
            }
        }
        core.hits = hits;
        self.counters
            .routed_deliveries
            .fetch_add(routed as u64, Ordering::Relaxed);
        routed
    }

    // ---- sending ----

    /// Takes what connection `ctl` may send now: in-flight messages again
    /// after a resume, then queued messages within its window, at most
    /// `max` of them. Answers whether more are waiting.
    pub(super) fn pull(
        &self,
        ctl: &ConnCtl,
        client_id: &str,
        max: usize,
        out: &mut Vec<Out>,
    ) -> bool {
        let now = self.clock.now_ms();
        let mut core = self.core.lock().unwrap();
        let Some(s) = core.sessions.get_mut(client_id) else {
            return false;
        };
        let Some(link) = &s.link else { return false };
        if link.ctl.id != ctl.id {
            return false;
        }
        let window = link.window as usize;
        let max_packet = link.max_packet;
        if s.resend {
            s.resend = false;
            for (pid, f) in &s.inflight {
                out.push(match f {
                    Flight::Publish(d) => Out::Publish {
                        d: d.clone(),
                        pid: *pid,
                        dup: true,
                    },
                    Flight::Released(_) => Out::PubRel(*pid),
                });
            }
        }
        while out.len() < max {
            let Some(front) = s.queue.front() else { break };
            if front.qos > 0 && s.inflight.len() >= window {
                break;
            }
            let d = s.pop().expect("front exists");
            let stored = d.qos > 0 && s.persistent();
            if d.msg.expired(now) {
                self.unsent(s, &d, stored, DropReason::Expired);
                continue;
            }
            let size = OutPublish {
                topic: &d.msg.topic,
                payload: &d.msg.payload,
                props: &d.msg.props,
                qos: d.qos,
                retain: d.retain,
                dup: false,
                pid: 1,
                expiry_secs: d.msg.expiry_left(now),
                sub_ids: d.sub_ids.as_deref().unwrap_or(&[]),
            }
            .size(s.version);
            if size > max_packet {
                self.unsent(s, &d, stored, DropReason::TooLarge);
                continue;
            }
            s.counters.sent += 1;
            let pid = if d.qos > 0 {
                let pid = s.alloc_pid();
                if stored {
                    self.persist(|| Op::MsgState {
                        client_id: s.client_id.clone(),
                        seq: d.seq,
                        state: SENT,
                        pid,
                    });
                }
                s.inflight.push_back((pid, Flight::Publish(d.clone())));
                pid
            } else {
                0
            };
            ctl.pulled_upto.store(d.seq, Ordering::Release);
            out.push(Out::Publish { d, pid, dup: false });
        }
        ctl.fill.store(
            s.fill(
                self.limits.max_queued_per_session,
                self.limits.max_queued_bytes_per_session,
            ),
            Ordering::Relaxed,
        );
        !s.queue.is_empty()
            && (s.inflight.len() < window || s.queue.front().is_some_and(|d| d.qos == 0))
    }

    /// Where each connected client's deliveries end now: what a delivery
    /// barrier waits for.
    pub(super) fn delivery_marks(&self) -> Vec<Mark> {
        let core = self.core.lock().unwrap();
        core.sessions
            .values()
            .filter_map(|s| {
                let link = s.link.as_ref()?;
                Some(Mark {
                    client_id: s.client_id.clone(),
                    ctl: link.ctl.clone(),
                    upto: s.next_seq,
                })
            })
            .collect()
    }

    /// `None` once the client has every delivery up to its mark: written
    /// to its socket (QoS 0) or acknowledged (QoS 1/2), or the client has
    /// gone (nothing more can reach that connection). Else what is left.
    pub(super) fn mark_pending(&self, mark: &Mark) -> Option<PendingDelivery> {
        let core = self.core.lock().unwrap();
        let s = core.sessions.get(&mark.client_id)?;
        if !s.is_link(&mark.ctl) {
            return None;
        }
        let queued = s.queue.iter().take_while(|d| d.seq <= mark.upto).count();
        let inflight = s
            .inflight
            .iter()
            .filter(|(_, f)| match f {
                Flight::Publish(d) => d.seq <= mark.upto,
                Flight::Released(seq) => *seq <= mark.upto,
            })
            .count();
        let pulled = mark.ctl.pulled_upto.load(Ordering::Acquire).min(mark.upto);
        let unwritten = mark.ctl.written_upto.load(Ordering::Acquire) < pulled;
        (queued > 0 || inflight > 0 || unwritten).then(|| PendingDelivery {
            client_id: mark.client_id.to_string(),
            queued,
            inflight,
            writing: unwritten,
        })
    }

    /// A queued delivery taken out without being sent: forgotten by the
    /// store, counted on the session and the engine, and logged.
    fn unsent(&self, s: &mut Session, d: &Delivery, stored: bool, reason: DropReason) {
        if stored {
            self.persist(|| Op::MsgDel {
                client_id: s.client_id.clone(),
                seq: d.seq,
            });
        }
        let (session, engine) = match reason {
            DropReason::Expired => (
                &mut s.counters.dropped_expired,
                &self.counters.dropped_expired,
            ),
            DropReason::TooLarge => (
                &mut s.counters.dropped_too_large,
                &self.counters.dropped_too_large,
            ),
            DropReason::QueueFull => (
                &mut s.counters.dropped_queue_full,
                &self.counters.dropped_queue_full,
            ),
            DropReason::Fault => (&mut s.counters.dropped_fault, &self.counters.dropped_fault),
        };
        *session += 1;
        engine.fetch_add(1, Ordering::Relaxed);
        self.log_drop(&s.client_id, &d.msg, d.qos, reason);
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for a message we sent.
    pub(super) fn finished(&self, client_id: &str, pid: u16) -> bool {
        let mut core = self.core.lock().unwrap();
        let Some(s) = core.sessions.get_mut(client_id) else {
            return false;
        };
        match s.inflight_position(pid) {
            Some(i) => {
                let (_, f) = s.inflight.remove(i).expect("position exists");
                if s.persistent() {
                    let seq = match f {
                        Flight::Publish(d) => d.seq,
                        Flight::Released(seq) => seq,
                    };
                    self.persist(|| Op::MsgDel {
                        client_id: s.client_id.clone(),
                        seq,
                    });
                }
                true
            }
            None => false,
        }
    }

    /// PUBREC for a QoS 2 message we sent: answers whether to send PUBREL
    /// (a PUBREC with an error code ends the exchange).
    pub(super) fn received(&self, client_id: &str, pid: u16, code: u8) -> Option<bool> {
        let mut core = self.core.lock().unwrap();
        let s = core.sessions.get_mut(client_id)?;
        let i = s.inflight_position(pid)?;
        let seq = match &s.inflight[i].1 {
            Flight::Publish(d) => d.seq,
            Flight::Released(seq) => *seq,
        };
        let stored = s.persistent();
        if code >= 0x80 {
            s.inflight.remove(i);
            if stored {
                self.persist(|| Op::MsgDel {
                    client_id: s.client_id.clone(),
                    seq,
                });
            }
            Some(false)
        } else {
            s.inflight[i].1 = Flight::Released(seq);
            if stored {
                self.persist(|| Op::MsgState {
                    client_id: s.client_id.clone(),
                    seq,
                    state: RELEASED,
                    pid,
                });
            }
            Some(true)
        }
    }

    // ---- subscriptions ----

    /// Adds subscriptions; answers a reason code per filter (granted QoS
    /// or an error) and queues the retained messages they ask for.
    pub(super) fn subscribe(
        &self,
        client_id: &Arc<str>,
        user: Option<&str>,
        version: u8,
        filters: &[(String, SubOpts)],
    ) -> Vec<u8> {
        let now = self.clock.now_ms();
        let refused = if version == V5 {
            rc::NOT_AUTHORIZED
        } else {
            0x80
        };
        let invalid = if version == V5 {
            rc::TOPIC_FILTER_INVALID
        } else {
            0x80
        };
        let allowed: Vec<Option<u8>> = filters
            .iter()
            .map(|(f, _)| match parse_filter(f) {
                Err(_) => Some(invalid),
                Ok(_) => match &self.authorizer {
                    Some(a) if !a.may_subscribe(client_id, user, f) => Some(refused),
                    _ => None,
                },
            })
            .collect();
        let mut codes = Vec::with_capacity(filters.len());
        let mut granted = Vec::new();
        let wake = {
            let mut core = self.core.lock().unwrap();
            let core = &mut *core;
            let Some(session) = core.sessions.get_mut(client_id) else {
                return vec![rc::UNSPECIFIED; filters.len()];
            };
            for ((raw, opts), refusal) in filters.iter().zip(allowed) {
                if let Some(code) = refusal {
                    codes.push(code);
                    continue;
                }
                let f = parse_filter(raw).expect("checked above");
                let existed = core.tree.insert(&f, client_id, *opts);
                session.subs.insert(raw.clone(), *opts);
                codes.push(opts.qos);
                granted.push((raw.clone(), Qos::try_from(opts.qos).unwrap_or_default()));
                let send_retained = f.group.is_none()
                    && (opts.retain_handling == 0 || (opts.retain_handling == 1 && !existed));
                if send_retained {
                    queue_retained(
                        &mut core.retained,
                        session,
                        &f,
                        opts,
                        now,
                        &self.limits,
                        &self.counters,
                    );
                }
            }
            self.persist_session(session);
            session.link.as_ref().map(|l| l.ctl.clone())
        };
        if let Some(ctl) = wake {
            ctl.wake.notify_one();
        }
        self.observed.subscribed(client_id, granted);
        codes
    }

    /// Removes subscriptions; answers whether each existed.
    pub(super) fn unsubscribe(&self, client_id: &str, filters: &[String]) -> Vec<bool> {
        let out = {
            let mut core = self.core.lock().unwrap();
            let core = &mut *core;
            let Some(session) = core.sessions.get_mut(client_id) else {
                return vec![false; filters.len()];
            };
            let out = filters
                .iter()
                .map(|raw| {
                    let existed = session.subs.remove(raw).is_some();
                    if let Ok(f) = parse_filter(raw) {
                        core.tree.remove(&f, client_id);
                    }
                    existed
                })
                .collect();
            self.persist_session(session);
            out
        };
        self.observed.unsubscribed(client_id, filters);
        out
    }

    // ---- timers on the server's clock ----

    /// Fires wills whose delay ran out and ends expired sessions, in time
    /// order, as the clock reaches them. Runs until [`Engine::stop_timers`].
    pub(super) async fn run_timers(self: Arc<Self>) {
        loop {
            let next = self.core.lock().unwrap().timers.keys().next().map(|k| k.0);
            let changed = self.timers_changed.notified();
            match next {
                Some(due) => {
                    tokio::select! {
                        _ = self.clock.sleep_until(due) => {}
                        _ = changed => continue,
                        _ = self.stopped.notified() => return,
                    }
                }
                None => {
                    tokio::select! {
                        _ = changed => continue,
                        _ = self.stopped.notified() => return,
                    }
                }
            }
            self.fire_due(self.clock.now_ms());
        }
    }

    pub(super) fn stop_timers(&self) {
        self.stopped.notify_waiters();
        self.stopped.notify_one();
    }

    fn fire_due(&self, now: i64) {
        loop {
            let mut wills: Wills = Vec::new();
            {
                let mut core = self.core.lock().unwrap();
                let core = &mut *core;
                let Some((&key, _)) = core.timers.iter().next() else {
                    return;
                };
                if key.0 > now {
                    return;
                }
                let timer = core.timers.remove(&key).expect("first key");
                match timer {
                    Timer::Will { client, generation } => {
                        if let Some(s) = core.sessions.get_mut(&client)
                            && s.generation == generation
                            && s.link.is_none()
                            && let Some(w) = s.will.take()
                        {
                            wills.push((client, s.user.clone(), w.msg));
                        }
                    }
                    Timer::SessionEnd { client, generation } => {
                        let ends = core
                            .sessions
                            .get(&client)
                            .is_some_and(|s| s.generation == generation && s.link.is_none());
                        if ends && let Some(mut s) = core.sessions.remove(&client) {
                            if let Some(w) = s.will.take() {
                                wills.push((client.clone(), s.user.clone(), w.msg));
                            }
                            remove_subscriptions(&mut core.tree, &s);
                            self.persist(|| Op::SessionDel(client.clone()));
                            tracing::debug!(client_id = %client, "MQTT session expired");
                        }
                    }
                }
            }
            self.publish_wills(wills);
        }
    }

    // ---- outages and shutdown ----

    /// Closes every live connection with `code` (wills fire) and waits up
    /// to `within` for them to finish.
    pub(super) async fn close_all(&self, code: u8, within: Duration) {
        let ctls: Vec<Arc<ConnCtl>> = {
            let core = self.core.lock().unwrap();
            core.sessions
                .values()
                .filter_map(|s| s.link.as_ref().map(|l| l.ctl.clone()))
                .collect()
        };
        for c in ctls {
            c.close_with(code);
        }
        let deadline = tokio::time::Instant::now() + within;
        while self.conns.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ---- views ----

    pub(super) fn session_counters(&self) -> HashMap<Arc<str>, (usize, usize, SessionCounters)> {
        let core = self.core.lock().unwrap();
        core.sessions
            .iter()
            .map(|(id, s)| (id.clone(), (s.queue.len(), s.inflight.len(), s.counters)))
            .collect()
    }

    /// A PUBLISH to `client_id` that a fault rule dropped.
    pub(super) fn fault_dropped(&self, client_id: &str, topic: &str, qos: u8) {
        self.counters.dropped_fault.fetch_add(1, Ordering::Relaxed);
        let msg = server_msg(topic, Bytes::new(), Bytes::new(), qos, false, None);
        self.log_drop(client_id, &msg, qos, DropReason::Fault);
        let mut core = self.core.lock().unwrap();
        if let Some(s) = core.sessions.get_mut(client_id) {
            s.counters.dropped_fault += 1;
        }
    }

    pub(super) fn counters(&self) -> super::BrokerCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        super::BrokerCounters {
            received: get(&c.received),
            deliveries: get(&c.routed_deliveries),
            dropped_queue_full: get(&c.dropped_queue_full),
            dropped_expired: get(&c.dropped_expired),
            dropped_too_large: get(&c.dropped_too_large),
            dropped_fault: get(&c.dropped_fault),
            skipped_offline_qos0: get(&c.dropped_offline_qos0),
            wills_published: get(&c.wills_published),
            connections_refused: get(&c.connections_refused),
            protocol_errors: get(&c.protocol_errors),
            packets_too_large: get(&c.packets_too_large),
            publishers_paced: get(&c.publishers_paced),
            subscribers_stalled: get(&c.subscribers_stalled),
        }
    }

    pub(super) fn sizes(&self) -> (usize, usize, usize) {
        let core = self.core.lock().unwrap();
        (core.sessions.len(), core.tree.len(), core.retained.len())
    }
}

/// Puts what the store held back into a fresh core: retained messages,
/// sessions (offline, their expiry counted from now) with their
/// subscriptions and messages.
fn load_into(core: &mut Core, loaded: Loaded, now: i64) {
    for m in loaded.retained {
        if !m.expired(now) {
            core.retained.insert(m.topic.clone(), m);
        }
    }
    for ls in loaded.sessions {
        let mut s = Session::new(ls.client_id.clone(), ls.version);
        s.user = ls.user;
        s.expiry_secs = ls.expiry_secs;
        for (raw, opts) in ls.subs {
            if let Ok(f) = parse_filter(&raw) {
                core.tree.insert(&f, &ls.client_id, opts);
                s.subs.insert(raw, opts);
            }
        }
        for (seq, state, pid, mut d) in ls.messages {
            d.seq = seq;
            s.next_seq = s.next_seq.max(seq);
            match state {
                SENT => s.inflight.push_back((pid, Flight::Publish(d))),
                RELEASED => s.inflight.push_back((pid, Flight::Released(seq))),
                _ => {
                    s.queued_bytes += d.msg.weight();
                    s.queue.push_back(d);
                }
            }
            s.next_pid = s.next_pid.max(pid);
        }
        s.resend = !s.inflight.is_empty();
        if s.expiry_secs != NEVER {
            core.schedule(
                now + i64::from(s.expiry_secs) * 1000,
                Timer::SessionEnd {
                    client: ls.client_id.clone(),
                    generation: 0,
                },
            );
        }
        core.sessions.insert(ls.client_id, s);
    }
}

fn remove_subscriptions(tree: &mut Tree, s: &Session) {
    for raw in s.subs.keys() {
        if let Ok(f) = parse_filter(raw) {
            tree.remove(&f, &s.client_id);
        }
    }
}

fn queue_retained(
    retained: &mut FastMap<Arc<str>, Arc<Msg>>,
    session: &mut Session,
    f: &Filter<'_>,
    opts: &SubOpts,
    now: i64,
    limits: &super::Limits,
    counters: &Counters,
) {
    let mut matching: Vec<Arc<Msg>> = Vec::new();
    retained.retain(|topic, m| {
        if m.expired(now) {
            return false;
        }
        if super::topics::matches(f.filter, topic) {
            matching.push(m.clone());
        }
        true
    });
    // A stable order for the same state: by topic.
    matching.sort_by(|a, b| a.topic.cmp(&b.topic));
    for m in matching {
        let d = Delivery {
            seq: 0,
            qos: m.qos.min(opts.qos),
            retain: true,
            sub_ids: opts.sub_id.map(|id| vec![id].into_boxed_slice()),
            msg: m,
        };
        if !matches!(
            session.enqueue(
                d,
                limits.max_queued_per_session,
                limits.max_queued_bytes_per_session
            ),
            Enqueued::Queued
        ) {
            counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A message the server itself publishes, for anyone subscribed or
/// addressed to one device (`to`).
pub(crate) fn server_msg(
    topic: &str,
    payload: Bytes,
    props: Bytes,
    qos: u8,
    retain: bool,
    to: Option<Arc<Addressee>>,
) -> Arc<Msg> {
    Arc::new(Msg {
        topic: topic.into(),
        payload,
        props,
        qos,
        retain,
        expires_at: None,
        from: None,
        to,
        encoded: Default::default(),
    })
}

/// Where the engine listens; answered by [`super::conn::listen`].
pub(crate) struct Listening {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}
