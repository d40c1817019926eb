//! An in-process mock upstream: an OAuth authorization server and an MCP server on one
//! `127.0.0.1:0` listener, for tests and demos (feature `mock`).
//!
//! | path | what |
//! |---|---|
//! | `GET /.well-known/oauth-protected-resource/mcp` (and without `/mcp`) | RFC 9728 metadata for `{origin}/mcp` |
//! | `GET /.well-known/oauth-authorization-server` | RFC 8414 metadata, `issuer` = the origin |
//! | `POST /register` | RFC 7591 dynamic registration |
//! | `GET /authorize` | approves at once: `302` to the `redirect_uri` with `code`, `state`, `iss` |
//! | `POST /token` | `authorization_code` (PKCE `S256`), `refresh_token`, `client_credentials`, RFC 8693 token exchange |
//! | `POST /mcp` | MCP over streamable HTTP with a Bearer token: `initialize`, `tools/list`, `tools/call` (`echo`, `add`); a token issued for another `resource` (RFC 8707 audience) is refused with 401 |
//!
//! Failure modes are [`Switches`], changed at run time through a [`MockHandle`]; [`Counters`]
//! say what the mock saw. The server stops when its [`MockUpstream`] is dropped: the accept loop
//! and every connection task are aborted, so a test can never hang on it.
//!
//! ```
//! # async fn run() -> std::io::Result<()> {
//! use mcp_oauth_tokio::mock::{MockConfig, MockUpstream, Switch};
//!
//! let mock = MockUpstream::start(MockConfig::default()).await?;
//! mock.handle().set(Switch::Sse(true));
//! println!("MCP server at {}", mock.mcp_url());
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mcp_oauth_core::pkce::challenge_for;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use url::Url;
use url::form_urlencoded;

/// The RFC 8693 grant type.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The largest request body the mock reads.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Protocol versions the mock's MCP server speaks; the first is its default.
const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Failure modes and behaviours, changed at run time with [`MockHandle::set`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switches {
    /// The next MCP request gets `401` even with a valid token (the switch then turns itself off).
    pub unauthorized_once: bool,
    /// Every answer is delayed by this many milliseconds.
    pub slow_ms: u64,
    /// `/token` answers this status with `{"error":"server_error"}` instead of working.
    pub token_status: Option<u16>,
    /// `/mcp` answers this status instead of working.
    pub mcp_status: Option<u16>,
    /// `/mcp` requires a valid Bearer token (on by default).
    pub require_auth: bool,
    /// `/mcp` answers as `text/event-stream` instead of JSON.
    pub sse: bool,
    /// `/mcp` refuses every request but `initialize` without a valid `Mcp-Session-Id` (400), as
    /// stateful servers such as FastMCP's default do.
    pub require_session: bool,
    /// Every `/.well-known/` document is `404`, the 2025-03-26 layout (the challenge then has no
    /// `resource_metadata`, and `/authorize` sends no `iss`).
    pub metadata_missing: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            unauthorized_once: false,
            slow_ms: 0,
            token_status: None,
            mcp_status: None,
            require_auth: true,
            sse: false,
            require_session: false,
            metadata_missing: false,
        }
    }
}

/// One switch, for [`MockHandle::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// [`Switches::unauthorized_once`].
    UnauthorizedOnce(bool),
    /// [`Switches::slow_ms`].
    SlowMs(u64),
    /// [`Switches::token_status`].
    TokenStatus(Option<u16>),
    /// [`Switches::mcp_status`].
    McpStatus(Option<u16>),
    /// [`Switches::require_auth`].
    RequireAuth(bool),
    /// [`Switches::sse`].
    Sse(bool),
    /// [`Switches::require_session`].
    RequireSession(bool),
    /// [`Switches::metadata_missing`].
    MetadataMissing(bool),
}

