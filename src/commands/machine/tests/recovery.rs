//! Cancels and their undo, new commands whose write failed, what a
//! restart resumes each stored command as, and fleet commands.

use super::*;
use crate::commands::store::Stored;

#[test]
fn cancel_is_for_queued_commands_and_can_be_undone() {
    let mut m = Machine::new(true);
    let (a, _) = create(&mut m, false, 0, |_| {});
    let (b, _) = create(&mut m, false, 0, |_| {});
    m.mark_stored(&[a.clone(), b.clone()]);
    let mut effects = Vec::new();
    let undo = m.cancel(&a, 5, &mut effects).unwrap();
    let v = m.view(&a).unwrap();
    assert_eq!(v.status, CommandStatus::Cancelled);
    assert_eq!(v.reason.as_deref(), Some("cancelled over the API"));
    assert_eq!(
        persisted(&effects).last().map(|p| p.1),
        Some(CommandStatus::Cancelled)
    );
    // The write failed: back to queued, first in its queue again.
    let mut signals = Vec::new();
    m.undo(&a, undo, &mut signals);
    assert_eq!(status(&m, &a), CommandStatus::Queued);
    assert!(signals.iter().any(|e| matches!(
        e,
        Effect::Status {
            status: CommandStatus::Queued,
            ..
        }
    )));
    let mut effects = Vec::new();
    m.deliver_queued(DEV, 6, &mut effects);
    let order: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { message, .. } => Some(message.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(order, [a.to_string(), b.to_string()]);
    // Sent now: not cancellable; unknown: not found.
    let e = m.cancel(&a, 7, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, CommandError::Conflict(_)), "{e}");
    let e = m.cancel("nope", 7, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, CommandError::NotFound(_)), "{e}");
}

#[test]
fn an_undo_yields_to_a_later_change() {
    let mut m = Machine::new(true);
    let (id, _) = create(&mut m, false, 0, |_| {});
    m.mark_stored(std::slice::from_ref(&id));
    let undo = m.cancel(&id, 5, &mut Vec::new()).unwrap();
    // A late ack changes it again before the undo.
    ack(&mut m, &id, AckStatus::Completed, 6);
    m.undo(&id, undo, &mut Vec::new());
    assert_eq!(status(&m, &id), CommandStatus::Cancelled);
}

#[test]
fn new_commands_whose_write_failed_leave_no_trace() {
    let mut m = Machine::new(true);
    let (r, checked) = request(|r| r.ttl_ms = Some(100));
    let devices = [(DEV.to_string(), false), ("dev-2".to_string(), true)];
    let (batch, ids) = m
        .create_batch("reboot", &devices, &r, checked, 0, &mut Vec::new())
        .unwrap();
    assert!(m.batch(&batch).is_some());
    m.take_back(&ids, Some(&batch));
    assert!(m.batch(&batch).is_none());
    assert!(ids.iter().all(|id| m.view(id).is_none()));
    assert!(m.queued_devices().is_empty());
    assert_eq!(m.counts().submitted, 0);
    assert!(m.fetch_for_http("dev-2").is_none());
    // Their timers find nothing.
    assert!(run_until(&mut m, 1_000_000, true).is_empty());
}

/// A stored record as the store hands it back.
fn stored(
    m: &mut Machine,
    seq: u64,
    deadline: Option<i64>,
    f: impl FnOnce(&mut CommandView),
) -> Stored {
    let (id, _) = create(m, true, 0, |_| {});
    let mut view = m.view(&id).unwrap().clone();
    f(&mut view);
    Stored {
        seq,
        view,
        deadline,
    }
}

#[test]
fn a_restart_resumes_each_command_where_it_was_stored() {
    let mut scratch = Machine::new(true);
    let queued = stored(&mut scratch, 3, None, |v| {
        v.id = "q".into();
        v.status = CommandStatus::Queued;
        v.attempts = 0;
        v.expires_at = 5_000;
    });
    let sent = stored(&mut scratch, 7, Some(2_000), |v| {
        v.id = "s".into();
        v.device = "dev-2".into();
    });
    let done = stored(&mut scratch, 9, None, |v| {
        v.id = "d".into();
        v.status = CommandStatus::Completed;
    });
    let mut m = Machine::new(true);
    m.restore(vec![queued, sent, done], 1_000);
    // Queued: waits for its device again, with its expiry.
    assert_eq!(m.queued_devices(), vec![DEV.to_string()]);
    assert_eq!(status(&m, "q"), CommandStatus::Queued);
    // In flight: its timeout is re-armed at the stored deadline.
    assert_eq!(m.next_due(), Some(2_000));
    run_until(&mut m, 2_000, true);
    assert_eq!(status(&m, "s"), CommandStatus::TimedOut);
    // Final: as it was.
    assert_eq!(status(&m, "d"), CommandStatus::Completed);
    // New commands number after the stored ones, and the first change
    // after the restart is written above any version stored before.
    let (id, _) = create(&mut m, false, 0, |_| {});
    assert_eq!(&*id, "cmd-000010");
    let mut effects = Vec::new();
    m.deliver_queued(DEV, 3_000, &mut effects);
    assert!(
        persisted(&effects)
            .iter()
            .any(|(id, s, v)| id == "q" && *s == CommandStatus::Sent && *v > 1 << 32)
    );
    // The queued one expires at its stored time when nobody comes.
    let mut m2 = Machine::new(true);
    let queued = stored(&mut scratch, 3, None, |v| {
        v.id = "q".into();
        v.status = CommandStatus::Queued;
        v.attempts = 0;
        v.expires_at = 5_000;
    });
    m2.restore(vec![queued], 1_000);
    run_until(&mut m2, 5_000, false);
    assert_eq!(status(&m2, "q"), CommandStatus::Expired);
}

#[test]
fn an_in_flight_command_stored_without_a_deadline_times_out_at_once() {
    let mut scratch = Machine::new(true);
    let sent = stored(&mut scratch, 1, None, |v| v.id = "s".into());
    let mut m = Machine::new(true);
    m.restore(vec![sent], 4_000);
    assert_eq!(m.next_due(), Some(4_000));
    run_until(&mut m, 4_000, true);
    assert_eq!(status(&m, "s"), CommandStatus::TimedOut);
}

#[test]
fn batches_summarise_their_members() {
    let mut m = Machine::new(false);
    let (r, checked) = request(|_| {});
    let devices = [(DEV.to_string(), true), ("dev-2".to_string(), false)];
    let (batch, ids) = m
        .create_batch("reboot", &devices, &r, checked, 0, &mut Vec::new())
        .unwrap();
    ack(&mut m, &ids[0], AckStatus::Completed, 1);
    let view = m.batch(&batch).unwrap();
    assert_eq!(view.total, 2);
    assert!(!view.done);
    assert_eq!(view.summary.get("completed"), Some(&1));
    assert_eq!(view.summary.get("queued"), Some(&1));
    let page = m.list(
        &CommandFilter {
            status: Some(CommandStatus::Queued),
            ..Default::default()
        },
        0,
        10,
    );
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].device, "dev-2");
}
