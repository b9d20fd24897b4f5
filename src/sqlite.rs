//! The SQLite files kept under `--data-dir` (devices, commands, edge
//! nodes, stubs, broker state): how one is opened, and the one thread that
//! owns each.
//!
//! Opening: WAL with `synchronous = NORMAL`, and a schema moved forward by
//! numbered migrations recorded in `PRAGMA user_version`, all in one
//! transaction. A file written by a newer iotmock is refused, not guessed
//! at; so are a zero-length file (a cache restored empty would otherwise
//! start an empty fleet without a word) and a file that is not iotmock's
//! (not SQLite, or another program's database).
//!
//! Owning: a database has exactly one connection, held by one named
//! thread of its own (never a runtime thread: every SQLite call may wait
//! on the disk). The thread opens the file itself, then takes work from a
//! bounded inbox and runs whatever has arrived together in one
//! transaction ([`spawn_writer`]). Two shapes share that thread:
//!
//! - [`Db`], for the fleet, commands, edge nodes and stubs: an async
//!   [`Db::call`] sends a closure over a channel of [`JOB_CAPACITY`] jobs
//!   (a caller that finds it full waits for room; nothing is dropped) and
//!   returns the closure's answer once its transaction has committed. Each
//!   job runs in a savepoint of its own: a job that fails leaves nothing
//!   behind and does not undo the jobs batched with it. Reads go the same
//!   way, so they see every write answered before them.
//! - The broker's store (`mqtt::store`), whose operations are queued
//!   synchronously under the engine's core lock (their order is the order
//!   of changes) and waited for through a durable watermark: it brings its
//!   own std channel and batch function and shares the thread and the
//!   batching.
//!
//! Closing: a server registers every thread it starts in its [`Writers`],
//! and its shutdown closes them all ([`Writers::close`]): each thread
//! takes no new work from then on (a [`Db::call`] made after it gets an
//! error saying the database is closed), finishes and commits what was
//! already queued, closes its connection and ends, and the shutdown waits
//! for that. Closing the last connection checkpoints the WAL into the
//! file and removes the `-wal` and `-shm` files, so once a shutdown has
//! returned, the folder holds only the database files, and a new server
//! may open them at once. Without a registry (a store opened on its own),
//! the thread ends when the last handle is dropped.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, ffi};
use tokio::sync::{mpsc, oneshot};

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
    #[error("{path}: could not start the thread that owns it: {source}")]
    Thread {
        path: String,
        source: std::io::Error,
    },
}

/// Marks a database as iotmock's (`PRAGMA application_id`, "iotm").
const APPLICATION_ID: i32 = 0x696f_746d;

/// Jobs waiting for one database's thread, at most. A caller that finds
/// them all taken waits for room (back-pressure): nothing is dropped, and
/// the wait is async, so no runtime thread blocks.
pub(crate) const JOB_CAPACITY: usize = 1024;

/// Most jobs one transaction takes: a burst is committed in a few
/// transactions instead of one each, and no caller waits on an unbounded
/// one.
const MAX_BATCH: usize = 256;

/// What a writer thread's inbox carries: work, or the word to close.
pub(crate) enum Mail<T> {
    Work(T),
    /// Take nothing more: finish what was sent before, then end.
    Close,
}

/// Where a writer thread takes its work from: a channel whose receiving
/// end can block (the thread is not a runtime thread).
pub(crate) trait Inbox: Send + 'static {
    type Item: Send;
    /// Waits for the next mail; `None` once no more can come (every
    /// sender is gone, or the inbox was closed and is empty).
    fn wait(&mut self) -> Option<Mail<Self::Item>>;
    /// The next mail if one has arrived.
    fn ready(&mut self) -> Option<Mail<Self::Item>>;
    /// Refuses mail from now on; what was sent before still comes out of
    /// [`Inbox::wait`].
    fn close(&mut self);
}

/// A std channel's receiving end, for a sender that cannot await (the
/// broker's store queues under a std lock). A std channel cannot refuse
/// senders while its receiver lives, so closing only stops the waiting:
/// what has arrived is taken, and a send after the thread ended fails.
pub(crate) struct SyncInbox<T> {
    rx: std::sync::mpsc::Receiver<Mail<T>>,
    closed: bool,
}

