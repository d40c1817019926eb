//! A token cache shared by tasks: core's sans-IO [`TokenCache`] behind a lock, plus the waking.
//!
//! [`SharedTokenCache::get_or_fetch`] asks core what to do at the current time ([`Clock`]) and does
//! it: returns a fresh token, fails fast while core backs off, or, for the first caller of a key
//! (the single flight leader), runs the caller's `fetch` future and hands its outcome to every
//! caller that asked for the same key meanwhile. The rules (TTL, refresh ahead of expiry, backoff,
//! invalidation, generations) are core's; see [`mcp_oauth_core::token_cache`].
//!
//! The lock is a `std::sync::Mutex` held only for a core call, never across an `.await`. Waiters
//! sleep on a per-flight `tokio::sync::watch` channel that is created under the same lock as the
//! ticket, so no outcome can be missed. The channel is a plain data structure that works on any
//! executor (only tokio's `sync` feature is compiled, no tokio runtime), so this one cache serves
//! every [`Runtime`]: it only reads the runtime's clock. A leader whose future is dropped (a timeout, a cancelled
//! request) abandons its ticket from a drop guard: its waiters wake up and look up again, and one
//! of them leads a new fetch; nobody hangs.
//!
//! Keys may come and go (one per user token, say), so keys that hold nothing any more (no fresh
//! token, no flight, no running backoff; core's [`TokenCache::prune`]) are dropped whenever a new
//! fetch starts and the number of keys has doubled since the last pruning (from 1024 keys on).
//! [`SharedTokenCache::fetches`] counts the fetches started, for tests and benchmarks.
//!
//! ```no_run
//! use mcp_oauth_core::token_cache::{CacheConfig, Fetched};
//! use mcp_oauth_runtime::token_cache::{FetchError, SharedTokenCache};
//! use mcp_oauth_runtime::{Clock, Runtime};
//!
//! # use mcp_oauth_core::{client::token::TokenError, metadata::TokenResponse};
//! # async fn fetch_token() -> Result<TokenResponse, TokenError> { unimplemented!() }
//! # async fn run(runtime: impl Runtime) -> Result<(), Box<dyn std::error::Error>> {
//! let cache: SharedTokenCache<String, _> =
//!     SharedTokenCache::with_clock(CacheConfig::default(), Clock::with_runtime(runtime));
//! let token = cache
//!     .get_or_fetch("server-a".to_owned(), || async {
//!         let response = fetch_token().await.map_err(|error| FetchError::from_reason(&error))?;
//!         Ok(Fetched::m2m(&response))
//!     })
//!     .await?;
//! // … on a 401 from the resource server with this token:
//! cache.invalidate(&"server-a".to_owned(), token.access_token());
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mcp_oauth_core::Reason;
use mcp_oauth_core::machine::Instant;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{
    ABANDONED, CacheConfig, CachedToken, Completion, Fetched, Lookup, Ticket, TokenCache,
};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::runtime::Runtime;

/// Why a fetch failed: a stable reason code for core's backoff and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    reason: &'static str,
    message: String,
}

impl FetchError {
    /// A failure with this reason code and message.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    /// A failure from any error with a reason code (a `TokenError`, a `DriveError` mapped by the
    /// caller, …).
    pub fn from_reason<E: Reason + fmt::Display>(error: &E) -> Self {
        Self::new(error.reason(), error.to_string())
    }
}

impl Reason for FetchError {
    fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Why [`SharedTokenCache::get_or_fetch`] returned no token.
///
/// Exhaustive on purpose: a caller (the gateway) maps every variant to an answer, and a new
/// variant must make it decide again rather than fall into a catch-all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// This call's fetch, or the fetch it waited for, failed.
    #[error("fetching the token failed ({reason}): {message}")]
    Fetch {
        /// The fetch's reason code.
        reason: &'static str,
        /// Its message.
        message: String,
    },
    /// Recent fetches failed; no new fetch is tried before the backoff ends.
    #[error("token fetches are backing off after `{reason}`; retry in {retry_in:?}")]
    BackingOff {
        /// The last failure's reason code.
        reason: &'static str,
        /// Time left until a fetch may be tried again.
        retry_in: Duration,
    },
}

impl Reason for CacheError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Fetch { reason, .. } => reason,
            Self::BackingOff { .. } => "token_fetch_backing_off",
        }
    }
}

/// What a flight's waiters learn.
#[derive(Clone)]
enum Signal {
    Token(CachedToken),
    Failed {
        reason: &'static str,
        message: Arc<str>,
    },
    /// The flight ended without an outcome: look up again.
    Retry,
}

