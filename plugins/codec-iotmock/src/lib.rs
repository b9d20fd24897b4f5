//! iotmock's own dialect as a codec plugin: the topics and JSON of the
//! built-in path, byte for byte.
//!
//! | event | topic | payload | QoS, retain |
//! |---|---|---|---|
//! | readings | `devices/{id}/telemetry/{sensor}`, one message each | `{"device","sensor","ts","value","unit"[,"anomaly"]}` | 0, no |
//! | status | `devices/{id}/status` | `online` / `offline` | 1, yes |
//! | command | `devices/{id}/commands/{command_id}` | `{"id","name","params","attempt"}` | 1, no |
//! | ack | `devices/{id}/acks/{command_id}` | `{"id","result","status"}` | 1, no |
//! | reported | (none: iotmock devices report state over HTTP) | | |
//!
//! It decodes what devices publish on `devices/+/telemetry/+` (a JSON
//! object with a numeric `value` and an optional `unit`, or a bare number;
//! stamped with simulated time) and `devices/+/acks/+`
//! (`{"status","result"}`). Config: none (`{}`).

wit_bindgen::generate!({
    world: "codec",
    path: "../../wit",
});

use exports::iotmock::plugin::codec_api::{
    Ack, AckStatus, AddressedEvent, CodecInfo, DecodeRequest, Decoded, EncodeRequest, Encoded,
    Event, Guest, Message, Reading,
};
use iotmock::plugin::types::PluginError;
use iotmock_sdk::dialect::{json_string, write_rfc3339_ms};
use serde_json::Value;

struct Plugin;
export!(Plugin);

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {}

fn message(topic: String, payload: Vec<u8>, qos: u8, retain: bool) -> Message {
    Message {
        topic,
        payload,
        qos,
        retain,
        content_type: None,
        user_properties: Vec::new(),
    }
}

/// The reading's JSON, as the server writes it (`Reading::write_json`).
fn reading_json(device: &str, r: &Reading, out: &mut String) {
    use core::fmt::Write;
    out.push_str("{\"device\":\"");
    out.push_str(device);
    out.push_str("\",\"sensor\":\"");
    out.push_str(&r.sensor);
    out.push_str("\",\"ts\":\"");
    write_rfc3339_ms(out, r.ts);
    out.push_str("\",\"value\":");
    if r.value.is_finite() {
        let _ = write!(out, "{}", r.value);
    } else {
        out.push_str("null");
    }
    out.push_str(",\"unit\":");
    out.push_str(&json_string(&r.unit));
    if let Some(anomaly) = &r.anomaly {
        out.push_str(",\"anomaly\":");
        out.push_str(&json_string(anomaly));
    }
    out.push('}');
}

fn encode_one(request: EncodeRequest) -> Encoded {
    let id = &request.info.id;
    let messages = match &request.event {
        Event::Readings(readings) => readings
            .iter()
            .map(|r| {
                let mut topic = String::with_capacity(20 + id.len() + r.sensor.len());
                topic.push_str("devices/");
                topic.push_str(id);
                topic.push_str("/telemetry/");
                topic.push_str(&r.sensor);
                let mut payload = String::with_capacity(128);
                reading_json(id, r, &mut payload);
                message(topic, payload.into_bytes(), 0, false)
            })
            .collect(),
        Event::Status(online) => {
            let payload: &[u8] = if *online { b"online" } else { b"offline" };
            vec![message(
                format!("devices/{id}/status"),
                payload.to_vec(),
                1,
                true,
            )]
        }
        Event::Command(c) => {
            let params: Value = serde_json::from_str(&c.params).unwrap_or(Value::Null);
            let mut body = serde_json::Map::new();
            body.insert("id".into(), Value::String(c.id.clone()));
            body.insert("name".into(), Value::String(c.name.clone()));
            body.insert("params".into(), params);
            body.insert("attempt".into(), Value::from(c.attempt));
            vec![message(
                format!("devices/{id}/commands/{}", c.id),
                serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
                1,
                false,
            )]
        }
        Event::Ack(a) => {
            let mut body = serde_json::Map::new();
            body.insert("id".into(), Value::String(a.command_id.clone()));
            body.insert("status".into(), Value::String(status_name(a.status).into()));
            if let Some(result) = &a.result {
                let value = serde_json::from_str(result).unwrap_or(Value::String(result.clone()));
                body.insert("result".into(), value);
            }
            vec![message(
                format!("devices/{id}/acks/{}", a.command_id),
                serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
                1,
                false,
            )]
        }
        Event::Reported(_) => Vec::new(),
    };
    Encoded {
        messages,
        state: request.state,
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

fn parse_status(s: &str) -> Option<AckStatus> {
    Some(match s {
        "received" => AckStatus::Received,
        "completed" => AckStatus::Completed,
        "rejected" => AckStatus::Rejected,
        "failed" => AckStatus::Failed,
        _ => return None,
    })
}

impl Guest for Plugin {
    fn describe(config: String) -> Result<CodecInfo, PluginError> {
        iotmock_sdk::parse_config::<Config>(&config).map_err(PluginError::InvalidConfig)?;
        Ok(CodecInfo {
            description: "iotmock's own topics: devices/{id}/telemetry/{sensor} with JSON readings"
                .into(),
            filters: vec!["devices/+/telemetry/+".into(), "devices/+/acks/+".into()],
        })
    }

    fn encode(config: String, requests: Vec<EncodeRequest>) -> Result<Vec<Encoded>, PluginError> {
        iotmock_sdk::parse_config::<Config>(&config).map_err(PluginError::InvalidConfig)?;
        Ok(requests.into_iter().map(encode_one).collect())
    }

    fn decode(_config: String, request: DecodeRequest) -> Result<Decoded, PluginError> {
        let levels: Vec<&str> = request.topic.split('/').collect();
        let (device, kind, last) = match levels.as_slice() {
            ["devices", device, kind, last] => (*device, *kind, *last),
            _ => return Ok(Decoded::NotMine),
        };
        let body: Option<Value> = serde_json::from_slice(&request.payload).ok();
        let event = match kind {
            "telemetry" => {
                let value = match &body {
                    Some(Value::Number(n)) => n.as_f64(),
                    Some(Value::Object(o)) => o.get("value").and_then(Value::as_f64),
                    _ => None,
                };
                let Some(value) = value else {
                    return Ok(Decoded::NotMine);
                };
                let unit = body
                    .as_ref()
                    .and_then(|b| b.get("unit"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                Event::Readings(vec![Reading {
                    sensor: last.to_string(),
                    ts: iotmock::plugin::host::now(),
                    value,
                    unit,
                    anomaly: None,
                }])
            }
            "acks" => {
                let Some(status) = body
                    .as_ref()
                    .and_then(|b| b.get("status"))
                    .and_then(Value::as_str)
                    .and_then(parse_status)
                else {
                    return Ok(Decoded::NotMine);
                };
                Event::Ack(Ack {
                    command_id: last.to_string(),
                    status,
                    result: body
                        .as_ref()
                        .and_then(|b| b.get("result"))
                        .map(|r| r.to_string()),
                })
            }
            _ => return Ok(Decoded::NotMine),
        };
        Ok(Decoded::Events((
            vec![AddressedEvent {
                device: Some(device.to_string()),
                event,
            }],
            request.state,
        )))
    }
}
