//! The embedded SQLite grant store (`sqlite://PATH`, design §4.10): grants, single-use marks and
//! refresh locks in one database file that survives restarts, for a gateway run as one process.
//!
//! It answers exactly the five primitives of [`GrantStore`], with the semantics of
//! [`MemoryGrantStore`](super::MemoryGrantStore) (the reference). Each operation runs on
//! [`Runtime::spawn_blocking`] against one [`rusqlite::Connection`] behind a `std::sync::Mutex`
//! that is held only inside the blocking closure, and each write is one `IMMEDIATE` transaction, so
//! a read-check-write (take a mark, advance a generation, take a lock) is atomic here and against
//! any other process on the same file. Grants are stored in the shared [`record`]
//! format; the `server`, `identity` and `expires_at` columns beside it exist for pruning and for
//! operators' queries, never as a second source of truth.
//!
//! Failure is closed: a SQLite error, a poisoned lock, a blocking task that did not finish or a
//! record that does not decode answers [`StoreResult::Unavailable`] with a reason code, never a
//! guess. Like the memory store it is bounded (`max_records` rows across the three tables), sweeps
//! expired rows every so many writes and when full, and refuses a new record with `store_full`
//! when nothing has expired. The file is created `0600` on Unix: it holds sealed tokens.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_oauth_core::grant::{Grant, GrantId, StoreOp, StoreResult, StoreUnavailable};
use mcp_oauth_core::seal::UnixTime;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::record::{self, RecordError};
use super::{GrantStore, STORE_FULL, SWEEP_EVERY, WallClock, since_epoch};
use crate::Runtime;

/// The schema this code writes and reads, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The step from schema version `n` to `n + 1` is `MIGRATIONS[n]`; append, never edit, so every
/// database written by an older build can be brought forward.
const MIGRATIONS: &[&str] = &[
    // 1: grants (the record is the truth; the other columns serve pruning and operators),
    // single-use marks, refresh locks, each with an index on its expiry for the sweep.
    "CREATE TABLE grants (
        id TEXT PRIMARY KEY NOT NULL,
        server TEXT NOT NULL,
        identity TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX grants_expires_at ON grants (expires_at);
    CREATE INDEX grants_server_identity ON grants (server, identity);
    CREATE TABLE marks (
        key TEXT PRIMARY KEY NOT NULL,
        until INTEGER NOT NULL
    );
    CREATE INDEX marks_until ON marks (until);
    CREATE TABLE locks (
        grant_id TEXT PRIMARY KEY NOT NULL,
        holder TEXT NOT NULL,
        deadline_ms INTEGER NOT NULL
    );
    CREATE INDEX locks_deadline_ms ON locks (deadline_ms);",
];

/// How long an operation waits for another connection's write lock before answering `store_busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an operation waits for the shared connection before answering `store_busy`: with
/// SQLite's own busy timeout, every operation is bounded.
const CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// The reason given when the database cannot be reached (or the blocking task did not finish).
const UNREACHABLE: &str = "store_unreachable";

/// The reason given when a row or record does not read as what this code wrote.
const CORRUPT: &str = "store_corrupt";

/// The grant store in a SQLite file: durable, one process (or several on one host sharing the file),
/// at most `max_records` records. Clone shares the store.
pub struct SqliteGrantStore<R: Runtime> {
    inner: Arc<Inner>,
    runtime: R,
}

impl<R: Runtime> Clone for SqliteGrantStore<R> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), runtime: self.runtime.clone() }
    }
}

/// What every clone shares.
struct Inner {
    path: PathBuf,
    db: Mutex<Db>,
    max_records: usize,
    clock: WallClock,
}

/// The connection and the write counter that schedules sweeps, locked together.
struct Db {
    conn: Connection,
    writes: u32,
}

