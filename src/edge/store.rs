//! Edge node declarations survive a restart when a data directory is
//! given: they live in `edge.db` there (SQLite, a file of its own so its
//! schema moves independently of the fleet's), with each node's uplink
//! state. Input queues, uplink buffers, rule state and counters are not
//! kept: a restarted node starts with empty ones and `seq` from 1.
//!
//! The file belongs to one thread ([`Db`]); every call here waits for it
//! without holding a runtime thread, and a change is answered once it is
//! committed.

use std::path::Path;

use rusqlite::params;

use crate::sqlite::Db;

use super::spec::EdgeNodeSpec;

/// Migrations, in order; entry N takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &["CREATE TABLE edge_nodes (
        id TEXT PRIMARY KEY NOT NULL,
        spec TEXT NOT NULL,
        uplink_up INTEGER NOT NULL
    ) WITHOUT ROWID;"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum EdgeStoreError {
    #[error("edge node store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("edge node store {0}")]
    Open(#[from] crate::sqlite::OpenError),
}

#[derive(Clone)]
pub(crate) struct EdgeStore {
    db: Db,
}

impl EdgeStore {
    pub(crate) async fn open(
        dir: &Path,
        writers: &crate::sqlite::Writers,
    ) -> Result<Self, EdgeStoreError> {
        let db = Db::open(Some(&dir.join("edge.db")), MIGRATIONS, Some(writers)).await?;
        Ok(Self { db })
    }

    /// Every stored node, by id; a row that no longer parses is skipped
    /// with a warning (and kept).
    pub(crate) async fn load(&self) -> Result<Vec<(EdgeNodeSpec, bool)>, EdgeStoreError> {
        self.db
            .call(|conn| {
                let mut stmt =
                    conn.prepare("SELECT id, spec, uplink_up FROM edge_nodes ORDER BY id")?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, spec, up) = row?;
                    match serde_json::from_str(&spec) {
                        Ok(spec) => out.push((spec, up)),
                        Err(error) => {
                            tracing::warn!(node = %id, %error, "stored edge node does not parse; skipped")
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    pub(crate) async fn put(&self, spec: &EdgeNodeSpec, up: bool) -> Result<(), EdgeStoreError> {
        let text = serde_json::to_string(spec).expect("a spec serializes");
        let id = spec.id.clone();
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO edge_nodes (id, spec, uplink_up) VALUES (?1, ?2, ?3)",
                    params![id, text, up],
                )?;
                Ok(())
            })
            .await
    }

    pub(crate) async fn set_uplink(&self, id: &str, up: bool) -> Result<(), EdgeStoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE edge_nodes SET uplink_up = ?2 WHERE id = ?1",
                    params![id, up],
                )?;
                Ok(())
            })
            .await
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<(), EdgeStoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM edge_nodes WHERE id = ?1", params![id])?;
                Ok(())
            })
            .await
    }
}
