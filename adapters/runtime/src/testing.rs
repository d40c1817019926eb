//! The shared test suite (feature `test-suite`): the driver, token-cache and grant-store tests,
//! written once against [`Runtime`] (and [`GrantStore`]) and run by every adapter on its own
//! executor.
//!
//! Each scenario is an `async fn` taking the runtime; [`runtime_test_suite!`](crate::runtime_test_suite)
//! stamps out one `#[test]` per scenario in the adapter's test file, each bounded by 30 s:
//!
//! ```ignore
//! fn block_on<F: std::future::Future>(future: F) -> F::Output { /* the executor's block_on */ }
//! mcp_oauth_runtime::runtime_test_suite!(block_on, my_adapter::MyRuntime);
//! ```
//!
//! The grant-store contract is a second macro, [`grant_store_test_suite!`](crate::grant_store_test_suite),
//! taking a constructor for the store under test, so every backend (memory now, SQLite and Redis
//! next) runs the same scenarios:
//!
//! ```ignore
//! mcp_oauth_runtime::grant_store_test_suite!(memory_store, block_on, MyRuntime, MemoryGrantStore::new);
//! ```
//!
//! The token fetches are scripted (a counter, a delay on the runtime's timer, a token named after
//! the fetch), so the suite tests the shared code and the runtime, not an HTTP client; each
//! adapter's own tests cover its client against the mock upstream on 127.0.0.1.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Response;
use mcp_oauth_core::grant::{Grant, GrantId, LockHolder, OnceKey};
use mcp_oauth_core::machine::{
    InFlight, Instant, Limits, Machine, OneShot, Outgoing, Performer, RequestId, Step, TransportError,
};
use mcp_oauth_core::seal::UnixTime;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{Backoff, CacheConfig, Fetched, TtlPolicy};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::driver::{DriveError, Perform, drive};
use crate::grant_store::{GrantStore, STORE_FULL, unix_now};
use crate::io::{BoxFuture, Client, Headless, Io, UserAgent};
use crate::runtime::{Runtime, timeout};
use crate::token_cache::{CacheError, FetchError, PRUNE_FLOOR, SharedTokenCache};

/// Stamps out one `#[test]` per scenario of [`testing`](crate::testing), each run by
/// `$block_on` (the executor's `block_on`) on `$runtime` (an expression, evaluated per test) and
/// bounded by 30 s.
#[macro_export]
macro_rules! runtime_test_suite {
    ($block_on:path, $runtime:expr) => {
        $crate::runtime_test_suite!(@each $block_on, $runtime;
            drive_runs_requests_concurrently_and_honours_deadlines,
            a_deadline_wakes_the_driver_while_a_request_is_in_flight,
            waiting_for_nothing_is_an_error_not_a_hang,
            a_request_that_never_answers_cannot_hang_the_driver,
            the_router_sends_each_request_to_its_performer,
            the_clock_round_trips,
            spawn_blocking_returns_the_result_or_the_panic,
            sixty_four_callers_share_one_fetch_then_hit_the_cache,
            concurrent_401s_drop_the_token_once_and_refetch_once,
            failures_reach_every_waiter_then_back_off,
            a_cancelled_leader_does_not_strand_its_waiters,
            idle_keys_do_not_accumulate,
        );
    };
    (@each $block_on:path, $runtime:expr; $($scenario:ident,)*) => {
        $(
            #[test]
            fn $scenario() {
                $block_on($crate::testing::bounded($runtime, $crate::testing::$scenario($runtime)));
            }
        )*
    };
}

/// Runs `scenario` on `runtime`, panicking if it takes longer than 30 s.
pub async fn bounded<R: Runtime>(runtime: R, scenario: impl Future<Output = ()>) {
    timeout(&runtime, Duration::from_secs(30), scenario).await.expect("the test took longer than 30 s");
}

/// Answers every request with its path as the status-200 body, after a delay of `?ms=N`.
struct Echo<R> {
    runtime: R,
}

impl<R: Runtime> Perform for Echo<R> {
    async fn perform(&self, outgoing: Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        let uri = outgoing.request().uri().clone();
        let delay = uri.query().and_then(|q| q.strip_prefix("ms=")).and_then(|ms| ms.parse().ok());
        self.runtime.sleep(Duration::from_millis(delay.unwrap_or(0))).await;
        Ok(Response::new(uri.path().as_bytes().to_vec()))
    }
}

fn get(id: u64, target: &str) -> Outgoing {
    let request = http::Request::get(target).body(Vec::new()).expect("a valid request");
    Outgoing::unchecked(RequestId(id), request, Limits::METADATA, Performer::Client, "test")
}

/// Sends two requests at once, then waits for a deadline after both answers.
struct Parallel {
    sent: bool,
    answers: Vec<String>,
    deadline: Option<Instant>,
    in_flight: InFlight,
}

impl Machine for Parallel {
    type Outcome = (Vec<String>, u64);