struct Flight {
    ticket: u64,
    sender: watch::Sender<Option<Signal>>,
}

/// The fewest keys at which idle ones are pruned.
pub const PRUNE_FLOOR: usize = 1024;

struct State<K> {
    cache: TokenCache<K>,
    flights: HashMap<K, Flight>,
    /// Prune idle keys when the cache holds this many.
    prune_at: usize,
}

impl<K: Eq + Hash + Clone> State<K> {
    /// Drops idle keys once their number has doubled since the last pruning, so memory follows
    /// the keys in use at an amortised constant cost per fetch.
    fn prune_if_grown(&mut self, now: Instant) {
        if self.cache.len() >= self.prune_at {
            self.cache.prune(now);
            self.prune_at = self.cache.len().saturating_mul(2).max(PRUNE_FLOOR);
        }
    }

    /// Wakes the waiters of `ticket`'s flight (and only of that flight).
    fn finish_flight(&mut self, key: &K, ticket: u64, signal: Signal) {
        if self.flights.get(key).is_some_and(|flight| flight.ticket == ticket)
            && let Some(flight) = self.flights.remove(key)
        {
            flight.sender.send_replace(Some(signal));
        }
    }
}

struct Inner<K, R> {
    state: Mutex<State<K>>,
    clock: Clock<R>,
    fetches: AtomicU64,
}

/// Core's [`TokenCache`] shared by tasks, with single flight per key, reading time from the
/// runtime `R`; cheap to clone.
pub struct SharedTokenCache<K, R> {
    inner: Arc<Inner<K, R>>,
}

impl<K, R> Clone for SharedTokenCache<K, R> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<K, R: fmt::Debug> fmt::Debug for SharedTokenCache<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokenCache").field("clock", &self.inner.clock).finish_non_exhaustive()
    }
}

/// What the caller does after asking core.
enum Next<K> {
    Lead(Ticket<K>),
    Wait(watch::Receiver<Option<Signal>>),
}

impl<K: Eq + Hash + Clone, R: Runtime + Default> SharedTokenCache<K, R> {
    /// An empty cache on a fresh [`Clock`] of the default `R`.
    pub fn new(config: CacheConfig) -> Self {
        Self::with_clock(config, Clock::new())
    }
}

impl<K: Eq + Hash + Clone, R: Runtime> SharedTokenCache<K, R> {
    /// An empty cache reading time from `clock`.
    pub fn with_clock(config: CacheConfig, clock: Clock<R>) -> Self {
        let state = State { cache: TokenCache::new(config), flights: HashMap::new(), prune_at: PRUNE_FLOOR };
        Self { inner: Arc::new(Inner { state: Mutex::new(state), clock, fetches: AtomicU64::new(0) }) }
    }

    /// The clock the cache reads.
    pub fn clock(&self) -> &Clock<R> {
        &self.inner.clock
    }