/// A [`SqliteGrantStore`] could not be opened. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteStoreError {
    /// The file could not be created or opened on disk.
    #[error(
        "cannot create the grant store file {}: {source}; check that its directory exists and that \
         this process may write there",
        path.display()
    )]
    Create {
        /// The database file.
        path: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a SQLite database (or is damaged).
    #[error(
        "{} is not a SQLite database or is damaged ({source}); point `sqlite://` at a new file or \
         restore this one from a backup",
        path.display()
    )]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was written by a newer mcp-oauth (or something else), whose schema this build
    /// cannot read safely.
    #[error(
        "the grant store {} has schema version {found}, which this mcp-oauth does not know (it knows up to \
         {supported}); upgrade mcp-oauth or point `sqlite://` at another file",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// SQLite refused an operation while opening or migrating (locked, read-only, disk full, …).
    #[error(
        "cannot open the grant store {}: {source}; check that the file and its directory are \
         writable and that no other program holds it locked",
        path.display()
    )]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SqliteStoreError {
    /// Classifies a SQLite error met while opening `path`.
    fn from_sqlite(path: &Path, error: rusqlite::Error) -> Self {
        let path = path.to_owned();
        match error.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                Self::NotADatabase { path, source: Box::new(error) }
            }
            _ => Self::Sqlite { path, source: Box::new(error) },
        }
    }
}

/// Why one operation could not be answered; turned into a reason code (and a log line) at the edge.
enum Failure {
    Sqlite(rusqlite::Error),
    Record(RecordError),
    /// A row's grant id is not the id its record holds.
    Mismatch,
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

impl Failure {
    /// The stable reason code: contention, corruption and everything else are told apart so an
    /// operator can act on the 503.
    fn reason(&self) -> &'static str {
        match self {
            Self::Record(_) | Self::Mismatch => CORRUPT,
            Self::Sqlite(error) => match error {
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::Utf8Error(..) => CORRUPT,
                _ => match error.sqlite_error_code() {
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => "store_busy",
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => CORRUPT,
                    Some(ErrorCode::DiskFull) => "store_disk_full",
                    _ => UNREACHABLE,
                },
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(error) => error.fmt(f),
            Self::Record(error) => error.fmt(f),
            Self::Mismatch => f.write_str("a grant row holds the record of another grant"),
        }
    }
}

/// The store's view of now, in the integers SQLite keeps: whole seconds for grants and marks,
/// milliseconds for locks (saturating: a clock past 2262 is still "later").
#[derive(Clone, Copy)]
struct Now {
    time: UnixTime,
    secs: i64,
    millis: i64,
}

impl Now {
    fn at(since: Duration) -> Self {
        Self {
            time: UnixTime::from_secs(since.as_secs()),
            secs: to_sql(u128::from(since.as_secs())),
            millis: to_sql(since.as_millis()),
        }
    }
}

/// `value` as a SQLite integer, saturating at `i64::MAX` (far past any expiry we write).
fn to_sql(value: u128) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl<R: Runtime> SqliteGrantStore<R> {
    /// Opens (creating if absent) the database at `path`, sets WAL mode, applies migrations, and
    /// checks it answers. Blocking: call it at start-up (or inside spawn_blocking).
    pub fn open(path: &Path, max_records: usize, runtime: R) -> Result<Self, SqliteStoreError> {
        Self::with_clock(path, max_records, runtime, since_epoch)
    }

    /// [`SqliteGrantStore::open`] on `clock` (the time since the Unix epoch), for tests that move
    /// time by hand.
    pub fn with_clock(
        path: &Path,
        max_records: usize,
        runtime: R,
        clock: impl Fn() -> Duration + Send + Sync + 'static,
    ) -> Result<Self, SqliteStoreError> {
        let conn = connect(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db: Mutex::new(Db { conn, writes: 0 }),
                max_records,
                clock: Arc::new(clock),
            }),
            runtime,
        })
    }

    /// Records held (grants + marks + locks), for tests and `Debug`; expired rows not yet swept
    /// count, and an unreadable database counts as empty.
    pub fn len(&self) -> usize {
        self.inner.db.lock().ok().and_then(|db| count(&db.conn).ok()).unwrap_or(0)
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `work` on the connection on a blocking thread; every way it can fail becomes a reason.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Db, Now, usize) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, &'static str> {
        let inner = self.inner.clone();
        let answer = self.runtime.spawn_blocking(move || {
            // Every operation shares one connection: wait for it a bounded time, and read the
            // clock only once it is ours, so a lock's deadline is not computed from a stale now.
            let waited_until = std::time::Instant::now() + CONNECTION_WAIT;
            let mut db = loop {
                match inner.db.try_lock() {
                    Ok(db) => break db,
                    // A panic while the lock was held: SQLite rolled the transaction back, but
                    // fail closed rather than trust a connection in an unknown state.
                    Err(std::sync::TryLockError::Poisoned(_)) => return Err("store_poisoned"),
                    Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < waited_until => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(std::sync::TryLockError::WouldBlock) => return Err("store_busy"),
                }
            };
            let now = Now::at((inner.clock)());
            work(&mut db, now, inner.max_records).map_err(|failure| {
                tracing::warn!(path = %inner.path.display(), error = %failure, "grant store failed");
                failure.reason()
            })
        });
        match answer.await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(path = %self.inner.path.display(), %error, "grant store task failed");
                Err(UNREACHABLE)
            }
        }
    }
}