    fn poll(&mut self, now: Instant) -> Step<Self::Outcome> {
        let step = if !self.sent {
            self.sent = true;
            Step::Send(vec![get(1, "http://a.test/slow?ms=150"), get(2, "http://a.test/fast")])
        } else if self.answers.len() < 2 {
            Step::Wait(None) // the tracker turns this into the requests' deadline
        } else {
            let deadline = *self.deadline.get_or_insert(now.plus(Duration::from_millis(100)));
            if now < deadline {
                Step::Wait(Some(deadline))
            } else {
                Step::Done((std::mem::take(&mut self.answers), now.as_millis()))
            }
        };
        self.in_flight.track(step, now)
    }

    fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<Response<Vec<u8>>, TransportError>,
        _: Instant,
    ) {
        if let (true, Ok(response)) = (self.in_flight.answer(id), result) {
            self.answers.push(String::from_utf8_lossy(response.body()).into_owned());
        }
    }
}

/// Two requests run concurrently (the fast answer first) and the machine's deadline is honoured.
pub async fn drive_runs_requests_concurrently_and_honours_deadlines<R: Runtime>(runtime: R) {
    let io = Echo { runtime: runtime.clone() };
    let mut machine =
        Parallel { sent: false, answers: Vec::new(), deadline: None, in_flight: InFlight::new() };
    let (answers, finished_at) =
        drive(&mut machine, &io, &Clock::with_runtime(runtime)).await.expect("an outcome");
    assert_eq!(answers, ["/fast", "/slow"], "the fast answer comes back first");
    assert!((250..2_000).contains(&finished_at), "150 ms in flight, then 100 ms waiting: {finished_at}");
}

/// Waits for a deadline while a slow request is in flight.
struct DeadlineFirst {
    polls: Vec<u64>,
    answered: bool,
}

impl Machine for DeadlineFirst {
    type Outcome = Vec<u64>;

    fn poll(&mut self, now: Instant) -> Step<Self::Outcome> {
        self.polls.push(now.as_millis());
        match self.polls.len() {
            1 => Step::Send(vec![get(1, "http://a.test/slow?ms=300")]),
            _ if self.answered => Step::Done(std::mem::take(&mut self.polls)),
            _ => Step::Wait(Some(Instant::from_millis(50))),
        }
    }

    fn handle_response(&mut self, _: RequestId, _: Result<Response<Vec<u8>>, TransportError>, _: Instant) {
        self.answered = true;
    }
}

/// The deadline wakes the driver before the answer does, then the answer.
pub async fn a_deadline_wakes_the_driver_while_a_request_is_in_flight<R: Runtime>(runtime: R) {
    let io = Echo { runtime: runtime.clone() };
    let mut machine = DeadlineFirst { polls: Vec::new(), answered: false };
    let polls = drive(&mut machine, &io, &Clock::with_runtime(runtime)).await.expect("an outcome");
    assert!(polls.iter().any(|&at| (50..300).contains(&at)), "woken at the deadline: {polls:?}");
    assert!(polls.last().is_some_and(|&at| at >= 300), "then by the answer: {polls:?}");
}

struct Stuck;

impl Machine for Stuck {
    type Outcome = ();

    fn poll(&mut self, _now: Instant) -> Step<()> {
        Step::Wait(None)
    }

    fn handle_response(&mut self, _: RequestId, _: Result<Response<Vec<u8>>, TransportError>, _: Instant) {}
}

/// `Wait(None)` with nothing in flight ends the run with [`DriveError::Stalled`].
pub async fn waiting_for_nothing_is_an_error_not_a_hang<R: Runtime>(runtime: R) {
    let io = Echo { runtime: runtime.clone() };
    assert_eq!(drive(&mut Stuck, &io, &Clock::with_runtime(runtime)).await, Err(DriveError::Stalled));
}

/// Never answers: every exchange stays pending forever, as a hung connection without its own
/// timeout would.
struct Silent;

impl Perform for Silent {
    async fn perform(&self, _: Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        std::future::pending().await
    }
}

/// A request nobody ever answers ends the run at the request's deadline, with the machine's own
/// timeout outcome: no timeout wrapped around `drive`, none in the `Perform`.
pub async fn a_request_that_never_answers_cannot_hang_the_driver<R: Runtime>(runtime: R) {
    let clock = Clock::with_runtime(runtime);
    let request = http::Request::get("https://a.test/token").body(Vec::new()).expect("a valid request");
    let limits = Limits { timeout: Duration::from_millis(100), ..Limits::METADATA };
    let mut machine =
        OneShot::new(request, limits, "token", |result: Result<Response<Vec<u8>>, TransportError>| {
            result.map(|response| response.status().as_u16())
        })
        .expect("the fetch policy allows it");
    let started = clock.now();
    let outcome = drive(&mut machine, &Silent, &clock).await.expect("an outcome, not a stall");
    let waited = clock.now().saturating_since(started);
    assert_eq!(outcome, Err(TransportError::Timeout));
    assert!((Duration::from_millis(100)..Duration::from_secs(5)).contains(&waited), "{waited:?}");
}

