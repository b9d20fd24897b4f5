//! The message journal: the most recent MQTT messages the broker accepted,
//! from clients and from the server itself, in the shared journal ring
//! ([`crate::journal`]): bounded by a count (`--journal-capacity`) and by
//! bytes (`--journal-max-bytes`); the oldest are evicted and counted.
//! Every entry gets a cursor (1, 2, 3, ...) that never repeats, so a
//! reader can page with `since` and a verify call can wait for new entries
//! (a `watch` channel carries the newest cursor; no polling).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::Qos;
use super::topics;
pub(crate) use crate::journal::JournalStats;
use crate::journal::Weigh;

/// One message as the broker accepted it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub cursor: u64,
    /// Wall time of receipt, ms since the Unix epoch.
    pub wall_ms: i64,
    /// Simulated time of receipt, ms since the Unix epoch.
    pub sim_ms: i64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
    /// The publishing client; `None` for the server's own publishes.
    pub client_id: Option<Arc<str>>,
    pub origin: Origin,
    /// The device an addressed message was for (its topic does not say).
    pub to: Option<Arc<str>>,
}

/// Who made a journaled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client's PUBLISH.
    Client,
    /// The server's own (in-process) publish.
    Server,
    /// A client's will, published by the broker for it.
    Will,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Server => "server",
            Origin::Will => "will",
        }
    }
}

impl Weigh for Entry {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.topic.len()
            + self.payload.len()
            + self.client_id.as_ref().map_or(0, |c| c.len())
            + self.to.as_ref().map_or(0, |c| c.len())
    }
}

/// A page of entries.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub items: Vec<Entry>,
    /// Pass as `since` to continue after this page.
    pub next_cursor: u64,
    /// The page stopped at its limit with newer entries left to read: ask
    /// again with `since = next_cursor`.
    pub more: bool,
    /// Entries evicted since the start (the journal was full).
    pub evicted: u64,
}

pub(crate) struct Journal(crate::journal::Journal<Entry>);

impl Journal {
    pub(super) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self(crate::journal::Journal::new(capacity, max_bytes))
    }

    /// Appends a message; evicts (and counts) the oldest as the bounds
    /// require.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &self,
        wall_ms: i64,
        sim_ms: i64,
        topic: Arc<str>,
        payload: Bytes,
        qos: Qos,
        retain: bool,
        client_id: Option<Arc<str>>,
        origin: Origin,
        to: Option<Arc<str>>,
    ) {
        // The journal keeps its own copy, sized exactly: a payload sliced
        // from a larger receive buffer would keep the whole buffer alive,
        // and the journal would hold more than its byte budget counts.
        let payload = Bytes::copy_from_slice(&payload);
        self.0.push_with(|cursor| Entry {
            cursor,
            wall_ms,
            sim_ms,
            topic,
            payload,
            qos,
            retain,
            client_id,
            origin,
            to,
        });
    }

    pub(super) fn stats(&self) -> JournalStats {
        self.0.stats()
    }

    /// Entries after `since` whose topic matches `filter` (all when `None`),
    /// at most `limit` of them.
    pub(super) fn page(&self, filter: Option<&str>, since: u64, limit: usize) -> Page {
        self.0.read(|ring| {
            let mut items = Vec::new();
            let mut next_cursor = since;
            for (cursor, entry) in ring.after(since) {
                if items.len() == limit {
                    break;
                }
                next_cursor = cursor;
                if filter.is_none_or(|f| topics::matches(f, &entry.topic)) {
                    items.push(entry.clone());
                }
            }
            if items.len() < limit {
                // Everything up to the newest was examined.
                next_cursor = next_cursor.max(ring.last_cursor());
            }
            Page {
                more: next_cursor < ring.last_cursor(),
                items,
                next_cursor,
                evicted: ring.stats().evicted,
            }
        })
    }

    /// Calls `visit` on every entry after `since`; returns the newest cursor
    /// examined and whether entries after `since` had already been evicted.
    pub(super) fn scan(&self, since: u64, visit: impl FnMut(&Entry)) -> (u64, bool) {
        self.0.scan(since, visit)
    }

    /// A receiver that changes whenever an entry is added.
    pub(super) fn watch(&self) -> watch::Receiver<u64> {
        self.0.watch()
    }
}

