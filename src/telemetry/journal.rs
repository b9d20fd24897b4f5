//! The telemetry journal: the most recent published readings, and the
//! records of dropouts, bounded, for export. When full the oldest entry is
//! evicted and counted.

use std::collections::VecDeque;

use super::Reading;

/// Readings kept for export.
pub const JOURNAL_CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct Journal {
    entries: VecDeque<(u64, Reading)>,
    capacity: usize,
    next: u64,
    pub evicted: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: JOURNAL_CAPACITY,
            next: 1,
            evicted: 0,
        }
    }
}

/// Which readings an export wants.
#[derive(Debug, Default, Clone)]
pub struct ExportFilter {
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
pub struct Replay {
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
    /// Keeps a reading; answers its sequence number (1, 2, ...) and the
    /// reading as kept.
    pub fn push(&mut self, reading: Reading) -> (u64, &Reading) {
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
            self.evicted += 1;
        }
        let seq = self.next;
        self.entries.push_back((seq, reading));
        self.next += 1;
        let (_, kept) = self.entries.back().expect("just pushed");
        (seq, kept)
    }

    /// The readings `wants` picks after sequence number `after`.
    pub fn replay(&self, after: u64, wants: impl Fn(&Reading) -> bool) -> Replay {
        // A cursor from an earlier run: everything kept is new to it.
        let earlier_run = after >= self.next;
        let after = if earlier_run { 0 } else { after };
        let first = self.entries.front().map_or(self.next, |(seq, _)| *seq);
        Replay {
            items: self
                .entries
                .iter()
                .filter(|(seq, r)| *seq > after && wants(r))
                .cloned()
                .collect(),
            gap: earlier_run || first > after + 1,
            upto: self.next - 1,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Matching readings in publishing order, and the cursor of the last one
    /// returned when the limit cut the answer short.
    pub fn export(&self, f: &ExportFilter) -> (Vec<Reading>, Option<u64>) {
        let mut out = Vec::new();
        let mut last = 0;
        for (seq, r) in &self.entries {
            if f.cursor.is_some_and(|c| *seq <= c)
                || (!f.dropouts && r.is_dropout())
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
            last = *seq;
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
        let mut journal = Journal {
            capacity: 4,
            ..Journal::default()
        };
        for ts in 1..=6 {
            assert_eq!(
                journal
                    .push(reading(if ts % 2 == 0 { "a" } else { "b" }, ts))
                    .0,
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