/// How the mock starts.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// The pre-registered confidential client's ID (valid for every grant, any `redirect_uri`).
    pub client_id: String,
    /// Its secret, accepted with `client_secret_basic` and `client_secret_post`.
    pub client_secret: String,
    /// `expires_in` of every access token, in seconds; the MCP server refuses tokens past it.
    pub expires_in: u64,
    /// The scopes the resource advertises and the challenge asks for.
    pub scopes: Vec<String>,
    /// The switches at start.
    pub switches: Switches,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            client_id: "mock-client".to_owned(),
            client_secret: "mock-secret".to_owned(),
            expires_in: 3600,
            scopes: vec!["mcp".to_owned()],
            switches: Switches::default(),
        }
    }
}

/// What the mock saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `/token` requests by grant (`authorization_code`, `refresh_token`, `client_credentials`,
    /// `token_exchange`, or the raw `grant_type`; `missing` without one).
    pub token_requests: BTreeMap<String, u64>,
    /// `POST /mcp` requests by JSON-RPC method (`invalid` when the body is not JSON-RPC).
    pub mcp_requests: BTreeMap<String, u64>,
    /// Successful `/register` calls.
    pub registrations: u64,
    /// `/authorize` calls.
    pub authorize_calls: u64,
    /// TCP connections accepted.
    pub connections: u64,
}

impl Counters {
    /// Token requests for `grant` (see [`Counters::token_requests`]).
    pub fn token_requests_for(&self, grant: &str) -> u64 {
        self.token_requests.get(grant).copied().unwrap_or(0)
    }

    /// MCP requests for `method`.
    pub fn mcp_requests_for(&self, method: &str) -> u64 {
        self.mcp_requests.get(method).copied().unwrap_or(0)
    }

    /// All token requests.
    pub fn token_requests_total(&self) -> u64 {
        self.token_requests.values().sum()
    }
}

#[derive(Clone, Debug)]
struct RegisteredClient {
    secret: Option<String>,
    redirect_uris: Vec<String>,
}

#[derive(Clone, Debug)]
struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resource: Option<String>,
    scope: Option<String>,
}

#[derive(Clone, Debug)]
struct RefreshGrant {
    client_id: String,
    scope: Option<String>,
    /// The RFC 8707 resource the grant was for: its refreshed tokens keep that audience.
    resource: Option<String>,
}

#[derive(Debug)]
struct State {
    switches: Switches,
    counters: Counters,
    clients: HashMap<String, RegisteredClient>,
    codes: HashMap<String, PendingCode>,
    /// Valid access tokens: their expiry and the audience they were issued for (`resource`).
    access_tokens: HashMap<String, (tokio::time::Instant, Option<String>)>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    sessions: HashSet<String>,
}

struct Shared {
    origin: String,
    config: MockConfig,
    state: Mutex<State>,
    random: std::collections::hash_map::RandomState,
    sequence: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A random-looking value: 128 bits from the process's randomly keyed hasher.
    fn random_value(&self, prefix: &str) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut value = String::from(prefix);
        for salt in 0..2u64 {
            let mut hasher = self.random.build_hasher();
            hasher.write_u64(sequence);
            hasher.write_u64(salt);
            value.push_str(&format!("{:016x}", hasher.finish()));
        }
        value
    }

    fn issue_access_token(&self) -> String {
        self.issue_access_token_for(None)
    }

    /// An access token for the audience `resource` (any audience when `None`).
    fn issue_access_token_for(&self, resource: Option<String>) -> String {
        let token = self.random_value("mock_at_");
        let expiry = tokio::time::Instant::now() + Duration::from_secs(self.config.expires_in);
        self.state().access_tokens.insert(token.clone(), (expiry, resource));
        token
    }

    fn scope(&self) -> String {
        self.config.scopes.join(" ")
    }
}

/// Shared access to a running mock: switches, counters, its address. Cheap to clone.
#[derive(Clone)]
pub struct MockHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHandle").field("origin", &self.shared.origin).finish_non_exhaustive()
    }
}

