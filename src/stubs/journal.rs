//! The HTTP request journal: the most recent requests to stubs and to the
//! HTTP device API, with what was answered, in the shared journal ring
//! ([`crate::journal`]).
//!
//! Bounded by a count (`--http-journal-capacity`) and by bytes
//! (`--http-journal-max-bytes`); the oldest entries are evicted and
//! counted. Cursors start at 1 and never repeat; a `watch` channel carries
//! the newest so verify waits without polling. Bodies are kept up to
//! [`MAX_BODY_KEPT`] bytes.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::journal::JournalStats;

/// Requests kept by default.
pub(crate) const DEFAULT_HTTP_JOURNAL_CAPACITY: usize = 10_000;
/// Bytes of requests kept by default.
pub(crate) const DEFAULT_HTTP_JOURNAL_MAX_BYTES: usize = 64 << 20;
/// Bytes of a request body kept in the journal; the rest is cut and
/// `body_truncated` says so.
pub(crate) const MAX_BODY_KEPT: usize = 64 << 10;

/// One request as it arrived, and what it got.
#[derive(Debug, Clone)]
pub(crate) struct HttpEntry {
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
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json_body(&self) -> Option<Value> {
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

impl crate::journal::Weigh for HttpEntry {
    fn weight(&self) -> usize {
        let pairs = |v: &[(String, String)]| {
            v.iter()
                .map(|(k, v)| k.len() + v.len() + std::mem::size_of::<(String, String)>())
                .sum::<usize>()
        };
        std::mem::size_of::<Self>()
            + self.method.len()
            + self.path.len()
            + pairs(&self.query)
            + pairs(&self.headers)
            + self.body.len()
            + self.device.as_ref().map_or(0, String::len)
    }
}

pub(crate) struct HttpJournal(crate::journal::Journal<HttpEntry>);

impl HttpJournal {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self(crate::journal::Journal::new(capacity, max_bytes))
    }

    /// Appends an entry (its cursor is assigned here); evicts and counts
    /// the oldest as the bounds require. Returns the cursor.
    pub(crate) fn push(&self, mut entry: HttpEntry) -> u64 {
        // A copy, not a slice: a slice would keep the whole request body
        // (and a receive buffer it shares) alive, and the journal would
        // hold far more than it counts.
        if entry.body.len() > MAX_BODY_KEPT {
            entry.body = Bytes::copy_from_slice(&entry.body[..MAX_BODY_KEPT]);
            entry.body_truncated = true;
        } else if !entry.body.is_empty() {
            entry.body = Bytes::copy_from_slice(&entry.body);
        }
        self.0.push_with(|cursor| {
            entry.cursor = cursor;
            entry
        })
    }

    pub(crate) fn stats(&self) -> JournalStats {
        self.0.stats()
    }

    /// Calls `visit` on every entry after `since`; returns the newest
    /// cursor examined and whether entries after `since` were evicted.
    pub(crate) fn scan(&self, since: u64, visit: impl FnMut(&HttpEntry)) -> (u64, bool) {
        self.0.scan(since, visit)
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.0.watch()
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
        let j = HttpJournal::new(2, 1 << 20);
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

    #[test]
    fn keeps_its_own_copy_of_a_body_not_a_slice_of_it() {
        let j = HttpJournal::new(10, 1 << 20);
        let mut e = entry("/big");
        let body = Bytes::from(vec![b'x'; 1 << 20]);
        e.body = body.clone();
        j.push(e);
        let mut small = entry("/small");
        let owned = Bytes::from(vec![b'y'; 10]);
        small.body = owned.clone();
        j.push(small);
        // The journal holds none of the request's buffers.
        assert!(body.is_unique());
        assert!(owned.is_unique());
        assert_eq!(j.stats().len, 2);
    }
}
