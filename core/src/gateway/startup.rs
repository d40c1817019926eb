//! Before serving: the pinned-origin check (design §4.4) and start-up discovery of the endpoints
//! a configuration leaves empty (design §4.2).

use super::*;

/// Why the gateway refuses to start with a configuration (design §4.4).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// Interactive servers are configured but the public origin would follow the request's `Host`.
    #[error(
        "interactive server(s) {} need a pinned public origin: set PROXY_BASE_URL=https://your-gateway, or trust your proxy's X-Forwarded-* (use_x_forwarded_for with mcp_trusted_proxy_ranges), or list allowed_hosts, or listen on a loopback address; an origin taken from the Host header lets an attacker start an authorization under his own origin and collect a victim's code",
        .servers.join(", ")
    )]
    OriginNotPinned {
        /// The interactive servers.
        servers: Vec<String>,
    },
    /// Interactive servers are configured under a plain-http origin that is not loopback.
    #[error(
        "interactive server(s) {} need an https public origin, but PROXY_BASE_URL is {origin}; OAuth codes and tokens must not cross the network in clear (OAuth 2.1 §1.5)",
        .servers.join(", ")
    )]
    InsecureOrigin {
        /// The configured origin.
        origin: String,
        /// The interactive servers.
        servers: Vec<String>,
    },
}

impl Reason for StartupError {
    fn reason(&self) -> &'static str {
        match self {
            Self::OriginNotPinned { .. } => "origin_not_pinned",
            Self::InsecureOrigin { .. } => "insecure_origin",
        }
    }
}

/// The start-up check of a configuration about to be served: refuses interactive servers without
/// a pinned (and, off loopback, https) public origin, and returns the warnings to log. Call it
/// after [`OriginSettings::pin_listen_address`](crate::origin::OriginSettings::pin_listen_address).
pub fn check_startup(config: &GatewayConfig) -> Result<Vec<String>, StartupError> {
    let settings = &config.settings.origin;
    let servers: Vec<String> =
        config.servers.keys().filter(|name| interactive(config, name).is_some()).cloned().collect();
    let mut warnings = Vec::new();
    if !servers.is_empty() {
        if !settings.is_pinned() {
            return Err(StartupError::OriginNotPinned { servers });
        }
        if let Some(origin) = &settings.proxy_base_url
            && origin.scheme() != Scheme::Https
            && !origin.is_loopback()
        {
            return Err(StartupError::InsecureOrigin { origin: origin.to_string(), servers });
        }
    }
    if let Some(listen) = &settings.listen
        && settings.proxy_base_url.is_none()
    {
        warnings.push(format!(
            "no PROXY_BASE_URL: the public origin is the loopback listen address {listen}; set PROXY_BASE_URL when clients reach the gateway by another name"
        ));
    } else if !settings.is_pinned() {
        warnings.push(
            "no public origin is configured: it is taken from each request's Host header; set PROXY_BASE_URL or allowed_hosts".to_owned(),
        );
    }
    // Design §4.8: after start-up discovery, an interactive server whose upstream client can be
    // neither the configured one nor one the gateway registers will refuse every consent.
    for name in &servers {
        let Some(server) = config.servers.get(name) else { continue };
        if server.entry.client_id.is_none() && server.entry.registration_url.is_none() {
            warnings.push(format!(
                "server `{name}` has no client_id and its authorization server offers no registration endpoint: every sign-in will stop at a 503; register the gateway's callback URL at the upstream and set client_id (and client_secret)"
            ));
        }
    }
    Ok(warnings)
}

// ---------------------------------------------------------------------------------------------
// Start-up discovery: LiteLLM configurations often name only the MCP server's `url` and leave the
// authorization server's endpoints to discovery (design §4.2). Before serving, the adapter runs
// core's discovery for each server [`endpoint_discovery`] names and hands the result to
// [`apply_discovery`], which fills only what the configuration left empty.
// ---------------------------------------------------------------------------------------------

/// The endpoint fields `server`'s flow needs that its configuration leaves empty.
pub fn missing_endpoints(server: &ServerConfig) -> Vec<&'static str> {
    let entry = &server.entry;
    if server.policy.auth_type != AuthType::OAuth2 {
        return Vec::new();
    }
    let mut missing = Vec::new();
    match server.policy.flow {
        Flow::AuthorizationCode => {
            if entry.authorization_url.is_none() {
                missing.push("authorization_url");
            }
            if entry.token_url.is_none() {
                missing.push("token_url");
            }
        }
        Flow::ClientCredentials if entry.token_url.is_none() => missing.push("token_url"),
        Flow::TokenExchange if entry.token_url.is_none() && entry.token_exchange_endpoint.is_none() => {
            missing.push("token_url");
        }
        _ => {}
    }
    missing
}

