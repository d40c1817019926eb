//! The gateway as its clients' OAuth 2.1 authorization server (design §4.8).
//!
//! For every interactive server `s` that does not delegate, the gateway is an authorization server
//! with issuer `{origin}/{s}`, and itself the OAuth client of the upstream's. No token crosses
//! over: a client only ever holds `mcpgw_` tokens the gateway sealed, the upstream only ever sees
//! tokens it issued to the gateway, and those stay in the grant store, sealed.
//!
//! - `POST /{s}/register`: the `client_id` *is* the registration, sealed; nothing is stored.
//! - `GET /{s}/authorize`: the request is checked and sealed into the consent page.
//! - `POST /{s}/consent`: the user signs in with a gateway key; approving sends the browser to the
//!   upstream with the gateway's own PKCE and `resource`, the flow sealed into `state`.
//! - `GET /callback`, `POST /{s}/token`, `POST /{s}/revoke`: [`Authz`] machines, because they
//!   need the grant store (single-use marks, grants, refresh generations) and, at the callback,
//!   the upstream token endpoint.
//!
//! Everything a value must carry between steps is sealed into it (design §4.10), so a replica
//! that never saw the consent can serve the callback. Randomness comes in as a seed per request
//! ([`Random`]), time as [`UnixTime`].

// Refusals here are the answers themselves (a page or an OAuth error), sent at once.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;
use crate::grant::{Grant, GrantId, Identity, OnceKey, SealedUpstreamToken, StoreOp, StoreResult};
use crate::seal::{Purpose, SealingKeys, UnixTime};

/// How long a gateway access token lives.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a gateway authorization code lives.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a consent page and an upstream round trip may take.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);
/// How long after a rotation the preceding refresh token is still honoured (a client that lost
/// the answer retries).
pub const REFRESH_GRACE: Duration = Duration::from_secs(60);
/// The most `redirect_uris` a registration may carry.
pub const MAX_REDIRECT_URIS: usize = 5;
/// The longest `client_name` a registration may carry, in characters.
pub const MAX_CLIENT_NAME: usize = 100;

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

/// The random bytes one request needs, expanded from a 32-byte seed the adapter drew
/// (HMAC-SHA-256 in counter mode): core draws nothing itself.
pub struct Random {
    seed: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Random").finish_non_exhaustive()
    }
}

impl Random {
    /// A source expanding `seed` (fresh random bytes).
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0 }
    }

    /// `N` bytes never handed out before by this source: SHA-256 of the secret seed and a counter,
    /// block by block.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(32) {
            self.counter += 1;
            let mut hasher = Sha256::new();
            hasher.update(b"mcp-oauth random v1");
            hasher.update(self.seed);
            hasher.update(self.counter.to_be_bytes());
            let block = hasher.finalize();
            for (byte, random) in chunk.iter_mut().zip(block.iter()) {
                *byte = *random;
            }
        }
        out
    }

    /// A fresh base64url string of `N` random bytes.
    pub fn token<const N: usize>(&mut self) -> String {
        URL_SAFE_NO_PAD.encode(self.array::<N>())
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed values
// ---------------------------------------------------------------------------------------------

/// A registration, as its `client_id` carries it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Registration {
    #[serde(rename = "r")]
    redirect_uris: Vec<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    #[serde(rename = "t")]
    issued_at: u64,
}

/// An authorization request, sealed into the consent page.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConsentRequest {
    /// The client: a digest of its `client_id`.
    #[serde(rename = "c")]
    client: String,
    /// The client's name as claimed, for the page.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    /// The redirect URI, exactly as registered and requested.
    #[serde(rename = "u")]
    redirect_uri: String,
    /// The client's `state`.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    /// The client's S256 challenge.
    #[serde(rename = "h")]
    challenge: String,
    /// The client's `scope`, shown, never widening the upstream's.
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The origin the request was served under.
    #[serde(rename = "o")]
    origin: String,
}

/// The flow, sealed into the upstream `state`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FlowState {
    #[serde(rename = "c")]
    client: String,
    #[serde(rename = "u")]
    redirect_uri: String,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(rename = "h")]
    challenge: String,
    /// The gateway's own PKCE verifier at the upstream.
    #[serde(rename = "v")]
    verifier: String,
    /// The signed-in identity's key name and fingerprint.
    #[serde(rename = "i")]
    identity: String,
    #[serde(rename = "p")]
    fingerprint: String,
    #[serde(rename = "o")]
    origin: String,
    /// The flow id: names the flow-binding cookie and the single-use mark.
    #[serde(rename = "f")]
    flow: String,
    /// The flow-binding cookie's value.
    #[serde(rename = "b")]
    binding: String,
    /// When the state expires (the single-use mark is kept until then).
    #[serde(rename = "e")]
    expires: u64,
    /// The upstream client the gateway registered for itself, when it did (sealed with the flow,
    /// so any replica can redeem the code).
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    upstream_client: Option<String>,
    #[serde(rename = "z", default, skip_serializing_if = "Option::is_none")]
    upstream_secret: Option<String>,
}

/// A gateway authorization code.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CodeGrant {
    #[serde(rename = "g")]
    grant: String,
    #[serde(rename = "c")]
    client: String,
    #[serde(rename = "u")]
    redirect_uri: String,
    #[serde(rename = "h")]
    challenge: String,
    /// The single-use mark's id.
    #[serde(rename = "n")]
    nonce: String,
    #[serde(rename = "e")]
    expires: u64,
}

/// A gateway access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AccessClaims {
    #[serde(rename = "g")]
    grant: String,
    #[serde(rename = "i")]
    identity: String,
}

/// A gateway refresh token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RefreshClaims {
    #[serde(rename = "g")]
    grant: String,
    #[serde(rename = "n")]
    generation: u64,
    #[serde(rename = "c")]
    client: String,
}

fn seal_json<T: Serialize>(
    keys: &SealingKeys,
    purpose: Purpose,
    server: &str,
    expires: Option<UnixTime>,
    value: &T,
    random: &mut Random,
) -> Option<String> {
    let plaintext = serde_json::to_vec(value).ok()?;
    keys.seal(purpose, server, expires, &plaintext, random.array()).ok()
}

fn open_json<T: for<'de> Deserialize<'de>>(
    keys: &SealingKeys,
    purpose: Purpose,
    server: &str,
    now: UnixTime,
    sealed: &str,
) -> Option<T> {
    let plaintext = keys.open(purpose, server, now, sealed).ok()?;
    serde_json::from_slice(&plaintext).ok()
}

/// A short, stable digest of a `client_id` (a sealed registration may be long).
fn client_digest(client_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(client_id.as_bytes())[..18])
}

/// The gateway access token's grant and identity, when `token` is one sealed for `server` and
/// still valid at `now`.
pub fn open_access_token(
    keys: &SealingKeys,
    server: &str,
    now: UnixTime,
    token: &str,
) -> Option<(GrantId, String)> {
    let claims: AccessClaims = open_json(keys, Purpose::AccessToken, server, now, token)?;
    Some((GrantId::new(claims.grant), claims.identity))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// An HTML page for the browser-facing steps: no caching, no framing, no referrer.
fn page(status: StatusCode, title: &str, body: &str, form_action: Option<&str>) -> Response<Vec<u8>> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
         .who{{font-weight:600}}button{{font-size:1rem;padding:.4rem 1rem;margin-right:.5rem}}\
         input{{font-size:1rem;padding:.3rem;width:100%;box-sizing:border-box}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    );
    let mut response = Response::new(html.into_bytes());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    headers.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'{}",
        form_action.map(|extra| format!(" {extra}")).unwrap_or_default()
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(HeaderName::from_static("content-security-policy"), value);
    }
    response
}

/// A page that stops the flow, saying why and what to do.
fn stop_page(status: StatusCode, reason: &str, message: &str) -> Response<Vec<u8>> {
    let body =
        format!("<p>{}</p><p><small>reason: <code>{}</code></small></p>", escape(message), escape(reason));
    page(status, "Authorization stopped", &body, None)
}