impl<R: Runtime> fmt::Debug for SqliteGrantStore<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteGrantStore")
            .field("path", &self.inner.path)
            .field("records", &self.len())
            .field("max_records", &self.inner.max_records)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> GrantStore for SqliteGrantStore<R> {
    fn apply(&self, op: StoreOp) -> impl Future<Output = StoreResult> + Send {
        let answer = self.blocking(move |db, now, max_records| apply(db, op, now, max_records));
        async move { answer.await.unwrap_or_else(|reason| StoreResult::Unavailable { reason }) }
    }

    fn list_grants(&self, limit: usize) -> impl Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send {
        let answer = self.blocking(move |db, now, _| list(&db.conn, now, limit));
        async move { answer.await.map_err(|reason| StoreUnavailable { reason }) }
    }
}

/// Creates the file `0600` if absent, opens it, sets the pragmas, migrates and checks it answers.
fn connect(path: &Path) -> Result<Connection, SqliteStoreError> {
    create_private(path)?;
    let sqlite = |error| SqliteStoreError::from_sqlite(path, error);
    // No URI flag: the configured path is a path even when it starts with `file:`.
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    // The first statement that reads the file: a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "the grant store could not use WAL mode");
    }
    // With WAL, NORMAL loses at most the last transactions on power loss, never consistency.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
    migrate(&mut conn, path)?;
    count(&conn).map_err(sqlite)?;
    Ok(conn)
}

/// Creates `path` readable and writable by its owner only, unless it exists (then it is left as the
/// operator made it, with a warning when others may read it).
fn create_private(path: &Path) -> Result<(), SqliteStoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file =
        options.open(path).map_err(|source| SqliteStoreError::Create { path: path.to_owned(), source })?;
    #[cfg(unix)]
    if let Ok(metadata) = file.metadata() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "the grant store file is readable by others; `chmod 600` it"
            );
        }
    }
    drop(file);
    Ok(())
}

/// Brings the schema from the file's `user_version` to [`SCHEMA_VERSION`] in one transaction, or
/// refuses a file written by a newer build.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), SqliteStoreError> {
    let sqlite = |error| SqliteStoreError::from_sqlite(path, error);
    // IMMEDIATE: two processes opening the same fresh file do not both run the same step.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sqlite)?;
    if !(0..=SCHEMA_VERSION).contains(&found) {
        return Err(SqliteStoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let from = usize::try_from(found).unwrap_or(0);
    for step in MIGRATIONS.iter().skip(from) {
        tx.execute_batch(step).map_err(sqlite)?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sqlite)?;
    }
    tx.commit().map_err(sqlite)
}

