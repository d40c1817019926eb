//! Who may reach which upstream: admission by gateway key, delegation (design §4.6), and the
//! forward plans of the single-server and aggregating MCP routes.

use super::*;

/// Request headers that travel upstream with an MCP request.
pub(super) const FORWARDED_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
    HeaderName::from_static("last-event-id"),
    header::USER_AGENT,
];

#[allow(clippy::result_large_err)] // the challenge's refusal is the answer itself
pub(super) fn mcp(head: &RequestHead<'_>, name: &str, config: &GatewayConfig, now: UnixTime) -> Action {
    let Some(server) = config.servers.get(name) else {
        return Action::Respond(not_found());
    };
    if delegation(head, Some(name), config) {
        return Action::Forward(forward(head, name, server, true, config));
    }
    let challenge = || public_origin(head, config).map(|origin| challenge(&origin, name));
    let presented = gateway_token(head.headers);
    if interactive(config, name).is_some() {
        // The gateway is this server's authorization server (design §4.8): its own access token
        // admits the request as its identity; nothing else does, key or no key (a per-request
        // credential with the key excepted, design §4.7).
        let keys = config.settings.grants.sealing_keys.as_ref();
        if let Some((grant, identity)) =
            presented.zip(keys).and_then(|(token, keys)| authz::open_access_token(keys, name, now, token))
        {
            let mut forward = forward(head, name, server, false, config);
            forward.headers.remove(header::AUTHORIZATION);
            forward.credential = OutboundCredential::Grant { grant, identity };
            forward.resolution = AuthResolution::GatewayGrant;
            forward.challenge = challenge().ok();
            return Action::Forward(forward);
        }
        let per_request = head.headers.contains_key(crate::outbound::per_request_header_name(name).as_str());
        if presented.is_none() && per_request && admitted(head.headers, server, config) {
            return Action::Forward(forward(head, name, server, false, config));
        }
        return Action::Respond(match challenge() {
            Ok(challenge) => authorization_required(&challenge, presented.is_some()),
            Err(refusal) => refusal,
        });
    }
    if presented.is_some() || !admitted(head.headers, server, config) {
        // A gateway token admits only its own interactive server; here it is refused, never
        // forwarded. The challenge names no `resource_metadata`: only interactive servers publish
        // protected-resource metadata, and pointing a client at a 404 would only misdirect it
        // (issue 13); what this server needs is a gateway key.
        return Action::Respond(key_required(None));
    }
    Action::Forward(forward(head, name, server, false, config))
}

/// The gateway-issued access token in `Authorization`, if it carries one (see
/// [`crate::outbound::gateway_token_in`]).
pub(super) fn gateway_token(headers: &HeaderMap) -> Option<&str> {
    crate::outbound::gateway_token_in(headers)
}