/// HTML-escapes `text`, drops control and bidirectional-override characters, and cuts it to
/// [`MAX_CLIENT_NAME`] characters: client-supplied text never shapes the page.
pub(super) fn display_text(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .take(MAX_CLIENT_NAME)
        .collect();
    escape(&cleaned)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An OAuth error answer (RFC 6749 §5.2), never cached.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Vec<u8>> {
    let mut response = error_response(status, error, description);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn found(location: &Url, cookies: &[String]) -> Response<Vec<u8>> {
    let mut response = redirect(location);
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `location` with `pairs` appended to its query.
fn with_query(location: &str, pairs: &[(&str, &str)]) -> Option<Url> {
    let mut url = Url::parse(location).ok()?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    Some(url)
}

fn issuer(origin: &Origin, server: &str) -> String {
    format!("{origin}/{server}")
}

// ---------------------------------------------------------------------------------------------
// Cookies
// ---------------------------------------------------------------------------------------------

/// A cookie's name under `origin`: `__Host-` and `Secure` on https; on loopback http the port is
/// part of the name, so two gateways on one host keep apart (design §4.8).
fn cookie_name(origin: &Origin, base: &str) -> String {
    match origin.scheme() {
        Scheme::Https => format!("__Host-{base}"),
        Scheme::Http => format!("{base}_{}", origin.port()),
    }
}

fn set_cookie(origin: &Origin, name: &str, value: &str, same_site: &str, max_age: u64) -> String {
    let secure = if origin.scheme() == Scheme::Https { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}")
}

/// The value of cookie `name` in the request, if it is there exactly once.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned());
    let first = found.next();
    if found.next().is_some() { None } else { first }
}

fn is_token_text(value: &str) -> bool {
    (16..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// What every endpoint needs
// ---------------------------------------------------------------------------------------------

/// The inputs of one authorization-server request.
pub(super) struct Served<'a> {
    pub(super) head: &'a RequestHead<'a>,
    pub(super) origin: &'a Origin,
    pub(super) server: &'a ServerConfig,
    pub(super) config: &'a GatewayConfig,
    pub(super) now: UnixTime,
}

impl Served<'_> {
    fn keys(&self) -> Result<&SealingKeys, Response<Vec<u8>>> {
        self.config.settings.grants.sealing_keys.as_ref().ok_or_else(|| {
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_sealing_keys",
                "the gateway has no sealing key; set MCP_OAUTH_SEALING_KEYS",
            )
        })
    }

    fn name(&self) -> &str {
        &self.server.name
    }

    fn resource(&self) -> String {
        format!("{}/{}/mcp", self.origin, self.name())
    }
}

fn random_or_refuse(random: Option<[u8; 32]>) -> Result<Random, Response<Vec<u8>>> {
    random.map(Random::new).ok_or_else(|| {
        error_response(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the gateway has no random source")
    })
}

/// RFC 8414 metadata for `{origin}/{s}`.
pub(super) fn authorization_server_metadata(origin: &Origin, server: &ServerConfig) -> Value {
    let base = issuer(origin, &server.name);
    let mut document = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "revocation_endpoint": format!("{base}/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    });
    if let Some(scopes) = &server.entry.scopes {
        document["scopes_supported"] = json!(scopes);
    }
    document
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

/// Why a registration is refused (RFC 7591 §3.2.2 codes), with a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationRefused {
    /// `invalid_redirect_uri` or `invalid_client_metadata`.
    pub error: &'static str,
    /// What is wrong.
    pub description: String,
}

/// What a registration may hold (design §4.8): 1 to 5 `redirect_uris`, each allowed by §4.5 under
/// `origin`; a `client_name` of at most 100 characters; public clients only; the
/// authorization-code and refresh grants and the `code` response type only. Returns the
/// re-serialised redirect URIs and the name.
pub fn validate_registration(
    document: &Value,
    origin: &Origin,
    trusted: &crate::redirect::TrustedRedirectOrigins,
) -> Result<(Vec<String>, Option<String>), RegistrationRefused> {
    let refuse = |error: &'static str, description: String| Err(RegistrationRefused { error, description });
    let metadata = |description: &str| refuse("invalid_client_metadata", description.to_owned());
    let Value::Object(document) = document else {
        return metadata("the registration must be a JSON object");
    };
    let Some(Value::Array(uris)) = document.get("redirect_uris") else {
        return refuse("invalid_redirect_uri", "redirect_uris is required".to_owned());
    };
    if uris.is_empty() || uris.len() > MAX_REDIRECT_URIS {
        return refuse(
            "invalid_redirect_uri",
            format!("between 1 and {MAX_REDIRECT_URIS} redirect_uris are accepted"),
        );
    }
    let mut redirect_uris = Vec::with_capacity(uris.len());
    for uri in uris {
        let Some(uri) = uri.as_str() else {
            return refuse("invalid_redirect_uri", "a redirect_uri is not a string".to_owned());
        };
        let decision = validate_redirect_uri(uri, Some(origin), trusted);
        match decision.uri() {
            Some(valid) => redirect_uris.push(valid.as_str().to_owned()),
            None => {
                return refuse(
                    "invalid_redirect_uri",
                    format!("redirect_uri refused ({})", decision.reason()),
                );
            }
        }
    }
    let client_name = match document.get("client_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.chars().count() <= MAX_CLIENT_NAME => Some(name.clone()),
        Some(_) => {
            return metadata(&format!(
                "client_name must be a string of at most {MAX_CLIENT_NAME} characters"
            ));
        }
    };
    if !matches!(document.get("token_endpoint_auth_method").and_then(Value::as_str), None | Some("none")) {
        return metadata("only public clients register here: token_endpoint_auth_method must be none");
    }
    let listed = |field: &str, allowed: &[&str]| match document.get(field) {
        None | Some(Value::Null) => true,
        Some(Value::Array(values)) => {
            values.iter().all(|value| value.as_str().is_some_and(|v| allowed.contains(&v)))
        }
        Some(_) => false,
    };
    if !listed("grant_types", &["authorization_code", "refresh_token"]) {
        return metadata("grant_types may hold authorization_code and refresh_token only");
    }
    if !listed("response_types", &["code"]) {
        return metadata("response_types may hold code only");
    }
    Ok((redirect_uris, client_name))
}

/// `POST /{s}/register` (RFC 7591, public clients only): the registration sealed as the
/// `client_id`, the whole registration repeated in the 201.
pub(super) fn register(served: &Served<'_>, body: &[u8], random: Option<[u8; 32]>) -> Response<Vec<u8>> {
    let keys = match served.keys() {
        Ok(keys) => keys,
        Err(refusal) => return refusal,
    };
    let document = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let trusted = &served.config.settings.trusted_redirect_origins;
    let (redirect_uris, client_name) = match validate_registration(&document, served.origin, trusted) {
        Ok(valid) => valid,
        Err(refused) => return oauth_error(StatusCode::BAD_REQUEST, refused.error, &refused.description),
    };
    let mut random = match random_or_refuse(random) {
        Ok(random) => random,
        Err(refusal) => return refusal,
    };
    let registration = Registration { redirect_uris, client_name, issued_at: served.now.as_secs() };
    let metadata_error =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", description);
    let Some(client_id) =
        seal_json(keys, Purpose::Registration, served.name(), None, &registration, &mut random)
    else {
        return metadata_error("the registration is too large");
    };
    let mut response = json_response(
        StatusCode::CREATED,
        &json!({
            "client_id": client_id,
            "client_id_issued_at": registration.issued_at,
            "redirect_uris": registration.redirect_uris,
            "client_name": registration.client_name,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }),
    );
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A registered client, opened from its `client_id` (or read from its metadata document).
#[derive(Clone, Debug)]
pub(super) struct Client {
    digest: String,
    redirect_uris: Vec<String>,
    name: Option<String>,
}

fn open_client(keys: &SealingKeys, server: &str, now: UnixTime, client_id: &str) -> Option<Client> {
    let registration: Registration = open_json(keys, Purpose::Registration, server, now, client_id)?;
    Some(Client {
        digest: client_digest(client_id),
        redirect_uris: registration.redirect_uris,
        name: registration.client_name,
    })
}

/// Whether `requested` is one of the client's registered redirect URIs: equal after
/// re-serialisation, except that a loopback `http` URI may use another port (RFC 8252 §7.3).
fn registered_redirect(client: &Client, requested: &Url) -> bool {
    client.redirect_uris.iter().filter_map(|uri| Url::parse(uri).ok()).any(|registered| {
        if registered == *requested {
            return true;
        }
        let loopback = |url: &Url| {
            url.scheme() == "http" && url.host_str().is_some_and(crate::redirect::is_loopback_host)
        };
        loopback(&registered)
            && loopback(requested)
            && registered.host_str() == requested.host_str()
            && registered.path() == requested.path()
            && registered.query() == requested.query()
    })
}

// ---------------------------------------------------------------------------------------------
// Authorize and consent
// ---------------------------------------------------------------------------------------------

/// `GET /{s}/authorize`: checks the request and answers with the consent page, the request sealed
/// into it.
pub(super) fn authorize(
    served: &Served<'_>,
    random: Option<[u8; 32]>,
    documents: Option<&ClientDocuments>,
    now: Instant,
) -> Action {
    let bad = |reason: &str, message: &str| stop_page(StatusCode::BAD_REQUEST, reason, message);
    let keys = match served.keys() {
        Ok(keys) => keys,
        Err(refusal) => return Action::Respond(refusal),
    };
    let entry = &served.server.entry;
    if entry.authorization_url.is_none() || (entry.client_id.is_none() && entry.registration_url.is_none()) {
        return Action::Respond(stop_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_client_missing",
            "The gateway has no client at this server's authorization server: set client_id (or registration_url, and authorization_url) for it in the gateway's configuration, registering the gateway's callback URL there (mcp-oauth check config prints it).",
        ));
    }
    let pairs = query_pairs(served.head.path_and_query);
    if let Err(refusal) = check_authorize_sizes(&pairs) {
        return Action::Respond(refusal);
    }
    let mut values = std::collections::HashMap::new();
    for name in [
        "client_id",
        "redirect_uri",
        "response_type",
        "code_challenge",
        "code_challenge_method",
        "state",
        "scope",
        "resource",
    ] {
        match single(&pairs, name) {
            Ok(value) => {
                values.insert(name, value);
            }
            Err(message) => return Action::Respond(bad("invalid_request", &message)),
        }
    }
    let value = |name: &str| values.get(name).cloned().flatten();
    let Some(client_id) = value("client_id") else {
        return Action::Respond(bad("invalid_request", "client_id is required"));
    };
    let client = (client_id.clone(), open_client(keys, served.name(), served.now, &client_id));
    let (client_id, client) = client;
    let params = AuthorizeParams {
        redirect_uri: value("redirect_uri"),
        response_type: value("response_type"),
        challenge: value("code_challenge"),
        method: value("code_challenge_method"),
        state: value("state"),
        scope: value("scope"),
        resource: value("resource"),
    };
    let csrf_name = cookie_name(served.origin, "mcp_csrf");
    let inputs = AuthorizeInputs {
        server: served.server.clone(),
        origin: served.origin.clone(),
        keys: keys.clone(),
        now: served.now,
        trusted: served.config.settings.trusted_redirect_origins.clone(),
        csrf: cookie(served.head.headers, &csrf_name).filter(|value| is_token_text(value)),
        params,
    };
    let random = match random_or_refuse(random) {
        Ok(random) => random,
        Err(refusal) => return Action::Respond(refusal),
    };
    let cached = documents.and_then(|documents| documents.get(&client_id, now));
    match client.or(cached) {
        Some(client) => Action::Respond(inputs.answer(&client, random)),
        None => match cimd_request(&client_id) {
            Some(request) => {
                let mut machine = Authz::new(served, keys, random, Stage::Taken);
                machine.pending = Some(AuthzStep::Send(request));
                machine.stage = Stage::ClientDocument { url: client_id, inputs: Box::new(inputs) };
                Action::Authz(Box::new(machine))
            }
            None => Action::Respond(bad(
                "invalid_client",
                "This application's registration is not valid here (the gateway's keys may have changed). Remove the server from your MCP client and add it again.",
            )),
        },
    }
}

/// The parameters of an authorization request.
#[derive(Debug)]
struct AuthorizeParams {
    redirect_uri: Option<String>,
    response_type: Option<String>,
    challenge: Option<String>,
    method: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
}

/// Everything the consent page needs once the client is known (after a Client ID Metadata
/// Document was fetched, the request's head is gone).
#[derive(Debug)]
struct AuthorizeInputs {
    server: ServerConfig,
    origin: Origin,
    keys: SealingKeys,
    now: UnixTime,
    trusted: crate::redirect::TrustedRedirectOrigins,
    csrf: Option<String>,
    params: AuthorizeParams,
}

impl AuthorizeInputs {
    /// The consent page for `client`, or the 400 page saying what is wrong with the request.
    fn answer(self, client: &Client, mut random: Random) -> Response<Vec<u8>> {
        let bad = |reason: &str, message: &str| stop_page(StatusCode::BAD_REQUEST, reason, message);
        let params = self.params;
        let Some(requested) = params.redirect_uri else {
            return bad("invalid_request", "redirect_uri is required");
        };
        let decision = validate_redirect_uri(&requested, Some(&self.origin), &self.trusted);
        let Some(redirect) = decision.uri().cloned() else {
            return bad("invalid_redirect_uri", "the redirect_uri is not allowed");
        };
        if !registered_redirect(client, &redirect) {
            return bad("invalid_redirect_uri", "the redirect_uri is not one this application registered");
        }
        if params.response_type.as_deref() != Some("code") {
            return bad("unsupported_response_type", "response_type must be code");
        }
        let challenge = params.challenge.filter(|challenge| (43..=128).contains(&challenge.len()));
        let (Some(challenge), Some("S256")) = (challenge, params.method.as_deref()) else {
            return bad("invalid_request", "PKCE with code_challenge_method=S256 is required");
        };
        let resource = format!("{}/{}/mcp", self.origin, self.server.name);
        if params.resource.as_deref().is_some_and(|sent| sent != resource) {
            return bad("invalid_target", "resource must name this server's MCP endpoint");
        }
        let request = ConsentRequest {
            client: client.digest.clone(),
            client_name: client.name.clone(),
            redirect_uri: redirect.as_str().to_owned(),
            state: params.state,
            challenge,
            scope: params.scope,
            origin: self.origin.to_string(),
        };
        let expires = self.now.plus(FLOW_LIFETIME);
        let Some(sealed) = seal_json(
            &self.keys,
            Purpose::ConsentRequest,
            &self.server.name,
            Some(expires),
            &request,
            &mut random,
        ) else {
            return bad("invalid_request", "the authorization request is too large");
        };
        // An existing valid CSRF cookie is reused, so two open consent tabs both work.
        let (csrf, fresh) = match self.csrf {
            Some(existing) => (existing, false),
            None => (random.token::<16>(), true),
        };
        let mut response = consent_page(&self.server, &request, &sealed, &csrf, StatusCode::OK, None);
        if fresh {
            let name = cookie_name(&self.origin, "mcp_csrf");
            let set = set_cookie(&self.origin, &name, &csrf, "Strict", FLOW_LIFETIME.as_secs());
            if let Ok(value) = HeaderValue::from_str(&set) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

/// The largest Client ID Metadata Document read.
pub const MAX_CLIENT_DOCUMENT: usize = 5 * 1024;

/// The fetch of a Client ID Metadata Document, when `client_id` is one: an https URL with a path,
/// port 443, no userinfo or fragment, fetched in the strict mode (public addresses only), 10 s,
/// at most 5 KiB, redirects not followed.
fn cimd_request(client_id: &str) -> Option<UpstreamRequest> {
    let url = Url::parse(client_id).ok()?;
    let strict = url.scheme() == "https"
        && url.port_or_known_default() == Some(443)
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && url.path() != "/"
        && url.host_str().is_some_and(|host| !host.is_empty());
    if !strict || url.as_str() != client_id {
        return None;
    }
    let uri = client_id.parse::<http::Uri>().ok()?;
    let mut request = http::Request::new(Bytes::new());
    *request.uri_mut() = uri;
    request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    Some(UpstreamRequest {
        request,
        allow_private: false,
        timeout: Duration::from_secs(10),
        read: Read::Whole(MAX_CLIENT_DOCUMENT),
    })
}

/// How long a metadata document may be cached: its `Cache-Control: max-age`, at most 24 hours;
/// nothing without one, or with `no-store` or `no-cache`.
fn document_lifetime(answer: &Response<Bytes>) -> Option<std::time::Duration> {
    let value = answer.headers().get(header::CACHE_CONTROL)?.to_str().ok()?.to_ascii_lowercase();
    let directives: Vec<&str> = value.split(',').map(str::trim).collect();
    if directives.iter().any(|directive| matches!(*directive, "no-store" | "no-cache")) {
        return None;
    }
    let seconds: u64 =
        directives.iter().find_map(|directive| directive.strip_prefix("max-age="))?.parse().ok()?;
    Some(std::time::Duration::from_secs(seconds.min(MAX_DOCUMENT_LIFETIME.as_secs())))
        .filter(|lifetime| !lifetime.is_zero())
}

/// A fetched Client ID Metadata Document on its way into the cache.
#[derive(Debug)]
pub struct ClientDocument {
    pub(super) url: String,
    pub(super) client: Client,
    pub(super) lifetime: std::time::Duration,
}

/// The longest a Client ID Metadata Document is cached (design §4.8).
pub const MAX_DOCUMENT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The most Client ID Metadata Documents cached at once.
pub const MAX_CACHED_DOCUMENTS: usize = 1024;

/// Client ID Metadata Documents fetched, by exact URL, until their lifetime ends (design §4.8:
/// failures are not cached; bounded, the oldest entry leaves first).
#[derive(Debug, Default)]
pub struct ClientDocuments {
    entries: HashMap<String, (Client, Instant)>,
    order: std::collections::VecDeque<String>,
}

impl ClientDocuments {
    fn get(&self, url: &str, now: Instant) -> Option<Client> {
        self.entries.get(url).filter(|(_, until)| now < *until).map(|(client, _)| client.clone())
    }

    /// Keeps a document read from `url` until `until`.
    pub(super) fn insert(&mut self, url: String, client: Client, until: Instant) {
        if !self.entries.contains_key(&url) {
            while self.entries.len() >= MAX_CACHED_DOCUMENTS {
                let Some(oldest) = self.order.pop_front() else { break };
                self.entries.remove(&oldest);
            }
            self.order.push_back(url.clone());
        }
        self.entries.insert(url, (client, until));
    }
}

/// A Client ID Metadata Document read as a client: its `client_id` must equal the URL it came
/// from, it must be a public client, and it must list redirect URIs.
fn client_from_document(url: &str, answer: &Response<Bytes>) -> Option<Client> {
    if !answer.status().is_success() {
        return None;
    }
    let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(answer.body()) else {
        return None;
    };
    if document.get("client_id").and_then(Value::as_str) != Some(url) {
        return None;
    }
    if !matches!(document.get("token_endpoint_auth_method").and_then(Value::as_str), None | Some("none")) {
        return None;
    }
    let redirect_uris: Vec<String> = document
        .get("redirect_uris")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .take(MAX_REDIRECT_URIS)
        .map(str::to_owned)
        .collect();
    if redirect_uris.is_empty() {
        return None;
    }
    // The document's host is the part of its name the gateway can vouch for.
    let host = Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_owned)).unwrap_or_default();
    let claimed = document
        .get("client_name")
        .and_then(Value::as_str)
        .map(|name| name.chars().take(MAX_CLIENT_NAME).collect::<String>());
    let name = Some(match claimed {
        Some(claimed) => format!("{claimed} ({host})"),
        None => host,
    });
    Some(Client { digest: client_digest(url), redirect_uris, name })
}

/// The origin of a URL, for `form-action`.
fn origin_of(url: &str) -> Option<String> {
    Url::parse(url).ok().map(|url| url.origin().ascii_serialization()).filter(|origin| origin != "null")
}

/// The consent page (design §4.8: the form and its fields are a contract).
fn consent_page(
    server: &ServerConfig,
    request: &ConsentRequest,
    sealed: &str,
    csrf: &str,
    status: StatusCode,
    notice: Option<&str>,
) -> Response<Vec<u8>> {
    let redirect = Url::parse(&request.redirect_uri).ok();
    let redirect_host =
        redirect.as_ref().and_then(|url| url.host_str().map(str::to_owned)).unwrap_or_default();
    let on_this_computer =
        redirect.as_ref().is_some_and(|url| url.host_str().is_some_and(crate::redirect::is_loopback_host));
    let who = match (&request.client_name, on_this_computer) {
        (Some(name), true) => {
            format!("<span class=\"who\">{}</span> (an application on this computer)", display_text(name))
        }
        (Some(name), false) => {
            format!("<span class=\"who\">{}</span> (as it names itself)", display_text(name))
        }
        (None, true) => "An application on this computer".to_owned(),
        (None, false) => "An application".to_owned(),
    };
    let scopes = server.entry.scopes.as_ref().map(|scopes| scopes.join(" ")).unwrap_or_default();
    let notice = notice.map(|text| format!("<p><strong>{}</strong></p>", escape(text))).unwrap_or_default();
    let body = format!(
        "{notice}<p>{who} asks to use <span class=\"who\">{server}</span> through this gateway, as you.</p>\
         <p>It will receive the answer at <code>{host}</code>.{scopes}</p>\
         <form method=\"post\" action=\"/{server_path}/consent\">\
         <input type=\"hidden\" name=\"request\" value=\"{sealed}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label>Gateway key<br><input type=\"password\" name=\"gateway_key\" autocomplete=\"current-password\"></label></p>\
         <p><button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></p></form>",
        server = escape(server.name.as_str()),
        server_path = escape(server.name.as_str()),
        host = display_text(&redirect_host),
        scopes = if scopes.is_empty() {
            String::new()
        } else {
            format!(" Access: <code>{}</code>.", escape(&scopes))
        },
        sealed = escape(sealed),
        csrf = escape(csrf),
    );
    let upstream = server.entry.authorization_url.as_deref().and_then(origin_of);
    let client = origin_of(&request.redirect_uri);
    let extra: Vec<String> = [upstream, client].into_iter().flatten().collect();
    page(status, &format!("Sign in to {}", server.name.as_str()), &body, Some(&extra.join(" ")))
}

/// What `POST /{s}/consent` needs besides the request.
pub(super) struct ConsentInputs<'a> {
    pub(super) body: &'a [u8],
    pub(super) random: Option<[u8; 32]>,
    pub(super) failures: &'a mut crate::budget::PeerBudget,
    pub(super) now: Instant,
    /// The upstream client the gateway registered for this server and origin, if it has.
    pub(super) registered: Option<UpstreamClientInfo>,
}

/// `POST /{s}/consent`: the user's decision, signed in with a gateway key.
pub(super) fn consent(served: &Served<'_>, inputs: ConsentInputs<'_>) -> Action {
    let mut audit = None;
    let random = inputs.random;
    let response = match consent_answer(served, inputs, &mut audit) {
        Ok(response) => response,
        Err(approved) => return register_first(served, *approved, random, audit),
    };
    match (audit, served.keys()) {
        // The audit line travels with the answer (design §4.8: one line per approve or deny).
        (Some(event), Ok(keys)) => {
            let mut machine = Authz::new(served, keys, Random::new([0; 32]), Stage::Done(Box::new(response)));
            machine.audit.push(event);
            Action::Authz(Box::new(machine))
        }
        _ => Action::Respond(response),
    }
}

/// An approved consent for a server whose upstream client the gateway must register first.
fn register_first(
    served: &Served<'_>,
    approved: Approved,
    random: Option<[u8; 32]>,
    audit: Option<Audit>,
) -> Action {
    if let (Ok(keys), Some(random)) = (served.keys(), random) {
        let mut machine = Authz::new(served, keys, Random::new(random), Stage::Taken);
        machine.audit.extend(audit);
        // Another replica (or this process before a restart) may have registered already.
        let id = Grant::registration_id(&served.server.name, &served.origin.to_string());
        machine.ask(StoreOp::GetGrant { id }, Stage::RegistrationRead { approved: Box::new(approved) });
        return Action::Authz(Box::new(machine));
    }
    Action::Respond(error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the gateway has no random source",
    ))
}

fn consent_answer(
    served: &Served<'_>,
    inputs: ConsentInputs<'_>,
    audit: &mut Option<Audit>,
) -> Result<Response<Vec<u8>>, Box<Approved>> {
    let bad = |reason: &str, message: &str| stop_page(StatusCode::BAD_REQUEST, reason, message);
    let keys = match served.keys() {
        Ok(keys) => keys,
        Err(refusal) => return Ok(refusal),
    };
    let Ok(form) = parse_form(inputs.body) else {
        return Ok(bad("invalid_request", "the form is malformed"));
    };
    let field = |name: &str| form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let csrf_name = cookie_name(served.origin, "mcp_csrf");
    let (Some(csrf), Some(cookie_value)) = (field("csrf"), cookie(served.head.headers, &csrf_name)) else {
        return Ok(bad(
            "csrf_mismatch",
            "This page expired or came from elsewhere. Start the sign-in again from your MCP client.",
        ));
    };
    if !is_token_text(csrf) || !equal(csrf, &cookie_value) {
        return Ok(bad(
            "csrf_mismatch",
            "This page expired or came from elsewhere. Start the sign-in again from your MCP client.",
        ));
    }
    let sealed = field("request").unwrap_or_default();
    let Some(request) =
        open_json::<ConsentRequest>(keys, Purpose::ConsentRequest, served.name(), served.now, sealed)
    else {
        return Ok(bad("invalid_request", "This sign-in expired. Start it again from your MCP client."));
    };
    if request.origin != served.origin.to_string() {
        return Ok(bad("origin_mismatch", "This sign-in began under another address of the gateway."));
    }
    let iss = issuer(served.origin, served.name());
    let back = |pairs: &mut Vec<(&str, String)>| {
        if let Some(state) = &request.state {
            pairs.push(("state", state.clone()));
        }
        pairs.push(("iss", iss.clone()));
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(name, value)| (*name, value.as_str())).collect();
        with_query(&request.redirect_uri, &borrowed)
    };
    let event = |event: &'static str, identity: Option<String>, reason: Option<&'static str>| Audit {
        event,
        server: served.name().to_owned(),
        identity,
        client_host: Authz::client_host(&request.redirect_uri),
        reason,
    };
    match field("decision") {
        Some("deny") => {
            *audit = Some(event("consent_denied", None, Some("access_denied")));
            return Ok(match back(&mut vec![("error", "access_denied".to_owned())]) {
                Some(location) => found(&location, &[]),
                None => bad("invalid_request", "the redirect_uri is not a URL"),
            });
        }
        Some("approve") => {}
        _ => return Ok(bad("invalid_request", "decision must be approve or deny")),
    }
    let identity = super::identity_of_key(field("gateway_key"), served.config);
    let Some(identity) = identity else {
        *audit = Some(event("consent_refused", None, Some("invalid_gateway_key")));
        if let Err(over) = inputs.failures.spend(served.head.peer, inputs.now) {
            return Ok(over_budget(&over));
        }
        return Ok(consent_page(
            served.server,
            &request,
            sealed,
            csrf,
            StatusCode::UNAUTHORIZED,
            Some("That gateway key is not valid."),
        ));
    };
    let entry = &served.server.entry;
    let random = match random_or_refuse(inputs.random) {
        Ok(random) => random,
        Err(refusal) => return Ok(refusal),
    };
    *audit = Some(event("consent_approved", Some(identity.name.clone()), None));
    let approved = Approved {
        server: served.server.clone(),
        origin: served.origin.clone(),
        keys: keys.clone(),
        now: served.now,
        request,
        identity,
    };
    match configured_client(served.server).or(inputs.registered) {
        Some(client) => Ok(approved.redirect_upstream(&client, random)),
        // The gateway registers itself at the upstream first (RFC 7591): a machine step.
        None if entry.registration_url.is_some() => Err(Box::new(approved)),
        None => Ok(stop_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_client_missing",
            "The gateway has no client at this server's authorization server: set client_id (or registration_url) for it in the gateway's configuration.",
        )),
    }
}

