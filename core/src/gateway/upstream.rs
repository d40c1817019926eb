//! What goes upstream with a forwarded call: the credential header, the headers relayed back,
//! the body check, and the token requests that precede a forward (design §4.3, §4.7).

use super::*;

/// The header the static `authentication_token` is sent in, by `auth_type` (LiteLLM's mapping).
pub fn static_credential_header(auth_type: AuthType, token: &Secret) -> (HeaderName, String) {
    let value = token.expose();
    match auth_type {
        AuthType::ApiKey => (HeaderName::from_static("x-api-key"), value.to_owned()),
        AuthType::Basic => (header::AUTHORIZATION, format!("Basic {value}")),
        AuthType::Token => (header::AUTHORIZATION, format!("token {value}")),
        AuthType::Authorization => (header::AUTHORIZATION, value.to_owned()),
        _ => (header::AUTHORIZATION, format!("Bearer {value}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Serving support: the two policy questions the hyper server asks besides `decide` (which
// upstream response headers reach the caller, and which token request precedes a forward).
// ---------------------------------------------------------------------------------------------

/// Upstream response headers relayed to the caller of a forwarded MCP request, besides
/// `WWW-Authenticate` (see [`relays_upstream_header`]).
pub const RELAYED_RESPONSE_HEADERS: [&str; 4] =
    ["content-type", "cache-control", "mcp-session-id", "mcp-protocol-version"];

/// Whether the upstream's response header `name` goes back to the caller of `forward`.
///
/// `WWW-Authenticate` is relayed only when auth is delegated (design §4.6). Otherwise the
/// upstream's challenge names an authorization server the caller must not use directly; the
/// caller falls back to the gateway's own protected-resource metadata.
pub fn relays_upstream_header(forward: &Forward, name: &HeaderName) -> bool {
    if name == header::WWW_AUTHENTICATE {
        return forward.delegated;
    }
    RELAYED_RESPONSE_HEADERS.contains(&name.as_str())
}

/// Whether the upstream's response header `name` goes back to a caller whose request ran in an
/// upstream session the gateway holds (design §4.11): never that session's id, which would let
/// the caller act in, or end, a session that is not its own.
pub fn relays_in_gateway_session(forward: &Forward, name: &HeaderName) -> bool {
    name.as_str() != SESSION_HEADER_NAME && relays_upstream_header(forward, name)
}

/// The MCP session header's name, lower case as `HeaderName` stores it.
const SESSION_HEADER_NAME: &str = "mcp-session-id";

/// Checks the body of a request to forward before any credential is spent on it: a `POST` must
/// carry JSON-RPC 2.0 ([`crate::aggregate::check_message`]), whose shape is returned so no later
/// decision reads the body again; other methods carry no message. The error is a 400 with a
/// JSON-RPC error.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn check_forward_body(
    method: &Method,
    body: &[u8],
) -> Result<Option<crate::jsonrpc::Shape>, Response<Vec<u8>>> {
    if method == Method::POST { crate::aggregate::check_message(body).map(Some) } else { Ok(None) }
}

/// The token request to send before forwarding with `credential` to `server`: the M2M
/// client-credentials grant to `token_url`, or the RFC 8693 exchange of the caller's token to
/// `token_exchange_endpoint` (else `token_url`). An incomplete configuration says what is missing
/// (never a secret); a credential that needs no token endpoint is [`CallFailure::OutOfOrder`].
pub fn outbound_token_request(
    server: &ServerConfig,
    credential: &OutboundCredential,
) -> Result<http::Request<Vec<u8>>, CallFailure> {
    use crate::client::token::{ACCESS_TOKEN_TYPE, Client, Grant, choose_token_endpoint_auth, token_request};
    let unavailable = |missing| CallFailure::TokenNotConfigured { missing };
    let entry = &server.entry;
    let (endpoint, grant) = match credential {
        OutboundCredential::ClientCredentialsToken => (entry.token_url.as_deref(), Grant::ClientCredentials),
        OutboundCredential::ExchangeToken { subject_token } => (
            entry.token_exchange_endpoint.as_deref().or(entry.token_url.as_deref()),
            Grant::TokenExchange {
                subject_token,
                subject_token_type: entry.subject_token_type.as_deref().unwrap_or(ACCESS_TOKEN_TYPE),
                audience: entry.audience.as_deref(),
            },
        ),
        _ => return Err(CallFailure::OutOfOrder),
    };
    let Some(endpoint) = endpoint.and_then(|url| Url::parse(url).ok()) else {
        return Err(unavailable("no valid token_url is configured"));
    };
    let Some(client_id) = entry.client_id.as_deref() else {
        return Err(unavailable("no client_id is configured"));
    };
    let client = Client {
        client_id,
        client_secret: entry.client_secret.as_ref(),
        auth: choose_token_endpoint_auth(
            None,
            entry.client_secret.is_some(),
            entry.token_endpoint_auth_method,
        ),
    };
    let scopes = entry.scopes.as_deref().unwrap_or_default();
    let resource = match credential {
        OutboundCredential::ClientCredentialsToken => m2m_resource(server),
        _ => None,
    };
    token_request(&endpoint, &client, &grant, scopes, resource.as_deref())
        .map_err(|_| unavailable("the token request cannot be built"))
}

/// The RFC 8707 `resource` of `server`'s M2M token request (design §4.3): the server's URL, so an
/// MCP server that checks the audience accepts the token; the configured `resource:` when set, and
/// none for `resource: null` or (unless set) a Microsoft Entra issuer or token host, which refuses
/// the parameter.
pub fn m2m_resource(server: &ServerConfig) -> Option<String> {
    use crate::config::ResourceSetting;
    let entry = &server.entry;
    match &entry.resource {
        ResourceSetting::Value(resource) => Some(resource.clone()),
        ResourceSetting::Omit => None,
        ResourceSetting::Default => {
            let entra = [entry.issuer.as_deref(), entry.token_url.as_deref()]
                .into_iter()
                .flatten()
                .any(crate::discovery::is_entra_url);
            (!entra).then(|| server.url.to_string())
        }
    }
}
