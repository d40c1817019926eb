//! `SharedTokenCache` against the mock upstream on 127.0.0.1: single flight, invalidation on 401,
//! backoff after failures and leader cancellation.
//!
//! Every test binds `127.0.0.1:0` and runs under a 30 s timeout; backoff is kept short through
//! the cache's configuration (real sockets and paused time do not mix).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use mcp_oauth_core::client::mcp::{McpEndpoint, rpc_request};
use mcp_oauth_core::client::token::{Client, Grant, TokenEndpointAuth, parse_token_response, token_request};
use mcp_oauth_core::machine::{Limits, OneShot, Outgoing, Performer, RequestId, TransportError};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{Backoff, CacheConfig, Fetched};
use mcp_oauth_tokio::mock::{MockConfig, MockHandle, MockUpstream, Switch};
use mcp_oauth_tokio::token_cache::{CacheError, FetchError, SharedTokenCache};
use mcp_oauth_tokio::{Headless, HttpClient, Io, drive};
use serde_json::json;
use tokio::sync::Barrier;
use url::Url;

const KEY: &str = "mock-server";
const GRANT: &str = "client_credentials";

async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), body).await.expect("the test took longer than 30 s")
}

fn local_limits() -> Limits {
    Limits { allow_private_addresses: true, ..Limits::METADATA }
}

struct Env {
    mock: MockUpstream,
    io: Arc<Io>,
    cache: SharedTokenCache<String>,
}

impl Env {
    async fn new(config: CacheConfig) -> Self {
        let mock = MockUpstream::start(MockConfig::default()).await.expect("mock starts");
        let io = Arc::new(Io::new(HttpClient::new().expect("TLS setup"), Box::new(Headless)));
        Self { mock, io, cache: SharedTokenCache::new(config) }
    }

    fn handle(&self) -> MockHandle {
        self.mock.handle()
    }

    fn token_url(&self) -> Url {
        Url::parse(&format!("{}/token", self.mock.origin())).expect("url")
    }

    fn token_requests(&self) -> u64 {
        self.handle().counters().token_requests_for(GRANT)
    }

    /// Spawns `tasks` callers that start `get_or_fetch` at the same moment.
    fn spawn_many(&self, tasks: usize) -> Vec<tokio::task::JoinHandle<Result<String, CacheError>>> {
        let barrier = Arc::new(Barrier::new(tasks));
        (0..tasks)
            .map(|_| {
                let (cache, io, url, barrier) =
                    (self.cache.clone(), Arc::clone(&self.io), self.token_url(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let token = cache.get_or_fetch(KEY.to_owned(), || client_credentials(&io, &url)).await?;
                    Ok(token.access_token().expose().to_owned())
                })
            })
            .collect()
    }
}

/// One client-credentials request to the mock, driven by `drive` as a core `OneShot`.
async fn client_credentials(io: &Io, token_url: &Url) -> Result<Fetched, FetchError> {
    let secret = Secret::new("mock-secret");
    let client = Client {
        client_id: "mock-client",
        client_secret: Some(&secret),
        auth: TokenEndpointAuth::ClientSecretPost,
    };
    let request = token_request(token_url, &client, &Grant::ClientCredentials, &["mcp".to_owned()], None)
        .map_err(|error| FetchError::new("token_request_invalid", error.to_string()))?;
    let mut machine = OneShot::new(
        request,
        local_limits(),
        "token",
        |result: Result<Response<Vec<u8>>, TransportError>| match result {
            Ok(response) => parse_token_response(&response).map_err(|error| FetchError::from_reason(&error)),
            Err(error) => Err(FetchError::from_reason(&error)),
        },
    )
    .expect("the fetch policy allows the loopback mock");
    let response =
        drive(&mut machine, io).await.map_err(|error| FetchError::new("stalled", error.to_string()))??;
    Ok(Fetched::m2m(&response))
}

