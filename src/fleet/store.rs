//! The durable store: SQLite (bundled), one file under the data directory,
//! or an in-memory database when there is none (it still holds the issued
//! certificates and decides which device ids are taken). Every write is
//! committed before the API answers; WAL mode keeps committed writes
//! across a kill -9. The schema is versioned with `PRAGMA user_version`
//! and migrated forward at open.
//!
//! The database belongs to one thread ([`Db`]); every call here waits for
//! it without holding a runtime thread. New devices are moved to that
//! thread and handed back once stored, so nothing is copied for the store.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::credentials::SecretHash;
use super::model::{Device, DialectSpec, HandlerSpec, Lifecycle};
use crate::sqlite::Db;

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
    // 4: device certificates (never their private keys). Rows stay after
    // revocation, and after the device is deleted, so that a revoked
    // certificate stays refused. The rowid keeps the order of issue.
    "CREATE TABLE certificates (
        serial TEXT UNIQUE NOT NULL,
        device TEXT NOT NULL,
        cert_pem TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX certificates_device ON certificates (device);",
    // 5: each device's dialect (a codec name or JSON; NULL: the default).
    "ALTER TABLE devices ADD COLUMN dialect TEXT;",
];

/// A stored device certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertRow {
    pub(crate) serial: String,
    pub(crate) device: String,
    pub(crate) cert_pem: String,
    /// Wall time, ms since the Unix epoch.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) created_at: i64,
    pub(crate) revoked_at: Option<i64>,
}

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
    db: Db,
}

/// What [`Store::insert`] did.
pub(crate) enum Inserted {
    /// Every device is stored; here they are back.
    Stored(Vec<(Device, SecretHash)>),
    /// None is: a device with this id exists.
    Exists(String),
}

impl Store {
    /// Opens (creating and migrating) `dir/iotmock.db`, or an in-memory
    /// database when `dir` is None.
    pub(crate) async fn open(
        dir: Option<&Path>,
        writers: &crate::sqlite::Writers,
    ) -> Result<Self, StoreError> {
        let path = dir.map(|dir| dir.join("iotmock.db"));
        let db = Db::open(path.as_deref(), MIGRATIONS, Some(writers)).await?;
        Ok(Self { db })
    }

