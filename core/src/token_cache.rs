//! A sans-IO token cache with single flight, refresh ahead of expiry and failure backoff
//! (design §4.3).
//!
//! [`TokenCache`] decides, for one key (a server, a server + user, …), whether a caller may use the
//! cached token, must fetch a new one, must wait for someone else's fetch, or must fail fast because
//! recent fetches failed. It holds no lock, reads no clock and draws no random number: the time is
//! an argument (a core [`Instant`] on the driver's clock) and the adapter supplies the locking and
//! the waking (see `mcp_oauth_tokio::token_cache::SharedTokenCache`).
//!
//! # The rules
//!
//! For an entry stored from a ticket issued at `stored_at` (the moment the fetch was *started*,
//! so the server minted the token later and the computed expiry is never later than the real one):
//!
//! - **Lifetime.** `ttl` comes from the caller's [`TtlPolicy`]: [`m2m_cache_ttl`] for
//!   client-credentials tokens, [`user_token_ttl`] for per-user tokens, or a fixed value; it is
//!   clamped to `expires_in` when the server sent one. The entry is *stale* at
//!   `stale_at = stored_at + ttl`; a stale entry is never handed out (and is dropped on lookup).
//!   Since `ttl ≤ expires_in`, a [`Lookup::Hit`] never returns a token at or past
//!   `stored_at + expires_in`. A `ttl` of zero (a non-positive `expires_in`) means "do not cache":
//!   the token goes to the leader and the waiters of that fetch only.
//! - **Refresh ahead.** The last part of the lifetime is the refresh window:
//!   `window = min(max(ttl × percent / 100, min_window), ttl / 2)` with the defaults
//!   `percent = 10` and `min_window = 5 s` ([`RefreshAhead`]), so a 3540 s TTL refreshes from
//!   3186 s, a 100 s TTL from 90 s, a 40 s TTL from 35 s and a 10 s TTL from 5 s.
//!   `refresh_at = stale_at − window`.
//!   In `[refresh_at, stale_at)` the **first** lookup (with no fetch in flight and no backoff
//!   running) gets [`Lookup::Fetch`] — its ticket carries the still-valid token
//!   ([`Ticket::current`]) — and every other lookup keeps getting [`Lookup::Hit`] with the old token
//!   until the refresh completes. Nobody but the leader waits for the refresh of a valid token.
//! - **Single flight.** While a ticket is outstanding for a key, a lookup that has no fresh token to
//!   return gets [`Lookup::Wait`]; no second ticket is issued for that key until the first is
//!   completed or abandoned. At most one ticket per key is current at any time.
//! - **Backoff.** A failed fetch (`complete` with `Err(reason)`) records the failure: after the
//!   `n`-th consecutive failure no ticket is issued for
//!   `min(initial × 2^(n−1), max)` (defaults 1 s, 2 s, 4 s … capped at 60 s, [`Backoff`]); a lookup
//!   with no fresh token gets [`Lookup::BackingOff`] with the deadline and the last reason code.
//!   A still-fresh token keeps being served during backoff (only its refresh waits). A success
//!   resets the count.
//! - **Invalidation.** [`TokenCache::invalidate`] (a 401 from the resource server) drops the cached
//!   token only if it is still the token the caller used; any number of concurrent 401s for the same
//!   token drop it once, and a newer token is never dropped. An outstanding fetch is kept: its result
//!   is a new token anyway, so callers wait for it instead of starting another.
//! - **Generations.** Every ticket has a unique id. [`TokenCache::complete`] and
//!   [`TokenCache::abandon`] act only if the ticket is the key's current one; a ticket made obsolete
//!   by [`TokenCache::remove`] (credentials changed, configuration reloaded) comes back as
//!   [`Completion::Stale`] and changes nothing, so an old fetch can never overwrite newer state or
//!   clear a newer flight.
//! - **Abandonment.** A leader that gives up (its future was dropped) calls
//!   [`TokenCache::abandon`]: the flight ends without recording a failure, and the next lookup
//!   issues a new ticket.
//!
//! ```
//! use std::time::Duration;
//! use mcp_oauth_core::machine::Instant;
//! use mcp_oauth_core::secret::Secret;
//! use mcp_oauth_core::token_cache::{CacheConfig, Completion, Fetched, Lookup, TokenCache, TtlPolicy};
//!
//! let mut cache = TokenCache::new(CacheConfig::default());
//! let t0 = Instant::ZERO;
//! let Lookup::Fetch(ticket) = cache.lookup(&"server-a", t0) else { unreachable!() };
//! assert!(matches!(cache.lookup(&"server-a", t0), Lookup::Wait));
//! let fetched =
//!     Fetched { access_token: Secret::new("at-1"), expires_in: Some(3600), policy: TtlPolicy::M2m };
//! let done = cache.complete(ticket, Ok(fetched), t0.plus(Duration::from_millis(80)));
//! let Completion::Fresh { token, .. } = done else { unreachable!() };
//! assert_eq!(token.stale_at(), t0.plus(Duration::from_secs(3540)));
//! assert!(matches!(cache.lookup(&"server-a", t0.plus(Duration::from_secs(60))), Lookup::Hit(_)));
//! ```
//!
//! [`m2m_cache_ttl`]: crate::token::m2m_cache_ttl
//! [`user_token_ttl`]: crate::token::user_token_ttl

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use crate::machine::Instant;
use crate::metadata::TokenResponse;
use crate::secret::Secret;
use crate::token::{DEFAULT_M2M_EXPIRES_IN, m2m_cache_ttl, user_token_ttl};

