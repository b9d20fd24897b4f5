//! The `template` dialect: a company's own topic tree and JSON payloads,
//! written as templates in the config, no code. For the common "our
//! topics are `site/{group}/{id}/{sensor}`" case.
//!
//! Config (JSON; every field optional):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `telemetry_topic` | `"devices/{id}/telemetry/{sensor}"` | one message per reading |
//! | `telemetry_payload` | `"{\"ts\":{ts_ms},\"value\":{value}}"` | the reading's payload |
//! | `status_topic` | none (no status messages) | online / offline |
//! | `status_payload` | `"{status}"` | `{status}` is `online` or `offline` |
//! | `command_topic` | none | commands to real devices |
//! | `command_payload` | `"{\"id\":\"{command_id}\",\"name\":\"{name}\",\"params\":{params}}"` | |
//! | `ack_topic` | none | a device's acks, read back (and written for simulated devices) |
//! | `ack_payload` | `"{\"id\":\"{command_id}\",\"status\":\"{status}\"}"` | |
//! | `qos` | 0 | QoS of readings (status, commands and acks go at 1) |
//! | `retain` | false | retain flag of readings |
//! | `content_type` | none | MQTT 5 content type of every message |
//! | `user_properties` | none | MQTT 5 user properties of every message: an object of strings, sent in key order |
//! | `value_field` | `"value"` | where a decoded payload keeps the number (a bare number is read too) |
//!
//! Placeholders in topics: `{id}`, `{group}` (empty when the device has
//! none), `{type}`, `{username}`, and `{sensor}` / `{command_id}` in the
//! topics that carry one. Payloads add `{value}`, `{unit}`, `{ts}` (RFC
//! 3339), `{ts_ms}`, `{anomaly}` (empty when none), `{status}`, `{name}`,
//! `{params}` (JSON) and `{attempt}`; text placeholders are JSON-escaped
//! without quotes, so write the quotes in the template. `{{` and `}}` are
//! literal braces.
//!
//! Decoding: a client publish on the telemetry topic's shape is a reading
//! of the device named by `{id}` (or the sender when the topic has no
//! `{id}`), sensor `{sensor}`; on the ack topic's shape, an ack with the
//! payload's `status` (and `result`).

wit_bindgen::generate!({
    world: "codec",
    path: "../../wit",
});

use std::fmt::Write;

use exports::iotmock::plugin::codec_api::{
    Ack, AckStatus, AddressedEvent, CodecInfo, DecodeRequest, Decoded, DeviceInfo, EncodeRequest,
    Encoded, Event, Guest, Message, Reading, UserProperty,
};
use iotmock::plugin::types::PluginError;
use iotmock_sdk::dialect::{Template, json_escaped, rfc3339_ms};
use serde_json::Value;

struct Plugin;
export!(Plugin);

const TOPIC_VARS: &[&str] = &["id", "group", "type", "username", "sensor", "command_id"];
const PAYLOAD_VARS: &[&str] = &[
    "id",
    "group",
    "type",
    "username",
    "sensor",
    "command_id",
    "value",
    "unit",
    "ts",
    "ts_ms",
    "anomaly",
    "status",
    "name",
    "params",
    "attempt",
];

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    telemetry_topic: String,
    telemetry_payload: String,
    status_topic: Option<String>,
    status_payload: String,
    command_topic: Option<String>,
    command_payload: String,
    ack_topic: Option<String>,
    ack_payload: String,
    qos: u8,
    retain: bool,
    content_type: Option<String>,
    user_properties: std::collections::BTreeMap<String, String>,
    value_field: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            telemetry_topic: "devices/{id}/telemetry/{sensor}".into(),
            telemetry_payload: "{{\"ts\":{ts_ms},\"value\":{value}}}".into(),
            status_topic: None,
            status_payload: "{status}".into(),
            command_topic: None,
            command_payload: "{{\"id\":\"{command_id}\",\"name\":\"{name}\",\"params\":{params}}}"
                .into(),
            ack_topic: None,
            ack_payload: "{{\"id\":\"{command_id}\",\"status\":\"{status}\"}}".into(),
            qos: 0,
            retain: false,
            content_type: None,
            user_properties: Default::default(),
            value_field: "value".into(),
        }
    }
}

