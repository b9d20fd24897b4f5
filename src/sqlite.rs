//! Opening the SQLite files kept under `--data-dir` (devices, commands,
//! edge nodes, stubs): WAL with `synchronous = NORMAL`, and a schema moved
//! forward by numbered migrations recorded in `PRAGMA user_version`, all in
//! one transaction. A file written by a newer iotmock is refused, not
//! guessed at.

use std::path::Path;

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "{path} has schema version {found}, newer than this iotmock knows ({known}); use a newer iotmock or another --data-dir"
    )]
    TooNew {
        path: String,
        found: u32,
        known: u32,
    },
}

/// Opens `path` (an in-memory database when `None`) and applies the
/// migrations it has not seen; entry N takes the schema from version N to
/// N+1.
pub fn open(path: Option<&Path>, migrations: &[&str]) -> Result<Connection, OpenError> {
    let (mut conn, shown) = match path {
        Some(path) => (Connection::open(path)?, path.display().to_string()),
        None => (Connection::open_in_memory()?, ":memory:".to_string()),
    };
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = migrations.len() as u32;
    if version > known {
        return Err(OpenError::TooNew {
            path: shown,
            found: version,
            known,
        });
    }
    let tx = conn.transaction()?;
    for (n, sql) in migrations.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", n as u32 + 1)?;
    }
    tx.commit()?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_forward_once_and_refuses_a_newer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let one = ["CREATE TABLE a (x INTEGER);"];
        drop(open(Some(&path), &one).unwrap());
        // Reopening applies nothing twice (a second CREATE would fail).
        drop(open(Some(&path), &one).unwrap());
        let two = ["CREATE TABLE a (x INTEGER);", "ALTER TABLE a ADD COLUMN y;"];
        let conn = open(Some(&path), &two).unwrap();
        conn.execute("INSERT INTO a (x, y) VALUES (1, 2)", [])
            .unwrap();
        drop(conn);
        let err = open(Some(&path), &one).unwrap_err();
        assert!(
            err.to_string()
                .contains("schema version 2, newer than this iotmock knows (1)"),
            "{err}"
        );
    }
}
