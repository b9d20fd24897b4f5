//! Durable commands: one SQLite file beside the device store
//! (`commands.db` under `--data-dir`), one row per command with its record
//! as JSON. Without a data directory nothing is written.
//!
//! Every change is written before the engine acts on it outside (publishes
//! or answers), so after a restart a command is where it was: queued ones
//! wait again, in-flight ones have their timeout re-armed.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

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
    // A std mutex: each use is one short SQLite statement; never held
    // across an await.
    conn: Mutex<Connection>,
}

/// A stored command: its record and the engine's bookkeeping.
pub(crate) struct Stored {
    pub seq: u64,
    pub view: CommandView,
    /// When the attempt in flight times out (simulated ms), if one is.
    pub deadline: Option<i64>,
}

impl CommandStore {
    pub fn open(dir: &Path) -> Result<Self, CommandStoreError> {
        let conn = crate::sqlite::open(Some(&dir.join("commands.db")), MIGRATIONS)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Writes a command unless a newer version of it is already there
    /// (writes from two threads may arrive out of order).
    pub fn put(
        &self,
        seq: u64,
        version: u64,
        deadline: Option<i64>,
        view: &CommandView,
    ) -> Result<(), CommandStoreError> {
        put_on(&self.conn.lock().unwrap(), seq, version, deadline, view)
    }

    /// Writes new commands in one transaction: all or none.
    pub fn put_all(
        &self,
        rows: &[(u64, u64, Option<i64>, Box<CommandView>)],
    ) -> Result<(), CommandStoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        for (seq, version, deadline, view) in rows {
            put_on(&tx, *seq, *version, *deadline, view)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), CommandStoreError> {
        self.conn
            .lock()
            .unwrap()
            .execute("DELETE FROM commands WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every stored command, in creation order. Rows that do not parse are
    /// skipped with a warning (they cannot be acted on).
    pub fn load_all(&self) -> Result<Vec<Stored>, CommandStoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare("SELECT seq, deadline, body FROM commands ORDER BY seq")?;
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
    }
}

/// Writes one command unless a newer version of it is already there.
fn put_on(
    conn: &Connection,
    seq: u64,
    version: u64,
    deadline: Option<i64>,
    view: &CommandView,
) -> Result<(), CommandStoreError> {
    let body = serde_json::to_string(view).expect("a command serializes");
    conn.prepare_cached(
        "INSERT INTO commands (id, seq, version, deadline, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version,
             deadline = excluded.deadline, body = excluded.body
         WHERE excluded.version > commands.version",
    )?
    .execute(params![view.id, seq as i64, version as i64, deadline, body])?;
    Ok(())
}