/// The gateway's own client at a server's upstream authorization server: the configured
/// `client_id` (and secret), or one the gateway registered for itself (RFC 7591).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamClientInfo {
    /// The `client_id`.
    pub client_id: String,
    /// The secret, when there is one.
    pub client_secret: Option<Secret>,
    /// Whether the gateway registered it (it then travels sealed with the flow and the grant).
    pub registered: bool,
}

impl std::fmt::Debug for UpstreamClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClientInfo")
            .field("client_id", &self.client_id)
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

/// The configured upstream client of `server`, if any.
pub(super) fn configured_client(server: &ServerConfig) -> Option<UpstreamClientInfo> {
    let client_id = server.entry.client_id.clone()?;
    Some(UpstreamClientInfo {
        client_id,
        client_secret: server.entry.client_secret.clone(),
        registered: false,
    })
}

/// An approved consent, waiting for the upstream client to send the browser upstream.
#[derive(Debug)]
pub(super) struct Approved {
    server: ServerConfig,
    origin: Origin,
    keys: SealingKeys,
    now: UnixTime,
    request: ConsentRequest,
    identity: Identity,
}

impl Approved {
    /// The 302 to the upstream authorization endpoint with the gateway's own PKCE and
    /// `resource`, the flow sealed into `state`, and the flow-binding cookie.
    fn redirect_upstream(self, client: &UpstreamClientInfo, mut random: Random) -> Response<Vec<u8>> {
        let entry = &self.server.entry;
        let Some(authorization_url) = entry.authorization_url.as_deref() else {
            return stop_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_client_missing",
                "The server has no authorization_url: set it in the gateway's configuration.",
            );
        };
        let pkce = crate::pkce::Pkce::from_random(random.array());
        let expires = self.now.plus(FLOW_LIFETIME);
        let request = &self.request;
        let flow = FlowState {
            client: request.client.clone(),
            redirect_uri: request.redirect_uri.clone(),
            state: request.state.clone(),
            challenge: request.challenge.clone(),
            verifier: pkce.verifier().expose().to_owned(),
            identity: self.identity.name.clone(),
            fingerprint: URL_SAFE_NO_PAD.encode(self.identity.fingerprint),
            origin: request.origin.clone(),
            flow: random.token::<6>(),
            binding: random.token::<16>(),
            expires: expires.as_secs(),
            upstream_client: client.registered.then(|| client.client_id.clone()),
            upstream_secret: client
                .registered
                .then(|| client.client_secret.as_ref().map(|secret| secret.expose().to_owned()))
                .flatten(),
        };
        let name = self.server.name.as_str();
        let Some(sealed_flow) =
            seal_json(&self.keys, Purpose::State, name, Some(expires), &flow, &mut random)
        else {
            return stop_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the authorization request is too large",
            );
        };
        let mut pairs = vec![
            ("response_type", "code".to_owned()),
            ("client_id", client.client_id.clone()),
            ("redirect_uri", format!("{}/callback", self.origin)),
            ("state", format!("{name}.{sealed_flow}")),
            ("code_challenge", pkce.challenge().to_owned()),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(scopes) = entry.scopes.as_ref().filter(|scopes| !scopes.is_empty()) {
            pairs.push(("scope", scopes.join(" ")));
        }
        if let Some(resource) = upstream_resource(&self.server) {
            pairs.push(("resource", resource));
        }
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let Some(location) = with_query(authorization_url, &borrowed) else {
            return stop_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_misconfigured",
                "The server's authorization_url is not a URL.",
            );
        };
        let binding = set_cookie(
            &self.origin,
            &cookie_name(&self.origin, &format!("mcp_flow_{}", flow.flow)),
            &flow.binding,
            "Lax",
            FLOW_LIFETIME.as_secs(),
        );
        found(&location, &[binding])
    }

    /// The gateway's registration at the upstream (RFC 7591): its callback as the one redirect
    /// URI, the authorization-code and refresh grants, a confidential client.
    fn registration_request(&self, limits: &CallLimits) -> Option<UpstreamRequest> {
        let url = self.server.entry.registration_url.as_deref()?;
        let uri = url.parse::<http::Uri>().ok()?;
        let body = json!({
            "client_name": format!("mcp-oauth gateway ({})", self.server.name),
            "redirect_uris": [format!("{}/callback", self.origin)],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        });
        let mut request = http::Request::new(Bytes::from(body.to_string()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        Some(UpstreamRequest {
            request,
            allow_private: crate::fetch_policy::is_local_server(&self.server.url),
            timeout: limits.token_timeout,
            read: Read::Whole(limits.max_token_response),
        })
    }
}

/// The client an upstream registration answer issued, if it is usable.
fn registered_client(answer: &Response<Bytes>) -> Option<UpstreamClientInfo> {
    if !answer.status().is_success() {
        return None;
    }
    let document: Value = serde_json::from_slice(answer.body()).ok()?;
    let client_id = document.get("client_id")?.as_str().filter(|id| !id.is_empty() && id.len() <= 512)?;
    let client_secret = document
        .get("client_secret")
        .and_then(Value::as_str)
        .filter(|secret| secret.len() <= 1024)
        .map(Secret::new);
    Some(UpstreamClientInfo { client_id: client_id.to_owned(), client_secret, registered: true })
}

/// The upstream client a flow runs with: the one the gateway registered (sealed in the flow), else
/// the configured one.
fn flow_client(server: &ServerConfig, flow: &FlowState) -> Option<UpstreamClientInfo> {
    match &flow.upstream_client {
        Some(client_id) => Some(UpstreamClientInfo {
            client_id: client_id.clone(),
            client_secret: flow.upstream_secret.as_deref().map(Secret::new),
            registered: true,
        }),
        None => configured_client(server),
    }
}

/// The redirect URI to register for the gateway at `server`'s upstream authorization server
/// (interactive servers that do not delegate): `{origin}/callback`, or a template naming the
/// missing `PROXY_BASE_URL` when no origin is configured.
pub fn upstream_callback(server: &ServerConfig, origin: Option<&Origin>) -> Option<String> {
    server.policy.gateway_authorizes().then(|| match origin {
        Some(origin) => format!("{origin}/callback"),
        None => "{PROXY_BASE_URL}/callback (set PROXY_BASE_URL to the gateway's public origin)".to_owned(),
    })
}

/// A token request to `server`'s upstream token endpoint as the gateway's own client (the
/// configured `client_id`, its secret per `token_endpoint_auth_method`, and `resource`), under
/// the token limits and the server's fetch policy.
pub(super) fn upstream_token_request(
    server: &ServerConfig,
    client: &UpstreamClientInfo,
    grant: &crate::client::token::Grant<'_>,
    limits: &CallLimits,
) -> Option<UpstreamRequest> {
    let endpoint = Url::parse(server.entry.token_url.as_deref()?).ok()?;
    let resource = upstream_resource(server);
    upstream_client_request(server, client, grant, &endpoint, resource.as_deref(), limits)
}

/// A form request to `endpoint` as the gateway's own upstream client (its authentication per
/// `token_endpoint_auth_method`), under the token limits and the server's fetch policy.
fn upstream_client_request(
    server: &ServerConfig,
    client: &UpstreamClientInfo,
    grant: &crate::client::token::Grant<'_>,
    endpoint: &Url,
    resource: Option<&str>,
    limits: &CallLimits,
) -> Option<UpstreamRequest> {
    use crate::client::token::{
        Client as TokenClient, TokenEndpointAuth, choose_token_endpoint_auth, token_request,
    };
    let entry = &server.entry;
    // A registered client asked for client_secret_basic; a configured one uses its setting.
    let configured = if client.registered {
        Some(TokenEndpointAuth::ClientSecretBasic)
    } else {
        entry.token_endpoint_auth_method
    };
    let client = TokenClient {
        client_id: &client.client_id,
        client_secret: client.client_secret.as_ref(),
        auth: choose_token_endpoint_auth(None, client.client_secret.is_some(), configured),
    };
    let request = token_request(endpoint, &client, grant, &[], resource).ok()?;
    Some(UpstreamRequest {
        request: request.map(Bytes::from),
        allow_private: crate::fetch_policy::is_local_server(&server.url),
        timeout: limits.token_timeout,
        read: Read::Whole(limits.max_token_response),
    })
}

/// Whether `grant`'s identity is still a configured gateway key with its fingerprint (changing or
/// removing a key ends its grants).
pub(super) fn identity_holds(config: &GatewayConfig, keys: &SealingKeys, grant: &Grant) -> bool {
    config.settings.named_gateway_keys().any(|(name, key)| grant.identity.is_held_by(&name, key, keys))
}

/// The RFC 8707 `resource` the gateway asks its upstream tokens for (design §4.3): the server's
/// URL, the configured `resource:`, or none (`resource: null`, Microsoft Entra).
pub fn upstream_resource(server: &ServerConfig) -> Option<String> {
    m2m_resource(server)
}

// ---------------------------------------------------------------------------------------------
// The store-backed steps: callback, token, revoke
// ---------------------------------------------------------------------------------------------

/// What the adapter does next for an [`Authz`] machine.
#[derive(Debug)]
pub enum AuthzStep {
    /// Apply this grant-store operation; answer with [`Authz::handle_store`].
    Store(StoreOp),
    /// Send this request upstream (read whole); answer with [`Authz::handle_answer`].
    Send(UpstreamRequest),
    /// Answer the caller with this; the machine is done.
    Respond(Response<Vec<u8>>),
}

/// One audit event (design §4.8): the adapter logs it at `info`; never a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// What happened: `consent_approved`, `grant_created`, `grant_refreshed`, `grant_revoked`, ….
    pub event: &'static str,
    /// The server.
    pub server: String,
    /// The identity's key name, when known.
    pub identity: Option<String>,
    /// The client's redirect host, when known.
    pub client_host: Option<String>,
    /// Why (a reason code), when it is a refusal or a revocation.
    pub reason: Option<&'static str>,
}

