//! The Redis grant store (`redis://HOST:PORT[/DB]`, feature `redis`): one store shared by every
//! gateway replica (design §4.10).
//!
//! It uses the synchronous `redis` client on [`Runtime::spawn_blocking`], so one backend serves
//! every runtime (tokio, async-std, …) without a runtime feature split in this runtime-agnostic
//! crate. Connections come from a small pool (at most [`MAX_CONNECTIONS`]); every connect, read
//! and write is bounded by [`IO_TIMEOUT`], so an unreachable or frozen server answers
//! [`StoreResult::Unavailable`] within seconds, never a hang. Every failure fails closed:
//! `store_unreachable`, `store_timeout`, `store_error` (the server refused a command),
//! `store_corrupt` (a record that does not decode), `store_busy` (no pooled connection freed in
//! time), `store_task_failed`.
//!
//! Keys live under one prefix (default [`DEFAULT_PREFIX`], see [`RedisGrantStore::with_prefix`]):
//! `{prefix}:grant:{id}` is a hash holding the shared record ([`super::record`]) in `record`, with
//! the two fields `advance_generation` swaps kept beside it (`generation`, `rotated_at`, decimal)
//! so the compare-and-swap is a string comparison in Lua and never round-trips JSON through Lua's
//! floats; `expires_at` sits beside them for the liveness check. `{prefix}:once:{key}` is a
//! single-use mark and `{prefix}:lock:{grant}` a refresh lock whose value is its holder (the fencing
//! value). Every key expires with its record (`PEXPIREAT`, `PX`), so Redis forgets it on its own.
//!
//! `max_records` is kept with a sorted set `{prefix}:records` (each record's key, scored by its
//! expiry in milliseconds): the scripts that create a record first drop the entries whose expiry
//! has passed, then refuse a new record with `store_full` when the set is full, like
//! [`MemoryGrantStore`](super::MemoryGrantStore). Expiry there is read on the caller's clock, so
//! the bound is exact on one clock and approximate across replicas whose clocks differ. The index
//! expires with its latest record. Each primitive is one Lua script or one command, so it is
//! atomic on the server. Standalone Redis only (no Cluster: the scripts touch two keys).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::{Client, Connection, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError};
use ::redis::{RedisConnectionInfo, Script};
use mcp_oauth_core::config::RedisSetting;
use mcp_oauth_core::grant::{Grant, GrantId, StoreOp, StoreResult, StoreUnavailable};
use mcp_oauth_core::seal::UnixTime;

use super::{GrantStore, STORE_FULL, record, since_epoch};
use crate::runtime::{Runtime, timeout};

/// The bound on each connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The most connections one store (and its clones) opens.
pub const MAX_CONNECTIONS: usize = 16;

/// The key prefix a store uses unless [`RedisGrantStore::with_prefix`] names another.
pub const DEFAULT_PREFIX: &str = "mcp-oauth";

/// How many keys one `SCAN` step asks for when listing.
const SCAN_BATCH: usize = 200;

/// The reasons a store answers [`StoreResult::Unavailable`] with.
const UNREACHABLE: &str = "store_unreachable";
const TIMED_OUT: &str = "store_timeout";
const REFUSED: &str = "store_error";
const CORRUPT: &str = "store_corrupt";
const BUSY: &str = "store_busy";
const TASK_FAILED: &str = "store_task_failed";

/// The hash fields of a grant key, in the order they are read.
const GRANT_FIELDS: [&str; 3] = ["record", "generation", "rotated_at"];

/// Shared by the scripts that write: drop the index entries whose expiry (ms, the caller's clock)
/// has passed, and keep the index itself no longer than its latest record.
const LUA_INDEX: &str = r"
local function prune(index, now)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
end
local function keep_index(index)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('PEXPIREAT', index, top[2]) end
end
";

/// KEYS: grant, index. ARGV: record, generation, rotated_at, expires_at (s), expiry (ms), now
/// (ms), max_records. 1 stored, -1 full (a new record past the bound).
const LUA_PUT: &str = r"
prune(KEYS[2], ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'generation', ARGV[2], 'rotated_at', ARGV[3], 'expires_at', ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], KEYS[1])
keep_index(KEYS[2])
return 1
";

/// KEYS: any record, index. Forgets the record (a revocation, an unlock).
const LUA_FORGET: &str = r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
keep_index(KEYS[2])
return 1
";

/// KEYS: mark, index. ARGV: until (ms), now (ms), max_records. 1 taken, 0 already taken, -1 full.
const LUA_TAKE_ONCE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
prune(KEYS[2], ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], '1')
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
keep_index(KEYS[2])
return 1
";