impl MockHandle {
    /// Changes one switch; takes effect on the next request.
    pub fn set(&self, switch: Switch) {
        let mut state = self.shared.state();
        let switches = &mut state.switches;
        match switch {
            Switch::UnauthorizedOnce(on) => switches.unauthorized_once = on,
            Switch::SlowMs(ms) => switches.slow_ms = ms,
            Switch::TokenStatus(status) => switches.token_status = status,
            Switch::McpStatus(status) => switches.mcp_status = status,
            Switch::RequireAuth(on) => switches.require_auth = on,
            Switch::Sse(on) => switches.sse = on,
            Switch::RequireSession(on) => switches.require_session = on,
            Switch::MetadataMissing(on) => switches.metadata_missing = on,
        }
    }

    /// The switches now.
    pub fn switches(&self) -> Switches {
        self.shared.state().switches.clone()
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.shared.state().counters.clone()
    }

    /// `http://127.0.0.1:{port}`: the authorization server's issuer and the MCP server's origin.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// `{origin}/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.shared.origin)
    }

    /// Issues a valid access token directly (for tests that skip the OAuth part).
    pub fn issue_access_token(&self) -> String {
        self.shared.issue_access_token()
    }

    /// How many MCP sessions the server holds (opened and not yet ended by `DELETE`).
    pub fn open_sessions(&self) -> usize {
        self.shared.state().sessions.len()
    }

    /// Forgets every MCP session (as a restarted server would); requests in them then get 404.
    pub fn end_sessions(&self) {
        self.shared.state().sessions.clear();
    }

    /// Makes every issued access token invalid (as if they expired).
    pub fn revoke_access_tokens(&self) {
        self.shared.state().access_tokens.clear();
    }
}

/// A running mock upstream; dropping it stops the server and all its connections.
#[derive(Debug)]
pub struct MockUpstream {
    handle: MockHandle,
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let state = State {
            switches: config.switches.clone(),
            counters: Counters::default(),
            clients: HashMap::new(),
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            sessions: HashSet::new(),
        };
        let shared = Arc::new(Shared {
            origin: format!("http://{address}"),
            config,
            state: Mutex::new(state),
            random: std::collections::hash_map::RandomState::new(),
            sequence: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self { handle: MockHandle { shared }, address, task })
    }

    /// The listening address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:{port}`.
    pub fn origin(&self) -> &str {
        self.handle.origin()
    }

    /// `{origin}/mcp`.
    pub fn mcp_url(&self) -> String {
        self.handle.mcp_url()
    }

    /// A handle for switches and counters; it stays usable after the server stops.
    pub fn handle(&self) -> MockHandle {
        self.handle.clone()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Aborting the accept loop drops its `JoinSet`, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "mock: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.state().counters.connections += 1;
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "mock: connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    answer(status, "application/json", value.to_string())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Answer {
    let mut response = json_answer(status, &json!({"error": error, "error_description": description}));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn empty(status: StatusCode) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return empty(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let switches = shared.state().switches.clone();
    if switches.slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(switches.slow_ms)).await;
    }
    let path = parts.uri.path();
    if path.starts_with("/.well-known/") {
        if parts.method != Method::GET {
            return empty(StatusCode::METHOD_NOT_ALLOWED);
        }
        if switches.metadata_missing {
            return empty(StatusCode::NOT_FOUND);
        }
        return match path {
            "/.well-known/oauth-protected-resource/mcp" | "/.well-known/oauth-protected-resource" => {
                json_answer(StatusCode::OK, &protected_resource_metadata(shared))
            }
            "/.well-known/oauth-authorization-server" => {
                json_answer(StatusCode::OK, &authorization_server_metadata(shared))
            }
            _ => empty(StatusCode::NOT_FOUND),
        };
    }
    match (&parts.method, path) {
        (&Method::POST, "/register") => register(shared, &body),
        (&Method::GET, "/authorize") => authorize(shared, parts.uri.query().unwrap_or_default(), &switches),
        (&Method::POST, "/token") => token(shared, &parts.headers, &body, &switches),
        (&Method::POST, "/mcp") => mcp(shared, &parts.headers, &body, &switches),
        (&Method::DELETE, "/mcp") => {
            let session = parts.headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
            match session {
                Some(session) if shared.state().sessions.remove(session) => empty(StatusCode::NO_CONTENT),
                _ => empty(StatusCode::NOT_FOUND),
            }
        }
        (_, "/mcp") => {
            let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            response
        }
        (_, "/register" | "/authorize" | "/token") => empty(StatusCode::METHOD_NOT_ALLOWED),
        _ => empty(StatusCode::NOT_FOUND),
    }
}

