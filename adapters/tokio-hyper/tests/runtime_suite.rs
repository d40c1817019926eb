//! The shared driver, token-cache and grant-store suites of `mcp-oauth-runtime`, run on tokio
//! ([`TokioRuntime`] on a two-worker multi-thread runtime). Every test is bounded by 30 s. The
//! grant-store suite runs against the memory store and the SQLite store.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use mcp_oauth_runtime::MemoryGrantStore;
use mcp_oauth_runtime::grant_store::sqlite::SqliteGrantStore;
use mcp_oauth_tokio::TokioRuntime;

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// A database path no other store uses (this process's id and a counter), so each SQLite store
/// under the suite starts empty. The files are left in the temp directory.
fn fresh_temp_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("mcp-oauth-tokio-suite-{}-{n}.db", std::process::id()));
    // A file left by an earlier process with the same id would not be empty.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

mcp_oauth_runtime::runtime_test_suite!(block_on, TokioRuntime);

mcp_oauth_runtime::grant_store_test_suite!(memory_grant_store, block_on, TokioRuntime, MemoryGrantStore::new);

mcp_oauth_runtime::grant_store_test_suite!(sqlite_grant_store, block_on, TokioRuntime, |max| {
    SqliteGrantStore::open(&fresh_temp_path(), max, TokioRuntime).expect("a fresh SQLite store opens")
});

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