/// 401 for a request to an interactive server without a valid gateway access token: the
/// gateway's challenge sends an OAuth client to its metadata (design §4.8).
pub(super) fn authorization_required(challenge: &str, token_presented: bool) -> Response<Vec<u8>> {
    let description = if token_presented {
        "the gateway access token is not valid for this server (expired, revoked or for another server); authorize again"
    } else {
        "this server needs authorization through the gateway: follow the WWW-Authenticate challenge"
    };
    let mut response = error_response(StatusCode::UNAUTHORIZED, "invalid_token", description);
    let value =
        if token_presented { format!("{challenge}, error=\"invalid_token\"") } else { challenge.to_owned() };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Whether auth is delegated for this request (design §4.6), from the server the router resolved
/// (`routed`, `None` on the aggregating route) and `x-mcp-servers`.
pub(super) fn delegation(head: &RequestHead<'_>, routed: Option<&str>, config: &GatewayConfig) -> bool {
    let lookup = |name: &str| match config.servers.get(name) {
        Some(server) => Target::Known(&server.policy),
        None => Target::Unknown,
    };
    decide_delegation(routed, head.headers, lookup).delegates()
}

/// The challenge a caller without a gateway key gets: where the server's protected-resource
/// metadata is, so an OAuth client can find its way.
pub(super) fn challenge(origin: &Origin, name: &str) -> String {
    format!("Bearer resource_metadata=\"{origin}/.well-known/oauth-protected-resource/{name}/mcp\"")
}

/// 401 for a request without a valid gateway key.
pub(super) fn key_required(challenge: Option<&str>) -> Response<Vec<u8>> {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "a valid gateway key is required in x-mcp-gateway-key (or x-litellm-api-key)",
    );
    let challenge = challenge.unwrap_or("Bearer realm=\"mcp-oauth\"");
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// How one MCP request goes to `server`: the caller's MCP headers and the chosen credential.
pub(super) fn forward(
    head: &RequestHead<'_>,
    name: &str,
    server: &ServerConfig,
    delegated: bool,
    config: &GatewayConfig,
) -> Forward {
    let mut headers = HeaderMap::new();
    for forwarded in &FORWARDED_HEADERS {
        for value in head.headers.get_all(forwarded) {
            headers.append(forwarded.clone(), value.clone());
        }
    }
    if !headers.contains_key(header::ACCEPT) {
        // LiteLLM's default for a caller that sends none (its documented curl examples do not):
        // Streamable HTTP servers refuse a POST that does not accept both types (406), and a GET
        // opens the event stream.
        let accept = if *head.method == Method::GET {
            "text/event-stream"
        } else {
            "application/json, text/event-stream"
        };
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
    }
    let (resolution, credential) = if delegated {
        (AuthResolution::OAuth2Passthrough, OutboundCredential::ForwardAuthorization)
    } else {
        let decision =
            resolve_outbound_auth(name, &server.policy, head.headers, &config.settings.gateway_keys);
        (decision.resolution, decision.credential)
    };
    // The caller's Authorization goes up only for passthrough, and never when it is a gateway key
    // (a delegated request may carry one by mistake; the upstream must never see it).
    if credential == OutboundCredential::ForwardAuthorization
        && let Some(value) = head.headers.get(header::AUTHORIZATION)
        && !value.to_str().is_ok_and(|text| is_gateway_key(text, &config.settings.gateway_keys))
        && gateway_token(head.headers).is_none()
    {
        headers.insert(header::AUTHORIZATION, value.clone());
    }
    Forward {
        server: name.to_owned(),
        url: server.url.clone(),
        headers,
        credential,
        resolution,
        delegated,
        debug: debug_requested(head.headers),
        challenge: None,
    }
}

/// `POST`, `GET` and `DELETE /mcp`: the servers named in `x-mcp-servers`, aggregated (see
/// [`crate::aggregate`]).
pub(super) fn aggregate_mcp(head: &RequestHead<'_>, config: &GatewayConfig) -> Action {
    let endpoint = match *head.method {
        Method::POST => crate::aggregate::Endpoint::Mcp,
        Method::DELETE => crate::aggregate::Endpoint::McpEnd,
        Method::GET => crate::aggregate::Endpoint::McpStream,
        _ => {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the aggregating endpoint accepts POST, GET and DELETE",
            );
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
            return Action::Respond(response);
        }
    };
    let names = match named_targets(head.headers) {
        Ok(Some(names)) => names,
        Ok(None) => {
            return Action::Respond(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "name a server: /{server}/mcp or x-mcp-servers",
            ));
        }
        Err(response) => return Action::Respond(response),
    };
    let delegated = delegation(head, None, config);
    targets(head, endpoint, names, delegated, None, config)
}

/// `/mcp-rest/tools/list` and `/mcp-rest/tools/call`: always behind the gateway key (they are not
/// MCP endpoints, so there is nothing to delegate to). The targets are `server_id` (listing),
/// else `x-mcp-servers`, else every configured server.
pub(super) fn rest_tools(head: &RequestHead<'_>, route: &Route, config: &GatewayConfig) -> Action {
    let pairs = query_pairs(head.path_and_query);
    let (server_id, cursor) = match (single(&pairs, "server_id"), single(&pairs, "cursor")) {
        (Ok(server_id), Ok(cursor)) => (server_id, cursor),
        (Err(message), _) | (_, Err(message)) => {
            return Action::Respond(error_response(StatusCode::BAD_REQUEST, "invalid_request", &message));
        }
    };
    let endpoint = match route {
        Route::RestToolsCall => crate::aggregate::Endpoint::RestCall,
        _ => crate::aggregate::Endpoint::RestList,
    };
    let names = match (server_id, named_targets(head.headers)) {
        (Some(server_id), _) if endpoint == crate::aggregate::Endpoint::RestList => vec![server_id],
        (_, Ok(Some(names))) => names,
        (_, Ok(None)) => config.servers.keys().cloned().collect(),
        (_, Err(response)) => return Action::Respond(response),
    };
    targets(head, endpoint, names, false, cursor, config)
}

/// The names in `x-mcp-servers` (read by [`crate::delegate::servers_header`], the same reader
/// delegation uses); `None` when it names none.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub(super) fn named_targets(headers: &HeaderMap) -> Result<Option<Vec<String>>, Response<Vec<u8>>> {
    match crate::delegate::servers_header(headers) {
        Ok(names) if names.is_empty() => Ok(None),
        Ok(names) => Ok(Some(names.into_iter().map(str::to_owned).collect())),
        Err(error) => Err(error_response(StatusCode::BAD_REQUEST, "invalid_request", &error.to_string())),
    }
}

