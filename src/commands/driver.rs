//! The driver: one task that fires the state machine's timers (timeouts,
//! retries, expiries, simulated devices' replies) as simulated time
//! reaches them, and the settling a manual clock advance waits for. It
//! asks the fleet and the broker whether a device can be reached without
//! holding the engine's lock, and hands the answer to the machine.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use super::machine::Fire;
use super::{Commands, Inner};
use crate::clock::ClockMode;

impl Commands {
    /// On a manual clock: waits until every timer due at or before `t`
    /// has fired and every handler call has answered, so a clock advance
    /// returns with the span's acks, retries and timeouts done.
    pub(crate) async fn settle(&self, t: i64) {
        if self.0.clock.mode() != ClockMode::Manual {
            return;
        }
        let mut activity = self.0.activity.subscribe();
        self.0.wake.notify_one();
        loop {
            let settled = {
                let core = self.0.core.lock().unwrap();
                self.0.processed_until.load(Ordering::Acquire) >= t
                    && self.0.pending_jobs.load(Ordering::Acquire) == 0
                    && core.machine.next_due().is_none_or(|due| due > t)
            };
            if settled {
                return;
            }
            if activity.changed().await.is_err() {
                return;
            }
        }
    }

    /// When the next command timer is due (a reply, a retry, a timeout,
    /// an expiry), if any.
    pub(crate) fn next_due(&self) -> Option<i64> {
        self.0.core.lock().unwrap().machine.next_due()
    }
}

impl Inner {
    /// Waits until no handler call is pending.
    async fn jobs_done(&self) {
        let mut activity = self.activity.subscribe();
        while self.pending_jobs.load(Ordering::Acquire) > 0 {
            if activity.changed().await.is_err() {
                return;
            }
        }
    }

    /// Fires the earliest timer due by `now`, if any. `Err` when none was
    /// due, with when the next one is.
    fn fire_one(
        &self,
        now: i64,
        effects: &mut Vec<super::effects::Effect>,
    ) -> Result<(), Option<i64>> {
        let mut reach: Option<(String, bool)> = None;
        loop {
            let mut core = self.core.lock().unwrap();
            let fact = reach.as_ref().map(|(d, r)| (d.as_str(), *r));
            match core.machine.fire_due(now, fact, effects) {
                Fire::Idle => return Err(core.machine.next_due()),
                Fire::Fired => {
                    core.signal(effects);
                    return Ok(());
                }
                Fire::NeedsReach(device) => {
                    // Asked of the fleet and the broker with the lock
                    // released; the timer waits at the head meanwhile.
                    drop(core);
                    let reachable = self.deliverable(&device);
                    reach = Some((device, reachable));
                }
            }
        }
    }
}

/// Fires timers as simulated time reaches them, one at a time in due
/// order, each at its own due time. On a manual clock it also waits for the
/// handler calls a timer caused before firing the next one, so a long
/// clock advance plays out exactly as the same span in small steps would.
pub(super) async fn run_driver(inner: Weak<Inner>) {
    let mut manual = {
        let Some(i) = inner.upgrade() else { return };
        (i.clock.mode() == ClockMode::Manual).then(|| i.clock.subscribe())
    };
    loop {
        let Some(i) = inner.upgrade() else { return };
        if manual.is_some() {
            // A handler call started before this timer (a command sent
            // over the API) schedules its replies first, as it would have
            // had the clock moved in small steps.
            i.jobs_done().await;
        }
        let now = i.clock.now_ms();
        let mut effects = Vec::new();
        let fired = i.fire_one(now, &mut effects);
        i.run_effects(effects).await;
        let Err(next_due) = fired else {
            // On a manual clock the loop's start waits for the handler
            // calls this timer caused.
            continue;
        };
        i.processed_until.store(now, Ordering::Release);
        i.activity.send_modify(|n| *n += 1);
        let clock = i.clock.clone();
        let wake = async {
            i.wake.notified().await;
        };
        match (&mut manual, next_due) {
            (Some(rx), _) => {
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = wake => {}
                }
            }
            (None, Some(t)) => {
                tokio::select! {
                    _ = clock.sleep_until(t) => {}
                    _ = wake => {}
                }
            }
            (None, None) => wake.await,
        }
    }
}