/// The reason code recorded when a fetch is given up without an answer (see
/// [`TokenCache::abandon`]); adapters use it for the error they hand to waiters if they choose not to
/// retry.
pub const ABANDONED: &str = "token_fetch_abandoned";

/// When the refresh window opens; see the module docs for the exact rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshAhead {
    /// The window as a share of the TTL, in percent (10 by default).
    pub percent: u32,
    /// The shortest window (5 s by default); the window is still at most half the TTL.
    pub min_window: Duration,
}

impl Default for RefreshAhead {
    fn default() -> Self {
        Self { percent: 10, min_window: Duration::from_secs(5) }
    }
}

impl RefreshAhead {
    /// No refresh ahead: a token is served until it is stale, then fetched while callers wait.
    pub const DISABLED: Self = Self { percent: 0, min_window: Duration::ZERO };

    /// The refresh window for a token cached for `ttl`:
    /// `min(max(ttl × percent / 100, min_window), ttl / 2)`.
    pub fn window(&self, ttl: Duration) -> Duration {
        let share = ttl.as_millis().saturating_mul(u128::from(self.percent)) / 100;
        let share = Duration::from_millis(u64::try_from(share).unwrap_or(u64::MAX));
        share.max(self.min_window).min(ttl / 2)
    }
}

/// How long failures keep a key from fetching again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (1 s by default); it doubles with each further failure.
    pub initial: Duration,
    /// The longest wait (60 s by default).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (`failures ≥ 1`):
    /// `min(initial × 2^(failures − 1), max)`; zero for no failure.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }
}

/// The cache's tunables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheConfig {
    /// The refresh-ahead window.
    pub refresh_ahead: RefreshAhead,
    /// The failure backoff.
    pub backoff: Backoff,
}

/// How long a fetched token may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlPolicy {
    /// A client-credentials token: [`m2m_cache_ttl`].
    M2m,
    /// A per-user token: [`user_token_ttl`] with the server's
    /// `token_storage_ttl_seconds`.
    User {
        /// The configured storage TTL, if any.
        token_storage_ttl_seconds: Option<u64>,
    },
    /// A caller-computed lifetime (still clamped to `expires_in`).
    Fixed(Duration),
}

impl TtlPolicy {
    /// The cache lifetime for a token with this `expires_in`, never longer than `expires_in`.
    pub fn ttl(self, expires_in: Option<i64>) -> Duration {
        let ttl = match self {
            Self::M2m => Duration::from_secs(m2m_cache_ttl(expires_in)),
            Self::User { token_storage_ttl_seconds } => {
                Duration::from_secs(user_token_ttl(expires_in, token_storage_ttl_seconds))
            }
            Self::Fixed(ttl) => ttl,
        };
        match real_lifetime(expires_in) {
            Some(lifetime) => ttl.min(lifetime),
            None => ttl,
        }
    }
}

