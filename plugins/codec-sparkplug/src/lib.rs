//! The `sparkplug-b` dialect: Eclipse Sparkplug B 3.0, so SCADA hosts
//! and MQTT infrastructure built for industrial IoT see the simulated
//! fleet as edge nodes, and real Sparkplug edge nodes report into iotmock.
//!
//! Each iotmock device is one Sparkplug edge node with one device under
//! it, so each has its own `seq` and `bdSeq`. Topics are
//! `spBv1.0/{group}/{type}/{node}` for node messages and
//! `spBv1.0/{group}/{type}/{node}/{device}` for device messages; payloads
//! are the Sparkplug protobuf `Payload`.
//!
//! | event | messages |
//! |---|---|
//! | online | `NBIRTH` (`bdSeq`, `Node Control/Rebirth`; `seq` 0), then `DBIRTH` (every metric with its name, alias, datatype and last value) |
//! | readings | `DDATA`: one metric per reading, by alias, with the reading's time; a sensor seen for the first time is born first (a new `DBIRTH`) |
//! | ack | `DDATA` of the metrics `Command/Id`, `Command/Status`, `Command/Result` (strings, in every `DBIRTH`) |
//! | offline | `DDEATH`, then `NDEATH` with the `bdSeq` of the current birth (QoS 1: the will a broker would publish) |
//! | command (to a real device) | `DCMD`: a string metric named after the command holding its params (JSON), and `Command/Id` |
//!
//! `seq` counts every message of the node but `NDEATH` (0–255, wrapping;
//! `NBIRTH` starts it at 0). `bdSeq` starts at 0 and grows by one (mod
//! 256) with each birth after a death; a rebirth asked for by
//! `Node Control/Rebirth` repeats the current one. While dead, a node
//! publishes nothing (readings are not sent) until it is online again.
//! Births carry aliases from 1 (the command metrics) and 4 on (sensors,
//! in the order they first reported); sensor metrics are `Double` with
//! their unit as the `engUnit` property. Timestamps are simulated time.
//!
//! Decoded:
//! - from a SCADA host (any client): `NCMD` with `Node Control/Rebirth`
//!   true makes the node born again; other `NCMD` and `DCMD` metrics are
//!   commands to the device the node names, one per metric: the command's
//!   name is the metric name, its params the metric's string value when
//!   that is a JSON object, else `{"value": value}`; a `Command/Id`
//!   metric gives the command its id;
//! - from a real edge node (connected with the device's credentials):
//!   births teach the aliases (kept in the device's codec state); numbers
//!   and booleans of `NBIRTH`, `DBIRTH`, `NDATA` and `DDATA` are readings
//!   named after the metric; `Command/Id` with `Command/Status` in one
//!   message is an ack.
//!
//! Config (every key optional): `group` (the Sparkplug group id; default
//! the device's group, else `iotmock`), `node` (the edge node id, a
//! template with `{id}`, `{group}` and `{type}` that must use `{id}`;
//! default `{id}`), `device` (the device id under the node, same
//! placeholders; default `{id}`).

wit_bindgen::generate!({
    world: "codec",
    path: "../../wit",
});

mod proto;

use std::borrow::Cow;

use exports::iotmock::plugin::codec_api::{
    Ack, AckStatus, AddressedEvent, CodecInfo, Command, DecodeRequest, Decoded, DeviceInfo,
    EncodeRequest, Encoded, Event, Guest, Message, Reading,
};
use iotmock::plugin::types::PluginError;
use iotmock_sdk::codec::{self as state_codec, Codec, Decoder, Encoder};
use iotmock_sdk::dialect::Template;
use prost::Message as _;
use proto::{Metric, Payload, PropertyKind, PropertySet, PropertyValue, Value, datatype};

struct Plugin;
export!(Plugin);

const NAMESPACE: &str = "spBv1.0";
const BD_SEQ: &str = "bdSeq";
const REBIRTH: &str = "Node Control/Rebirth";
const COMMAND_ID: &str = "Command/Id";
const COMMAND_STATUS: &str = "Command/Status";
const COMMAND_RESULT: &str = "Command/Result";
/// The command metrics take aliases 1–3; sensors follow.
const COMMAND_METRICS: [&str; 3] = [COMMAND_ID, COMMAND_STATUS, COMMAND_RESULT];
const FIRST_SENSOR_ALIAS: u64 = 4;
const DEFAULT_GROUP: &str = "iotmock";
const VARS: &[&str] = &["id", "group", "type"];
/// Layout version of [`State`].
const STATE_VERSION: u32 = 1;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    group: Option<String>,
    node: String,
    device: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group: None,
            node: "{id}".into(),
            device: "{id}".into(),
        }
    }
}