/// KEYS: grant. ARGV: expected, next, rotated_at (s), now (s). 1 advanced, 0 not (another
/// generation, no grant, or an ended one). The generation is compared as the decimal string it was
/// written as: exact for every u64.
const LUA_ADVANCE: &str = r"
local fields = redis.call('HMGET', KEYS[1], 'generation', 'expires_at')
if not fields[1] or not fields[2] then return 0 end
if tonumber(fields[2]) <= tonumber(ARGV[4]) then return 0 end
if fields[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'generation', ARGV[2], 'rotated_at', ARGV[3])
return 1
";

/// KEYS: lock, index. ARGV: holder, ttl (ms), deadline (ms, the caller's clock), now (ms),
/// max_records. 1 locked, 0 held by someone, -1 full. The lock's own expiry is `PX` on the
/// server's clock.
const LUA_TRY_LOCK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
prune(KEYS[2], ARGV[4])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
keep_index(KEYS[2])
return 1
";

/// KEYS: lock, index. ARGV: holder. Releases the lock only for its holder.
const LUA_UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  keep_index(KEYS[2])
end
return 1
";

/// The store could not be opened: what [`RedisGrantStore::connect`] answers. The message names
/// the server's `host:port/db` and what to check, never the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The server could not be reached, or did not answer `PING` in time.
    #[error(
        "cannot reach the Redis grant store at {address} ({detail}); check that it runs and that \
         `general_settings.mcp_oauth_store` names its host and port"
    )]
    Unreachable {
        /// `host:port/db`.
        address: String,
        /// What failed, without credentials.
        detail: String,
    },
    /// The server refused the user name or password.
    #[error(
        "the Redis grant store at {address} refused the credentials; check the user and password in \
         `general_settings.mcp_oauth_store`"
    )]
    Auth {
        /// `host:port/db`.
        address: String,
    },
    /// The server answered, but refused a command the store needs (`SELECT` of the database, …).
    #[error(
        "the Redis grant store at {address} refused a command ({detail}); check the database number \
         and the user's ACL permissions"
    )]
    Refused {
        /// `host:port/db`.
        address: String,
        /// The server's error, without credentials.
        detail: String,
    },
}

/// The Redis grant store; `Clone` shares the store (and its connection pool).
pub struct RedisGrantStore<R: Runtime> {
    inner: Arc<Inner>,
    keys: Keys,
    runtime: R,
}

impl<R: Runtime> Clone for RedisGrantStore<R> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), keys: self.keys.clone(), runtime: self.runtime.clone() }
    }
}

/// What the clones of one store share.
struct Inner {
    info: ConnectionInfo,
    /// `host:port/db`, for messages.
    address: String,
    pool: Mutex<Pool>,
    /// Signalled whenever a connection goes back to the pool or a slot frees.
    freed: Condvar,
    scripts: Scripts,
    max_records: usize,
}

/// Idle connections, and how many are open in all (idle or leased).
struct Pool {
    idle: Vec<Connection>,
    open: usize,
}

struct Scripts {
    put: Script,
    forget: Script,
    take_once: Script,
    advance: Script,
    try_lock: Script,
    unlock: Script,
}

impl Scripts {
    fn new() -> Self {
        let indexed = |body: &str| Script::new(&format!("{LUA_INDEX}{body}"));
        Self {
            put: indexed(LUA_PUT),
            forget: indexed(LUA_FORGET),
            take_once: indexed(LUA_TAKE_ONCE),
            advance: Script::new(LUA_ADVANCE),
            try_lock: indexed(LUA_TRY_LOCK),
            unlock: indexed(LUA_UNLOCK),
        }
    }
}

/// The key names under one prefix.
#[derive(Clone, Debug)]
struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    fn grant(&self, id: &GrantId) -> String {
        format!("{}:grant:{}", self.prefix, id.as_str())
    }

    fn once(&self, key: &str) -> String {
        format!("{}:once:{key}", self.prefix)
    }

    fn lock(&self, grant: &GrantId) -> String {
        format!("{}:lock:{}", self.prefix, grant.as_str())
    }

    fn index(&self) -> String {
        format!("{}:records", self.prefix)
    }

    /// The `SCAN MATCH` pattern of every grant key, the prefix's glob characters escaped.
    fn grant_pattern(&self) -> String {
        let mut pattern = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":grant:*");
        pattern
    }
}

/// The store's view of now, on the caller's wall clock.
#[derive(Clone, Copy)]
struct Now {
    secs: UnixTime,
    millis: u64,
}