/// The discovery to run for `server` before serving it, or `None` when its configuration names
/// every endpoint its flow needs. Configured endpoints and `issuer` take precedence over what
/// discovery finds.
pub fn endpoint_discovery(server: &ServerConfig) -> Option<crate::client::discovery::DiscoveryConfig> {
    use crate::client::discovery::{ConfiguredEndpoints, DiscoveryConfig};
    if missing_endpoints(server).is_empty() {
        return None;
    }
    let parse = |value: &Option<String>| value.as_deref().and_then(|url| Url::parse(url).ok());
    let entry = &server.entry;
    let mut config = DiscoveryConfig::new(server.url.clone());
    config.configured = ConfiguredEndpoints {
        issuer: parse(&entry.issuer),
        authorization_endpoint: parse(&entry.authorization_url),
        token_endpoint: parse(&entry.token_url),
        registration_endpoint: parse(&entry.registration_url),
    };
    Some(config)
}

/// Why discovered endpoints were not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The authorization server's metadata lacks an endpoint the flow needs.
    #[error("the authorization server `{issuer}` publishes no {field}")]
    Missing {
        /// The issuer.
        issuer: String,
        /// The configuration field it would fill.
        field: &'static str,
    },
    /// A discovered endpoint is not a URL the gateway may send credentials to.
    #[error("the discovered {field} is refused: {why}")]
    Refused {
        /// The configuration field it would fill.
        field: &'static str,
        /// Why (the fetch policy's words).
        why: String,
    },
}

impl Reason for EndpointError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "endpoint_not_published",
            Self::Refused { .. } => "blocked_by_fetch_policy",
        }
    }
}

/// Fills `server`'s empty endpoint fields from `metadata` (discovery's result for it) and returns
/// the fields filled. Every endpoint must pass the fetch policy for the server (https, or http
/// only when the MCP server itself is local), since the gateway sends its client secret there;
/// nothing is changed when one fails or a needed one is missing.
pub fn apply_discovery(
    server: &mut ServerConfig,
    metadata: &crate::metadata::AuthorizationServerMetadata,
) -> Result<Vec<&'static str>, EndpointError> {
    let allow_private = crate::fetch_policy::is_local_server(&server.url);
    let checked = |field: &'static str, value: &Option<String>| -> Result<Option<String>, EndpointError> {
        let Some(value) = value else { return Ok(None) };
        let url =
            Url::parse(value).map_err(|error| EndpointError::Refused { field, why: error.to_string() })?;
        crate::fetch_policy::check_url(&url, allow_private)
            .map_err(|error| EndpointError::Refused { field, why: error.to_string() })?;
        Ok(Some(url.to_string()))
    };
    let authorization = checked("authorization_url", &metadata.authorization_endpoint)?;
    let token = checked("token_url", &metadata.token_endpoint)?;
    // The client secret goes to this token endpoint: only where the configuration pins it
    // (design §4.2 step 7), judged on the configured values, before discovery fills any.
    if server.entry.client_secret.is_some()
        && server.entry.token_url.is_none()
        && let Some(endpoint) = token.as_deref().and_then(|token| Url::parse(token).ok())
    {
        let issuer = server.entry.issuer.as_deref().and_then(|issuer| Url::parse(issuer).ok());
        let pins = crate::fetch_policy::SecretPins {
            server_url: &server.url,
            token_url: None,
            issuer: issuer.as_ref(),
        };
        crate::fetch_policy::check_secret_destination(&endpoint, &pins)
            .map_err(|error| EndpointError::Refused { field: "token_url", why: error.to_string() })?;
    }
    let registration = checked("registration_url", &metadata.registration_endpoint)?;
    let revocation = checked("revocation_url", &metadata.revocation_endpoint)?;
    let missing = missing_endpoints(server);
    let found = |field: &'static str, value: &Option<String>| match value {
        Some(_) => Ok(()),
        None => Err(EndpointError::Missing { issuer: metadata.issuer.clone(), field }),
    };
    for field in &missing {
        match *field {
            "authorization_url" => found(field, &authorization)?,
            _ => found(field, &token)?,
        }
    }
    server.issuer_in_responses = metadata.authorization_response_iss_parameter_supported;
    let entry = &mut server.entry;
    let mut filled = Vec::new();
    // The discovered issuer is what `/callback` compares a returned `iss` with (RFC 9207).
    if entry.issuer.is_none() {
        entry.issuer = Some(metadata.issuer.clone());
        filled.push("issuer");
    }
    for (field, slot, value) in [
        ("authorization_url", &mut entry.authorization_url, authorization),
        ("token_url", &mut entry.token_url, token),
        ("registration_url", &mut entry.registration_url, registration),
        ("revocation_url", &mut entry.revocation_url, revocation),
    ] {
        if slot.is_none()
            && let Some(value) = value
        {
            *slot = Some(value);
            filled.push(field);
        }
    }
    Ok(filled)
}
