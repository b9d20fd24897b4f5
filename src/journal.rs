//! The ring behind every journal (MQTT messages, HTTP requests, telemetry
//! readings): the most recent entries, bounded twice, by a count and by
//! bytes. When either bound would be passed the oldest entries are evicted
//! and counted; an entry larger than the whole byte budget is not kept at
//! all (and counted as evicted), so a journal never holds more than its
//! budget whatever a client sends.
//!
//! Every entry gets a cursor (1, 2, 3, ...) that never repeats; a reader
//! pages with `since`, and learns when entries after its cursor were
//! evicted before it read them. [`Journal`] adds a lock and a `watch`
//! channel carrying the newest cursor, so a verify call waits for new
//! entries without polling.
//!
//! The byte figure is an estimate of what an entry holds on the heap (its
//! payload, strings and the entry itself), not an allocator measurement.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

/// What an entry costs a journal, in bytes.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

/// A journal's bounds and counters, as `/health` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct JournalStats {
    /// Most entries kept.
    pub capacity: usize,
    /// Most bytes kept (estimated: payloads, strings, bookkeeping).
    pub max_bytes: usize,
    /// Entries kept now.
    pub len: usize,
    /// Bytes kept now.
    pub bytes: usize,
    /// Entries evicted since the start, by either bound.
    pub evicted: u64,
    /// Of `evicted`, those the byte bound pushed out (or never let in: an
    /// entry larger than `max_bytes`).
    pub evicted_by_bytes: u64,
    /// The newest cursor handed out (0: none yet).
    pub cursor: u64,
}

/// The most recent entries, with their cursors, within both bounds.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    /// (cursor, weight, entry), cursors increasing.
    entries: VecDeque<(u64, usize, T)>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    last_cursor: u64,
    evicted: u64,
    evicted_by_bytes: u64,
}

impl<T: Weigh> Ring<T> {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            // Grows on demand: a large capacity costs nothing until used.
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            max_bytes,
            bytes: 0,
            last_cursor: 0,
            evicted: 0,
            evicted_by_bytes: 0,
        }
    }

    /// Appends the entry `make` builds with its cursor; evicts (and counts)
    /// the oldest entries as the bounds require. Returns the cursor and the
    /// entry as kept (`None` when it could not be kept at all).
    pub(crate) fn push_with(&mut self, make: impl FnOnce(u64) -> T) -> (u64, Option<&T>) {
        self.last_cursor += 1;
        let cursor = self.last_cursor;
        let entry = make(cursor);
        let weight = entry.weight();
        if self.capacity == 0 || weight > self.max_bytes {
            self.evicted += 1;
            if self.capacity > 0 {
                self.evicted_by_bytes += 1;
            }
            return (cursor, None);
        }
        while self.entries.len() >= self.capacity {
            self.pop_oldest(false);
        }
        while self.bytes + weight > self.max_bytes {
            self.pop_oldest(true);
        }
        self.bytes += weight;
        self.entries.push_back((cursor, weight, entry));
        (cursor, self.entries.back().map(|(_, _, e)| e))
    }

    fn pop_oldest(&mut self, for_bytes: bool) {
        if let Some((_, weight, _)) = self.entries.pop_front() {
            self.bytes -= weight;
            self.evicted += 1;
            if for_bytes {
                self.evicted_by_bytes += 1;
            }
        }
    }

    pub(crate) fn stats(&self) -> JournalStats {
        JournalStats {
            capacity: self.capacity,
            max_bytes: self.max_bytes,
            len: self.entries.len(),
            bytes: self.bytes,
            evicted: self.evicted,
            evicted_by_bytes: self.evicted_by_bytes,
            cursor: self.last_cursor,
        }
    }

    /// The newest cursor handed out (0: none yet).
    pub(crate) fn last_cursor(&self) -> u64 {
        self.last_cursor
    }

    /// Entries with a cursor above `since`, oldest first.
    pub(crate) fn after(&self, since: u64) -> impl Iterator<Item = (u64, &T)> {
        let start = self.entries.partition_point(|(c, _, _)| *c <= since);
        self.entries.range(start..).map(|(c, _, e)| (*c, e))
    }

    /// Whether some entry after `since` was handed a cursor but is no
    /// longer (or never was) kept.
    pub(crate) fn missed_after(&self, since: u64) -> bool {
        let start = self.entries.partition_point(|(c, _, _)| *c <= since);
        match self.entries.get(start) {
            Some((first, _, _)) => *first > since + 1,
            None => self.last_cursor > since,
        }
    }
}

