//! The grant store: core's five atomic primitives ([`StoreOp`]) behind one async trait, and the
//! in-memory implementation (design §3, §4.10).
//!
//! [`GrantStore::apply`] answers one [`StoreOp`] with a [`StoreResult`]; the typed methods
//! (`get_grant`, `take_once`, …) wrap it and turn [`StoreResult::Unavailable`] or an answer of the
//! wrong kind into a [`StoreUnavailable`], so a caller cannot skip a single-use check when the
//! store is down. Backends implement exactly these primitives and no policy: grace windows, reuse
//! detection and expiry rules live in core. The contract every backend must meet is the
//! `grant_store_test_suite!` in `testing` (feature `test-suite`).
//!
//! [`MemoryGrantStore`] is the default backend: one process, bounded, every record with an expiry.
//! Its state sits behind a `std::sync::Mutex` held only inside a synchronous call (never across an
//! `.await`), which makes each primitive atomic.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, ready};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mcp_oauth_core::grant::{Grant, GrantId, LockHolder, OnceKey, StoreOp, StoreResult, StoreUnavailable};
use mcp_oauth_core::seal::UnixTime;

mod open;
/// The stored form of a grant, shared by the durable backends (in core, where it is fuzzed).
pub use mcp_oauth_core::grant_record as record;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use open::{DEFAULT_MAX_RECORDS, StoreOpenError, open_store};

/// A [`GrantStore`] behind a pointer: what the gateway holds, so the backend is chosen at start-up
/// (memory, SQLite, Redis) without a type parameter.
pub trait DynGrantStore: Send + Sync + 'static {
    /// [`GrantStore::apply`], boxed.
    fn apply_boxed(&self, op: StoreOp) -> std::pin::Pin<Box<dyn Future<Output = StoreResult> + Send + '_>>;

    /// [`GrantStore::list_grants`], boxed.
    fn list_boxed(
        &self,
        limit: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send + '_>>;
}

impl<S: GrantStore> DynGrantStore for S {
    fn apply_boxed(&self, op: StoreOp) -> std::pin::Pin<Box<dyn Future<Output = StoreResult> + Send + '_>> {
        Box::pin(self.apply(op))
    }

    fn list_boxed(
        &self,
        limit: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send + '_>> {
        Box::pin(self.list_grants(limit))
    }
}

/// The five atomic primitives of the grant store, answered asynchronously.
pub trait GrantStore: Send + Sync + 'static {
    /// Performs `op` atomically and answers it; a backend that cannot answers
    /// [`StoreResult::Unavailable`] with a reason code, never a guess.
    fn apply(&self, op: StoreOp) -> impl Future<Output = StoreResult> + Send;

    /// Up to `limit` live user grants ([`Grant::is_user_grant`]: not the pointer and registration
    /// records), in no particular order: what an operator sees with `mcp-oauth grants list`.
    ///
    /// Not one of the five primitives and never used by a machine: no decision depends on it. A
    /// backend that cannot enumerate answers `Unavailable` `listing_unsupported`.
    fn list_grants(&self, limit: usize) -> impl Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send {
        let _ = limit;
        ready(Err(StoreUnavailable { reason: "listing_unsupported" }))
    }

    /// Reads a grant; an unknown or expired grant is `None`.
    fn get_grant(&self, id: GrantId) -> impl Future<Output = Result<Option<Grant>, StoreUnavailable>> + Send {
        let answer = self.apply(StoreOp::GetGrant { id });
        async move { answer.await.expect_grant() }
    }

    /// Writes a grant, replacing any with its id.
    fn put_grant(&self, grant: Grant) -> impl Future<Output = Result<(), StoreUnavailable>> + Send {
        let answer = self.apply(StoreOp::PutGrant(Box::new(grant)));
        async move { answer.await.expect_stored() }
    }

    /// `true` the first time `key` is taken before `until`, `false` ever after.
    fn take_once(
        &self,
        key: OnceKey,
        until: UnixTime,
    ) -> impl Future<Output = Result<bool, StoreUnavailable>> + Send {
        let answer = self.apply(StoreOp::TakeOnce { key, until });
        async move { answer.await.expect_taken() }
    }

    /// Compare-and-swap of the grant's refresh generation from `expected` to `expected + 1`.
    fn advance_generation(
        &self,
        grant: GrantId,
        expected: u64,
        now: UnixTime,
    ) -> impl Future<Output = Result<bool, StoreUnavailable>> + Send {
        let answer = self.apply(StoreOp::AdvanceGeneration { grant, expected, now });
        async move { answer.await.expect_advanced() }
    }

    /// Takes the grant's refresh lock for `ttl` unless someone holds it.
    fn try_lock(
        &self,
        grant: GrantId,
        holder: LockHolder,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreUnavailable>> + Send {
        let answer = self.apply(StoreOp::TryLock { grant, holder, ttl });
        async move { answer.await.expect_locked() }
    }

    /// Releases the lock if `holder` holds it.
    fn unlock(
        &self,
        grant: GrantId,
        holder: LockHolder,
    ) -> impl Future<Output = Result<(), StoreUnavailable>> + Send {
        let answer = self.apply(StoreOp::Unlock { grant, holder });
        async move { answer.await.expect_unlocked() }
    }
}

