//! Which credential goes upstream, and the debug headers that explain it (design §4.7).
//!
//! The precedence is fixed so that an operator can predict it: a per-request header the caller
//! sent for this server, then the gateway's M2M token, then token exchange, then the static token,
//! then passthrough of the caller's own `Authorization` (oauth2 servers only, never the gateway
//! key), then nothing. Debug headers report the decision with every secret masked.

use http::HeaderMap;
use url::Url;

use crate::config::{AuthType, ServerPolicy};
use crate::flow::Flow;
use crate::mask::{mask, mask_url};
use crate::secret::Secret;

/// How the outbound credential was chosen; the value of `x-mcp-debug-auth-resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthResolution {
    /// The caller sent `x-mcp-{server}-authorization`.
    PerRequestHeader,
    /// The gateway's client-credentials token.
    M2mClientCredentials,
    /// An RFC 8693 token exchanged for the caller's token.
    TokenExchange,
    /// The configured `authentication_token`.
    StaticToken,
    /// The caller's `Authorization`, forwarded untouched.
    OAuth2Passthrough,
    /// The upstream token of the grant behind the caller's gateway access token (design §4.8).
    GatewayGrant,
    /// No credential.
    NoAuth,
}

impl AuthResolution {
    /// The stable header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerRequestHeader => "per-request-header",
            Self::M2mClientCredentials => "m2m-client-credentials",
            Self::TokenExchange => "token-exchange",
            Self::StaticToken => "static-token",
            Self::OAuth2Passthrough => "oauth2-passthrough",
            Self::GatewayGrant => "gateway-grant",
            Self::NoAuth => "no-auth",
        }
    }
}

/// The credential to attach, as an instruction to the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundCredential {
    /// Send this value as `Authorization` (from the per-request header).
    Authorization(Secret),
    /// Fetch (or reuse) the M2M token for this server and send it as a bearer token.
    ClientCredentialsToken,
    /// Exchange this caller token for an upstream token; the caller's token itself never goes upstream.
    ExchangeToken {
        /// The caller's access token, the RFC 8693 `subject_token`.
        subject_token: Secret,
    },
    /// Send the configured `authentication_token`.
    StaticToken,
    /// Send the upstream access token of this grant, read from the grant store and refreshed
    /// when it is about to expire or the upstream refuses it (design §4.8).
    Grant {
        /// The grant the caller's gateway access token names.
        grant: crate::grant::GrantId,
        /// The identity (gateway key name) the access token was issued to.
        identity: String,
    },
    /// The newest live grant of the caller's identity at this server (an interactive server on
    /// the aggregating routes, design §4.8), found through its pointer record; without one the
    /// target fails with `authorization_required`.
    IdentityGrant {
        /// The pointer record's id ([`crate::grant::Grant::newest_pointer_id`]).
        pointer: crate::grant::GrantId,
        /// The identity (gateway key name) the request was admitted as.
        identity: String,
    },
    /// The server needs a grant this request cannot name (an interactive server on the
    /// aggregating routes): nothing is sent; the target fails with `authorization_required`.
    AuthorizationRequired,
    /// Forward the caller's `Authorization` header unchanged.
    ForwardAuthorization,
    /// Send no credential.
    None,
}

/// The outbound decision for one request to one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundAuth {
    /// Which rule applied.
    pub resolution: AuthResolution,
    /// What the adapter attaches.
    pub credential: OutboundCredential,
}

impl OutboundAuth {
    /// Whether the caller's own `Authorization` header goes upstream.
    pub fn forwards_authorization(&self) -> bool {
        self.credential == OutboundCredential::ForwardAuthorization
    }
}

/// The per-request credential header for `server`: `x-mcp-{server}-authorization`.
pub fn per_request_header_name(server: &str) -> String {
    format!("x-mcp-{}-authorization", server.to_ascii_lowercase())
}

/// The token part of an `Authorization` value: after `Bearer ` when present, else the whole value.
pub fn bearer_token(value: &str) -> &str {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    }
}

