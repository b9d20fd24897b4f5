//! What the engine counts, for `/health` and `/metrics`: the state
//! machine's own counts (taken under its lock with the states of every
//! command) and what only the I/O side sees (invalid acks, a full tap,
//! handler and store errors).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::Commands;

/// Counters only the I/O side sees; the machine counts the rest.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub acks_invalid: AtomicU64,
    pub handler_errors: AtomicU64,
    pub store_errors: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CommandCounters {
    pub submitted: u64,
    /// Sends to devices, retries included.
    pub deliveries: u64,
    pub retries: u64,
    pub acks: u64,
    /// Acks that moved nothing: duplicates, progress, late ones.
    pub acks_ignored: u64,
    /// Acks for commands the engine does not know.
    pub acks_unknown: u64,
    /// Acks whose payload was not `{"status", "result"?}`.
    pub acks_invalid: u64,
    /// Acks and device-published commands the engine's tap had no room for.
    pub tap_dropped: u64,
    pub handler_errors: u64,
    /// Final commands forgotten to stay within the capacity.
    pub evicted: u64,
    pub store_errors: u64,
    /// Commands in each state now.
    #[schema(value_type = Object)]
    pub by_status: BTreeMap<&'static str, u64>,
}

impl Commands {
    pub(crate) fn counters(&self) -> CommandCounters {
        let (counts, by_status) = {
            let core = self.0.core.lock().unwrap();
            (core.machine.counts(), core.machine.by_status())
        };
        let s = &self.0.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CommandCounters {
            submitted: counts.submitted,
            deliveries: counts.deliveries,
            retries: counts.retries,
            acks: counts.acks,
            acks_ignored: counts.acks_ignored,
            acks_unknown: counts.acks_unknown,
            acks_invalid: get(&s.acks_invalid),
            tap_dropped: get(&self.0.tap_dropped),
            handler_errors: get(&s.handler_errors),
            evicted: counts.evicted,
            store_errors: get(&s.store_errors),
            by_status,
        }
    }
}