impl<T> SyncInbox<T> {
    pub(crate) fn new(rx: std::sync::mpsc::Receiver<Mail<T>>) -> Self {
        Self { rx, closed: false }
    }
}

impl<T: Send + 'static> Inbox for SyncInbox<T> {
    type Item = T;
    fn wait(&mut self) -> Option<Mail<T>> {
        if self.closed {
            self.rx.try_recv().ok()
        } else {
            self.rx.recv().ok()
        }
    }
    fn ready(&mut self) -> Option<Mail<T>> {
        self.rx.try_recv().ok()
    }
    fn close(&mut self) {
        self.closed = true;
    }
}

/// Tokio's receiver refuses senders once closed and still hands out
/// everything sent before (a send that got in is never lost).
impl<T: Send + 'static> Inbox for mpsc::Receiver<Mail<T>> {
    type Item = T;
    fn wait(&mut self) -> Option<Mail<T>> {
        self.blocking_recv()
    }
    fn ready(&mut self) -> Option<Mail<T>> {
        self.try_recv().ok()
    }
    fn close(&mut self) {
        mpsc::Receiver::close(self);
    }
}

/// The writer threads one server started, so that its shutdown can close
/// them and wait until they have ended. Several servers may run in one
/// process, so each has its own.
#[derive(Default)]
pub(crate) struct Writers {
    // A std lock: held only to push or take the list, never across an
    // `.await`.
    started: std::sync::Mutex<Vec<Writer>>,
}

/// Sends a writer thread [`Mail::Close`] (may wait for room in its inbox).
pub(crate) type Closer = Box<dyn FnOnce() + Send>;

struct Writer {
    thread: std::thread::JoinHandle<()>,
    close: Closer,
}

impl Writers {
    /// Closes every thread registered so far and returns once each has
    /// committed what it had been sent, closed its file and ended. Work
    /// sent after this began is refused.
    pub(crate) async fn close(&self) {
        let started = std::mem::take(&mut *self.started.lock().unwrap());
        if started.is_empty() {
            return;
        }
        // Sending may wait for room in a full inbox and joining waits on
        // the disk: neither on a runtime thread. All are told first, so
        // they finish side by side.
        let joined = tokio::task::spawn_blocking(move || {
            let mut threads = Vec::with_capacity(started.len());
            for writer in started {
                (writer.close)();
                threads.push(writer.thread);
            }
            for thread in threads {
                let name = thread.thread().name().unwrap_or_default().to_string();
                if thread.join().is_err() {
                    tracing::error!(thread = %name, "a database thread panicked");
                }
            }
        })
        .await;
        if let Err(error) = joined {
            tracing::error!(%error, "closing the databases failed");
        }
    }

    /// Threads registered and not yet closed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.started.lock().unwrap().len()
    }
}