    /// Inserts devices in one transaction: all or none, with the
    /// certificates issued with them.
    pub(crate) async fn insert(
        &self,
        devices: Vec<(Device, SecretHash)>,
        certs: Vec<CertRow>,
    ) -> Result<Inserted, StoreError> {
        self.db
            .call(move |conn| {
                {
                    let mut exists = conn.prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?;
                    for (d, _) in &devices {
                        if exists.exists(params![d.id])? {
                            return Ok(Inserted::Exists(d.id.clone()));
                        }
                    }
                }
                let mut stmt = conn.prepare_cached(
                    "INSERT INTO devices (id, kind, tags, grp, metadata, sensors, command_handler,
                        simulated, lifecycle, secret_salt, secret_hash, created_at, updated_at,
                        buffer, dialect)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )?;
                for (d, secret) in &devices {
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
                        d.dialect.as_ref().map(DialectSpec::to_stored),
                    ])?;
                }
                insert_cert_rows(conn, &certs)?;
                Ok(Inserted::Stored(devices))
            })
            .await
    }

    /// Writes a device's fields (not its secret).
    pub(crate) async fn update(&self, d: &Device) -> Result<bool, StoreError> {
        let row = (
            d.id.clone(),
            d.kind.clone(),
            json(&*d.tags),
            d.group.clone(),
            json(&*d.metadata),
            json(&*d.sensors),
            d.command_handler.as_ref().map(HandlerSpec::to_stored),
            d.simulated,
            d.state.as_str(),
            d.updated_at,
            json(&d.buffer),
            d.dialect.as_ref().map(DialectSpec::to_stored),
        );
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE devices SET kind = ?2, tags = ?3, grp = ?4, metadata = ?5,
                            sensors = ?6, command_handler = ?7, simulated = ?8, lifecycle = ?9,
                            updated_at = ?10, buffer = ?11, dialect = ?12
                         WHERE id = ?1",
                    )?
                    .execute(params![
                        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9,
                        row.10, row.11,
                    ])?;
                Ok(n == 1)
            })
            .await
    }

    pub(crate) async fn set_secret(
        &self,
        id: &str,
        secret: &SecretHash,
        at: i64,
    ) -> Result<bool, StoreError> {
        let (id, salt, hash) = (id.to_string(), secret.salt, secret.hash);
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE devices SET secret_salt = ?2, secret_hash = ?3, updated_at = ?4
                         WHERE id = ?1",
                    )?
                    .execute(params![id, &salt[..], &hash[..], at])?;
                Ok(n == 1)
            })
            .await
    }

    /// Deletes a device; its certificates are revoked at `at` (wall ms),
    /// and their serials returned.
    pub(crate) async fn delete(
        &self,
        id: &str,
        at: i64,
    ) -> Result<(bool, Vec<String>), StoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached("DELETE FROM devices WHERE id = ?1")?
                    .execute(params![id])?;
                conn.prepare_cached("DELETE FROM device_reported WHERE id = ?1")?
                    .execute(params![id])?;
                let serials = conn
                    .prepare_cached(
                        "UPDATE certificates SET revoked_at = ?2
                         WHERE device = ?1 AND revoked_at IS NULL RETURNING serial",
                    )?
                    .query_map(params![id, at], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                Ok((n == 1, serials))
            })
            .await
    }

    /// Stores issued certificates, in one transaction.
    pub(crate) async fn insert_certs(&self, rows: Vec<CertRow>) -> Result<(), StoreError> {
        self.db
            .call(move |conn| insert_cert_rows(conn, &rows))
            .await
    }

    /// A device's certificates, oldest first.
    pub(crate) async fn certs(&self, device: &str) -> Result<Vec<CertRow>, StoreError> {
        let device = device.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT serial, device, cert_pem, not_before, not_after, created_at, revoked_at
                     FROM certificates WHERE device = ?1 ORDER BY rowid",
                )?;
                let rows = stmt.query_map(params![device], |r| {
                    Ok(CertRow {
                        serial: r.get(0)?,
                        device: r.get(1)?,
                        cert_pem: r.get(2)?,
                        not_before: r.get(3)?,
                        not_after: r.get(4)?,
                        created_at: r.get(5)?,
                        revoked_at: r.get(6)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Revokes one certificate of a device at `at` (wall ms). `None`: the
    /// device has no certificate with this serial; `Some(false)`: it was
    /// revoked before.
    pub(crate) async fn revoke_cert(
        &self,
        device: &str,
        serial: &str,
        at: i64,
    ) -> Result<Option<bool>, StoreError> {
        let (device, serial) = (device.to_string(), serial.to_string());
        self.db
            .call(move |conn| {
                let revoked: Option<Option<i64>> = conn
                    .prepare_cached(
                        "SELECT revoked_at FROM certificates WHERE device = ?1 AND serial = ?2",
                    )?
                    .query_row(params![device, serial], |r| r.get(0))
                    .optional()?;
                match revoked {
                    None => Ok(None),
                    Some(Some(_)) => Ok(Some(false)),
                    Some(None) => {
                        conn.prepare_cached(
                            "UPDATE certificates SET revoked_at = ?2 WHERE serial = ?1",
                        )?
                        .execute(params![serial, at])?;
                        Ok(Some(true))
                    }
                }
            })
            .await
    }

    /// Every revoked serial, for start-up.
    pub(crate) async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .call(|conn| {
                let mut stmt =
                    conn.prepare("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Replaces a device's reported state (JSON object text).
    pub(crate) async fn set_reported(
        &self,
        id: &str,
        state: String,
        at: i64,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO device_reported (id, state, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET state = excluded.state,
                         updated_at = excluded.updated_at",
                )?
                .execute(params![id, state, at])?;
                Ok(())
            })
            .await
    }

    /// Every stored reported state: (id, JSON object text, updated_at).
    pub(crate) async fn load_reported(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT id, state, updated_at FROM device_reported")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Every stored device, for start-up.
    pub(crate) async fn load_all(&self) -> Result<Vec<(Device, SecretHash)>, StoreError> {
        self.db.call(load_all).await
    }
}

/// Reads every stored device.
fn load_all(conn: &Connection) -> Result<Vec<(Device, SecretHash)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, kind, tags, grp, metadata, sensors, command_handler, simulated, lifecycle,
            secret_salt, secret_hash, created_at, updated_at, buffer, dialect FROM devices
         ORDER BY id",
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
            r.get::<_, Option<String>>(14)?,
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
            dialect,
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
                    HandlerSpec::from_stored(&text).ok_or_else(|| corrupt("command_handler"))?,
                ),
                None => None,
            },
            dialect: match dialect {
                Some(text) => {
                    Some(DialectSpec::from_stored(&text).ok_or_else(|| corrupt("dialect"))?)
                }
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

fn insert_cert_rows(conn: &Connection, rows: &[CertRow]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO certificates (serial, device, cert_pem, not_before, not_after, created_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for c in rows {
        stmt.execute(params![
            c.serial,
            c.device,
            c.cert_pem,
            c.not_before,
            c.not_after,
            c.created_at,
            c.revoked_at
        ])?;
    }
    Ok(())
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("device fields serialize")
}
