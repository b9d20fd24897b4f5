//! The codec world (dialects) as the rest of the server sees it: plain
//! types for a device's events and the MQTT messages they become, and the
//! host calls that encode a batch, decode one message and describe a
//! configuration. No wasmtime type leaves this module.

use std::sync::Arc;

use super::{CallContext, CallError, PluginHost, ReplyStatus};

/// A device as a codec sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecDevice {
    /// The device id.
    pub id: String,
    /// Its group, when it has one.
    pub group: Option<String>,
    /// Its device type, when it has one.
    pub kind: Option<String>,
    /// The user name of its MQTT credentials.
    pub username: String,
    /// Whether the server simulates it.
    pub simulated: bool,
}

/// One reading handed to (or read back from) a codec.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecReading {
    /// The sensor's name.
    pub sensor: String,
    /// Simulated time, ms since the Unix epoch.
    pub ts: i64,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The anomaly the pattern injected, if any.
    pub anomaly: Option<String>,
}

/// Something a device says or is told.
#[derive(Debug, Clone, PartialEq)]
pub enum CodecEvent {
    /// Telemetry.
    Readings(Vec<CodecReading>),
    /// Online (`true`) or offline.
    Status(bool),
    /// An answer to a command.
    Ack {
        /// The command answered.
        command_id: String,
        /// How the device answered.
        status: ReplyStatus,
        /// JSON text.
        result: Option<String>,
    },
    /// A JSON object.
    Reported(String),
    /// A command to the device.
    Command {
        /// The command's id.
        id: String,
        /// The command's name.
        name: String,
        /// JSON text.
        params: String,
        /// Which delivery attempt this is, from 1.
        attempt: u32,
    },
}

/// One device's event in a batched encode.
#[derive(Debug, Clone)]
pub struct EncodeRequest {
    /// Index into the call's slots.
    pub device: u32,
    /// The device.
    pub info: CodecDevice,
    /// Simulated time of the event, ms since the Unix epoch.
    pub ts: i64,
    /// What happened.
    pub event: CodecEvent,
    /// What the codec returned last time for this device.
    pub state: Vec<u8>,
}

/// An MQTT message a codec wants published.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

/// A codec's answer to one encode request.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub messages: Vec<CodecMessage>,
    pub state: Vec<u8>,
}

/// A client publish for a codec to read.
#[derive(Debug, Clone)]
pub struct DecodeRequest {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The device whose credentials the publisher used.
    pub sender: Option<CodecDevice>,
    pub state: Vec<u8>,
}

/// What a codec found in a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    NotMine,
    /// Events, each for the device named (None: the sender), and the
    /// sender's new codec state.
    Events(Vec<(Option<String>, CodecEvent)>, Vec<u8>),
}

/// A codec's description of itself under one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecInfo {
    pub description: String,
    /// Topic filters of the client publishes it decodes.
    pub filters: Vec<String>,
}

impl PluginHost {
    /// Asks a codec plugin whether it takes `config` and what it listens
    /// on. A refused configuration is the plugin's answer, not a failed
    /// call: it does not make the plugin `failing`.
    pub async fn check_codec_config(
        &self,
        name: &str,
        config: &str,
    ) -> Result<CodecInfo, CallError> {
        self.pool.describe_codec(name, config, true).await
    }

    /// Like [`check_codec_config`](Self::check_codec_config) when the
    /// configuration was accepted before: a refusal now counts as a failure.
    pub async fn describe_codec(&self, name: &str, config: &str) -> Result<CodecInfo, CallError> {
        self.pool.describe_codec(name, config, false).await
    }

    /// Encodes one event per request, in order. `ctx.slots` are the devices
    /// the requests name; it is handed back with their random streams
    /// advanced.
    pub async fn encode(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<EncodeRequest>,
    ) -> (Result<Vec<Encoded>, CallError>, CallContext) {
        self.pool.encode(name, config, ctx, requests).await
    }

    /// The same as [`encode`](Self::encode), from a plain thread (benchmarks).
    pub fn encode_blocking(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<EncodeRequest>,
    ) -> (Result<Vec<Encoded>, CallError>, CallContext) {
        self.pool.encode_blocking(name, config, ctx, requests)
    }

    /// Reads one client publish. `ctx.slots[0]` is the sender, when there
    /// is one.
    pub async fn decode(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        request: DecodeRequest,
    ) -> (Result<Decoded, CallError>, CallContext) {
        self.pool.decode(name, config, ctx, request).await
    }
}
