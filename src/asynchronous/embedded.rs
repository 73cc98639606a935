//! The embedded store of asynchronous invocations: one gateway's events in a SQLite
//! database (`events.db`, WAL mode) in `async.path`. An event is committed and fsync'd
//! before `enqueue` returns, so a 202 survives SIGKILL and power loss; waiting events
//! stay on disk (a million queued events cost disk, not RAM); attempts that a killed
//! gateway left `running` count as failed attempts when the store is opened again.
//!
//! SQLite calls block, so each one runs in `spawn_blocking`: writes on one connection
//! (SQLite has one writer at a time anyway), reads on a second one, which WAL lets run
//! beside the writer. Events accepted while a commit is under way share the next one
//! (group commit), so concurrent submissions are not held to one fsync each. A lock file (`flock`) keeps a second gateway off the same folder.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::store::{
    Aborted, Attempt, Claimed, EventRecord, FunctionCounts, FunctionKey, ListQuery, NewEvent,
    Order, Policy, Receipt, Status, StoreError, Trigger,
};

/// The database, in the store's folder.
const DATABASE_FILE: &str = "events.db";
/// Held (`flock`, exclusive) while a gateway has the store open.
const LOCK_FILE: &str = "events.lock";

/// Schema migrations: step `i` takes `PRAGMA user_version` from `i` to `i + 1`. A new
/// schema appends a step; steps already released never change.
const MIGRATIONS: &[&str] = &[
    // 1: the events table. `seq` (the rowid) orders events accepted in the same
    // millisecond; `id` is the request id's 16 bytes. Times are milliseconds since the
    // UNIX epoch.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        namespace TEXT NOT NULL,
        function TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        trigger TEXT NOT NULL,
        content_type TEXT,
        body BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        enqueued_at INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        lease_until INTEGER,
        started_at INTEGER,
        ended_at INTEGER,
        status_code INTEGER,
        result BLOB,
        error TEXT
    );
    -- claim: a function's due queued events in due order; also covers counts.
    CREATE INDEX events_claim ON events (namespace, function, status, due_at, enqueued_at);
    -- list: a function's events by acceptance (the rowid breaks ties).
    CREATE INDEX events_list ON events (namespace, function, enqueued_at);
    -- recovery at open: the few running events.
    CREATE INDEX events_running ON events (status) WHERE status = 'running';
    -- purge: final events by end.
    CREATE INDEX events_purge ON events (ended_at) WHERE ended_at IS NOT NULL;",
];

/// The schema this gateway writes.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The error of an attempt during which the gateway stopped (found `running` at open).
const STOPPED_ERROR: &str = r#"{"errorCode": 405, "errorMessage": "The gateway stopped during the attempt", "statusCode": 405}"#;
/// The error of an attempt whose lease ran out without an answer being recorded.
const LEASE_ERROR: &str = r#"{"errorCode": 405, "errorMessage": "The attempt ended without an outcome before its lease expired", "statusCode": 405}"#;
/// The status code of both.
const LOST_ATTEMPT_STATUS: u16 = 405;

/// The columns of an [`EventRecord`], in the order [`record`] reads them.
const RECORD_COLUMNS: &str = "id, namespace, function, qualifier, status, attempts, \
     enqueued_at, started_at, ended_at, status_code, result, error";

/// Events kept in SQLite in one folder. See the module documentation.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `events.db`, for messages.
    database: PathBuf,
    policy: Policy,
    /// Every write: one writer at a time is SQLite's rule anyway.
    writer: Mutex<Connection>,
    /// `get`, `list` and `counts`, which WAL lets run beside a write.
    reader: Mutex<Connection>,
    /// Events waiting for the next group commit.
    pending: Mutex<Pending>,
    /// Holds the folder's `flock` until the connections are closed (fields drop in
    /// order).
    _lock: File,
}

