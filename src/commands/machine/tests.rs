//! Every transition of the state machine, driven by hand: `now` and the
//! reachability of devices are whatever each test says.

use serde_json::json;

mod acks;
mod recovery;

use super::*;
use crate::commands::request::check_request;
use crate::plugin::{HandlerReply, Handling, ReplyStatus};

const DEV: &str = "dev-1";

fn request(f: impl FnOnce(&mut CommandRequest)) -> (CommandRequest, Checked) {
    let mut r = CommandRequest {
        name: "reboot".into(),
        ..Default::default()
    };
    f(&mut r);
    let checked = check_request(&r).expect("a valid request");
    (r, checked)
}

/// Creates a command for DEV at `now`.
fn create(
    m: &mut Machine,
    online: bool,
    now: i64,
    f: impl FnOnce(&mut CommandRequest),
) -> (Arc<str>, Vec<Effect>) {
    let (r, checked) = request(f);
    let mut effects = Vec::new();
    let id = m
        .create(
            DEV,
            r,
            checked,
            Origin::Api,
            None,
            online,
            now,
            &mut effects,
        )
        .expect("created");
    (id, effects)
}

fn ack(m: &mut Machine, id: &str, status: AckStatus, now: i64) -> Vec<Effect> {
    let mut effects = Vec::new();
    let ack = DeviceAck {
        status,
        result: Some(json!({"ok": true})),
    };
    m.ack(DEV, id, ack, AckSource::Mqtt, now, &mut effects)
        .expect("a known command");
    effects
}

fn bare_ack(status: AckStatus) -> DeviceAck {
    DeviceAck {
        status,
        result: None,
    }
}

/// Fires every timer due by `now`; `reachable` answers for any device.
fn run_until(m: &mut Machine, now: i64, reachable: bool) -> Vec<Effect> {
    let mut effects = Vec::new();
    loop {
        match m.fire_due(now, None, &mut effects) {
            Fire::Idle => return effects,
            Fire::Fired => {}
            Fire::NeedsReach(device) => {
                assert_eq!(
                    m.fire_due(now, Some((&device, reachable)), &mut effects),
                    Fire::Fired
                );
            }
        }
    }
}

fn status(m: &Machine, id: &str) -> CommandStatus {
    m.view(id).expect("known").status
}

fn sends(effects: &[Effect]) -> Vec<(String, u32, i64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                device,
                message,
                at,
            } => Some((device.clone(), message.attempt, *at)),
            _ => None,
        })
        .collect()
}

fn persisted(effects: &[Effect]) -> Vec<(String, CommandStatus, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { view, version, .. } => Some((view.id.clone(), view.status, *version)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_online_device_is_sent_the_command_at_once() {
    let mut m = Machine::new(false);
    let (id, effects) = create(&mut m, true, 1_000, |r| r.timeout_ms = Some(500));
    assert_eq!(&*id, "cmd-000001");
    assert_eq!(status(&m, &id), CommandStatus::Sent);
    assert_eq!(sends(&effects), vec![(DEV.to_string(), 1, 1_000)]);
    assert!(
        effects.iter().any(
            |e| matches!(e, Effect::Status { status: CommandStatus::Sent, id: i } if *i == id)
        )
    );
    // The attempt times out 500 ms later.
    assert_eq!(m.next_due(), Some(1_500));
    let c = m.counts();
    assert_eq!((c.submitted, c.deliveries, c.retries), (1, 1, 0));
}

#[test]
fn without_a_store_nothing_is_copied_for_writing() {
    let mut m = Machine::new(false);
    let (id, mut effects) = create(&mut m, true, 0, |_| {});
    effects.extend(ack(&mut m, &id, AckStatus::Completed, 10));
    assert!(persisted(&effects).is_empty());
    assert!(!effects.iter().any(|e| matches!(e, Effect::Forget(_))));
}

#[test]
fn with_a_store_every_change_is_written_with_a_higher_version() {
    let mut m = Machine::new(true);
    let (id, mut effects) = create(&mut m, false, 0, |_| {});
    m.mark_stored(std::slice::from_ref(&id));
    m.deliver_queued(DEV, 5, &mut effects);
    effects.extend(ack(&mut m, &id, AckStatus::Completed, 10));
    let written = persisted(&effects);
    let states: Vec<_> = written.iter().map(|w| w.1).collect();
    assert_eq!(
        states,
        [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Completed
        ]
    );
    assert!(written.windows(2).all(|w| w[0].2 < w[1].2), "{written:?}");
}

#[test]
fn received_then_completed() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |_| {});
    ack(&mut m, &id, AckStatus::Received, 10);
    assert_eq!(status(&m, &id), CommandStatus::Received);
    let effects = ack(&mut m, &id, AckStatus::Completed, 20);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::Completed);
    assert_eq!(v.result, Some(json!({"ok": true})));
    assert_eq!(v.updated_at, 20);
    let history: Vec<_> = v.history.iter().map(|t| t.status).collect();
    assert_eq!(
        history,
        [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Received,
            CommandStatus::Completed
        ]
    );
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Status {
            status: CommandStatus::Completed,
            ..
        }
    )));
    // Its timeout, still in the heap, finds it final and does nothing.
    assert!(run_until(&mut m, 100_000, true).is_empty());
    assert_eq!(status(&m, &id), CommandStatus::Completed);
}

