//! The mqtt5 engine, kept in this file and `auth.rs`: building and starting
//! one broker instance, and the event handler that feeds the journal, the
//! client registry and the client event stream.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use mqtt5::broker::MqttBroker;
use mqtt5::broker::config::{BrokerConfig, StorageBackend as Backend, StorageConfig};
use mqtt5::broker::events::{
    BrokerEventHandler, ClientConnectEvent, ClientDisconnectEvent, ClientPublishEvent,
    ClientSubscribeEvent, ClientUnsubscribeEvent, PublishAction, SubAckReasonCode,
};
use mqtt5::broker::router::MessageRouter;
use mqtt5::broker::server::BrokerShutdownHandle;
use mqtt5::broker::storage::{DynamicStorage, StorageBackend};
use tokio::sync::broadcast;

use super::journal::Journal;
use super::{ClientEvent, ClientInfo, MAX_PACKET_SIZE, MqttConfig, Qos};
use crate::clock::{Clock, wall_ms};

/// What the event handler writes to and the facade reads from. Holds no
/// engine object except the storage slot, which is emptied before a restart
/// (the storage directory lock lives as long as any clone of it).
pub(crate) struct Observed {
    pub journal: Journal,
    pub clock: Clock,
    pub events: broadcast::Sender<ClientEvent>,
    // std locks: held for a map update, never across an await.
    pub clients: Mutex<HashMap<Arc<str>, Client>>,
    pub storage: RwLock<Option<Arc<DynamicStorage>>>,
    /// In-process listeners on what clients publish (the command engine
    /// reads acks this way). Written when a tap is added, read per publish.
    pub taps: RwLock<Vec<Tap>>,
    pub subscribed: broadcast::Sender<Subscribed>,
}

/// A client's granted subscriptions (the command engine delivers a real
/// device's queued commands once it listens for them).
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub client_id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub filters: Vec<String>,
}

/// A listener on client publishes matching `filter`, with a bounded queue;
/// what does not fit is counted in `dropped`.
pub(crate) struct Tap {
    pub filter: String,
    pub tx: tokio::sync::mpsc::Sender<Tapped>,
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// A message a client published, as a tap sees it.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub topic: Arc<str>,
    pub payload: bytes::Bytes,
    pub client_id: Arc<str>,
    pub user: Option<Arc<str>>,
}

pub(crate) struct Client {
    /// Connections with this id (briefly 2 during a takeover).
    connections: u32,
    user: Option<Arc<str>>,
    connected_at_ms: i64,
    clean_start: bool,
    subscriptions: BTreeMap<String, Qos>,
}

