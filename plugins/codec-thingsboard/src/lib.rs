//! The `thingsboard` dialect: ThingsBoard's device MQTT API, so firmware
//! and back ends written for ThingsBoard run against iotmock unchanged.
//!
//! | event | topic | payload |
//! |---|---|---|
//! | readings | `v1/devices/me/telemetry` | `{"ts":ms,"values":{sensor:value,...}}`, or a list of them when the readings have several times |
//! | reported state | `v1/devices/me/attributes` | the state object (client attributes) |
//! | command | `v1/devices/me/rpc/request/{n}` | `{"method":name,"params":params}` (server-side RPC) |
//! | ack | `v1/devices/me/rpc/response/{n}` | the result (or `{"status":...}` without one) |
//! | status | (none: ThingsBoard reads connectivity from the connection) | |
//!
//! A device is identified the ThingsBoard way, by its access token: the
//! user name of its MQTT connection, which in iotmock is the device id
//! (`credentials.username`). `n` counts RPCs per device from 1, and the
//! codec state remembers which command each `n` carried (the last 64), so
//! the device's response on `rpc/response/{n}` completes that command with
//! the response as its result.
//!
//! Decoded from devices: telemetry (an object of values, `{"ts","values"}`
//! or a list of either; numbers and booleans become readings, other values
//! are skipped), attributes (merged into the reported state) and RPC
//! responses. Config: none (`{}`).
//!
//! As on a real ThingsBoard every device uses the same topics. An RPC
//! request's topic does not name its device, so the broker delivers it
//! only to that device's connections (user name or client id), as
//! ThingsBoard does: a device gets its own requests and no other's.

wit_bindgen::generate!({
    world: "codec",
    path: "../../wit",
});

use exports::iotmock::plugin::codec_api::{
    Ack, AckStatus, AddressedEvent, CodecInfo, DecodeRequest, Decoded, EncodeRequest, Encoded,
    Event, Guest, Message, Reading,
};
use iotmock::plugin::types::PluginError;
use serde_json::{Map, Value};

struct Plugin;
export!(Plugin);

const TELEMETRY: &str = "v1/devices/me/telemetry";
const ATTRIBUTES: &str = "v1/devices/me/attributes";
const RPC_REQUEST: &str = "v1/devices/me/rpc/request/";
const RPC_RESPONSE: &str = "v1/devices/me/rpc/response/";
/// RPCs whose command id the state remembers.
const REMEMBERED: usize = 64;

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {}

/// The per-device state: the last RPC number and the commands of the
/// recent ones.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct State {
    last: u64,
    pending: Vec<(u64, String)>,
}