#[test]
fn rejected_and_failed_acks_are_final() {
    for (ack_status, final_status) in [
        (AckStatus::Rejected, CommandStatus::Rejected),
        (AckStatus::Failed, CommandStatus::Failed),
    ] {
        let mut m = Machine::new(false);
        let (id, _) = create(&mut m, true, 0, |r| r.retries = Some(3));
        ack(&mut m, &id, ack_status, 10);
        assert_eq!(status(&m, &id), final_status);
        // No retry follows a final answer.
        let effects = run_until(&mut m, 1_000_000, true);
        assert!(sends(&effects).is_empty());
        assert_eq!(m.view(&id).unwrap().attempts, 1);
    }
}

#[test]
fn complete_on_received_completes_on_the_first_received() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.complete_on = Some(CompleteOn::Received)
    });
    ack(&mut m, &id, AckStatus::Received, 10);
    assert_eq!(status(&m, &id), CommandStatus::Completed);
}

#[test]
fn retries_back_off_doubling_then_time_out_at_the_attempt_limit() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(50);
        r.retries = Some(2);
        r.backoff_ms = Some(100);
    });
    // Attempt 1 times out at 50; the retry waits 100.
    assert!(run_until(&mut m, 50, true).is_empty());
    assert_eq!(status(&m, &id), CommandStatus::Sent);
    assert_eq!(m.next_due(), Some(150));
    assert_eq!(
        sends(&run_until(&mut m, 150, true)),
        vec![(DEV.into(), 2, 150)]
    );
    // Attempt 2 times out at 200; the backoff doubles to 200.
    run_until(&mut m, 200, true);
    assert_eq!(m.next_due(), Some(400));
    assert_eq!(
        sends(&run_until(&mut m, 400, true)),
        vec![(DEV.into(), 3, 400)]
    );
    // Attempt 3 of 3 times out: final.
    run_until(&mut m, 450, true);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::TimedOut);
    assert_eq!(v.attempts, 3);
    assert_eq!(
        v.reason.as_deref(),
        Some("no final ack within 50 ms of attempt 3 of 3")
    );
    let c = m.counts();
    assert_eq!((c.deliveries, c.retries), (3, 2));
    assert_eq!(m.next_due(), None);
}

#[test]
fn without_retries_the_first_timeout_is_final() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| r.timeout_ms = Some(10));
    run_until(&mut m, 9, true);
    assert_eq!(status(&m, &id), CommandStatus::Sent);
    run_until(&mut m, 10, true);
    assert_eq!(status(&m, &id), CommandStatus::TimedOut);
}

#[test]
fn timers_fire_at_their_own_due_time_in_order() {
    let mut m = Machine::new(false);
    let (a, _) = create(&mut m, true, 0, |r| r.timeout_ms = Some(300));
    let (b, _) = create(&mut m, true, 0, |r| r.timeout_ms = Some(100));
    // One big step: each timeout is stamped with its own time.
    run_until(&mut m, 10_000, true);
    assert_eq!(m.view(&a).unwrap().updated_at, 300);
    assert_eq!(m.view(&b).unwrap().updated_at, 100);
}