/// Rows across the three tables.
fn count(conn: &Connection) -> rusqlite::Result<usize> {
    let rows: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM grants) + (SELECT count(*) FROM marks) + (SELECT count(*) FROM locks)",
        [],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(rows).unwrap_or(0))
}

/// Forgets every expired grant, mark and lock.
fn sweep(conn: &Connection, now: Now) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM grants WHERE expires_at <= ?1", [now.secs])?;
    conn.execute("DELETE FROM marks WHERE until <= ?1", [now.secs])?;
    conn.execute("DELETE FROM locks WHERE deadline_ms <= ?1", [now.millis])?;
    Ok(())
}

/// Room for one more record: sweeps every [`SWEEP_EVERY`] writes and whenever the store is full,
/// then says whether a record fits (the memory store's rule).
fn make_room(conn: &Connection, writes: &mut u32, now: Now, max_records: usize) -> rusqlite::Result<bool> {
    *writes = writes.saturating_add(1);
    let mut held = count(conn)?;
    if *writes >= SWEEP_EVERY || held >= max_records {
        sweep(conn, now)?;
        *writes = 0;
        held = count(conn)?;
    }
    Ok(held < max_records)
}

/// The grant stored under `id`, expired or not; a record that does not decode, or holds another
/// grant, is a failure (never a guess).
fn read_grant(conn: &Connection, id: &GrantId) -> Result<Option<Grant>, Failure> {
    let text: Option<String> = conn
        .query_row("SELECT record FROM grants WHERE id = ?1", [id.as_str()], |row| row.get(0))
        .optional()?;
    let Some(text) = text else { return Ok(None) };
    let grant = record::decode(&text).map_err(Failure::Record)?;
    if grant.id != *id {
        return Err(Failure::Mismatch);
    }
    Ok(Some(grant))
}

/// Writes `grant` (record and the columns beside it), replacing any with its id.
fn write_grant(conn: &Connection, grant: &Grant) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO grants (id, server, identity, expires_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET server = excluded.server, identity = excluded.identity,
             expires_at = excluded.expires_at, record = excluded.record",
        params![
            grant.id.as_str(),
            grant.server,
            grant.identity.name,
            to_sql(u128::from(grant.expires_at.as_secs())),
            record::encode(grant),
        ],
    )?;
    Ok(())
}

