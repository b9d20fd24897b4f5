//! The `packed` dialect: a compact binary payload, and the example to copy
//! when your devices speak a format of their own. Copy this folder, rename
//! the package and the `[lib] name` (the plugin's name), change the two
//! functions marked below, build with
//! `cargo build --release --target wasm32-wasip2`, and drop the `.wasm` in
//! the `--plugins` folder (or `PUT /api/v1/plugins/{name}`).
//!
//! Topic `packed/{id}`, one message per reading, QoS 0. Payload, big
//! endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0–3 | sequence number of the device's messages (wraps at 2^32) |
//! | 4–11 | time, ms since the Unix epoch (i64) |
//! | 12–19 | value (f64) |
//! | 20 | length n of the sensor name |
//! | 21–21+n | the sensor name, UTF-8 |
//!
//! The sequence number is codec state: the host keeps it for each device
//! and hands it back with the next request, so it survives plugin reloads
//! and never depends on which worker runs the call. The same layout is
//! decoded from devices that publish on `packed/{id}` (the device named in
//! the topic; the sequence number is not checked). Config: none (`{}`).

wit_bindgen::generate!({
    world: "codec",
    path: "../../wit",
});

use exports::iotmock::plugin::codec_api::{
    AddressedEvent, CodecInfo, DecodeRequest, Decoded, EncodeRequest, Encoded, Event, Guest,
    Message, Reading,
};
use iotmock::plugin::types::PluginError;
use iotmock_sdk::dialect::{set_state_u64, state_u64};

struct Plugin;
export!(Plugin);

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {}

/// Change this: one reading into your payload.
fn pack(seq: u32, r: &Reading) -> Vec<u8> {
    let name = r.sensor.as_bytes();
    let name = &name[..name.len().min(255)];
    let mut out = Vec::with_capacity(21 + name.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&r.ts.to_be_bytes());
    out.extend_from_slice(&r.value.to_be_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out
}

/// Change this too: your payload back into a reading (None: not yours).
fn unpack(payload: &[u8]) -> Option<Reading> {
    let seq_ts_value = payload.get(..20)?;
    let n = *payload.get(20)? as usize;
    let name = payload.get(21..21 + n)?;
    if payload.len() != 21 + n {
        return None;
    }
    Some(Reading {
        sensor: String::from_utf8(name.to_vec()).ok()?,
        ts: i64::from_be_bytes(seq_ts_value[4..12].try_into().ok()?),
        value: f64::from_be_bytes(seq_ts_value[12..20].try_into().ok()?),
        unit: String::new(),
        anomaly: None,
    })
}

fn encode_one(request: EncodeRequest) -> Encoded {
    let mut state = request.state;
    let mut messages = Vec::new();
    // Only readings have a word in this dialect; other events send nothing.
    if let Event::Readings(readings) = &request.event {
        let mut seq = state_u64(&state, 0);
        for r in readings {
            messages.push(Message {
                topic: format!("packed/{}", request.info.id),
                payload: pack(seq as u32, r),
                qos: 0,
                retain: false,
                content_type: Some("application/octet-stream".into()),
                user_properties: Vec::new(),
            });
            seq = (seq + 1) % (1 << 32);
        }
        set_state_u64(&mut state, 0, seq);
    }
    Encoded { messages, state }
}

impl Guest for Plugin {
    fn describe(config: String) -> Result<CodecInfo, PluginError> {
        iotmock_sdk::parse_config::<Config>(&config).map_err(PluginError::InvalidConfig)?;
        Ok(CodecInfo {
            description: "packed/{id} with a 21-byte binary header per reading".into(),
            filters: vec!["packed/+".into()],
        })
    }

    fn encode(config: String, requests: Vec<EncodeRequest>) -> Result<Vec<Encoded>, PluginError> {
        iotmock_sdk::parse_config::<Config>(&config).map_err(PluginError::InvalidConfig)?;
        Ok(requests.into_iter().map(encode_one).collect())
    }

    fn decode(_config: String, request: DecodeRequest) -> Result<Decoded, PluginError> {
        let (Some(device), Some(reading)) = (
            request.topic.strip_prefix("packed/"),
            unpack(&request.payload),
        ) else {
            return Ok(Decoded::NotMine);
        };
        Ok(Decoded::Events((
            vec![AddressedEvent {
                device: Some(device.to_string()),
                event: Event::Readings(vec![reading]),
            }],
            request.state,
        )))
    }
}
