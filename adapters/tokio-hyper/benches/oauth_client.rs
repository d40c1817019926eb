//! Figures for the OAuth client over the tokio adapter, against the in-process mock upstream
//! (a `harness = false` binary that prints a table; `cargo bench` arguments are ignored):
//!
//! 1. single flight: upstream token fetches when 64 tasks ask for an absent or expired token at
//!    once (must be exactly 1);
//! 2. discovery wall time with a 20 ms delay on every mock answer, sequential versus parallel
//!    (`DiscoveryConfig.parallel`), with the mock's metadata present and missing (every stage then
//!    walks all its candidates).
//!
//! Run with `cargo bench -p mcp-oauth-tokio --bench oauth_client`; figures live in
//! docs/benchmarks.md.
#![allow(missing_docs, clippy::print_stdout)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use mcp_oauth_core::client::discovery::{Discovery, DiscoveryConfig};
use mcp_oauth_core::client::token::{Client, Grant, TokenEndpointAuth, parse_token_response, token_request};
use mcp_oauth_core::machine::{Limits, OneShot, TransportError};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{CacheConfig, Fetched};
use mcp_oauth_tokio::mock::{MockConfig, MockUpstream, Switch};
use mcp_oauth_tokio::token_cache::{FetchError, SharedTokenCache};
use mcp_oauth_tokio::{Headless, HttpClient, Io, drive};
use tokio::sync::Barrier;
use url::Url;

const TASKS: usize = 64;
const ROUNDS: usize = 5;
const DISCOVERY_RUNS: usize = 15;
const SLOW_MS: u64 = 20;

async fn client_credentials(io: &Io, token_url: &Url) -> Result<Fetched, FetchError> {
    let secret = Secret::new("mock-secret");
    let client = Client {
        client_id: "mock-client",
        client_secret: Some(&secret),
        auth: TokenEndpointAuth::ClientSecretPost,
    };
    let request = token_request(token_url, &client, &Grant::ClientCredentials, &["mcp".to_owned()], None)
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
        })
        .map_err(|error| FetchError::from_reason(&error))?;
    let response =
        drive(&mut machine, io).await.map_err(|error| FetchError::new("stalled", error.to_string()))??;
    Ok(Fetched::m2m(&response))
}

/// 64 tasks ask a cold cache at once; returns the upstream fetches it took.
async fn single_flight_round(mock: &MockUpstream, io: &Arc<Io>) -> (u64, bool) {
    let cache: SharedTokenCache<String> = SharedTokenCache::new(CacheConfig::default());
    let before = mock.handle().counters().token_requests_for("client_credentials");
    let barrier = Arc::new(Barrier::new(TASKS));
    let token_url = Url::parse(&format!("{}/token", mock.origin())).expect("url");
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, io, url, barrier) =
                (cache.clone(), Arc::clone(io), token_url.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_fetch("mock".to_owned(), || client_credentials(&io, &url))
                    .await
                    .map(|token| token.access_token().expose().to_owned())
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for handle in handles {
        tokens.push(handle.await.expect("task").expect("token"));
    }
    let same = tokens.iter().all(|token| *token == tokens[0]);
    (mock.handle().counters().token_requests_for("client_credentials") - before, same)
}

async fn discovery_times(io: &Io, mcp_url: &str, parallel: bool) -> (Vec<Duration>, usize) {
    let mut times = Vec::new();
    let mut trail = 0;
    // One warm-up run opens the connections.
    for run in 0..=DISCOVERY_RUNS {
        let mut config = DiscoveryConfig::new(Url::parse(mcp_url).expect("url"));
        config.parallel = parallel;
        let mut machine = Discovery::new(config);
        let started = tokio::time::Instant::now();
        let discovered = drive(&mut machine, io).await.expect("driver").expect("discovery");
        if run > 0 {
            times.push(started.elapsed());
        }
        trail = discovered.trail.len();
    }
    times.sort();
    (times, trail)
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

async fn run() -> bool {
    let mock = MockUpstream::start(MockConfig::default()).await.expect("mock starts");
    let io = Arc::new(Io::new(HttpClient::new().expect("TLS setup"), Box::new(Headless)));
    let mut ok = true;

    println!("## single flight: {TASKS} tasks, absent/expired token, mock delay {SLOW_MS} ms");
    mock.handle().set(Switch::SlowMs(SLOW_MS));
    for round in 1..=ROUNDS {
        let (fetches, same) = single_flight_round(&mock, &io).await;
        println!("round {round}: upstream token fetches = {fetches}, all {TASKS} tokens identical = {same}");
        ok &= fetches == 1 && same;
    }
    mock.handle().set(Switch::SlowMs(0));
    let (fetches, same) = single_flight_round(&mock, &io).await;
    println!("no delay: upstream token fetches = {fetches}, all {TASKS} tokens identical = {same}");
    ok &= fetches == 1 && same;

    println!();
    println!("## discovery wall time, {SLOW_MS} ms delay on every mock answer, {DISCOVERY_RUNS} runs each");
    println!("| metadata | mode | requests (trail) | min | median | max |");
    println!("|---|---|---|---|---|---|");
    mock.handle().set(Switch::SlowMs(SLOW_MS));
    for missing in [false, true] {
        mock.handle().set(Switch::MetadataMissing(missing));
        for parallel in [false, true] {
            let (times, trail) = discovery_times(&io, &mock.mcp_url(), parallel).await;
            println!(
                "| {} | {} | {trail} | {} | {} | {} |",
                if missing { "missing (404s)" } else { "present" },
                if parallel { "parallel" } else { "sequential" },
                ms(times[0]),
                ms(times[times.len() / 2]),
                ms(times[times.len() - 1]),
            );
        }
    }
    ok
}

fn main() -> ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if runtime.block_on(run()) {
        ExitCode::SUCCESS
    } else {
        println!("FAILED: single flight took more than one upstream fetch");
        ExitCode::FAILURE
    }
}
