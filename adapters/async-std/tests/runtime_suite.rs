//! The shared driver, token-cache and grant-store suites of `mcp-oauth-runtime`, run on async-std
//! ([`AsyncStdRuntime`]). Every test is bounded by 30 s. The grant-store suite runs against the
//! memory store and the SQLite store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use mcp_oauth_async_std::AsyncStdRuntime;
use mcp_oauth_runtime::MemoryGrantStore;
use mcp_oauth_runtime::grant_store::sqlite::SqliteGrantStore;

/// A database path no other store uses (this process's id and a counter), so each SQLite store
/// under the suite starts empty. The files are left in the temp directory.
fn fresh_temp_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("mcp-oauth-async-std-suite-{}-{n}.db", std::process::id()));
    // A file left by an earlier process with the same id would not be empty.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

mcp_oauth_runtime::runtime_test_suite!(async_std::task::block_on, AsyncStdRuntime);

mcp_oauth_runtime::grant_store_test_suite!(
    memory_grant_store,
    async_std::task::block_on,
    AsyncStdRuntime,
    MemoryGrantStore::new
);

mcp_oauth_runtime::grant_store_test_suite!(
    sqlite_grant_store,
    async_std::task::block_on,
    AsyncStdRuntime,
    |max| SqliteGrantStore::open(&fresh_temp_path(), max, AsyncStdRuntime)
        .expect("a fresh SQLite store opens")
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