fn protected_resource_metadata(shared: &Shared) -> Value {
    json!({
        "resource": format!("{}/mcp", shared.origin),
        "authorization_servers": [shared.origin],
        "scopes_supported": shared.config.scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-oauth mock MCP server",
    })
}

fn authorization_server_metadata(shared: &Shared) -> Value {
    let origin = &shared.origin;
    json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/authorize"),
        "token_endpoint": format!("{origin}/token"),
        "registration_endpoint": format!("{origin}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": [
            "authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE_GRANT
        ],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": shared.config.scopes,
        "authorization_response_iss_parameter_supported": true,
    })
}

fn register(shared: &Shared, body: &[u8]) -> Answer {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", "the body is not JSON");
    };
    let redirect_uris: Vec<String> = request["redirect_uris"]
        .as_array()
        .map(|uris| uris.iter().filter_map(|uri| uri.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let grant_types = request["grant_types"].clone();
    let wants_code = grant_types
        .as_array()
        .is_none_or(|grants| grants.iter().any(|grant| grant.as_str() == Some("authorization_code")));
    if wants_code && redirect_uris.is_empty() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", "redirect_uris is required");
    }
    if redirect_uris.iter().any(|uri| Url::parse(uri).is_err()) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", "a redirect URI is not a URL");
    }
    let method = request["token_endpoint_auth_method"].as_str().unwrap_or("client_secret_basic").to_owned();
    if !matches!(method.as_str(), "none" | "client_secret_basic" | "client_secret_post") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "unsupported token_endpoint_auth_method",
        );
    }
    let client_id = shared.random_value("mock_client_");
    let secret = (method != "none").then(|| shared.random_value("mock_secret_"));
    let mut answer = json!({
        "client_id": client_id,
        "client_id_issued_at": 0,
        "redirect_uris": redirect_uris,
        "token_endpoint_auth_method": method,
        "grant_types": if grant_types.is_null() { json!(["authorization_code"]) } else { grant_types },
        "response_types": ["code"],
    });
    if let Some(name) = request["client_name"].as_str() {
        answer["client_name"] = json!(name);
    }
    if let Some(secret) = &secret {
        answer["client_secret"] = json!(secret);
        answer["client_secret_expires_at"] = json!(0);
    }
    let mut state = shared.state();
    state.clients.insert(client_id, RegisteredClient { secret, redirect_uris });
    state.counters.registrations += 1;
    json_answer(StatusCode::CREATED, &answer)
}

