//! The codec call path of the pool: `describe`, batched `encode` and
//! `decode`, with the plain types of [`super::super::codec`] converted to
//! and from the generated ones here.

use std::sync::Arc;

use super::super::bindings::codec::exports::iotmock::plugin::codec_api as wit;
use super::super::codec::{
    CodecDevice, CodecEvent, CodecInfo, CodecMessage, CodecReading, DecodeRequest, Decoded,
    EncodeRequest, Encoded,
};
use super::{
    CallContext, CallError, Exports, Pool, ReplyStatus, Version, Worker, World, guest_error,
};

type EncodeAnswer = (Result<Vec<Encoded>, CallError>, CallContext);
type DecodeAnswer = (Result<Decoded, CallError>, CallContext);

impl Pool {
    /// `describe` of a codec plugin (see [`Pool::describe`]).
    pub(crate) async fn describe_codec(
        &self,
        name: &str,
        config: &str,
        config_check: bool,
    ) -> Result<CodecInfo, CallError> {
        self.describe(
            name,
            World::Codec,
            config,
            config_check,
            |store, exports, config| {
                let Exports::Codec(c) = exports else {
                    unreachable!("world checked")
                };
                c.iotmock_plugin_codec_api().call_describe(store, config)
            },
            |info| CodecInfo {
                description: info.description,
                filters: info.filters,
            },
        )
        .await
    }

    pub(crate) async fn encode(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<EncodeRequest>,
    ) -> EncodeAnswer {
        self.call_for(name, World::Codec, ctx, move |w, version, ctx| {
            encode_on(w, version, &config, ctx, requests)
        })
        .await
    }

    pub(crate) fn encode_blocking(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        requests: Vec<EncodeRequest>,
    ) -> EncodeAnswer {
        self.call_for_blocking(name, World::Codec, ctx, move |w, version, ctx| {
            encode_on(w, version, &config, ctx, requests)
        })
    }

    pub(crate) async fn decode(
        &self,
        name: &str,
        config: Arc<str>,
        ctx: CallContext,
        request: DecodeRequest,
    ) -> DecodeAnswer {
        self.call_for(name, World::Codec, ctx, move |w, version, ctx| {
            decode_on(w, version, &config, ctx, request)
        })
        .await
    }
}

fn encode_on(
    worker: &mut Worker,
    version: &Arc<Version>,
    config: &str,
    ctx: CallContext,
    requests: Vec<EncodeRequest>,
) -> EncodeAnswer {
    let expected = requests.len();
    let requests: Vec<wit::EncodeRequest> = requests
        .into_iter()
        .map(|r| wit::EncodeRequest {
            device: r.device,
            info: device_to_wit(r.info),
            ts: r.ts,
            event: event_to_wit(r.event),
            state: r.state,
        })
        .collect();
    let (result, ctx) = worker.call(version, ctx, |store, exports| {
        let Exports::Codec(c) = exports else {
            unreachable!("world checked")
        };
        c.iotmock_plugin_codec_api()
            .call_encode(store, config, &requests)
    });
    let name = &*version.name;
    let result = result
        .and_then(|r| r.map_err(|e| guest_error(name, e)))
        .and_then(|answers| {
            if answers.len() != expected {
                return Err(CallError::BadAnswer {
                    name: name.to_string(),
                    got: answers.len(),
                    expected,
                });
            }
            Ok(answers
                .into_iter()
                .map(|e| Encoded {
                    messages: e
                        .messages
                        .into_iter()
                        .map(|m| CodecMessage {
                            topic: m.topic,
                            payload: m.payload,
                            qos: m.qos,
                            retain: m.retain,
                            content_type: m.content_type,
                            user_properties: m
                                .user_properties
                                .into_iter()
                                .map(|p| (p.key, p.value))
                                .collect(),
                        })
                        .collect(),
                    state: e.state,
                })
                .collect())
        });
    (result, ctx)
}

fn decode_on(
    worker: &mut Worker,
    version: &Arc<Version>,
    config: &str,
    ctx: CallContext,
    request: DecodeRequest,
) -> DecodeAnswer {
    let request = wit::DecodeRequest {
        topic: request.topic,
        payload: request.payload,
        sender: request.sender.map(device_to_wit),
        state: request.state,
    };
    let (result, ctx) = worker.call(version, ctx, |store, exports| {
        let Exports::Codec(c) = exports else {
            unreachable!("world checked")
        };
        c.iotmock_plugin_codec_api()
            .call_decode(store, config, &request)
    });
    let name = &*version.name;
    let result = result
        .and_then(|r| r.map_err(|e| guest_error(name, e)))
        .map(|d| match d {
            wit::Decoded::NotMine => Decoded::NotMine,
            wit::Decoded::Events((events, state)) => Decoded::Events(
                events
                    .into_iter()
                    .map(|e| (e.device, event_from_wit(e.event)))
                    .collect(),
                state,
            ),
        });
    (result, ctx)
}

fn device_to_wit(d: CodecDevice) -> wit::DeviceInfo {
    wit::DeviceInfo {
        id: d.id,
        group: d.group,
        kind: d.kind,
        username: d.username,
        simulated: d.simulated,
    }
}

fn status_to_wit(s: ReplyStatus) -> wit::AckStatus {
    match s {
        ReplyStatus::Received => wit::AckStatus::Received,
        ReplyStatus::Completed => wit::AckStatus::Completed,
        ReplyStatus::Rejected => wit::AckStatus::Rejected,
        ReplyStatus::Failed => wit::AckStatus::Failed,
    }
}

fn status_from_wit(s: wit::AckStatus) -> ReplyStatus {
    match s {
        wit::AckStatus::Received => ReplyStatus::Received,
        wit::AckStatus::Completed => ReplyStatus::Completed,
        wit::AckStatus::Rejected => ReplyStatus::Rejected,
        wit::AckStatus::Failed => ReplyStatus::Failed,
    }
}

fn event_to_wit(e: CodecEvent) -> wit::Event {
    match e {
        CodecEvent::Readings(readings) => wit::Event::Readings(
            readings
                .into_iter()
                .map(|r| wit::Reading {
                    sensor: r.sensor,
                    ts: r.ts,
                    value: r.value,
                    unit: r.unit,
                    anomaly: r.anomaly,
                })
                .collect(),
        ),
        CodecEvent::Status(online) => wit::Event::Status(online),
        CodecEvent::Ack {
            command_id,
            status,
            result,
        } => wit::Event::Ack(wit::Ack {
            command_id,
            status: status_to_wit(status),
            result,
        }),
        CodecEvent::Reported(state) => wit::Event::Reported(state),
        CodecEvent::Command {
            id,
            name,
            params,
            attempt,
        } => wit::Event::Command(wit::Command {
            id,
            name,
            params,
            attempt,
        }),
    }
}

fn event_from_wit(e: wit::Event) -> CodecEvent {
    match e {
        wit::Event::Readings(readings) => CodecEvent::Readings(
            readings
                .into_iter()
                .map(|r| CodecReading {
                    sensor: r.sensor,
                    ts: r.ts,
                    value: r.value,
                    unit: r.unit,
                    anomaly: r.anomaly,
                })
                .collect(),
        ),
        wit::Event::Status(online) => CodecEvent::Status(online),
        wit::Event::Ack(a) => CodecEvent::Ack {
            command_id: a.command_id,
            status: status_from_wit(a.status),
            result: a.result,
        },
        wit::Event::Reported(state) => CodecEvent::Reported(state),
        wit::Event::Command(c) => CodecEvent::Command {
            id: c.id,
            name: c.name,
            params: c.params,
            attempt: c.attempt,
        },
    }
}