/// Where a machine is.
#[derive(Debug)]
enum Stage {
    /// Callback: the single-use mark is being taken.
    CallbackMark { flow: FlowState, code: Option<String>, error: Option<(String, Option<String>)> },
    /// Consent: reading the registration the gateway keeps for this server and origin.
    RegistrationRead { approved: Box<Approved> },
    /// Consent: the gateway is registering itself at the upstream.
    RegisterUpstream { approved: Box<Approved> },
    /// Consent: keeping the new registration in the store.
    RegistrationStore { approved: Box<Approved>, client: UpstreamClientInfo },
    /// Authorize: the client's metadata document is being fetched.
    ClientDocument { url: String, inputs: Box<AuthorizeInputs> },
    /// Callback: the upstream token endpoint is redeeming the code.
    CallbackRedeem { flow: FlowState },
    /// Callback: the grant is being written.
    CallbackStore { flow: FlowState, grant: Box<Grant> },
    /// Callback: the identity's pointer to its newest grant is being written.
    CallbackPointer { flow: FlowState, grant: Box<Grant> },
    /// Token: the code's single-use mark is being taken.
    CodeMark { code: CodeGrant },
    /// Token: the code was used twice; reading the grant to revoke it.
    CodeReplayRead,
    /// Token: reading the grant a code names.
    CodeRead { code: CodeGrant },
    /// Token: advancing the refresh generation.
    RefreshAdvance { claims: RefreshClaims },
    /// Token: reading the grant after the generation advanced (or did not).
    RefreshRead { claims: RefreshClaims, advanced: bool },
    /// Token: taking the grant's lock to extend its lifetime.
    ExtendLock { claims: RefreshClaims, grant: Box<Grant>, holder: crate::grant::LockHolder },
    /// Token: reading the grant under the lock.
    ExtendRead { claims: RefreshClaims, holder: crate::grant::LockHolder },
    /// Token: writing the extended grant.
    ExtendPut { claims: RefreshClaims, grant: Box<Grant>, holder: crate::grant::LockHolder },
    /// Token: releasing the lock.
    ExtendUnlock { claims: RefreshClaims, grant: Box<Grant> },
    /// Token: moving the identity's newest-grant pointer to the extended grant.
    ExtendPointer { claims: RefreshClaims, grant: Box<Grant> },
    /// Revoke: reading the grant.
    RevokeRead,
    /// Writing a revoked grant; then revoke upstream (best effort) and answer with the response.
    Revoking { response: Box<Response<Vec<u8>>>, upstream: Option<Box<UpstreamRequest>> },
    /// Revoking the upstream refresh token; then answer with the response.
    RevokingUpstream { response: Box<Response<Vec<u8>>> },
    /// Done: the answer is ready.
    Done(Box<Response<Vec<u8>>>),
    /// Taken by `poll`.
    Taken,
}

