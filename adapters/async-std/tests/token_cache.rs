//! `SharedTokenCache` on async-std against the tokio adapter's mock upstream (on a tokio runtime of
//! its own, in background threads, as in the parity suite): single flight, a second round served
//! from the cache, one refetch for concurrent 401s, and no hang when the leader is cancelled.
//!
//! Everything stays on 127.0.0.1 and every test body is bounded by `async_std::future::timeout`.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::{Upstream, local_limits};
use http::{Response, StatusCode};
use mcp_oauth_async_std::token_cache::{CacheError, FetchError, SharedTokenCache};
use mcp_oauth_async_std::{Headless, HttpClient, Io, drive};
use mcp_oauth_core::client::mcp::{McpEndpoint, rpc_request};
use mcp_oauth_core::client::token::{Client, Grant, TokenEndpointAuth, parse_token_response, token_request};
use mcp_oauth_core::machine::{OneShot, Outgoing, Performer, RequestId, TransportError};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{CacheConfig, Fetched};
use mcp_oauth_tokio::mock::Switch;
use serde_json::json;
use url::Url;

const KEY: &str = "mock-server";
const GRANT: &str = "client_credentials";

/// Runs `body` on async-std, failing the test if it takes longer than 30 s.
fn bounded<T>(body: impl Future<Output = T>) -> T {
    async_std::task::block_on(async_std::future::timeout(Duration::from_secs(30), body))
        .expect("the test took longer than 30 s")
}

struct Env {
    upstream: Upstream,
    io: Arc<Io>,
    cache: SharedTokenCache<String>,
}

impl Env {
    fn new(switches: &[Switch]) -> Self {
        let upstream = Upstream::start(switches);
        let io = Arc::new(Io::new(HttpClient::new().expect("client"), Box::new(Headless)));
        Self { upstream, io, cache: SharedTokenCache::new(CacheConfig::default()) }
    }

    fn token_url(&self) -> Url {
        Url::parse(&format!("{}/token", self.upstream.origin())).expect("url")
    }

    fn token_requests(&self) -> u64 {
        self.upstream.handle().counters().token_requests_for(GRANT)
    }

    /// Spawns `tasks` async-std tasks that each ask the cache for the token.
    fn spawn_many(&self, tasks: usize) -> Vec<async_std::task::JoinHandle<Result<String, CacheError>>> {
        (0..tasks)
            .map(|_| {
                let (cache, io, url) = (self.cache.clone(), Arc::clone(&self.io), self.token_url());
                async_std::task::spawn(async move {
                    let token = cache.get_or_fetch(KEY.to_owned(), || client_credentials(&io, &url)).await?;
                    Ok(token.access_token().expose().to_owned())
                })
            })
            .collect()
    }
}

/// One client-credentials request to the mock, driven by this adapter's `drive` as a `OneShot`.
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
async fn ping(io: &Io, mcp_url: &str, token: &Secret) -> StatusCode {
    let endpoint = McpEndpoint {
        url: Url::parse(mcp_url).expect("url"),
        protocol_version: None,
        session_id: None,
        stateless: false,
    };
    let request = rpc_request(&endpoint, Some(1), "ping", json!({}), Some(token)).expect("request");
    let outgoing = Outgoing::unchecked(RequestId(1), request, local_limits(), Performer::Client, "ping");
    io.client().perform(&outgoing).await.expect("response").status()
}

async fn join_all<T>(handles: Vec<async_std::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await);
    }
    results
}

#[test]
fn sixty_four_tasks_share_one_fetch_then_hit_the_cache() {
    // 50 ms on every answer, so the 64 tasks really overlap with the one fetch.
    let env = Env::new(&[Switch::SlowMs(50)]);
    bounded(async {
        let tokens: Vec<String> =
            join_all(env.spawn_many(64)).await.into_iter().map(|token| token.expect("token")).collect();
        assert_eq!(env.token_requests(), 1, "single flight: one client_credentials request");
        assert!(tokens.iter().all(|token| *token == tokens[0]), "all 64 tasks got the same token");
        assert!(tokens[0].starts_with("mock_at_"), "{}", tokens[0]);

        let again: Vec<String> =
            join_all(env.spawn_many(64)).await.into_iter().map(|token| token.expect("token")).collect();
        assert_eq!(env.token_requests(), 1, "the second round is served from the cache");
        assert!(again.iter().all(|token| *token == tokens[0]));
        let cached = env.cache.get_cached(&KEY.to_owned()).expect("cached");
        assert_eq!(cached.access_token().expose(), tokens[0]);
    });
}

#[test]
fn ten_concurrent_401s_drop_the_token_once_and_refetch_once() {
    let env = Env::new(&[]);
    let mcp_url = env.upstream.mcp_url();
    let url = env.token_url();
    bounded(async {
        let key = KEY.to_owned();
        let first =
            env.cache.get_or_fetch(key.clone(), || client_credentials(&env.io, &url)).await.expect("token");
        assert_eq!(ping(&env.io, &mcp_url, first.access_token()).await, StatusCode::OK);
        assert_eq!(env.token_requests(), 1);

        // Every token the mock issued so far is revoked: ten tasks get a 401 for the cached one at
        // once, invalidate it and ask again.
        env.upstream.handle().revoke_access_tokens();
        env.upstream.handle().set(Switch::SlowMs(50));
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let (cache, io, url, mcp_url, used) =
                    (env.cache.clone(), Arc::clone(&env.io), url.clone(), mcp_url.clone(), first.clone());
                async_std::task::spawn(async move {
                    let key = KEY.to_owned();
                    assert_eq!(ping(&io, &mcp_url, used.access_token()).await, StatusCode::UNAUTHORIZED);
                    let dropped = cache.invalidate(&key, used.access_token());
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
        assert_ne!(results[0].1, first.access_token().expose());
        assert_eq!(env.token_requests(), 2, "exactly one refetch for the ten 401s");
    });
}

#[test]
fn a_cancelled_leader_does_not_strand_its_waiters() {
    let env = Env::new(&[]);
    bounded(async {
        let (started, leading) = async_std::channel::bounded::<()>(1);
        let cache = env.cache.clone();
        let leader = async_std::task::spawn(async move {
            cache
                .get_or_fetch(KEY.to_owned(), || async move {
                    let _ = started.send(()).await;
                    std::future::pending::<Result<Fetched, FetchError>>().await
                })
                .await
        });
        leading.recv().await.expect("the leader started its fetch");
        let waiters = env.spawn_many(8);
        async_std::task::sleep(Duration::from_millis(50)).await;
        assert_eq!(env.token_requests(), 0, "the waiters wait for the leader");

        assert!(leader.cancel().await.is_none(), "the leader was still fetching");
        let tokens: Vec<String> =
            join_all(waiters).await.into_iter().map(|token| token.expect("token")).collect();
        assert!(tokens.iter().all(|token| *token == tokens[0]));
        assert_eq!(env.token_requests(), 1, "one waiter took over the flight");

        // A leader dropped by a timeout is handled the same way.
        env.cache.remove(&KEY.to_owned());
        let timed_out = async_std::future::timeout(
            Duration::from_millis(20),
            env.cache.get_or_fetch(KEY.to_owned(), std::future::pending::<Result<Fetched, FetchError>>),
        )
        .await;
        assert!(timed_out.is_err());
        let url = env.token_url();
        let token = env.cache.get_or_fetch(KEY.to_owned(), || client_credentials(&env.io, &url)).await;
        assert!(token.is_ok(), "{token:?}");
        assert_eq!(env.token_requests(), 2);
    });
}
