//! The shared token cache on async-std against the loopback mock: single flight, a second round
//! served from cache, one refetch after invalidation, and no hang when the leader is cancelled.
//! The mock runs on a tokio runtime in background threads; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use mcp_oauth_async_std::token_cache::{FetchError, SharedTokenCache};
use mcp_oauth_async_std::{Headless, HttpClient, Io, drive};
use mcp_oauth_core::client::token::{Client, Grant, TokenEndpointAuth, parse_token_response, token_request};
use mcp_oauth_core::machine::{Limits, OneShot, TransportError};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{CacheConfig, Fetched};
use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};
use url::Url;

const KEY: &str = "mock-server";

fn mock() -> (tokio::runtime::Runtime, MockUpstream) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let upstream = runtime.block_on(MockUpstream::start(MockConfig::default())).unwrap();
    (runtime, upstream)
}

async fn client_credentials(io: &Io, token_url: &Url) -> Result<Fetched, FetchError> {
    let secret = Secret::new("mock-secret");
    let client = Client {
        client_id: "mock-client",
        client_secret: Some(&secret),
        auth: TokenEndpointAuth::ClientSecretPost,
    };
    let request = token_request(token_url, &client, &Grant::ClientCredentials, &[], None)
        .map_err(|error| FetchError::new("token_request_invalid", error.to_string()))?;
    let limits = Limits { allow_private_addresses: true, ..Limits::METADATA };
    let mut machine =
        OneShot::new(request, limits, "token", |result: Result<Response<Vec<u8>>, TransportError>| {
            match result {
                Ok(response) => {
                    parse_token_response(&response).map_err(|error| FetchError::from_reason(&error))
                }
                Err(error) => Err(FetchError::from_reason(&error)),
            }
        });
    let response =
        drive(&mut machine, io).await.map_err(|error| FetchError::new("stalled", error.to_string()))??;
    Ok(Fetched::m2m(&response))
}

async fn many(cache: &SharedTokenCache<String>, io: &Arc<Io>, url: &Url, tasks: usize) -> Vec<String> {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (cache, io, url) = (cache.clone(), Arc::clone(io), url.clone());
            async_std::task::spawn(async move {
                let token = cache
                    .get_or_fetch(KEY.to_owned(), || async { client_credentials(&io, &url).await })
                    .await;
                token.map(|token| token.access_token().expose().to_owned())
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for handle in handles {
        tokens.push(handle.await.expect("a token"));
    }
    tokens
}

fn bounded<T>(body: impl std::future::Future<Output = T>) -> T {
    async_std::task::block_on(async_std::future::timeout(Duration::from_secs(30), body)).expect("within 30 s")
}

#[test]
fn sixty_four_tasks_share_one_fetch_and_a_second_round_is_cached() {
    let (_runtime, upstream) = mock();
    let url = Url::parse(&format!("{}/token", upstream.origin())).unwrap();
    let io = Arc::new(Io::new(HttpClient::new().unwrap(), Box::new(Headless)));
    let cache: SharedTokenCache<String> = SharedTokenCache::new(CacheConfig::default());
    let first = bounded(many(&cache, &io, &url, 64));
    assert_eq!(first.len(), 64);
    assert!(first.iter().all(|token| token == &first[0]), "every task got the same token");
    assert_eq!(upstream.handle().counters().token_requests_for("client_credentials"), 1);
    let second = bounded(many(&cache, &io, &url, 16));
    assert!(second.iter().all(|token| token == &first[0]));
    assert_eq!(upstream.handle().counters().token_requests_for("client_credentials"), 1);
}

#[test]
fn invalidation_from_concurrent_401s_refetches_once() {
    let (_runtime, upstream) = mock();
    let url = Url::parse(&format!("{}/token", upstream.origin())).unwrap();
    let io = Arc::new(Io::new(HttpClient::new().unwrap(), Box::new(Headless)));
    let cache: SharedTokenCache<String> = SharedTokenCache::new(CacheConfig::default());
    let first = bounded(many(&cache, &io, &url, 1)).remove(0);
    let stale = Secret::new(first.clone());
    let dropped = (0..10).filter(|_| cache.invalidate(&KEY.to_owned(), &stale)).count();
    assert_eq!(dropped, 1, "ten 401s for one token drop it once");
    let after = bounded(many(&cache, &io, &url, 10));
    assert!(after.iter().all(|token| token != &first && token == &after[0]));
    assert_eq!(upstream.handle().counters().token_requests_for("client_credentials"), 2);
}

#[test]
fn a_cancelled_leader_does_not_strand_its_waiters() {
    let (_runtime, upstream) = mock();
    let url = Url::parse(&format!("{}/token", upstream.origin())).unwrap();
    let io = Arc::new(Io::new(HttpClient::new().unwrap(), Box::new(Headless)));
    let cache: SharedTokenCache<String> = SharedTokenCache::new(CacheConfig::default());
    let leader = {
        let cache = cache.clone();
        async_std::task::spawn(async move {
            // The leader never finishes its fetch; it is cancelled below.
            let _ =
                cache.get_or_fetch(KEY.to_owned(), std::future::pending::<Result<Fetched, FetchError>>).await;
        })
    };
    bounded(async_std::task::sleep(Duration::from_millis(50)));
    let waiter = {
        let (cache, io, url) = (cache.clone(), Arc::clone(&io), url.clone());
        async_std::task::spawn(async move {
            cache
                .get_or_fetch(KEY.to_owned(), || async { client_credentials(&io, &url).await })
                .await
                .map(|_| ())
        })
    };
    bounded(async_std::task::sleep(Duration::from_millis(50)));
    bounded(leader.cancel());
    bounded(waiter).expect("the waiter led a new fetch");
    assert_eq!(upstream.handle().counters().token_requests_for("client_credentials"), 1);
}