/// A callback, token or revocation request: a small machine over the grant store (and, at the
/// callback, the upstream token endpoint), driven like the forwarded call (see the module docs).
#[derive(Debug)]
pub struct Authz {
    server: ServerConfig,
    keys: SealingKeys,
    origin: Origin,
    now: UnixTime,
    random: Random,
    max_lifetime: Duration,
    limits: CallLimits,
    pending: Option<AuthzStep>,
    stage: Stage,
    audit: Vec<Audit>,
    remembered: Option<UpstreamClientInfo>,
    document: Option<(String, Client, std::time::Duration)>,
    config_keys: Vec<(String, Secret)>,
}

impl Authz {
    fn new(served: &Served<'_>, keys: &SealingKeys, random: Random, stage: Stage) -> Self {
        Self {
            server: served.server.clone(),
            keys: keys.clone(),
            origin: served.origin.clone(),
            now: served.now,
            random,
            max_lifetime: served.config.settings.grants.max_lifetime,
            limits: CallLimits::default(),
            pending: None,
            stage,
            audit: Vec::new(),
            remembered: None,
            document: None,
            config_keys: served
                .config
                .settings
                .named_gateway_keys()
                .map(|(name, key)| (name.into_owned(), key.clone()))
                .collect(),
        }
    }

    /// The limits of the upstream request (the adapter's server options).
    #[must_use]
    pub fn with_limits(mut self, limits: CallLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The upstream client the gateway registered for itself in this request, for the adapter
    /// to keep for the server and origin (see [`OAuthState::remember_upstream_client`]).
    pub fn take_registered_client(&mut self) -> Option<(String, Origin, UpstreamClientInfo)> {
        let client = self.remembered.take()?;
        Some((self.server.name.clone(), self.origin.clone(), client))
    }

    /// A Client ID Metadata Document this request fetched and may be cached, for the adapter to
    /// keep in [`OAuthState`] (see [`OAuthState::remember_client_document`]).
    pub fn take_client_document(&mut self) -> Option<ClientDocument> {
        self.document.take().map(|(url, client, lifetime)| ClientDocument { url, client, lifetime })
    }

    /// The audit events so far (drained).
    pub fn take_audit(&mut self) -> Vec<Audit> {
        std::mem::take(&mut self.audit)
    }

    /// What to do next.
    pub fn poll(&mut self) -> AuthzStep {
        if let Some(step) = self.pending.take() {
            return step;
        }
        match std::mem::replace(&mut self.stage, Stage::Taken) {
            Stage::Done(response) => AuthzStep::Respond(*response),
            other => {
                self.stage = other;
                AuthzStep::Respond(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the gateway's driver skipped a step",
                ))
            }
        }
    }