/// `expires_in` as a duration (a non-positive value is zero).
fn real_lifetime(expires_in: Option<i64>) -> Option<Duration> {
    expires_in.map(|seconds| Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// A fetched token, handed to [`TokenCache::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The access token.
    pub access_token: Secret,
    /// The server's `expires_in`, if it sent one.
    pub expires_in: Option<i64>,
    /// How long it may be cached.
    pub policy: TtlPolicy,
}

impl Fetched {
    /// A client-credentials token response under [`TtlPolicy::M2m`].
    pub fn m2m(response: &TokenResponse) -> Self {
        Self::with_policy(response, TtlPolicy::M2m)
    }

    /// A token response under `policy`.
    pub fn with_policy(response: &TokenResponse, policy: TtlPolicy) -> Self {
        Self { access_token: response.access_token.clone(), expires_in: response.expires_in, policy }
    }
}

/// A token the cache hands out, with its timeline. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedToken {
    access_token: Secret,
    stored_at: Instant,
    refresh_at: Instant,
    stale_at: Instant,
    expires_at: Instant,
}

impl CachedToken {
    fn new(fetched: Fetched, stored_at: Instant, refresh_ahead: &RefreshAhead) -> Self {
        let ttl = fetched.policy.ttl(fetched.expires_in);
        let lifetime = match (real_lifetime(fetched.expires_in), fetched.policy) {
            (Some(lifetime), _) => lifetime,
            (None, TtlPolicy::M2m) => Duration::from_secs(DEFAULT_M2M_EXPIRES_IN).max(ttl),
            (None, _) => ttl,
        };
        let stale_at = stored_at.plus(ttl);
        let refresh_at = Instant::from_millis(
            stale_at.as_millis().saturating_sub(duration_millis(refresh_ahead.window(ttl))),
        );
        Self {
            access_token: fetched.access_token,
            stored_at,
            refresh_at,
            stale_at,
            expires_at: stored_at.plus(lifetime),
        }
    }

    /// The access token.
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }

    /// When the fetch that produced it started (a lower bound on when it was issued).
    pub fn stored_at(&self) -> Instant {
        self.stored_at
    }

    /// When the refresh window opens.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    /// When it stops being handed out (`stored_at + ttl`).
    pub fn stale_at(&self) -> Instant {
        self.stale_at
    }

    /// `stored_at + expires_in` (or the assumed lifetime when the server sent none): never later
    /// than the real expiry.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Whether it may be handed out at `now` (`now < stale_at`).
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.stale_at
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("access_token", &self.access_token)
            .field("stored_at", &self.stored_at)
            .field("refresh_at", &self.refresh_at)
            .field("stale_at", &self.stale_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The right, and the duty, to fetch a token for one key: hand it back to
/// [`TokenCache::complete`] or [`TokenCache::abandon`]. Not `Clone`, so there is one per flight.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket<K> {
    key: K,
    id: u64,
    issued_at: Instant,
    current: Option<CachedToken>,
}

impl<K> Ticket<K> {
    /// The key to fetch for.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The ticket's unique id (its generation); adapters use it to match waiters to flights.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When it was issued; a token it brings in is stored as of this time.
    pub fn issued_at(&self) -> Instant {
        self.issued_at
    }

    /// For a refresh ahead of expiry: the still-valid token other callers keep getting meanwhile.
    pub fn current(&self) -> Option<&CachedToken> {
        self.current.as_ref()
    }
}

/// What a caller does next; see the module docs for the rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<K> {
    /// Use this token: it is fresh.
    Hit(CachedToken),
    /// Fetch a token and complete the ticket: the caller is the single flight leader for the key.
    Fetch(Ticket<K>),
    /// A fetch for the key is in flight: wait for its outcome.
    Wait,
    /// Recent fetches failed: fail fast until `until`.
    BackingOff {
        /// When a fetch may be tried again.
        until: Instant,
        /// The last failure's reason code.
        reason: &'static str,
    },
}

/// What [`TokenCache::complete`] or [`TokenCache::abandon`] did; the adapter passes it on to the
/// waiters of the flight.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// A token: stored when `cached` (a zero TTL is not cached), and for the waiters either way.
    Fresh {
        /// The token and its timeline.
        token: CachedToken,
        /// Whether later lookups will hit it.
        cached: bool,
    },
    /// The fetch failed; no ticket is issued for the key before `until`.
    Failed {
        /// The failure's reason code.
        reason: &'static str,
        /// The end of the backoff.
        until: Instant,
        /// Consecutive failures so far.
        failures: u32,
    },
    /// The flight was abandoned: waiters should look up again (one of them will lead).
    Abandoned,
    /// The ticket is not the key's current one (the key was removed since); nothing changed, and
    /// the waiters of the newer flight, if any, are not affected. A successful fetch's token is
    /// given back for the leader's own use only (it is not stored).
    Stale(Option<CachedToken>),
}