impl Now {
    fn read() -> Self {
        let since = since_epoch();
        Self { secs: UnixTime::from_secs(since.as_secs()), millis: millis(since) }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One connection taken from the pool; dropping it returns a healthy connection to the pool and
/// frees the slot of a broken one (so a panic or an early return never leaks a slot).
struct Lease {
    inner: Arc<Inner>,
    connection: Option<Connection>,
}

impl Lease {
    /// A pooled connection, or a new one while fewer than [`MAX_CONNECTIONS`] are open, waiting at
    /// most [`IO_TIMEOUT`] for one to free.
    fn take(inner: &Arc<Inner>) -> Result<Self, &'static str> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut pool = lock_pool(inner);
        loop {
            if let Some(connection) = pool.idle.pop() {
                return Ok(Self { inner: inner.clone(), connection: Some(connection) });
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BUSY);
            }
            pool = match inner.freed.wait_timeout(pool, left) {
                Ok((pool, _)) => pool,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(pool);
        // The slot is counted from here on: a failed connect gives it back when the lease drops.
        let mut lease = Self { inner: inner.clone(), connection: None };
        lease.connection = Some(open(&inner.info).map_err(|error| reason(&error))?);
        Ok(lease)
    }

    /// Runs one exchange on the connection; after any error but a clean error reply from the
    /// server, the connection's state is unknown (a reply may still arrive), so it is dropped.
    fn run<T>(&mut self, exchange: impl FnOnce(&mut Connection) -> ::redis::RedisResult<T>) -> Result<T, &'static str> {
        let connection = self.connection.as_mut().ok_or(UNREACHABLE)?;
        exchange(connection).map_err(|error| {
            if !matches!(error.kind(), ErrorKind::Server(_)) {
                self.connection = None;
            }
            reason(&error)
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = lock_pool(&self.inner);
        match self.connection.take() {
            Some(connection) => pool.idle.push(connection),
            None => pool.open = pool.open.saturating_sub(1),
        }
        drop(pool);
        self.inner.freed.notify_one();
    }
}

/// The pool holds no invariant a panic could break (a connection is either in it or not), so a
/// poisoned lock is used as is.
fn lock_pool(inner: &Inner) -> MutexGuard<'_, Pool> {
    inner.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens one connection with every connect, read and write bounded by [`IO_TIMEOUT`]; the client
/// authenticates and selects the database as it connects.
fn open(info: &ConnectionInfo) -> ::redis::RedisResult<Connection> {
    let connection = Client::open(info.clone())?.get_connection_with_timeout(IO_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

/// The reason code an error answers with.
fn reason(error: &RedisError) -> &'static str {
    if error.is_timeout() {
        TIMED_OUT
    } else if matches!(error.kind(), ErrorKind::Server(_)) {
        REFUSED
    } else {
        UNREACHABLE
    }
}

fn connection_info(setting: &RedisSetting) -> Result<ConnectionInfo, RedisError> {
    // The setting keeps an IPv6 address in brackets, as in the URL; the socket wants it bare.
    let host = setting.host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let mut redis = RedisConnectionInfo::default().set_db(i64::from(setting.db));
    if let Some(username) = &setting.username {
        redis = redis.set_username(username);
    }
    if let Some(password) = &setting.password {
        redis = redis.set_password(password.expose());
    }
    Ok(ConnectionAddr::Tcp(host, setting.port).into_connection_info()?.set_redis_settings(redis))
}

impl<R: Runtime> RedisGrantStore<R> {
    /// Connects to `setting` (PING checked, with connect/read/write timeouts), blocking: call it at
    /// start-up or inside `spawn_blocking`.
    pub fn connect(setting: &RedisSetting, max_records: usize, runtime: R) -> Result<Self, RedisStoreError> {
        let address = format!("{}:{}/{}", setting.host, setting.port, setting.db);
        // No message may carry the password, whatever a library or server puts in its errors.
        let redact = |error: &RedisError| {
            let detail = error.to_string();
            match setting.password.as_ref().map(|password| password.expose()) {
                Some(password) if !password.is_empty() => detail.replace(password, "<redacted>"),
                _ => detail,
            }
        };
        let describe = |error: RedisError| {
            let auth_codes = ["WRONGPASS", "NOAUTH", "NOPERM"];
            if error.kind() == ErrorKind::AuthenticationFailed
                || error.code().is_some_and(|code| auth_codes.contains(&code))
            {
                RedisStoreError::Auth { address: address.clone() }
            } else if matches!(error.kind(), ErrorKind::Server(_)) {
                RedisStoreError::Refused { address: address.clone(), detail: redact(&error) }
            } else {
                RedisStoreError::Unreachable { address: address.clone(), detail: redact(&error) }
            }
        };
        let info = connection_info(setting).map_err(describe)?;
        let mut connection = open(&info).map_err(describe)?;
        ::redis::cmd("PING").query::<String>(&mut connection).map_err(describe)?;
        let inner = Inner {
            info,
            address,
            pool: Mutex::new(Pool { idle: vec![connection], open: 1 }),
            freed: Condvar::new(),
            scripts: Scripts::new(),
            max_records,
        };
        Ok(Self { inner: Arc::new(inner), keys: Keys { prefix: DEFAULT_PREFIX.into() }, runtime })
    }

    /// The same store with its keys under `prefix` instead of [`DEFAULT_PREFIX`]: separate
    /// gateways (or tests) sharing one Redis database each see only their own records.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.keys = Keys { prefix: prefix.into().into() };
        self
    }

    /// Whether the server answers PING now (for /health); never blocks longer than the timeouts.
    pub async fn ping(&self) -> bool {
        let inner = self.inner.clone();
        let answer = self.runtime.spawn_blocking(move || {
            Lease::take(&inner)?.run(|connection| ::redis::cmd("PING").query::<String>(connection))
        });
        // Waiting for a slot, connecting and one reply are each bounded by IO_TIMEOUT.
        matches!(timeout(&self.runtime, IO_TIMEOUT * 3 + Duration::from_millis(500), answer).await, Ok(Ok(Ok(_))))
    }

    /// Runs `work` with a leased connection on a blocking thread; every failure is a reason code.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Lease, &Inner) -> Result<T, &'static str> + Send + 'static,
    ) -> impl Future<Output = Result<T, &'static str>> + Send + 'static {
        let inner = self.inner.clone();
        let task = self.runtime.spawn_blocking(move || {
            let mut lease = Lease::take(&inner)?;
            work(&mut lease, &inner)
        });
        async move { task.await.unwrap_or(Err(TASK_FAILED)) }
    }
}

/// Answers one operation on a leased connection.
fn apply_on(lease: &mut Lease, inner: &Inner, keys: &Keys, op: StoreOp, now: Now) -> Result<StoreResult, &'static str> {
    let scripts = &inner.scripts;
    let max = inner.max_records;
    match op {
        StoreOp::GetGrant { id } => {
            let key = keys.grant(&id);
            let fields = lease.run(|connection| ::redis::cmd("HMGET").arg(&key).arg(&GRANT_FIELDS).query(connection))?;
            let grant = read_grant(fields, now)?;
            if grant.as_ref().is_some_and(|grant| grant.id != id) {
                return Err(CORRUPT);
            }
            Ok(StoreResult::Grant(grant.map(Box::new)))
        }
        StoreOp::PutGrant(grant) => {
            let key = keys.grant(&grant.id);
            if grant.is_expired(now.secs) {
                // A grant written already ended is a revocation: forget it.
                lease.run(|connection| scripts.forget.key(&key).key(keys.index()).invoke::<i64>(connection))?;
                return Ok(StoreResult::Stored);
            }
            let expires_ms = grant.expires_at.as_secs().saturating_mul(1000);
            let stored = lease.run(|connection| {
                scripts
                    .put
                    .key(&key)
                    .key(keys.index())
                    .arg(record::encode(&grant))
                    .arg(grant.generation)
                    .arg(grant.rotated_at.as_secs())
                    .arg(grant.expires_at.as_secs())
                    .arg(expires_ms)
                    .arg(now.millis)
                    .arg(max)
                    .invoke::<i64>(connection)
            })?;
            Ok(if stored == 1 { StoreResult::Stored } else { StoreResult::Unavailable { reason: STORE_FULL } })
        }
        StoreOp::TakeOnce { key, until } => {
            if now.secs >= until {
                // Nothing is left to guard: refuse, as the memory store does.
                return Ok(StoreResult::Taken(false));
            }
            let taken = lease.run(|connection| {
                scripts
                    .take_once
                    .key(keys.once(&key.0))
                    .key(keys.index())
                    .arg(until.as_secs().saturating_mul(1000))
                    .arg(now.millis)
                    .arg(max)
                    .invoke::<i64>(connection)
            })?;
            Ok(match taken {
                -1 => StoreResult::Unavailable { reason: STORE_FULL },
                taken => StoreResult::Taken(taken == 1),
            })
        }
        StoreOp::AdvanceGeneration { grant, expected, now: rotated_at } => {
            let Some(next) = expected.checked_add(1) else {
                return Ok(StoreResult::Advanced(false));
            };
            let advanced = lease.run(|connection| {
                scripts
                    .advance
                    .key(keys.grant(&grant))
                    .arg(expected)
                    .arg(next)
                    .arg(rotated_at.as_secs())
                    .arg(now.secs.as_secs())
                    .invoke::<i64>(connection)
            })?;
            Ok(StoreResult::Advanced(advanced == 1))
        }
        StoreOp::TryLock { grant, holder, ttl } => {
            // `PX 0` is an error in Redis; a zero ttl is a lock that ends at once.
            let ttl = millis(ttl).max(1);
            let locked = lease.run(|connection| {
                scripts
                    .try_lock
                    .key(keys.lock(&grant))
                    .key(keys.index())
                    .arg(&holder.0)
                    .arg(ttl)
                    .arg(now.millis.saturating_add(ttl))
                    .arg(now.millis)
                    .arg(max)
                    .invoke::<i64>(connection)
            })?;
            Ok(match locked {
                -1 => StoreResult::Unavailable { reason: STORE_FULL },
                locked => StoreResult::Locked(locked == 1),
            })
        }
        StoreOp::Unlock { grant, holder } => {
            lease.run(|connection| {
                scripts.unlock.key(keys.lock(&grant)).key(keys.index()).arg(&holder.0).invoke::<i64>(connection)
            })?;
            Ok(StoreResult::Unlocked)
        }
    }
}

/// The live grant a grant key's fields hold: `None` for a missing or ended one, `store_corrupt`
/// for anything that does not decode.
fn read_grant(fields: Vec<Option<Vec<u8>>>, now: Now) -> Result<Option<Grant>, &'static str> {
    let [record, generation, rotated_at]: [Option<Vec<u8>>; 3] = fields.try_into().map_err(|_| CORRUPT)?;
    let (record, generation, rotated_at) = match (record, generation, rotated_at) {
        (Some(record), Some(generation), Some(rotated_at)) => (record, generation, rotated_at),
        (None, None, None) => return Ok(None),
        _ => return Err(CORRUPT),
    };
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| CORRUPT);
    let number = |bytes: Vec<u8>| text(bytes)?.parse::<u64>().map_err(|_| CORRUPT);
    let mut grant = record::decode(&text(record)?).map_err(|_| CORRUPT)?;
    // The swapped fields are the truth; the record keeps the values it was written with.
    grant.generation = number(generation)?;
    grant.rotated_at = UnixTime::from_secs(number(rotated_at)?);
    Ok((!grant.is_expired(now.secs)).then_some(grant))
}