    /// The client a kept registration record holds, if it is one for this server and opens.
    fn kept_registration(&self, record: &Grant) -> Option<UpstreamClientInfo> {
        let client = record.registration()?;
        if record.server != self.server.name || record.is_expired(self.now) {
            return None;
        }
        let client_secret = match &client.client_secret {
            Some(sealed) => Some(sealed.open(&self.keys, &record.server, &record.id, self.now).ok()?),
            None => None,
        };
        Some(UpstreamClientInfo { client_id: client.client_id.clone(), client_secret, registered: true })
    }

    /// Registers the gateway at the upstream's registration endpoint (RFC 7591).
    fn register_upstream(&mut self, approved: Approved) {
        match approved.registration_request(&self.limits) {
            Some(request) => {
                self.pending = Some(AuthzStep::Send(request));
                self.stage = Stage::RegisterUpstream { approved: Box::new(approved) };
            }
            None => self.finish(stop_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_misconfigured",
                "The server's registration_url is not a URL.",
            )),
        }
    }

    /// Keeps a new registration in the store (its secret sealed to the record), so every replica
    /// and the next start use it, then sends the browser upstream.
    fn keep_registration(&mut self, approved: Approved, client: UpstreamClientInfo) {
        let origin = self.origin.to_string();
        let id = Grant::registration_id(&self.server.name, &origin);
        let expires_at = self.now.plus(crate::grant::REGISTRATION_LIFETIME);
        let secret = client.client_secret.as_ref().map(|secret| {
            SealedUpstreamToken::seal(
                &self.keys,
                &self.server.name,
                &id,
                expires_at,
                secret,
                self.random.array(),
            )
        });
        let Ok(client_secret) = secret.transpose() else {
            return self.finish(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the registration could not be sealed",
            ));
        };
        let kept = crate::grant::UpstreamClient { client_id: client.client_id.clone(), client_secret };
        let record = Grant::upstream_registration(&self.server.name, &origin, kept, self.now, expires_at);
        self.ask(
            StoreOp::PutGrant(Box::new(record)),
            Stage::RegistrationStore { approved: Box::new(approved), client },
        );
    }

    /// Sends the browser upstream with `client`, and hands the client to the adapter to cache.
    fn upstream_with(&mut self, approved: Approved, client: UpstreamClientInfo) {
        let random = Random::new(self.random.array());
        let response = approved.redirect_upstream(&client, random);
        self.remembered = Some(client);
        self.finish(response);
    }

    fn ask(&mut self, op: StoreOp, stage: Stage) {
        self.pending = Some(AuthzStep::Store(op));
        self.stage = stage;
    }

    fn finish(&mut self, response: Response<Vec<u8>>) {
        self.stage = Stage::Done(Box::new(response));
    }

    fn unavailable(&mut self, reason: &'static str) {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            reason,
            "the gateway's grant store is unavailable; retry shortly",
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        self.finish(response);
    }

    fn client_host(redirect_uri: &str) -> Option<String> {
        Url::parse(redirect_uri).ok().and_then(|url| url.host_str().map(str::to_owned))
    }

    fn record(
        &mut self,
        event: &'static str,
        identity: Option<&str>,
        redirect_uri: Option<&str>,
        reason: Option<&'static str>,
    ) {
        self.audit.push(Audit {
            event,
            server: self.server.name.clone(),
            identity: identity.map(str::to_owned),
            client_host: redirect_uri.and_then(Self::client_host),
            reason,
        });
    }

    /// The grant store's answer to the last [`AuthzStep::Store`].
    pub fn handle_store(&mut self, result: StoreResult) {
        if let StoreResult::Unavailable { reason } = result {
            return self.unavailable(reason);
        }
        match (std::mem::replace(&mut self.stage, Stage::Taken), result) {
            (Stage::RegistrationRead { approved }, StoreResult::Grant(record)) => {
                match record.and_then(|record| self.kept_registration(&record)) {
                    Some(client) => self.upstream_with(*approved, client),
                    None => self.register_upstream(*approved),
                }
            }
            (Stage::RegistrationStore { approved, client }, StoreResult::Stored) => {
                self.upstream_with(*approved, client)
            }
            (Stage::CallbackMark { flow, code, error }, StoreResult::Taken(taken)) => {
                self.callback_marked(flow, code, error, taken)
            }
            (Stage::CallbackStore { flow, grant }, StoreResult::Stored) => {
                // The identity's newest grant at this server, for the aggregating routes.
                let pointer = grant.pointer();
                self.ask(StoreOp::PutGrant(Box::new(pointer)), Stage::CallbackPointer { flow, grant });
            }
            (Stage::CallbackPointer { flow, grant }, StoreResult::Stored) => {
                self.callback_stored(&flow, &grant)
            }
            (Stage::CodeMark { code }, StoreResult::Taken(true)) => {
                let grant = GrantId::new(code.grant.clone());
                self.ask(StoreOp::GetGrant { id: grant }, Stage::CodeRead { code });
            }
            (Stage::CodeMark { code }, StoreResult::Taken(false)) => {
                // A second use of a code: its grant is revoked (RFC 6749 §4.1.2).
                let grant = GrantId::new(code.grant);
                self.ask(StoreOp::GetGrant { id: grant }, Stage::CodeReplayRead);
            }
            (Stage::CodeReplayRead, StoreResult::Grant(grant)) => {
                let refusal =
                    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the code was already used");
                self.revoke(grant.map(|grant| *grant), refusal, "code_reused");
            }
            (Stage::CodeRead { code }, StoreResult::Grant(Some(grant))) => {
                self.issue(&grant, grant.generation, &code.client, "grant_used")
            }
            (Stage::RefreshAdvance { claims }, StoreResult::Advanced(advanced)) => {
                let grant = GrantId::new(claims.grant.clone());
                self.ask(StoreOp::GetGrant { id: grant }, Stage::RefreshRead { claims, advanced });
            }
            (Stage::RefreshRead { claims, advanced: true }, StoreResult::Grant(Some(grant))) => {
                // Design §4.8: a grant lives 30 days after its last refresh. Moving its expiry is a
                // rewrite, so it happens under the grant's lock (a call refreshing the upstream
                // token holds it while it rewrites the grant); busy, the next refresh extends it.
                if grant.is_expired(self.now) || grant.server != self.server.name {
                    return self.issue(&grant, claims.generation + 1, &claims.client, "grant_refreshed");
                }
                let holder = crate::grant::LockHolder(self.random.token::<16>());
                let ttl = self.limits.token_timeout.saturating_mul(2);
                let op = StoreOp::TryLock { grant: grant.id.clone(), holder: holder.clone(), ttl };
                self.ask(op, Stage::ExtendLock { claims, grant, holder });
            }
            (Stage::ExtendLock { claims, grant, .. }, StoreResult::Locked(false)) => {
                self.issue(&grant, claims.generation + 1, &claims.client, "grant_refreshed");
            }
            (Stage::ExtendLock { claims, grant, holder }, StoreResult::Locked(true)) => {
                let id = grant.id.clone();
                self.ask(StoreOp::GetGrant { id }, Stage::ExtendRead { claims, holder });
            }
            (Stage::ExtendRead { claims, holder }, StoreResult::Grant(Some(mut fresh))) => {
                let lifetime = self.now.plus(self.max_lifetime);
                fresh.expires_at = fresh.expires_at.max(lifetime);
                // The sealed upstream tokens carry their own expiry: seal them again to the new
                // one, under the current key (a rotated key re-encrypts here, lazily).
                let random = &mut self.random;
                if fresh.reseal(&self.keys, self.now, || random.array()).is_err() {
                    let refusal = oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "the grant's upstream tokens no longer open",
                    );
                    return self.revoke(Some(*fresh), refusal, "grant_unreadable");
                }
                let op = StoreOp::PutGrant(fresh.clone());
                self.ask(op, Stage::ExtendPut { claims, grant: fresh, holder });
            }
            (Stage::ExtendRead { claims, holder }, StoreResult::Grant(None)) => {
                let _ = (claims, holder);
                self.finish(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the grant has ended"));
            }
            (Stage::ExtendPut { claims, grant, holder }, StoreResult::Stored) => {
                let op = StoreOp::Unlock { grant: grant.id.clone(), holder };
                self.ask(op, Stage::ExtendUnlock { claims, grant });
            }
            (Stage::ExtendUnlock { claims, grant }, StoreResult::Unlocked) => {
                // The pointer the aggregating routes read lives as long as the grant it names, and
                // a refreshed grant becomes its identity's newest.
                let pointer = grant.pointer();
                self.ask(StoreOp::PutGrant(Box::new(pointer)), Stage::ExtendPointer { claims, grant });
            }
            (Stage::ExtendPointer { claims, grant }, StoreResult::Stored) => {
                self.issue(&grant, claims.generation + 1, &claims.client, "grant_refreshed");
            }
            (Stage::RefreshRead { claims, advanced: false }, StoreResult::Grant(Some(grant))) => {
                let grace = grant.generation == claims.generation + 1
                    && self.now.saturating_since(grant.rotated_at) <= REFRESH_GRACE;
                if grace {
                    self.issue(&grant, grant.generation, &claims.client, "grant_refreshed");
                } else {
                    let refusal = oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "the refresh token was already used",
                    );
                    self.revoke(Some(*grant), refusal, "refresh_token_reused");
                }
            }
            (Stage::RevokeRead, StoreResult::Grant(grant)) => {
                let mut ok = Response::new(Vec::new());
                *ok.status_mut() = StatusCode::OK;
                ok.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                self.revoke(grant.map(|grant| *grant), ok, "revoked_by_client");
            }
            (Stage::Revoking { response, upstream: None }, StoreResult::Stored) => self.finish(*response),
            (Stage::Revoking { response, upstream: Some(request) }, StoreResult::Stored) => {
                self.pending = Some(AuthzStep::Send(*request));
                self.stage = Stage::RevokingUpstream { response };
            }
            (Stage::CodeRead { .. } | Stage::RefreshRead { .. }, StoreResult::Grant(None)) => {
                self.finish(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the grant has ended"));
            }
            _ => self.finish(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the grant store answered out of order",
            )),
        }
    }

    /// Revokes `grant` (writes it expired) and answers `response` afterwards.
    fn revoke(&mut self, grant: Option<Grant>, response: Response<Vec<u8>>, reason: &'static str) {
        match grant {
            Some(mut grant) if !grant.is_expired(self.now) => {
                self.record("grant_revoked", Some(&grant.identity.name.clone()), None, Some(reason));
                let upstream = self.upstream_revocation(&grant).map(Box::new);
                grant.expires_at = self.now;
                self.ask(
                    StoreOp::PutGrant(Box::new(grant)),
                    Stage::Revoking { response: Box::new(response), upstream },
                );
            }
            _ => self.finish(response),
        }
    }

    /// The RFC 7009 revocation of `grant`'s upstream refresh token, when the upstream names a
    /// revocation endpoint (design §4.8: best effort, logged).
    fn upstream_revocation(&self, grant: &Grant) -> Option<UpstreamRequest> {
        let url = Url::parse(self.server.entry.revocation_url.as_deref()?).ok()?;
        let sealed = grant.upstream_refresh_token.as_ref()?;
        let token = sealed.open(&self.keys, &self.server.name, &grant.id, self.now).ok()?;
        let client = match &grant.upstream_client {
            Some(registered) => UpstreamClientInfo {
                client_id: registered.client_id.clone(),
                client_secret: match &registered.client_secret {
                    Some(sealed) => {
                        Some(sealed.open(&self.keys, &self.server.name, &grant.id, self.now).ok()?)
                    }
                    None => None,
                },
                registered: true,
            },
            None => configured_client(&self.server)?,
        };
        let revocation =
            crate::client::token::Grant::Revocation { token: &token, token_type_hint: "refresh_token" };
        upstream_client_request(&self.server, &client, &revocation, &url, None, &self.limits)
    }

    /// Whether the grant's identity is still a configured key with its fingerprint.
    fn identity_holds(&self, grant: &Grant) -> bool {
        self.config_keys.iter().any(|(name, key)| grant.identity.is_held_by(name, key, &self.keys))
    }

    /// The token answer: a fresh access token and a refresh token of `generation`.
    fn issue(&mut self, grant: &Grant, generation: u64, client: &str, event: &'static str) {
        if grant.server != self.server.name || grant.is_expired(self.now) || !self.identity_holds(grant) {
            return self.finish(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the grant has ended"));
        }
        if grant.client != client {
            return self.finish(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the grant belongs to another client",
            ));
        }
        let access =
            AccessClaims { grant: grant.id.as_str().to_owned(), identity: grant.identity.name.clone() };
        let refresh =
            RefreshClaims { grant: grant.id.as_str().to_owned(), generation, client: client.to_owned() };
        let access_expires = self.now.plus(ACCESS_TOKEN_LIFETIME);
        let server = self.server.name.clone();
        let sealed_access = seal_json(
            &self.keys,
            Purpose::AccessToken,
            &server,
            Some(access_expires),
            &access,
            &mut self.random,
        );
        let sealed_refresh = seal_json(
            &self.keys,
            Purpose::RefreshToken,
            &server,
            Some(grant.expires_at),
            &refresh,
            &mut self.random,
        );
        let (Some(access_token), Some(refresh_token)) = (sealed_access, sealed_refresh) else {
            return self.finish(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "a token could not be sealed",
            ));
        };
        self.record(event, Some(&grant.identity.name.clone()), None, None);
        let mut response = json_response(
            StatusCode::OK,
            &json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
                "refresh_token": refresh_token,
                "scope": grant.scope,
            }),
        );
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        self.finish(response);
    }

    fn callback_marked(
        &mut self,
        flow: FlowState,
        code: Option<String>,
        error: Option<(String, Option<String>)>,
        taken: bool,
    ) {
        if !taken {
            return self.finish(stop_page(
                StatusCode::BAD_REQUEST,
                "state_used",
                "This sign-in was completed already. Start again from your MCP client.",
            ));
        }
        if let Some((error, description)) = error {
            let mut pairs = vec![("error", error)];
            if let Some(description) = description {
                pairs.push(("error_description", description));
            }
            self.record(
                "consent_upstream_error",
                Some(&flow.identity.clone()),
                Some(&flow.redirect_uri.clone()),
                Some("upstream_error"),
            );
            return self.back_to_client(&flow, pairs);
        }
        let Some(code) = code else {
            return self.finish(stop_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The authorization server sent neither a code nor an error.",
            ));
        };
        match self.redeem_request(&flow, &code) {
            Some(request) => {
                self.pending = Some(AuthzStep::Send(request));
                self.stage = Stage::CallbackRedeem { flow };
            }
            None => self.back_to_client(
                &flow,
                vec![
                    ("error", "server_error".to_owned()),
                    ("error_description", "upstream_token_endpoint_missing".to_owned()),
                ],
            ),
        }
    }

    /// The upstream token request that redeems `code` with the gateway's verifier.
    fn redeem_request(&self, flow: &FlowState, code: &str) -> Option<UpstreamRequest> {
        let redirect_uri = Url::parse(&format!("{}/callback", self.origin)).ok()?;
        let verifier = Secret::new(flow.verifier.as_str());
        let code = Secret::new(code);
        let grant = crate::client::token::Grant::AuthorizationCode {
            code: &code,
            redirect_uri: &redirect_uri,
            verifier: &verifier,
        };
        upstream_token_request(&self.server, &flow_client(&self.server, flow)?, &grant, &self.limits)
    }

    /// Redirects the browser back to the client with `pairs`, the client's `state` and `iss`, and
    /// clears the flow-binding cookie.
    fn back_to_client(&mut self, flow: &FlowState, mut pairs: Vec<(&str, String)>) {
        if let Some(state) = &flow.state {
            pairs.push(("state", state.clone()));
        }
        pairs.push(("iss", issuer(&self.origin, &self.server.name)));
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let clear = set_cookie(
            &self.origin,
            &cookie_name(&self.origin, &format!("mcp_flow_{}", flow.flow)),
            "",
            "Lax",
            0,
        );
        match with_query(&flow.redirect_uri, &borrowed) {
            Some(location) => self.finish(found(&location, &[clear])),
            None => self.finish(stop_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The application's redirect_uri is not a URL.",
            )),
        }
    }

    /// The upstream token endpoint's answer to the redemption.
    pub fn handle_answer(&mut self, answer: Result<Response<Bytes>, UpstreamFailure>) {
        let stage = std::mem::replace(&mut self.stage, Stage::Taken);
        if let Stage::RevokingUpstream { response } = stage {
            let revoked = answer.as_ref().is_ok_and(|answer| answer.status().is_success());
            let (event, reason) = if revoked {
                ("upstream_token_revoked", None)
            } else {
                ("upstream_revocation_failed", Some("upstream_revocation_failed"))
            };
            self.record(event, None, None, reason);
            return self.finish(*response);
        }
        if let Stage::RegisterUpstream { approved } = stage {
            let Some(client) = answer.ok().and_then(|answer| registered_client(&answer)) else {
                self.record("upstream_registration_failed", None, None, Some("registration_refused"));
                return self.finish(stop_page(
                    StatusCode::BAD_GATEWAY,
                    "upstream_registration_failed",
                    "The gateway could not register itself at this server's authorization server; set client_id in the gateway's configuration.",
                ));
            };
            self.record("upstream_registered", None, None, None);
            return self.keep_registration(*approved, client);
        }
        if let Stage::ClientDocument { url, inputs } = stage {
            let read = answer.ok().and_then(|answer| {
                let client = client_from_document(&url, &answer)?;
                Some((client, document_lifetime(&answer)))
            });
            let response = match read {
                Some((client, lifetime)) => {
                    if let Some(lifetime) = lifetime {
                        self.document = Some((url.clone(), client.clone(), lifetime));
                    }
                    let random = Random::new(self.random.array());
                    inputs.answer(&client, random)
                }
                None => stop_page(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    "This application's metadata document could not be fetched or is not valid (its client_id must be its own URL, and it must list redirect_uris).",
                ),
            };
            return self.finish(response);
        }
        let Stage::CallbackRedeem { flow } = stage else {
            return self.finish(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "an answer came out of order",
            ));
        };
        let failed = |reason: &str| {
            vec![("error", "server_error".to_owned()), ("error_description", reason.to_owned())]
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                self.record(
                    "grant_failed",
                    Some(&flow.identity.clone()),
                    Some(&flow.redirect_uri.clone()),
                    Some("upstream_unreachable"),
                );
                return self.back_to_client(&flow, failed(failure.reason()));
            }
        };
        let token = match crate::client::token::parse_token_response(&answer) {
            Ok(token) => token,
            Err(error) => {
                self.record(
                    "grant_failed",
                    Some(&flow.identity.clone()),
                    Some(&flow.redirect_uri.clone()),
                    Some("upstream_token_refused"),
                );
                let code = match &error {
                    crate::client::token::TokenError::Refused { error, .. } if error == "invalid_target" => {
                        "invalid_target"
                    }
                    _ => "upstream_token_refused",
                };
                return self.back_to_client(&flow, failed(code));
            }
        };
        if let Some(rules) = &self.server.entry.token_validation {
            let document = serde_json::from_slice::<Value>(answer.body()).unwrap_or(Value::Null);
            if crate::token::validate_token_response(rules, &document).is_err() {
                self.record(
                    "grant_failed",
                    Some(&flow.identity.clone()),
                    Some(&flow.redirect_uri.clone()),
                    Some("token_validation_failed"),
                );
                return self.back_to_client(&flow, failed("token_validation_failed"));
            }
        }
        let Ok(fingerprint) = URL_SAFE_NO_PAD.decode(&flow.fingerprint) else {
            return self.back_to_client(&flow, failed("server_error"));
        };
        let Ok(fingerprint) = <[u8; 32]>::try_from(fingerprint.as_slice()) else {
            return self.back_to_client(&flow, failed("server_error"));
        };
        let id = GrantId::from_random(self.random.array());
        let expires_at = self.now.plus(self.max_lifetime);
        let server = self.server.name.clone();
        let access = SealedUpstreamToken::seal(
            &self.keys,
            &server,
            &id,
            expires_at,
            &token.access_token,
            self.random.array(),
        );
        let refresh = token.refresh_token.as_ref().map(|refresh| {
            SealedUpstreamToken::seal(&self.keys, &server, &id, expires_at, refresh, self.random.array())
        });
        let (Ok(access), Ok(refresh)) = (access, refresh.transpose()) else {
            return self.back_to_client(&flow, failed("server_error"));
        };
        let lifetime =
            crate::token::user_token_ttl(token.expires_in, self.server.entry.token_storage_ttl_seconds);
        let scope = token
            .scope
            .clone()
            .or_else(|| self.server.entry.scopes.as_ref().map(|scopes| scopes.join(" ")))
            .unwrap_or_default();
        let grant = Grant {
            id,
            server,
            identity: Identity { name: flow.identity.clone(), fingerprint },
            client: flow.client.clone(),
            upstream_access_token: access,
            upstream_refresh_token: refresh,
            upstream_access_expires_at: Some(self.now.plus(Duration::from_secs(lifetime))),
            expires_at,
            generation: 0,
            rotated_at: self.now,
            scope,
            upstream_client: None,
        };
        let mut grant = grant;
        if let Some(client_id) = &flow.upstream_client {
            let secret = flow.upstream_secret.as_deref().map(|secret| {
                SealedUpstreamToken::seal(
                    &self.keys,
                    &grant.server,
                    &grant.id,
                    expires_at,
                    &Secret::new(secret),
                    self.random.array(),
                )
            });
            match secret.transpose() {
                Ok(client_secret) => {
                    grant.upstream_client =
                        Some(crate::grant::UpstreamClient { client_id: client_id.clone(), client_secret });
                }
                Err(_) => return self.back_to_client(&flow, failed("server_error")),
            }
        }
        self.ask(
            StoreOp::PutGrant(Box::new(grant.clone())),
            Stage::CallbackStore { flow, grant: Box::new(grant) },
        );
    }

    fn callback_stored(&mut self, flow: &FlowState, grant: &Grant) {
        let expires = self.now.plus(CODE_LIFETIME);
        let code = CodeGrant {
            grant: grant.id.as_str().to_owned(),
            client: flow.client.clone(),
            redirect_uri: flow.redirect_uri.clone(),
            challenge: flow.challenge.clone(),
            nonce: self.random.token::<12>(),
            expires: expires.as_secs(),
        };
        let server = self.server.name.clone();
        let Some(sealed) =
            seal_json(&self.keys, Purpose::Code, &server, Some(expires), &code, &mut self.random)
        else {
            return self.back_to_client(flow, vec![("error", "server_error".to_owned())]);
        };
        self.record("grant_created", Some(&flow.identity.clone()), Some(&flow.redirect_uri.clone()), None);
        self.back_to_client(flow, vec![("code", sealed)]);
    }
}

