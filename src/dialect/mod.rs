//! Dialects: the topics and payloads a device speaks, as codec plugins.
//!
//! A device names its dialect (`"dialect": "template"` or `{"plugin",
//! "config"}`; default `iotmock`). This module owns the run-time side: a
//! device's [`DeviceDialect`] (its codec, configuration and the codec
//! state the host keeps for it, like a sensor's state), and the batched
//! encode-and-publish that telemetry and the fleet call. It does not decide
//! when events happen (telemetry and the fleet do) and runs no plugin by
//! itself (the plugin host does).
//!
//! The `iotmock` dialect is a codec plugin like any other, but while the
//! built-in `iotmock` plugin serves, the server writes the same bytes
//! itself ([`crate::telemetry::Reading::write_json`]) without a plugin
//! call: the fleet's default path stays as fast as before. Replacing the
//! `iotmock` plugin (a file, `PUT /plugins/iotmock`) sends every default
//! device through the replacement from the next message on.
//!
//! `crate::inbound` reads what clients publish in a dialect back into the
//! fleet.

use std::sync::Arc;

use crate::mqtt::{Addressee, MqttHandle, PublishProps, Qos, topics};
use crate::plugin::{
    CallContext, CallError, CodecDevice, CodecEvent, DeviceSlot, EncodeRequest, PluginHost,
    SharedState,
};
use crate::random::DeviceRng;

/// The dialect of a device that names none.
pub(crate) const DEFAULT_DIALECT: &str = "iotmock";

/// A codec and its configuration (JSON text).
type CodecKey = (Arc<str>, Arc<str>);

/// Most devices in one encode call.
pub(crate) const MAX_ENCODE_BATCH: usize = 1024;

crate::plugin::spec::plugin_spec! {
    /// A device's dialect: a codec plugin name, or a plugin with its
    /// configuration (`{"plugin":"template","config":{...}}`).
    DialectSpec
}

impl Default for DialectSpec {
    fn default() -> Self {
        DialectSpec::Name(DEFAULT_DIALECT.to_string())
    }
}

/// A device's dialect at run time, shared by its sensor streams and the
/// fleet (status changes).
#[derive(Debug)]
pub(crate) struct DeviceDialect {
    pub plugin: Arc<str>,
    pub config: Arc<str>,
    pub info: CodecDevice,
    /// The default dialect: the built-in path may stand for it.
    default: bool,
    seed: u64,
    /// The codec's state for this device and its random stream. An async
    /// mutex, held for the whole codec call: telemetry, the command engine
    /// and the decoders may each call the codec for this device, and every
    /// call must see the state the previous one left (a sequence number
    /// must not be handed out twice).
    memory: tokio::sync::Mutex<Memory>,
    /// The topic a command to this device goes out on (for a command id
    /// `x`), so the command engine can tell whether a real device listens
    /// for commands; set once the codec answered.
    probe: std::sync::OnceLock<String>,
}

/// Whether a codec and configuration are the built-in topics and payloads.
pub(crate) fn is_default(plugin: &str, config: &str) -> bool {
    plugin == DEFAULT_DIALECT && config == "{}"
}

impl DeviceDialect {
    pub(crate) fn new(spec: Option<&DialectSpec>, info: CodecDevice, seed: u64) -> Arc<Self> {
        let fallback;
        let spec = match spec {
            Some(spec) => spec,
            None => {
                fallback = DialectSpec::default();
                &fallback
            }
        };
        let config = spec.config_text();
        Arc::new(Self {
            default: is_default(spec.plugin(), &config),
            plugin: Arc::from(spec.plugin()),
            config: Arc::from(config),
            info,
            seed,
            memory: tokio::sync::Mutex::new(Memory::default()),
            probe: std::sync::OnceLock::new(),
        })
    }

    /// The topic a command `x` to this device goes out on, once known
    /// (see [`prepare_probes`]).
    pub(crate) fn command_probe(&self) -> Option<&str> {
        self.probe.get().map(String::as_str)
    }

    /// Whether messages of this device go out on the built-in path now.
    pub(crate) fn native(&self, plugins: &PluginHost) -> bool {
        self.default && plugins.is_builtin(DEFAULT_DIALECT)
    }

    /// Whether this is the default dialect with its default configuration
    /// (the built-in path stands for it while the built-in plugin serves).
    pub(crate) fn is_default(&self) -> bool {
        self.default
    }