/// Up to `limit` live user grants, walking the grant keys with `SCAN`.
fn list_on(lease: &mut Lease, keys: &Keys, limit: usize, now: Now) -> Result<Vec<Grant>, &'static str> {
    let pattern = keys.grant_pattern();
    let mut listed = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor: u64 = 0;
    while listed.len() < limit {
        let (next, batch): (u64, Vec<Vec<u8>>) = lease.run(|connection| {
            ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query(connection)
        })?;
        if !batch.is_empty() {
            let mut reads = ::redis::pipe();
            for key in &batch {
                reads.cmd("HMGET").arg(key).arg(&GRANT_FIELDS);
            }
            let rows: Vec<Vec<Option<Vec<u8>>>> = lease.run(|connection| reads.query(connection))?;
            // SCAN may return a key twice; a record may expire between the two steps (`None`).
            for grant in rows.into_iter().map(|row| read_grant(row, now)) {
                if let Some(grant) = grant? {
                    if grant.is_user_grant() && listed.len() < limit && seen.insert(grant.id.clone()) {
                        listed.push(grant);
                    }
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(listed)
}

impl<R: Runtime> GrantStore for RedisGrantStore<R> {
    fn apply(&self, op: StoreOp) -> impl Future<Output = StoreResult> + Send {
        let keys = self.keys.clone();
        let answer = self.blocking(move |lease, inner| apply_on(lease, inner, &keys, op, Now::read()));
        async move { answer.await.unwrap_or_else(|reason| StoreResult::Unavailable { reason }) }
    }

    fn list_grants(&self, limit: usize) -> impl Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send {
        let keys = self.keys.clone();
        let listed = self.blocking(move |lease, _| list_on(lease, &keys, limit, Now::read()));
        async move { listed.await.map_err(|reason| StoreUnavailable { reason }) }
    }
}

impl<R: Runtime> fmt::Debug for RedisGrantStore<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGrantStore")
            .field("address", &self.inner.address)
            .field("prefix", &self.keys.prefix)
            .field("max_records", &self.inner.max_records)
            .finish_non_exhaustive()
    }
}
