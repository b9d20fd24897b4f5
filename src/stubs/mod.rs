//! Mock HTTP endpoints ("stubs") and the HTTP request journal.
//!
//! It owns the stub registry (matching, response sequences, seeded delays,
//! faults, templates) and the journal of requests to stubs and to the HTTP
//! device API, with verify. It does not own devices (the fleet does); a
//! request that authenticates as a device gets the device's fields for its
//! templates through the fleet handle.

pub(crate) mod journal;
pub(crate) mod listener;
pub(crate) mod matcher;
pub(crate) mod serve;
mod store;
pub(crate) mod stub;
pub(crate) mod template;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

pub(crate) use journal::{
    DEFAULT_HTTP_JOURNAL_CAPACITY, DEFAULT_HTTP_JOURNAL_MAX_BYTES, HttpEntry, HttpJournal,
};
pub(crate) use matcher::{Matcher, Mismatch, PathPattern};
pub(crate) use store::StubStoreError;
pub(crate) use stub::{Stub, StubDef};

use crate::ids::StubId;
use crate::verify::{Expect, Verdict, json_contains};

#[derive(Debug, thiserror::Error)]
pub enum StubError {
    #[error("stub {0}")]
    Invalid(String),
    #[error("a stub with id {0:?} exists; DELETE /api/v1/stubs/{0} first or pick another id")]
    Duplicate(String),
    #[error("no stub {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StubStoreError),
}

/// Path parameters captured by a stub's pattern.
pub(crate) type Params = BTreeMap<String, String>;

/// A request as stubs see it.
#[derive(Debug, Clone)]
pub(crate) struct RequestFacts {
    pub(crate) method: Method,
    /// Without the `/mock` prefix.
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    /// Lower-case names; repeated headers joined with ", ".
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
    /// The body parsed as JSON, when it is JSON.
    pub(crate) json: Option<Value>,
}

impl RequestFacts {
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
}

/// The closest stub to a request that none matched, and why it did not.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct NearMiss {
    pub(crate) stub: String,
    pub(crate) mismatches: Vec<Mismatch>,
}

/// A stub as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct StubView {
    pub(crate) id: String,
    #[serde(flatten)]
    pub(crate) def: StubDef,
    /// `api` or `scenario`.
    pub(crate) source: &'static str,
    /// Requests it has answered.
    pub(crate) calls: u64,
}

/// A handle on the stubs and the HTTP journal; cheap to clone.
#[derive(Clone)]
pub(crate) struct Stubs(Arc<Shared>);

struct Shared {
    // A std lock: held to read or change the list, never across an await.
    /// Highest priority first; among equals, the newest first.
    stubs: RwLock<Vec<Arc<Stub>>>,
    next: AtomicU64,
    seed: u64,
    journal: HttpJournal,
    limits: StubLimits,
    /// Requests answered 413 because their response would render larger
    /// than `limits.max_response_bytes`.
    oversized: AtomicU64,
    /// Set at shutdown: hanging stubs let go.
    closing: watch::Sender<bool>,
    /// API stubs, with `--data-dir`.
    store: Option<store::StubStore>,
}

/// Which journal entries a listing or a verify wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestFilter {
    pub(crate) method: Option<Method>,
    /// A plain path is a prefix; a pattern (`{x}`, `*`, `**`) must match.
    pub(crate) path: Option<PathPattern>,
    pub(crate) stub: Option<String>,
    pub(crate) device: Option<String>,
    /// Only stub requests that matched no stub.
    pub(crate) unmatched: bool,
    /// Received (wall clock, ms) at or after.
    pub(crate) received_since: Option<i64>,
}

impl RequestFilter {
    pub(crate) fn selects(&self, e: &HttpEntry) -> bool {
        self.method.as_ref().is_none_or(|m| m.as_str() == e.method)
            && self.path.as_ref().is_none_or(|p| {
                if p.is_literal() {
                    e.path.starts_with(p.as_str())
                } else {
                    p.matches(&e.path).is_some()
                }
            })
            && self
                .stub
                .as_deref()
                .is_none_or(|s| e.stub.as_deref() == Some(s))
            && self
                .device
                .as_deref()
                .is_none_or(|d| e.device.as_deref() == Some(d))
            && (!self.unmatched || (e.listener != "api" && e.stub.is_none()))
            && self.received_since.is_none_or(|t| e.wall_ms >= t)
    }
}