impl<S: GrantStore> GrantStore for Arc<S> {
    fn apply(&self, op: StoreOp) -> impl Future<Output = StoreResult> + Send {
        S::apply(self, op)
    }

    fn list_grants(&self, limit: usize) -> impl Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send {
        S::list_grants(self, limit)
    }
}

/// The wall-clock time now, as core's [`UnixTime`] (the epoch if the clock is set before 1970).
pub fn unix_now() -> UnixTime {
    UnixTime::from_secs(since_epoch().as_secs())
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// The time since the Unix epoch, as the store sees it; injectable for tests.
type WallClock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The reason a full store gives.
pub const STORE_FULL: &str = "store_full";

/// Every this many writes, expired records are swept even when the store is not full.
const SWEEP_EVERY: u32 = 1024;

/// The in-memory grant store: one process only, at most `max_records` records (grants, single-use
/// marks and locks together), each forgotten at its expiry. Cloning shares the store.
///
/// Past the bound, expired records are pruned first; if none are, a new grant, mark or lock fails
/// closed with [`StoreResult::Unavailable`] `store_full` (rewriting an existing grant still works).
#[derive(Clone)]
pub struct MemoryGrantStore {
    state: Arc<Mutex<State>>,
    max_records: usize,
    clock: WallClock,
}

#[derive(Default)]
struct State {
    grants: HashMap<GrantId, Grant>,
    /// Single-use marks and when they may be forgotten.
    marks: HashMap<OnceKey, UnixTime>,
    /// Refresh locks: the holder and the deadline (milliseconds since the epoch).
    locks: HashMap<GrantId, (LockHolder, u128)>,
    writes: u32,
}

/// The store's view of now: whole seconds for grants and marks, milliseconds for locks.
#[derive(Clone, Copy)]
struct Now {
    secs: UnixTime,
    millis: u128,
}

impl State {
    fn len(&self) -> usize {
        self.grants.len() + self.marks.len() + self.locks.len()
    }

    fn sweep(&mut self, now: Now) {
        self.grants.retain(|_, grant| !grant.is_expired(now.secs));
        self.marks.retain(|_, until| now.secs < *until);
        self.locks.retain(|_, (_, deadline)| now.millis < *deadline);
        self.writes = 0;
    }

    /// Room for one more record: sweeps every [`SWEEP_EVERY`] writes and whenever the store is
    /// full, then says whether a record fits.
    fn make_room(&mut self, now: Now, max_records: usize) -> bool {
        self.writes = self.writes.saturating_add(1);
        if self.writes >= SWEEP_EVERY || self.len() >= max_records {
            self.sweep(now);
        }
        self.len() < max_records
    }

    fn live_grant(&mut self, id: &GrantId, now: Now) -> Option<&mut Grant> {
        if self.grants.get(id).is_some_and(|grant| grant.is_expired(now.secs)) {
            self.grants.remove(id);
        }
        self.grants.get_mut(id)
    }

    fn apply(&mut self, op: StoreOp, now: Now, max_records: usize) -> StoreResult {
        match op {
            StoreOp::GetGrant { id } => {
                StoreResult::Grant(self.live_grant(&id, now).map(|g| Box::new(g.clone())))
            }
            StoreOp::PutGrant(grant) => {
                if grant.is_expired(now.secs) {
                    // A grant written already ended is a revocation: forget it.
                    self.grants.remove(&grant.id);
                    return StoreResult::Stored;
                }
                if !self.grants.contains_key(&grant.id) && !self.make_room(now, max_records) {
                    return StoreResult::Unavailable { reason: STORE_FULL };
                }
                self.grants.insert(grant.id.clone(), *grant);
                StoreResult::Stored
            }
            StoreOp::TakeOnce { key, until } => {
                if now.secs >= until {
                    return StoreResult::Taken(false);
                }
                match self.marks.get(&key).copied() {
                    Some(kept) if now.secs < kept => return StoreResult::Taken(false),
                    Some(_) => {}
                    None if !self.make_room(now, max_records) => {
                        return StoreResult::Unavailable { reason: STORE_FULL };
                    }
                    None => {}
                }
                self.marks.insert(key, until);
                StoreResult::Taken(true)
            }
            StoreOp::AdvanceGeneration { grant, expected, now: rotated_at } => {
                let advanced = match self.live_grant(&grant, now) {
                    Some(grant) if grant.generation == expected => match expected.checked_add(1) {
                        Some(next) => {
                            grant.generation = next;
                            grant.rotated_at = rotated_at;
                            true
                        }
                        None => false,
                    },
                    _ => false,
                };
                StoreResult::Advanced(advanced)
            }
            StoreOp::TryLock { grant, holder, ttl } => {
                match self.locks.get(&grant).map(|(_, deadline)| *deadline) {
                    Some(deadline) if now.millis < deadline => return StoreResult::Locked(false),
                    Some(_) => {}
                    None if !self.make_room(now, max_records) => {
                        return StoreResult::Unavailable { reason: STORE_FULL };
                    }
                    None => {}
                }
                let deadline = now.millis.saturating_add(ttl.as_millis());
                self.locks.insert(grant, (holder, deadline));
                StoreResult::Locked(true)
            }
            StoreOp::Unlock { grant, holder } => {
                if self.locks.get(&grant).is_some_and(|(held_by, _)| *held_by == holder) {
                    self.locks.remove(&grant);
                }
                StoreResult::Unlocked
            }
        }
    }
}

impl MemoryGrantStore {
    /// A store holding at most `max_records` records, on the system's wall clock.
    pub fn new(max_records: usize) -> Self {
        Self::with_clock(max_records, since_epoch)
    }

    /// A store on `clock` (the time since the Unix epoch), for tests that move time by hand.
    pub fn with_clock(max_records: usize, clock: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        Self { state: Arc::new(Mutex::new(State::default())), max_records, clock: Arc::new(clock) }
    }

    /// How many records (grants, marks and locks, expired ones not yet swept included) it holds.
    pub fn len(&self) -> usize {
        self.state.lock().map_or(0, |state| state.len())
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers `op` at once; the whole operation runs under the lock.
    pub fn apply_now(&self, op: StoreOp) -> StoreResult {
        let since = (self.clock)();
        let now = Now { secs: UnixTime::from_secs(since.as_secs()), millis: since.as_millis() };
        match self.state.lock() {
            Ok(mut state) => state.apply(op, now, self.max_records),
            // A panic while the lock was held may have left the state half-written: fail closed.
            Err(_) => StoreResult::Unavailable { reason: "store_poisoned" },
        }
    }
}

impl fmt::Debug for MemoryGrantStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryGrantStore")
            .field("records", &self.len())
            .field("max_records", &self.max_records)
            .finish_non_exhaustive()
    }
}