/// A client that answers with `client:{path}`.
struct Named;

impl Client for Named {
    async fn perform(&self, outgoing: &Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        Ok(Response::new(format!("client:{}", outgoing.request().uri().path()).into_bytes()))
    }
}

/// A user agent that answers `302` to the callback without asking the client.
struct Redirecting;

impl<C> UserAgent<C> for Redirecting {
    fn navigate<'a>(
        &'a self,
        _outgoing: Outgoing,
        _client: &'a C,
    ) -> BoxFuture<'a, Result<Response<Vec<u8>>, TransportError>> {
        Box::pin(async {
            let mut response = Response::new(Vec::new());
            *response.status_mut() = http::StatusCode::FOUND;
            Ok(response)
        })
    }
}

/// [`Io`] routes by [`Performer`]: client requests to the client, browser requests to the user
/// agent; [`Headless`] navigates with the client.
pub async fn the_router_sends_each_request_to_its_performer<R: Runtime>(_runtime: R) {
    let browse = || {
        let request = http::Request::get("http://a.test/authorize").body(Vec::new()).expect("request");
        Outgoing::unchecked(RequestId(2), request, Limits::METADATA, Performer::UserAgent, "test")
    };
    let io = Io::new(Named, Box::new(Redirecting));
    let answer = io.perform(get(1, "http://a.test/token")).await.expect("answer");
    assert_eq!(answer.body(), b"client:/token");
    assert_eq!(io.perform(browse()).await.expect("answer").status(), http::StatusCode::FOUND);
    let headless = Io::new(Named, Box::new(Headless));
    assert_eq!(headless.perform(browse()).await.expect("answer").body(), b"client:/authorize");
}

/// [`Clock`] converts both ways and its `sleep_until` sleeps on the runtime.
pub async fn the_clock_round_trips<R: Runtime>(runtime: R) {
    let base = runtime.now();
    let clock = Clock::starting_at(runtime, base);
    let later = base + Duration::from_millis(1234);
    assert_eq!(clock.instant_of(later), Instant::from_millis(1234));
    assert_eq!(clock.to_monotonic(Instant::from_millis(1234)), later);
    if let Some(earlier) = base.checked_sub(Duration::from_millis(5)) {
        assert_eq!(clock.instant_of(earlier), Instant::ZERO);
    }
    clock.sleep_until(Instant::from_millis(20)).await;
    assert!(clock.now() >= Instant::from_millis(20));
    assert!(clock.to_monotonic(Instant::from_millis(u64::MAX)) > base, "far future, no overflow");
}

/// `spawn_blocking` hands back the work's result, and a panic as an error.
pub async fn spawn_blocking_returns_the_result_or_the_panic<R: Runtime>(runtime: R) {
    assert_eq!(runtime.spawn_blocking(|| 6 * 7).await, Ok(42));
    let panicked = runtime.spawn_blocking(|| -> u32 { panic!("blocking work failed on purpose") }).await;
    assert!(panicked.is_err(), "{panicked:?}");
}

/// A scripted token endpoint: counts fetches, answers after `delay` with `t{n}` or fails.
#[derive(Clone)]
struct Endpoint<R> {
    runtime: R,
    fetches: Arc<AtomicU64>,
    delay: Duration,
    failing: Arc<Mutex<bool>>,
}

impl<R: Runtime> Endpoint<R> {
    fn new(runtime: R, delay: Duration) -> Self {
        Self { runtime, fetches: Arc::new(AtomicU64::new(0)), delay, failing: Arc::new(Mutex::new(false)) }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn fail(&self, failing: bool) {
        *self.failing.lock().expect("not poisoned") = failing;
    }

    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        self.runtime.sleep(self.delay).await;
        if *self.failing.lock().expect("not poisoned") {
            return Err(FetchError::new("token_refused", "the token endpoint answered 500"));
        }
        Ok(Fetched {
            access_token: Secret::new(format!("t{n}")),
            expires_in: Some(3600),
            policy: TtlPolicy::M2m,
        })
    }
}

const KEY: &str = "server";

type Cache<R> = SharedTokenCache<String, R>;

fn cache<R: Runtime>(runtime: &R, config: CacheConfig) -> Cache<R> {
    SharedTokenCache::with_clock(config, Clock::with_runtime(runtime.clone()))
}

/// Spawns `tasks` callers of `get_or_fetch` on the runtime; the receivers give their tokens.
fn spawn_many<R: Runtime>(
    runtime: &R,
    cache: &Cache<R>,
    endpoint: &Endpoint<R>,
    tasks: usize,
) -> Vec<oneshot::Receiver<Result<String, CacheError>>> {
    (0..tasks)
        .map(|_| {
            let (sender, receiver) = oneshot::channel();
            let (cache, endpoint) = (cache.clone(), endpoint.clone());
            runtime.spawn(async move {
                let token = cache.get_or_fetch(KEY.to_owned(), || endpoint.fetch()).await;
                let _ = sender.send(token.map(|token| token.access_token().expose().to_owned()));
            });
            receiver
        })
        .collect()
}