/// What an HTTP verify checks, beyond the filter.
#[derive(Debug, Clone)]
pub(crate) struct HttpVerifySpec {
    pub(crate) filter: RequestFilter,
    pub(crate) query: Vec<(String, Matcher)>,
    pub(crate) headers: Vec<(String, Matcher)>,
    pub(crate) body_contains: Option<Value>,
    pub(crate) expect: Expect,
    pub(crate) within: Duration,
    pub(crate) since: u64,
}

impl HttpVerifySpec {
    fn content_matches(&self, e: &HttpEntry) -> bool {
        self.query.iter().all(|(n, m)| m.check(e.query_value(n)))
            && self.headers.iter().all(|(n, m)| m.check(e.header(n)))
            && self
                .body_contains
                .as_ref()
                .is_none_or(|s| e.json_body().is_some_and(|v| json_contains(&v, s)))
    }

    fn has_content(&self) -> bool {
        !self.query.is_empty() || !self.headers.is_empty() || self.body_contains.is_some()
    }
}

/// Default bound of one rendered stub response (body and headers).
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 << 20;

/// How much a client can make the stubs hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StubLimits {
    /// Requests kept in the journal.
    pub(crate) journal_capacity: usize,
    /// Bytes kept in the journal.
    pub(crate) journal_max_bytes: usize,
    /// Largest rendered response (body and header values); a request whose
    /// response would render larger is answered 413, measured before
    /// anything is rendered.
    pub(crate) max_response_bytes: usize,
}