/// The checked configuration.
struct Settings {
    group: Option<String>,
    node: Template,
    device: Template,
    /// The template is `{id}`.
    node_is_id: bool,
    device_is_id: bool,
}

/// A Sparkplug id element (group, node or device) must be a topic level.
fn valid_element(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.contains(['/', '+', '#']) {
        return Err(format!(
            "config: {what}: {text:?} is not a Sparkplug id: use a non-empty name without '/', '+' or '#'"
        ));
    }
    Ok(())
}

impl Settings {
    fn parse(text: &str) -> Result<Self, String> {
        let config: Config = iotmock_sdk::parse_config(text)?;
        if let Some(group) = &config.group {
            valid_element("group", group)?;
        }
        let node = Template::parse(&config.node, VARS).map_err(|e| format!("config: node: {e}"))?;
        if !node.uses("id") {
            return Err(format!(
                "config: node: {:?} must contain {{id}}: each device is its own edge node, with its own seq and bdSeq",
                config.node
            ));
        }
        valid_element("node", &node.render(|_| "x"))?;
        let device =
            Template::parse(&config.device, VARS).map_err(|e| format!("config: device: {e}"))?;
        valid_element("device", &device.render(|_| "x"))?;
        Ok(Self {
            group: config.group,
            node,
            device,
            node_is_id: config.node == "{id}",
            device_is_id: config.device == "{id}",
        })
    }

    fn group<'a>(&'a self, info: &'a DeviceInfo) -> &'a str {
        self.group
            .as_deref()
            .or(info
                .group
                .as_deref()
                .filter(|g| valid_element("", g).is_ok()))
            .unwrap_or(DEFAULT_GROUP)
    }

    /// The topics of one device. The default templates (`{id}`) take the
    /// id as it is, without rendering: this runs once per encoded event.
    fn topics<'a>(&'a self, info: &'a DeviceInfo) -> Topics<'a> {
        let group = self.group(info);
        let var = |name: &str| match name {
            "id" => info.id.as_str(),
            "group" => group,
            _ => info.kind.as_deref().unwrap_or(""),
        };
        let level = |t: &Template, is_id: bool| -> Cow<'a, str> {
            if is_id {
                Cow::Borrowed(info.id.as_str())
            } else {
                Cow::Owned(t.render(var))
            }
        };
        Topics {
            group,
            node: level(&self.node, self.node_is_id),
            device: level(&self.device, self.device_is_id),
        }
    }
}

/// The topic levels of one device.
struct Topics<'a> {
    group: &'a str,
    node: Cow<'a, str>,
    device: Cow<'a, str>,
}

impl Topics<'_> {
    fn node(&self, kind: &str) -> String {
        let mut t = String::with_capacity(
            NAMESPACE.len() + self.group.len() + kind.len() + self.node.len() + 3,
        );
        for (i, part) in [NAMESPACE, self.group, kind, &self.node]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                t.push('/');
            }
            t.push_str(part);
        }
        t
    }
    fn device(&self, kind: &str) -> String {
        let mut t = self.node(kind);
        t.reserve(self.device.len() + 1);
        t.push('/');
        t.push_str(&self.device);
        t
    }
}

const FRESH: u8 = 0;
const BORN: u8 = 1;
const DEAD: u8 = 2;

/// A device's codec state, kept by the host.
#[derive(Default)]
struct State {
    /// FRESH (never born), BORN or DEAD.
    phase: u8,
    /// The bdSeq of the current (or, when dead, the last) birth.
    bd_seq: u8,
    /// The seq of the node's next message.
    seq: u8,
    /// Sensors in alias order: name, unit, last value, its time.
    sensors: Vec<(String, String, f64, i64)>,
    /// The last command answered: id, status, result (JSON text).
    command: (String, String, String),
    /// A real edge node's metrics from its births: alias, name, datatype.
    learned: Vec<(u64, String, u32)>,
}