#[test]
fn a_retry_asks_whether_its_device_can_be_reached() {
    let mut m = Machine::new(false);
    create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(10);
        r.retries = Some(1);
        r.backoff_ms = Some(0);
    });
    let mut effects = Vec::new();
    assert_eq!(m.fire_due(10, None, &mut effects), Fire::Fired); // the timeout
    assert_eq!(
        m.fire_due(10, None, &mut effects),
        Fire::NeedsReach(DEV.into())
    );
    // A fact about another device does not answer it; the timer stays.
    assert_eq!(
        m.fire_due(10, Some(("other", true)), &mut effects),
        Fire::NeedsReach(DEV.into())
    );
    assert_eq!(m.fire_due(10, Some((DEV, true)), &mut effects), Fire::Fired);
    assert_eq!(sends(&effects), vec![(DEV.into(), 2, 10)]);
}

#[test]
fn a_retry_to_an_offline_device_waits_in_its_queue_then_goes_out() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(10);
        r.retries = Some(1);
        r.backoff_ms = Some(0);
        r.ttl_ms = Some(1_000);
    });
    run_until(&mut m, 10, false);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::Queued);
    assert_eq!(
        v.history.last().unwrap().reason.as_deref(),
        Some("device offline; the retry waits for it")
    );
    assert_eq!(m.queued_devices(), vec![DEV.to_string()]);
    let mut effects = Vec::new();
    m.deliver_queued(DEV, 500, &mut effects);
    assert_eq!(sends(&effects), vec![(DEV.into(), 2, 500)]);
    assert_eq!(status(&m, &id), CommandStatus::Sent);
}

#[test]
fn a_queued_retry_times_out_when_the_ttl_runs_out() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(10);
        r.retries = Some(1);
        r.backoff_ms = Some(0);
        r.ttl_ms = Some(1_000);
    });
    run_until(&mut m, 999, false);
    assert_eq!(status(&m, &id), CommandStatus::Queued);
    run_until(&mut m, 1_000, false);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::TimedOut);
    assert_eq!(
        v.reason.as_deref(),
        Some("device offline for the retry until the ttl of 1000 ms ran out")
    );
}

#[test]
fn a_retry_due_after_the_ttl_to_an_offline_device_times_out() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(100);
        r.retries = Some(1);
        r.backoff_ms = Some(50);
        r.ttl_ms = Some(20);
    });
    run_until(&mut m, 150, false);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::TimedOut);
    assert_eq!(
        v.reason.as_deref(),
        Some("device offline for retry 1 and the ttl has passed")
    );
}

#[test]
fn an_offline_device_expires_a_command_after_its_ttl() {
    let mut m = Machine::new(false);
    let (id, effects) = create(&mut m, false, 0, |r| r.ttl_ms = Some(2_000));
    assert!(sends(&effects).is_empty());
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Poll { device } if device == DEV))
    );
    assert_eq!(status(&m, &id), CommandStatus::Queued);
    run_until(&mut m, 1_999, false);
    assert_eq!(status(&m, &id), CommandStatus::Queued);
    run_until(&mut m, 2_000, false);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::Expired);
    assert_eq!(v.attempts, 0);
    assert_eq!(
        v.reason.as_deref(),
        Some("device offline for the whole ttl of 2000 ms; never delivered")
    );
    assert!(m.queued_devices().is_empty());
}

#[test]
fn queued_commands_go_out_in_order_when_the_device_comes_online() {
    let mut m = Machine::new(false);
    let (a, _) = create(&mut m, false, 0, |_| {});
    let (b, _) = create(&mut m, false, 1, |_| {});
    let mut effects = Vec::new();
    m.deliver_queued(DEV, 100, &mut effects);
    let ids: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { message, .. } => Some(message.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [a.to_string(), b.to_string()]);
    // Its expiry, still in the heap, finds it sent and does nothing: it
    // times out as a sent command does, and never expires.
    run_until(&mut m, DEFAULT_TTL_MS as i64, true);
    let v = m.view(&a).unwrap();
    assert_eq!(v.status, CommandStatus::TimedOut);
    assert_eq!(v.updated_at, 100 + DEFAULT_TIMEOUT_MS as i64);
}