/// Starts the thread named `thread` that owns the database at `path` (in
/// memory when `None`): it opens the file with `migrations`, runs `start`
/// on it (a start-up read, whose answer this returns), then hands
/// `batch` whatever `inbox` holds, up to `max_batch` items at a time,
/// until every sender is gone or it is closed. `batch` leaves the items
/// it is given consumed or not; they are cleared after it returns.
///
/// With `writers`, the thread is registered there once the file is open,
/// with `close` (which sends it [`Mail::Close`]) for the server's shutdown.
///
/// The caller waits without holding a runtime thread. A panic while
/// opening or in `start` is raised again here.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn spawn_writer<I, S>(
    thread: String,
    path: Option<PathBuf>,
    migrations: &'static [&'static str],
    mut inbox: I,
    max_batch: usize,
    start: impl FnOnce(&mut Connection) -> S + Send + 'static,
    mut batch: impl FnMut(&mut Connection, &mut Vec<I::Item>) + Send + 'static,
    writers: Option<(&Writers, Closer)>,
) -> Result<S, OpenError>
where
    I: Inbox,
    S: Send + 'static,
{
    let shown = shown(path.as_deref());
    let (opened_tx, opened) = oneshot::channel();
    let handle = std::thread::Builder::new()
        .name(thread)
        .spawn(move || {
            let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut conn = open(path.as_deref(), migrations)?;
                let started = start(&mut conn);
                Ok((conn, started))
            }));
            let mut conn = match first {
                Ok(Ok((conn, started))) => {
                    let _ = opened_tx.send(Ok(Ok(started)));
                    conn
                }
                Ok(Err(error)) => {
                    let _ = opened_tx.send(Ok(Err(error)));
                    return;
                }
                Err(panic) => {
                    let _ = opened_tx.send(Err(panic));
                    return;
                }
            };
            let mut items = Vec::with_capacity(max_batch.min(1024));
            let take = |inbox: &mut I, mail: Mail<I::Item>, items: &mut Vec<I::Item>| match mail {
                Mail::Work(item) => items.push(item),
                Mail::Close => inbox.close(),
            };
            while let Some(first) = inbox.wait() {
                take(&mut inbox, first, &mut items);
                while items.len() < max_batch {
                    match inbox.ready() {
                        Some(mail) => take(&mut inbox, mail, &mut items),
                        None => break,
                    }
                }
                if !items.is_empty() {
                    batch(&mut conn, &mut items);
                    items.clear();
                }
            }
            // Closed here, before the thread ends, so whoever joins it
            // finds the file closed (and its WAL folded back in).
            if let Err((_, error)) = conn.close() {
                tracing::warn!(%error, "closing a database failed; SQLite closes it when the process ends");
            }
        })
        .map_err(|source| OpenError::Thread {
            path: shown.clone(),
            source,
        })?;
    let opened = match opened.await {
        Ok(Ok(opened)) => opened,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The thread answers before it can end (panics are caught).
        Err(_) => Err(OpenError::Thread {
            path: shown,
            source: std::io::Error::other("it ended before opening the file"),
        }),
    }?;
    if let Some((writers, close)) = writers {
        writers.started.lock().unwrap().push(Writer {
            thread: handle,
            close,
        });
    }
    Ok(opened)
}

fn shown(path: Option<&Path>) -> String {
    path.map_or_else(|| ":memory:".to_string(), |p| p.display().to_string())
}

/// One database, owned by its own thread: the handle the fleet, command,
/// edge and stub stores hold. Cheap to clone; the thread ends (after the
/// jobs already queued) when its server's [`Writers`] close it, or, when
/// it has none, when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Db {
    jobs: mpsc::Sender<Mail<Box<dyn Job>>>,
    /// The file, for errors.
    name: Arc<str>,
}

impl Db {
    /// Opens `path` (an in-memory database when `None`) with `migrations`
    /// on a new thread named after the file, registered in `writers`.
    pub(crate) async fn open(
        path: Option<&Path>,
        migrations: &'static [&'static str],
        writers: Option<&Writers>,
    ) -> Result<Self, OpenError> {
        Self::open_with(path, migrations, JOB_CAPACITY, writers).await
    }

    async fn open_with(
        path: Option<&Path>,
        migrations: &'static [&'static str],
        capacity: usize,
        writers: Option<&Writers>,
    ) -> Result<Self, OpenError> {
        let file = path
            .and_then(Path::file_name)
            .map_or_else(|| "memory".into(), |f| f.to_string_lossy());
        let (jobs, inbox) = mpsc::channel(capacity);
        let closer = jobs.clone();
        let close: Closer = Box::new(move || {
            // Waits for room behind the jobs already queued; fails only
            // when the thread is gone already.
            let _ = closer.blocking_send(Mail::Close);
        });
        spawn_writer(
            format!("sqlite {file}"),
            path.map(Path::to_path_buf),
            migrations,
            inbox,
            MAX_BATCH,
            |_| (),
            run_batch,
            writers.map(|w| (w, close)),
        )
        .await?;
        Ok(Self {
            jobs,
            name: shown(path).into(),
        })
    }

    /// Runs `work` on the database's thread and returns its answer once
    /// the transaction it ran in has committed (so a change answered here
    /// is stored). `work` runs in a savepoint: when it returns an error
    /// its changes are rolled back; when its batch cannot commit, the
    /// answer is that error.
    ///
    /// A job that panics is a bug, not a storage failure: its changes are
    /// rolled back, the thread carries on with the next job, and the panic
    /// is raised again here, in the caller. A job whose caller stopped
    /// waiting still runs (like a request already sent).
    pub(crate) async fn call<T, E>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Call {
            work: Some(work),
            done: None,
            reply,
        });
        if self.jobs.send(Mail::Work(job)).await.is_err() {
            return Err(self.closed().into());
        }
        match answer.await {
            Ok(Ok(done)) => done,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(self.stopped().into()),
        }
    }

    /// The database takes no more work: its server has shut down.
    fn closed(&self) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_MISUSE),
            Some(format!(
                "{} is closed (its server has shut down), so nothing was done; start a server again to use it",
                self.name
            )),
        )
    }

    /// The thread is gone without answering: only if it panicked outside
    /// a job, which the batch loop does not do; said rather than assumed.
    fn stopped(&self) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_ABORT),
            Some(format!("the thread that owns {} has stopped", self.name)),
        )
    }
}