/// Answers `op`, each operation in one transaction (the memory store's `State::apply`, in SQL).
fn apply(db: &mut Db, op: StoreOp, now: Now, max_records: usize) -> Result<StoreResult, Failure> {
    let Db { conn, writes } = db;
    match op {
        StoreOp::GetGrant { id } => {
            let grant = read_grant(conn, &id)?.filter(|grant| !grant.is_expired(now.time));
            Ok(StoreResult::Grant(grant.map(Box::new)))
        }
        StoreOp::PutGrant(grant) => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if grant.is_expired(now.time) {
                // A grant written already ended is a revocation: forget it.
                tx.execute("DELETE FROM grants WHERE id = ?1", [grant.id.as_str()])?;
                tx.commit()?;
                return Ok(StoreResult::Stored);
            }
            let held = tx
                .query_row("SELECT 1 FROM grants WHERE id = ?1", [grant.id.as_str()], |_| Ok(()))
                .optional()?
                .is_some();
            if !held && !make_room(&tx, writes, now, max_records)? {
                // The sweep (if any) is kept: it only forgot expired rows.
                tx.commit()?;
                return Ok(StoreResult::Unavailable { reason: STORE_FULL });
            }
            write_grant(&tx, &grant)?;
            tx.commit()?;
            Ok(StoreResult::Stored)
        }
        StoreOp::TakeOnce { key, until } => {
            let until = to_sql(u128::from(until.as_secs()));
            if now.secs >= until {
                return Ok(StoreResult::Taken(false));
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let kept: Option<i64> = tx
                .query_row("SELECT until FROM marks WHERE key = ?1", [&key.0], |row| row.get(0))
                .optional()?;
            match kept {
                Some(kept) if now.secs < kept => return Ok(StoreResult::Taken(false)),
                // An expired mark may be taken again.
                Some(_) => {}
                None if !make_room(&tx, writes, now, max_records)? => {
                    tx.commit()?;
                    return Ok(StoreResult::Unavailable { reason: STORE_FULL });
                }
                None => {}
            }
            tx.execute(
                "INSERT INTO marks (key, until) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET until = excluded.until",
                params![key.0, until],
            )?;
            tx.commit()?;
            Ok(StoreResult::Taken(true))
        }
        StoreOp::AdvanceGeneration { grant, expected, now: rotated_at } => {
            // Read, compare and write in one IMMEDIATE transaction: the compare-and-swap.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(mut stored) = read_grant(&tx, &grant)?.filter(|grant| !grant.is_expired(now.time))
            else {
                return Ok(StoreResult::Advanced(false));
            };
            let next = match expected.checked_add(1) {
                Some(next) if stored.generation == expected => next,
                // Another generation, or the last one there is: refuse.
                _ => return Ok(StoreResult::Advanced(false)),
            };
            stored.generation = next;
            stored.rotated_at = rotated_at;
            write_grant(&tx, &stored)?;
            tx.commit()?;
            Ok(StoreResult::Advanced(true))
        }
        StoreOp::TryLock { grant, holder, ttl } => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deadline: Option<i64> = tx
                .query_row("SELECT deadline_ms FROM locks WHERE grant_id = ?1", [grant.as_str()], |row| {
                    row.get(0)
                })
                .optional()?;
            match deadline {
                Some(deadline) if now.millis < deadline => return Ok(StoreResult::Locked(false)),
                // The previous holder's lock has run out.
                Some(_) => {}
                None if !make_room(&tx, writes, now, max_records)? => {
                    tx.commit()?;
                    return Ok(StoreResult::Unavailable { reason: STORE_FULL });
                }
                None => {}
            }
            let deadline = now.millis.saturating_add(to_sql(ttl.as_millis()));
            tx.execute(
                "INSERT INTO locks (grant_id, holder, deadline_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (grant_id) DO UPDATE SET holder = excluded.holder,
                     deadline_ms = excluded.deadline_ms",
                params![grant.as_str(), holder.0, deadline],
            )?;
            tx.commit()?;
            Ok(StoreResult::Locked(true))
        }
        StoreOp::Unlock { grant, holder } => {
            // One statement: only the fencing value that took the lock releases it.
            conn.execute(
                "DELETE FROM locks WHERE grant_id = ?1 AND holder = ?2",
                params![grant.as_str(), holder.0],
            )?;
            Ok(StoreResult::Unlocked)
        }
    }
}

