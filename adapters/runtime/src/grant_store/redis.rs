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

use ::redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError,
};
use ::redis::{RedisConnectionInfo, Script};
use mcp_oauth_core::config::RedisSetting;
use mcp_oauth_core::grant::{Grant, GrantId, StoreOp, StoreResult, StoreUnavailable};
use mcp_oauth_core::seal::UnixTime;

use super::{GrantStore, STORE_FULL, record, since_epoch};
use crate::runtime::{Runtime, timeout};

/// The bound on each connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a single-use mark outlives its value's expiry in Redis. The mark expires on the
/// server's clock while the gateway judges the value's expiry on its own: the slack keeps a mark
/// alive through clock skew between them (a mark kept longer refuses nothing that could still
/// open), so a code cannot be used twice on a replica whose clock runs behind the server's.
const MARK_SLACK_MS: u64 = 5 * 60 * 1000;

/// The server's `maxmemory-policy` when it may evict keys (`maxmemory` set and the policy is not
/// `noeviction`); `None` when it cannot, or when `INFO` is not permitted (then with a warning).
fn evicting_policy(connection: &mut Connection) -> Option<String> {
    let info = match ::redis::cmd("INFO").arg("memory").query::<String>(connection) {
        Ok(info) => info,
        Err(_) => {
            tracing::warn!(
                "cannot read the Redis grant store's eviction policy (INFO not permitted); make sure \
                 its maxmemory-policy is noeviction"
            );
            return None;
        }
    };
    let field =
        |name: &str| info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    let limited =
        field("maxmemory").and_then(|bytes| bytes.parse::<u64>().ok()).is_some_and(|bytes| bytes > 0);
    let policy = field("maxmemory_policy").unwrap_or("noeviction");
    (limited && policy != "noeviction").then(|| policy.to_owned())
}

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

