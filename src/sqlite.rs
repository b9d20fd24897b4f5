//! Opening the SQLite files kept under `--data-dir` (devices, commands,
//! edge nodes, stubs): WAL with `synchronous = NORMAL`, and a schema moved
//! forward by numbered migrations recorded in `PRAGMA user_version`, all in
//! one transaction. A file written by a newer iotmock is refused, not
//! guessed at; so are a zero-length file (a cache restored empty would
//! otherwise start an empty fleet without a word) and a file that is not
//! iotmock's (not SQLite, or another program's database).
//!
//! Every store reaches its connection the same way: synchronous calls made
//! through [`blocking`], on tokio's blocking threads, so no runtime thread
//! waits on the disk, and an answer is sent only after the write returned.

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
    #[error(
        "{path} is empty (zero bytes), so it holds no state to resume; if it was restored from a cache or backup, restore it again; to start afresh, delete the file"
    )]
    Empty { path: String },
    #[error(
        "{path} is not an iotmock database ({why}); point --data-dir at iotmock's own folder, or move the file away"
    )]
    Foreign { path: String, why: String },
}

/// Marks a database as iotmock's (`PRAGMA application_id`, "iotm").
const APPLICATION_ID: i32 = 0x696f_746d;

/// Runs a synchronous store call on a blocking thread and waits for it
/// without holding a runtime thread. A call that panicked panics here too
/// (a bug, not a storage failure).
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Opens `path` (an in-memory database when `None`) and applies the
/// migrations it has not seen; entry N takes the schema from version N to
/// N+1.
pub fn open(path: Option<&Path>, migrations: &[&str]) -> Result<Connection, OpenError> {
    let (mut conn, shown) = match path {
        Some(path) => {
            let shown = path.display().to_string();
            if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                return Err(OpenError::Empty { path: shown });
            }
            (Connection::open(path)?, shown)
        }
        None => (Connection::open_in_memory()?, ":memory:".to_string()),
    };
    let foreign = |why: &str| OpenError::Foreign {
        path: shown.clone(),
        why: why.to_string(),
    };
    // The first read of the file: a file that is not SQLite fails here.
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => foreign("not an SQLite file"),
            _ => OpenError::Sql(e),
        })?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: u32 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(foreign(&format!(
            "an SQLite database of another program, application id {app_id:#x}"
        )));
    }
    if app_id == 0 && version == 0 && tables > 0 {
        return Err(foreign(
            "an SQLite database with tables iotmock did not make",
        ));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    if app_id == 0 {
        // New, or made by an iotmock that did not mark its files yet.
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
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

    #[test]
    fn refuses_empty_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = ["CREATE TABLE a (x INTEGER);"];
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = open(Some(&empty), &one).unwrap_err();
        assert!(err.to_string().contains("is empty (zero bytes)"), "{err}");
        assert_eq!(
            std::fs::metadata(&empty).unwrap().len(),
            0,
            "left untouched"
        );

        let text = dir.path().join("text.db");
        std::fs::write(
            &text,
            "not a database, just some text that is long enough to have a header",
        )
        .unwrap();
        let err = open(Some(&text), &one).unwrap_err();
        assert!(err.to_string().contains("not an SQLite file"), "{err}");

        let other = dir.path().join("other.db");
        let conn = Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE people (name TEXT);")
            .unwrap();
        drop(conn);
        let err = open(Some(&other), &one).unwrap_err();
        assert!(
            err.to_string().contains("tables iotmock did not make"),
            "{err}"
        );

        let marked = dir.path().join("marked.db");
        let conn = Connection::open(&marked).unwrap();
        conn.pragma_update(None, "application_id", 7).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
        drop(conn);
        let err = open(Some(&marked), &one).unwrap_err();
        assert!(err.to_string().contains("another program"), "{err}");
    }
}
