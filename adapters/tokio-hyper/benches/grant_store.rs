//! Criterion benchmarks for the grant store backends: what a store adds to an interactive call.
//!
//! An interactive call whose upstream token is fresh makes exactly one store operation, a
//! `get_grant` (the aggregating routes make two: the identity's pointer, then the grant); a sign-in
//! makes a handful of writes (`take_once`, `put_grant`). So `get_grant` is the added cost of an
//! interactive call per backend, and `put_grant` (rewriting one grant, as a refresh does) the cost
//! of one write; a write that adds a record costs about the same plus the bound's bookkeeping.
//!
//! Run with `cargo bench -p mcp-oauth-tokio --bench grant_store`; the Redis group runs only when
//! `redis-server` is on `PATH` (it is started on a loopback port). Figures live in
//! docs/benchmarks.md.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_oauth_core::config::StoreSetting;
use mcp_oauth_core::grant::{Grant, GrantId, Identity, SealedUpstreamToken, StoreOp, StoreResult};
use mcp_oauth_core::seal::SealingKeys;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_runtime::grant_store::{DynGrantStore, open_store, unix_now};
use mcp_oauth_runtime::testing::RedisServer;
use mcp_oauth_tokio::TokioRuntime;

fn grant() -> Grant {
    let keys = SealingKeys::generate([5; 32]);
    let id = GrantId::from_random([1; 16]);
    let expires_at = unix_now().plus(Duration::from_secs(3600));
    let sealed = |text: &str| {
        SealedUpstreamToken::seal(&keys, "notes", &id, expires_at, &Secret::new(text), [2; 24])
            .expect("seals")
    };
    Grant {
        id: id.clone(),
        server: "notes".into(),
        identity: Identity::new("alice", &Secret::new("sk-alice"), &keys),
        client: "client".into(),
        upstream_access_token: sealed("upstream-access-token-0123456789"),
        upstream_refresh_token: Some(sealed("upstream-refresh-token-0123456789")),
        upstream_access_expires_at: Some(expires_at),
        expires_at,
        generation: 3,
        rotated_at: unix_now(),
        scope: "notes:read notes:write".into(),
        upstream_client: None,
    }
}

fn bench_store(c: &mut Criterion, runtime: &tokio::runtime::Runtime, name: &str, setting: &StoreSetting) {
    let store: Arc<dyn DynGrantStore> = runtime
        .block_on(open_store(setting, 1_000_000, TokioRuntime))
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    let grant = grant();
    let id = grant.id.clone();
    let stored = runtime.block_on(async { store.apply_boxed(StoreOp::PutGrant(Box::new(grant))).await });
    assert_eq!(stored, StoreResult::Stored);
    let mut group = c.benchmark_group(format!("grant_store_{name}"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_grant", |b| {
        b.iter(|| {
            let answer =
                runtime.block_on(async { store.apply_boxed(StoreOp::GetGrant { id: id.clone() }).await });
            assert!(matches!(answer, StoreResult::Grant(Some(_))));
            black_box(answer)
        });
    });
    let rewrite = runtime.block_on(async { store.apply_boxed(StoreOp::GetGrant { id: id.clone() }).await });
    let StoreResult::Grant(Some(rewrite)) = rewrite else { panic!("{name}: the grant reads back") };
    group.bench_function("put_grant", |b| {
        b.iter(|| {
            let answer =
                runtime.block_on(async { store.apply_boxed(StoreOp::PutGrant(rewrite.clone())).await });
            assert_eq!(answer, StoreResult::Stored);
        });
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    bench_store(c, &runtime, "memory", &StoreSetting::Memory);
    let path = std::env::temp_dir().join(format!("mcp-oauth-bench-{}.db", std::process::id()));
    bench_store(c, &runtime, "sqlite", &StoreSetting::Sqlite { path: path.display().to_string() });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match RedisServer::start() {
        Some(redis) => bench_store(c, &runtime, "redis", &StoreSetting::Redis(redis.setting())),
        None => eprintln!("redis-server is not on PATH: the Redis group is skipped"),
    }
}

criterion_group!(benches, stores);
criterion_main!(benches);