async fn join_all<T>(receivers: Vec<oneshot::Receiver<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        results.push(receiver.await.expect("the task finished"));
    }
    results
}

/// Single flight: 64 concurrent callers cause one fetch; a second round is served from the cache.
pub async fn sixty_four_callers_share_one_fetch_then_hit_the_cache<R: Runtime>(runtime: R) {
    let cache = cache(&runtime, CacheConfig::default());
    let endpoint = Endpoint::new(runtime.clone(), Duration::from_millis(50));
    let tokens: Vec<String> = join_all(spawn_many(&runtime, &cache, &endpoint, 64))
        .await
        .into_iter()
        .map(|token| token.expect("token"))
        .collect();
    assert_eq!(endpoint.fetches(), 1, "single flight: one fetch");
    assert!(tokens.iter().all(|token| token == "t1"), "all 64 callers got the same token: {tokens:?}");
    assert_eq!(cache.fetches(), 1);

    let again = join_all(spawn_many(&runtime, &cache, &endpoint, 64)).await;
    assert!(again.iter().all(|token| token.as_deref() == Ok("t1")));
    assert_eq!(endpoint.fetches(), 1, "the second round is served from the cache");
    let cached = cache.get_cached(&KEY.to_owned()).expect("cached");
    assert_eq!(cached.access_token().expose(), "t1");
}

/// Ten tasks invalidate the same rejected token at once: it is dropped once and fetched again once.
pub async fn concurrent_401s_drop_the_token_once_and_refetch_once<R: Runtime>(runtime: R) {
    let cache = cache(&runtime, CacheConfig::default());
    let endpoint = Endpoint::new(runtime.clone(), Duration::from_millis(50));
    let first = cache.get_or_fetch(KEY.to_owned(), || endpoint.fetch()).await.expect("token");
    assert!(!cache.invalidate(&KEY.to_owned(), &Secret::new("another token")), "only the cached token");

    let receivers: Vec<_> = (0..10)
        .map(|_| {
            let (sender, receiver) = oneshot::channel();
            let (cache, endpoint, used) = (cache.clone(), endpoint.clone(), first.clone());
            runtime.spawn(async move {
                let key = KEY.to_owned();
                let dropped = cache.invalidate(&key, used.access_token());
                let fresh = cache.get_or_fetch(key, || endpoint.fetch()).await;
                let _ = sender.send(fresh.map(|fresh| (dropped, fresh.access_token().expose().to_owned())));
            });
            receiver
        })
        .collect();
    let results: Vec<(bool, String)> =
        join_all(receivers).await.into_iter().map(|result| result.expect("token")).collect();
    assert_eq!(results.iter().filter(|(dropped, _)| *dropped).count(), 1, "dropped once, not ten times");
    assert!(results.iter().all(|(_, token)| token == "t2"), "everyone got the one new token: {results:?}");
    assert_eq!(endpoint.fetches(), 2, "exactly one refetch for the ten 401s");
}

/// A failed fetch reaches every waiter; then the cache backs off (twice as long after a second
/// failure) without asking the endpoint, and recovers.
pub async fn failures_reach_every_waiter_then_back_off<R: Runtime>(runtime: R) {
    let backoff = Backoff { initial: Duration::from_millis(300), max: Duration::from_secs(2) };
    let cache = cache(&runtime, CacheConfig { backoff, ..CacheConfig::default() });
    let endpoint = Endpoint::new(runtime.clone(), Duration::from_millis(50));
    endpoint.fail(true);
    for result in join_all(spawn_many(&runtime, &cache, &endpoint, 16)).await {
        assert!(
            matches!(result, Err(CacheError::Fetch { reason: "token_refused", .. })),
            "every waiter gets the leader's error: {result:?}"
        );
    }
    assert_eq!(endpoint.fetches(), 1);

    let key = KEY.to_owned();
    let fast = cache.get_or_fetch(key.clone(), || endpoint.fetch()).await;
    let Err(CacheError::BackingOff { reason: "token_refused", retry_in }) = fast else {
        panic!("expected BackingOff, got {fast:?}")
    };
    assert!(retry_in <= Duration::from_millis(300));
    assert_eq!(endpoint.fetches(), 1, "backing off: the endpoint is not asked");

    runtime.sleep(retry_in + Duration::from_millis(20)).await;
    let second = cache.get_or_fetch(key.clone(), || endpoint.fetch()).await;
    assert!(matches!(second, Err(CacheError::Fetch { .. })), "{second:?}");
    assert_eq!(endpoint.fetches(), 2);
    let Err(CacheError::BackingOff { retry_in, .. }) =
        cache.get_or_fetch(key.clone(), || endpoint.fetch()).await
    else {
        panic!("expected BackingOff")
    };
    assert!(retry_in > Duration::from_millis(300) && retry_in <= Duration::from_millis(600), "{retry_in:?}");

    endpoint.fail(false);
    runtime.sleep(retry_in + Duration::from_millis(20)).await;
    let token = cache.get_or_fetch(key, || endpoint.fetch()).await.expect("token");
    assert_eq!(token.access_token().expose(), "t3");
}