impl EmbeddedStore {
    /// Opens the store in `path` (creating the folder and the database if needed),
    /// brings its schema up to date, and turns attempts a stopped gateway left
    /// `running` into failed attempts (retried, or failed, by `policy`).
    pub async fn open(path: &Path, policy: Policy) -> Result<EmbeddedStore, StoreError> {
        let path = path.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(&path, policy))
            .await
            .map_err(|e| StoreError::Failed(format!("opening the event store: {e}")))??;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// Commits the event (fsync'd) before returning. Events accepted while a commit is
    /// under way are committed together by the next one: one fsync for the group.
    pub async fn enqueue(&self, event: NewEvent) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        let schedule = {
            let mut pending = self.inner.pending.lock();
            pending.events.push((event, done));
            !std::mem::replace(&mut pending.scheduled, true)
        };
        if schedule {
            let inner = self.inner.clone();
            // Detached: every waiting event's sender is answered or dropped by it.
            drop(tokio::task::spawn_blocking(move || inner.commit_pending()));
        }
        committed.await.map_err(|_| {
            StoreError::Failed(format!(
                "enqueue in {}: the commit was abandoned",
                self.inner.database.display()
            ))
        })?
    }

    /// The function's next due queued event, now `running` with its attempt counted
    /// and leased for `lease`. Running events of the function whose lease ran out are
    /// first counted as failed attempts.
    pub async fn claim(
        &self,
        function: &FunctionKey,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let function = function.clone();
        self.write_relaxed("claim", move |conn, policy| {
            claim(conn, policy, &function, lease, now_ms())
        })
        .await
    }

    pub async fn started(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        let id = claimed.id;
        let attempt = claimed.attempt;
        self.write_relaxed("started", move |conn, _| {
            let now = now_ms();
            conn.execute(
                "UPDATE events SET started_at = ?1, lease_until = ?2
                 WHERE id = ?3 AND status = 'running' AND attempts = ?4",
                params![now, add_ms(now, lease), id.as_bytes(), attempt],
            )?;
            Ok(())
        })
        .await
    }

    /// Records the attempt's outcome. An event no longer running this attempt (its
    /// lease ran out and it moved on) is left as it is; its status now is returned.
    pub async fn finish(&self, claimed: &Claimed, attempt: Attempt) -> Result<Status, StoreError> {
        let id = claimed.id;
        let number = claimed.attempt;
        self.write_relaxed("finish", move |conn, policy| {
            finish(conn, policy, id, number, attempt, now_ms())
        })
        .await?
        .ok_or_else(|| {
            StoreError::Failed(format!(
                "finish in {}: no event {id}",
                self.inner.database.display()
            ))
        })
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.read("get", move |conn| get(conn, id)).await
    }

    pub async fn list(
        &self,
        function: &FunctionKey,
        query: &ListQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let function = function.clone();
        let query = query.clone();
        self.read("list", move |conn| list(conn, &function, &query))
            .await
    }

    pub async fn abort(&self, id: Uuid) -> Result<Aborted, StoreError> {
        self.write("abort", move |conn, _| abort(conn, id, now_ms()))
            .await
    }

    pub async fn counts(&self) -> Result<Vec<FunctionCounts>, StoreError> {
        self.read("counts", counts).await
    }

    /// Deletes final events that ended more than the retention ago, a chunk per
    /// transaction so that submissions are not held up behind a large purge.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let before = now_ms().saturating_sub(duration_ms(self.inner.policy.retention));
        let mut removed = 0;
        loop {
            let chunk = self
                .write("purge", move |conn, _| {
                    conn.execute(
                        "DELETE FROM events WHERE seq IN (
                             SELECT seq FROM events
                             WHERE ended_at IS NOT NULL AND ended_at < ?1 LIMIT ?2)",
                        params![before, PURGE_CHUNK],
                    )
                })
                .await?;
            removed += chunk as u64;
            if chunk < PURGE_CHUNK {
                return Ok(removed);
            }
        }
    }

    /// One gateway per store: every caller is the first.
    pub async fn once(&self, _key: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Runs `f` on the writer connection, off the runtime.
    async fn write<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Policy) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock();
            f(&mut conn, &inner.policy).map_err(|e| inner.failed(what, e))
        })
        .await;
        outcome.map_err(|e| StoreError::Failed(format!("{what}: {e}")))?
    }

    /// [`EmbeddedStore::write`] for the records of attempts (claims, starts, outcomes),
    /// committed without their own fsync (`synchronous = NORMAL`): they survive the
    /// gateway being killed, and reach the disk with the next event's fsync'd commit.
    /// Power lost before that can only make an attempt run again, which at-least-once
    /// delivery allows; the dispatcher, which writes one after another, is not held to
    /// the disk's pace.
    async fn write_relaxed<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Policy) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write(what, move |conn, policy| {
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
            let done = f(conn, policy);
            conn.execute_batch("PRAGMA synchronous = FULL")?;
            done
        })
        .await
    }

    /// Runs `f` on the reader connection, off the runtime.
    async fn read<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let conn = inner.reader.lock();
            f(&conn).map_err(|e| inner.failed(what, e))
        })
        .await;
        outcome.map_err(|e| StoreError::Failed(format!("{what}: {e}")))?
    }
}

impl Inner {
    fn open(path: &Path, policy: Policy) -> Result<Inner, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Failed(format!(
                "cannot create the event store's folder {}: {e}",
                path.display()
            ))
        })?;
        let lock = lock(path)?;
        let database = path.join(DATABASE_FILE);
        let opening = |e: rusqlite::Error| {
            StoreError::Failed(format!(
                "cannot open the event store at {}: {e}",
                database.display()
            ))
        };

        let mut writer = Connection::open(&database).map_err(opening)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(opening)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Failed(format!(
                "the event store at {} cannot use WAL mode (journal mode {mode})",
                database.display()
            )));
        }
        // FULL: each commit fsyncs the WAL, so a committed event survives power loss.
        writer
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(opening)?;
        migrate(&mut writer, &database)?;
        recover(&mut writer, &policy, now_ms()).map_err(opening)?;

        let reader = Connection::open(&database).map_err(opening)?;
        reader
            .execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
            .map_err(opening)?;

        Ok(Inner {
            database,
            policy,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            pending: Mutex::new(Pending::default()),
            _lock: lock,
        })
    }

    fn failed(&self, what: &str, e: rusqlite::Error) -> StoreError {
        StoreError::Failed(format!("{what} in {}: {e}", self.database.display()))
    }

    /// Commits the pending events, at most [`MAX_GROUP`] per transaction, and answers
    /// each one's sender. Taking the batch only once the writer is ours gathers every
    /// event that arrived during the previous commit.
    fn commit_pending(&self) {
        let mut conn = self.writer.lock();
        loop {
            let (batch, more) = {
                let mut pending = self.pending.lock();
                let take = pending.events.len().min(MAX_GROUP);
                let batch: Vec<_> = pending.events.drain(..take).collect();
                let more = !pending.events.is_empty();
                // Nothing left: the next `enqueue` schedules a new commit.
                pending.scheduled = more;
                (batch, more)
            };
            if batch.is_empty() {
                return;
            }
            match insert_group(&mut conn, &batch) {
                Ok(outcomes) => {
                    for ((_, done), outcome) in batch.into_iter().zip(outcomes) {
                        let _ = done.send(outcome.map_err(|e| self.failed("enqueue", e)));
                    }
                }
                Err(e) => {
                    let error = self.failed("enqueue", e);
                    for (_, done) in batch {
                        let _ = done.send(Err(error.clone()));
                    }
                }
            }
            if !more {
                return;
            }
        }
    }
}