/// Up to `limit` live user grants; a record that does not decode fails the listing (fail closed).
fn list(conn: &Connection, now: Now, limit: usize) -> Result<Vec<Grant>, Failure> {
    let mut statement = conn.prepare("SELECT record FROM grants WHERE expires_at > ?1")?;
    let mut rows = statement.query([now.secs])?;
    let mut listed = Vec::new();
    while listed.len() < limit {
        let Some(row) = rows.next()? else { break };
        let text: String = row.get(0)?;
        let grant = record::decode(&text).map_err(Failure::Record)?;
        if grant.is_user_grant() && !grant.is_expired(now.time) {
            listed.push(grant);
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use futures_util::FutureExt as _;
    use mcp_oauth_core::grant::{LockHolder, OnceKey};

    use super::*;
    use crate::BlockingError;

    const START: u64 = 1_800_000_000;

    /// A runtime that runs blocking work inline (every future is ready at once), or fails it.
    #[derive(Clone, Debug)]
    struct Inline {
        fail: bool,
    }

    impl Runtime for Inline {
        fn now(&self) -> Instant {
            Instant::now()
        }

        fn sleep_until(&self, _deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
            std::future::ready(())
        }

        fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
            // These tests spawn nothing.
            drop(task);
        }

        fn spawn_blocking<T, F>(
            &self,
            work: F,
        ) -> impl Future<Output = Result<T, BlockingError>> + Send + 'static
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            let answer = if self.fail { Err(BlockingError::new("cancelled")) } else { Ok(work()) };
            std::future::ready(answer)
        }
    }

    /// A fresh path in the temp directory; the file and its WAL companions are removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let path =
                std::env::temp_dir().join(format!("mcp-oauth-sqlite-unit-{}-{n}.db", std::process::id()));
            let temp = Self(path);
            temp.remove();
            temp
        }

        fn remove(&self) {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut path = self.0.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            self.remove();
        }
    }

    /// A store at `path` on a clock the test moves (milliseconds since the epoch).
    fn store_at(path: &Path, max: usize, clock: &Arc<AtomicU64>) -> SqliteGrantStore<Inline> {
        let clock = clock.clone();
        SqliteGrantStore::with_clock(path, max, Inline { fail: false }, move || {
            Duration::from_millis(clock.load(Ordering::SeqCst))
        })
        .expect("opens")
    }

    fn clock() -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(START * 1000))
    }

    fn now<T>(future: impl Future<Output = T>) -> T {
        future.now_or_never().expect("the inline runtime answers at once")
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::from_secs(START + secs)
    }

    fn grant(id: u8, expires_in: u64) -> Grant {
        crate::grant_store::sample_grant(id, at(expires_in), at(0))
    }

    fn put(store: &SqliteGrantStore<Inline>, grant: Grant) -> StoreResult {
        now(store.apply(StoreOp::PutGrant(Box::new(grant))))
    }

    fn take(store: &SqliteGrantStore<Inline>, key: &str, until: UnixTime) -> StoreResult {
        now(store.apply(StoreOp::TakeOnce { key: OnceKey(key.into()), until }))
    }

    #[test]
    fn grants_and_marks_survive_a_reopen() {
        let path = TempPath::new();
        let clock = clock();
        let written = grant(1, 3600);
        {
            let store = store_at(&path.0, 10, &clock);
            assert_eq!(put(&store, written.clone()), StoreResult::Stored);
            assert_eq!(take(&store, "code", at(60)), StoreResult::Taken(true));
        }
        let store = store_at(&path.0, 10, &clock);
        assert_eq!(now(store.get_grant(written.id.clone())), Ok(Some(written)));
        assert_eq!(take(&store, "code", at(60)), StoreResult::Taken(false), "still taken");
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let path = TempPath::new();
        drop(store_at(&path.0, 10, &clock()));
        let raw = Connection::open(&path.0).expect("raw");
        raw.pragma_update(None, "user_version", SCHEMA_VERSION + 1).expect("bumped");
        drop(raw);
        let refused = SqliteGrantStore::open(&path.0, 10, Inline { fail: false });
        let Err(error @ SqliteStoreError::SchemaTooNew { found, supported, .. }) = refused else {
            panic!("expected SchemaTooNew, got {refused:?}");
        };
        assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        let message = error.to_string();
        assert!(message.contains(&path.0.display().to_string()) && message.contains("upgrade"), "{message}");
    }

    #[test]
    fn a_corrupt_record_answers_unavailable() {
        let path = TempPath::new();
        let store = store_at(&path.0, 10, &clock());
        let written = grant(1, 3600);
        assert_eq!(put(&store, written.clone()), StoreResult::Stored);
        let raw = Connection::open(&path.0).expect("raw");
        raw.execute("UPDATE grants SET record = 'garbage'", []).expect("garbled");
        let corrupt = StoreResult::Unavailable { reason: CORRUPT };
        assert_eq!(now(store.apply(StoreOp::GetGrant { id: written.id.clone() })), corrupt);
        let advance = StoreOp::AdvanceGeneration { grant: written.id.clone(), expected: 0, now: at(1) };
        assert_eq!(now(store.apply(advance)), corrupt);
        assert_eq!(now(store.list_grants(10)), Err(StoreUnavailable { reason: CORRUPT }));
        // A record moved under another id is caught too.
        raw.execute("UPDATE grants SET record = ?1", [record::encode(&grant(2, 3600))]).expect("moved");
        assert_eq!(now(store.apply(StoreOp::GetGrant { id: written.id.clone() })), corrupt);
        // A rewrite heals it.
        assert_eq!(put(&store, written.clone()), StoreResult::Stored);
        assert_eq!(now(store.get_grant(written.id.clone())), Ok(Some(written)));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_at_open() {
        let path = TempPath::new();
        let noise: Vec<u8> = (0..4096u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&path.0, noise).expect("written");
        let refused = SqliteGrantStore::open(&path.0, 10, Inline { fail: false });
        let Err(error @ SqliteStoreError::NotADatabase { .. }) = refused else {
            panic!("expected NotADatabase, got {refused:?}");
        };
        assert!(error.to_string().contains(&path.0.display().to_string()), "{error}");
    }

    #[test]
    fn a_missing_directory_is_a_create_error() {
        let path = std::env::temp_dir().join("mcp-oauth-no-such-dir-7f3a").join("grants.db");
        let refused = SqliteGrantStore::open(&path, 10, Inline { fail: false });
        assert!(matches!(refused, Err(SqliteStoreError::Create { .. })), "{refused:?}");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = TempPath::new();
        let store = store_at(&path.0, 10, &clock());
        assert_eq!(put(&store, grant(1, 3600)), StoreResult::Stored);
        let mode = |suffix: &str| {
            let mut file = path.0.clone().into_os_string();
            file.push(suffix);
            std::fs::metadata(file).map(|metadata| metadata.permissions().mode() & 0o777)
        };
        assert_eq!(mode("").expect("the database"), 0o600);
        // SQLite gives its WAL the database's mode.
        if let Ok(wal) = mode("-wal") {
            assert_eq!(wal, 0o600);
        }
    }

    #[test]
    fn a_full_store_prunes_expired_records_first_then_fails_closed() {
        let path = TempPath::new();
        let clock = clock();
        let store = store_at(&path.0, 4, &clock);
        for n in 0..3 {
            assert_eq!(put(&store, grant(n, 100)), StoreResult::Stored);
        }
        assert_eq!(take(&store, "short", at(10)), StoreResult::Taken(true));
        assert_eq!(store.len(), 4);
        let full = StoreResult::Unavailable { reason: STORE_FULL };
        assert_eq!(put(&store, grant(9, 100)), full);
        assert_eq!(take(&store, "other", at(10)), full);
        let lock = StoreOp::TryLock {
            grant: GrantId::new("g"),
            holder: LockHolder("h".into()),
            ttl: Duration::from_secs(5),
        };
        assert_eq!(now(store.apply(lock)), full);
        // Rewriting a grant it holds still works.
        assert_eq!(put(&store, grant(0, 200)), StoreResult::Stored);
        // Once the short mark has expired it makes room.
        clock.store((START + 10) * 1000, Ordering::SeqCst);
        assert_eq!(put(&store, grant(9, 100)), StoreResult::Stored);
        assert_eq!(store.len(), 4);
        // A grant written already expired is a revocation.
        assert_eq!(put(&store, grant(9, 5)), StoreResult::Stored);
        assert_eq!(store.len(), 3);
        assert!(!store.is_empty());
    }

    #[test]
    fn a_sweep_runs_every_so_many_writes() {
        let path = TempPath::new();
        let clock = clock();
        let store = store_at(&path.0, usize::MAX, &clock);
        for n in 0..100 {
            take(&store, &format!("old-{n}"), at(1));
        }
        clock.store((START + 1) * 1000, Ordering::SeqCst);
        for n in 0..SWEEP_EVERY {
            take(&store, &format!("new-{n}"), at(100));
        }
        assert!(store.len() <= SWEEP_EVERY as usize, "{}", store.len());
    }

    #[test]
    fn locks_expire_to_the_millisecond_and_only_the_holder_unlocks() {
        let path = TempPath::new();
        let clock = clock();
        let store = store_at(&path.0, 10, &clock);
        let lock = |holder: &str| StoreOp::TryLock {
            grant: GrantId::new("g"),
            holder: LockHolder(holder.into()),
            ttl: Duration::from_millis(250),
        };
        assert_eq!(now(store.apply(lock("a"))), StoreResult::Locked(true));
        assert_eq!(now(store.apply(lock("a"))), StoreResult::Locked(false), "not re-entrant");
        now(store.apply(StoreOp::Unlock { grant: GrantId::new("g"), holder: LockHolder("b".into()) }));
        assert_eq!(now(store.apply(lock("b"))), StoreResult::Locked(false), "b cannot unlock a's lock");
        clock.fetch_add(249, Ordering::SeqCst);
        assert_eq!(now(store.apply(lock("b"))), StoreResult::Locked(false));
        clock.fetch_add(1, Ordering::SeqCst);
        assert_eq!(now(store.apply(lock("b"))), StoreResult::Locked(true));
    }

    #[test]
    fn generation_overflow_and_expired_grants_refuse_to_advance() {
        let path = TempPath::new();
        let clock = clock();
        let store = store_at(&path.0, 10, &clock);
        let last = Grant { generation: u64::MAX, ..grant(1, 100) };
        assert_eq!(put(&store, last.clone()), StoreResult::Stored);
        let advance = |id: &GrantId, expected| {
            now(store.apply(StoreOp::AdvanceGeneration { grant: id.clone(), expected, now: at(2) }))
        };
        assert_eq!(advance(&last.id, u64::MAX), StoreResult::Advanced(false), "no overflow");
        let short = grant(2, 10);
        assert_eq!(put(&store, short.clone()), StoreResult::Stored);
        clock.store((START + 10) * 1000, Ordering::SeqCst);
        assert_eq!(advance(&short.id, 0), StoreResult::Advanced(false), "expired");
        assert_eq!(now(store.get_grant(short.id)), Ok(None));
    }

    #[test]
    fn a_failed_blocking_task_or_poisoned_lock_fails_closed() {
        let path = TempPath::new();
        let store = SqliteGrantStore::open(&path.0, 10, Inline { fail: true }).expect("opens");
        let get = StoreOp::GetGrant { id: GrantId::new("g") };
        assert_eq!(now(store.apply(get.clone())), StoreResult::Unavailable { reason: UNREACHABLE });
        assert_eq!(now(store.list_grants(1)), Err(StoreUnavailable { reason: UNREACHABLE }));

        let store = store_at(&path.0, 10, &clock());
        let poisoner = store.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.inner.db.lock();
            panic!("poison the lock");
        })
        .join();
        assert_eq!(now(store.apply(get)), StoreResult::Unavailable { reason: "store_poisoned" });
    }

    #[test]
    fn debug_names_the_file_and_count_not_the_records() {
        let path = TempPath::new();
        let store = store_at(&path.0, 10, &clock());
        assert_eq!(put(&store, grant(1, 100)), StoreResult::Stored);
        let shown = format!("{store:?}");
        assert!(shown.contains("records: 1") && shown.contains("mcp-oauth-sqlite-unit"), "{shown}");
        assert!(!shown.contains("master") && !shown.contains("read"), "{shown}");
    }
}