/// A leader whose future is dropped (a timeout) hands the flight to one of its waiters.
pub async fn a_cancelled_leader_does_not_strand_its_waiters<R: Runtime>(runtime: R) {
    let cache = cache(&runtime, CacheConfig::default());
    let endpoint = Endpoint::new(runtime.clone(), Duration::from_millis(10));
    let (started, leading) = oneshot::channel();
    let (finished, leader_done) = oneshot::channel();
    let (leader_cache, leader_runtime) = (cache.clone(), runtime.clone());
    runtime.spawn(async move {
        let stuck = leader_cache.get_or_fetch(KEY.to_owned(), || async move {
            let _ = started.send(());
            std::future::pending::<Result<Fetched, FetchError>>().await
        });
        let _ = finished.send(timeout(&leader_runtime, Duration::from_millis(150), stuck).await.is_err());
    });
    leading.await.expect("the leader started its fetch");
    let waiters = spawn_many(&runtime, &cache, &endpoint, 8);
    runtime.sleep(Duration::from_millis(50)).await;
    assert_eq!(endpoint.fetches(), 0, "the waiters wait for the leader");

    assert!(leader_done.await.expect("the leader ended"), "the leader timed out");
    let tokens = join_all(waiters).await;
    assert!(tokens.iter().all(|token| token.as_deref() == Ok("t1")), "{tokens:?}");
    assert_eq!(endpoint.fetches(), 1, "one waiter took over the flight");

    // Forgetting the key wakes nobody wrongly and the next call fetches again.
    cache.remove(&KEY.to_owned());
    let token = cache.get_or_fetch(KEY.to_owned(), || endpoint.fetch()).await;
    assert_eq!(token.map(|token| token.access_token().expose().to_owned()), Ok("t2".to_owned()));
}

/// Keys that hold nothing are pruned as new ones come, so memory follows the keys in use.
pub async fn idle_keys_do_not_accumulate<R: Runtime>(runtime: R) {
    let cache: SharedTokenCache<u32, R> =
        SharedTokenCache::with_clock(CacheConfig::default(), Clock::with_runtime(runtime));
    for key in 0..5_000u32 {
        // A zero lifetime: handed to the caller, never cached, so the key is idle at once.
        let fetched = cache
            .get_or_fetch(key, || async {
                Ok(Fetched { access_token: Secret::new("t"), expires_in: Some(0), policy: TtlPolicy::M2m })
            })
            .await;
        assert!(fetched.is_ok());
    }
    assert_eq!(cache.fetches(), 5_000);
    let keys = cache.key_count();
    assert!(keys <= PRUNE_FLOOR, "{keys} idle keys kept");
}

/// Stamps out one `#[test]` per grant-store scenario of [`testing`](crate::testing) in a module
/// `$module`: each runs on `$runtime` under `$block_on`, with a fresh store from `$make_store`
/// (called with [`SUITE_MAX_RECORDS`]), bounded by 30 s.
#[macro_export]
macro_rules! grant_store_test_suite {
    ($module:ident, $block_on:path, $runtime:expr, $make_store:expr) => {
        $crate::grant_store_test_suite_or_skip!($module, $block_on, $runtime, |max_records| {
            Some((($make_store)(max_records), ()))
        });
    };
}

/// The record bound a store under the grant-store suite is built with (grants, marks and locks
/// together); [`a_full_store_prunes_expired_records_then_fails_closed`] fills it.
pub const SUITE_MAX_RECORDS: usize = 64;

/// A live grant `n` of server `s`, ending at `expires_at`.
fn suite_grant(n: u8, expires_at: UnixTime) -> Grant {
    crate::grant_store::sample_grant(n, expires_at, unix_now())
}

fn in_secs(secs: u64) -> UnixTime {
    unix_now().plus(Duration::from_secs(secs))
}

/// Sleeps on the runtime until the store's wall clock reaches `at` (at most 5 s).
async fn sleep_past<R: Runtime>(runtime: &R, at: UnixTime) {
    for _ in 0..50 {
        if unix_now() >= at {
            return;
        }
        runtime.sleep(Duration::from_millis(100)).await;
    }
    panic!("the wall clock did not reach {at:?}");
}

/// Runs `tasks` copies of `call` on the runtime at once and collects their answers.
async fn concurrently<R, S, T, F, Fut>(runtime: &R, store: &S, tasks: usize, call: F) -> Vec<T>
where
    R: Runtime,
    S: GrantStore + Clone,
    T: Send + 'static,
    F: Fn(S) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let receivers = (0..tasks)
        .map(|_| {
            let (sender, receiver) = oneshot::channel();
            let future = call(store.clone());
            runtime.spawn(async move {
                let _ = sender.send(future.await);
            });
            receiver
        })
        .collect();
    join_all(receivers).await
}