/// Events accepted and not yet committed.
#[derive(Default)]
struct Pending {
    events: Vec<(NewEvent, oneshot::Sender<Result<(), StoreError>>)>,
    /// A blocking task will commit `events`.
    scheduled: bool,
}

/// The most events one purge transaction deletes.
const PURGE_CHUNK: usize = 1000;

/// The most events one group commit inserts.
const MAX_GROUP: usize = 512;

/// Inserts `batch` in one transaction. An event the database refuses (a duplicate id)
/// fails alone; any other error fails the whole group, since SQLite may have rolled the
/// transaction back.
fn insert_group(
    conn: &mut Connection,
    batch: &[(NewEvent, oneshot::Sender<Result<(), StoreError>>)],
) -> rusqlite::Result<Vec<rusqlite::Result<()>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (event, _) in batch {
        match insert(&tx, event) {
            Ok(()) => outcomes.push(Ok(())),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                outcomes.push(Err(e))
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Takes the folder's lock file, or fails naming the folder when another gateway
/// holds it. The lock goes with the returned file (also when the process dies).
fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = path.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Failed(format!(
                "cannot open the event store's lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Failed(format!(
            "the event store at {} is in use by another gateway (it holds {})",
            path.display(),
            lock_path.display()
        ))),
        Err(e) => Err(StoreError::Failed(format!(
            "cannot lock the event store's lock file {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], one transaction per step. A database
/// written by a newer gateway is refused rather than guessed at.
fn migrate(conn: &mut Connection, database: &Path) -> Result<(), StoreError> {
    let failed = |e: rusqlite::Error| {
        StoreError::Failed(format!(
            "cannot read or migrate the event store at {}: {e}",
            database.display()
        ))
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(failed)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Failed(format!(
            "the event store at {} has schema version {version}, newer than this gateway's {SCHEMA_VERSION}",
            database.display()
        )));
    }
    if version < 0 {
        return Err(StoreError::Failed(format!(
            "the event store at {} has an invalid schema version {version}",
            database.display()
        )));
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", step as i64 + 1)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

/// Events left `running` by a gateway that stopped: each attempt counts as failed.
fn recover(conn: &mut Connection, policy: &Policy, now: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let running: Vec<(Vec<u8>, u32)> = {
        let mut statement =
            tx.prepare("SELECT id, attempts FROM events WHERE status = 'running'")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, attempts) in running {
        record_outcome(&tx, policy, &id, attempts, lost_attempt(STOPPED_ERROR), now)?;
    }
    tx.commit()
}

fn lost_attempt(error: &str) -> Attempt {
    Attempt::Failed {
        status_code: LOST_ATTEMPT_STATUS,
        result: None,
        error: Some(error.to_owned()),
    }
}

fn insert(conn: &Connection, event: &NewEvent) -> rusqlite::Result<()> {
    let enqueued_at = to_ms(event.enqueued_at);
    conn.prepare_cached(
        "INSERT INTO events (id, namespace, function, qualifier, trigger, content_type, body,
             status, attempts, enqueued_at, due_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', 0, ?8, ?8)",
    )?
    .execute(params![
        event.id.as_bytes(),
        event.function.namespace,
        event.function.name,
        event.qualifier,
        event.trigger.as_str(),
        event.content_type,
        &event.body[..],
        enqueued_at,
    ])?;
    Ok(())
}

fn claim(
    conn: &mut Connection,
    policy: &Policy,
    function: &FunctionKey,
    lease: Duration,
    now: i64,
) -> rusqlite::Result<Option<Claimed>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let expired: Vec<(Vec<u8>, u32)> = {
        let mut statement = tx.prepare_cached(
            "SELECT id, attempts FROM events
             WHERE namespace = ?1 AND function = ?2 AND status = 'running' AND lease_until < ?3",
        )?;
        let rows = statement.query_map(params![function.namespace, function.name, now], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, attempts) in expired {
        record_outcome(&tx, policy, &id, attempts, lost_attempt(LEASE_ERROR), now)?;
    }

    let next = tx
        .prepare_cached(
            "SELECT seq, id, qualifier, trigger, content_type, body, attempts, enqueued_at
             FROM events
             WHERE namespace = ?1 AND function = ?2 AND status = 'queued' AND due_at <= ?3
             ORDER BY due_at, enqueued_at, seq LIMIT 1",
        )?
        .query_row(params![function.namespace, function.name, now], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                uuid(row, 1)?,
                row.get::<_, String>(2)?,
                trigger(row, 3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Vec<u8>>(5)?,
                row.get::<_, u32>(6)?,
                row.get::<_, i64>(7)?,
            ))
        })
        .optional()?;
    let Some((seq, id, qualifier, trigger, content_type, body, attempts, enqueued_at)) = next
    else {
        tx.commit()?;
        return Ok(None);
    };
    let attempt = attempts.saturating_add(1);
    tx.execute(
        "UPDATE events SET status = 'running', attempts = ?1, lease_until = ?2 WHERE seq = ?3",
        params![attempt, add_ms(now, lease), seq],
    )?;
    tx.commit()?;
    Ok(Some(Claimed {
        id,
        function: function.clone(),
        qualifier,
        body: Bytes::from(body),
        content_type,
        trigger,
        attempt,
        enqueued_at: from_ms(enqueued_at),
        receipt: Receipt::None,
    }))
}

fn finish(
    conn: &mut Connection,
    policy: &Policy,
    id: Uuid,
    number: u32,
    attempt: Attempt,
    now: i64,
) -> rusqlite::Result<Option<Status>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = tx
        .query_row(
            "SELECT status, attempts FROM events WHERE id = ?1",
            params![id.as_bytes()],
            |row| Ok((status(row, 0)?, row.get::<_, u32>(1)?)),
        )
        .optional()?;
    let status = match current {
        None => return Ok(None),
        Some((Status::Running, attempts)) if attempts == number => {
            record_outcome(&tx, policy, id.as_bytes(), number, attempt, now)?
        }
        Some((status, _)) => status,
    };
    tx.commit()?;
    Ok(Some(status))
}

/// Records the outcome of running attempt `number` of the event `id`: succeeded; or
/// failed, then queued again after the policy's delay, or failed when no retry is left.
fn record_outcome(
    conn: &Connection,
    policy: &Policy,
    id: &[u8],
    number: u32,
    attempt: Attempt,
    now: i64,
) -> rusqlite::Result<Status> {
    let (status_code, result, error) = match attempt {
        Attempt::Succeeded {
            status_code,
            result,
        } => {
            conn.execute(
                "UPDATE events SET status = 'succeeded', status_code = ?1, result = ?2,
                     error = NULL, lease_until = NULL, ended_at = ?3
                 WHERE id = ?4",
                params![status_code, &result[..], now, id],
            )?;
            return Ok(Status::Succeeded);
        }
        Attempt::Failed {
            status_code,
            result,
            error,
        } => (status_code, result, error),
    };
    let result = result.as_deref();
    match policy.retry_after(number) {
        Some(delay) => {
            conn.execute(
                "UPDATE events SET status = 'queued', status_code = ?1, result = ?2, error = ?3,
                     lease_until = NULL, due_at = ?4
                 WHERE id = ?5",
                params![status_code, result, error, add_ms(now, delay), id],
            )?;
            Ok(Status::Queued)
        }
        None => {
            conn.execute(
                "UPDATE events SET status = 'failed', status_code = ?1, result = ?2, error = ?3,
                     lease_until = NULL, ended_at = ?4
                 WHERE id = ?5",
                params![status_code, result, error, now, id],
            )?;
            Ok(Status::Failed)
        }
    }
}

fn get(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<EventRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM events WHERE id = ?1"
    ))?
    .query_row(params![id.as_bytes()], record)
    .optional()
}

