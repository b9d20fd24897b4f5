//! What the broker tells the rest of the server: the journal of accepted
//! messages, client connect and disconnect events, granted subscriptions,
//! and taps (in-process listeners on what clients publish). The engine
//! calls these hooks; the facade reads them. Nothing here knows packets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::journal::{Journal, Origin};
use super::session::Addressee;
use super::{ClientEvent, Qos};
use crate::clock::{Clock, wall_ms};

pub(crate) struct Observed {
    pub journal: Journal,
    pub clock: Clock,
    pub events: broadcast::Sender<ClientEvent>,
    // std locks: held for a map update or a scan, never across an await.
    clients: Mutex<super::FastMap<Arc<str>, Client>>,
    /// In-process listeners on what clients publish (the command engine
    /// reads acks this way). Written when a tap is added, read per publish.
    pub taps: RwLock<Vec<Tap>>,
    pub subscribed: broadcast::Sender<Subscribed>,
}

/// A client's granted subscriptions (the command engine delivers a real
/// device's queued commands once it listens for them).
#[derive(Debug, Clone)]
pub(crate) struct Subscribed {
    pub client_id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub filters: Vec<String>,
}

/// A listener on client publishes matching `filter`, with a bounded queue;
/// what does not fit is counted in `dropped`.
pub(crate) struct Tap {
    pub filter: String,
    pub tx: tokio::sync::mpsc::Sender<Tapped>,
    pub dropped: Arc<AtomicU64>,
}

/// A message a client published, as a tap sees it.
#[derive(Debug, Clone)]
pub(crate) struct Tapped {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub client_id: Arc<str>,
    pub user: Option<Arc<str>>,
}

struct Client {
    /// Connections with this id (briefly 2 during a takeover).
    connections: u32,
    user: Option<Arc<str>>,
    connected_at_ms: i64,
    clean_start: bool,
    keep_alive: u16,
    subscriptions: BTreeMap<String, Qos>,
}

/// A connected client, as the facade lists it.
pub(crate) struct ClientView {
    pub client_id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub connected_at_ms: i64,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub subscriptions: BTreeMap<String, Qos>,
}

impl Observed {
    pub(super) fn new(journal: Journal, clock: Clock) -> Self {
        Self {
            journal,
            clock,
            events: broadcast::channel(1024).0,
            clients: Mutex::default(),
            taps: RwLock::default(),
            subscribed: broadcast::channel(1024).0,
        }
    }

    pub(super) fn clients(&self) -> Vec<ClientView> {
        let clients = self.clients.lock().unwrap();
        let mut out: Vec<ClientView> = clients
            .iter()
            .map(|(id, c)| ClientView {
                client_id: id.clone(),
                user: c.user.clone(),
                connected_at_ms: c.connected_at_ms,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                subscriptions: c.subscriptions.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Whether the client with this id, or a client logged in as this
    /// user, has a subscription matching `topic`.
    pub(super) fn listens(&self, who: &str, topic: &str) -> bool {
        let clients = self.clients.lock().unwrap();
        let matches = |c: &Client| {
            c.subscriptions
                .keys()
                .any(|f| super::topics::matches(strip_share(f), topic))
        };
        if let Some(c) = clients.get(who)
            && matches(c)
        {
            return true;
        }
        clients
            .values()
            .any(|c| c.user.as_deref() == Some(who) && matches(c))
    }

    pub(super) fn client_count(&self) -> usize {
        self.clients.lock().unwrap().len()
    }

    /// A connection was accepted (CONNACK success), with the
    /// subscriptions of a resumed session.
    pub(super) fn connected(
        &self,
        client_id: &Arc<str>,
        user: Option<&Arc<str>>,
        clean_start: bool,
        keep_alive: u16,
        subscriptions: BTreeMap<String, Qos>,
    ) {
        {
            let mut clients = self.clients.lock().unwrap();
            let client = clients.entry(client_id.clone()).or_insert(Client {
                connections: 0,
                user: None,
                connected_at_ms: 0,
                clean_start,
                keep_alive,
                subscriptions: BTreeMap::new(),
            });
            client.connections += 1;
            client.user = user.cloned();
            client.connected_at_ms = wall_ms();
            client.clean_start = clean_start;
            client.keep_alive = keep_alive;
            client.subscriptions = subscriptions;
        }
        tracing::debug!(%client_id, clean_start, "MQTT client connected");
        let _ = self.events.send(ClientEvent::Connected {
            client_id: client_id.to_string(),
            user: user.map(|u| u.to_string()),
        });
    }

    pub(super) fn subscribed(&self, client_id: &Arc<str>, granted: Vec<(String, Qos)>) {
        if granted.is_empty() {
            return;
        }
        let user = {
            let mut clients = self.clients.lock().unwrap();
            let Some(client) = clients.get_mut(client_id) else {
                return;
            };
            for (f, q) in &granted {
                client.subscriptions.insert(f.clone(), *q);
            }
            client.user.clone()
        };
        let _ = self.subscribed.send(Subscribed {
            client_id: client_id.clone(),
            user,
            filters: granted.into_iter().map(|(f, _)| f).collect(),
        });
    }

    pub(super) fn unsubscribed(&self, client_id: &str, filters: &[String]) {
        let mut clients = self.clients.lock().unwrap();
        if let Some(client) = clients.get_mut(client_id) {
            for f in filters {
                client.subscriptions.remove(f);
            }
        }
    }

    /// A message accepted for routing: taps (client publishes only) and
    /// the journal.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn published(
        &self,
        topic: &Arc<str>,
        payload: &Bytes,
        qos: u8,
        retain: bool,
        client: Option<(&Arc<str>, Option<&Arc<str>>)>,
        origin: Origin,
        to: Option<&Addressee>,
    ) {
        if let Some((client_id, user)) = client
            && origin == Origin::Client
        {
            let taps = self.taps.read().unwrap();
            for tap in taps.iter() {
                if super::topics::matches(&tap.filter, topic) {
                    let tapped = Tapped {
                        topic: topic.clone(),
                        payload: payload.clone(),
                        client_id: client_id.clone(),
                        user: user.cloned(),
                    };
                    if tap.tx.try_send(tapped).is_err() {
                        tap.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let qos = Qos::try_from(qos).unwrap_or_default();
        self.journal.push(
            wall_ms(),
            self.clock.now_ms(),
            topic.clone(),
            payload.clone(),
            qos,
            retain,
            client.map(|(c, _)| c.clone()),
            origin,
            to.map(|to| to.id.clone()),
        );
    }

    /// A connection closed. `clean`: the client sent DISCONNECT (no will).
    pub(super) fn disconnected(&self, client_id: &Arc<str>, user: Option<&Arc<str>>, clean: bool) {
        let gone = {
            let mut clients = self.clients.lock().unwrap();
            match clients.get_mut(client_id) {
                Some(client) if client.connections > 1 => {
                    client.connections -= 1;
                    false
                }
                Some(_) => {
                    clients.remove(client_id);
                    true
                }
                None => false,
            }
        };
        tracing::debug!(%client_id, clean, "MQTT client disconnected");
        if gone {
            let _ = self.events.send(ClientEvent::Disconnected {
                client_id: client_id.to_string(),
                user: user.map(|u| u.to_string()),
                clean,
            });
        }
    }
}

/// The filter proper of a `$share/{group}/{filter}` subscription.
pub(crate) fn strip_share(f: &str) -> &str {
    match f.strip_prefix("$share/").and_then(|r| r.split_once('/')) {
        Some((_, filter)) => filter,
        None => f,
    }
}