/// A grant reads back as written, a rewrite replaces it, and a grant whose expiry has passed
/// (including one written already ended: a revocation) reads as absent.
pub async fn grants_round_trip_and_expired_grants_are_gone<R: Runtime, S: GrantStore + Clone>(
    _runtime: R,
    store: S,
) {
    let grant = suite_grant(1, in_secs(3600));
    assert_eq!(store.get_grant(grant.id.clone()).await, Ok(None), "nothing yet");
    store.put_grant(grant.clone()).await.expect("stored");
    assert_eq!(store.get_grant(grant.id.clone()).await, Ok(Some(grant.clone())));
    let rewritten = Grant { scope: "read write".into(), generation: 3, ..grant.clone() };
    store.put_grant(rewritten.clone()).await.expect("stored");
    assert_eq!(store.get_grant(grant.id.clone()).await, Ok(Some(rewritten)));
    let revoked = Grant { expires_at: UnixTime::from_secs(unix_now().as_secs() - 1), ..grant.clone() };
    store.put_grant(revoked).await.expect("stored");
    assert_eq!(store.get_grant(grant.id.clone()).await, Ok(None), "revoked");
    let ended = suite_grant(2, UnixTime::from_secs(unix_now().as_secs() - 60));
    store.put_grant(ended.clone()).await.expect("stored");
    assert_eq!(store.get_grant(ended.id).await, Ok(None), "already expired");
    assert_eq!(store.get_grant(GrantId::new("unknown")).await, Ok(None));
}