/// The gateway-issued token (`mcpgw_…`) in `Authorization`, with or without the `Bearer`
/// scheme. Such a token is the gateway's own and never goes upstream (design §4.7), however the
/// caller wrote the header.
pub fn gateway_token_in(headers: &http::HeaderMap) -> Option<&str> {
    let token = bearer_token(headers.get(http::header::AUTHORIZATION)?.to_str().ok()?);
    crate::seal::is_gateway_token(token).then_some(token)
}

/// Whether an `Authorization` (or key header) value carries one of the gateway keys.
pub fn is_gateway_key(value: &str, gateway_keys: &[Secret]) -> bool {
    let token = bearer_token(value);
    gateway_keys
        .iter()
        .filter(|key| !key.is_empty())
        .any(|key| key.constant_time_eq(token) || key.constant_time_eq(value.trim()))
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim).filter(|value| !value.is_empty())
}

/// Chooses the upstream credential for `server` (design §4.7 precedence).
pub fn resolve_outbound_auth(
    server: &str,
    policy: &ServerPolicy,
    headers: &HeaderMap,
    gateway_keys: &[Secret],
) -> OutboundAuth {
    let decide = |resolution, credential| OutboundAuth { resolution, credential };
    if let Some(value) = header_text(headers, &per_request_header_name(server)) {
        return decide(
            AuthResolution::PerRequestHeader,
            OutboundCredential::Authorization(Secret::new(value)),
        );
    }
    if policy.flow == Flow::ClientCredentials {
        return decide(AuthResolution::M2mClientCredentials, OutboundCredential::ClientCredentialsToken);
    }
    // Neither the gateway key nor a gateway-issued token ever goes upstream or is exchanged.
    let caller = header_text(headers, "authorization").filter(|value| {
        !is_gateway_key(value, gateway_keys) && !crate::seal::is_gateway_token(bearer_token(value))
    });
    if policy.flow == Flow::TokenExchange
        && let Some(caller) = caller
    {
        return decide(
            AuthResolution::TokenExchange,
            OutboundCredential::ExchangeToken { subject_token: Secret::new(bearer_token(caller)) },
        );
    }
    if policy.has_static_token {
        return decide(AuthResolution::StaticToken, OutboundCredential::StaticToken);
    }
    if policy.auth_type == AuthType::OAuth2 && caller.is_some() {
        return decide(AuthResolution::OAuth2Passthrough, OutboundCredential::ForwardAuthorization);
    }
    decide(AuthResolution::NoAuth, OutboundCredential::None)
}

/// Whether the caller asked for debug headers (`x-mcp-debug` or `x-litellm-mcp-debug`: `true`, `1`, `yes`).
pub fn debug_requested(headers: &HeaderMap) -> bool {
    ["x-mcp-debug", "x-litellm-mcp-debug"].iter().any(|name| {
        header_text(headers, name).is_some_and(|value| {
            value.eq_ignore_ascii_case("true") || value == "1" || value.eq_ignore_ascii_case("yes")
        })
    })
}

/// The flag appended when a caller's token is the gateway key.
pub const SAME_AS_GATEWAY_KEY: &str = " (SAME_AS_GATEWAY_KEY - likely misconfigured)";

/// What the debug headers describe about the outbound request.
#[derive(Clone, Copy, Debug)]
pub struct DebugContext<'a> {
    /// The server's `auth_type`, if configured.
    pub auth_type: Option<AuthType>,
    /// The decision.
    pub resolution: AuthResolution,
    /// The upstream URL.
    pub outbound_url: Option<&'a Url>,
    /// The `Authorization` value actually sent upstream, if any.
    pub outbound_authorization: Option<&'a str>,
}