    /// How many fetches were started (calls that led a flight) since the cache was created.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// How many keys the cache holds: fresh tokens, backoffs and idle keys not pruned yet.
    pub fn key_count(&self) -> usize {
        self.state().cache.len()
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        // Core calls do not panic half-way through an update, so a poisoned state is consistent.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh token for `key`: from the cache, from the fetch in flight for `key`, or from
    /// running `fetch` when this call is the single flight leader.
    ///
    /// `fetch` runs at most once per call, and only in the leader. When the leader refreshes a
    /// still-valid token ahead of expiry and the refresh fails, it gets the old token (the failure
    /// still counts for backoff). Waiters get the leader's token or its error; if the leader is
    /// cancelled they look up again.
    pub async fn get_or_fetch<F, Fut>(&self, key: K, fetch: F) -> Result<CachedToken, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, FetchError>>,
    {
        let mut fetch = Some(fetch);
        loop {
            let next = {
                let mut state = self.state();
                let now = self.inner.clock.now();
                match state.cache.lookup(&key, now) {
                    Lookup::Hit(token) => return Ok(token),
                    Lookup::BackingOff { until, reason } => {
                        return Err(CacheError::BackingOff { reason, retry_in: until.saturating_since(now) });
                    }
                    Lookup::Fetch(ticket) => {
                        state.prune_if_grown(now);
                        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
                        let (sender, _) = watch::channel(None);
                        state.flights.insert(key.clone(), Flight { ticket: ticket.id(), sender });
                        Next::Lead(ticket)
                    }
                    Lookup::Wait => {
                        let receiver = match state.flights.get(&key) {
                            Some(flight) => flight.sender.subscribe(),
                            // Unreachable while every ticket goes through this type; waiting on a
                            // closed channel just means looking up again.
                            None => watch::channel(None).1,
                        };
                        Next::Wait(receiver)
                    }
                }
            };
            match next {
                Next::Lead(ticket) => {
                    let Some(fetch) = fetch.take() else {
                        // A call leads at most once (it returns after leading); stay total anyway.
                        let _ = self.state().cache.abandon(ticket);
                        return Err(CacheError::Fetch {
                            reason: ABANDONED,
                            message: "fetch already used".into(),
                        });
                    };
                    return self.lead(ticket, fetch).await;
                }
                Next::Wait(mut receiver) => {
                    let signal = match receiver.wait_for(Option::is_some).await {
                        Ok(signal) => signal.clone(),
                        Err(_) => None,
                    };
                    match signal {
                        Some(Signal::Token(token)) => return Ok(token),
                        Some(Signal::Failed { reason, message }) => {
                            return Err(CacheError::Fetch { reason, message: message.to_string() });
                        }
                        Some(Signal::Retry) | None => continue,
                    }
                }
            }
        }
    }

    async fn lead<F, Fut>(&self, ticket: Ticket<K>, fetch: F) -> Result<CachedToken, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, FetchError>>,
    {
        let key = ticket.key().clone();
        let id = ticket.id();
        let previous = ticket.current().cloned();
        let mut guard = AbandonOnDrop { cache: self, ticket: Some(ticket) };
        let result = fetch().await;
        let Some(ticket) = guard.ticket.take() else {
            return Err(CacheError::Fetch { reason: ABANDONED, message: "ticket lost".into() });
        };
        let mut state = self.state();
        let now = self.inner.clock.now();
        let (core_result, message) = match result {
            Ok(fetched) => (Ok(fetched), None),
            Err(error) => (Err(error.reason), Some(error.message)),
        };
        match state.cache.complete(ticket, core_result, now) {
            Completion::Fresh { token, cached } => {
                tracing::debug!(cached, "token cache: fetched");
                state.finish_flight(&key, id, Signal::Token(token.clone()));
                Ok(token)
            }
            Completion::Failed { reason, failures, until } => {
                let message = message.unwrap_or_default();
                let backoff = until.saturating_since(now);
                tracing::debug!(reason, failures, ?backoff, "token cache: fetch failed");
                let signal = Signal::Failed { reason, message: Arc::from(message.as_str()) };
                state.finish_flight(&key, id, signal);
                match previous.filter(|token| token.is_fresh(now)) {
                    Some(token) => Ok(token),
                    None => Err(CacheError::Fetch { reason, message }),
                }
            }
            Completion::Stale(Some(token)) => Ok(token),
            Completion::Stale(None) | Completion::Abandoned => Err(CacheError::Fetch {
                reason: ABANDONED,
                message: message.unwrap_or_else(|| "the key was removed during the fetch".to_owned()),
            }),
        }
    }

    /// The fresh token for `key`, if cached, without fetching, waiting or starting a refresh.
    pub fn get_cached(&self, key: &K) -> Option<CachedToken> {
        let now = self.inner.clock.now();
        self.state().cache.peek(key, now).cloned()
    }

    /// Drops the cached token for `key` if it is still `token` (a resource server just answered
    /// 401 to it); returns whether it did. Concurrent calls for the same token drop it once.
    pub fn invalidate(&self, key: &K, token: &Secret) -> bool {
        self.state().cache.invalidate(key, token)
    }

    /// Forgets `key` (token, flight, backoff); the waiters of its flight look up again.
    pub fn remove(&self, key: &K) {
        let mut state = self.state();
        state.cache.remove(key);
        if let Some(flight) = state.flights.remove(key) {
            flight.sender.send_replace(Some(Signal::Retry));
        }
    }
}

/// Abandons the leader's ticket if its future is dropped before the fetch finished.
struct AbandonOnDrop<'a, K: Eq + Hash + Clone, R: Runtime> {
    cache: &'a SharedTokenCache<K, R>,
    ticket: Option<Ticket<K>>,
}

impl<K: Eq + Hash + Clone, R: Runtime> Drop for AbandonOnDrop<'_, K, R> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let key = ticket.key().clone();
            let id = ticket.id();
            let mut state = self.cache.state();
            if matches!(state.cache.abandon(ticket), Completion::Abandoned) {
                tracing::debug!("token cache: leader cancelled; waiters retry");
                state.finish_flight(&key, id, Signal::Retry);
            }
        }
    }
}
