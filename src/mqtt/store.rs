//! Durable broker state under `--data-dir`: retained messages (any legal
//! topic), persistent sessions with their subscriptions, and the messages
//! queued or in flight for them, in one SQLite file (`mqtt/broker.db`).
//!
//! The engine's core produces write operations under its lock, in order,
//! and hands them to one writer thread through a bounded channel (its
//! capacity, [`CHANNEL_CAPACITY`] operations, is the backpressure: a core
//! that outruns the disk waits). The writer applies whatever has arrived
//! (up to [`MAX_BATCH`] operations) in one transaction and then announces
//! the last operation it made durable; a connection waits for that before
//! it acknowledges a PUBLISH or SUBSCRIBE that changed stored state, so
//! nothing is acknowledged before it is stored. Without `--data-dir` there
//! is no store and no cost.
//!
//! A batch that cannot be written (a full disk, an I/O error) leaves the
//! file behind the broker's memory, so the store counts as failed from
//! then on: every connection waiting on it is closed without its
//! acknowledgement (MQTT 5: DISCONNECT 0x80), and its client sends the
//! message again on a broker that can store it. So does a writer thread
//! that is gone. The error is logged; what does not touch the store (QoS 0,
//! clean sessions) goes on.
//!
//! The thread, its opening of the file and its batching are the ones every
//! database has ([`crate::sqlite::spawn_writer`]); what differs from the
//! other stores' [`Db`](crate::sqlite::Db) is the queue. Operations are
//! pushed synchronously, under the core lock, so a std `sync_channel`
//! carries them (an async send could not be awaited there), and nobody
//! waits for an answer per operation: a whole batch is one transaction,
//! and the watermark answers everyone at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::sync::watch;

use super::session::{Addressee, Delivery, Msg};
use super::tree::SubOpts;
use crate::sqlite::{Mail, SyncInbox, Writers};

/// Operations waiting for the writer, at most.
pub(crate) const CHANNEL_CAPACITY: usize = 65_536;

/// Most operations one transaction takes.
const MAX_BATCH: usize = 4096;

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    props BLOB NOT NULL,
    qos INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    user TEXT,
    version INTEGER NOT NULL,
    expiry_secs INTEGER NOT NULL,
    subs TEXT NOT NULL
);
CREATE TABLE messages (
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    props BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    expires_at INTEGER,
    sub_ids TEXT,
    PRIMARY KEY (client_id, seq)
);
",
    "
-- The device a queued message is addressed to (see session::Addressee);
-- both NULL for a message for every subscriber.
ALTER TABLE messages ADD COLUMN to_id TEXT;
ALTER TABLE messages ADD COLUMN to_user TEXT;
",
];

/// Where a stored message stands (0: queued, not yet sent).
pub(crate) const SENT: i64 = 1;
pub(crate) const RELEASED: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("MQTT store {path}: {source}")]
    Open {
        path: String,
        source: crate::sqlite::OpenError,
    },
    #[error("MQTT store {path}: {source}")]
    Sql {
        path: String,
        source: rusqlite::Error,
    },
}

pub(crate) enum Op {
    RetainSet(Arc<Msg>),
    RetainClear(Arc<str>),
    SessionPut {
        client_id: Arc<str>,
        user: Option<Arc<str>>,
        version: u8,
        expiry_secs: u32,
        subs: Vec<(String, SubOpts)>,
    },
    SessionDel(Arc<str>),
    MsgAdd {
        client_id: Arc<str>,
        seq: u64,
        d: Delivery,
    },
    MsgState {
        client_id: Arc<str>,
        seq: u64,
        state: i64,
        pid: u16,
    },
    MsgDel {
        client_id: Arc<str>,
        seq: u64,
    },
}

pub(crate) struct Store {
    tx: mpsc::SyncSender<Mail<(u64, Op)>>,
    issued: std::sync::atomic::AtomicU64,
    durable: watch::Receiver<Durable>,
    /// A send failed: the writer is gone (said once).
    gone: std::sync::atomic::AtomicBool,
}

