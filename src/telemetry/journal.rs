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

impl Journal {
    pub fn push(&mut self, reading: Reading) {
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
            self.evicted += 1;
        }
        self.entries.push_back((self.next, reading));
        self.next += 1;
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