/// The `x-mcp-debug-*` response headers, every secret masked.
pub fn debug_headers(
    inbound: &HeaderMap,
    gateway_keys: &[Secret],
    context: &DebugContext<'_>,
) -> Vec<(&'static str, String)> {
    let flag = |value: &str| if is_gateway_key(value, gateway_keys) { SAME_AS_GATEWAY_KEY } else { "" };
    let mut parts = Vec::new();
    for name in ["x-mcp-gateway-key", "x-litellm-api-key", "authorization"] {
        if let Some(value) = header_text(inbound, name) {
            let suffix = if name == "authorization" { flag(value) } else { "" };
            parts.push(format!("{name}={}{suffix}", mask(value)));
        }
    }
    let inbound_auth = if parts.is_empty() { "(none)".to_owned() } else { parts.join("; ") };
    let token = context
        .outbound_authorization
        .map_or_else(|| "(none)".to_owned(), |value| format!("{}{}", mask(value), flag(value)));
    vec![
        ("x-mcp-debug-inbound-auth", inbound_auth),
        ("x-mcp-debug-oauth2-token", token),
        ("x-mcp-debug-auth-resolution", context.resolution.as_str().to_owned()),
        ("x-mcp-debug-outbound-url", context.outbound_url.map_or_else(|| "(unknown)".to_owned(), mask_url)),
        ("x-mcp-debug-server-auth-type", context.auth_type.map_or("(none)", AuthType::as_str).to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::config::ServerEntry;

    fn policy(entry: serde_json::Value) -> ServerPolicy {
        ServerEntry::from_json("gh", entry.as_object().unwrap(), &|_| None).unwrap().policy().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn resolve(entry: serde_json::Value, pairs: &[(&'static str, &str)]) -> OutboundAuth {
        resolve_outbound_auth("gh", &policy(entry), &headers(pairs), &[Secret::new("sk-gateway-1234")])
    }

    #[test]
    fn precedence_follows_the_design() {
        let m2m = json!({"auth_type": "oauth2", "oauth2_flow": "client_credentials", "client_id": "i", "client_secret": "s", "authentication_token": "static"});
        let per_request = resolve(
            m2m.clone(),
            &[("x-mcp-gh-authorization", "Bearer user"), ("authorization", "Bearer caller")],
        );
        assert_eq!(per_request.resolution, AuthResolution::PerRequestHeader);
        assert_eq!(per_request.credential, OutboundCredential::Authorization(Secret::new("Bearer user")));
        assert_eq!(
            resolve(m2m, &[("authorization", "Bearer caller")]).resolution,
            AuthResolution::M2mClientCredentials
        );

        let exchange = json!({"auth_type": "oauth2_token_exchange", "authentication_token": "static"});
        let exchanged = resolve(exchange.clone(), &[("authorization", "Bearer caller-token")]);
        assert_eq!(
            exchanged.credential,
            OutboundCredential::ExchangeToken { subject_token: Secret::new("caller-token") }
        );
        assert!(!exchanged.forwards_authorization());
        assert_eq!(resolve(exchange, &[]).resolution, AuthResolution::StaticToken);

        let interactive = json!({"auth_type": "oauth2", "authentication_token": "static"});
        assert_eq!(
            resolve(interactive, &[("authorization", "Bearer caller")]).resolution,
            AuthResolution::StaticToken
        );
        let passthrough = resolve(json!({"auth_type": "oauth2"}), &[("authorization", "Bearer caller")]);
        assert_eq!(passthrough.resolution, AuthResolution::OAuth2Passthrough);
        assert!(passthrough.forwards_authorization());
        assert_eq!(resolve(json!({"auth_type": "oauth2"}), &[]).resolution, AuthResolution::NoAuth);
    }

    #[test]
    fn gateway_key_and_non_oauth2_authorization_never_pass_through() {
        for value in ["Bearer sk-gateway-1234", "sk-gateway-1234", "bearer  sk-gateway-1234 "] {
            let decision = resolve(json!({"auth_type": "oauth2"}), &[("authorization", value)]);
            assert_eq!(decision.resolution, AuthResolution::NoAuth, "{value}");
        }
        let api_key = resolve(json!({"auth_type": "api_key"}), &[("authorization", "Bearer caller")]);
        assert_eq!(api_key.resolution, AuthResolution::NoAuth);
        let exchange = resolve(
            json!({"auth_type": "oauth2_token_exchange"}),
            &[("authorization", "Bearer sk-gateway-1234")],
        );
        assert_eq!(exchange.resolution, AuthResolution::NoAuth);
    }

    #[test]
    fn debug_headers_mask_everything_and_flag_the_gateway_key() {
        let inbound =
            headers(&[("x-litellm-api-key", "sk-gateway-1234"), ("authorization", "Bearer sk-gateway-1234")]);
        let url = Url::parse("https://u:p@mcp.example.com/mcp?token=abc").unwrap();
        let context = DebugContext {
            auth_type: Some(AuthType::OAuth2),
            resolution: AuthResolution::NoAuth,
            outbound_url: Some(&url),
            outbound_authorization: None,
        };
        let debug = debug_headers(&inbound, &[Secret::new("sk-gateway-1234")], &context);
        let rendered = format!("{debug:?}");
        assert!(!rendered.contains("sk-gateway-1234"));
        assert!(!rendered.contains("abc"));
        assert_eq!(
            debug[0].1,
            format!("x-litellm-api-key=****1234; authorization=Bearer****1234{SAME_AS_GATEWAY_KEY}")
        );
        assert_eq!(debug[1].1, "(none)");
        assert_eq!(debug[2].1, "no-auth");
        assert_eq!(debug[3].1, "https://****:****@mcp.example.com/mcp?token=****");
        assert_eq!(debug[4].1, "oauth2");
    }

    #[test]
    fn debug_is_opt_in() {
        assert!(debug_requested(&headers(&[("x-mcp-debug", "true")])));
        assert!(debug_requested(&headers(&[("x-litellm-mcp-debug", "1")])));
        assert!(!debug_requested(&headers(&[("x-mcp-debug", "false")])));
        assert!(!debug_requested(&HeaderMap::new()));
    }

    #[test]
    fn debug_outbound_url_masks_a_secret_in_the_path() {
        // Issue 9 item 6: the credential of a Zapier-style URL sits in the path.
        let url = Url::parse("https://mcp.zapier.com/zap/PATHSECRET-9f8e7d6c5b4a/mcp").unwrap();
        let context = DebugContext {
            auth_type: Some(AuthType::None),
            resolution: AuthResolution::NoAuth,
            outbound_url: Some(&url),
            outbound_authorization: Some("Bearer abcdefghijklmnop"),
        };
        let debug = debug_headers(&HeaderMap::new(), &[], &context);
        assert_eq!(debug[0].1, "(none)");
        assert_eq!(debug[1].1, "Bearer****mnop");
        assert_eq!(
            debug[3],
            ("x-mcp-debug-outbound-url", "https://mcp.zapier.com/zap/****5b4a/mcp".to_owned())
        );
        assert!(!format!("{debug:?}").contains("PATHSECRET"));
        let unknown = DebugContext { outbound_url: None, auth_type: None, ..context };
        let debug = debug_headers(&HeaderMap::new(), &[], &unknown);
        assert_eq!(debug[3].1, "(unknown)");
        assert_eq!(debug[4].1, "(none)");
    }

    #[test]
    fn only_the_bearer_scheme_is_stripped_from_a_token() {
        assert_eq!(bearer_token("Bearer abc"), "abc");
        assert_eq!(bearer_token("  bEaReR   abc  "), "abc");
        assert_eq!(bearer_token("abc"), "abc");
        // Another scheme is part of the value: a Basic credential is not a bearer token.
        assert_eq!(bearer_token("Basic dXNlcjpwdw=="), "Basic dXNlcjpwdw==");
        assert_eq!(bearer_token("Token abc"), "Token abc");
        // So a gateway key sent as `Basic <key>` is not recognised as the key by its tail alone.
        let keys = [Secret::new("sk-gateway-key-000")];
        assert!(is_gateway_key("Bearer sk-gateway-key-000", &keys));
        assert!(!is_gateway_key("Basic sk-gateway-key-000", &keys));
    }
}