/// How far the writer got: the last operation it made durable, and
/// whether a write ever failed (from then on nothing more is durable).
#[derive(Clone, Copy, Default)]
struct Durable {
    upto: u64,
    failed: bool,
}

/// What was stored, read back at start.
pub(crate) struct Loaded {
    pub(crate) retained: Vec<Arc<Msg>>,
    pub(crate) sessions: Vec<LoadedSession>,
}

pub(crate) struct LoadedSession {
    pub(crate) client_id: Arc<str>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) version: u8,
    pub(crate) expiry_secs: u32,
    pub(crate) subs: Vec<(String, SubOpts)>,
    /// (seq, state, pid, delivery), in seq order.
    pub(crate) messages: Vec<(u64, i64, u16, Delivery)>,
}

impl Store {
    /// Opens (or creates) the store in `dir` on its writer thread,
    /// registered in `writers`, and reads it back there.
    pub(crate) async fn open(
        dir: &Path,
        writers: Option<&Writers>,
    ) -> Result<(Self, Loaded), StoreError> {
        let path = dir.join("broker.db");
        let shown = path.display().to_string();
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let (durable_tx, durable) = watch::channel(Durable::default());
        let writer_path = shown.clone();
        let closer = tx.clone();
        let close: crate::sqlite::Closer = Box::new(move || {
            let _ = closer.send(Mail::Close);
        });
        let loaded = crate::sqlite::spawn_writer(
            "sqlite broker.db".into(),
            Some(path),
            MIGRATIONS,
            SyncInbox::new(rx),
            MAX_BATCH,
            |conn| load(conn),
            move |conn, batch| write(conn, batch, &durable_tx, &writer_path),
            writers.map(|w| (w, close)),
        )
        .await
        .map_err(|source| StoreError::Open {
            path: shown.clone(),
            source,
        })?
        .map_err(|source| StoreError::Sql {
            path: shown.clone(),
            source,
        })?;
        Ok((
            Self {
                tx,
                issued: std::sync::atomic::AtomicU64::new(0),
                durable,
                gone: std::sync::atomic::AtomicBool::new(false),
            },
            loaded,
        ))
    }

    /// Queues an operation. Called under the engine's core lock, so the
    /// order of operations is the order of changes.
    pub(crate) fn push(&self, op: Op) {
        let seq = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        // Said once: after a shutdown every later change would say it again.
        if self.tx.send(Mail::Work((seq, op))).is_err()
            && !self.gone.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "the MQTT store is closed (the server shut down) or its writer stopped; broker state is no longer stored"
            );
        }
    }

    /// The newest operation queued so far.
    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until operation `seq` and all before it are stored: true;
    /// false when the store failed or its writer is gone, so they never
    /// will be.
    pub(crate) async fn durable(&self, seq: u64) -> bool {
        let mut rx = self.durable.clone();
        match rx.wait_for(|d| d.failed || d.upto >= seq).await {
            Ok(d) => !d.failed,
            Err(_) => false,
        }
    }
}

/// Applies a batch in one transaction, then announces its last operation
/// as durable, or the store as failed.
fn write(
    conn: &mut Connection,
    batch: &mut Vec<(u64, Op)>,
    durable: &watch::Sender<Durable>,
    path: &str,
) {
    if durable.borrow().failed {
        batch.clear();
        return;
    }
    let last = batch.last().map_or(0, |(s, _)| *s);
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        for (_, op) in batch.drain(..) {
            apply(&tx, op)?;
        }
        tx.commit()
    })();
    match result {
        Ok(()) => durable.send_modify(|d| d.upto = last),
        Err(error) => {
            tracing::error!(%path, %error, "MQTT store write failed; stored messages and subscriptions are no longer acknowledged");
            durable.send_modify(|d| d.failed = true);
        }
    }
}

fn ids_text(ids: &Option<Box<[u32]>>) -> Option<String> {
    ids.as_ref()
        .map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
}