/// A job as the database's thread sees it.
trait Job: Send {
    /// Runs the work; false when it failed or panicked (its savepoint is
    /// then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Sends the answer once the batch is over: the work's own, or
    /// `failed` when the work did not run or its changes did not commit.
    fn answer(self: Box<Self>, failed: Option<&rusqlite::Error>);
}

type Done<T, E> = std::thread::Result<Result<T, E>>;

struct Call<F, T, E> {
    work: Option<F>,
    done: Option<Done<T, E>>,
    reply: oneshot::Sender<Done<T, E>>,
}

impl<F, T, E> Job for Call<F, T, E>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    T: Send,
    E: From<rusqlite::Error> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)));
        let kept = matches!(done, Ok(Ok(_)));
        self.done = Some(done);
        kept
    }

    fn answer(self: Box<Self>, failed: Option<&rusqlite::Error>) {
        let done = match (self.done, failed) {
            // Its own failure (or panic) says more than the batch's.
            (Some(done @ (Ok(Err(_)) | Err(_))), _) => done,
            (Some(done), None) => done,
            (_, Some(error)) => Ok(Err(copy_error(error).into())),
            (None, None) => Ok(Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_ABORT),
                Some("the job was not run".into()),
            )
            .into())),
        };
        let _ = self.reply.send(done);
    }
}

/// Runs a batch of jobs in one transaction, each in a savepoint, and
/// answers them after the commit. When the transaction itself fails
/// (begin, savepoint or commit) nothing of the batch is kept and every job
/// that had not failed on its own is answered with that error.
fn run_batch(conn: &mut Connection, jobs: &mut Vec<Box<dyn Job>>) {
    let outcome = (|| -> rusqlite::Result<()> {
        // Immediate: the write lock is taken at BEGIN, where SQLite's busy
        // timeout applies, rather than by the first write after a read in
        // the batch, which another writer to the file would fail at once.
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in jobs.iter_mut() {
            let sp = tx.savepoint()?;
            if job.run(&sp) {
                sp.commit()?;
            } else {
                // Rolls back to the savepoint and releases it.
                sp.finish()?;
            }
        }
        tx.commit()
    })();
    let failed = outcome.err();
    for job in jobs.drain(..) {
        job.answer(failed.as_ref());
    }
}