/// One [`Forward`] per named server, after admission: every name must be configured (else the
/// same 404 as an unknown route) and, unless auth is delegated, the gateway key must admit the
/// request for every one of them. A refusal on `/mcp` points at the first server's
/// protected-resource metadata; the REST routes have none.
pub(super) fn targets(
    head: &RequestHead<'_>,
    endpoint: crate::aggregate::Endpoint,
    names: Vec<String>,
    delegated: bool,
    cursor: Option<String>,
    config: &GatewayConfig,
) -> Action {
    let mut servers = Vec::with_capacity(names.len());
    for name in &names {
        match config.servers.get(name) {
            Some(server) => servers.push(server),
            None => return Action::Respond(not_found()),
        }
    }
    if servers.is_empty() {
        return Action::Respond(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no MCP server is configured",
        ));
    }
    if !delegated && !servers.iter().all(|server| admitted(head.headers, server, config)) {
        let challenge = match (endpoint, names.first()) {
            (
                crate::aggregate::Endpoint::Mcp
                | crate::aggregate::Endpoint::McpEnd
                | crate::aggregate::Endpoint::McpStream,
                Some(name),
            ) => match public_origin(head, config) {
                Ok(origin) => Some(challenge(&origin, name)),
                Err(refusal) => return Action::Respond(refusal),
            },
            _ => None,
        };
        return Action::Respond(key_required(challenge.as_deref()));
    }
    let mut targets = Vec::with_capacity(servers.len());
    for (name, server) in names.iter().zip(servers) {
        let mut forward = forward(head, name, server, delegated, config);
        if !delegated && interactive(config, name).is_some() {
            // Design §4.8: the newest live grant of the identity the key admits; without one, a
            // partial failure that says where to authorize.
            forward.headers.remove(header::AUTHORIZATION);
            forward.credential = match key_identity(head.headers, config) {
                Some(identity) => OutboundCredential::IdentityGrant {
                    pointer: crate::grant::Grant::newest_pointer_id(name, &identity),
                    identity: identity.name,
                },
                None => OutboundCredential::AuthorizationRequired,
            };
            forward.resolution = AuthResolution::GatewayGrant;
            if let Ok(origin) = public_origin(head, config) {
                forward.challenge = Some(challenge(&origin, name));
            }
        }
        // The gateway speaks to each upstream on its own: no caller session or stream position
        // belongs to any of them, and the REST routes speak JSON-RPC on the caller's behalf.
        forward.headers.remove("mcp-session-id");
        forward.headers.remove("last-event-id");
        forward.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        forward
            .headers
            .insert(header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        targets.push(forward);
    }
    let session = match endpoint {
        crate::aggregate::Endpoint::Mcp
        | crate::aggregate::Endpoint::McpEnd
        | crate::aggregate::Endpoint::McpStream => head
            .headers
            .get(crate::client::mcp::SESSION_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        _ => None,
    };
    let owner = crate::aggregate::Owner::of(head.headers);
    Action::Aggregate(Aggregate { endpoint, targets, cursor, names, session, owner })
}

/// The identity (key name and fingerprint) of the gateway key the request carries in a key header.
fn key_identity(headers: &HeaderMap, config: &GatewayConfig) -> Option<crate::grant::Identity> {
    let presented = GATEWAY_KEY_HEADERS
        .iter()
        .flat_map(|name| headers.get_all(*name).iter())
        .filter_map(|value| value.to_str().ok());
    identity_of_key(presented, config)
}

/// The named gateway key (its name and fingerprint) one of `presented` carries, compared as
/// admission compares ([`is_gateway_key`]: the `Bearer` scheme in any case, space ignored), so a
/// key that is admitted always has its identity.
pub(super) fn identity_of_key<'v>(
    presented: impl IntoIterator<Item = &'v str>,
    config: &GatewayConfig,
) -> Option<crate::grant::Identity> {
    let keys = config.settings.grants.sealing_keys.as_ref()?;
    let presented: Vec<&str> = presented.into_iter().collect();
    config
        .settings
        .named_gateway_keys()
        .filter(|(_, key)| !key.is_empty())
        .find(|(_, key)| presented.iter().any(|value| is_gateway_key(value, std::slice::from_ref(*key))))
        .map(|(name, key)| crate::grant::Identity::new(name.into_owned(), key, keys))
}

/// Whether the request carries a gateway key: in the key headers, or in `Authorization` when the
/// target server is not oauth2 (there `Authorization` is never an upstream token).
pub(super) fn admitted(headers: &HeaderMap, server: &ServerConfig, config: &GatewayConfig) -> bool {
    let keys = &config.settings.gateway_keys;
    if keys.is_empty() {
        return false;
    }
    let carries_key = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| is_gateway_key(value, keys))
    };
    GATEWAY_KEY_HEADERS.iter().any(|name| carries_key(name))
        || (server.policy.auth_type != AuthType::OAuth2 && carries_key("authorization"))
}
