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
    /// `Authorization` carries a token the gateway issued (`mcpgw_`): the gateway authenticates
    /// the request itself, and such a token never goes upstream (design §4.6, §4.7).
    #[error("the request carries a gateway-issued token")]
    GatewayTokenPresent,
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
    /// The request path is ambiguous (an empty, dot or encoded segment): the router answers 404
    /// for it, and no decision is taken on it.
    #[error("the request path is ambiguous (an empty, dot or encoded segment) and names no route")]
    AmbiguousPath,
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
            Self::GatewayTokenPresent => "gateway_token_present",
            Self::NoTargets => "no_targets",
            Self::MalformedServersHeader => "malformed_servers_header",
            Self::UnknownServer(_) => "unknown_server",
            Self::InvalidServer(_) => "invalid_server_config",
            Self::NotOAuth2(_) => "not_oauth2",
            Self::NotInteractive(_) => "not_interactive",
            Self::DelegationDisabled(_) => "delegation_disabled",
            Self::AuthorizationServerUnknown(_) => "authorization_server_unknown",
            Self::MixedAuthorizationServers => "mixed_authorization_servers",
            Self::AmbiguousPath => "ambiguous_path",
        }
    }
}

/// The names in `x-mcp-servers`, in order, trimmed and without repeats: the one reader of that
/// header, used by delegation and by the aggregating routes alike.
pub fn servers_header(headers: &HeaderMap) -> Result<Vec<&str>, NotDelegated> {
    let mut names = Vec::new();
    // A set, not `Vec::contains`: a header of tens of thousands of names must stay linear.
    let mut seen = std::collections::HashSet::new();
    for value in headers.get_all(SERVERS_HEADER) {
        let value = value.to_str().map_err(|_| NotDelegated::MalformedServersHeader)?;
        for name in value.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            if seen.insert(name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// The target servers of a request: the server the router resolved from the path (see
/// [`crate::route::Route::server`]), then each `x-mcp-servers` name, deduplicated.
pub fn target_servers<'h>(
    routed: Option<&'h str>,
    headers: &'h HeaderMap,
) -> Result<Vec<&'h str>, NotDelegated> {
    let mut targets: Vec<&str> = routed.into_iter().collect();
    for name in servers_header(headers)? {
        if Some(name) != routed {
            targets.push(name);
        }
    }
    Ok(targets)
}

/// Decides whether to delegate auth for a request (design §4.6). `routed` is the server the router
/// resolved from the path, never the raw path: delegation and admission must agree on the target.
pub fn decide_delegation<'a>(
    routed: Option<&str>,
    headers: &HeaderMap,
    lookup: impl Fn(&str) -> Target<'a>,
) -> DelegationDecision {
    match check(routed, headers, lookup) {
        Ok(()) => DelegationDecision::Delegate,
        Err(why) => DelegationDecision::Enforce(why),
    }
}

