//! The shared token cache with single flight, on async-std.
//!
//! The wrapper around core's sans-IO [`TokenCache`](mcp_oauth_core::token_cache::TokenCache) uses
//! nothing runtime-specific: a `std::sync::Mutex` held only for a core call, and a
//! `tokio::sync::watch` channel per flight, which is a plain data structure that works on any
//! executor (only tokio's `sync` feature is compiled; no tokio runtime). So both adapters compile
//! the same source file rather than keeping two copies in step; this module is that file, built
//! against this crate's [`Clock`](crate::driver::Clock).
#[path = "../../tokio-hyper/src/token_cache.rs"]
mod shared;

pub use shared::{CacheError, FetchError, SharedTokenCache};