/// `GET /callback`: the upstream's answer to a flow the gateway started. A state that does not
/// open, expired, or whose origin or flow-binding cookie does not match gets a 400 page and never
/// a redirect.
pub(super) fn callback(
    head: &RequestHead<'_>,
    origin: &Origin,
    config: &GatewayConfig,
    now: UnixTime,
    random: Option<[u8; 32]>,
) -> Action {
    let bad =
        |reason: &str, message: &str| Action::Respond(stop_page(StatusCode::BAD_REQUEST, reason, message));
    let pairs = query_pairs(head.path_and_query);
    let Ok(Some(state)) = single(&pairs, "state") else {
        return bad("invalid_request", "The authorization server's answer has no single state.");
    };
    let Some((name, sealed)) = state.rsplit_once('.') else {
        return bad("invalid_state", "The state of this answer is not one the gateway issued.");
    };
    let Some(server) = interactive(config, name) else {
        return bad("invalid_state", "The state of this answer is not one the gateway issued.");
    };
    let served = Served { head, origin, server, config, now };
    let keys = match served.keys() {
        Ok(keys) => keys,
        Err(refusal) => return Action::Respond(refusal),
    };
    let Some(flow) = open_json::<FlowState>(keys, Purpose::State, name, now, sealed) else {
        return bad(
            "invalid_state",
            "This sign-in expired or its answer was altered. Start again from your MCP client.",
        );
    };
    if flow.origin != origin.to_string() {
        return bad("origin_mismatch", "This sign-in began under another address of the gateway.");
    }
    let binding = cookie(head.headers, &cookie_name(origin, &format!("mcp_flow_{}", flow.flow)));
    if !binding.is_some_and(|value| equal(&value, &flow.binding)) {
        return bad(
            "flow_binding_mismatch",
            "This sign-in did not start in this browser. Start again from your MCP client.",
        );
    }
    let expected_issuer = server.entry.issuer.as_deref().and_then(|issuer| Url::parse(issuer).ok());
    match (single(&pairs, "iss"), &expected_issuer) {
        (Ok(None), _) if server.issuer_in_responses => {
            return bad(
                "issuer_missing",
                "The authorization server promises to name itself in its answer (RFC 9207), and this answer does not.",
            );
        }
        (Ok(None), _) => {}
        (Ok(Some(iss)), Some(expected)) if crate::discovery::issuer_matches(expected, &iss) => {}
        (Ok(Some(_)), None) => {
            return bad(
                "issuer_unknown",
                "The authorization server sent `iss` but no issuer is configured for this server to compare it with; set `issuer`.",
            );
        }
        _ => return bad("issuer_mismatch", "The answer names another authorization server (RFC 9207)."),
    }
    let code = single(&pairs, "code").ok().flatten().filter(|code| code.len() <= 2048);
    let error = single(&pairs, "error").ok().flatten().map(|error| {
        let description = single(&pairs, "error_description").ok().flatten();
        (
            error.chars().take(64).collect::<String>(),
            description.map(|text| text.chars().take(256).collect::<String>()),
        )
    });
    let random = match random_or_refuse(random) {
        Ok(random) => random,
        Err(refusal) => return Action::Respond(refusal),
    };
    let mark = OnceKey(format!("state:{name}:{}", flow.flow));
    let until = UnixTime::from_secs(flow.expires);
    let mut machine = Authz::new(&served, keys, random, Stage::Taken);
    machine.ask(StoreOp::TakeOnce { key: mark, until }, Stage::CallbackMark { flow, code, error });
    Action::Authz(Box::new(machine))
}

