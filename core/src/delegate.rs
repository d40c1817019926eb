//! Whether to skip the gateway's own auth and delegate to the upstream (design §4.6).
//!
//! Delegation means the gateway admits a request with no key of its own and forwards the caller's
//! `Authorization` to the upstream, which does the OAuth. That is only safe when *every* server the
//! request reaches is an interactive OAuth server that opted in, and, with several servers, when
//! they share one authorization server: otherwise a token issued for one would be replayed at
//! another (the MCP spec forbids token passthrough). Anything unexpected enforces the gateway's auth.

use http::HeaderMap;

use crate::Reason;
use crate::config::{AuthType, ServerPolicy};

/// Headers whose presence means the caller authenticates to the gateway itself.
pub const GATEWAY_KEY_HEADERS: [&str; 2] = ["x-mcp-gateway-key", "x-litellm-api-key"];

/// The header that names extra target servers, comma-separated.
pub const SERVERS_HEADER: &str = "x-mcp-servers";

/// What a server name resolves to, as the caller's configuration knows it.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// No server has this name.
    Unknown,
    /// A server has this name but its configuration does not load.
    Invalid,
    /// A loaded server.
    Known(&'a ServerPolicy),
}

/// The delegation verdict for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DelegationDecision {
    /// Skip the gateway's auth: send no challenge, relay the upstream's 401, forward `Authorization`.
    Delegate,
    /// Enforce the gateway's own auth, for this reason.
    Enforce(NotDelegated),
}

impl DelegationDecision {
    /// Whether the gateway skips its own auth.
    pub fn delegates(&self) -> bool {
        matches!(self, Self::Delegate)
    }
}

impl Reason for DelegationDecision {
    fn reason(&self) -> &'static str {
        match self {
            Self::Delegate => "all_targets_delegate",
            Self::Enforce(why) => why.reason(),
        }
    }
}

/// Why the gateway enforces its own auth.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotDelegated {
    /// The caller sent a gateway key, so it wants normal auth.
    #[error("a gateway key header is present, so the gateway authenticates the request itself")]
    GatewayKeyPresent,
    /// Neither the path nor `x-mcp-servers` names a server.
    #[error("the request names no target server")]
    NoTargets,
    /// `x-mcp-servers` is not valid text.
    #[error("the x-mcp-servers header is not valid text")]
    MalformedServersHeader,
    /// A target name resolves to no server.
    #[error("server `{0}` is not configured")]
    UnknownServer(String),
    /// A target's configuration does not load.
    #[error("server `{0}` has an invalid configuration")]
    InvalidServer(String),
    /// A target is not `auth_type: oauth2`.
    #[error("server `{0}` does not use auth_type oauth2")]
    NotOAuth2(String),
    /// A target uses a non-interactive flow.
    #[error("server `{0}` does not use the interactive authorization_code flow")]
    NotInteractive(String),
    /// A target has not set `delegate_auth_to_upstream: true`.
    #[error("server `{0}` does not set delegate_auth_to_upstream: true")]
    DelegationDisabled(String),
    /// With several targets, one names no authorization server to compare.
    #[error(
        "server `{0}` names no authorization_url or issuer, so a shared authorization server cannot be shown"
    )]
    AuthorizationServerUnknown(String),
    /// With several targets, they name different authorization servers.
    #[error(
        "the target servers use different authorization servers; one caller token must not reach them all"
    )]
    MixedAuthorizationServers,
}

impl Reason for NotDelegated {
    fn reason(&self) -> &'static str {
        match self {
            Self::GatewayKeyPresent => "gateway_key_present",
            Self::NoTargets => "no_targets",
            Self::MalformedServersHeader => "malformed_servers_header",
            Self::UnknownServer(_) => "unknown_server",
            Self::InvalidServer(_) => "invalid_server_config",
            Self::NotOAuth2(_) => "not_oauth2",
            Self::NotInteractive(_) => "not_interactive",
            Self::DelegationDisabled(_) => "delegation_disabled",
            Self::AuthorizationServerUnknown(_) => "authorization_server_unknown",
            Self::MixedAuthorizationServers => "mixed_authorization_servers",
        }
    }
}

/// The server named by a `/{server}/mcp` path (a trailing slash and a query are tolerated).
pub fn path_server(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.strip_suffix('/').unwrap_or(path);
    let rest = path.strip_prefix('/')?.strip_suffix("/mcp")?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// The target servers of a request: the path's server, then each `x-mcp-servers` name, deduplicated.
pub fn target_servers<'h>(path: &'h str, headers: &'h HeaderMap) -> Result<Vec<&'h str>, NotDelegated> {
    let mut targets: Vec<&str> = path_server(path).into_iter().collect();
    for value in headers.get_all(SERVERS_HEADER) {
        let value = value.to_str().map_err(|_| NotDelegated::MalformedServersHeader)?;
        for name in value.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            if !targets.contains(&name) {
                targets.push(name);
            }
        }
    }
    Ok(targets)
}

/// Decides whether to delegate auth for a request to `path` with `headers` (design §4.6).
pub fn decide_delegation<'a>(
    path: &str,
    headers: &HeaderMap,
    lookup: impl Fn(&str) -> Target<'a>,
) -> DelegationDecision {
    match check(path, headers, lookup) {
        Ok(()) => DelegationDecision::Delegate,
        Err(why) => DelegationDecision::Enforce(why),
    }
}

fn check<'a>(
    path: &str,
    headers: &HeaderMap,
    lookup: impl Fn(&str) -> Target<'a>,
) -> Result<(), NotDelegated> {
    if GATEWAY_KEY_HEADERS.iter().any(|name| headers.contains_key(*name)) {
        return Err(NotDelegated::GatewayKeyPresent);
    }
    let targets = target_servers(path, headers)?;
    if targets.is_empty() {
        return Err(NotDelegated::NoTargets);
    }
    let mut policies = Vec::with_capacity(targets.len());
    for name in &targets {
        let policy = match lookup(name) {
            Target::Unknown => return Err(NotDelegated::UnknownServer((*name).to_owned())),
            Target::Invalid => return Err(NotDelegated::InvalidServer((*name).to_owned())),
            Target::Known(policy) => policy,
        };
        if policy.auth_type != AuthType::OAuth2 {
            return Err(NotDelegated::NotOAuth2((*name).to_owned()));
        }
        if !policy.flow.is_interactive() {
            return Err(NotDelegated::NotInteractive((*name).to_owned()));
        }
        if !policy.delegate_auth_to_upstream {
            return Err(NotDelegated::DelegationDisabled((*name).to_owned()));
        }
        policies.push((name, policy));
    }
    if policies.len() > 1 {
        let mut shared: Option<&str> = None;
        for (name, policy) in &policies {
            let server = policy
                .authorization_server
                .as_deref()
                .ok_or_else(|| NotDelegated::AuthorizationServerUnknown((**name).to_owned()))?;
            match shared {
                None => shared = Some(server),
                Some(first) if first == server => {}
                Some(_) => return Err(NotDelegated::MixedAuthorizationServers),
            }
        }
    }
    Ok(())
}
