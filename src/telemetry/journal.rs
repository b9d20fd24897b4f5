//! The telemetry journal: the most recent published readings, and the
//! records of dropouts, for export and for resuming live streams, in the
//! shared journal ring ([`crate::journal`]): bounded by a count
//! (`--telemetry-journal-capacity`) and by bytes
//! (`--telemetry-journal-max-bytes`); the oldest are evicted and counted.
//! Sequence numbers are the ring's cursors.

use super::Reading;
use crate::journal::{JournalStats, Ring, Weigh};

/// Readings kept for export by default.
pub(crate) const JOURNAL_CAPACITY: usize = 100_000;
/// Bytes of readings kept by default.
pub(crate) const JOURNAL_MAX_BYTES: usize = 64 << 20;

impl Weigh for Reading {
    fn weight(&self) -> usize {
        // Device, sensor and unit are shared with the stream, not copied.
        std::mem::size_of::<Self>() + self.anomaly.as_ref().map_or(0, String::len)
    }
}

#[derive(Debug)]
pub(crate) struct Journal(Ring<Reading>);

impl Default for Journal {
    fn default() -> Self {
        Self::new(JOURNAL_CAPACITY, JOURNAL_MAX_BYTES)
    }
}

/// Which readings an export wants.
#[derive(Debug, Default, Clone)]
pub(crate) struct ExportFilter {
    pub device: Option<String>,
    pub sensor: Option<String>,
    /// Simulated time, ms, inclusive.
    pub since: Option<i64>,
    /// Simulated time, ms, exclusive.
    pub until: Option<i64>,
    /// Only entries after this cursor.
    pub cursor: Option<u64>,
    pub limit: usize,
    /// Include dropout records (value null, anomaly "dropout").
    pub dropouts: bool,
}

/// What a resuming stream client missed since its last event id.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The readings after the cursor that are still kept, with their
    /// sequence numbers, oldest first.
    pub items: Vec<(u64, Reading)>,
    /// Whether some readings after the cursor can no longer be replayed:
    /// evicted from the journal, or the cursor comes from an earlier run of
    /// the server (its sequence numbers started again at 1).
    pub gap: bool,
    /// The newest sequence number when the replay was taken: a live
    /// subscription made before it repeats what is at or below this.
    pub upto: u64,
}

impl Journal {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self(Ring::new(capacity, max_bytes))
    }

    /// Keeps a reading (unless it is larger than the whole budget);
    /// answers its sequence number (1, 2, ...).
    pub(crate) fn push(&mut self, reading: Reading) -> u64 {
        self.0.push_with(|_| reading).0
    }

    /// The sequence number the next reading will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.0.last_cursor() + 1
    }

    /// The readings `wants` picks after sequence number `after`.
    pub(crate) fn replay(&self, after: u64, wants: impl Fn(&Reading) -> bool) -> Replay {
        // A cursor from an earlier run: everything kept is new to it.
        let newest = self.0.last_cursor();
        let earlier_run = after > newest;
        let after = if earlier_run { 0 } else { after };
        Replay {
            items: self
                .0
                .after(after)
                .filter(|(_, r)| wants(r))
                .map(|(seq, r)| (seq, r.clone()))
                .collect(),
            gap: earlier_run || self.0.missed_after(after),
            upto: newest,
        }
    }

    pub(crate) fn stats(&self) -> JournalStats {
        self.0.stats()
    }

    /// Matching readings in publishing order, and the cursor of the last one
    /// returned when the limit cut the answer short.
    pub(crate) fn export(&self, f: &ExportFilter) -> (Vec<Reading>, Option<u64>) {
        let mut out = Vec::new();
        let mut last = 0;
        for (seq, r) in self.0.after(f.cursor.unwrap_or(0)) {
            if (!f.dropouts && r.is_dropout())
                || f.device.as_deref().is_some_and(|d| d != &*r.device)
                || f.sensor.as_deref().is_some_and(|s| s != &*r.sensor)
                || f.since.is_some_and(|t| r.ts < t)
                || f.until.is_some_and(|t| r.ts >= t)
            {
                continue;
            }
            if out.len() == f.limit {
                return (out, Some(last));
            }
            out.push(r.clone());
            last = seq;
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::telemetry::reading::test_reading as reading;

    #[test]
    fn replay_answers_what_follows_a_cursor_and_says_when_some_is_gone() {
        let mut journal = Journal::new(4, 1 << 20);
        for ts in 1..=6 {
            assert_eq!(
                journal.push(reading(if ts % 2 == 0 { "a" } else { "b" }, ts)),
                ts as u64
            );
        }
        // Kept: 3..=6. After 4, for device a: 6 only, nothing missing.
        let replay = journal.replay(4, |r| &*r.device == "a");
        assert_eq!(
            replay.items.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [6]
        );
        assert!(!replay.gap);
        assert_eq!(replay.upto, 6);
        // After 1: 2 was evicted.
        let replay = journal.replay(1, |_| true);
        assert_eq!(replay.items.len(), 4);
        assert!(replay.gap);
        // After 2: nothing evicted that follows it.
        assert!(!journal.replay(2, |_| true).gap);
        // A cursor from an earlier run: everything kept, and a gap.
        let replay = journal.replay(99, |_| true);
        assert_eq!(replay.items.len(), 4);
        assert!(replay.gap);
    }
}