#[test]
fn an_unstored_command_stays_queued_until_it_is_stored() {
    let mut m = Machine::new(true);
    let (id, _) = create(&mut m, false, 0, |_| {});
    let mut effects = Vec::new();
    m.deliver_queued(DEV, 5, &mut effects);
    assert!(sends(&effects).is_empty());
    assert_eq!(status(&m, &id), CommandStatus::Queued);
    m.mark_stored(std::slice::from_ref(&id));
    m.deliver_queued(DEV, 6, &mut effects);
    assert_eq!(sends(&effects).len(), 1);
}

#[test]
fn an_http_device_fetches_each_attempt_once_and_only_when_stored() {
    let mut m = Machine::new(true);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(10);
        r.retries = Some(1);
        r.backoff_ms = Some(0);
    });
    assert!(m.fetch_for_http(DEV).is_none());
    m.mark_stored(std::slice::from_ref(&id));
    assert_eq!(m.fetch_for_http(DEV).map(|c| c.attempt), Some(1));
    assert!(m.fetch_for_http(DEV).is_none());
    run_until(&mut m, 10, true);
    assert_eq!(m.fetch_for_http(DEV).map(|c| c.attempt), Some(2));
}

#[test]
fn a_full_queue_refuses_more() {
    let mut m = Machine::new(false);
    for _ in 0..DEVICE_QUEUE_CAPACITY {
        create(&mut m, false, 0, |_| {});
    }
    let (r, checked) = request(|_| {});
    let e = m
        .create(
            DEV,
            r.clone(),
            checked,
            Origin::Api,
            None,
            false,
            0,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(e, CommandError::QueueFull { .. }), "{e}");
    // A device that can be reached takes it.
    m.create(DEV, r, checked, Origin::Api, None, true, 0, &mut Vec::new())
        .unwrap();
    // A fleet command is all or none.
    let (r, checked) = request(|_| {});
    let devices = [("dev-2".to_string(), false), (DEV.to_string(), false)];
    assert!(
        m.create_batch("x", &devices, &r, checked, 0, &mut Vec::new())
            .is_err()
    );
    assert!(m.view("cmd-001002").is_none());
}

#[test]
fn a_taken_id_is_a_conflict() {
    let mut m = Machine::new(false);
    create(&mut m, true, 0, |r| r.id = Some("mine".into()));
    let (r, checked) = request(|r| r.id = Some("mine".into()));
    let e = m
        .create(DEV, r, checked, Origin::Api, None, true, 0, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, CommandError::Conflict(_)), "{e}");
}

#[test]
fn a_simulated_reply_publishes_the_ack_and_applies_it() {
    let mut m = Machine::new(false);
    let (id, effects) = create(&mut m, true, 0, |_| {});
    let Some(Effect::Send { message, at, .. }) = effects
        .into_iter()
        .find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("sent");
    };
    let handling = Handling {
        replies: vec![
            HandlerReply {
                delay_ms: 100,
                status: ReplyStatus::Received,
                result: None,
            },
            HandlerReply {
                delay_ms: 50,
                status: ReplyStatus::Completed,
                result: Some(r#"{"rebooted":true}"#.into()),
            },
        ],
        offline_ms: Some(1_000),
    };
    m.schedule_replies(DEV, &message, handling, at);
    let effects = run_until(&mut m, 100, true);
    assert_eq!(status(&m, &id), CommandStatus::Received);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::PublishAck { payload, .. } if payload.contains("\"received\"")
    )));
    let effects = run_until(&mut m, 150, true);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::Completed);
    assert_eq!(v.result, Some(json!({"rebooted": true})));
    assert_eq!(v.acks[1].source, AckSource::Simulated);
    // The offline spell starts after the last reply.
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::SetOnline { online: false, device } if device == DEV))
    );
    let effects = run_until(&mut m, 1_150, true);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::SetOnline { online: true, device } if device == DEV))
    );
}