impl Observed {
    pub fn clients(&self) -> Vec<ClientInfo> {
        let clients = self.clients.lock().unwrap();
        let mut out: Vec<ClientInfo> = clients
            .iter()
            .map(|(id, c)| ClientInfo {
                client_id: id.to_string(),
                user: c.user.as_deref().map(str::to_string),
                connected_at_ms: c.connected_at_ms,
                clean_start: c.clean_start,
                subscriptions: c
                    .subscriptions
                    .iter()
                    .map(|(f, q)| (f.clone(), *q))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Whether the client with this id, or a client logged in as this
    /// user, has a subscription matching `topic`.
    pub fn listens(&self, who: &str, topic: &str) -> bool {
        let clients = self.clients.lock().unwrap();
        let matches = |c: &Client| {
            c.subscriptions
                .keys()
                .any(|f| super::topics::matches(f, topic))
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

    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap().len()
    }

    /// Forgets every client (after the engine stopped) and tells listeners.
    pub fn forget_all(&self) {
        let gone: Vec<(Arc<str>, Client)> = self.clients.lock().unwrap().drain().collect();
        for (id, client) in gone {
            let _ = self.events.send(ClientEvent::Disconnected {
                client_id: id.to_string(),
                user: client.user.as_deref().map(str::to_string),
                clean: false,
            });
        }
    }
}

fn qos_of(q: mqtt5::QoS) -> Qos {
    match q {
        mqtt5::QoS::AtMostOnce => Qos::AtMostOnce,
        mqtt5::QoS::AtLeastOnce => Qos::AtLeastOnce,
        mqtt5::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

pub(crate) struct Events(pub Arc<Observed>);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl BrokerEventHandler for Events {
    fn on_client_connect<'a>(&'a self, e: ClientConnectEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // A resumed session brings its subscriptions back without
            // SUBSCRIBE packets: read them from the session store.
            let mut subscriptions = BTreeMap::new();
            if !e.clean_start {
                let storage = self.0.storage.read().unwrap().clone();
                if let Some(storage) = storage
                    && let Ok(Some(session)) = storage.get_session(&e.client_id).await
                {
                    for (filter, sub) in session.subscriptions {
                        subscriptions.insert(filter, qos_of(sub.qos));
                    }
                }
            }
            {
                let mut clients = self.0.clients.lock().unwrap();
                let client = clients.entry(e.client_id.clone()).or_insert(Client {
                    connections: 0,
                    user: None,
                    connected_at_ms: 0,
                    clean_start: e.clean_start,
                    subscriptions: BTreeMap::new(),
                });
                client.connections += 1;
                client.user = e.user_id.clone();
                client.connected_at_ms = wall_ms();
                client.clean_start = e.clean_start;
                client.subscriptions = subscriptions;
            }
            tracing::debug!(client_id = %e.client_id, clean_start = e.clean_start, "MQTT client connected");
            let _ = self.0.events.send(ClientEvent::Connected {
                client_id: e.client_id.to_string(),
                user: e.user_id.as_deref().map(str::to_string),
            });
        })
    }

    fn on_client_subscribe<'a>(&'a self, e: ClientSubscribeEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut filters = Vec::new();
            let user = {
                let mut clients = self.0.clients.lock().unwrap();
                let Some(client) = clients.get_mut(&e.client_id) else {
                    return;
                };
                for s in e.subscriptions {
                    let granted = match s.result {
                        SubAckReasonCode::GrantedQoS0 => Qos::AtMostOnce,
                        SubAckReasonCode::GrantedQoS1 => Qos::AtLeastOnce,
                        SubAckReasonCode::GrantedQoS2 => Qos::ExactlyOnce,
                        _ => continue,
                    };
                    filters.push(s.topic_filter.to_string());
                    client
                        .subscriptions
                        .insert(s.topic_filter.to_string(), granted);
                }
                client.user.clone()
            };
            if !filters.is_empty() {
                let _ = self.0.subscribed.send(Subscribed {
                    client_id: e.client_id.clone(),
                    user,
                    filters,
                });
            }
        })
    }

    fn on_client_unsubscribe<'a>(&'a self, e: ClientUnsubscribeEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut clients = self.0.clients.lock().unwrap();
            if let Some(client) = clients.get_mut(&e.client_id) {
                for f in e.topic_filters {
                    client.subscriptions.remove(&*f);
                }
            }
        })
    }

    fn on_client_publish<'a>(&'a self, e: ClientPublishEvent) -> BoxFuture<'a, PublishAction> {
        {
            let taps = self.0.taps.read().unwrap();
            for tap in taps.iter() {
                if super::topics::matches(&tap.filter, &e.topic) {
                    let tapped = Tapped {
                        topic: e.topic.clone(),
                        payload: e.payload.clone(),
                        client_id: e.client_id.clone(),
                        user: e.user_id.clone(),
                    };
                    if tap.tx.try_send(tapped).is_err() {
                        tap.dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        self.0.journal.push(
            wall_ms(),
            self.0.clock.now_ms(),
            e.topic,
            e.payload,
            qos_of(e.qos),
            e.retain,
            Some(e.client_id),
        );
        Box::pin(async { PublishAction::Continue })
    }

    fn on_client_disconnect<'a>(&'a self, e: ClientDisconnectEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let gone = {
                let mut clients = self.0.clients.lock().unwrap();
                match clients.get_mut(&e.client_id) {
                    Some(client) if client.connections > 1 => {
                        client.connections -= 1;
                        false
                    }
                    Some(_) => {
                        clients.remove(&e.client_id);
                        true
                    }
                    None => false,
                }
            };
            tracing::debug!(client_id = %e.client_id, unexpected = e.unexpected, "MQTT client disconnected");
            if gone {
                let _ = self.0.events.send(ClientEvent::Disconnected {
                    client_id: e.client_id.to_string(),
                    user: e.user_id.as_deref().map(str::to_string),
                    clean: !e.unexpected,
                });
            }
        })
    }
}