fn list(
    conn: &Connection,
    function: &FunctionKey,
    query: &ListQuery,
) -> rusqlite::Result<Vec<EventRecord>> {
    let order = match query.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    let filter = if query.status.is_some() {
        "AND status = ?3"
    } else {
        "AND ?3 IS NULL"
    };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM events
         WHERE namespace = ?1 AND function = ?2 {filter}
         ORDER BY enqueued_at {order}, seq {order} LIMIT ?4 OFFSET ?5"
    ))?;
    let rows = statement.query_map(
        params![
            function.namespace,
            function.name,
            query.status.map(Status::as_str),
            query.limit.min(100),
            query.offset,
        ],
        record,
    )?;
    rows.collect()
}

fn abort(conn: &mut Connection, id: Uuid, now: i64) -> rusqlite::Result<Aborted> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let changed = tx.execute(
        "UPDATE events SET status = 'aborted', ended_at = ?1 WHERE id = ?2 AND status = 'queued'",
        params![now, id.as_bytes()],
    )?;
    let record = get(&tx, id)?;
    tx.commit()?;
    Ok(match record {
        None => Aborted::NotFound,
        Some(record) if changed == 1 => Aborted::Aborted(record),
        Some(record) => Aborted::NotQueued(record),
    })
}

fn counts(conn: &Connection) -> rusqlite::Result<Vec<FunctionCounts>> {
    let mut statement = conn.prepare_cached(
        "SELECT namespace, function, status, count(*), min(enqueued_at)
         FROM events GROUP BY namespace, function, status",
    )?;
    let mut rows = statement.query([])?;
    let mut counts: Vec<FunctionCounts> = Vec::new();
    while let Some(row) = rows.next()? {
        let function = FunctionKey::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?);
        let status = status(row, 2)?;
        let count: i64 = row.get(3)?;
        let oldest: Option<i64> = row.get(4)?;
        let index = match counts.iter().position(|c| c.function == function) {
            Some(index) => index,
            None => {
                counts.push(FunctionCounts {
                    function,
                    by_status: [0; 5],
                    oldest_queued: None,
                });
                counts.len() - 1
            }
        };
        let entry = &mut counts[index];
        entry.by_status[status.index()] = u64::try_from(count).unwrap_or_default();
        if status == Status::Queued {
            entry.oldest_queued = oldest.map(from_ms);
        }
    }
    Ok(counts)
}

/// Reads the [`RECORD_COLUMNS`].
fn record(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    let status_code: Option<i64> = row.get(9)?;
    let status_code = status_code
        .map(|code| {
            u16::try_from(code).map_err(|_| invalid(9, format!("status code {code} out of range")))
        })
        .transpose()?;
    Ok(EventRecord {
        id: uuid(row, 0)?,
        function: FunctionKey::new(row.get::<_, String>(1)?, row.get::<_, String>(2)?),
        qualifier: row.get(3)?,
        status: status(row, 4)?,
        attempts: row.get(5)?,
        enqueued_at: from_ms(row.get(6)?),
        started_at: row.get::<_, Option<i64>>(7)?.map(from_ms),
        ended_at: row.get::<_, Option<i64>>(8)?.map(from_ms),
        status_code,
        result: row.get::<_, Option<Vec<u8>>>(10)?.map(Bytes::from),
        error: row.get(11)?,
    })
}

fn uuid(row: &Row<'_>, index: usize) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(index)?;
    Uuid::from_slice(&bytes).map_err(|_| invalid(index, format!("{} bytes", bytes.len())))
}

fn status(row: &Row<'_>, index: usize) -> rusqlite::Result<Status> {
    let text: String = row.get(index)?;
    Status::parse(&text).ok_or_else(|| invalid(index, format!("unknown status {text:?}")))
}

fn trigger(row: &Row<'_>, index: usize) -> rusqlite::Result<Trigger> {
    let text: String = row.get(index)?;
    Trigger::parse(&text).ok_or_else(|| invalid(index, format!("unknown trigger {text:?}")))
}