impl Default for StubLimits {
    fn default() -> Self {
        Self {
            journal_capacity: DEFAULT_HTTP_JOURNAL_CAPACITY,
            journal_max_bytes: DEFAULT_HTTP_JOURNAL_MAX_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl Stubs {
    /// An empty registry; with `data_dir`, stubs made over the API are
    /// stored there (see [`restore`](Self::restore)).
    pub(crate) async fn open(
        data_dir: Option<&std::path::Path>,
        writers: &crate::sqlite::Writers,
        seed: u64,
        limits: StubLimits,
    ) -> Result<Self, StubError> {
        let store = match data_dir {
            Some(dir) => Some(store::StubStore::open(dir, writers).await?),
            None => None,
        };
        Ok(Self(Arc::new(Shared {
            stubs: RwLock::default(),
            next: AtomicU64::new(1),
            seed,
            journal: HttpJournal::new(limits.journal_capacity, limits.journal_max_bytes),
            limits,
            oversized: AtomicU64::new(0),
            closing: watch::Sender::new(false),
            store,
        })))
    }

    /// Adds the scenario's stubs, then the stored API stubs in their
    /// creation order. A stored stub wins over a scenario stub with its id
    /// (it was made later, over the API). A stored stub that no longer
    /// compiles is logged and skipped.
    pub(crate) async fn restore(&self, scenario: &[StubDef]) -> Result<(), StubError> {
        let stored = match &self.0.store {
            Some(store) => store.load().await?,
            None => Vec::new(),
        };
        for (i, def) in scenario.iter().enumerate() {
            let mut def = def.clone();
            let id = def
                .id
                .get_or_insert_with(|| format!("scenario-stub-{}", i + 1));
            if stored
                .iter()
                .any(|(_, s)| s.id.as_deref() == Some(id.as_str()))
            {
                tracing::info!(stub = %id, "a stored stub replaces the scenario's");
                continue;
            }
            self.add(def, "scenario")?;
        }
        for (order, def) in stored {
            let id = def.id.clone().unwrap_or_default();
            self.0.next.fetch_max(order + 1, Ordering::Relaxed);
            if let Err(error) = self.insert(def, "api", order) {
                tracing::warn!(stub = %id, %error, "stored stub not restored");
            }
        }
        Ok(())
    }

    /// Validates and adds a stub made over the API, and stores it with
    /// `--data-dir`.
    pub(crate) async fn create(&self, def: StubDef) -> Result<StubView, StubError> {
        let stored = self.0.store.is_some().then(|| def.clone());
        let order = self.0.next.fetch_add(1, Ordering::Relaxed);
        let view = self.insert(def, "api", order)?;
        if let (Some(store), Some(mut stored)) = (&self.0.store, stored) {
            stored.id = Some(view.id.clone());
            let saved = store.put(&view.id, order, &stored).await;
            if let Err(error) = saved {
                let _ = self.remove(&view.id);
                return Err(error.into());
            }
        }
        Ok(view)
    }

    /// Removes a stub's stored row, then the stub: when the row cannot be
    /// removed the stub stays, as it would after a restart.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), StubError> {
        if self.stub(id).is_none() {
            return Err(StubError::NotFound(id.to_string()));
        }
        if let Some(store) = &self.0.store {
            store.delete(id).await?;
        }
        self.remove(id)
    }

    /// Removes every stored row, then every stub; returns how many stubs
    /// there were.
    pub(crate) async fn delete_all(&self) -> Result<usize, StubError> {
        if let Some(store) = &self.0.store {
            store.clear().await?;
        }
        Ok(self.clear())
    }

    fn stub(&self, id: &str) -> Option<Arc<Stub>> {
        self.0
            .stubs
            .read()
            .unwrap()
            .iter()
            .find(|s| &*s.id == id)
            .cloned()
    }

    /// Validates and adds a stub (in memory only).
    pub(crate) fn add(&self, def: StubDef, source: &'static str) -> Result<StubView, StubError> {
        let order = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.insert(def, source, order)
    }

    fn insert(
        &self,
        mut def: StubDef,
        source: &'static str,
        order: u64,
    ) -> Result<StubView, StubError> {
        let id = match def.id.take() {
            Some(id) => id,
            None => {
                // Skip numbers a user already took as ids.
                let taken = |id: &str| self.0.stubs.read().unwrap().iter().any(|s| &*s.id == id);
                let mut n = order;
                while taken(&format!("stub-{n}")) {
                    n = self.0.next.fetch_add(1, Ordering::Relaxed);
                }
                format!("stub-{n}")
            }
        };
        let checked = StubId::parse(id.as_str()).map_err(|e| StubError::Invalid(e.to_string()))?;
        let stub = Arc::new(
            Stub::compile(def, checked, source, order, self.0.seed).map_err(StubError::Invalid)?,
        );
        let mut stubs = self.0.stubs.write().unwrap();
        if stubs.iter().any(|s| *s.id == *id) {
            return Err(StubError::Duplicate(id));
        }
        let at = stubs
            .iter()
            .position(|s| (s.priority(), s.order) < (stub.priority(), stub.order))
            .unwrap_or(stubs.len());
        stubs.insert(at, stub.clone());
        Ok(view(&stub))
    }

    /// Every stub, in the order they are tried.
    pub(crate) fn list(&self) -> Vec<StubView> {
        self.0
            .stubs
            .read()
            .unwrap()
            .iter()
            .map(|s| view(s))
            .collect()
    }

    pub(crate) fn get(&self, id: &str) -> Result<StubView, StubError> {
        self.stub(id)
            .map(|s| view(&s))
            .ok_or_else(|| StubError::NotFound(id.to_string()))
    }

    pub(crate) fn remove(&self, id: &str) -> Result<(), StubError> {
        let mut stubs = self.0.stubs.write().unwrap();
        let at = stubs
            .iter()
            .position(|s| &*s.id == id)
            .ok_or_else(|| StubError::NotFound(id.to_string()))?;
        stubs.remove(at);
        Ok(())
    }

    /// Removes every stub; returns how many there were.
    pub(crate) fn clear(&self) -> usize {
        std::mem::take(&mut *self.0.stubs.write().unwrap()).len()
    }

    /// The stub that answers `req` with its path parameters, or the closest
    /// one (fewest failed matchers; a matching path counts most) and why.
    pub(crate) fn find(&self, req: &RequestFacts) -> Result<(Arc<Stub>, Params), Option<NearMiss>> {
        let stubs = self.0.stubs.read().unwrap();
        let mut best: Option<(usize, &Arc<Stub>, Vec<Mismatch>)> = None;
        for stub in stubs.iter() {
            match stub.check(req) {
                Ok(params) => return Ok((stub.clone(), params)),
                Err(misses) => {
                    let score = misses.len()
                        + if misses.iter().any(|m| m.field == "path") {
                            10
                        } else {
                            0
                        };
                    if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
                        best = Some((score, stub, misses));
                    }
                }
            }
        }
        Err(best.map(|(_, stub, mismatches)| NearMiss {
            stub: stub.id.to_string(),
            mismatches,
        }))
    }

    pub(crate) fn journal(&self) -> &HttpJournal {
        &self.0.journal
    }

    pub(crate) fn limits(&self) -> StubLimits {
        self.0.limits
    }

    /// Requests refused because their response would have rendered larger
    /// than the limit.
    pub(crate) fn oversized(&self) -> u64 {
        self.0.oversized.load(Ordering::Relaxed)
    }

    pub(crate) fn count_oversized(&self) {
        self.0.oversized.fetch_add(1, Ordering::Relaxed);
    }

    /// Journal entries after `since` that `filter` selects, at most
    /// `limit`; and the cursor to continue from.
    pub(crate) fn requests(
        &self,
        filter: &RequestFilter,
        since: u64,
        limit: usize,
    ) -> (Vec<HttpEntry>, u64) {
        let mut items = Vec::new();
        let mut next = since;
        let mut full = false;
        let (last, _) = self.0.journal.scan(since, |e| {
            if full {
                return;
            }
            next = e.cursor;
            if filter.selects(e) {
                items.push(e.clone());
                full = items.len() == limit;
            }
        });
        if !full {
            next = last;
        }
        (items, next)
    }

    /// Waits (on journal changes, not by polling) until the expectation is
    /// settled or `within` has passed.
    pub(crate) async fn verify(&self, spec: &HttpVerifySpec) -> Verdict {
        let journal = &self.0.journal;
        crate::verify::wait_for_verdict(
            spec.expect,
            spec.since,
            spec.within,
            journal.watch(),
            |cursor, tally| {
                journal.scan(cursor, |e| {
                    if spec.filter.selects(e) {
                        tally.count(spec.content_matches(e), || {
                            serde_json::to_value(e).unwrap_or_default()
                        });
                    }
                })
            },
            |tally| {
                let mut detail = format!(
                    "{} request(s) matched after cursor {}{}; expected {}",
                    tally.matched,
                    spec.since,
                    if spec.has_content() {
                        format!(
                            " ({} selected by method/path/stub/device, the rest differed in query, headers or body)",
                            tally.selected
                        )
                    } else {
                        String::new()
                    },
                    spec.expect
                );
                if tally.missed {
                    detail.push_str(
                        "; some requests after the cursor were already evicted from the journal (raise --http-journal-capacity)",
                    );
                }
                detail
            },
        )
        .await
    }

    /// Lets hanging requests go (at shutdown).
    pub(crate) fn close(&self) {
        self.0.closing.send_replace(true);
    }

    /// Resolves when [`Stubs::close`] is called.
    pub(crate) async fn closed(&self) {
        let mut rx = self.0.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

fn view(stub: &Stub) -> StubView {
    let mut def = stub.def.clone();
    def.id = None;
    StubView {
        id: stub.id.to_string(),
        def,
        source: stub.source,
        calls: stub.calls(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(v: Value) -> StubDef {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn generated_ids_skip_taken_ones_and_order_follows_priority() {
        let stubs = Stubs::open(
            None,
            &crate::sqlite::Writers::default(),
            0,
            StubLimits {
                journal_capacity: 10,
                ..StubLimits::default()
            },
        )
        .await
        .unwrap();
        stubs
            .add(
                def(serde_json::json!({"id":"stub-2","request":{"path":"/a"},"response":{}})),
                "api",
            )
            .unwrap();
        let a = stubs
            .add(
                def(serde_json::json!({"request":{"path":"/a"},"response":{}})),
                "api",
            )
            .unwrap();
        let b = stubs
            .add(
                def(serde_json::json!({"priority":5,"request":{"path":"/a"},"response":{}})),
                "api",
            )
            .unwrap();
        assert_ne!(a.id, "stub-2");
        assert_ne!(b.id, a.id);
        let order: Vec<String> = stubs.list().into_iter().map(|s| s.id).collect();
        assert_eq!(order, [b.id.clone(), a.id.clone(), "stub-2".to_string()]);
        assert!(matches!(
            stubs.add(
                def(serde_json::json!({"id":"stub-2","request":{"path":"/b"},"response":{}})),
                "api"
            ),
            Err(StubError::Duplicate(_))
        ));
    }
}
