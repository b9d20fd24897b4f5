//! The durable store: SQLite (bundled), one file under the data directory,
//! or an in-memory database when there is none. Every write is committed
//! before the API answers; WAL mode keeps committed writes across a kill -9.
//! The schema is versioned with `PRAGMA user_version` and migrated forward
//! at open.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::credentials::SecretHash;
use super::model::{Device, HandlerSpec, Lifecycle};

/// Migrations, in order; entry N takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &[
    // 1: devices with their credentials.
    "CREATE TABLE devices (
        id TEXT PRIMARY KEY NOT NULL,
        kind TEXT,
        tags TEXT NOT NULL,
        grp TEXT,
        metadata TEXT NOT NULL,
        sensors TEXT NOT NULL,
        command_handler TEXT,
        simulated INTEGER NOT NULL,
        lifecycle TEXT NOT NULL,
        secret_salt BLOB NOT NULL,
        secret_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: the state HTTP devices report (GET|PUT|PATCH /devices/{id}/state).
    "CREATE TABLE device_reported (
        id TEXT PRIMARY KEY NOT NULL,
        state TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: each device's offline buffer (JSON; NULL: the default).
    "ALTER TABLE devices ADD COLUMN buffer TEXT;",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("device store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("device store: a stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("device store {0}")]
    Open(#[from] crate::sqlite::OpenError),
}

pub(crate) struct Store {
    // A std mutex: every use is one short synchronous SQLite call made on a
    // blocking thread, never held across an await.
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating and migrating) `dir/iotmock.db`, or an in-memory
    /// database when `dir` is None.
    pub fn open(dir: Option<&Path>) -> Result<Self, StoreError> {
        let path = dir.map(|dir| dir.join("iotmock.db"));
        let conn = crate::sqlite::open(path.as_deref(), MIGRATIONS)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Inserts devices in one transaction: all or none. Returns the id of a
    /// device that already exists, if one does.
    pub fn insert(&self, devices: &[(Device, SecretHash)]) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO devices (id, kind, tags, grp, metadata, sensors, command_handler,
                    simulated, lifecycle, secret_salt, secret_hash, created_at, updated_at, buffer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for (d, secret) in devices {
                if exists
                    .query_row(params![d.id], |_| Ok(()))
                    .optional()?
                    .is_some()
                {
                    return Ok(Some(d.id.clone()));
                }
                stmt.execute(params![
                    d.id,
                    d.kind,
                    json(&*d.tags),
                    d.group,
                    json(&*d.metadata),
                    json(&*d.sensors),
                    d.command_handler.as_ref().map(HandlerSpec::to_stored),
                    d.simulated,
                    d.state.as_str(),
                    &secret.salt[..],
                    &secret.hash[..],
                    d.created_at,
                    d.updated_at,
                    json(&d.buffer),
                ])?;
            }
        }
        tx.commit()?;
        Ok(None)
    }

    /// Writes a device's fields (not its secret).
    pub fn update(&self, d: &Device) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap();
        let n = conn
            .prepare_cached(
                "UPDATE devices SET kind = ?2, tags = ?3, grp = ?4, metadata = ?5, sensors = ?6,
                command_handler = ?7, simulated = ?8, lifecycle = ?9, updated_at = ?10,
                buffer = ?11
             WHERE id = ?1",
            )?
            .execute(params![
                d.id,
                d.kind,
                json(&*d.tags),
                d.group,
                json(&*d.metadata),
                json(&*d.sensors),
                d.command_handler.as_ref().map(HandlerSpec::to_stored),
                d.simulated,
                d.state.as_str(),
                d.updated_at,
                json(&d.buffer),
            ])?;
        Ok(n == 1)
    }

    pub fn set_secret(&self, id: &str, secret: &SecretHash, at: i64) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap();
        let n = conn
            .prepare_cached(
                "UPDATE devices SET secret_salt = ?2, secret_hash = ?3, updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, &secret.salt[..], &secret.hash[..], at])?;
        Ok(n == 1)
    }

    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap();
        let n = conn
            .prepare_cached("DELETE FROM devices WHERE id = ?1")?
            .execute(params![id])?;
        conn.prepare_cached("DELETE FROM device_reported WHERE id = ?1")?
            .execute(params![id])?;
        Ok(n == 1)
    }

    /// Replaces a device's reported state (JSON object text).
    pub fn set_reported(&self, id: &str, state: &str, at: i64) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap();
        conn.prepare_cached(
            "INSERT INTO device_reported (id, state, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        )?
        .execute(params![id, state, at])?;
        Ok(())
    }

    /// Every stored reported state: (id, JSON object text, updated_at).
    pub fn load_reported(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare("SELECT id, state, updated_at FROM device_reported")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every stored device, for start-up.
    pub fn load_all(&self) -> Result<Vec<(Device, SecretHash)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare(
            "SELECT id, kind, tags, grp, metadata, sensors, command_handler, simulated, lifecycle,
                secret_salt, secret_hash, created_at, updated_at, buffer FROM devices ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, Vec<u8>>(9)?,
                r.get::<_, Vec<u8>>(10)?,
                r.get::<_, i64>(11)?,
                r.get::<_, i64>(12)?,
                r.get::<_, Option<String>>(13)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                kind,
                tags,
                group,
                metadata,
                sensors,
                handler,
                simulated,
                state,
                salt,
                hash,
                created,
                updated,
                buffer,
            ) = row?;
            let corrupt = |what: &str| StoreError::Corrupt(format!("device {id:?}: {what}"));
            let device = Device {
                kind,
                tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?,
                group,
                metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata"))?,
                sensors: serde_json::from_str(&sensors).map_err(|_| corrupt("sensors"))?,
                command_handler: match handler {
                    Some(text) => Some(
                        HandlerSpec::from_stored(&text)
                            .ok_or_else(|| corrupt("command_handler"))?,
                    ),
                    None => None,
                },
                simulated,
                buffer: match buffer {
                    Some(b) => serde_json::from_str(&b).map_err(|_| corrupt("buffer"))?,
                    None => Default::default(),
                },
                state: Lifecycle::parse(&state).ok_or_else(|| corrupt("lifecycle"))?,
                created_at: created,
                updated_at: updated,
                id: id.clone(),
            };
            let secret = SecretHash {
                salt: salt.try_into().map_err(|_| corrupt("secret salt"))?,
                hash: hash.try_into().map_err(|_| corrupt("secret hash"))?,
            };
            out.push((device, secret));
        }
        Ok(out)
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("device fields serialize")
}