/// KEYS: mark, index. ARGV: until (ms), now (ms), max_records, kept until (ms). 1 taken, 0
/// already taken, -1 full. The mark holds its `until`, judged on the caller's clock like every
/// other expiry here; the key itself lives on, to `kept until` on the server's clock, so skew
/// between a replica and the server cannot remove a mark early.
const LUA_TAKE_ONCE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) and tonumber(held) > tonumber(ARGV[2]) then return 0 end
prune(KEYS[2], ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
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
    /// The server may evict keys under memory pressure (`maxmemory` set with a policy other than
    /// `noeviction`): an evicted single-use mark would let a code be used twice.
    #[error(
        "the Redis grant store at {address} may evict keys (maxmemory-policy {policy}); an evicted \
         single-use mark would let a code be used twice: set `maxmemory-policy noeviction` (or \
         `maxmemory 0`) for this database"
    )]
    Evicting {
        /// `host:port/db`.
        address: String,
        /// The server's `maxmemory-policy`.
        policy: String,
    },
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
    fn run<T>(
        &mut self,
        exchange: impl FnOnce(&mut Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T, &'static str> {
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
        if let Some(policy) = evicting_policy(&mut connection) {
            return Err(RedisStoreError::Evicting { address, policy });
        }
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

    /// Whether the server answers PING now; never blocks longer than the timeouts. (`/health`
    /// reads a record through [`StoreProbe`](mcp_oauth_core::gateway::StoreProbe) instead, which
    /// also proves the keys are readable.)
    pub async fn ping(&self) -> bool {
        let inner = self.inner.clone();
        let answer = self.runtime.spawn_blocking(move || {
            Lease::take(&inner)?.run(|connection| ::redis::cmd("PING").query::<String>(connection))
        });
        // Waiting for a slot, connecting and one reply are each bounded by IO_TIMEOUT.
        matches!(
            timeout(&self.runtime, IO_TIMEOUT * 3 + Duration::from_millis(500), answer).await,
            Ok(Ok(Ok(_)))
        )
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
fn apply_on(
    lease: &mut Lease,
    inner: &Inner,
    keys: &Keys,
    op: StoreOp,
    now: Now,
) -> Result<StoreResult, &'static str> {
    let scripts = &inner.scripts;
    let max = inner.max_records;
    match op {
        StoreOp::GetGrant { id } => {
            let key = keys.grant(&id);
            let fields = lease
                .run(|connection| ::redis::cmd("HMGET").arg(&key).arg(&GRANT_FIELDS).query(connection))?;
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
                lease
                    .run(|connection| scripts.forget.key(&key).key(keys.index()).invoke::<i64>(connection))?;
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
            Ok(if stored == 1 {
                StoreResult::Stored
            } else {
                StoreResult::Unavailable { reason: STORE_FULL }
            })
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
                    .arg(until.as_secs().saturating_mul(1000).saturating_add(MARK_SLACK_MS))
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
                scripts
                    .unlock
                    .key(keys.lock(&grant))
                    .key(keys.index())
                    .arg(&holder.0)
                    .invoke::<i64>(connection)
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
                if let Some(grant) = grant?
                    && grant.is_user_grant()
                    && listed.len() < limit
                    && seen.insert(grant.id.clone())
                {
                    listed.push(grant);
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

#[cfg(all(test, feature = "test-suite"))]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::process::Command;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::{Duration, Instant};

    use mcp_oauth_core::grant::{Grant, GrantId, LockHolder, OnceKey};
    use mcp_oauth_core::seal::UnixTime;
    use mcp_oauth_core::secret::Secret;

    use super::*;
    use crate::grant_store::unix_now;
    use crate::runtime::BlockingError;
    use crate::testing::RedisServer;

    /// A runtime of plain threads, enough for these tests (the crate has no executor of its own).
    #[derive(Clone, Debug)]
    struct Threads;

    impl Runtime for Threads {
        fn now(&self) -> Instant {
            Instant::now()
        }

        fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
            let (done, wait) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                let _ = done.send(());
            });
            async move {
                let _ = wait.await;
            }
        }

        fn spawn<F>(&self, task: F)
        where
            F: Future<Output = ()> + Send + 'static,
        {
            std::thread::spawn(move || block_on(task));
        }

        fn spawn_blocking<T, F>(
            &self,
            work: F,
        ) -> impl Future<Output = Result<T, BlockingError>> + Send + 'static
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            let (done, wait) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = done.send(work());
            });
            async move { wait.await.map_err(|_| BlockingError::new("the blocking thread panicked")) }
        }
    }

    struct Unpark(std::thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::park();
        }
    }

    fn grant(n: u8) -> Grant {
        crate::grant_store::sample_grant(n, unix_now().plus(Duration::from_secs(3600)), unix_now())
    }

    fn store(server: &RedisServer) -> RedisGrantStore<Threads> {
        RedisGrantStore::connect(&server.setting(), 100, Threads).expect("connects")
    }

    /// A direct connection, to look at and tamper with what the store wrote.
    fn raw(server: &RedisServer) -> Connection {
        open(&connection_info(&server.setting()).expect("info")).expect("connects")
    }

    fn signal(server: &RedisServer, signal: &str) {
        let status =
            Command::new("kill").args([signal, &server.pid().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }

    #[test]
    fn a_frozen_server_answers_unavailable_in_time_and_the_grant_survives_it() {
        let Some(server) = RedisServer::start() else { return };
        let store = store(&server);
        let grant = grant(1);
        block_on(store.put_grant(grant.clone())).expect("stored");

        signal(&server, "-STOP");
        let started = Instant::now();
        let answer = block_on(store.get_grant(grant.id.clone()));
        let waited = started.elapsed();
        let pinged = block_on(store.ping());
        signal(&server, "-CONT");
        assert_eq!(answer.map_err(|e| e.reason), Err(TIMED_OUT));
        assert!(waited < IO_TIMEOUT * 3, "answered after {waited:?}");
        assert!(!pinged, "a frozen server fails /health");

        // The timed-out connection was dropped; the next call opens a fresh one.
        assert_eq!(block_on(store.get_grant(grant.id.clone())), Ok(Some(grant)));
        assert!(block_on(store.ping()));
    }

    #[test]
    fn a_stopped_server_answers_unreachable_and_pings_false() {
        let Some(server) = RedisServer::start() else { return };
        let store = store(&server);
        drop(server);
        let answer = block_on(store.take_once(OnceKey("k".into()), unix_now().plus(Duration::from_secs(60))));
        assert!(answer.is_err(), "{answer:?}");
        assert!(!block_on(store.ping()));
    }

    #[test]
    fn a_wrong_password_is_a_connect_error_that_does_not_repeat_it() {
        let Some(server) = RedisServer::start_with_password("right-password-1") else { return };
        store(&server);
        let mut setting = server.setting();
        setting.password = Some(Secret::new("wrong-password-2"));
        let error = RedisGrantStore::connect(&setting, 100, Threads).expect_err("refused");
        assert!(matches!(error, RedisStoreError::Auth { .. }), "{error:?}");
        let message = format!("{error} {error:?}");
        assert!(!message.contains("password-"), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{}/0", server.port())), "{message}");

        setting.password = None;
        let error = RedisGrantStore::connect(&setting, 100, Threads).expect_err("refused");
        assert!(matches!(error, RedisStoreError::Auth { .. }), "no password: {error:?}");
        let debug = format!("{:?}", store(&server));
        assert!(!debug.contains("right-password"), "{debug}");
    }

    #[test]
    fn a_server_that_may_evict_keys_is_refused() {
        let Some(server) = RedisServer::start() else { return };
        let mut connection = raw(&server);
        let mut config = |name: &str, value: &str| {
            ::redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query::<String>(&mut connection)
                .expect("CONFIG")
        };
        config("maxmemory-policy", "allkeys-lru");
        // Without a memory limit nothing is ever evicted, whatever the policy.
        assert!(RedisGrantStore::connect(&server.setting(), 100, Threads).is_ok());
        config("maxmemory", "100mb");
        let error = RedisGrantStore::connect(&server.setting(), 100, Threads).expect_err("refused");
        assert!(
            matches!(&error, RedisStoreError::Evicting { policy, .. } if policy == "allkeys-lru"),
            "{error:?}"
        );
        assert!(error.to_string().contains("noeviction"), "{error}");
        config("maxmemory-policy", "noeviction");
        assert!(RedisGrantStore::connect(&server.setting(), 100, Threads).is_ok());
    }

    #[test]
    fn an_unreachable_server_is_a_connect_error_naming_it() {
        let Some(server) = RedisServer::start() else { return };
        let setting = server.setting();
        drop(server);
        let error = RedisGrantStore::connect(&setting, 100, Threads).expect_err("nothing listens");
        assert!(matches!(error, RedisStoreError::Unreachable { .. }), "{error:?}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{}", setting.port)), "{error}");
    }

    #[test]
    fn every_key_expires_with_its_record() {
        let Some(server) = RedisServer::start() else { return };
        let store = store(&server);
        let grant = grant(2);
        block_on(store.put_grant(grant.clone())).expect("stored");
        let until = unix_now().plus(Duration::from_secs(60));
        assert_eq!(block_on(store.take_once(OnceKey("code".into()), until)), Ok(true));
        let lock = GrantId::new("locked");
        let ttl = Duration::from_secs(30);
        assert_eq!(block_on(store.try_lock(lock.clone(), LockHolder("h".into()), ttl)), Ok(true));

        let mut connection = raw(&server);
        let mut pttl =
            |key: String| ::redis::cmd("PTTL").arg(&key).query::<i64>(&mut connection).expect("PTTL");
        let keys = Keys { prefix: DEFAULT_PREFIX.into() };
        let grant_ttl = pttl(keys.grant(&grant.id));
        assert!((3_500_000..=3_600_000).contains(&grant_ttl), "grant {grant_ttl}");
        // A mark outlives its value by the clock-skew slack.
        let mark_ttl = pttl(keys.once("code"));
        let slack = i64::try_from(MARK_SLACK_MS).expect("small");
        assert!((slack + 50_000..=slack + 60_000).contains(&mark_ttl), "mark {mark_ttl}");
        let lock_ttl = pttl(keys.lock(&lock));
        assert!((25_000..=30_000).contains(&lock_ttl), "lock {lock_ttl}");
        let index_ttl = pttl(keys.index());
        assert!(index_ttl >= grant_ttl - 1000, "index {index_ttl}");

        // Unlock and revocation forget the key and its index entry.
        block_on(store.unlock(lock.clone(), LockHolder("h".into()))).expect("unlocked");
        assert_eq!(pttl(keys.lock(&lock)), -2);
        let revoked = Grant { expires_at: UnixTime::from_secs(unix_now().as_secs() - 1), ..grant.clone() };
        block_on(store.put_grant(revoked)).expect("revoked");
        assert_eq!(pttl(keys.grant(&grant.id)), -2);
        let indexed: usize = ::redis::cmd("ZCARD").arg(keys.index()).query(&mut connection).expect("ZCARD");
        assert_eq!(indexed, 1, "only the mark is left");
    }

    #[test]
    fn a_garbled_record_answers_unavailable_not_a_guess() {
        let Some(server) = RedisServer::start() else { return };
        let store = store(&server);
        let (good, bad, odd) = (grant(3), grant(4), grant(5));
        for grant in [&good, &bad, &odd] {
            block_on(store.put_grant(grant.clone())).expect("stored");
        }
        let keys = Keys { prefix: DEFAULT_PREFIX.into() };
        let mut connection = raw(&server);
        let _: () = ::redis::cmd("HSET")
            .arg(keys.grant(&bad.id))
            .arg("record")
            .arg("{not json")
            .query(&mut connection)
            .expect("HSET");
        let _: () = ::redis::cmd("HSET")
            .arg(keys.grant(&odd.id))
            .arg("generation")
            .arg("1.5")
            .query(&mut connection)
            .expect("HSET");
        let corrupt = Err(StoreUnavailable { reason: CORRUPT });
        assert_eq!(block_on(store.get_grant(bad.id.clone())), corrupt);
        assert_eq!(block_on(store.get_grant(odd.id.clone())), corrupt);
        assert_eq!(block_on(store.list_grants(10)), Err(StoreUnavailable { reason: CORRUPT }));
        assert_eq!(block_on(store.get_grant(good.id.clone())), Ok(Some(good)), "the others still read");
    }

    #[test]
    fn prefixes_keep_stores_apart_and_generations_stay_exact() {
        let Some(server) = RedisServer::start() else { return };
        let blue = store(&server).with_prefix("blue");
        let green = store(&server).with_prefix("gr*en");
        let big = Grant { generation: u64::MAX - 1, ..grant(6) };
        block_on(blue.put_grant(big.clone())).expect("stored");
        assert_eq!(block_on(green.get_grant(big.id.clone())), Ok(None));
        assert_eq!(block_on(green.list_grants(10)), Ok(vec![]));
        assert_eq!(block_on(blue.list_grants(10)).expect("listed").len(), 1);

        let now = unix_now();
        assert_eq!(block_on(blue.advance_generation(big.id.clone(), u64::MAX - 2, now)), Ok(false));
        assert_eq!(block_on(blue.advance_generation(big.id.clone(), u64::MAX - 1, now)), Ok(true));
        let read = block_on(blue.get_grant(big.id.clone())).expect("answer").expect("live");
        assert_eq!(read.generation, u64::MAX, "no float on the way");
        assert_eq!(block_on(blue.advance_generation(big.id, u64::MAX, now)), Ok(false), "no overflow");
        assert!(format!("{blue:?}").contains(&format!("127.0.0.1:{}/0", server.port())));
    }
}