fn check<'a>(
    routed: Option<&str>,
    headers: &HeaderMap,
    lookup: impl Fn(&str) -> Target<'a>,
) -> Result<(), NotDelegated> {
    if GATEWAY_KEY_HEADERS.iter().any(|name| headers.contains_key(*name)) {
        return Err(NotDelegated::GatewayKeyPresent);
    }
    if crate::outbound::gateway_token_in(headers).is_some() {
        return Err(NotDelegated::GatewayTokenPresent);
    }
    let targets = target_servers(routed, headers)?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http::HeaderValue;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::ServerEntry;

    fn policies(servers: Value) -> HashMap<String, Option<ServerPolicy>> {
        let env = |_: &str| None;
        servers
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, entry)| {
                let policy = ServerEntry::from_json(name, entry.as_object().unwrap(), &env)
                    .ok()
                    .and_then(|entry| entry.policy().ok());
                (name.clone(), policy)
            })
            .collect()
    }

    fn decide(
        servers: &HashMap<String, Option<ServerPolicy>>,
        path: &str,
        pairs: &[(&'static str, &str)],
    ) -> &'static str {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        let routed = crate::route::mcp_path_server(path);
        let decision = decide_delegation(routed, &headers, |name| match servers.get(name) {
            None => Target::Unknown,
            Some(None) => Target::Invalid,
            Some(Some(policy)) => Target::Known(policy),
        });
        assert_eq!(decision.delegates(), decision.reason() == "all_targets_delegate");
        decision.reason()
    }

    fn interactive(authorization_url: &str) -> Value {
        json!({"url": "https://mcp.example.com/mcp", "auth_type": "oauth2", "authorization_url": authorization_url, "delegate_auth_to_upstream": true})
    }

    #[test]
    fn single_interactive_opted_in_server_delegates() {
        let servers = policies(json!({"github": interactive("https://github.com/login/oauth/authorize")}));
        assert_eq!(decide(&servers, "/github/mcp", &[]), "all_targets_delegate");
        assert_eq!(decide(&servers, "/github/mcp/", &[]), "no_targets");
        assert_eq!(decide(&servers, "/mcp", &[("x-mcp-servers", "github")]), "all_targets_delegate");
        assert_eq!(decide(&servers, "/github/mcp", &[("x-mcp-gateway-key", "sk-1")]), "gateway_key_present");
        assert_eq!(decide(&servers, "/github/mcp", &[("x-litellm-api-key", "")]), "gateway_key_present");
        // A gateway token is the gateway's to check, however the header is written: it is never
        // delegated (and so never forwarded) to the upstream.
        let token = "mcpgw_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for value in
            [format!("Bearer {token}"), format!("bearer   {token}"), token.to_owned(), format!(" {token} ")]
        {
            let headers = [("authorization", value.as_str())];
            assert_eq!(decide(&servers, "/github/mcp", &headers), "gateway_token_present", "{value:?}");
        }
        assert_eq!(
            decide(&servers, "/github/mcp", &[("authorization", "Bearer upstream-jwt")]),
            "all_targets_delegate"
        );
    }

    #[test]
    fn every_target_must_pass() {
        let servers = policies(json!({
            "github": interactive("https://github.com/login/oauth/authorize"),
            "m2m": {"auth_type": "oauth2", "oauth2_flow": "client_credentials", "client_id": "i", "client_secret": "s", "delegate_auth_to_upstream": true},
            "static": {"auth_type": "bearer_token", "authentication_token": "t", "delegate_auth_to_upstream": true},
            "optout": {"auth_type": "oauth2", "authorization_url": "https://github.com/login/oauth/authorize"},
            "stringy": {"auth_type": "oauth2", "delegate_auth_to_upstream": "true"},
        }));
        assert_eq!(decide(&servers, "/mcp", &[]), "no_targets");
        assert_eq!(decide(&servers, "/health", &[("x-mcp-servers", " , ")]), "no_targets");
        assert_eq!(decide(&servers, "/nope/mcp", &[]), "unknown_server");
        assert_eq!(decide(&servers, "/github/mcp", &[("x-mcp-servers", "nope")]), "unknown_server");
        assert_eq!(decide(&servers, "/m2m/mcp", &[]), "not_interactive");
        assert_eq!(decide(&servers, "/static/mcp", &[]), "not_oauth2");
        assert_eq!(decide(&servers, "/optout/mcp", &[]), "delegation_disabled");
        assert_eq!(decide(&servers, "/stringy/mcp", &[]), "invalid_server_config");
        assert_eq!(decide(&servers, "/github/mcp", &[("x-mcp-servers", "github,m2m")]), "not_interactive");
    }

    #[test]
    fn several_targets_need_one_authorization_server() {
        let servers = policies(json!({
            "a": interactive("https://auth.example.com/authorize"),
            "b": interactive("https://AUTH.example.com:443/authorize"),
            "c": interactive("https://other.example.com/authorize"),
            "d": interactive("https://auth.example.com/tenant2/authorize"),
            "e": {"auth_type": "oauth2", "delegate_auth_to_upstream": true},
            "f": {"auth_type": "oauth2", "issuer": "https://auth.example.com/authorize/", "delegate_auth_to_upstream": true},
        }));
        assert_eq!(decide(&servers, "/a/mcp", &[("x-mcp-servers", "b")]), "all_targets_delegate");
        assert_eq!(decide(&servers, "/a/mcp", &[("x-mcp-servers", "a,f")]), "all_targets_delegate");
        assert_eq!(decide(&servers, "/mcp", &[("x-mcp-servers", "a, c")]), "mixed_authorization_servers");
        assert_eq!(
            decide(&servers, "/mcp", &[("x-mcp-servers", "a"), ("x-mcp-servers", "d")]),
            "mixed_authorization_servers"
        );
        assert_eq!(decide(&servers, "/mcp", &[("x-mcp-servers", "a,e")]), "authorization_server_unknown");
        assert_eq!(decide(&servers, "/e/mcp", &[]), "all_targets_delegate");
    }

    #[test]
    fn an_ambiguous_path_names_no_target() {
        // The review's break: `//b/mcp` once delegated for `b` on the strength of `a` alone.
        let servers = policies(json!({
            "a": interactive("https://auth.example.com/authorize"),
            "b": {"url": "https://b.example.com/mcp"},
        }));
        assert_eq!(decide(&servers, "/a/mcp", &[]), "all_targets_delegate");
        for path in ["//b/mcp", "/b//mcp", "/./b/mcp", "/b%2Fx/mcp", "/b/mcp/"] {
            // No routed server: only the header's `a` is a target, and the router answers 404
            // for the path itself, so nothing reaches `b`.
            assert_eq!(crate::route::mcp_path_server(path), None, "{path}");
        }
        assert_eq!(decide(&servers, "/b/mcp", &[("x-mcp-servers", "a")]), "not_oauth2");
    }

    #[test]
    fn the_servers_header_is_read_once_in_order() {
        let mut headers = HeaderMap::new();
        headers.append(SERVERS_HEADER, HeaderValue::from_static(" b, a ,,b"));
        headers.append(SERVERS_HEADER, HeaderValue::from_static("c,a"));
        assert_eq!(servers_header(&headers).unwrap(), ["b", "a", "c"]);
        assert_eq!(target_servers(Some("a"), &headers).unwrap(), ["a", "b", "c"]);
        headers.append(SERVERS_HEADER, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(servers_header(&headers), Err(NotDelegated::MalformedServersHeader));
    }
}