impl Codec for State {
    fn encode(&self, out: &mut Encoder) {
        self.phase.encode(out);
        self.bd_seq.encode(out);
        self.seq.encode(out);
        self.sensors.encode(out);
        self.command.encode(out);
        self.learned.encode(out);
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        Some(Self {
            phase: Codec::decode(input)?,
            bd_seq: Codec::decode(input)?,
            seq: Codec::decode(input)?,
            sensors: Codec::decode(input)?,
            command: Codec::decode(input)?,
            learned: Codec::decode(input)?,
        })
    }
}

fn ms(ts: i64) -> u64 {
    ts.max(0) as u64
}

fn string_metric(name: &str, alias: Option<u64>, ts: i64, value: &str) -> Metric {
    Metric {
        name: Some(name.into()),
        alias,
        timestamp: Some(ms(ts)),
        datatype: Some(datatype::STRING),
        value: Some(Value::String(value.into())),
        ..Default::default()
    }
}

fn message(topic: String, payload: &Payload, qos: u8) -> Message {
    Message {
        topic,
        payload: payload.encode_to_vec(),
        qos,
        retain: false,
        content_type: None,
        user_properties: Vec::new(),
    }
}

impl State {
    fn next_seq(&mut self) -> Option<u64> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        Some(u64::from(seq))
    }

    fn bd_seq_metric(&self, ts: i64) -> Metric {
        Metric {
            name: Some(BD_SEQ.into()),
            timestamp: Some(ms(ts)),
            datatype: Some(datatype::INT64),
            value: Some(Value::Long(u64::from(self.bd_seq))),
            ..Default::default()
        }
    }

    /// NBIRTH and DBIRTH with the current bdSeq; seq starts again at 0.
    fn births(&mut self, topics: &Topics, ts: i64, out: &mut Vec<Message>) {
        self.seq = 0;
        let node = Payload {
            timestamp: Some(ms(ts)),
            seq: self.next_seq(),
            metrics: vec![
                self.bd_seq_metric(ts),
                Metric {
                    name: Some(REBIRTH.into()),
                    timestamp: Some(ms(ts)),
                    datatype: Some(datatype::BOOLEAN),
                    value: Some(Value::Boolean(false)),
                    ..Default::default()
                },
            ],
        };
        out.push(message(topics.node("NBIRTH"), &node, 0));
        self.phase = BORN;
        self.device_birth(topics, ts, out);
    }

    /// DBIRTH: every metric with its definition and last value.
    fn device_birth(&mut self, topics: &Topics, ts: i64, out: &mut Vec<Message>) {
        let (id, status, result) = &self.command;
        let mut metrics: Vec<Metric> = COMMAND_METRICS
            .iter()
            .zip([id, status, result])
            .zip(1u64..)
            .map(|((name, value), alias)| string_metric(name, Some(alias), ts, value))
            .collect();
        for ((name, unit, value, at), alias) in self.sensors.iter().zip(FIRST_SENSOR_ALIAS..) {
            metrics.push(Metric {
                name: Some(name.clone()),
                alias: Some(alias),
                timestamp: Some(ms(*at)),
                datatype: Some(datatype::DOUBLE),
                properties: (!unit.is_empty()).then(|| PropertySet {
                    keys: vec!["engUnit".into()],
                    values: vec![PropertyValue {
                        r#type: Some(datatype::STRING),
                        is_null: None,
                        value: Some(PropertyKind::String(unit.clone())),
                    }],
                }),
                value: Some(Value::Double(*value)),
                ..Default::default()
            });
        }
        let payload = Payload {
            timestamp: Some(ms(ts)),
            seq: self.next_seq(),
            metrics,
        };
        out.push(message(topics.device("DBIRTH"), &payload, 0));
    }

    /// Births when the node never was; false when it is dead (it cannot
    /// publish).
    fn ready(&mut self, topics: &Topics, ts: i64, out: &mut Vec<Message>) -> bool {
        match self.phase {
            FRESH => {
                self.births(topics, ts, out);
                true
            }
            DEAD => false,
            _ => true,
        }
    }

    fn readings(&mut self, topics: &Topics, ts: i64, readings: &[Reading], out: &mut Vec<Message>) {
        if self.phase == DEAD || readings.is_empty() {
            return;
        }
        // A sensor's first reading is its value in the birth that
        // defines it, and is not repeated in the data that follows.
        let mut in_birth = vec![false; readings.len()];
        for (i, r) in readings.iter().enumerate() {
            if !self.sensors.iter().any(|(name, ..)| *name == r.sensor) {
                self.sensors
                    .push((r.sensor.clone(), r.unit.clone(), r.value, r.ts));
                in_birth[i] = true;
            }
        }
        let new = in_birth.iter().any(|b| *b);
        if self.phase == FRESH {
            self.births(topics, ts, out);
        } else if new {
            self.device_birth(topics, ts, out);
        }
        let mut metrics = Vec::with_capacity(readings.len());
        for (r, born) in readings.iter().zip(in_birth) {
            let index = self
                .sensors
                .iter()
                .position(|(name, ..)| *name == r.sensor)
                .expect("registered above");
            let last = &mut self.sensors[index];
            last.2 = r.value;
            last.3 = r.ts;
            if !born {
                metrics.push(Metric {
                    alias: Some(FIRST_SENSOR_ALIAS + index as u64),
                    timestamp: Some(ms(r.ts)),
                    value: Some(Value::Double(r.value)),
                    ..Default::default()
                });
            }
        }
        if metrics.is_empty() {
            return;
        }
        let payload = Payload {
            timestamp: Some(ms(ts)),
            seq: self.next_seq(),
            metrics,
        };
        out.push(message(topics.device("DDATA"), &payload, 0));
    }

    fn ack(&mut self, topics: &Topics, ts: i64, ack: &Ack, out: &mut Vec<Message>) {
        if !self.ready(topics, ts, out) {
            return;
        }
        self.command = (
            ack.command_id.clone(),
            status_name(ack.status).into(),
            ack.result.clone().unwrap_or_default(),
        );
        let (id, status, result) = &self.command;
        let metrics = COMMAND_METRICS
            .iter()
            .zip([id, status, result])
            .zip(1u64..)
            .map(|((_, value), alias)| Metric {
                alias: Some(alias),
                timestamp: Some(ms(ts)),
                value: Some(Value::String(value.clone())),
                ..Default::default()
            })
            .collect();
        let payload = Payload {
            timestamp: Some(ms(ts)),
            seq: self.next_seq(),
            metrics,
        };
        out.push(message(topics.device("DDATA"), &payload, 0));
    }

    fn online(&mut self, topics: &Topics, ts: i64, out: &mut Vec<Message>) {
        if self.phase == DEAD {
            self.bd_seq = self.bd_seq.wrapping_add(1);
        }
        // Born already: a rebirth, with the same bdSeq.
        self.births(topics, ts, out);
    }

    fn offline(&mut self, topics: &Topics, ts: i64, out: &mut Vec<Message>) {
        if self.phase != BORN {
            return;
        }
        let device = Payload {
            timestamp: Some(ms(ts)),
            seq: self.next_seq(),
            metrics: Vec::new(),
        };
        out.push(message(topics.device("DDEATH"), &device, 0));
        let node = Payload {
            timestamp: Some(ms(ts)),
            seq: None,
            metrics: vec![self.bd_seq_metric(ts)],
        };
        out.push(message(topics.node("NDEATH"), &node, 1));
        self.phase = DEAD;
    }
}

