//! Sans-IO OAuth policy for MCP gateways.
//!
//! Every security decision a gateway in front of MCP servers makes is a pure function here:
//! which OAuth flow a server uses, what the gateway's public origin is, whether a `redirect_uri`
//! may receive an authorization code, whether to delegate auth to the upstream, which credential
//! goes upstream, how secrets are masked and how long a token may be cached. Nothing in this crate
//! reads the clock, the environment, a file or a socket: those arrive as arguments, so every path
//! can be unit-tested, property-tested and fuzzed without a network.
//!
//! Embedding a decision takes a few lines:
//!
//! ```
//! use mcp_oauth_core::Reason;
//! use mcp_oauth_core::origin::Origin;
//! use mcp_oauth_core::redirect::{validate_redirect_uri, TrustedRedirectOrigins};
//!
//! let public_origin = Origin::parse("https://gw.example.com")?;
//! let trusted = TrustedRedirectOrigins::parse("*.corp.example.com")?;
//! let verdict = validate_redirect_uri("https://app.corp.example.com/cb", Some(&public_origin), &trusted);
//! assert!(verdict.is_allowed());
//! let verdict = validate_redirect_uri("https://gw.example.com\\@evil.com/cb", Some(&public_origin), &trusted);
//! assert_eq!(verdict.reason(), "backslash");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every decision carries a stable `snake_case` reason code ([`Reason::reason`]) for machines and a
//! human message (its `Display`) for people. Secrets live in [`secret::Secret`] from the moment they
//! are parsed; its `Debug` and `Display` never print them.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod budget;
pub mod client;
pub mod config;
pub mod delegate;
pub mod discovery;
#[cfg(any(test, feature = "eval"))]
pub mod eval;
pub mod fetch_policy;
pub mod flow;
pub mod gateway;
pub mod grant;
pub mod grant_record;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod jsonrpc;
pub mod machine;
pub mod mask;
pub mod metadata;
pub mod origin;
pub mod outbound;
pub mod pkce;
pub mod redirect;
pub(crate) mod reply;
pub mod route;
pub mod seal;
pub mod secret;
pub(crate) mod sse;
#[cfg(feature = "proptest")]
pub mod strategies;
pub mod token;
pub mod token_cache;
pub mod www_authenticate;

/// The paths most embedders need, in one import: `use mcp_oauth_core::prelude::*;`.
///
/// The machine contract (to drive any protocol), the OAuth client's session and discovery, the
/// gateway's per-request decision, the configuration loader and the common policy decisions.
pub mod prelude {
    pub use crate::Reason;
    pub use crate::client::discovery::{Discovery, DiscoveryConfig};
    pub use crate::client::session::{GrantKind, Operation, Session, SessionConfig};
    pub use crate::config::{GatewayConfig, load_yaml};
    pub use crate::fetch_policy::{FetchPolicyError, permits_addresses};
    pub use crate::gateway::{Action, Context, OAuthState, RequestHead, decide};
    pub use crate::machine::{Instant, Limits, Machine, Outgoing, RequestId, Step, TransportError};
    pub use crate::origin::{Origin, Scheme};
    pub use crate::redirect::{TrustedRedirectOrigins, validate_redirect_uri};
    pub use crate::secret::Secret;
}

/// A value with a stable machine-readable reason code, for logs, metrics and `eval`.
pub trait Reason {
    /// The stable `snake_case` code; never changes meaning between releases.
    fn reason(&self) -> &'static str;
}
