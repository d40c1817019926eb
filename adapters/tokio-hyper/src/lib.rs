//! Runs `mcp-oauth-core`'s sans-IO machines over tokio and hyper 1.
//!
//! Core decides; this crate carries bytes. What does not depend on tokio or hyper (the driver
//! loop, the token cache, the request router, the body limit) is
//! [`mcp_oauth_runtime`]'s, bound here to [`TokioRuntime`] ([`runtime`]). This crate has:
//!
//! - [`client::HttpClient`] performs one [`Outgoing`](mcp_oauth_core::machine::Outgoing) request
//!   under its [`Limits`](mcp_oauth_core::machine::Limits): a timeout on the whole exchange, a cap on
//!   the body, redirects never followed, and every address checked by
//!   [`permits_address`](mcp_oauth_core::fetch_policy::permits_address) before connecting (IP
//!   literals and every address a host name resolves to).
//! - [`runtime::TokioRuntime`], tokio as a [`mcp_oauth_runtime::Runtime`], and [`drive`], the
//!   shared driver loop on it: it runs any [`Machine`](mcp_oauth_core::machine::Machine), sending
//!   every requested exchange concurrently, feeding each answer back, sleeping until the machine's
//!   deadline and returning the outcome.
//! - [`user_agent::LoopbackBrowser`] asks a person to open the authorization URL and catches the
//!   redirect on `127.0.0.1`; [`Headless`] (shared) fetches it and returns the redirect
//!   unfollowed; [`Io`] (shared) routes each request to the client or the user agent.
//! - [`server::serve`] is the gateway: a hyper server that asks
//!   [`gateway::decide`](mcp_oauth_core::gateway::decide) what to do with each request and
//!   streams MCP traffic to and from the upstream servers.
//! - [`startup::discover_endpoints`] fills, before serving, the endpoints a configuration leaves
//!   to discovery (RFC 9728 and RFC 8414 through core's discovery machine).
//! - `mock` (feature `mock`) is an in-process OAuth authorization server and MCP server on
//!   `127.0.0.1:0`, with switches for failure modes and counters, for tests and demos.
//!
//! ```no_run
//! use mcp_oauth_core::client::discovery::{Discovery, DiscoveryConfig};
//! use mcp_oauth_tokio::client::HttpClient;
//! use mcp_oauth_tokio::driver::drive;
//! use mcp_oauth_tokio::user_agent::{Headless, Io};
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
#[cfg(feature = "gateway-suite")]
pub mod gateway_suite;
#[cfg(feature = "mock")]
pub mod mock;
pub mod runtime;
pub mod server;
pub mod startup;
pub mod user_agent;

/// The generic driver loop ([`mcp_oauth_runtime::driver`]) on tokio.
pub mod driver {
    pub use mcp_oauth_runtime::drive as drive_with_clock;
    pub use mcp_oauth_runtime::driver::{DriveError, Perform};

    pub use crate::runtime::{Clock, drive};
}

/// The single-flight token cache ([`mcp_oauth_runtime::token_cache`]) on tokio's clock.
pub mod token_cache {
    pub use mcp_oauth_runtime::token_cache::{CacheError, FetchError};

    pub use crate::runtime::SharedTokenCache;
}

pub use client::HttpClient;
pub use driver::{Clock, DriveError, Perform, drive, drive_with_clock};
pub use runtime::TokioRuntime;
pub use user_agent::{Headless, Io, LoopbackBrowser, UserAgent};