fn authorize(shared: &Shared, query: &str, switches: &Switches) -> Answer {
    shared.state().counters.authorize_calls += 1;
    let mut params: HashMap<String, String> = HashMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if params.insert(name.clone().into_owned(), value.into_owned()).is_some() {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "a parameter is repeated");
        }
    }
    let param = |name: &str| params.get(name).map(String::as_str);
    let Some(client_id) = param("client_id") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "client_id is missing");
    };
    let registered = shared.state().clients.get(client_id).cloned();
    let Some(redirect_uri) = param("redirect_uri").and_then(|uri| Url::parse(uri).ok()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is missing or invalid");
    };
    // Errors about the client or the redirect URI are never redirected (RFC 6749 §4.1.2.1).
    match &registered {
        Some(client) if !client.redirect_uris.iter().any(|uri| uri == redirect_uri.as_str()) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is not registered");
        }
        None if client_id != shared.config.client_id => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client_id");
        }
        _ => {}
    }
    let state = param("state");
    let iss = (!switches.metadata_missing).then_some(shared.origin.as_str());
    let redirect = |pairs: &[(&str, &str)]| {
        let mut location = redirect_uri.clone();
        {
            let mut query = location.query_pairs_mut();
            for (name, value) in pairs {
                query.append_pair(name, value);
            }
            if let Some(state) = state {
                query.append_pair("state", state);
            }
            if let Some(iss) = iss {
                query.append_pair("iss", iss);
            }
        }
        let mut response = empty(StatusCode::FOUND);
        if let Ok(value) = HeaderValue::from_str(location.as_str()) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    };
    if param("response_type") != Some("code") {
        return redirect(&[("error", "unsupported_response_type")]);
    }
    let challenge = match (param("code_challenge"), param("code_challenge_method")) {
        (Some(challenge), Some("S256")) if !challenge.is_empty() => challenge.to_owned(),
        _ => {
            return redirect(&[("error", "invalid_request"), ("error_description", "PKCE S256 is required")]);
        }
    };
    if state.is_none_or(str::is_empty) {
        return redirect(&[("error", "invalid_request"), ("error_description", "state is required")]);
    }
    let code = shared.random_value("mock_code_");
    shared.state().codes.insert(
        code.clone(),
        PendingCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_string(),
            challenge,
            resource: param("resource").map(str::to_owned),
            scope: param("scope").map(str::to_owned),
        },
    );
    redirect(&[("code", &code)])
}

/// The client that authenticated at the token endpoint, or why none did.
fn authenticate_client(
    shared: &Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<String, Box<Answer>> {
    let refused =
        || Box::new(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed"));
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")));
    let (client_id, secret) = match basic {
        Some(encoded) => {
            let decoded = STANDARD.decode(encoded.trim()).map_err(|_| refused())?;
            let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
            let (user, password) = decoded.split_once(':').ok_or_else(refused)?;
            (form_decode(user), Some(form_decode(password)))
        }
        None => {
            let client_id = form.get("client_id").cloned().ok_or_else(refused)?;
            (client_id, form.get("client_secret").cloned())
        }
    };
    if client_id == shared.config.client_id {
        return match secret {
            Some(secret) if secret == shared.config.client_secret => Ok(client_id),
            _ => Err(refused()),
        };
    }
    let registered = shared.state().clients.get(&client_id).cloned().ok_or_else(refused)?;
    match (registered.secret, secret) {
        (None, None) => Ok(client_id),
        (Some(expected), Some(secret)) if expected == secret => Ok(client_id),
        _ => Err(refused()),
    }
}

fn form_decode(value: &str) -> String {
    form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn token(shared: &Shared, headers: &HeaderMap, body: &[u8], switches: &Switches) -> Answer {
    let mut form: HashMap<String, String> = HashMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        if form.insert(name.into_owned(), value.into_owned()).is_some() {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "a parameter is repeated");
        }
    }
    let grant = form.get("grant_type").map_or("missing", String::as_str);
    let label = if grant == TOKEN_EXCHANGE_GRANT { "token_exchange" } else { grant };
    *shared.state().counters.token_requests.entry(label.to_owned()).or_default() += 1;
    if let Some(status) = switches.token_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return oauth_error(status, "server_error", "forced by the mock's token_status switch");
    }
    let client_id = match authenticate_client(shared, headers, &form) {
        Ok(client_id) => client_id,
        Err(refused) => return *refused,
    };
    let field = |name: &str| form.get(name).map(String::as_str);
    let invalid_grant = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
    match grant {
        "authorization_code" => {
            let Some(pending) = field("code").and_then(|code| shared.state().codes.remove(code)) else {
                return invalid_grant("unknown or used code");
            };
            if pending.client_id != client_id {
                return invalid_grant("the code was issued to another client");
            }
            if field("redirect_uri") != Some(pending.redirect_uri.as_str()) {
                return invalid_grant("redirect_uri differs from the authorization request");
            }
            match field("code_verifier") {
                Some(verifier) if challenge_for(verifier) == pending.challenge => {}
                _ => return invalid_grant("PKCE verification failed"),
            }
            if pending.resource.is_some() && field("resource") != pending.resource.as_deref() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "resource differs from the authorization request",
                );
            }
            issue_tokens(shared, &client_id, pending.scope, true, pending.resource)
        }
        "refresh_token" => {
            let Some(grant) =
                field("refresh_token").and_then(|token| shared.state().refresh_tokens.remove(token))
            else {
                return invalid_grant("unknown refresh token");
            };
            if grant.client_id != client_id {
                return invalid_grant("the refresh token was issued to another client");
            }
            issue_tokens(shared, &client_id, grant.scope, true, grant.resource)
        }
        "client_credentials" => {
            let confidential = client_id == shared.config.client_id
                || shared.state().clients.get(&client_id).is_some_and(|client| client.secret.is_some());
            if !confidential {
                return oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", "public clients cannot");
            }
            issue_tokens(
                shared,
                &client_id,
                field("scope").map(str::to_owned),
                false,
                field("resource").map(str::to_owned),
            )
        }
        TOKEN_EXCHANGE_GRANT => {
            if field("subject_token").is_none_or(str::is_empty) || field("subject_token_type").is_none() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "subject_token and subject_token_type are required",
                );
            }
            let mut document =
                token_document(shared, &client_id, field("scope").map(str::to_owned), false, None);
            document["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
            token_answer(&document)
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "unsupported grant_type"),
    }
}

