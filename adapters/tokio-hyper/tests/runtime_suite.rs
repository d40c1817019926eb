//! The shared driver, token-cache and grant-store suites of `mcp-oauth-runtime`, run on tokio
//! ([`TokioRuntime`] on a two-worker multi-thread runtime). Every test is bounded by 30 s.

use std::future::Future;

use mcp_oauth_runtime::MemoryGrantStore;
use mcp_oauth_tokio::TokioRuntime;

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

mcp_oauth_runtime::runtime_test_suite!(block_on, TokioRuntime);

mcp_oauth_runtime::grant_store_test_suite!(memory_grant_store, block_on, TokioRuntime, MemoryGrantStore::new);

// Each Redis test starts its own throwaway redis-server (skipped without one, unless `CI` is set).
mcp_oauth_runtime::grant_store_test_suite_or_skip!(
    redis_grant_store,
    block_on,
    TokioRuntime,
    |max_records| {
        let server = mcp_oauth_runtime::testing::RedisServer::start()?;
        let store = mcp_oauth_runtime::grant_store::redis::RedisGrantStore::connect(
            &server.setting(),
            max_records,
            TokioRuntime,
        )
        .expect("connects to the test redis-server");
        Some((store, server))
    }
);