/// `list_grants` shows the live user grants and nothing else: not an expired or revoked grant, not
/// a newest-grant pointer, not a kept upstream registration; and at most `limit` of them.
pub async fn list_grants_shows_live_user_grants_only<R: Runtime, S: GrantStore + Clone>(
    _runtime: R,
    store: S,
) {
    let live: Vec<Grant> = (1..=3).map(|n| suite_grant(n, in_secs(3600))).collect();
    for grant in &live {
        store.put_grant(grant.clone()).await.expect("stored");
    }
    store.put_grant(live[0].pointer()).await.expect("stored");
    let revoked = suite_grant(4, in_secs(3600));
    store.put_grant(revoked.clone()).await.expect("stored");
    let ended = Grant { expires_at: UnixTime::from_secs(unix_now().as_secs() - 1), ..revoked };
    store.put_grant(ended).await.expect("stored");
    let registration = Grant::upstream_registration(
        "s",
        "https://gw.example",
        mcp_oauth_core::grant::UpstreamClient { client_id: "gw".into(), client_secret: None },
        unix_now(),
        in_secs(3600),
    );
    store.put_grant(registration).await.expect("stored");
    let mut listed: Vec<String> =
        store.list_grants(100).await.expect("listed").into_iter().map(|g| g.id.to_string()).collect();
    listed.sort();
    let mut expected: Vec<String> = live.iter().map(|grant| grant.id.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(store.list_grants(2).await.expect("listed").len(), 2, "at most `limit`");
    assert_eq!(
        store.list_grants(100).await.expect("listed").iter().find(|g| g.id == live[1].id),
        Some(&live[1]),
        "listed whole"
    );
}

/// `take_once` is true the first time only, per key; a mark whose `until` has passed is refused.
pub async fn take_once_is_true_exactly_once<R: Runtime, S: GrantStore + Clone>(_runtime: R, store: S) {
    let key = OnceKey("code-a".into());
    assert_eq!(store.take_once(key.clone(), in_secs(60)).await, Ok(true));
    assert_eq!(store.take_once(key.clone(), in_secs(60)).await, Ok(false));
    assert_eq!(store.take_once(key, in_secs(600)).await, Ok(false), "a later `until` does not reopen it");
    assert_eq!(store.take_once(OnceKey("code-b".into()), in_secs(60)).await, Ok(true), "per key");
    let past = UnixTime::from_secs(unix_now().as_secs() - 1);
    assert_eq!(store.take_once(OnceKey("code-c".into()), past).await, Ok(false), "nothing left to guard");
}

/// Of 32 callers taking the same mark at once, exactly one gets `true`.
pub async fn take_once_is_true_once_among_32_concurrent_callers<R: Runtime, S: GrantStore + Clone>(
    runtime: R,
    store: S,
) {
    let until = in_secs(60);
    let answers = concurrently(&runtime, &store, 32, |store: S| async move {
        store.take_once(OnceKey("state-1".into()), until).await
    })
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(answers.iter().filter(|answer| **answer == Ok(true)).count(), 1, "{answers:?}");
}

/// A mark is forgotten once its `until` passes (its sealed value no longer opens).
pub async fn expired_marks_are_gone<R: Runtime, S: GrantStore + Clone>(runtime: R, store: S) {
    let key = OnceKey("code-short".into());
    let until = in_secs(2);
    assert_eq!(store.take_once(key.clone(), until).await, Ok(true));
    assert_eq!(store.take_once(key.clone(), until).await, Ok(false));
    sleep_past(&runtime, until).await;
    assert_eq!(store.take_once(key, in_secs(60)).await, Ok(true), "the expired mark is gone");
}

/// `advance_generation` is compare-and-swap: only the expected generation advances, it records
/// the rotation time, and of 16 concurrent advancers exactly one wins.
pub async fn advance_generation_is_compare_and_swap<R: Runtime, S: GrantStore + Clone>(runtime: R, store: S) {
    let grant = suite_grant(3, in_secs(3600));
    let id = grant.id.clone();
    store.put_grant(grant).await.expect("stored");
    let rotated = unix_now().plus(Duration::from_secs(1));
    assert_eq!(store.advance_generation(id.clone(), 1, rotated).await, Ok(false), "not the current one");
    assert_eq!(store.advance_generation(id.clone(), 0, rotated).await, Ok(true));
    let after = store.get_grant(id.clone()).await.expect("answer").expect("live");
    assert_eq!((after.generation, after.rotated_at), (1, rotated));
    assert_eq!(store.advance_generation(id.clone(), 0, rotated).await, Ok(false), "a replay loses");

    let answers = concurrently(&runtime, &store, 16, |store: S| {
        let id = id.clone();
        async move { store.advance_generation(id, 1, rotated).await }
    })
    .await;
    assert_eq!(answers.iter().filter(|answer| **answer == Ok(true)).count(), 1, "{answers:?}");
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let after = store.get_grant(id).await.expect("answer").expect("live");
    assert_eq!(after.generation, 2);
    assert_eq!(store.advance_generation(GrantId::new("unknown"), 0, rotated).await, Ok(false));
}

/// `try_lock` excludes every second holder (the same one too) until the holder unlocks or the
/// ttl passes; only the holder can unlock; 32 concurrent lockers get one lock.
pub async fn try_lock_excludes_a_second_holder_until_unlock_or_ttl<R: Runtime, S: GrantStore + Clone>(
    runtime: R,
    store: S,
) {
    let grant = GrantId::new("grant-lock");
    let (a, b) = (LockHolder("a".into()), LockHolder("b".into()));
    let ttl = Duration::from_secs(30);
    assert_eq!(store.try_lock(grant.clone(), a.clone(), ttl).await, Ok(true));
    assert_eq!(store.try_lock(grant.clone(), b.clone(), ttl).await, Ok(false));
    assert_eq!(store.try_lock(grant.clone(), a.clone(), ttl).await, Ok(false), "not re-entrant");
    store.unlock(grant.clone(), b.clone()).await.expect("answered");
    assert_eq!(store.try_lock(grant.clone(), b.clone(), ttl).await, Ok(false), "b cannot unlock a's lock");
    store.unlock(grant.clone(), a).await.expect("answered");
    assert_eq!(store.try_lock(grant.clone(), b.clone(), ttl).await, Ok(true), "free after unlock");
    store.unlock(grant, b).await.expect("answered");

    let short = GrantId::new("grant-ttl");
    let quick = Duration::from_millis(300);
    assert_eq!(store.try_lock(short.clone(), LockHolder("c".into()), quick).await, Ok(true));
    assert_eq!(store.try_lock(short.clone(), LockHolder("d".into()), quick).await, Ok(false));
    runtime.sleep(Duration::from_millis(450)).await;
    assert_eq!(store.try_lock(short, LockHolder("d".into()), quick).await, Ok(true), "free after the ttl");

    let contended = GrantId::new("grant-contended");
    let holders = Arc::new(AtomicU64::new(0));
    let answers = concurrently(&runtime, &store, 32, |store: S| {
        let contended = contended.clone();
        let holder = LockHolder(format!("holder-{}", holders.fetch_add(1, Ordering::SeqCst)));
        async move { store.try_lock(contended, holder, ttl).await }
    })
    .await;
    assert_eq!(answers.iter().filter(|answer| **answer == Ok(true)).count(), 1, "{answers:?}");
}

/// Filled to [`SUITE_MAX_RECORDS`], the store refuses a new grant and a new mark with
/// `store_full` (fail closed) but still rewrites a grant it holds; once records expire, they are
/// pruned to make room.
pub async fn a_full_store_prunes_expired_records_then_fails_closed<R: Runtime, S: GrantStore + Clone>(
    runtime: R,
    store: S,
) {
    let short = in_secs(2);
    let long = in_secs(3600);
    let live = SUITE_MAX_RECORDS - 16;
    for n in 0..live {
        let n = u8::try_from(n).expect("fewer than 256 grants");
        store.put_grant(suite_grant(n, long)).await.expect("room");
    }
    for n in 0..16 {
        assert_eq!(store.take_once(OnceKey(format!("short-{n}")), short).await, Ok(true));
    }
    let extra = suite_grant(200, long);
    let full = Err(mcp_oauth_core::grant::StoreUnavailable { reason: STORE_FULL });
    assert_eq!(store.put_grant(extra.clone()).await, full);
    assert_eq!(
        store.take_once(OnceKey("one-more".into()), long).await.map_err(|e| e.reason),
        Err(STORE_FULL)
    );
    assert_eq!(store.get_grant(extra.id.clone()).await, Ok(None), "nothing half-written");
    store.put_grant(suite_grant(0, long)).await.expect("a rewrite needs no room");

    sleep_past(&runtime, short).await;
    store.put_grant(extra.clone()).await.expect("expired marks were pruned");
    assert_eq!(
        store.get_grant(extra.id).await.expect("answer").map(|grant| grant.scope),
        Some("read".into())
    );
    assert_eq!(store.take_once(OnceKey("one-more".into()), long).await, Ok(true));
}

/// Like [`grant_store_test_suite!`](crate::grant_store_test_suite), for a backend that needs a
/// server the machine may lack: `$make_store` answers `Option<(store, guard)>`. `None` skips the
/// test (the maker says why); the guard (a child server, a temporary directory) lives until the
/// test ends.
#[macro_export]
macro_rules! grant_store_test_suite_or_skip {
    ($module:ident, $block_on:path, $runtime:expr, $make_store:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::grant_store_test_suite_or_skip!(@each $block_on, $runtime, $make_store;
                grants_round_trip_and_expired_grants_are_gone,
                take_once_is_true_exactly_once,
                take_once_is_true_once_among_32_concurrent_callers,
                expired_marks_are_gone,
                advance_generation_is_compare_and_swap,
                try_lock_excludes_a_second_holder_until_unlock_or_ttl,
                a_full_store_prunes_expired_records_then_fails_closed,
                list_grants_shows_live_user_grants_only,
            );
        }
    };
    (@each $block_on:path, $runtime:expr, $make_store:expr; $($scenario:ident,)*) => {
        $(
            #[test]
            fn $scenario() {
                let Some((store, _guard)) = ($make_store)($crate::testing::SUITE_MAX_RECORDS) else {
                    return;
                };
                $block_on($crate::testing::bounded($runtime, $crate::testing::$scenario($runtime, store)));
            }
        )*
    };
}