struct Dialect {
    telemetry_topic: Template,
    telemetry_payload: Template,
    status: Option<(Template, Template)>,
    command: Option<(Template, Template)>,
    ack: Option<(Template, Template)>,
    qos: u8,
    retain: bool,
    content_type: Option<String>,
    user_properties: Vec<UserProperty>,
    value_field: String,
}

fn field(name: &str, r: Result<Template, String>) -> Result<Template, String> {
    r.map_err(|e| format!("field `{name}`: {e}"))
}

impl Dialect {
    fn load(text: &str) -> Result<Self, PluginError> {
        iotmock_sdk::parse_config(text)
            .and_then(Self::build)
            .map_err(PluginError::InvalidConfig)
    }

    fn build(c: Config) -> Result<Self, String> {
        if c.qos > 2 {
            return Err(format!(
                "field `qos`: {} is not a QoS; use 0, 1 or 2",
                c.qos
            ));
        }
        let topic = |name: &str, t: &str| {
            if t.is_empty() || t.contains(['+', '#']) {
                return Err(format!(
                    "field `{name}`: {t:?} must be a topic to publish to: not empty, no + or #"
                ));
            }
            field(name, Template::parse(t, TOPIC_VARS))
        };
        let payload = |name: &str, t: &str| field(name, Template::parse(t, PAYLOAD_VARS));
        let pair = |tn: &str, t: &Option<String>, pn: &str, p: &str| -> Result<_, String> {
            t.as_ref()
                .map(|t| Ok((topic(tn, t)?, payload(pn, p)?)))
                .transpose()
        };
        Ok(Self {
            telemetry_topic: topic("telemetry_topic", &c.telemetry_topic)?,
            telemetry_payload: payload("telemetry_payload", &c.telemetry_payload)?,
            status: pair(
                "status_topic",
                &c.status_topic,
                "status_payload",
                &c.status_payload,
            )?,
            command: pair(
                "command_topic",
                &c.command_topic,
                "command_payload",
                &c.command_payload,
            )?,
            ack: pair("ack_topic", &c.ack_topic, "ack_payload", &c.ack_payload)?,
            qos: c.qos,
            retain: c.retain,
            content_type: c.content_type,
            user_properties: c
                .user_properties
                .into_iter()
                .map(|(key, value)| UserProperty { key, value })
                .collect(),
            value_field: c.value_field,
        })
    }

    fn message(&self, topic: String, payload: String, qos: u8, retain: bool) -> Message {
        Message {
            topic,
            payload: payload.into_bytes(),
            qos,
            retain,
            content_type: self.content_type.clone(),
            user_properties: self.user_properties.clone(),
        }
    }
}

/// The values of one event's placeholders.
#[derive(Default)]
struct Vars<'a> {
    info: Option<&'a DeviceInfo>,
    sensor: &'a str,
    command_id: &'a str,
    value: String,
    unit: String,
    ts: String,
    ts_ms: String,
    anomaly: String,
    status: &'a str,
    name: String,
    params: &'a str,
    attempt: String,
}

impl<'a> Vars<'a> {
    fn get(&self, name: &str) -> &str {
        let info = self.info;
        match name {
            "id" => info.map(|i| i.id.as_str()).unwrap_or(""),
            "group" => info.and_then(|i| i.group.as_deref()).unwrap_or(""),
            "type" => info.and_then(|i| i.kind.as_deref()).unwrap_or(""),
            "username" => info.map(|i| i.username.as_str()).unwrap_or(""),
            "sensor" => self.sensor,
            "command_id" => self.command_id,
            "value" => &self.value,
            "unit" => &self.unit,
            "ts" => &self.ts,
            "ts_ms" => &self.ts_ms,
            "anomaly" => &self.anomaly,
            "status" => self.status,
            "name" => &self.name,
            "params" => self.params,
            "attempt" => &self.attempt,
            _ => "",
        }
    }
}

fn ack_name(s: AckStatus) -> &'static str {
    match s {
        AckStatus::Received => "received",
        AckStatus::Completed => "completed",
        AckStatus::Rejected => "rejected",
        AckStatus::Failed => "failed",
    }
}