fn apply(tx: &rusqlite::Transaction<'_>, op: Op) -> rusqlite::Result<()> {
    match op {
        Op::RetainSet(m) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO retained (topic, payload, props, qos, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![&*m.topic, &m.payload[..], &m.props[..], m.qos, m.expires_at])?;
        }
        Op::RetainClear(topic) => {
            tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                .execute(params![&*topic])?;
        }
        Op::SessionPut {
            client_id,
            user,
            version,
            expiry_secs,
            subs,
        } => {
            let subs = serde_json::to_string(&subs).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sessions (client_id, user, version, expiry_secs, subs) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![&*client_id, user.as_deref(), version, expiry_secs, subs])?;
        }
        Op::SessionDel(client_id) => {
            tx.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
                .execute(params![&*client_id])?;
            tx.prepare_cached("DELETE FROM messages WHERE client_id = ?1")?
                .execute(params![&*client_id])?;
        }
        Op::MsgAdd { client_id, seq, d } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO messages (client_id, seq, state, pid, topic, payload, props, qos, retain, expires_at, sub_ids, to_id, to_user)
                 VALUES (?1, ?2, 0, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                &*client_id,
                seq as i64,
                &*d.msg.topic,
                &d.msg.payload[..],
                &d.msg.props[..],
                d.qos,
                d.retain,
                d.msg.expires_at,
                ids_text(&d.sub_ids),
                d.msg.to.as_ref().map(|to| &*to.id),
                d.msg.to.as_ref().map(|to| &*to.user),
            ])?;
        }
        Op::MsgState {
            client_id,
            seq,
            state,
            pid,
        } => {
            tx.prepare_cached(
                "UPDATE messages SET state = ?3, pid = ?4 WHERE client_id = ?1 AND seq = ?2",
            )?
            .execute(params![&*client_id, seq as i64, state, pid])?;
        }
        Op::MsgDel { client_id, seq } => {
            tx.prepare_cached("DELETE FROM messages WHERE client_id = ?1 AND seq = ?2")?
                .execute(params![&*client_id, seq as i64])?;
        }
    }
    Ok(())
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut retained = Vec::new();
    let mut st =
        conn.prepare("SELECT topic, payload, props, qos, expires_at FROM retained ORDER BY topic")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let topic: String = r.get(0)?;
        retained.push(Arc::new(Msg {
            topic: topic.into(),
            payload: Bytes::from(r.get::<_, Vec<u8>>(1)?),
            props: Bytes::from(r.get::<_, Vec<u8>>(2)?),
            qos: r.get(3)?,
            retain: true,
            expires_at: r.get(4)?,
            from: None,
            to: None,
            encoded: Default::default(),
        }));
    }
    let mut sessions = Vec::new();
    let mut st = conn.prepare(
        "SELECT client_id, user, version, expiry_secs, subs FROM sessions ORDER BY client_id",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let client_id: String = r.get(0)?;
        let user: Option<String> = r.get(1)?;
        let subs: String = r.get(4)?;
        sessions.push(LoadedSession {
            client_id: client_id.into(),
            user: user.map(Arc::from),
            version: r.get(2)?,
            expiry_secs: r.get(3)?,
            subs: serde_json::from_str(&subs).unwrap_or_default(),
            messages: Vec::new(),
        });
    }
    let mut st = conn.prepare(
        "SELECT seq, state, pid, topic, payload, props, qos, retain, expires_at, sub_ids, to_id, to_user
         FROM messages WHERE client_id = ?1 ORDER BY seq",
    )?;
    for s in &mut sessions {
        let mut rows = st.query(params![&*s.client_id])?;
        while let Some(r) = rows.next()? {
            let topic: String = r.get(3)?;
            let qos: u8 = r.get(6)?;
            let sub_ids: Option<String> = r.get(9)?;
            let to_id: Option<String> = r.get(10)?;
            let to_user: Option<String> = r.get(11)?;
            let to = to_id.map(|id| {
                let user = to_user.map_or_else(|| Arc::from(id.as_str()), Arc::from);
                Arc::new(Addressee {
                    id: id.into(),
                    user,
                })
            });
            let msg = Arc::new(Msg {
                topic: topic.into(),
                payload: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                props: Bytes::from(r.get::<_, Vec<u8>>(5)?),
                qos,
                retain: r.get(7)?,
                expires_at: r.get(8)?,
                from: None,
                to,
                encoded: Default::default(),
            });
            s.messages.push((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get(2)?,
                Delivery {
                    seq: 0,
                    retain: msg.retain,
                    msg,
                    qos,
                    sub_ids: sub_ids.map(|t| {
                        t.split(',')
                            .filter_map(|x| x.parse().ok())
                            .collect::<Vec<u32>>()
                            .into_boxed_slice()
                    }),
                },
            ));
        }
    }
    Ok(Loaded { retained, sessions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queued_message_keeps_its_addressee_in_a_store_made_before_addressing() {
        let dir = tempfile::tempdir().unwrap();
        // A store as the first schema made it, with a session and a
        // message queued for it.
        {
            let conn = rusqlite::Connection::open(dir.path().join("broker.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO sessions VALUES ('tb-a', 'tb-a', 4, 3600, '[]')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO messages VALUES ('tb-a', 1, 0, 0, 'x/y', x'7B7D', x'', 1, 0, NULL, NULL)",
                [],
            )
            .unwrap();
        }
        let (store, loaded) = Store::open(dir.path(), None).await.unwrap();
        let old = &loaded.sessions[0].messages[0].3;
        assert_eq!(&*old.msg.topic, "x/y");
        assert!(
            old.msg.to.is_none(),
            "an old message is for every subscriber"
        );

        let to =
            Addressee::for_topic("tb-a", "token-a", "v1/devices/me/rpc/request/1").map(Arc::new);
        assert!(to.is_some(), "the topic does not name the device");
        let msg = Arc::new(Msg {
            topic: "v1/devices/me/rpc/request/1".into(),
            payload: Bytes::from_static(b"{}"),
            props: Bytes::new(),
            qos: 1,
            retain: false,
            expires_at: None,
            from: None,
            to: to.clone(),
            encoded: Default::default(),
        });
        let d = Delivery {
            seq: 2,
            msg,
            qos: 1,
            retain: false,
            sub_ids: None,
        };
        store.push(Op::MsgAdd {
            client_id: "tb-a".into(),
            seq: 2,
            d,
        });
        assert!(store.durable(store.issued()).await);
        drop(store);

        let (_, loaded) = Store::open(dir.path(), None).await.unwrap();
        let messages = &loaded.sessions[0].messages;
        assert_eq!(messages.len(), 2);
        assert!(messages[0].3.msg.to.is_none());
        assert_eq!(messages[1].3.msg.to, to, "the addressee survives");
        let to = messages[1].3.msg.to.as_deref().unwrap();
        assert!(to.is("random-client", Some("token-a")));
        assert!(to.is("tb-a", None));
        assert!(!to.is("tb-b", Some("token-b")));
    }

    #[tokio::test]
    async fn a_write_that_fails_makes_nothing_durable_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), None).await.unwrap();
        store.push(Op::RetainClear("a/b".into()));
        assert!(store.durable(store.issued()).await, "a write that works");

        // The file loses a table behind the writer's back: its next write
        // fails.
        rusqlite::Connection::open(dir.path().join("broker.db"))
            .unwrap()
            .execute_batch("DROP TABLE retained")
            .unwrap();
        store.push(Op::RetainClear("a/b".into()));
        assert!(!store.durable(store.issued()).await, "the failed write");
        // A later operation would write (sessions are intact), but the
        // file is already behind memory.
        store.push(Op::SessionDel("c".into()));
        assert!(!store.durable(store.issued()).await, "after the failure");
    }
}
