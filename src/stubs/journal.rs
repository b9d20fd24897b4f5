//! The HTTP request journal: a bounded ring of the most recent requests to
//! stubs and to the HTTP device API, with what was answered.
//!
//! Capacity is fixed at start (`--http-journal-capacity`); when full the
//! oldest entry is evicted and counted. Cursors start at 1 and never
//! repeat; a `watch` channel carries the newest so verify waits without
//! polling. Bodies are kept up to [`MAX_BODY_KEPT`] bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

/// Requests kept by default.
pub const DEFAULT_HTTP_JOURNAL_CAPACITY: usize = 10_000;
/// Bytes of a request body kept in the journal; the rest is cut and
/// `body_truncated` says so.
pub const MAX_BODY_KEPT: usize = 64 << 10;

/// One request as it arrived, and what it got.
#[derive(Debug, Clone)]
pub struct HttpEntry {
    pub cursor: u64,
    pub wall_ms: i64,
    pub sim_ms: i64,
    /// `api` (the device API), `mock` (stubs under `/mock/`) or
    /// `mock_http` (stubs on `--mock-http`).
    pub listener: &'static str,
    pub method: String,
    /// The path stubs see (without the `/mock` prefix).
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub body_truncated: bool,
    pub stub: Option<Arc<str>>,
    /// The device the request authenticated as.
    pub device: Option<String>,
    /// The answer's status; none when a fault left no response.
    pub status: Option<u16>,
    pub fault: Option<&'static str>,
}

impl HttpEntry {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl Serialize for HttpEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HttpEntry", 15)?;
        st.serialize_field("cursor", &self.cursor)?;
        st.serialize_field("received_at", &crate::clock::rfc3339_ms(self.wall_ms))?;
        st.serialize_field("sim_time", &crate::clock::rfc3339_ms(self.sim_ms))?;
        st.serialize_field("listener", self.listener)?;
        st.serialize_field("method", &self.method)?;
        st.serialize_field("path", &self.path)?;
        let query: Map<String, Value> = self
            .query
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        st.serialize_field("query", &query)?;
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        st.serialize_field("headers", &headers)?;
        match std::str::from_utf8(&self.body) {
            Ok(text) => {
                st.serialize_field("body", text)?;
                st.serialize_field("body_encoding", "utf8")?;
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.body);
                st.serialize_field("body", &b64)?;
                st.serialize_field("body_encoding", "base64")?;
            }
        }
        st.serialize_field("body_truncated", &self.body_truncated)?;
        st.serialize_field("stub", &self.stub.as_deref())?;
        st.serialize_field("device", &self.device)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("fault", &self.fault)?;
        st.end()
    }
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct HttpJournalStats {
    pub capacity: usize,
    pub len: usize,
    pub evicted: u64,
    /// The newest cursor handed out (0: none yet).
    pub cursor: u64,
}

pub struct HttpJournal {
    capacity: usize,
    // A std mutex: held for a push or a scan, never across an await.
    ring: Mutex<Ring>,
    newest: watch::Sender<u64>,
}

struct Ring {
    entries: VecDeque<HttpEntry>,
    last_cursor: u64,
    evicted: u64,
}

impl HttpJournal {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(Ring {
                entries: VecDeque::with_capacity(capacity.min(1024)),
                last_cursor: 0,
                evicted: 0,
            }),
            newest: watch::Sender::new(0),
        }
    }

    /// Appends an entry (its cursor is assigned here); evicts and counts
    /// the oldest when full. Returns the cursor.
    pub fn push(&self, mut entry: HttpEntry) -> u64 {
        if entry.body.len() > MAX_BODY_KEPT {
            entry.body = entry.body.slice(..MAX_BODY_KEPT);
            entry.body_truncated = true;
        }
        let cursor = {
            let mut ring = self.ring.lock().unwrap();
            ring.last_cursor += 1;
            entry.cursor = ring.last_cursor;
            if self.capacity == 0 {
                ring.evicted += 1;
            } else {
                if ring.entries.len() == self.capacity {
                    ring.entries.pop_front();
                    ring.evicted += 1;
                }
                ring.entries.push_back(entry);
            }
            ring.last_cursor
        };
        self.newest.send_replace(cursor);
        cursor
    }

    pub fn stats(&self) -> HttpJournalStats {
        let ring = self.ring.lock().unwrap();
        HttpJournalStats {
            capacity: self.capacity,
            len: ring.entries.len(),
            evicted: ring.evicted,
            cursor: ring.last_cursor,
        }
    }

    /// Calls `visit` on every entry after `since`; returns the newest
    /// cursor examined and whether entries after `since` were evicted.
    pub fn scan(&self, since: u64, mut visit: impl FnMut(&HttpEntry)) -> (u64, bool) {
        let ring = self.ring.lock().unwrap();
        let missed = ring
            .entries
            .front()
            .map_or(ring.last_cursor > since, |e| e.cursor > since + 1);
        let start = match ring.entries.front() {
            Some(first) if since >= first.cursor => {
                ((since - first.cursor + 1) as usize).min(ring.entries.len())
            }
            _ => 0,
        };
        for entry in ring.entries.range(start..) {
            visit(entry);
        }
        (ring.last_cursor.max(since), missed)
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> HttpEntry {
        HttpEntry {
            cursor: 0,
            wall_ms: 0,
            sim_ms: 0,
            listener: "mock",
            method: "GET".into(),
            path: path.into(),
            query: vec![],
            headers: vec![],
            body: Bytes::from(vec![b'x'; MAX_BODY_KEPT + 1]),
            body_truncated: false,
            stub: None,
            device: None,
            status: Some(200),
            fault: None,
        }
    }

    #[test]
    fn evicts_oldest_counts_and_cuts_bodies() {
        let j = HttpJournal::new(2);
        for i in 0..3 {
            j.push(entry(&format!("/{i}")));
        }
        let s = j.stats();
        assert_eq!((s.len, s.evicted, s.cursor), (2, 1, 3));
        let mut seen = Vec::new();
        let (last, missed) = j.scan(0, |e| seen.push((e.cursor, e.body_truncated)));
        assert_eq!(seen, [(2, true), (3, true)]);
        assert_eq!((last, missed), (3, true));
        let (_, missed) = j.scan(1, |_| {});
        assert!(!missed);
    }
}