/// A [`Ring`] shared between writers and readers, with a `watch` on its
/// newest cursor.
pub(crate) struct Journal<T> {
    // A std mutex: held for one push or one scan, never across an await.
    ring: Mutex<Ring<T>>,
    newest: watch::Sender<u64>,
}

impl<T: Weigh> Journal<T> {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::new(capacity, max_bytes)),
            newest: watch::Sender::new(0),
        }
    }

    /// Appends the entry `make` builds with its cursor; returns the cursor.
    pub(crate) fn push_with(&self, make: impl FnOnce(u64) -> T) -> u64 {
        let cursor = self.ring.lock().unwrap().push_with(make).0;
        self.newest.send_replace(cursor);
        cursor
    }

    pub(crate) fn stats(&self) -> JournalStats {
        self.ring.lock().unwrap().stats()
    }

    /// Runs `f` on the ring under the lock (one scan; no await inside).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Ring<T>) -> R) -> R {
        f(&self.ring.lock().unwrap())
    }

    /// Calls `visit` on every entry after `since`; returns the newest
    /// cursor examined and whether entries after `since` had already been
    /// evicted.
    pub(crate) fn scan(&self, since: u64, mut visit: impl FnMut(&T)) -> (u64, bool) {
        self.read(|ring| {
            let missed = ring.missed_after(since);
            for (_, entry) in ring.after(since) {
                visit(entry);
            }
            (ring.last_cursor().max(since), missed)
        })
    }

    /// A receiver that changes whenever an entry is added.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blob(usize);

    impl Weigh for Blob {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn evicts_by_count_and_by_bytes_and_counts_each() {
        let mut ring = Ring::new(3, 100);
        for _ in 0..5 {
            ring.push_with(|_| Blob(10));
        }
        let s = ring.stats();
        assert_eq!(
            (s.len, s.bytes, s.evicted, s.evicted_by_bytes),
            (3, 30, 2, 0)
        );
        // 85 more bytes: one old entry goes for the count, one more for
        // the bytes (20 + 85 > 100).
        ring.push_with(|_| Blob(85));
        let s = ring.stats();
        assert_eq!(
            (s.len, s.bytes, s.evicted, s.evicted_by_bytes),
            (2, 95, 4, 1)
        );
        assert_eq!(ring.after(0).map(|(c, _)| c).collect::<Vec<_>>(), [5, 6]);
        assert!(ring.missed_after(3));
        assert!(!ring.missed_after(4));
    }

    #[test]
    fn an_entry_over_the_whole_budget_is_not_kept_but_has_a_cursor() {
        let mut ring = Ring::new(10, 100);
        ring.push_with(|_| Blob(10));
        let (cursor, kept) = ring.push_with(|_| Blob(101));
        assert_eq!(cursor, 2);
        assert!(kept.is_none());
        ring.push_with(|_| Blob(10));
        let s = ring.stats();
        assert_eq!(
            (s.len, s.bytes, s.evicted, s.evicted_by_bytes),
            (2, 20, 1, 1)
        );
        assert_eq!(ring.after(1).map(|(c, _)| c).collect::<Vec<_>>(), [3]);
        assert!(ring.missed_after(1));
        assert!(!ring.missed_after(2));
        assert!(!ring.missed_after(3));
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut ring = Ring::new(0, 100);
        ring.push_with(|_| Blob(1));
        let s = ring.stats();
        assert_eq!(
            (s.len, s.evicted, s.evicted_by_bytes, s.cursor),
            (0, 1, 0, 1)
        );
        assert!(ring.missed_after(0));
    }
}