fn status_name(s: AckStatus) -> &'static str {
    match s {
        AckStatus::Received => "received",
        AckStatus::Completed => "completed",
        AckStatus::Rejected => "rejected",
        AckStatus::Failed => "failed",
    }
}

fn status_of(name: &str) -> Option<AckStatus> {
    Some(match name {
        "received" => AckStatus::Received,
        "completed" => AckStatus::Completed,
        "rejected" => AckStatus::Rejected,
        "failed" => AckStatus::Failed,
        _ => return None,
    })
}

/// DDATA for readings of sensors a born node already has, written without
/// decoding the state: the seq and each sensor's last value and time are
/// updated in the state bytes where they lie (the layout [`State`] saves
/// under [`STATE_VERSION`]). `None` when that is not the case (another
/// phase, a new sensor, another layout): the caller takes the full path.
/// This is the path nearly every message takes.
fn data_in_place(
    state: &mut [u8],
    topics: &Topics,
    ts: i64,
    readings: &[Reading],
) -> Option<Message> {
    const SEQ: usize = 6;
    const SENSORS: usize = 7;
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(state.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    if u32_at(0)? != STATE_VERSION as usize || *state.get(4)? != BORN || readings.is_empty() {
        return None;
    }
    // Where each sensor's name and value lie.
    let count = u32_at(SENSORS)?;
    let mut at = SENSORS + 4;
    let mut sensors = Vec::with_capacity(count);
    for _ in 0..count {
        let name = at + 4..at + 4 + u32_at(at)?;
        at = name.end;
        at += 4 + u32_at(at)?;
        sensors.push((name, at));
        at += 16;
    }
    if at > state.len() {
        return None;
    }
    let mut found = Vec::with_capacity(readings.len());
    for r in readings {
        let index = sensors
            .iter()
            .position(|(name, _)| &state[name.clone()] == r.sensor.as_bytes())?;
        found.push(index);
    }
    let mut metrics = Vec::with_capacity(readings.len());
    for (r, index) in readings.iter().zip(found) {
        let value_at = sensors[index].1;
        state[value_at..value_at + 8].copy_from_slice(&r.value.to_le_bytes());
        state[value_at + 8..value_at + 16].copy_from_slice(&r.ts.to_le_bytes());
        metrics.push(Metric {
            alias: Some(FIRST_SENSOR_ALIAS + index as u64),
            timestamp: Some(ms(r.ts)),
            value: Some(Value::Double(r.value)),
            ..Default::default()
        });
    }
    let seq = state[SEQ];
    state[SEQ] = seq.wrapping_add(1);
    let payload = Payload {
        timestamp: Some(ms(ts)),
        seq: Some(u64::from(seq)),
        metrics,
    };
    Some(message(topics.device("DDATA"), &payload, 0))
}

fn encode_one(settings: &Settings, mut request: EncodeRequest) -> Encoded {
    let topics = settings.topics(&request.info);
    if let Event::Readings(readings) = &request.event
        && let Some(data) = data_in_place(&mut request.state, &topics, request.ts, readings)
    {
        return Encoded {
            messages: vec![data],
            state: request.state,
        };
    }
    let mut state: State = state_codec::load(STATE_VERSION, &request.state).unwrap_or_default();
    let ts = request.ts;
    let mut messages = Vec::new();
    match &request.event {
        Event::Readings(readings) => state.readings(&topics, ts, readings, &mut messages),
        Event::Status(true) => state.online(&topics, ts, &mut messages),
        Event::Status(false) => state.offline(&topics, ts, &mut messages),
        Event::Ack(ack) => state.ack(&topics, ts, ack, &mut messages),
        Event::Command(c) => {
            let payload = Payload {
                timestamp: Some(ms(ts)),
                seq: None,
                metrics: vec![
                    string_metric(&c.name, None, ts, &c.params),
                    string_metric(COMMAND_ID, None, ts, &c.id),
                ],
            };
            messages.push(message(topics.device("DCMD"), &payload, 0));
        }
        // Sparkplug has no word for reported state.
        Event::Reported(_) => {}
    }
    Encoded {
        messages,
        state: state_codec::save(STATE_VERSION, &state),
    }
}

/// The params of a command written as a metric (see the module docs).
fn params_of(metric: &Metric) -> String {
    if let Some(text) = metric.text()
        && let Ok(serde_json::Value::Object(o)) = serde_json::from_str(text)
    {
        return serde_json::Value::Object(o).to_string();
    }
    let value = match metric.value.as_ref() {
        Some(Value::Boolean(b)) => serde_json::Value::Bool(*b),
        Some(Value::String(s)) => serde_json::Value::String(s.clone()),
        _ => metric
            .number(None)
            .and_then(serde_json::Number::from_f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
    };
    serde_json::json!({ "value": value }).to_string()
}

fn command(id: &str, name: &str, metric: &Metric) -> Event {
    Event::Command(Command {
        id: id.into(),
        name: name.into(),
        params: params_of(metric),
        attempt: 1,
    })
}

/// Events of a message from a real edge node: births teach aliases, and
/// numbers become readings.
fn report(state: &mut State, kind: &str, payload: &Payload, now: i64) -> Vec<Event> {
    if kind.ends_with("BIRTH") {
        for m in &payload.metrics {
            if let (Some(alias), Some(name)) = (m.alias, m.name.as_ref()) {
                let dt = m.datatype.unwrap_or(0);
                match state.learned.iter_mut().find(|(a, ..)| *a == alias) {
                    Some(entry) => *entry = (alias, name.clone(), dt),
                    None => state.learned.push((alias, name.clone(), dt)),
                }
            }
        }
    }
    let ts = payload.timestamp.map_or(now, |t| t as i64);
    let mut readings = Vec::new();
    let (mut command_id, mut command_status, mut command_result) = (None, None, None);
    for m in &payload.metrics {
        let learned = m
            .alias
            .and_then(|a| state.learned.iter().find(|(alias, ..)| *alias == a));
        let Some(name) = m.name.as_deref().or(learned.map(|(_, n, _)| n.as_str())) else {
            continue;
        };
        match name {
            COMMAND_ID => command_id = m.text().map(str::to_string),
            COMMAND_STATUS => command_status = m.text().and_then(status_of),
            COMMAND_RESULT => command_result = m.text().map(str::to_string),
            BD_SEQ => {}
            _ if name.starts_with("Node Control/") || name.starts_with("Device Control/") => {}
            _ => {
                if let Some(value) = m.number(learned.map(|(.., dt)| *dt)) {
                    readings.push(Reading {
                        sensor: name.into(),
                        ts: m.timestamp.map_or(ts, |t| t as i64),
                        value,
                        unit: String::new(),
                        anomaly: None,
                    });
                }
            }
        }
    }
    let mut events = Vec::new();
    if !readings.is_empty() {
        events.push(Event::Readings(readings));
    }
    if let (Some(id), Some(status), false) = (command_id, command_status, kind.ends_with("BIRTH")) {
        events.push(Event::Ack(Ack {
            command_id: id,
            status,
            result: command_result.filter(|r| !r.is_empty()),
        }));
    }
    events
}

impl Guest for Plugin {
    fn describe(config: String) -> Result<CodecInfo, PluginError> {
        Settings::parse(&config).map_err(PluginError::InvalidConfig)?;
        Ok(CodecInfo {
            description: "Sparkplug B 3.0: spBv1.0 births, data and deaths with seq and bdSeq; DCMD and NCMD as commands".into(),
            filters: vec![format!("{NAMESPACE}/#")],
        })
    }

    fn encode(config: String, requests: Vec<EncodeRequest>) -> Result<Vec<Encoded>, PluginError> {
        let settings = Settings::parse(&config).map_err(PluginError::InvalidConfig)?;
        Ok(requests
            .into_iter()
            .map(|r| encode_one(&settings, r))
            .collect())
    }

    fn decode(config: String, request: DecodeRequest) -> Result<Decoded, PluginError> {
        let settings = Settings::parse(&config).map_err(PluginError::InvalidConfig)?;
        let levels: Vec<&str> = request.topic.split('/').collect();
        let (4 | 5, Some(&NAMESPACE)) = (levels.len(), levels.first()) else {
            return Ok(Decoded::NotMine);
        };
        let (kind, node) = (levels[2], levels[3]);
        let Some(id) = settings
            .node
            .match_topic(node)
            .and_then(|vars| vars.into_iter().find(|(k, _)| k == "id"))
            .map(|(_, v)| v)
        else {
            return Ok(Decoded::NotMine);
        };
        let Ok(payload) = Payload::decode(request.payload.as_slice()) else {
            return Ok(Decoded::NotMine);
        };
        let now = iotmock::plugin::host::now();
        let mut state = request.state;
        let events = match (kind, levels.len()) {
            ("NCMD", 4) | ("DCMD", 5) => {
                let id = payload
                    .metrics
                    .iter()
                    .find(|m| m.name.as_deref() == Some(COMMAND_ID))
                    .and_then(Metric::text)
                    .unwrap_or_default();
                payload
                    .metrics
                    .iter()
                    .filter_map(|m| {
                        let name = m.name.as_deref()?;
                        if name == REBIRTH {
                            // Born again: the host re-announces the device.
                            return (m.number(None) == Some(1.0)).then_some(Event::Status(true));
                        }
                        (!name.starts_with("Command/")).then(|| command(id, name, m))
                    })
                    .collect()
            }
            ("NBIRTH" | "NDATA", 4) | ("DBIRTH" | "DDATA", 5) => {
                let mut learned: State =
                    state_codec::load(STATE_VERSION, &state).unwrap_or_default();
                let events = report(&mut learned, kind, &payload, now);
                state = state_codec::save(STATE_VERSION, &learned);
                events
            }
            ("NDEATH", 4) | ("DDEATH", 5) => Vec::new(),
            _ => return Ok(Decoded::NotMine),
        };
        Ok(Decoded::Events((
            events
                .into_iter()
                .map(|event| AddressedEvent {
                    device: Some(id.clone()),
                    event,
                })
                .collect(),
            state,
        )))
    }
}
