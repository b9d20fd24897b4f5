//! Stubs made over the API survive a restart when a data directory is
//! given: they live in `stubs.db` there (SQLite), one row per stub with its
//! definition as JSON and its creation order (which breaks ties between
//! stubs of equal priority). Scenario stubs come from the scenario at every
//! start and are not stored; call counts and response-sequence positions
//! start from zero after a restart.
//!
//! The file belongs to one thread ([`Db`]); every call here waits for it
//! without holding a runtime thread, and a change is answered once it is
//! committed.

use std::path::Path;

use rusqlite::params;

use crate::sqlite::Db;

use super::stub::StubDef;

/// Migrations, in order; entry N takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &["CREATE TABLE stubs (
        id TEXT PRIMARY KEY NOT NULL,
        ord INTEGER NOT NULL,
        def TEXT NOT NULL
    ) WITHOUT ROWID;"];

#[derive(Debug, thiserror::Error)]
pub enum StubStoreError {
    #[error("stub store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stub store {0}")]
    Open(#[from] crate::sqlite::OpenError),
}

#[derive(Clone)]
pub(crate) struct StubStore {
    db: Db,
}

impl StubStore {
    pub(crate) async fn open(
        dir: &Path,
        writers: &crate::sqlite::Writers,
    ) -> Result<Self, StubStoreError> {
        let db = Db::open(Some(&dir.join("stubs.db")), MIGRATIONS, Some(writers)).await?;
        Ok(Self { db })
    }

    /// Every stored stub with its creation order, oldest first; a row that
    /// no longer parses is skipped with a warning (and kept).
    pub(crate) async fn load(&self) -> Result<Vec<(u64, StubDef)>, StubStoreError> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT id, ord, def FROM stubs ORDER BY ord")?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, ord, def) = row?;
                    match serde_json::from_str::<StubDef>(&def) {
                        Ok(def) => out.push((ord as u64, def)),
                        Err(error) => {
                            tracing::warn!(stub = %id, %error, "stored stub no longer parses; skipped");
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    pub(crate) async fn put(
        &self,
        id: &str,
        order: u64,
        def: &StubDef,
    ) -> Result<(), StubStoreError> {
        let json = serde_json::to_string(def).expect("a stub definition serializes");
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO stubs (id, ord, def) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET ord = excluded.ord, def = excluded.def",
                    params![id, order as i64, json],
                )?;
                Ok(())
            })
            .await
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<(), StubStoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM stubs WHERE id = ?1", params![id])?;
                Ok(())
            })
            .await
    }

    pub(crate) async fn clear(&self) -> Result<(), StubStoreError> {
        self.db
            .call(|conn| {
                conn.execute("DELETE FROM stubs", [])?;
                Ok(())
            })
            .await
    }
}