    /// Waits for this device's codec state (see `memory`).
    pub(crate) async fn memory(&self) -> tokio::sync::MutexGuard<'_, Memory> {
        self.memory.lock().await
    }

    /// The random stream of codec calls for this device.
    pub(crate) fn rng(&self, memory: &mut Memory) -> DeviceRng {
        memory
            .rng
            .take()
            .unwrap_or_else(|| DeviceRng::derive(self.seed, &self.info.id, "dialect"))
    }
}

/// A device's codec state and the random stream its codec calls draw from.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub state: Vec<u8>,
    pub rng: Option<DeviceRng>,
}

/// One event to encode: the device, its shared state (for `host` calls),
/// the event's simulated time, and the event.
pub(crate) struct Outgoing {
    pub dialect: Arc<DeviceDialect>,
    pub shared: Option<Arc<SharedState>>,
    pub ts: i64,
    pub event: CodecEvent,
}

/// What an encode-and-publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// Events the codec encoded (their messages were published).
    pub encoded: usize,
    /// Events lost because the codec call failed.
    pub failed: usize,
    /// Messages published.
    pub messages: usize,
    /// Messages refused: a topic no client could subscribe to, or a QoS
    /// above 2.
    pub invalid: usize,
}

/// Encodes events that share one codec and configuration (in batches of
/// [`MAX_ENCODE_BATCH`]) and publishes the messages in request order. The
/// answer says, per event, whether it was encoded. A command's messages
/// whose topic does not name the device are addressed to that device
/// alone ([`Addressee::for_topic`]).
pub(crate) async fn encode_and_publish(
    plugins: &PluginHost,
    mqtt: &MqttHandle,
    now: i64,
    items: Vec<Outgoing>,
) -> (Published, Vec<bool>) {
    let mut outcome = Published::default();
    let mut done = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        // The dialects apart, so their held states do not keep the events
        // borrowed: each event moves into its request.
        let (chunk, events): (Vec<Arc<DeviceDialect>>, Vec<_>) = items
            .by_ref()
            .take(MAX_ENCODE_BATCH)
            .map(|o| (o.dialect, (o.shared, o.ts, o.event)))
            .unzip();
        let plugin = chunk[0].plugin.clone();
        let config = chunk[0].config.clone();
        // Each device's state is held for the call (callers name a device
        // at most once per batch; only the scheduler batches several).
        let mut memories = Vec::with_capacity(chunk.len());
        for dialect in &chunk {
            memories.push(dialect.memory().await);
        }
        let mut ctx = CallContext {
            now,
            slots: Vec::with_capacity(chunk.len()),
        };
        let mut requests = Vec::with_capacity(chunk.len());
        // Which events go server -> device: their messages are for that
        // device alone. Everything else (readings, status, acks, reported
        // state) is the device speaking, for whoever listens.
        let mut to_device = Vec::with_capacity(chunk.len());
        for (slot, ((dialect, memory), (shared, ts, event))) in chunk
            .iter()
            .zip(memories.iter_mut())
            .zip(events)
            .enumerate()
        {
            ctx.slots.push(DeviceSlot {
                rng: dialect.rng(memory),
                state: shared,
                deferred: None,
            });
            to_device.push(matches!(event, CodecEvent::Command { .. }));
            requests.push(EncodeRequest {
                device: slot as u32,
                info: dialect.info.clone(),
                ts,
                event,
                state: memory.state.clone(),
            });
        }
        let (result, ctx) = plugins.encode(&plugin, config, ctx, requests).await;
        if ctx.slots.len() == chunk.len() {
            for (memory, slot) in memories.iter_mut().zip(ctx.slots) {
                memory.rng = Some(slot.rng);
            }
        }
        match result {
            Ok(answers) => {
                for (((memory, answer), dialect), &to_device) in
                    memories.iter_mut().zip(answers).zip(&chunk).zip(&to_device)
                {
                    memory.state = answer.state;
                    for m in answer.messages {
                        let (Ok(qos), Ok(())) =
                            (Qos::try_from(m.qos), topics::valid_topic_name(&m.topic))
                        else {
                            outcome.invalid += 1;
                            crate::ratelimit::warn_limited!(plugin = %plugin, topic = %m.topic, qos = m.qos, "codec answered a message that cannot be published");
                            continue;
                        };
                        let props = (m.content_type.is_some() || !m.user_properties.is_empty())
                            .then_some(PublishProps {
                                content_type: m.content_type,
                                user_properties: m.user_properties,
                            });
                        let info = &dialect.info;
                        let to = if to_device {
                            Addressee::for_topic(&info.id, &info.username, &m.topic)
                        } else {
                            None
                        };
                        mqtt.publish_to(
                            to,
                            &m.topic,
                            m.payload.into(),
                            qos,
                            m.retain,
                            props.as_ref(),
                        );
                        outcome.messages += 1;
                    }
                    outcome.encoded += 1;
                    done.push(true);
                }
            }
            Err(error) => {
                tracing::debug!(plugin = %plugin, %error, events = chunk.len(), "codec call failed");
                outcome.failed += chunk.len();
                done.extend(std::iter::repeat_n(false, chunk.len()));
            }
        }
    }
    (outcome, done)
}