impl GrantStore for MemoryGrantStore {
    fn apply(&self, op: StoreOp) -> impl Future<Output = StoreResult> + Send {
        ready(self.apply_now(op))
    }

    fn list_grants(&self, limit: usize) -> impl Future<Output = Result<Vec<Grant>, StoreUnavailable>> + Send {
        let now = (self.clock)();
        let now = UnixTime::from_secs(now.as_secs());
        let listed = match self.state.lock() {
            Ok(state) => Ok(state
                .grants
                .values()
                .filter(|grant| grant.is_user_grant() && !grant.is_expired(now))
                .take(limit)
                .cloned()
                .collect()),
            Err(_) => Err(StoreUnavailable { reason: "store_poisoned" }),
        };
        ready(listed)
    }
}

/// A live user grant `n` of server `s` for tests: its upstream token sealed to it, ending at
/// `expires_at`, last rotated at `rotated_at`. One fixture for the memory, SQLite and Redis tests
/// and the shared suite.
#[cfg(any(test, feature = "test-suite"))]
pub(crate) fn sample_grant(n: u8, expires_at: UnixTime, rotated_at: UnixTime) -> Grant {
    use mcp_oauth_core::grant::{Identity, SealedUpstreamToken};
    use mcp_oauth_core::seal::SealingKeys;
    use mcp_oauth_core::secret::Secret;
    let keys = SealingKeys::generate([7; 32]);
    let id = GrantId::from_random([n; 16]);
    let token = Secret::new(format!("upstream-{n}"));
    Grant {
        id: id.clone(),
        server: "s".into(),
        identity: Identity::new("master", &Secret::new("sk-suite"), &keys),
        client: "client".into(),
        upstream_access_token: SealedUpstreamToken::seal(&keys, "s", &id, expires_at, &token, [n; 24])
            .expect("a short token seals"), // ok: test fixture
        upstream_refresh_token: None,
        upstream_access_expires_at: None,
        expires_at,
        generation: 0,
        rotated_at,
        scope: "read".into(),
        upstream_client: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const START: u64 = 1_800_000_000;

    /// A store on a clock the test moves (milliseconds since the epoch).
    fn store(max: usize) -> (MemoryGrantStore, Arc<AtomicU64>) {
        let millis = Arc::new(AtomicU64::new(START * 1000));
        let clock = millis.clone();
        (
            MemoryGrantStore::with_clock(max, move || Duration::from_millis(clock.load(Ordering::SeqCst))),
            millis,
        )
    }

    fn grant(id: u8, expires_in: u64) -> Grant {
        super::sample_grant(id, UnixTime::from_secs(START + expires_in), UnixTime::from_secs(START))
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::from_secs(START + secs)
    }

    #[test]
    fn marks_and_grants_expire_on_the_store_clock() {
        let (store, clock) = store(100);
        let mark = OnceKey("code-1".into());
        assert_eq!(
            store.apply_now(StoreOp::TakeOnce { key: mark.clone(), until: at(60) }),
            StoreResult::Taken(true)
        );
        assert_eq!(
            store.apply_now(StoreOp::TakeOnce { key: mark.clone(), until: at(60) }),
            StoreResult::Taken(false)
        );
        assert_eq!(store.apply_now(StoreOp::PutGrant(Box::new(grant(1, 30)))), StoreResult::Stored);
        clock.store((START + 30) * 1000, Ordering::SeqCst);
        let id = GrantId::from_random([1; 16]);
        assert_eq!(store.apply_now(StoreOp::GetGrant { id: id.clone() }), StoreResult::Grant(None));
        let advance = StoreOp::AdvanceGeneration { grant: id, expected: 0, now: at(30) };
        assert_eq!(
            store.apply_now(advance),
            StoreResult::Advanced(false),
            "an expired grant does not advance"
        );
        clock.store((START + 60) * 1000, Ordering::SeqCst);
        // The mark is gone with its value's expiry, and a past `until` is refused.
        assert_eq!(
            store.apply_now(StoreOp::TakeOnce { key: mark.clone(), until: at(120) }),
            StoreResult::Taken(true)
        );
        assert_eq!(
            store.apply_now(StoreOp::TakeOnce { key: OnceKey("x".into()), until: at(60) }),
            StoreResult::Taken(false)
        );
    }

    #[test]
    fn a_full_store_prunes_expired_records_first_then_fails_closed() {
        let (store, clock) = store(4);
        for n in 0..3 {
            assert_eq!(store.apply_now(StoreOp::PutGrant(Box::new(grant(n, 100)))), StoreResult::Stored);
        }
        let take = |key: &str, until| store.apply_now(StoreOp::TakeOnce { key: OnceKey(key.into()), until });
        assert_eq!(take("short", at(10)), StoreResult::Taken(true));
        assert_eq!(store.len(), 4);
        let full = StoreResult::Unavailable { reason: STORE_FULL };
        assert_eq!(store.apply_now(StoreOp::PutGrant(Box::new(grant(9, 100)))), full);
        assert_eq!(take("other", at(10)), full);
        let lock = StoreOp::TryLock {
            grant: GrantId::new("g"),
            holder: LockHolder("h".into()),
            ttl: Duration::from_secs(5),
        };
        assert_eq!(store.apply_now(lock), full);
        // Rewriting a grant it holds still works.
        assert_eq!(store.apply_now(StoreOp::PutGrant(Box::new(grant(0, 200)))), StoreResult::Stored);
        // Once the short mark has expired it makes room.
        clock.store((START + 10) * 1000, Ordering::SeqCst);
        assert_eq!(store.apply_now(StoreOp::PutGrant(Box::new(grant(9, 100)))), StoreResult::Stored);
        assert_eq!(store.len(), 4);
        // A grant written already expired is a revocation.
        assert_eq!(store.apply_now(StoreOp::PutGrant(Box::new(grant(9, 5)))), StoreResult::Stored);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn locks_expire_to_the_millisecond_and_only_the_holder_unlocks() {
        let (store, clock) = store(10);
        let lock = |holder: &str| StoreOp::TryLock {
            grant: GrantId::new("g"),
            holder: LockHolder(holder.into()),
            ttl: Duration::from_millis(250),
        };
        assert_eq!(store.apply_now(lock("a")), StoreResult::Locked(true));
        assert_eq!(store.apply_now(lock("a")), StoreResult::Locked(false), "not re-entrant");
        store.apply_now(StoreOp::Unlock { grant: GrantId::new("g"), holder: LockHolder("b".into()) });
        assert_eq!(store.apply_now(lock("b")), StoreResult::Locked(false), "b cannot unlock a's lock");
        clock.fetch_add(249, Ordering::SeqCst);
        assert_eq!(store.apply_now(lock("b")), StoreResult::Locked(false));
        clock.fetch_add(1, Ordering::SeqCst);
        assert_eq!(store.apply_now(lock("b")), StoreResult::Locked(true));
    }

    #[test]
    fn a_sweep_runs_every_so_many_writes() {
        let (store, clock) = store(usize::MAX);
        for n in 0..100 {
            store.apply_now(StoreOp::TakeOnce { key: OnceKey(format!("old-{n}")), until: at(1) });
        }
        clock.store((START + 1) * 1000, Ordering::SeqCst);
        for n in 0..SWEEP_EVERY {
            store.apply_now(StoreOp::TakeOnce { key: OnceKey(format!("new-{n}")), until: at(100) });
        }
        assert!(store.len() <= SWEEP_EVERY as usize, "{}", store.len());
        assert!(!store.is_empty());
        assert!(format!("{store:?}").contains("max_records"));
    }
}
