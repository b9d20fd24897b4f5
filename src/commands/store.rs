//! Durable commands: one SQLite file beside the device store
//! (`commands.db` under `--data-dir`), one row per command with its record
//! as JSON. Without a data directory nothing is written.
//!
//! Every change is written before the engine acts on it outside (publishes
//! or answers), so after a restart a command is where it was: queued ones
//! wait again, in-flight ones have their timeout re-armed.
//!
//! The file belongs to one thread ([`Db`]); every call here waits for it
//! without holding a runtime thread, and a write is answered once it is
//! committed. Records are turned into JSON by the caller, so the thread
//! only writes.

use std::path::Path;

use rusqlite::{Connection, params};

use crate::sqlite::Db;

use super::model::CommandView;

/// Migrations, in order; entry N takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &["CREATE TABLE commands (
        id TEXT PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL,
        version INTEGER NOT NULL,
        deadline INTEGER,
        body TEXT NOT NULL
    ) WITHOUT ROWID;"];

#[derive(Debug, thiserror::Error)]
pub enum CommandStoreError {
    #[error("command store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("command store {0}")]
    Open(#[from] crate::sqlite::OpenError),
}

pub(crate) struct CommandStore {
    db: Db,
}

/// A stored command: its record and the engine's bookkeeping.
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) view: CommandView,
    /// When the attempt in flight times out (simulated ms), if one is.
    pub(crate) deadline: Option<i64>,
}

/// One command's row, ready to write.
struct Row {
    id: String,
    seq: u64,
    version: u64,
    deadline: Option<i64>,
    body: String,
}

impl Row {
    fn of(seq: u64, version: u64, deadline: Option<i64>, view: &CommandView) -> Self {
        Self {
            id: view.id.clone(),
            seq,
            version,
            deadline,
            body: serde_json::to_string(view).expect("a command serializes"),
        }
    }
}

impl CommandStore {
    pub(crate) async fn open(
        dir: &Path,
        writers: &crate::sqlite::Writers,
    ) -> Result<Self, CommandStoreError> {
        let db = Db::open(Some(&dir.join("commands.db")), MIGRATIONS, Some(writers)).await?;
        Ok(Self { db })
    }

    /// Writes a command unless a newer version of it is already there
    /// (writes from two tasks may arrive out of order).
    pub(crate) async fn put(
        &self,
        seq: u64,
        version: u64,
        deadline: Option<i64>,
        view: &CommandView,
    ) -> Result<(), CommandStoreError> {
        let row = Row::of(seq, version, deadline, view);
        self.db.call(move |conn| put_on(conn, &row)).await
    }

    /// Writes new commands in one transaction: all or none.
    pub(crate) async fn put_all(
        &self,
        records: &[(u64, u64, Option<i64>, Box<CommandView>)],
    ) -> Result<(), CommandStoreError> {
        let rows: Vec<Row> = records
            .iter()
            .map(|(seq, version, deadline, view)| Row::of(*seq, *version, *deadline, view))
            .collect();
        self.db
            .call(move |conn| rows.iter().try_for_each(|row| put_on(conn, row)))
            .await
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<(), CommandStoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.execute("DELETE FROM commands WHERE id = ?1", params![id])?;
                Ok(())
            })
            .await
    }

    /// Every stored command, in creation order. Rows that do not parse are
    /// skipped with a warning (they cannot be acted on).
    pub(crate) async fn load_all(&self) -> Result<Vec<Stored>, CommandStoreError> {
        self.db
            .call(|conn| {
                let mut stmt =
                    conn.prepare("SELECT seq, deadline, body FROM commands ORDER BY seq")?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, deadline, body) = row?;
                    match serde_json::from_str::<CommandView>(&body) {
                        Ok(view) => out.push(Stored {
                            seq: seq as u64,
                            view,
                            deadline,
                        }),
                        Err(error) => {
                            tracing::warn!(seq, %error, "skipping a stored command that does not parse")
                        }
                    }
                }
                Ok(out)
            })
            .await
    }
}

/// Writes one command unless a newer version of it is already there.
fn put_on(conn: &Connection, row: &Row) -> Result<(), CommandStoreError> {
    conn.prepare_cached(
        "INSERT INTO commands (id, seq, version, deadline, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version,
             deadline = excluded.deadline, body = excluded.body
         WHERE excluded.version > commands.version",
    )?
    .execute(params![
        row.id,
        row.seq as i64,
        row.version as i64,
        row.deadline,
        row.body
    ])?;
    Ok(())
}
