//! The MQTT side: an embedded broker (the `mqtt5` crate's engine) behind a
//! small facade. The rest of the server publishes through [`MqttHandle`] and
//! never sees an engine type, so the engine could be swapped.
//!
//! It owns the listener, the broker's limits and the in-process publishing
//! link. It does not decide what is published (telemetry, commands and edge
//! nodes do) and keeps no device state.

pub mod topics;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use mqtt5::broker::MqttBroker;
use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
use mqtt5::broker::router::MessageRouter;
use mqtt5::packet::publish::PublishPacket;
use serde::{Deserialize, Serialize};

/// The largest packet the broker accepts and advertises: the MQTT maximum.
/// (The engine's default is one byte more, which makes some v5 clients such
/// as paho-mqtt refuse the connection.)
pub const MAX_PACKET_SIZE: usize = 268_435_455;

/// Broker limits, stated so that nothing is dropped without a number.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub addr: SocketAddr,
    /// QoS 1/2 messages queued per session while its client is away or
    /// behind; beyond it the oldest is dropped.
    pub max_queued_per_session: usize,
    /// Bytes queued per session, with the same policy.
    pub max_queued_bytes_per_session: usize,
    /// QoS 1/2 messages in flight to one client before the rest queue.
    pub max_inflight: u16,
    pub max_clients: usize,
}

impl MqttConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            max_queued_per_session: 10_000,
            max_queued_bytes_per_session: 64 << 20,
            max_inflight: 64,
            max_clients: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("starting the MQTT broker on {addr}: {detail}")]
    Start { addr: SocketAddr, detail: String },
}

/// Delivery guarantee of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    #[default]
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            _ => Err(format!("qos {v} is not valid: use 0, 1 or 2")),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        match q {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

impl From<Qos> for mqtt5::QoS {
    fn from(q: Qos) -> Self {
        match q {
            Qos::AtMostOnce => mqtt5::QoS::AtMostOnce,
            Qos::AtLeastOnce => mqtt5::QoS::AtLeastOnce,
            Qos::ExactlyOnce => mqtt5::QoS::ExactlyOnce,
        }
    }
}

/// The running broker. Dropping it does not stop it; call
/// [`Broker::shutdown`].
pub struct Broker {
    handle: MqttHandle,
    local_addr: SocketAddr,
    stop: mqtt5::broker::server::BrokerShutdownHandle,
    task: tokio::task::JoinHandle<()>,
}

/// Publishes into the broker in-process; cheap to clone.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
}

struct Shared {
    // A std lock: held only to clone the Arc, never across an await. The
    // router changes when the broker is restarted.
    router: RwLock<Arc<MessageRouter>>,
}

impl Broker {
    /// Binds the listener (port 0 picks a free one) and starts serving.
    pub async fn start(config: &MqttConfig) -> Result<Self, MqttError> {
        let err = |detail: String| MqttError::Start {
            addr: config.addr,
            detail,
        };
        let storage = StorageConfig::new()
            .with_backend(StorageBackend::Memory)
            .with_max_queued_messages_per_client(config.max_queued_per_session)
            .with_max_queued_bytes_per_client(config.max_queued_bytes_per_session);
        let broker_config = BrokerConfig::default()
            .with_bind_address(config.addr)
            .with_max_packet_size(MAX_PACKET_SIZE)
            .with_max_clients(config.max_clients)
            .with_max_outbound_inflight(config.max_inflight)
            .with_storage(storage);
        let mut broker = MqttBroker::with_config(broker_config)
            .await
            .map_err(|e| err(e.to_string()))?;
        let local_addr = broker
            .local_addr()
            .ok_or_else(|| err("no TCP listener".into()))?;
        let router = broker.router();
        let stop = broker.shutdown_handle();
        let mut ready = broker.ready_receiver();
        let task = tokio::spawn(async move {
            if let Err(error) = broker.run().await {
                tracing::error!(%error, "MQTT broker stopped with an error");
            }
        });
        ready
            .wait_for(|up| *up)
            .await
            .map_err(|_| err("broker stopped while starting".into()))?;
        tracing::info!(addr = %local_addr, "MQTT broker listening");
        Ok(Self {
            handle: MqttHandle {
                shared: Arc::new(Shared {
                    router: RwLock::new(router),
                }),
            },
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> MqttHandle {
        self.handle.clone()
    }

    /// Disconnects every client and stops the listener.
    pub async fn shutdown(self) {
        self.stop.shutdown();
        let _ = self.task.await;
    }
}

impl MqttHandle {
    /// Publishes as the server itself (no client, no ACL).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, qos: Qos, retain: bool) {
        let router = self.shared.router.read().unwrap().clone();
        let packet = PublishPacket::new(topic, payload.into(), qos.into()).with_retain(retain);
        router.route_message(&packet, None).await;
    }
}