fn token_document(
    shared: &Shared,
    client_id: &str,
    scope: Option<String>,
    refresh: bool,
    resource: Option<String>,
) -> Value {
    let access_token = shared.issue_access_token_for(resource.clone());
    let mut document = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": shared.config.expires_in,
    });
    if let Some(scope) = &scope {
        document["scope"] = json!(scope);
    }
    if refresh {
        let refresh_token = shared.random_value("mock_rt_");
        shared
            .state()
            .refresh_tokens
            .insert(refresh_token.clone(), RefreshGrant { client_id: client_id.to_owned(), scope, resource });
        document["refresh_token"] = json!(refresh_token);
    }
    document
}

fn issue_tokens(
    shared: &Shared,
    client_id: &str,
    scope: Option<String>,
    refresh: bool,
    resource: Option<String>,
) -> Answer {
    token_answer(&token_document(shared, client_id, scope, refresh, resource))
}

fn token_answer(document: &Value) -> Answer {
    let mut response = json_answer(StatusCode::OK, document);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn challenge(shared: &Shared, switches: &Switches, invalid_token: bool) -> HeaderValue {
    let mut value = String::from("Bearer ");
    let mut params = Vec::new();
    if invalid_token {
        params.push("error=\"invalid_token\"".to_owned());
    }
    if !switches.metadata_missing {
        params.push(format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            shared.origin
        ));
    }
    params.push(format!("scope=\"{}\"", shared.scope()));
    value.push_str(&params.join(", "));
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

fn mcp(shared: &Shared, headers: &HeaderMap, body: &[u8], switches: &Switches) -> Answer {
    let message = serde_json::from_slice::<Value>(body).ok().filter(|message| message.is_object());
    let method = message.as_ref().and_then(|message| message["method"].as_str()).map(str::to_owned);
    let label = method.clone().unwrap_or_else(|| "invalid".to_owned());
    *shared.state().counters.mcp_requests.entry(label).or_default() += 1;
    if let Some(status) = switches.mcp_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return answer(status, "text/plain", "forced by the mock's mcp_status switch");
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim);
    {
        let mut state = shared.state();
        let valid = bearer.is_some_and(|token| {
            // A token issued for another resource is refused, as an audience-checking MCP server does.
            let own = format!("{}/mcp", shared.origin);
            state.access_tokens.get(token).is_some_and(|(expiry, audience)| {
                *expiry > tokio::time::Instant::now()
                    && audience.as_ref().is_none_or(|audience| *audience == own)
            })
        });
        let forced = state.switches.unauthorized_once;
        if forced {
            state.switches.unauthorized_once = false;
        }
        if forced || (switches.require_auth && !valid) {
            drop(state);
            let mut response = json_answer(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_token", "error_description": "a valid Bearer token is required"}),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge(shared, switches, bearer.is_some()));
            return response;
        }
    }
    if let Some(session) = headers.get("mcp-session-id").and_then(|value| value.to_str().ok())
        && !shared.state().sessions.contains(session)
    {
        return answer(StatusCode::NOT_FOUND, "text/plain", "unknown Mcp-Session-Id");
    }
    let has_session = headers.get("mcp-session-id").is_some();
    if switches.require_session && !has_session && method.as_deref() != Some("initialize") {
        return answer(StatusCode::BAD_REQUEST, "text/plain", "Bad Request: No valid session ID provided");
    }
    let (Some(message), Some(method)) = (message, method) else {
        return json_answer(
            StatusCode::BAD_REQUEST,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "invalid request"}}),
        );
    };
    let Some(id) = message.get("id").cloned().filter(|id| !id.is_null()) else {
        // A notification (`notifications/initialized` and friends).
        return empty(StatusCode::ACCEPTED);
    };
    let params = &message["params"];
    let mut session = None;
    let outcome: Result<Value, (i64, String)> = match method.as_str() {
        "initialize" => {
            let requested = params["protocolVersion"].as_str().unwrap_or_default();
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|version| **version == requested)
                .unwrap_or(&PROTOCOL_VERSIONS[0]);
            let id = shared.random_value("mock_session_");
            shared.state().sessions.insert(id.clone());
            session = Some(id);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "mcp-oauth-mock", "version": env!("CARGO_PKG_VERSION")},
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [
            {
                "name": "echo",
                "description": "Returns its text.",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            },
            {
                "name": "add",
                "description": "Adds two numbers.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                },
            },
        ]})),
        "tools/call" => call_tool(params),
        _ => Err((-32601, format!("method `{method}` not found"))),
    };
    let message = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, text)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}}),
    };
    let mut response = if switches.sse {
        let mut response =
            answer(StatusCode::OK, "text/event-stream", format!("event: message\ndata: {message}\n\n"));
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        json_answer(StatusCode::OK, &message)
    };
    if let Some(session) = session.and_then(|session| HeaderValue::from_str(&session).ok()) {
        response.headers_mut().insert("mcp-session-id", session);
    }
    response
}

fn call_tool(params: &Value) -> Result<Value, (i64, String)> {
    let arguments = &params["arguments"];
    let text = |text: String| json!({"content": [{"type": "text", "text": text}], "isError": false});
    match params["name"].as_str() {
        Some("echo") => match arguments["text"].as_str() {
            Some(value) => Ok(text(value.to_owned())),
            None => Err((-32602, "echo needs a string `text`".to_owned())),
        },
        Some("add") => match (arguments["a"].as_f64(), arguments["b"].as_f64()) {
            (Some(a), Some(b)) => {
                let sum = match (arguments["a"].as_i64(), arguments["b"].as_i64()) {
                    (Some(a), Some(b)) => a.checked_add(b).map(|sum| json!(sum)),
                    _ => None,
                }
                .unwrap_or_else(|| json!(a + b));
                let mut result = text(sum.to_string());
                result["structuredContent"] = json!({"sum": sum});
                Ok(result)
            }
            _ => Err((-32602, "add needs numbers `a` and `b`".to_owned())),
        },
        Some(name) => Err((-32602, format!("unknown tool `{name}`"))),
        None => Err((-32602, "missing tool name".to_owned())),
    }
}
