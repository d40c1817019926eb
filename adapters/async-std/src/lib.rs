//! Runs `mcp-oauth-core`'s sans-IO machines over async-std and surf.
//!
//! The second adapter, next to `mcp-oauth-tokio`, and the proof that core embeds in any runtime:
//! the same machines, the same limits, the same requests in the same order (a parity suite runs
//! one table of scenarios through both). Core decides; this crate carries bytes:
//!
//! - [`client::HttpClient`] performs one [`Outgoing`](mcp_oauth_core::machine::Outgoing) request
//!   over surf under its [`Limits`](mcp_oauth_core::machine::Limits): a timeout on the whole
//!   exchange, a cap on the body, redirects never followed, and the fetch policy
//!   ([`permits_address`](mcp_oauth_core::fetch_policy::permits_address)) applied before
//!   connecting, to every address a host name resolves to, and the connection made to an address
//!   that was checked (surf runs over a backend of this crate's, async-h1 on a pre-connected
//!   stream, TLS by rustls). It converts `http` 1.x to and from http-types at the edge; the module
//!   docs list every rule and where it differs from the tokio adapter (one connection per request;
//!   `HTTP/1.0` answers are refused).
//! - [`runtime::AsyncStdRuntime`] is async-std as a [`mcp_oauth_runtime::Runtime`] (about twenty
//!   lines); everything that does not depend on async-std or surf is [`mcp_oauth_runtime`]'s and
//!   shared with the tokio adapter: [`drive`], the one generic loop that runs any
//!   [`Machine`](mcp_oauth_core::machine::Machine) (it sends every requested exchange
//!   concurrently, feeds each answer back, sleeps until the machine's deadline and returns the
//!   outcome); [`Headless`], which fetches the authorization URL and returns its redirect
//!   unfollowed; [`Io`], which routes each request to the client or the user agent; and
//!   [`token_cache::SharedTokenCache`], the single-flight token cache.
//!
//! async-std is discontinued upstream (RUSTSEC-2025-0052) and surf is unmaintained; this crate is
//! kept apart so that their dependency tree never reaches the other crates. See
//! `docs/async-std.md`.
//!
//! ```no_run
//! use mcp_oauth_async_std::{Headless, HttpClient, Io, drive};
//! use mcp_oauth_core::client::discovery::{Discovery, DiscoveryConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let io = Io::new(HttpClient::new()?, Box::new(Headless));
//! let url = url::Url::parse("https://mcp.example.com/mcp")?;
//! let mut discovery = Discovery::new(DiscoveryConfig::new(url));
//! let discovered = drive(&mut discovery, &io).await??;
//! println!("authorization server: {}", discovered.issuer);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod runtime;
pub mod server;

/// The single-flight token cache ([`mcp_oauth_runtime::token_cache`]) on async-std.
pub mod token_cache {
    pub use mcp_oauth_runtime::token_cache::{CacheError, FetchError};

    pub use crate::runtime::SharedTokenCache;
}

pub use client::{ClientSetupError, HttpClient};
pub use mcp_oauth_runtime::{DriveError, Headless, Perform, UserAgent, drive as drive_with_clock};
pub use runtime::{AsyncStdRuntime, Clock, Io, drive};