/// A throwaway `redis-server` on a free loopback port, without persistence, killed on drop: what
/// the Redis grant-store tests run against.
///
/// When `redis-server` is not on `PATH`, [`RedisServer::start`] panics if `CI` is set (the CI
/// image must install it) and otherwise prints a skip notice and answers `None`.
#[derive(Debug)]
pub struct RedisServer {
    child: std::process::Child,
    port: u16,
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server without a password, answering `PING` before this returns.
    pub fn start() -> Option<Self> {
        Self::spawn(None)
    }

    /// Starts a server that requires `password` (`requirepass`, the default user).
    pub fn start_with_password(password: &str) -> Option<Self> {
        Self::spawn(Some(password))
    }

    /// The setting that reaches this server (database 0, with its password if it has one).
    pub fn setting(&self) -> mcp_oauth_core::config::RedisSetting {
        mcp_oauth_core::config::RedisSetting {
            host: "127.0.0.1".into(),
            port: self.port,
            db: 0,
            username: None,
            password: self.password.as_deref().map(Secret::new),
        }
    }

    /// The server's process id (for `kill -STOP` / `kill -CONT`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(password: Option<&str>) -> Option<Self> {
        use std::process::{Command, Stdio};

        // A free port may be taken between the probe and the server's bind: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free loopback port")
                .port();
            let mut command = Command::new("redis-server");
            command
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(password) = password {
                command.args(["--requirepass", password]);
            }
            let child = match command.spawn() {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "redis-server is not on PATH: install it (e.g. `apt-get install redis-server`) to run \
                         the Redis grant-store tests"
                    );
                    eprintln!(
                        "skipped: redis-server is not on PATH (install it to run the Redis store tests)"
                    );
                    return None;
                }
                Err(error) => panic!("cannot start redis-server: {error}"),
            };
            let mut server = Self { child, port, password: password.map(str::to_owned) };
            if server.wait_until_up() {
                return Some(server);
            }
        }
        panic!("redis-server did not answer PING within 5 s on any of five ports");
    }

    /// Whether the server answers `PING` (or asks for AUTH) within 5 s; `false` if it exited
    /// (its port was taken) or never answered.
    fn wait_until_up(&mut self) -> bool {
        use std::io::{Read, Write};

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reply = [0u8; 64];
                if stream.write_all(b"PING\r\n").is_ok() && stream.read(&mut reply).is_ok_and(|n| n > 0) {
                    // `+PONG`, or `-NOAUTH` from a server with a password: either way it is up.
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