/// One running engine instance.
pub(crate) struct Running {
    pub addr: SocketAddr,
    pub router: Arc<MessageRouter>,
    pub stop: BrokerShutdownHandle,
    pub task: tokio::task::JoinHandle<()>,
}

/// Where an engine instance keeps sessions, queues and retained messages.
pub(crate) enum Keep<'a> {
    /// Files in a directory: they outlive the process.
    Dir(&'a Path),
    /// Memory, taking over what the previous instance (before an outage)
    /// held, if any.
    Memory(Option<Arc<DynamicStorage>>),
}

/// Builds and starts a broker on `addr`.
pub(crate) async fn start(
    config: &MqttConfig,
    addr: SocketAddr,
    keep: Keep<'_>,
    observed: &Arc<Observed>,
) -> Result<Running, String> {
    let (storage, carry) = match keep {
        Keep::Dir(dir) => (
            StorageConfig::new()
                .with_backend(Backend::File)
                .with_base_dir(dir.to_path_buf()),
            None,
        ),
        Keep::Memory(carry) => (StorageConfig::new().with_backend(Backend::Memory), carry),
    };
    let storage = storage
        .with_max_queued_messages_per_client(config.max_queued_per_session)
        .with_max_queued_bytes_per_client(config.max_queued_bytes_per_session);
    let broker_config = BrokerConfig::default()
        .with_bind_address(addr)
        .with_max_packet_size(MAX_PACKET_SIZE)
        .with_max_clients(config.max_clients)
        .with_max_outbound_inflight(config.max_inflight)
        // $SYS would rewrite ~14 retained files every 10 s; subscribing to
        // `$SYS/#` stays harmless (it just receives nothing).
        .with_sys_topics_enabled(false)
        .with_storage(storage)
        .with_event_handler(Arc::new(Events(observed.clone())));
    let mut broker = MqttBroker::with_config(broker_config)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(authorizer) = &config.authorizer {
        broker = broker.with_auth_provider(Arc::new(super::auth::Adapter(authorizer.clone())));
    }
    let addr = broker
        .local_addr()
        .ok_or_else(|| "no TCP listener".to_string())?;
    if let (Some(from), Some(to)) = (carry, broker.storage()) {
        // Before `run`, which loads the retained messages into the router.
        carry_over(&from, &to)
            .await
            .map_err(|e| format!("taking over the stopped broker's state: {e}"))?;
    }
    *observed.storage.write().unwrap() = broker.storage();
    let router = broker.router();
    let stop = broker.shutdown_handle();
    let mut ready = broker.ready_receiver();
    let task = tokio::spawn(async move {
        if let Err(error) = broker.run().await {
            tracing::error!(%error, "MQTT broker stopped with an error");
        }
    });
    if ready.wait_for(|up| *up).await.is_err() {
        *observed.storage.write().unwrap() = None;
        return Err("the broker stopped while starting".into());
    }
    Ok(Running {
        addr,
        router,
        stop,
        task,
    })
}

/// Copies retained messages, sessions, queued and in-flight messages from
/// one storage to another, as a file backend would have kept them.
async fn carry_over(from: &DynamicStorage, to: &DynamicStorage) -> mqtt5::Result<()> {
    for (topic, message) in from.get_retained_messages("#").await? {
        to.store_retained_message(&topic, message).await?;
    }
    for id in from.session_client_ids().await? {
        if let Some(session) = from.get_session(&id).await? {
            to.store_session(session).await?;
        }
        for message in from.get_queued_messages(&id).await? {
            to.queue_message(message).await?;
        }
        for message in from.get_inflight_messages(&id).await? {
            to.store_inflight_message(message).await?;
        }
    }
    Ok(())
}