/// Asks each device's codec where a command to it goes (one batched call
/// per codec and configuration, with an empty state that is then thrown
/// away: nothing is published and no device's codec state moves).
pub(crate) async fn prepare_probes(
    plugins: &PluginHost,
    now: i64,
    dialects: &[Arc<DeviceDialect>],
) {
    let mut groups: std::collections::BTreeMap<CodecKey, Vec<&Arc<DeviceDialect>>> =
        Default::default();
    for d in dialects
        .iter()
        .filter(|d| !d.default && d.probe.get().is_none())
    {
        groups
            .entry((d.plugin.clone(), d.config.clone()))
            .or_default()
            .push(d);
    }
    for ((plugin, config), members) in groups {
        for chunk in members.chunks(MAX_ENCODE_BATCH) {
            let ctx = CallContext {
                now,
                slots: chunk
                    .iter()
                    .map(|d| DeviceSlot {
                        rng: DeviceRng::derive(d.seed, &d.info.id, "dialect/probe"),
                        state: None,
                        deferred: None,
                    })
                    .collect(),
            };
            let requests = chunk
                .iter()
                .enumerate()
                .map(|(slot, d)| EncodeRequest {
                    device: slot as u32,
                    info: d.info.clone(),
                    ts: now,
                    event: CodecEvent::Command {
                        id: "x".into(),
                        name: "x".into(),
                        params: "{}".into(),
                        attempt: 1,
                    },
                    state: Vec::new(),
                })
                .collect();
            match plugins
                .encode(&plugin, config.clone(), ctx, requests)
                .await
                .0
            {
                Ok(answers) => {
                    for (d, answer) in chunk.iter().zip(answers) {
                        if let Some(m) = answer.messages.first() {
                            let _ = d.probe.set(m.topic.clone());
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(plugin = %plugin, %error, "codec cannot say where commands go; its real devices get commands once they connect");
                }
            }
        }
    }
}

/// Checks a dialect against the loaded plugins and asks the codec whether
/// it takes the configuration (and what it listens on, when it could
/// answer). `field` names the field in errors.
pub(crate) async fn check(
    plugins: &PluginHost,
    spec: &DialectSpec,
    field: &str,
) -> Result<Option<crate::plugin::CodecInfo>, String> {
    let name = spec.plugin();
    match plugins.check_codec_config(name, &spec.config_text()).await {
        Ok(info) => Ok(Some(info)),
        Err(CallError::InvalidConfig { detail, .. }) => {
            let detail = detail.strip_prefix("config: ").unwrap_or(&detail);
            Err(format!(
                "{field}: dialect {name:?} refused its config: {detail}"
            ))
        }
        Err(CallError::NotFound(_)) => {
            let loaded: Vec<String> = plugins
                .list()
                .into_iter()
                .filter(|p| p.world == Some(crate::plugin::World::Codec))
                .map(|p| p.name)
                .collect();
            Err(format!(
                "{field}: no codec plugin named {name:?} is loaded (dialects: {})",
                if loaded.is_empty() {
                    "none".to_string()
                } else {
                    loaded.join(", ")
                }
            ))
        }
        Err(CallError::WrongWorld { found, .. }) => Err(format!(
            "{field}: plugin {name:?} is a {found} plugin, not a codec"
        )),
        // The codec could not answer (it trapped, ran out of time): that is
        // its fault, not the config's, and shows in `/plugins`; the device
        // is accepted, as with a sensor plugin.
        Err(error) => {
            tracing::warn!(plugin = name, %error, "codec plugin could not check a config");
            Ok(None)
        }
    }
}
