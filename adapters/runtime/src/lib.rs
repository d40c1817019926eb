//! The runtime-agnostic layer every `mcp-oauth` adapter shares.
//!
//! `mcp-oauth-core` decides and does no I/O; an adapter (tokio + hyper, async-std + surf, …) does
//! the I/O. Everything between the two that does not depend on the executor or the HTTP library
//! lives here, once, generic over two small traits:
//!
//! - [`Runtime`]: the executor's clock, timer and task spawning (`now`, `sleep_until`, `spawn`,
//!   `spawn_blocking`), modelled on quinn's `Runtime`. An adapter implements it in about twenty
//!   lines on a zero-sized type.
//! - [`Client`]: the adapter's HTTP client, which performs one
//!   [`Outgoing`](mcp_oauth_core::machine::Outgoing) request under its
//!   [`Limits`](mcp_oauth_core::machine::Limits) and answers with an `http::Response<Vec<u8>>` or a
//!   [`TransportError`](mcp_oauth_core::machine::TransportError).
//!
//! On top of them this crate holds:
//!
//! - [`driver::drive`], the one generic loop that runs any core
//!   [`Machine`](mcp_oauth_core::machine::Machine) to its outcome, and [`Clock`], which turns the
//!   runtime's monotonic time into core's [`Instant`](mcp_oauth_core::machine::Instant);
//! - [`io`], the router that sends [`Performer::Client`](mcp_oauth_core::machine::Performer)
//!   requests to the [`Client`] and browser requests to a [`UserAgent`] ([`Headless`] or one of
//!   the adapter's own);
//! - [`limits`], the parts of enforcing a request's limits that every client shares: the body cap
//!   ([`limits::BodyLimit`]) and the timeout and logging around one exchange
//!   ([`limits::perform_within_limits`]);
//! - [`token_cache::SharedTokenCache`], core's sans-IO token cache shared by tasks, with single
//!   flight per key;
//! - [`GrantStore`], core's five grant-store primitives behind one async trait, and
//!   [`MemoryGrantStore`], the bounded in-process backend;
//! - `testing` (feature `test-suite`), the driver, token-cache and grant-store tests written once
//!   against [`Runtime`] (and [`GrantStore`]) and run by every adapter on its own executor.
//!
//! An adapter keeps only what depends on its libraries: its HTTP client, its [`Runtime`] impl and
//! (tokio) the gateway server. No module here makes an OAuth decision.
#![forbid(unsafe_code)]

pub mod clock;
pub mod driver;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod grant_store;
#[cfg(feature = "gateway")]
pub mod hyper_rt;
pub mod io;
pub mod limits;
pub mod log;
mod runtime;
#[cfg(feature = "test-suite")]
pub mod testing;
pub mod token_cache;

pub use clock::Clock;
pub use driver::{DriveError, Perform, drive};
pub use grant_store::{GrantStore, MemoryGrantStore, unix_now};
pub use io::{BoxFuture, Client, Headless, Io, UserAgent};
pub use runtime::{BlockingError, Elapsed, Runtime, timeout};