#[derive(Default)]
struct Entry {
    token: Option<CachedToken>,
    in_flight: Option<u64>,
    failures: u32,
    backoff_until: Option<Instant>,
    last_error: &'static str,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.token.is_none() && self.in_flight.is_none() && self.failures == 0
    }
}

/// The sans-IO token cache; see the module docs.
pub struct TokenCache<K> {
    entries: HashMap<K, Entry>,
    config: CacheConfig,
    next_id: u64,
}

impl<K> fmt::Debug for TokenCache<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> Default for TokenCache<K> {
    fn default() -> Self {
        Self::new(CacheConfig::default())
    }
}

impl<K: Eq + Hash + Clone> TokenCache<K> {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Self { entries: HashMap::new(), config, next_id: 0 }
    }

    /// The tunables.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Decides what a caller asking for `key` at `now` does.
    pub fn lookup(&mut self, key: &K, now: Instant) -> Lookup<K> {
        let entry = match self.entries.get_mut(key) {
            Some(entry) => entry,
            None => self.entries.entry(key.clone()).or_default(),
        };
        if entry.token.as_ref().is_some_and(|token| !token.is_fresh(now)) {
            entry.token = None;
        }
        let backing_off = entry.backoff_until.filter(|until| now < *until);
        if let Some(token) = &entry.token {
            if now < token.refresh_at || entry.in_flight.is_some() || backing_off.is_some() {
                return Lookup::Hit(token.clone());
            }
            let current = Some(token.clone());
            return Lookup::Fetch(Self::issue(&mut self.next_id, entry, key, now, current));
        }
        if entry.in_flight.is_some() {
            return Lookup::Wait;
        }
        if let Some(until) = backing_off {
            return Lookup::BackingOff { until, reason: entry.last_error };
        }
        Lookup::Fetch(Self::issue(&mut self.next_id, entry, key, now, None))
    }

    fn issue(
        next_id: &mut u64,
        entry: &mut Entry,
        key: &K,
        now: Instant,
        current: Option<CachedToken>,
    ) -> Ticket<K> {
        *next_id += 1;
        entry.in_flight = Some(*next_id);
        Ticket { key: key.clone(), id: *next_id, issued_at: now, current }
    }

    /// Completes a flight with its outcome: a token (stored as of the ticket's issue time, so never
    /// past its real expiry) or a failure reason code (recorded for backoff). See [`Completion`].
    pub fn complete(
        &mut self,
        ticket: Ticket<K>,
        result: Result<Fetched, &'static str>,
        now: Instant,
    ) -> Completion {
        let config = self.config;
        let Some(entry) = self.current_entry(&ticket) else {
            let token =
                result.ok().map(|fetched| CachedToken::new(fetched, ticket.issued_at, &config.refresh_ahead));
            return Completion::Stale(token);
        };
        entry.in_flight = None;
        match result {
            Ok(fetched) => {
                let token = CachedToken::new(fetched, ticket.issued_at, &config.refresh_ahead);
                entry.failures = 0;
                entry.backoff_until = None;
                let cached = token.is_fresh(now);
                entry.token = cached.then(|| token.clone());
                Completion::Fresh { token, cached }
            }
            Err(reason) => {
                entry.failures = entry.failures.saturating_add(1);
                let until = now.plus(config.backoff.delay(entry.failures));
                entry.backoff_until = Some(until);
                entry.last_error = reason;
                Completion::Failed { reason, until, failures: entry.failures }
            }
        }
    }

    /// The fresh token for `key` at `now`, if any, without starting a refresh or a fetch (for
    /// read-only fast paths; [`TokenCache::lookup`] is the call that keeps the cache warm).
    pub fn peek(&self, key: &K, now: Instant) -> Option<&CachedToken> {
        self.entries.get(key)?.token.as_ref().filter(|token| token.is_fresh(now))
    }

    /// Ends a flight without an outcome (the leader was cancelled): no failure is recorded and the
    /// next lookup issues a new ticket.
    pub fn abandon(&mut self, ticket: Ticket<K>) -> Completion {
        match self.current_entry(&ticket) {
            Some(entry) => {
                entry.in_flight = None;
                Completion::Abandoned
            }
            None => Completion::Stale(None),
        }
    }

    fn current_entry(&mut self, ticket: &Ticket<K>) -> Option<&mut Entry> {
        self.entries.get_mut(&ticket.key).filter(|entry| entry.in_flight == Some(ticket.id))
    }

    /// Drops the cached token for `key` if it is still `token` (the one a resource server just
    /// refused); returns whether it did. Concurrent calls for the same token drop it once.
    pub fn invalidate(&mut self, key: &K, token: &Secret) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let matches =
            entry.token.as_ref().is_some_and(|cached| cached.access_token.constant_time_eq(token.expose()));
        if matches {
            entry.token = None;
        }
        matches
    }

    /// Forgets everything about `key` (token, flight, backoff); an outstanding ticket becomes stale.
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Drops entries that hold nothing (no fresh token, no flight, no failure) at `now`, to bound
    /// memory when keys come and go.
    pub fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, entry| {
            if entry.token.as_ref().is_some_and(|token| !token.is_fresh(now)) {
                entry.token = None;
            }
            if entry.backoff_until.is_some_and(|until| until <= now) && entry.token.is_none() {
                entry.failures = 0;
                entry.backoff_until = None;
            }
            !entry.is_idle()
        });
    }

    /// The number of keys with state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KEY: &str = "server";

    fn at(seconds: u64) -> Instant {
        Instant::from_millis(seconds * 1000)
    }

    fn ms(millis: u64) -> Instant {
        Instant::from_millis(millis)
    }

    fn fetched(token: &str, expires_in: Option<i64>) -> Fetched {
        Fetched { access_token: Secret::new(token), expires_in, policy: TtlPolicy::M2m }
    }

    fn cache() -> TokenCache<&'static str> {
        TokenCache::new(CacheConfig::default())
    }

    fn ticket(cache: &mut TokenCache<&'static str>, now: Instant) -> Ticket<&'static str> {
        match cache.lookup(&KEY, now) {
            Lookup::Fetch(ticket) => ticket,
            other => panic!("expected Fetch, got {other:?}"),
        }
    }

    fn hit(cache: &mut TokenCache<&'static str>, now: Instant) -> String {
        match cache.lookup(&KEY, now) {
            Lookup::Hit(token) => token.access_token().expose().to_owned(),
            other => panic!("expected Hit, got {other:?}"),
        }
    }

    #[test]
    fn windows_and_backoff_follow_the_documented_formulas() {
        let ahead = RefreshAhead::default();
        assert_eq!(ahead.window(Duration::from_secs(3540)), Duration::from_secs(354));
        assert_eq!(ahead.window(Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(ahead.window(Duration::from_secs(40)), Duration::from_secs(5));
        assert_eq!(ahead.window(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(ahead.window(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(RefreshAhead::DISABLED.window(Duration::from_secs(3540)), Duration::ZERO);
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn ttl_policies_never_pass_expires_in() {
        assert_eq!(TtlPolicy::M2m.ttl(Some(3600)), Duration::from_secs(3540));
        assert_eq!(TtlPolicy::M2m.ttl(None), Duration::from_secs(3540));
        assert_eq!(TtlPolicy::M2m.ttl(Some(5)), Duration::from_secs(5));
        let user = TtlPolicy::User { token_storage_ttl_seconds: Some(600) };
        assert_eq!(user.ttl(Some(3600)), Duration::from_secs(600));
        assert_eq!(TtlPolicy::Fixed(Duration::from_secs(9999)).ttl(Some(30)), Duration::from_secs(30));
        assert_eq!(TtlPolicy::Fixed(Duration::from_secs(9999)).ttl(None), Duration::from_secs(9999));
    }

    #[test]
    fn first_lookup_fetches_then_others_wait_then_hit() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        assert_eq!(leader.current(), None);
        assert_eq!(cache.lookup(&KEY, ms(10)), Lookup::Wait);
        assert_eq!(cache.lookup(&KEY, ms(20)), Lookup::Wait);
        let completion = cache.complete(leader, Ok(fetched("a", Some(3600))), ms(100));
        let Completion::Fresh { token, cached: true } = completion else { panic!("{completion:?}") };
        assert_eq!(token.stored_at(), at(0), "stored as of the ticket, not the completion");
        assert_eq!(token.stale_at(), at(3540));
        assert_eq!(token.refresh_at(), at(3540 - 354));
        assert_eq!(token.expires_at(), at(3600));
        assert_eq!(hit(&mut cache, at(1)), "a");
        assert_eq!(hit(&mut cache, at(3185)), "a");
        assert_eq!(cache.peek(&KEY, at(3539)).map(|token| token.access_token().expose()), Some("a"));
        assert_eq!(cache.peek(&KEY, at(3540)), None);
    }

    #[test]
    fn a_stale_entry_is_never_served() {
        let mut cache =
            TokenCache::new(CacheConfig { refresh_ahead: RefreshAhead::DISABLED, ..Default::default() });
        let leader = ticket(&mut cache, at(0));
        cache.complete(leader, Ok(fetched("a", Some(100))), at(0));
        assert_eq!(hit(&mut cache, ms(39_999)), "a");
        let next = ticket(&mut cache, at(40));
        assert_eq!(next.current(), None, "a stale token is not offered");
        assert_eq!(cache.lookup(&KEY, at(41)), Lookup::Wait, "and nobody gets it while the fetch runs");
    }

    #[test]
    fn refresh_ahead_leader_fetches_while_others_keep_the_old_token() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        cache.complete(leader, Ok(fetched("a", Some(100))), at(0));
        // ttl 40 s, window max(4 s, 5 s) = 5 s: refresh from 35 s, stale at 40 s.
        assert_eq!(hit(&mut cache, ms(34_999)), "a");
        let refresh = ticket(&mut cache, at(35));
        assert_eq!(refresh.current().map(|token| token.access_token().expose()), Some("a"));
        for second in 35..40 {
            assert_eq!(hit(&mut cache, at(second)), "a", "others keep the old token at {second}s");
        }
        assert_eq!(cache.lookup(&KEY, at(40)), Lookup::Wait, "stale: now they wait");
        cache.complete(refresh, Ok(fetched("b", Some(100))), at(41));
        assert_eq!(hit(&mut cache, at(42)), "b");
    }

    #[test]
    fn backoff_grows_fails_fast_and_resets_on_success() {
        let mut cache = cache();
        let mut now = at(0);
        for (failures, delay) in [(1u32, 1u64), (2, 2), (3, 4), (4, 8)] {
            let leader = ticket(&mut cache, now);
            let completion = cache.complete(leader, Err("token_endpoint_status"), now);
            let until = now.plus(Duration::from_secs(delay));
            assert_eq!(completion, Completion::Failed { reason: "token_endpoint_status", until, failures });
            assert_eq!(
                cache.lookup(&KEY, now),
                Lookup::BackingOff { until, reason: "token_endpoint_status" }
            );
            let just_before = Instant::from_millis(until.as_millis() - 1);
            assert!(matches!(cache.lookup(&KEY, just_before), Lookup::BackingOff { .. }));
            now = until;
        }
        let leader = ticket(&mut cache, now);
        cache.complete(leader, Ok(fetched("a", Some(1))), now);
        // ttl 1 s; stale one second later; the next failure starts again at 1 s.
        let later = now.plus(Duration::from_secs(1));
        let leader = ticket(&mut cache, later);
        let completion = cache.complete(leader, Err("token_refused"), later);
        assert!(matches!(completion, Completion::Failed { failures: 1, .. }), "{completion:?}");
        assert_eq!(
            cache.lookup(&KEY, later),
            Lookup::BackingOff { until: later.plus(Duration::from_secs(1)), reason: "token_refused" }
        );
    }

    #[test]
    fn a_failed_refresh_keeps_serving_the_valid_token() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        cache.complete(leader, Ok(fetched("a", Some(100))), at(0));
        let refresh = ticket(&mut cache, at(35));
        cache.complete(refresh, Err("token_endpoint_status"), at(36));
        assert_eq!(hit(&mut cache, at(36)), "a", "backing off: the old token is still served");
        let retry = ticket(&mut cache, at(37));
        assert!(retry.current().is_some());
    }

    #[test]
    fn invalidate_drops_a_token_once_and_never_a_newer_one() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        cache.complete(leader, Ok(fetched("a", Some(3600))), at(0));
        let old = Secret::new("a");
        assert!(cache.invalidate(&KEY, &old));
        for _ in 0..49 {
            assert!(!cache.invalidate(&KEY, &old), "the other 49 401s drop nothing");
        }
        let refetch = ticket(&mut cache, at(1));
        assert_eq!(cache.lookup(&KEY, at(1)), Lookup::Wait, "one refetch, the rest wait");
        assert!(!cache.invalidate(&KEY, &old));
        cache.complete(refetch, Ok(fetched("b", Some(3600))), at(2));
        assert!(!cache.invalidate(&KEY, &old), "a late 401 for `a` does not drop `b`");
        assert_eq!(hit(&mut cache, at(3)), "b");
        assert!(!cache.invalidate(&"other", &old));
    }

    #[test]
    fn invalidate_keeps_an_outstanding_refresh() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        cache.complete(leader, Ok(fetched("a", Some(100))), at(0));
        let refresh = ticket(&mut cache, at(36));
        assert!(cache.invalidate(&KEY, &Secret::new("a")));
        assert_eq!(
            cache.lookup(&KEY, at(36)),
            Lookup::Wait,
            "no second fetch: the refresh brings a new token"
        );
        cache.complete(refresh, Ok(fetched("b", Some(100))), at(37));
        assert_eq!(hit(&mut cache, at(37)), "b");
    }

    #[test]
    fn stale_tickets_change_nothing() {
        let mut cache = cache();
        let old = ticket(&mut cache, at(0));
        cache.remove(&KEY);
        let new = ticket(&mut cache, at(1));
        assert_ne!(old.id(), new.id());
        let Completion::Stale(Some(own)) = cache.complete(old, Ok(fetched("old", Some(3600))), at(2)) else {
            panic!("a stale success is the leader's own token")
        };
        assert_eq!(own.access_token().expose(), "old");
        assert_eq!(cache.lookup(&KEY, at(2)), Lookup::Wait, "the newer flight is still in flight");
        let Completion::Fresh { .. } = cache.complete(new, Ok(fetched("new", Some(3600))), at(3)) else {
            panic!("the current ticket completes")
        };
        assert_eq!(hit(&mut cache, at(4)), "new");

        // A stale failure records no backoff, a stale abandon clears no flight.
        let old = ticket(&mut cache, at(4000));
        cache.remove(&KEY);
        let new = ticket(&mut cache, at(4000));
        assert_eq!(cache.complete(old, Err("token_refused"), at(4001)), Completion::Stale(None));
        assert_eq!(cache.lookup(&KEY, at(4001)), Lookup::Wait);
        cache.remove(&KEY);
        let newest = ticket(&mut cache, at(4002));
        assert_eq!(cache.abandon(new), Completion::Stale(None));
        assert_eq!(cache.lookup(&KEY, at(4002)), Lookup::Wait);
        assert_eq!(cache.abandon(newest), Completion::Abandoned);
        assert!(matches!(cache.lookup(&KEY, at(4003)), Lookup::Fetch(_)), "abandoning records no failure");
    }

    #[test]
    fn zero_ttl_tokens_go_to_waiters_but_are_not_cached() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        let completion = cache.complete(leader, Ok(fetched("a", Some(0))), at(0));
        assert!(matches!(completion, Completion::Fresh { cached: false, .. }), "{completion:?}");
        assert!(matches!(cache.lookup(&KEY, at(0)), Lookup::Fetch(_)));
    }

    #[test]
    fn keys_are_independent_and_prune_forgets_idle_ones() {
        let mut cache: TokenCache<String> = TokenCache::default();
        let Lookup::Fetch(a) = cache.lookup(&"a".to_owned(), at(0)) else { panic!() };
        assert!(matches!(cache.lookup(&"b".to_owned(), at(0)), Lookup::Fetch(_)));
        cache.complete(a, Ok(fetched("token-a", Some(100))), at(0));
        assert_eq!(cache.len(), 2);
        cache.prune(at(41));
        assert_eq!(cache.len(), 1, "the stale `a` is gone, the in-flight `b` stays");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let mut cache = cache();
        let leader = ticket(&mut cache, at(0));
        let completion = cache.complete(leader, Ok(fetched("sk-very-secret", Some(3600))), at(0));
        let refresh = ticket(&mut cache, at(3500));
        let text = format!("{completion:?} {refresh:?} {:?} {cache:?}", cache.lookup(&KEY, at(3500)));
        assert!(!text.contains("sk-very-secret"), "{text}");
        assert!(text.contains("****"));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Lookup { key: u8, advance_ms: u64 },
        Complete { pick: usize, ok: bool, expires_in: i64, advance_ms: u64 },
        Abandon { pick: usize },
        Invalidate { key: u8, pick: usize },
        Remove { key: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u64..20_000).prop_map(|(key, advance_ms)| Op::Lookup { key, advance_ms }),
            3 => (any::<usize>(), any::<bool>(), -5i64..200, 0u64..5_000)
                .prop_map(|(pick, ok, expires_in, advance_ms)| {
                    Op::Complete { pick, ok, expires_in, advance_ms }
                }),
            1 => any::<usize>().prop_map(|pick| Op::Abandon { pick }),
            1 => (0u8..3, any::<usize>()).prop_map(|(key, pick)| Op::Invalidate { key, pick }),
            1 => (0u8..3).prop_map(|key| Op::Remove { key }),
        ]
    }

    proptest! {
        /// A `Hit` never hands out a token at or past `stored_at + expires_in`, and at most one
        /// ticket per key is live (completable) at any time.
        #[test]
        fn hits_never_expire_and_flights_are_single(ops in proptest::collection::vec(op(), 1..120)) {
            let mut cache: TokenCache<u8> = TokenCache::new(CacheConfig {
                backoff: Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(8) },
                ..CacheConfig::default()
            });
            let mut now = Instant::ZERO;
            let mut tickets: Vec<Ticket<u8>> = Vec::new();
            // Real expiry of every token ever issued, by value.
            let mut expiry: HashMap<String, Instant> = HashMap::new();
            let mut issued = 0u32;
            // Tickets made stale by `remove`.
            let mut removed: std::collections::HashSet<u64> = std::collections::HashSet::new();
            for op in ops {
                match op {
                    Op::Lookup { key, advance_ms } => {
                        now = now.plus(Duration::from_millis(advance_ms));
                        match cache.lookup(&key, now) {
                            Lookup::Hit(token) => {
                                let real = expiry[token.access_token().expose()];
                                prop_assert!(now < real, "hit at {now:?} past real expiry {real:?}");
                                prop_assert!(token.expires_at() <= real);
                            }
                            Lookup::Fetch(ticket) => tickets.push(ticket),
                            Lookup::Wait | Lookup::BackingOff { .. } => {}
                        }
                    }
                    Op::Complete { pick, ok, expires_in, advance_ms } if !tickets.is_empty() => {
                        let ticket = tickets.swap_remove(pick % tickets.len());
                        now = now.plus(Duration::from_millis(advance_ms));
                        let result = if ok {
                            issued += 1;
                            let value = format!("t{issued}");
                            // The server mints the token some time after the ticket was issued.
                            let issued_at = ticket.issued_at().as_millis();
                            let minted = Instant::from_millis(issued_at + (now.as_millis() - issued_at) / 2);
                            let lifetime = Duration::from_secs(u64::try_from(expires_in).unwrap_or(0));
                            expiry.insert(value.clone(), minted.plus(lifetime));
                            Ok(fetched(&value, Some(expires_in)))
                        } else {
                            Err("token_endpoint_status")
                        };
                        cache.complete(ticket, result, now);
                    }
                    Op::Abandon { pick } if !tickets.is_empty() => {
                        let ticket = tickets.swap_remove(pick % tickets.len());
                        cache.abandon(ticket);
                    }
                    Op::Invalidate { key, pick } if issued > 0 => {
                        let value = format!("t{}", (pick % issued as usize) + 1);
                        cache.invalidate(&key, &Secret::new(value));
                    }
                    Op::Remove { key } => {
                        cache.remove(&key);
                        removed.extend(tickets.iter().filter(|ticket| *ticket.key() == key).map(Ticket::id));
                    }
                    _ => {}
                }
                // Single flight: per key, every outstanding ticket but at most one was made stale
                // by `remove`, and a stale ticket is never the key's current one.
                for key in 0u8..3 {
                    let current = cache.entries.get(&key).and_then(|entry| entry.in_flight);
                    let outstanding: Vec<&Ticket<u8>> =
                        tickets.iter().filter(|ticket| *ticket.key() == key).collect();
                    let fresh = outstanding.iter().filter(|ticket| !removed.contains(&ticket.id())).count();
                    prop_assert!(fresh <= 1, "key {key}: {fresh} outstanding tickets");
                    for ticket in outstanding {
                        prop_assert_eq!(current == Some(ticket.id()), !removed.contains(&ticket.id()));
                    }
                }
            }
        }
    }
}