/// An error for each job of a failed batch (rusqlite's is not `Clone`).
fn copy_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Opens `path` (an in-memory database when `None`) and applies the
/// migrations it has not seen; entry N takes the schema from version N to
/// N+1.
pub(crate) fn open(path: Option<&Path>, migrations: &[&str]) -> Result<Connection, OpenError> {
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

    const LOG: &[&str] = &["CREATE TABLE log (n INTEGER NOT NULL);"];

    fn count(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT count(*) FROM log", [], |r| r.get(0))
    }

    /// Jobs sent and not yet taken by the thread.
    fn queued(db: &Db) -> usize {
        db.jobs.max_capacity() - db.jobs.capacity()
    }

    async fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Holds the database's thread in a job until the returned sender
    /// says go (or is dropped).
    async fn hold(
        db: &Db,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<rusqlite::Result<()>>,
    ) {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (running_tx, running) = oneshot::channel();
        let holder = db.clone();
        let held = tokio::spawn(async move {
            holder
                .call(move |_| {
                    let _ = running_tx.send(());
                    let _ = wait.recv();
                    Ok(())
                })
                .await
        });
        running.await.unwrap();
        (go, held)
    }

    fn insert(db: &Db, n: i64) -> tokio::task::JoinHandle<rusqlite::Result<usize>> {
        let db = db.clone();
        tokio::spawn(async move {
            db.call(move |conn| conn.execute("INSERT INTO log (n) VALUES (?1)", [n]))
                .await
        })
    }

    #[tokio::test]
    async fn jobs_run_in_the_order_they_were_sent() {
        let db = Db::open(None, LOG, None).await.unwrap();
        let (go, held) = hold(&db).await;
        // Sent one after another while the thread is busy, more than one
        // transaction takes: they run in that order, across batches.
        let total = MAX_BATCH + 44;
        let mut callers = Vec::new();
        for n in 0..total {
            callers.push(insert(&db, n as i64));
            wait_until("a job was not queued", || queued(&db) == n + 1).await;
        }
        go.send(()).unwrap();
        held.await.unwrap().unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap(), 1);
        }
        let seen: Vec<i64> = db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT n FROM log ORDER BY rowid")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<i64>>>()
            })
            .await
            .unwrap();
        assert_eq!(seen, (0..total as i64).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_comes_after_its_transaction_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(Some(&path), LOG, None).await.unwrap();
        // Many callers at once, so answers come out of shared batches:
        // each looks through a connection of its own the moment it is
        // answered, and must find its row there already.
        let tasks: Vec<_> = (0..200i64)
            .map(|n| {
                let (db, path) = (db.clone(), path.clone());
                tokio::spawn(async move {
                    db.call(move |conn| conn.execute("INSERT INTO log (n) VALUES (?1)", [n]))
                        .await
                        .unwrap();
                    let other = Connection::open(&path).unwrap();
                    let found: i64 = other
                        .query_row("SELECT count(*) FROM log WHERE n = ?1", [n], |r| r.get(0))
                        .unwrap();
                    assert_eq!(found, 1, "row {n} not committed when answered");
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_failed_job_leaves_nothing_and_spares_its_neighbours() {
        let db = Db::open(None, LOG, None).await.unwrap();
        let (first, failed, last) = tokio::join!(
            db.call(|conn| conn.execute("INSERT INTO log (n) VALUES (1)", [])),
            db.call(|conn| {
                conn.execute("INSERT INTO log (n) VALUES (2)", [])?;
                conn.execute("INSERT INTO nowhere (n) VALUES (2)", [])
            }),
            db.call(|conn| conn.execute("INSERT INTO log (n) VALUES (3)", [])),
        );
        assert_eq!((first.unwrap(), last.unwrap()), (1, 1));
        assert!(
            failed
                .unwrap_err()
                .to_string()
                .contains("no such table: nowhere")
        );
        let seen: i64 = db
            .call(|conn| conn.query_row("SELECT sum(n) FROM log", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(seen, 4, "rows 1 and 3 kept, 2 rolled back");
    }

    #[tokio::test]
    async fn a_panicking_job_panics_its_caller_and_the_thread_carries_on() {
        let db = Db::open(None, LOG, None).await.unwrap();
        let panicking = db.clone();
        let caller = tokio::spawn(async move {
            panicking
                .call(|conn| -> rusqlite::Result<()> {
                    conn.execute("INSERT INTO log (n) VALUES (1)", [])?;
                    panic!("a bug in a job");
                })
                .await
        });
        let neighbour = db.call(|conn| conn.execute("INSERT INTO log (n) VALUES (2)", []));
        let (caller, neighbour) = tokio::join!(caller, neighbour);
        let panic = caller.unwrap_err().into_panic();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"a bug in a job"));
        assert_eq!(neighbour.unwrap(), 1);
        // The thread still answers, and the panicking job's row is gone.
        let seen: Vec<i64> = db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT n FROM log")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<i64>>>()
            })
            .await
            .unwrap();
        assert_eq!(seen, [2]);
    }

    #[tokio::test]
    async fn a_full_queue_makes_callers_wait_and_drops_nothing() {
        const CAPACITY: usize = 4;
        let db = Db::open_with(None, LOG, CAPACITY, None).await.unwrap();
        let (go, held) = hold(&db).await;
        let extra = 3;
        let callers: Vec<_> = (0..(CAPACITY + extra) as i64)
            .map(|n| insert(&db, n))
            .collect();
        // The queue fills and stays full: the callers beyond it wait to
        // send instead of growing it.
        wait_until("the queue never filled", || queued(&db) == CAPACITY).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(queued(&db), CAPACITY);
        assert!(callers.iter().all(|c| !c.is_finished()));
        go.send(()).unwrap();
        held.await.unwrap().unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap(), 1);
        }
        let stored = db.call(count).await.unwrap();
        assert_eq!(stored, (CAPACITY + extra) as i64, "every waiting job ran");
    }

    #[tokio::test]
    async fn an_open_error_comes_back_from_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = Db::open(Some(&empty), LOG, None).await.err().unwrap();
        assert!(err.to_string().contains("is empty (zero bytes)"), "{err}");
    }

    /// The files next to `path` (its `-wal` and `-shm`, when they exist).
    fn beside(path: &Path) -> Vec<String> {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut found: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| f.starts_with(&name))
            .collect();
        found.sort();
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_commits_what_was_queued_then_refuses_and_ends_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writers = Writers::default();
        let db = Db::open(Some(&path), LOG, Some(&writers)).await.unwrap();
        assert_eq!(writers.len(), 1);
        let (go, held) = hold(&db).await;
        // Queued behind a busy thread when the close comes: each is still
        // run and committed before the close returns.
        let queued_before: Vec<_> = (0..50).map(|n| insert(&db, n)).collect();
        wait_until("the jobs were not queued", || queued(&db) == 50).await;
        let closing = tokio::spawn(async move { writers.close().await });
        wait_until("the close was not queued", || queued(&db) == 51).await;
        go.send(()).unwrap();
        held.await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), closing)
            .await
            .expect("the close returns once the thread ended")
            .unwrap();
        for caller in queued_before {
            assert_eq!(caller.await.unwrap().unwrap(), 1);
        }
        // The thread is gone and the file closed: the WAL was folded back
        // into it and removed with the shared-memory file.
        assert_eq!(beside(&path), ["t.db"]);
        let other = Connection::open(&path).unwrap();
        assert_eq!(count(&other).unwrap(), 50);
        // Work sent afterwards is refused at once, saying why.
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            db.call(|conn| conn.execute("INSERT INTO log (n) VALUES (99)", [])),
        )
        .await
        .expect("a call to a closed database does not hang")
        .unwrap_err();
        assert!(refused.to_string().contains("t.db is closed"), "{refused}");
        assert_eq!(count(&other).unwrap(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_waiting_for_room_at_close_are_run_or_refused_never_left_hanging() {
        const CAPACITY: usize = 4;
        let writers = Writers::default();
        let db = Db::open_with(None, LOG, CAPACITY, Some(&writers))
            .await
            .unwrap();
        let (go, held) = hold(&db).await;
        let callers: Vec<_> = (0..20).map(|n| insert(&db, n)).collect();
        wait_until("the queue never filled", || queued(&db) == CAPACITY).await;
        let closing = tokio::spawn(async move { writers.close().await });
        go.send(()).unwrap();
        held.await.unwrap().unwrap();
        closing.await.unwrap();
        let mut done = 0;
        for caller in callers {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), caller)
                .await
                .expect("no caller is left waiting")
                .unwrap();
            match answer {
                Ok(1) => done += 1,
                Ok(n) => panic!("inserted {n} rows"),
                Err(e) => assert!(e.to_string().contains("is closed"), "{e}"),
            }
        }
        assert!(
            done >= CAPACITY,
            "the jobs queued before the close ran: {done}"
        );
    }

    #[tokio::test]
    async fn without_a_registry_the_thread_ends_with_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(Some(&path), LOG, None).await.unwrap();
        db.call(|conn| conn.execute("INSERT INTO log (n) VALUES (1)", []))
            .await
            .unwrap();
        assert!(beside(&path).len() > 1, "WAL in use while open");
        drop(db);
        wait_until("the file was never closed", || beside(&path) == ["t.db"]).await;
    }

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