/// A value in the database that this gateway cannot have written.
fn invalid(index: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        format!("unexpected value: {what}").into(),
    )
}

fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// Milliseconds since the UNIX epoch (0 before it).
fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or_default()
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or_default())
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn add_ms(ms: i64, duration: Duration) -> i64 {
    ms.saturating_add(duration_ms(duration))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A fresh folder under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "scf-gateway-embedded-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }

        /// The store's folder: one level below, so that `open` creates it.
        fn store(&self) -> PathBuf {
            self.0.join("async")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn policy(retries: u32, delay: Duration) -> Policy {
        Policy {
            retries,
            retry_delays: vec![delay],
            retention: Duration::from_secs(3600),
        }
    }

    fn hello() -> FunctionKey {
        FunctionKey::new("default", "hello")
    }

    fn event(function: &FunctionKey, body: &[u8], enqueued_at: SystemTime) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(fastrand::u128(..)),
            function: function.clone(),
            qualifier: "$LATEST".into(),
            body: Bytes::copy_from_slice(body),
            content_type: Some("application/json".into()),
            trigger: Trigger::Invoke,
            enqueued_at,
        }
    }

    const LEASE: Duration = Duration::from_secs(60);

    fn failure(code: u16) -> Attempt {
        Attempt::Failed {
            status_code: code,
            result: Some(Bytes::from_static(b"boom")),
            error: None,
        }
    }

    fn success(body: &'static [u8]) -> Attempt {
        Attempt::Succeeded {
            status_code: 200,
            result: Bytes::from_static(body),
        }
    }

    /// Rounds to the millisecond the store keeps.
    fn ms(time: SystemTime) -> SystemTime {
        from_ms(to_ms(time))
    }

    #[tokio::test]
    async fn an_event_reads_back_as_accepted() {
        let dir = TempDir::new("roundtrip");
        let store = EmbeddedStore::open(&dir.store(), policy(2, Duration::ZERO))
            .await
            .unwrap();
        assert!(dir.store().join(DATABASE_FILE).exists());
        let now = SystemTime::now();
        let text = event(&hello(), "{\"name\": \"zoë ☃\"}".as_bytes(), now);
        let binary = NewEvent {
            content_type: None,
            trigger: Trigger::Timer,
            ..event(&hello(), &[0, 159, 146, 150, 255, 0], now)
        };
        store.enqueue(text.clone()).await.unwrap();
        store.enqueue(binary.clone()).await.unwrap();

        let record = store.get(text.id).await.unwrap().unwrap();
        assert_eq!(
            record,
            EventRecord {
                id: text.id,
                function: hello(),
                qualifier: "$LATEST".into(),
                status: Status::Queued,
                attempts: 0,
                enqueued_at: ms(now),
                started_at: None,
                ended_at: None,
                status_code: None,
                result: None,
                error: None,
            }
        );
        assert_eq!(store.get(Uuid::from_u128(7)).await.unwrap(), None);
        let unknown = Claimed {
            id: Uuid::from_u128(7),
            function: hello(),
            qualifier: "$LATEST".into(),
            body: Bytes::new(),
            content_type: None,
            trigger: Trigger::Invoke,
            attempt: 1,
            enqueued_at: now,
            receipt: Receipt::None,
        };
        assert!(store.finish(&unknown, success(b"ok")).await.is_err());

        let first = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!(first.id, text.id);
        assert_eq!(first.body, text.body);
        assert_eq!(first.content_type.as_deref(), Some("application/json"));
        assert_eq!(first.trigger, Trigger::Invoke);
        assert_eq!(first.attempt, 1);
        assert_eq!(first.enqueued_at, ms(now));
        let second = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!(second.id, binary.id);
        assert_eq!(second.body, binary.body);
        assert_eq!(second.content_type, None);
        assert_eq!(second.trigger, Trigger::Timer);
        assert!(store.claim(&hello(), LEASE).await.unwrap().is_none());

        store.started(&second, LEASE).await.unwrap();
        let running = store.get(binary.id).await.unwrap().unwrap();
        assert_eq!(running.status, Status::Running);
        assert_eq!(running.attempts, 1);
        assert!(running.started_at.is_some());

        let result: &'static [u8] = &[1, 2, 255];
        assert_eq!(
            store.finish(&second, success(result)).await.unwrap(),
            Status::Succeeded
        );
        let done = store.get(binary.id).await.unwrap().unwrap();
        assert_eq!(done.status, Status::Succeeded);
        assert_eq!(done.status_code, Some(200));
        assert_eq!(done.result.as_deref(), Some(result));
        assert!(done.ended_at.is_some());
        assert_eq!(done.error, None);
    }

    #[tokio::test]
    async fn claims_go_by_due_time_and_by_function() {
        let dir = TempDir::new("order");
        let store = EmbeddedStore::open(&dir.store(), policy(2, Duration::ZERO))
            .await
            .unwrap();
        let now = SystemTime::now();
        let other = FunctionKey::new("other", "hello");
        let late = event(&hello(), b"late", now + Duration::from_secs(3600));
        let second = event(&hello(), b"second", now - Duration::from_secs(1));
        let first = event(&hello(), b"first", now - Duration::from_secs(2));
        // Same millisecond: acceptance order decides.
        let third = event(&hello(), b"third", now - Duration::from_secs(1));
        let elsewhere = event(&other, b"elsewhere", now - Duration::from_secs(10));
        for e in [&late, &second, &first, &third, &elsewhere] {
            store.enqueue((*e).clone()).await.unwrap();
        }
        let mut order = Vec::new();
        while let Some(claimed) = store.claim(&hello(), LEASE).await.unwrap() {
            order.push(claimed.id);
        }
        assert_eq!(order, [first.id, second.id, third.id]);
        let claimed = store.claim(&other, LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.id, elsewhere.id);
        assert_eq!(
            store.get(late.id).await.unwrap().unwrap().status,
            Status::Queued
        );
    }

    #[tokio::test]
    async fn failed_attempts_are_retried_after_the_delay() {
        let dir = TempDir::new("retry");
        let store = EmbeddedStore::open(&dir.store(), policy(2, Duration::ZERO))
            .await
            .unwrap();
        let e = event(&hello(), b"{}", SystemTime::now());
        store.enqueue(e.clone()).await.unwrap();
        for attempt in 1..=2 {
            let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
            assert_eq!(claimed.attempt, attempt);
            store.started(&claimed, LEASE).await.unwrap();
            assert_eq!(
                store.finish(&claimed, failure(502)).await.unwrap(),
                Status::Queued
            );
            let record = store.get(e.id).await.unwrap().unwrap();
            assert_eq!(record.status, Status::Queued);
            assert_eq!(record.status_code, Some(502));
            assert_eq!(record.result.as_deref(), Some(&b"boom"[..]));
        }
        let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.attempt, 3);
        assert_eq!(
            store.finish(&claimed, success(b"ok")).await.unwrap(),
            Status::Succeeded
        );
        let record = store.get(e.id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Succeeded);
        assert_eq!(record.attempts, 3);
        assert_eq!(record.result.as_deref(), Some(&b"ok"[..]));
        // A late second answer for an attempt already recorded changes nothing.
        assert_eq!(
            store.finish(&claimed, failure(500)).await.unwrap(),
            Status::Succeeded
        );
        assert_eq!(store.get(e.id).await.unwrap().unwrap(), record);

        // A retry waits for its delay.
        drop(store);
        let slow = EmbeddedStore::open(&dir.store(), policy(1, Duration::from_secs(3600)))
            .await
            .unwrap();
        let e = event(&hello(), b"{}", SystemTime::now());
        slow.enqueue(e.clone()).await.unwrap();
        let claimed = slow.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!(
            slow.finish(&claimed, failure(500)).await.unwrap(),
            Status::Queued
        );
        assert!(slow.claim(&hello(), LEASE).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_event_that_always_fails_ends_failed_with_the_last_error() {
        let dir = TempDir::new("fail");
        let store = EmbeddedStore::open(&dir.store(), policy(2, Duration::ZERO))
            .await
            .unwrap();
        let e = event(&hello(), b"{}", SystemTime::now());
        store.enqueue(e.clone()).await.unwrap();
        let mut statuses = Vec::new();
        for attempt in 1..=3u16 {
            let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
            let error = format!("{{\"errorCode\": 433, \"attempt\": {attempt}}}");
            let outcome = Attempt::Failed {
                status_code: 433,
                result: None,
                error: Some(error),
            };
            statuses.push(store.finish(&claimed, outcome).await.unwrap());
        }
        assert_eq!(statuses, [Status::Queued, Status::Queued, Status::Failed]);
        assert!(store.claim(&hello(), LEASE).await.unwrap().is_none());
        let record = store.get(e.id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.attempts, 3);
        assert_eq!(record.status_code, Some(433));
        assert_eq!(record.result, None);
        assert_eq!(
            record.error.as_deref(),
            Some("{\"errorCode\": 433, \"attempt\": 3}")
        );
        assert!(record.ended_at.is_some());
    }

    #[tokio::test]
    async fn only_a_queued_event_is_aborted() {
        let dir = TempDir::new("abort");
        let store = EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
            .await
            .unwrap();
        let now = SystemTime::now();
        let running = event(&hello(), b"1", now - Duration::from_secs(1));
        let queued = event(&hello(), b"2", now);
        store.enqueue(running.clone()).await.unwrap();
        store.enqueue(queued.clone()).await.unwrap();
        let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!(claimed.id, running.id);

        let Aborted::Aborted(record) = store.abort(queued.id).await.unwrap() else {
            panic!("a queued event is aborted");
        };
        assert_eq!(record.status, Status::Aborted);
        assert!(record.ended_at.is_some());
        assert!(store.claim(&hello(), LEASE).await.unwrap().is_none());
        assert!(matches!(
            store.abort(queued.id).await.unwrap(),
            Aborted::NotQueued(r) if r.status == Status::Aborted
        ));
        assert!(matches!(
            store.abort(running.id).await.unwrap(),
            Aborted::NotQueued(r) if r.status == Status::Running
        ));
        assert_eq!(
            store.abort(Uuid::from_u128(1)).await.unwrap(),
            Aborted::NotFound
        );
        // Finishing the aborted event's never-run attempt changes nothing.
        assert_eq!(
            store.finish(&claimed, success(b"ok")).await.unwrap(),
            Status::Succeeded
        );
        assert_eq!(
            store.get(queued.id).await.unwrap().unwrap().status,
            Status::Aborted
        );
    }

    #[tokio::test]
    async fn lists_filter_sort_and_page() {
        let dir = TempDir::new("list");
        let store = EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
            .await
            .unwrap();
        let start = SystemTime::now() - Duration::from_secs(100);
        let mut ids = Vec::new();
        for i in 0..10u64 {
            // Pairs share a millisecond: acceptance order breaks the tie.
            let e = event(&hello(), b"{}", start + Duration::from_secs(i / 2));
            ids.push(e.id);
            store.enqueue(e).await.unwrap();
        }
        store
            .enqueue(event(&FunctionKey::new("default", "other"), b"{}", start))
            .await
            .unwrap();
        // The three oldest end succeeded, failed and running.
        let a = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        store.finish(&a, success(b"ok")).await.unwrap();
        let b = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        store.finish(&b, failure(500)).await.unwrap();
        store.claim(&hello(), LEASE).await.unwrap().unwrap();

        let query = |status, limit, offset, order| ListQuery {
            status,
            limit,
            offset,
            order,
        };
        let listed = |records: Vec<EventRecord>| records.iter().map(|r| r.id).collect::<Vec<_>>();

        let newest = store
            .list(&hello(), &query(None, 20, 0, Order::Desc))
            .await
            .unwrap();
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(listed(newest), reversed);
        let oldest = store
            .list(&hello(), &query(None, 3, 2, Order::Asc))
            .await
            .unwrap();
        assert_eq!(listed(oldest), ids[2..5]);
        let queued = store
            .list(&hello(), &query(Some(Status::Queued), 4, 0, Order::Asc))
            .await
            .unwrap();
        assert_eq!(listed(queued), ids[3..7]);
        let page = store
            .list(&hello(), &query(Some(Status::Queued), 4, 4, Order::Asc))
            .await
            .unwrap();
        assert_eq!(listed(page), ids[7..10]);
        for (status, id) in [
            (Status::Succeeded, ids[0]),
            (Status::Failed, ids[1]),
            (Status::Running, ids[2]),
        ] {
            let records = store
                .list(&hello(), &query(Some(status), 20, 0, Order::Desc))
                .await
                .unwrap();
            assert_eq!(listed(records), [id]);
        }
        assert!(store
            .list(&hello(), &query(Some(Status::Aborted), 20, 0, Order::Desc))
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .list(
                &FunctionKey::new("nowhere", "hello"),
                &query(None, 20, 0, Order::Desc)
            )
            .await
            .unwrap()
            .is_empty());

        let counts = store.counts().await.unwrap();
        assert_eq!(counts.len(), 2);
        let hello_counts = counts.iter().find(|c| c.function == hello()).unwrap();
        assert_eq!(hello_counts.by_status, [7, 1, 1, 1, 0]);
        assert_eq!(
            hello_counts.oldest_queued,
            Some(ms(start + Duration::from_secs(1)))
        );
        let other = counts.iter().find(|c| c.function.name == "other").unwrap();
        assert_eq!(other.by_status, [1, 0, 0, 0, 0]);
        assert_eq!(other.oldest_queued, Some(ms(start)));
    }

    #[tokio::test]
    async fn purge_removes_final_events_past_the_retention() {
        let dir = TempDir::new("purge");
        let retention = Policy {
            retention: Duration::from_millis(200),
            ..policy(0, Duration::ZERO)
        };
        let store = EmbeddedStore::open(&dir.store(), retention).await.unwrap();
        let now = SystemTime::now();
        let done = event(&hello(), b"1", now - Duration::from_secs(4));
        let failed = event(&hello(), b"2", now - Duration::from_secs(3));
        let running = event(&hello(), b"3", now - Duration::from_secs(2));
        let aborted = event(&hello(), b"4", now - Duration::from_secs(1));
        let queued = event(&hello(), b"5", now + Duration::from_secs(3600));
        for e in [&done, &failed, &running, &aborted, &queued] {
            store.enqueue((*e).clone()).await.unwrap();
        }
        let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        store.finish(&claimed, success(b"ok")).await.unwrap();
        let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        store.finish(&claimed, failure(500)).await.unwrap();
        store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert!(matches!(
            store.abort(aborted.id).await.unwrap(),
            Aborted::Aborted(_)
        ));
        // Ended just now: kept.
        assert_eq!(store.purge().await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.purge().await.unwrap(), 3);
        assert_eq!(store.purge().await.unwrap(), 0);
        for e in [&done, &failed, &aborted] {
            assert_eq!(store.get(e.id).await.unwrap(), None);
        }
        for e in [&running, &queued] {
            assert!(store.get(e.id).await.unwrap().is_some());
        }

        // More than a chunk.
        let many = PURGE_CHUNK * 2 + 10;
        {
            let mut conn = store.inner.writer.lock();
            let tx = conn.transaction().unwrap();
            for _ in 0..many {
                let e = event(&hello(), b"{}", now);
                insert(&tx, &e).unwrap();
                tx.execute(
                    "UPDATE events SET status = 'succeeded', ended_at = ?1 WHERE id = ?2",
                    params![to_ms(now) - 1000, e.id.as_bytes()],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        assert_eq!(store.purge().await.unwrap(), many as u64);
        assert_eq!(store.counts().await.unwrap()[0].by_status, [1, 1, 0, 0, 0]);
    }

    #[tokio::test]
    async fn attempts_running_when_the_gateway_stopped_count_as_failed() {
        let dir = TempDir::new("recover");
        let store = EmbeddedStore::open(&dir.store(), policy(1, Duration::ZERO))
            .await
            .unwrap();
        let now = SystemTime::now();
        let once = event(&hello(), b"1", now - Duration::from_secs(1));
        let twice = event(&hello(), b"2", now);
        store.enqueue(once.clone()).await.unwrap();
        store.enqueue(twice.clone()).await.unwrap();
        let first = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!(first.id, once.id);
        let second = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        store.finish(&second, failure(500)).await.unwrap();
        let second = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!((second.id, second.attempt), (twice.id, 2));
        drop(store);

        let store = EmbeddedStore::open(&dir.store(), policy(1, Duration::ZERO))
            .await
            .unwrap();
        let record = store.get(once.id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Queued);
        assert_eq!(record.attempts, 1);
        assert_eq!(record.status_code, Some(405));
        assert_eq!(record.error.as_deref(), Some(STOPPED_ERROR));
        let error: serde_json::Value = serde_json::from_str(STOPPED_ERROR).unwrap();
        assert_eq!(error["statusCode"], 405);
        // Out of retries: failed.
        let record = store.get(twice.id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.attempts, 2);
        assert!(record.ended_at.is_some());

        let again = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (once.id, 2));
        // The stale claim from before the restart cannot finish the new attempt.
        assert_eq!(
            store.finish(&first, success(b"stale")).await.unwrap(),
            Status::Running
        );
    }

    #[tokio::test]
    async fn an_attempt_past_its_lease_counts_as_failed() {
        let dir = TempDir::new("lease");
        let store = EmbeddedStore::open(&dir.store(), policy(1, Duration::ZERO))
            .await
            .unwrap();
        let e = event(&hello(), b"1", SystemTime::now());
        store.enqueue(e.clone()).await.unwrap();
        let first = store
            .claim(&hello(), Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert!(store.claim(&hello(), LEASE).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = store.claim(&hello(), LEASE).await.unwrap().unwrap();
        assert_eq!((second.id, second.attempt), (e.id, 2));
        assert_eq!(
            store.get(e.id).await.unwrap().unwrap().error.as_deref(),
            Some(LEASE_ERROR)
        );
        assert_eq!(
            store.finish(&first, success(b"late")).await.unwrap(),
            Status::Running
        );
        store.started(&second, LEASE).await.unwrap();
        assert_eq!(
            store.finish(&second, success(b"ok")).await.unwrap(),
            Status::Succeeded
        );
    }

    #[tokio::test]
    async fn a_second_gateway_cannot_open_the_same_store() {
        let dir = TempDir::new("lock");
        let store = EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
            .await
            .unwrap();
        let Err(StoreError::Failed(message)) =
            EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO)).await
        else {
            panic!("the second open must fail");
        };
        assert!(
            message.contains(&dir.store().display().to_string()),
            "{message}"
        );
        assert!(message.contains("in use by another gateway"), "{message}");
        drop(store);
        EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_newer_schema_or_a_foreign_file_is_refused() {
        let dir = TempDir::new("schema");
        drop(
            EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
                .await
                .unwrap(),
        );
        let database = dir.store().join(DATABASE_FILE);
        let conn = Connection::open(&database).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let Err(StoreError::Failed(message)) =
            EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO)).await
        else {
            panic!("a newer schema must be refused");
        };
        assert_eq!(
            message,
            format!(
                "the event store at {} has schema version {}, newer than this gateway's {}",
                database.display(),
                SCHEMA_VERSION + 1,
                SCHEMA_VERSION
            )
        );

        let foreign = TempDir::new("foreign");
        std::fs::create_dir_all(foreign.store()).unwrap();
        std::fs::write(foreign.store().join(DATABASE_FILE), vec![b'x'; 8192]).unwrap();
        let Err(StoreError::Failed(message)) =
            EmbeddedStore::open(&foreign.store(), policy(0, Duration::ZERO)).await
        else {
            panic!("a file that is not a database must be refused");
        };
        assert!(message.contains("events.db"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_events_are_committed_in_groups_and_a_duplicate_fails_alone() {
        let dir = TempDir::new("group");
        let store = Arc::new(
            EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
                .await
                .unwrap(),
        );
        let first = event(&hello(), b"{}", SystemTime::now());
        store.enqueue(first.clone()).await.unwrap();
        let mut tasks = Vec::new();
        let mut ids = Vec::new();
        for i in 0..300 {
            let e = if i == 150 {
                first.clone()
            } else {
                event(&hello(), b"{}", SystemTime::now())
            };
            ids.push(e.id);
            let store = store.clone();
            tasks.push(tokio::spawn(async move { store.enqueue(e).await }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let outcome = task.await.unwrap();
            if i == 150 {
                let Err(StoreError::Failed(message)) = outcome else {
                    panic!("a duplicate id is refused");
                };
                assert!(message.contains("UNIQUE"), "{message}");
            } else {
                outcome.unwrap();
                assert!(store.get(ids[i]).await.unwrap().is_some());
            }
        }
        let counts = store.counts().await.unwrap();
        assert_eq!(counts[0].by_status[Status::Queued.index()], 300);
        assert!(!store.inner.pending.lock().scheduled);
        // Committed: a reopened store has them.
        drop(store);
        let store = EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(store.counts().await.unwrap(), counts);
    }

    /// Many waiting events: claims stay in order and each event is claimed once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_thousand_waiting_events_are_claimed_in_order() {
        const EVENTS: usize = 20_000;
        const BATCH: usize = 500;
        let dir = TempDir::new("many");
        let store = EmbeddedStore::open(&dir.store(), policy(0, Duration::ZERO))
            .await
            .unwrap();
        let start = SystemTime::now() - Duration::from_secs(EVENTS as u64);
        let events: Vec<NewEvent> = (0..EVENTS)
            .map(|i| {
                event(
                    &hello(),
                    b"{\"n\": 1}",
                    start + Duration::from_millis(i as u64),
                )
            })
            .collect();
        // Batches in one transaction each: the test is about the store's reads, not
        // about the disk's fsync rate.
        {
            let mut conn = store.inner.writer.lock();
            for batch in events.chunks(BATCH) {
                let tx = conn.transaction().unwrap();
                for e in batch {
                    insert(&tx, e).unwrap();
                }
                tx.commit().unwrap();
            }
        }
        let counts = store.counts().await.unwrap();
        assert_eq!(counts[0].by_status[Status::Queued.index()], EVENTS as u64);
        assert_eq!(counts[0].oldest_queued, Some(ms(start)));
        for expected in events.iter().take(100) {
            let claimed = store.claim(&hello(), LEASE).await.unwrap().unwrap();
            assert_eq!(claimed.id, expected.id);
            store.finish(&claimed, success(b"ok")).await.unwrap();
        }
        let last = store
            .list(
                &hello(),
                &ListQuery {
                    status: Some(Status::Queued),
                    limit: 1,
                    offset: 0,
                    order: Order::Desc,
                },
            )
            .await
            .unwrap();
        assert_eq!(last[0].id, events[EVENTS - 1].id);
    }
}
