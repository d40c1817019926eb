//! Criterion benchmarks for token-cache hits: core's sans-IO `TokenCache` on one thread, and
//! `SharedTokenCache` (lock + clock) through `get_or_fetch` and `get_cached`.
//!
//! Run with `cargo bench -p mcp-oauth-tokio --bench token_cache`; figures live in
//! docs/benchmarks.md.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_oauth_core::machine::Instant;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{CacheConfig, Fetched, Lookup, TokenCache, TtlPolicy};
use mcp_oauth_tokio::token_cache::{FetchError, SharedTokenCache};

fn fetched() -> Fetched {
    Fetched {
        access_token: Secret::new("mock_at_0123456789abcdef"),
        expires_in: Some(3600),
        policy: TtlPolicy::M2m,
    }
}

fn core_hit(c: &mut Criterion) {
    let mut cache: TokenCache<String> = TokenCache::new(CacheConfig::default());
    let key = "mcp-server-a".to_owned();
    let Lookup::Fetch(ticket) = cache.lookup(&key, Instant::ZERO) else { panic!("empty cache fetches") };
    cache.complete(ticket, Ok(fetched()), Instant::ZERO);
    // 99 more keys so the lookup is a real hash-map probe.
    for n in 0..99 {
        let other = format!("mcp-server-{n}");
        if let Lookup::Fetch(ticket) = cache.lookup(&other, Instant::ZERO) {
            cache.complete(ticket, Ok(fetched()), Instant::ZERO);
        }
    }
    let now = Instant::from_millis(60_000);
    let mut group = c.benchmark_group("token_cache");
    group.throughput(Throughput::Elements(1));
    group.bench_function("core_lookup_hit", |b| {
        b.iter(|| match cache.lookup(black_box(&key), black_box(now)) {
            Lookup::Hit(token) => black_box(token),
            other => panic!("expected a hit, got {other:?}"),
        });
    });
    group.finish();
}

fn shared_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cache: SharedTokenCache<String> = SharedTokenCache::new(CacheConfig::default());
    let key = "mcp-server-a".to_owned();
    runtime
        .block_on(cache.get_or_fetch(key.clone(), || async { Ok::<_, FetchError>(fetched()) }))
        .expect("warm");
    let mut group = c.benchmark_group("token_cache");
    group.throughput(Throughput::Elements(1));
    group.bench_function("shared_get_or_fetch_hit", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iterations {
                    let token = cache
                        .get_or_fetch(black_box(key.clone()), || async {
                            Err::<Fetched, _>(FetchError::new("unexpected", "a warm cache never fetches"))
                        })
                        .await;
                    black_box(token.expect("hit"));
                }
                started.elapsed()
            })
        });
    });
    group.bench_function("shared_get_cached", |b| {
        b.iter(|| black_box(cache.get_cached(black_box(&key)).expect("hit")));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = core_hit, shared_hit
}
criterion_main!(benches);