/// `POST /{s}/token`: `authorization_code` (PKCE, single use) and `refresh_token` (rotated; reuse
/// detection).
pub(super) fn token(served: &Served<'_>, body: &[u8], random: Option<[u8; 32]>) -> Action {
    let refuse = |status: StatusCode, error: &str, description: &str| {
        Action::Respond(oauth_error(status, error, description))
    };
    let keys = match served.keys() {
        Ok(keys) => keys,
        Err(refusal) => return Action::Respond(refusal),
    };
    let form = match parse_form(body) {
        Ok(form) => form,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    let field = |name: &str| form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let Some(client_id) = field("client_id") else {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client", "client_id is required (public client)");
    };
    // A sealed registration, or a Client ID Metadata Document URL: the code already binds the
    // redirect URI the document listed, so the token endpoint needs only the client's digest.
    let client = open_client(keys, served.name(), served.now, client_id).or_else(|| {
        cimd_request(client_id).map(|_| Client {
            digest: client_digest(client_id),
            redirect_uris: Vec::new(),
            name: None,
        })
    });
    let Some(client) = client else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the client_id is not valid here; register again",
        );
    };
    if let Some(resource) = field("resource")
        && resource != served.resource()
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource must name this server's MCP endpoint",
        );
    }
    let Some(random) = random.map(Random::new) else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the gateway has no random source");
    };
    let invalid_grant = |description: &str| refuse(StatusCode::BAD_REQUEST, "invalid_grant", description);
    match field("grant_type") {
        Some("authorization_code") => {
            let Some(code) = field("code").and_then(|code| {
                open_json::<CodeGrant>(keys, Purpose::Code, served.name(), served.now, code)
            }) else {
                return invalid_grant("the code is not valid or has expired");
            };
            if code.client != client.digest
                || Some(code.redirect_uri.as_str())
                    != field("redirect_uri").and_then(|uri| Url::parse(uri).ok()).as_ref().map(Url::as_str)
            {
                return invalid_grant("the code was issued to another client or redirect_uri");
            }
            let verified = field("code_verifier")
                .filter(|verifier| crate::pkce::is_valid_verifier(verifier))
                .is_some_and(|verifier| equal(&crate::pkce::challenge_for(verifier), &code.challenge));
            if !verified {
                return invalid_grant("the code_verifier does not match the code_challenge");
            }
            let mark = OnceKey(format!("code:{}:{}", served.name(), code.nonce));
            let until = UnixTime::from_secs(code.expires);
            let mut machine = Authz::new(served, keys, random, Stage::Taken);
            machine.ask(StoreOp::TakeOnce { key: mark, until }, Stage::CodeMark { code });
            Action::Authz(Box::new(machine))
        }
        Some("refresh_token") => {
            let Some(claims) = field("refresh_token").and_then(|token| {
                open_json::<RefreshClaims>(keys, Purpose::RefreshToken, served.name(), served.now, token)
            }) else {
                return invalid_grant("the refresh token is not valid or has expired");
            };
            if claims.client != client.digest {
                return invalid_grant("the refresh token was issued to another client");
            }
            let grant = GrantId::new(claims.grant.clone());
            let mut machine = Authz::new(served, keys, random, Stage::Taken);
            let (expected, now) = (claims.generation, served.now);
            machine
                .ask(StoreOp::AdvanceGeneration { grant, expected, now }, Stage::RefreshAdvance { claims });
            Action::Authz(Box::new(machine))
        }
        _ => refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

/// `POST /{s}/revoke` (RFC 7009): revokes the grant behind an access or refresh token; always a
/// 200, also for a token that is not valid.
pub(super) fn revoke(served: &Served<'_>, body: &[u8], random: Option<[u8; 32]>) -> Action {
    let ok = || {
        let mut response = Response::new(Vec::new());
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Action::Respond(response)
    };
    let keys = match served.keys() {
        Ok(keys) => keys,
        Err(refusal) => return Action::Respond(refusal),
    };
    let Ok(form) = parse_form(body) else {
        return Action::Respond(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is malformed",
        ));
    };
    let Some(token) = form.iter().find(|(key, _)| key == "token").map(|(_, value)| value.as_str()) else {
        return Action::Respond(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required"));
    };
    let grant = open_json::<RefreshClaims>(keys, Purpose::RefreshToken, served.name(), served.now, token)
        .map(|claims| claims.grant)
        .or_else(|| {
            open_json::<AccessClaims>(keys, Purpose::AccessToken, served.name(), served.now, token)
                .map(|claims| claims.grant)
        });
    let (Some(grant), Some(random)) = (grant, random) else {
        return ok();
    };
    let grant = GrantId::new(grant);
    let mut machine = Authz::new(served, keys, Random::new(random), Stage::Taken);
    machine.ask(StoreOp::GetGrant { id: grant }, Stage::RevokeRead);
    Action::Authz(Box::new(machine))
}

#[cfg(test)]
mod tests;
