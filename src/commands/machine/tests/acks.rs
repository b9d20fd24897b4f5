//! Acks that move nothing (late, early, duplicate, progress, unknown)
//! and the eviction that makes a late ack an unknown one.

use super::*;

#[test]
fn the_oldest_final_commands_are_forgotten_beyond_the_capacity() {
    let mut m = Machine::new(true);
    m.final_capacity = 2;
    let (queued, _) = create(&mut m, false, 0, |_| {});
    let mut forgotten = Vec::new();
    let mut done = Vec::new();
    for t in 1..=3 {
        let (id, _) = create(&mut m, true, t, |_| {});
        m.mark_stored(std::slice::from_ref(&id));
        forgotten.extend(
            ack(&mut m, &id, AckStatus::Completed, t)
                .into_iter()
                .filter_map(|e| match e {
                    Effect::Forget(id) => Some(id),
                    _ => None,
                }),
        );
        done.push(id);
    }
    // The oldest final one is gone, from memory and from the store; the
    // queued one, older still, is never forgotten.
    assert_eq!(forgotten, [done[0].clone()]);
    assert!(m.view(&done[0]).is_none());
    assert!(m.view(&done[1]).is_some());
    assert_eq!(status(&m, &queued), CommandStatus::Queued);
    assert_eq!(m.counts().evicted, 1);
    // A late ack for it is an unknown one.
    let late = m.ack(
        DEV,
        &done[0],
        bare_ack(AckStatus::Completed),
        AckSource::Mqtt,
        9,
        &mut Vec::new(),
    );
    assert_eq!(late, Err(AckRefused::Unknown));
}

#[test]
fn a_late_ack_after_a_final_state_is_recorded_and_ignored() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| r.timeout_ms = Some(10));
    run_until(&mut m, 10, true);
    assert_eq!(status(&m, &id), CommandStatus::TimedOut);
    let effects = ack(&mut m, &id, AckStatus::Completed, 20);
    assert!(effects.is_empty());
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::TimedOut);
    assert_eq!(v.acks.len(), 1);
    assert_eq!(v.acks[0].ignored.as_deref(), Some("late"));
    assert_eq!(m.counts().acks_ignored, 1);
}

#[test]
fn duplicate_and_progress_acks_are_recorded_and_ignored() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |_| {});
    let mut e = Vec::new();
    m.ack(
        DEV,
        &id,
        bare_ack(AckStatus::Received),
        AckSource::Http,
        1,
        &mut e,
    )
    .unwrap();
    m.ack(
        DEV,
        &id,
        bare_ack(AckStatus::Received),
        AckSource::Http,
        2,
        &mut e,
    )
    .unwrap();
    ack(&mut m, &id, AckStatus::Received, 3);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::Received);
    let ignored: Vec<_> = v.acks.iter().map(|a| a.ignored.as_deref()).collect();
    assert_eq!(ignored, [None, Some("duplicate"), Some("progress")]);
    assert_eq!(v.acks_total, 3);
    let c = m.counts();
    assert_eq!((c.acks, c.acks_ignored), (3, 2));
}

#[test]
fn an_ack_before_any_delivery_is_early() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, false, 0, |_| {});
    ack(&mut m, &id, AckStatus::Completed, 1);
    let v = m.view(&id).unwrap();
    assert_eq!(v.status, CommandStatus::Queued);
    assert_eq!(v.acks[0].ignored.as_deref(), Some("early"));
}

#[test]
fn a_received_ack_for_a_queued_retry_puts_it_back_in_flight() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |r| {
        r.timeout_ms = Some(10);
        r.retries = Some(1);
        r.backoff_ms = Some(0);
    });
    run_until(&mut m, 10, false);
    assert_eq!(status(&m, &id), CommandStatus::Queued);
    ack(&mut m, &id, AckStatus::Received, 11);
    assert_eq!(status(&m, &id), CommandStatus::Received);
    // Out of the queue: coming online sends nothing again.
    let mut effects = Vec::new();
    m.deliver_queued(DEV, 12, &mut effects);
    assert!(sends(&effects).is_empty());
}

#[test]
fn acks_for_unknown_commands_or_from_other_devices_are_refused() {
    let mut m = Machine::new(false);
    let (id, _) = create(&mut m, true, 0, |_| {});
    let mut e = Vec::new();
    let other = m.ack(
        "dev-2",
        &id,
        bare_ack(AckStatus::Completed),
        AckSource::Mqtt,
        1,
        &mut e,
    );
    assert_eq!(other, Err(AckRefused::OtherDevice));
    let unknown = m.ack(
        DEV,
        "nope",
        bare_ack(AckStatus::Completed),
        AckSource::Mqtt,
        1,
        &mut e,
    );
    assert_eq!(unknown, Err(AckRefused::Unknown));
    assert_eq!(status(&m, &id), CommandStatus::Sent);
    assert_eq!(m.counts().acks_unknown, 2);
    assert_eq!(m.counts().acks, 0);
}
