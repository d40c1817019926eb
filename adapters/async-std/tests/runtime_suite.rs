//! The shared driver, token-cache and grant-store suites of `mcp-oauth-runtime`, run on async-std
//! ([`AsyncStdRuntime`]). Every test is bounded by 30 s.

use mcp_oauth_async_std::AsyncStdRuntime;
use mcp_oauth_runtime::MemoryGrantStore;

mcp_oauth_runtime::runtime_test_suite!(async_std::task::block_on, AsyncStdRuntime);

mcp_oauth_runtime::grant_store_test_suite!(
    memory_grant_store,
    async_std::task::block_on,
    AsyncStdRuntime,
    MemoryGrantStore::new
);

// Each Redis test starts its own throwaway redis-server (skipped without one, unless `CI` is set).
mcp_oauth_runtime::grant_store_test_suite_or_skip!(
    redis_grant_store,
    async_std::task::block_on,
    AsyncStdRuntime,
    |max_records| {
        let server = mcp_oauth_runtime::testing::RedisServer::start()?;
        let store = mcp_oauth_runtime::grant_store::redis::RedisGrantStore::connect(
            &server.setting(),
            max_records,
            AsyncStdRuntime,
        )
        .expect("connects to the test redis-server");
        Some((store, server))
    }
);