/// The JSON form used by the API: `payload` is the UTF-8 text when the
/// bytes are valid UTF-8 (`payload_encoding: "utf8"`), else base64
/// (`"base64"`).
impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Entry", 12)?;
        st.serialize_field("cursor", &self.cursor)?;
        st.serialize_field("received_at", &crate::clock::rfc3339_ms(self.wall_ms))?;
        st.serialize_field("sim_time", &crate::clock::rfc3339_ms(self.sim_ms))?;
        st.serialize_field("topic", &*self.topic)?;
        match std::str::from_utf8(&self.payload) {
            Ok(text) => {
                st.serialize_field("payload", text)?;
                st.serialize_field("payload_encoding", "utf8")?;
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.payload);
                st.serialize_field("payload", &b64)?;
                st.serialize_field("payload_encoding", "base64")?;
            }
        }
        st.serialize_field("qos", &u8::from(self.qos))?;
        st.serialize_field("retain", &self.retain)?;
        st.serialize_field("client_id", &self.client_id.as_deref())?;
        st.serialize_field("origin", self.origin.as_str())?;
        match &self.to {
            Some(to) => st.serialize_field("to", &**to)?,
            None => st.skip_field("to")?,
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(j: &Journal, topic: &str) {
        j.push(
            0,
            0,
            topic.into(),
            Bytes::new(),
            Qos::AtMostOnce,
            false,
            None,
            Origin::Server,
            None,
        );
    }

    #[test]
    fn evicts_oldest_and_counts() {
        let j = Journal::new(3, 1 << 20);
        for i in 0..5 {
            push(&j, &format!("t/{i}"));
        }
        let s = j.stats();
        assert_eq!((s.len, s.evicted, s.cursor), (3, 2, 5));
        let page = j.page(None, 0, 10);
        let cursors: Vec<u64> = page.items.iter().map(|e| e.cursor).collect();
        assert_eq!(cursors, [3, 4, 5]);
        assert_eq!(page.next_cursor, 5);
    }

    #[test]
    fn evicts_by_bytes_as_well() {
        let entry_size = std::mem::size_of::<Entry>() + 3 + 1000;
        let j = Journal::new(100, 3 * entry_size);
        for i in 0..5 {
            j.push(
                0,
                0,
                format!("t/{i}").into(),
                Bytes::from(vec![0; 1000]),
                Qos::AtMostOnce,
                false,
                None,
                Origin::Server,
                None,
            );
        }
        let s = j.stats();
        assert_eq!((s.len, s.evicted, s.evicted_by_bytes), (3, 2, 2));
        assert_eq!(s.bytes, 3 * entry_size);
    }

    #[test]
    fn pages_with_filter_and_limit() {
        let j = Journal::new(10, 1 << 20);
        for t in ["a/1", "b/1", "a/2", "a/3", "b/2"] {
            push(&j, t);
        }
        let p = j.page(Some("a/+"), 0, 2);
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.next_cursor, 3);
        assert!(p.more);
        let p = j.page(Some("a/+"), p.next_cursor, 2);
        assert_eq!(p.items.iter().map(|e| e.cursor).collect::<Vec<_>>(), [4]);
        assert_eq!(p.next_cursor, 5);
        assert!(!p.more);
        assert!(j.page(None, 5, 10).items.is_empty());
        let (last, missed) = j.scan(0, |_| {});
        assert_eq!((last, missed), (5, false));
    }

    #[test]
    fn keeps_its_own_copy_of_a_payload() {
        let j = Journal::new(10, 1 << 20);
        let buffer = Bytes::from(vec![7u8; 4096]);
        let payload = buffer.slice(..16);
        j.push(
            0,
            0,
            "t".into(),
            payload,
            Qos::AtMostOnce,
            false,
            None,
            Origin::Server,
            None,
        );
        // The 4 KiB buffer is not kept alive by the 16 bytes journaled.
        assert!(buffer.is_unique());
        assert_eq!(j.page(None, 0, 10).items[0].payload.len(), 16);
    }
}