/// `ping` on the mock's MCP server with `token`; returns the status.
async fn ping(io: &Io, mock_url: &str, token: &Secret) -> StatusCode {
    let endpoint = McpEndpoint {
        url: Url::parse(mock_url).expect("url"),
        protocol_version: None,
        session_id: None,
        stateless: false,
    };
    let request = rpc_request(&endpoint, Some(1), "ping", json!({}), Some(token)).expect("request");
    let outgoing = Outgoing::unchecked(RequestId(1), request, local_limits(), Performer::Client, "ping");
    io.client().perform(&outgoing).await.expect("response").status()
}

async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_share_one_fetch_then_hit_the_cache() {
    bounded(async {
        let env = Env::new(CacheConfig::default()).await;
        // 50 ms on every answer, so the 64 callers really overlap with the one fetch.
        env.handle().set(Switch::SlowMs(50));
        let tokens: Vec<String> =
            join_all(env.spawn_many(64)).await.into_iter().map(|token| token.expect("token")).collect();
        assert_eq!(env.token_requests(), 1, "single flight: one client_credentials request");
        assert!(tokens.iter().all(|token| *token == tokens[0]), "all 64 callers got the same token");
        assert!(tokens[0].starts_with("mock_at_"));

        // A second round before expiry: no new request.
        let again: Vec<String> =
            join_all(env.spawn_many(64)).await.into_iter().map(|token| token.expect("token")).collect();
        assert_eq!(env.token_requests(), 1, "the second round is served from the cache");
        assert!(again.iter().all(|token| *token == tokens[0]));
        let cached = env.cache.get_cached(&KEY.to_owned()).expect("cached");
        assert_eq!(cached.access_token().expose(), tokens[0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_drops_the_token_once_and_refetches_once() {
    bounded(async {
        let env = Env::new(CacheConfig::default()).await;
        let key = KEY.to_owned();
        let mcp_url = env.mock.mcp_url();
        let url = env.token_url();
        let first =
            env.cache.get_or_fetch(key.clone(), || client_credentials(&env.io, &url)).await.expect("token");
        assert_eq!(ping(&env.io, &mcp_url, first.access_token()).await, StatusCode::OK);

        // One forced 401 (`unauthorized_once`): invalidate, refetch once, retry succeeds.
        env.handle().set(Switch::UnauthorizedOnce(true));
        assert_eq!(ping(&env.io, &mcp_url, first.access_token()).await, StatusCode::UNAUTHORIZED);
        assert!(env.cache.invalidate(&key, first.access_token()));
        let second =
            env.cache.get_or_fetch(key.clone(), || client_credentials(&env.io, &url)).await.expect("token");
        assert_ne!(second.access_token(), first.access_token());
        assert_eq!(ping(&env.io, &mcp_url, second.access_token()).await, StatusCode::OK);
        assert_eq!(env.token_requests(), 2);

        // Ten tasks see a 401 for the same token at once (every token revoked): one refetch.
        env.handle().revoke_access_tokens();
        let barrier = Arc::new(Barrier::new(10));
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let (cache, io, url, mcp_url, barrier) = (
                    env.cache.clone(),
                    Arc::clone(&env.io),
                    url.clone(),
                    mcp_url.clone(),
                    Arc::clone(&barrier),
                );
                tokio::spawn(async move {
                    let key = KEY.to_owned();
                    let token = cache.get_or_fetch(key.clone(), || client_credentials(&io, &url)).await?;
                    barrier.wait().await;
                    assert_eq!(ping(&io, &mcp_url, token.access_token()).await, StatusCode::UNAUTHORIZED);
                    let dropped = cache.invalidate(&key, token.access_token());
                    let fresh = cache.get_or_fetch(key, || client_credentials(&io, &url)).await?;
                    assert_eq!(ping(&io, &mcp_url, fresh.access_token()).await, StatusCode::OK);
                    Ok::<_, CacheError>((dropped, fresh.access_token().expose().to_owned()))
                })
            })
            .collect();
        let results: Vec<(bool, String)> =
            join_all(handles).await.into_iter().map(|result| result.expect("token")).collect();
        assert_eq!(results.iter().filter(|(dropped, _)| *dropped).count(), 1, "dropped once, not ten times");
        assert!(results.iter().all(|(_, token)| *token == results[0].1), "everyone got the one new token");
        assert_eq!(env.token_requests(), 3, "exactly one refetch for the ten 401s");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_every_waiter_then_back_off_without_hitting_the_mock() {
    bounded(async {
        let backoff = Backoff { initial: Duration::from_millis(300), max: Duration::from_secs(2) };
        let env = Env::new(CacheConfig { backoff, ..CacheConfig::default() }).await;
        env.handle().set(Switch::TokenStatus(Some(500)));
        env.handle().set(Switch::SlowMs(50));
        let results = join_all(env.spawn_many(16)).await;
        for result in &results {
            assert!(
                matches!(result, Err(CacheError::Fetch { reason: "token_refused", .. })),
                "every waiter gets the leader's error: {result:?}"
            );
        }
        assert_eq!(env.token_requests(), 1);

        // Backing off: fail fast, the mock is not asked.
        let key = KEY.to_owned();
        let url = env.token_url();
        let fast = env.cache.get_or_fetch(key.clone(), || client_credentials(&env.io, &url)).await;
        let Err(CacheError::BackingOff { reason: "token_refused", retry_in }) = fast else {
            panic!("expected BackingOff, got {fast:?}")
        };
        assert!(retry_in <= Duration::from_millis(300));
        assert_eq!(env.token_requests(), 1);

        // After the backoff, one more failing fetch; the next backoff is twice as long.
        tokio::time::sleep(retry_in + Duration::from_millis(20)).await;
        let second = env.cache.get_or_fetch(key.clone(), || client_credentials(&env.io, &url)).await;
        assert!(matches!(second, Err(CacheError::Fetch { .. })), "{second:?}");
        assert_eq!(env.token_requests(), 2);
        let Err(CacheError::BackingOff { retry_in, .. }) =
            env.cache.get_or_fetch(key.clone(), || client_credentials(&env.io, &url)).await
        else {
            panic!("expected BackingOff")
        };
        assert!(
            retry_in > Duration::from_millis(300) && retry_in <= Duration::from_millis(600),
            "{retry_in:?}"
        );

        // The endpoint recovers; after the backoff a fetch succeeds and the count resets.
        env.handle().set(Switch::TokenStatus(None));
        tokio::time::sleep(retry_in + Duration::from_millis(20)).await;
        let token = env.cache.get_or_fetch(key, || client_credentials(&env.io, &url)).await.expect("token");
        assert!(token.access_token().expose().starts_with("mock_at_"));
        assert_eq!(env.token_requests(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    bounded(async {
        let env = Env::new(CacheConfig::default()).await;
        let (started, leading) = tokio::sync::oneshot::channel();
        let cache = env.cache.clone();
        let leader = tokio::spawn(async move {
            cache
                .get_or_fetch(KEY.to_owned(), || async move {
                    let _ = started.send(());
                    std::future::pending::<Result<Fetched, FetchError>>().await
                })
                .await
        });
        leading.await.expect("the leader started its fetch");
        let waiters = env.spawn_many(8);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiters.iter().all(|waiter| !waiter.is_finished()), "the waiters wait for the leader");
        assert_eq!(env.token_requests(), 0);

        leader.abort();
        assert!(leader.await.expect_err("aborted").is_cancelled());
        let tokens: Vec<String> =
            join_all(waiters).await.into_iter().map(|token| token.expect("token")).collect();
        assert!(tokens.iter().all(|token| *token == tokens[0]));
        assert_eq!(env.token_requests(), 1, "one waiter took over the flight");

        // A leader dropped by a timeout is handled the same way.
        env.cache.remove(&KEY.to_owned());
        let timed_out = tokio::time::timeout(
            Duration::from_millis(20),
            env.cache.get_or_fetch(KEY.to_owned(), std::future::pending::<Result<Fetched, FetchError>>),
        )
        .await;
        assert!(timed_out.is_err());
        let url = env.token_url();
        let token = env.cache.get_or_fetch(KEY.to_owned(), || client_credentials(&env.io, &url)).await;
        assert!(token.is_ok(), "{token:?}");
        assert_eq!(env.token_requests(), 2);
    })
    .await;
}