fn encode_one(d: &Dialect, request: EncodeRequest) -> Encoded {
    let info = &request.info;
    let base = || Vars {
        info: Some(info),
        ..Vars::default()
    };
    let mut messages = Vec::new();
    match &request.event {
        Event::Readings(readings) => {
            // One set of variables for the batch: each reading sets all of
            // its own.
            let mut v = base();
            for r in readings {
                v.sensor = &r.sensor;
                v.value.clear();
                let _ = write!(v.value, "{}", r.value);
                v.unit = json_escaped(&r.unit);
                v.ts = rfc3339_ms(r.ts);
                v.ts_ms = r.ts.to_string();
                v.anomaly = r.anomaly.as_deref().map(json_escaped).unwrap_or_default();
                let topic = d.telemetry_topic.render(|n| v.get(n));
                let payload = d.telemetry_payload.render(|n| v.get(n));
                messages.push(d.message(topic, payload, d.qos, d.retain));
            }
        }
        Event::Status(online) => {
            if let Some((topic, payload)) = &d.status {
                let mut v = base();
                v.status = if *online { "online" } else { "offline" };
                let t = topic.render(|n| v.get(n));
                let p = payload.render(|n| v.get(n));
                messages.push(d.message(t, p, 1, true));
            }
        }
        Event::Command(c) => {
            if let Some((topic, payload)) = &d.command {
                let mut v = base();
                v.command_id = &c.id;
                v.name = json_escaped(&c.name);
                v.params = &c.params;
                v.attempt = c.attempt.to_string();
                let t = topic.render(|n| v.get(n));
                let p = payload.render(|n| v.get(n));
                messages.push(d.message(t, p, 1, false));
            }
        }
        Event::Ack(a) => {
            if let Some((topic, payload)) = &d.ack {
                let mut v = base();
                v.command_id = &a.command_id;
                v.status = ack_name(a.status);
                let t = topic.render(|n| v.get(n));
                let p = payload.render(|n| v.get(n));
                messages.push(d.message(t, p, 1, false));
            }
        }
        Event::Reported(_) => {}
    }
    Encoded {
        messages,
        state: request.state,
    }
}

fn lookup<'a>(found: &'a [(String, String)], name: &str) -> Option<&'a str> {
    found
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Guest for Plugin {
    fn describe(config: String) -> Result<CodecInfo, PluginError> {
        let d = Dialect::load(&config)?;
        let mut filters = vec![d.telemetry_topic.filter()];
        if let Some((ack, _)) = &d.ack {
            filters.push(ack.filter());
        }
        Ok(CodecInfo {
            description: "topics and JSON payloads from templates in the config".into(),
            filters,
        })
    }

    fn encode(config: String, requests: Vec<EncodeRequest>) -> Result<Vec<Encoded>, PluginError> {
        let d = Dialect::load(&config)?;
        Ok(requests.into_iter().map(|r| encode_one(&d, r)).collect())
    }

    fn decode(config: String, request: DecodeRequest) -> Result<Decoded, PluginError> {
        let d = Dialect::load(&config)?;
        let body: Option<Value> = serde_json::from_slice(&request.payload).ok();
        let (found, event) = if let Some(found) = d.telemetry_topic.match_topic(&request.topic) {
            let value = match &body {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::Object(o)) => o.get(&d.value_field).and_then(Value::as_f64),
                _ => None,
            };
            let (Some(value), Some(sensor)) = (value, lookup(&found, "sensor")) else {
                return Ok(Decoded::NotMine);
            };
            let event = Event::Readings(vec![Reading {
                sensor: sensor.to_string(),
                ts: iotmock::plugin::host::now(),
                value,
                unit: String::new(),
                anomaly: None,
            }]);
            (found, event)
        } else if let Some(found) = d
            .ack
            .as_ref()
            .and_then(|(t, _)| t.match_topic(&request.topic))
        {
            let status = match body
                .as_ref()
                .and_then(|b| b.get("status"))
                .and_then(Value::as_str)
            {
                Some("received") => AckStatus::Received,
                Some("completed") => AckStatus::Completed,
                Some("rejected") => AckStatus::Rejected,
                Some("failed") => AckStatus::Failed,
                _ => return Ok(Decoded::NotMine),
            };
            let Some(command_id) = lookup(&found, "command_id") else {
                return Ok(Decoded::NotMine);
            };
            let event = Event::Ack(Ack {
                command_id: command_id.to_string(),
                status,
                result: body
                    .as_ref()
                    .and_then(|b| b.get("result"))
                    .map(|r| r.to_string()),
            });
            (found, event)
        } else {
            return Ok(Decoded::NotMine);
        };
        Ok(Decoded::Events((
            vec![AddressedEvent {
                device: lookup(&found, "id").map(str::to_string),
                event,
            }],
            request.state,
        )))
    }
}