impl State {
    fn load(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn number_of(&self, command: &str) -> Option<u64> {
        self.pending
            .iter()
            .rev()
            .find(|(_, id)| id == command)
            .map(|(n, _)| *n)
    }
}

fn message(topic: String, payload: Vec<u8>, qos: u8) -> Message {
    Message {
        topic,
        payload,
        qos,
        retain: false,
        content_type: Some("application/json".into()),
        user_properties: Vec::new(),
    }
}

fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn telemetry(readings: &[Reading]) -> Value {
    // Readings arrive in time order: one entry per distinct time.
    let mut entries: Vec<(i64, Map<String, Value>)> = Vec::new();
    for r in readings {
        match entries.last_mut() {
            Some((ts, values)) if *ts == r.ts => {
                values.insert(r.sensor.clone(), number(r.value));
            }
            _ => {
                let mut values = Map::new();
                values.insert(r.sensor.clone(), number(r.value));
                entries.push((r.ts, values));
            }
        }
    }
    let entry = |(ts, values): (i64, Map<String, Value>)| {
        let mut e = Map::new();
        e.insert("ts".into(), Value::from(ts));
        e.insert("values".into(), Value::Object(values));
        Value::Object(e)
    };
    if entries.len() == 1 {
        entry(entries.remove(0))
    } else {
        Value::Array(entries.into_iter().map(entry).collect())
    }
}

fn encode_one(request: EncodeRequest) -> Encoded {
    let mut state = State::load(&request.state);
    let messages = match &request.event {
        Event::Readings(readings) if !readings.is_empty() => vec![message(
            TELEMETRY.into(),
            serde_json::to_vec(&telemetry(readings)).unwrap_or_default(),
            1,
        )],
        Event::Readings(_) | Event::Status(_) => Vec::new(),
        Event::Reported(object) => vec![message(ATTRIBUTES.into(), object.clone().into_bytes(), 1)],
        Event::Command(c) => {
            let n = state.number_of(&c.id).unwrap_or_else(|| {
                state.last += 1;
                state.pending.push((state.last, c.id.clone()));
                if state.pending.len() > REMEMBERED {
                    state.pending.remove(0);
                }
                state.last
            });
            let params: Value = serde_json::from_str(&c.params).unwrap_or(Value::Null);
            let mut body = Map::new();
            body.insert("method".into(), Value::String(c.name.clone()));
            body.insert("params".into(), params);
            vec![message(
                format!("{RPC_REQUEST}{n}"),
                serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
                1,
            )]
        }
        Event::Ack(a) => match state.number_of(&a.command_id) {
            // The RPC protocol has one answer per request: progress acks
            // (received) have no word in it.
            Some(n) if a.status != AckStatus::Received => {
                let payload = match &a.result {
                    Some(result) => result.clone().into_bytes(),
                    None => format!("{{\"status\":\"{}\"}}", status_name(a.status)).into_bytes(),
                };
                vec![message(format!("{RPC_RESPONSE}{n}"), payload, 1)]
            }
            _ => Vec::new(),
        },
    };
    Encoded {
        messages,
        state: state.save(),
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

/// Readings of a telemetry payload (see the module docs).
fn readings_of(body: &Value, now: i64, out: &mut Vec<Reading>) {
    match body {
        Value::Array(items) => {
            for item in items {
                readings_of(item, now, out);
            }
        }
        Value::Object(o) => {
            let (ts, values) = match (o.get("ts").and_then(Value::as_i64), o.get("values")) {
                (Some(ts), Some(Value::Object(values))) => (ts, values),
                _ => (now, o),
            };
            for (key, value) in values {
                let value = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                    _ => None,
                };
                if let Some(value) = value {
                    out.push(Reading {
                        sensor: key.clone(),
                        ts,
                        value,
                        unit: String::new(),
                        anomaly: None,
                    });
                }
            }
        }
        _ => {}
    }
}

impl Guest for Plugin {
    fn describe(config: String) -> Result<CodecInfo, PluginError> {
        iotmock_sdk::parse_config::<Config>(&config).map_err(PluginError::InvalidConfig)?;
        Ok(CodecInfo {
            description: "ThingsBoard's device MQTT API: telemetry, attributes, server-side RPC"
                .into(),
            filters: vec![
                TELEMETRY.into(),
                ATTRIBUTES.into(),
                format!("{RPC_RESPONSE}+"),
            ],
        })
    }

    fn encode(config: String, requests: Vec<EncodeRequest>) -> Result<Vec<Encoded>, PluginError> {
        iotmock_sdk::parse_config::<Config>(&config).map_err(PluginError::InvalidConfig)?;
        Ok(requests.into_iter().map(encode_one).collect())
    }

    fn decode(_config: String, request: DecodeRequest) -> Result<Decoded, PluginError> {
        let Ok(body) = serde_json::from_slice::<Value>(&request.payload) else {
            return Ok(Decoded::NotMine);
        };
        let now = iotmock::plugin::host::now();
        let event = if request.topic == TELEMETRY {
            let mut readings = Vec::new();
            readings_of(&body, now, &mut readings);
            Event::Readings(readings)
        } else if request.topic == ATTRIBUTES {
            if !body.is_object() {
                return Ok(Decoded::NotMine);
            }
            Event::Reported(body.to_string())
        } else if let Some(n) = request.topic.strip_prefix(RPC_RESPONSE) {
            let state = State::load(&request.state);
            let Some(command) = n
                .parse::<u64>()
                .ok()
                .and_then(|n| state.pending.iter().find(|(k, _)| *k == n))
            else {
                return Ok(Decoded::NotMine);
            };
            Event::Ack(Ack {
                command_id: command.1.clone(),
                status: AckStatus::Completed,
                result: Some(body.to_string()),
            })
        } else {
            return Ok(Decoded::NotMine);
        };
        Ok(Decoded::Events((
            vec![AddressedEvent {
                device: None,
                event,
            }],
            request.state,
        )))
    }
}
