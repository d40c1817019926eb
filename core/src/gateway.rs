//! The gateway's per-request decision (design §3, §4.4–§4.8): what to do with one request.
//!
//! Given the request head, the peer, the configuration and `now`, [`decide`] answers with an
//! [`Action`]: a complete response (health, metadata, errors, refusals, redirects), or an
//! instruction to forward the MCP request upstream with a chosen credential, or to proxy a token
//! or registration request. The server that runs it only carries bytes. OAuth endpoints answer only
//! for servers configured for the interactive flow; every other name gets the same 404 as an
//! unknown one, so a scanner cannot tell which servers exist.

use std::collections::HashMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use url::Url;

use crate::Reason;
use crate::budget::{BudgetConfig, OverBudget, PeerBudget};
use crate::config::{AuthType, GatewayConfig, ServerConfig};
use crate::delegate::{GATEWAY_KEY_HEADERS, Target, decide_delegation};
use crate::flow::Flow;
use crate::machine::Instant;
use crate::origin::{Origin, RequestOrigin, Scheme, resolve_public_origin};
use crate::outbound::{
    AuthResolution, OutboundCredential, debug_requested, is_gateway_key, resolve_outbound_auth,
};
use crate::redirect::validate_redirect_uri;
use crate::secret::Secret;

/// How long an authorization started at the gateway may take before its `state` expires.
pub const FLOW_LIFETIME_MILLIS: u64 = 10 * 60 * 1000;

/// The parts of a request the gateway decides on.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path and query as received.
    pub path_and_query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The listener's scheme.
    pub scheme: Scheme,
    /// The TCP peer.
    pub peer: Option<IpAddr>,
}

pub use crate::route::Route;

/// Maps a method and path to a route (see [`Route::parse`]).
pub fn route(method: &Method, path_and_query: &str) -> Route {
    Route::parse(method, path_and_query)
}

/// What the server must do with one request.
#[derive(Debug)]
pub enum Action {
    /// Answer with this response.
    Respond(Response<Vec<u8>>),
    /// Forward the MCP request to the server's upstream.
    Forward(Forward),
    /// Read the body (up to the MCP limit), [`Aggregate::plan`] it and carry out the plan: the
    /// request concerns several servers (`POST /mcp`, `/mcp-rest/tools/*`).
    Aggregate(Aggregate),
    /// Read the form body, build the upstream request with [`build_token_request`], send it, and
    /// answer with [`finish_token_response`].
    ProxyToken {
        /// The server's name.
        server: String,
        /// The gateway's public origin for this request (its callback URL is derived from it).
        origin: Origin,
    },
    /// Forward the client's registration body to this upstream registration endpoint and relay the
    /// answer (status and JSON body).
    ProxyRegister {
        /// The server's name.
        server: String,
        /// The upstream registration endpoint.
        url: Url,
    },
}

/// What to do when the upstream MCP server answers a forwarded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamReaction {
    /// Relay the answer as it is.
    Relay,
    /// Drop the cached token the gateway obtained (M2M or exchanged), fetch a fresh one and retry
    /// once (design §4.3).
    RetryWithFreshToken,
}

/// Decides how to treat the upstream's status for a forwarded request; `retried` says whether
/// this answer is already the retry.
pub fn upstream_reaction(forward: &Forward, status: StatusCode, retried: bool) -> UpstreamReaction {
    // The tokens the gateway obtained itself (M2M, RFC 8693 exchange) may be cached past their
    // validity upstream; a caller's own or static credential would only fail again.
    let gateway_token = matches!(
        forward.credential,
        OutboundCredential::ClientCredentialsToken | OutboundCredential::ExchangeToken { .. }
    );
    if status == StatusCode::UNAUTHORIZED && !retried && !forward.delegated && gateway_token {
        UpstreamReaction::RetryWithFreshToken
    } else {
        UpstreamReaction::Relay
    }
}

/// An MCP request to forward.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The target server's name.
    pub server: String,
    /// The upstream URL.
    pub url: Url,
    /// Headers to send upstream (the credential is attached by the server per `credential`).
    pub headers: HeaderMap,
    /// Which credential to attach.
    pub credential: OutboundCredential,
    /// How it was chosen.
    pub resolution: AuthResolution,
    /// Auth was delegated: relay the upstream's 401 and `WWW-Authenticate` as they are.
    pub delegated: bool,
    /// The caller asked for debug headers.
    pub debug: bool,
}

/// A request to the aggregating endpoints, with one [`Forward`] per target server: each carries
/// the URL, headers and credential for that server, exactly as a single-server request would.
#[derive(Debug)]
pub struct Aggregate {
    /// Which endpoint the request came to.
    pub endpoint: crate::aggregate::Endpoint,
    /// The target servers, in the order the caller named them (or the configuration lists them).
    pub targets: Vec<Forward>,
    /// The REST listing's `cursor` query parameter.
    pub cursor: Option<String>,
    names: Vec<String>,
}

impl Aggregate {
    /// Plans the request from its body (see [`crate::aggregate::plan`]); a plan's `target` is an
    /// index into [`Aggregate::targets`].
    pub fn plan(&self, body: &[u8]) -> crate::aggregate::Plan {
        let delegated = self.targets.iter().all(|target| target.delegated);
        let request = crate::aggregate::Request {
            endpoint: self.endpoint,
            servers: &self.names,
            delegated,
            cursor: self.cursor.as_deref(),
        };
        crate::aggregate::plan(&request, body)
    }
}

/// The most authorizations (and relayed codes) pending at once. Each holds at most a few KiB
/// (parameters are capped at [`MAX_AUTHORIZE_PARAMETER`]), so a full store stays small.
pub const MAX_PENDING_FLOWS: usize = 4096;

/// The longest `state` a client may send to `/{server}/authorize`, in bytes.
pub const MAX_CLIENT_STATE: usize = 512;

/// The longest value of any `/{server}/authorize` parameter, in bytes.
pub const MAX_AUTHORIZE_PARAMETER: usize = 2048;

/// Authorizations in progress, keyed by the `state` the gateway sent upstream, and the codes they
/// relayed, each bound to the origin the flow began under. Bounded by [`MAX_PENDING_FLOWS`];
/// expiry pops from the front of an insertion-ordered queue, so it costs nothing per request.
#[derive(Debug, Default)]
pub struct FlowStore {
    flows: HashMap<String, PendingFlow>,
    codes: HashMap<String, RelayedCode>,
    /// Keys in insertion order (time order, as `now` only grows), for expiry.
    order: std::collections::VecDeque<(Instant, Pending, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Flow,
    Code,
}

#[derive(Debug)]
struct PendingFlow {
    server: String,
    client_redirect_uri: Url,
    client_state: Option<String>,
    /// The public origin the flow began under; the callback must resolve to the same one.
    origin: Origin,
    started: Instant,
}

#[derive(Debug)]
struct RelayedCode {
    server: String,
    /// The origin of the flow that relayed it; the token request must come under the same one.
    origin: Origin,
    issued: Instant,
}

fn alive(started: Instant, now: Instant) -> bool {
    now.as_millis().saturating_sub(started.as_millis()) < FLOW_LIFETIME_MILLIS
}

impl FlowStore {
    /// Drops flows and codes older than [`FLOW_LIFETIME_MILLIS`].
    pub fn expire(&mut self, now: Instant) {
        while let Some((started, kind, key)) = self.order.front() {
            if alive(*started, now) {
                break;
            }
            // Only the entry this queue slot was made for: a key taken and never reused is gone
            // already, and keys are random or single-use, so a started time identifies the entry.
            match kind {
                Pending::Flow if self.flows.get(key).is_some_and(|flow| flow.started == *started) => {
                    self.flows.remove(key);
                }
                Pending::Code if self.codes.get(key).is_some_and(|code| code.issued == *started) => {
                    self.codes.remove(key);
                }
                _ => {}
            }
            self.order.pop_front();
        }
        // Entries taken before they expired leave queue slots behind; keep the queue in proportion.
        if self.order.len() > 4 * MAX_PENDING_FLOWS {
            let (flows, codes) = (&self.flows, &self.codes);
            self.order.retain(|(_, kind, key)| match kind {
                Pending::Flow => flows.contains_key(key),
                Pending::Code => codes.contains_key(key),
            });
        }
    }

    fn is_full(&self) -> bool {
        self.flows.len() + self.codes.len() >= MAX_PENDING_FLOWS
    }

    fn insert_flow(&mut self, state: String, flow: PendingFlow) {
        self.order.push_back((flow.started, Pending::Flow, state.clone()));
        self.flows.insert(state, flow);
    }

    fn insert_code(&mut self, code: String, relayed: RelayedCode) {
        self.order.push_back((relayed.issued, Pending::Code, code.clone()));
        self.codes.insert(code, relayed);
    }

    /// How many flows are pending.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is pending.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// What the gateway keeps for strangers' OAuth traffic: pending authorizations and the per-peer
/// budget those routes spend. A server locks it only for routes where [`Route::is_oauth`] holds.
#[derive(Debug)]
pub struct OAuthState {
    /// Authorizations in progress.
    pub flows: FlowStore,
    /// What each peer may still ask of the OAuth routes.
    pub budget: PeerBudget,
}

impl Default for OAuthState {
    fn default() -> Self {
        Self { flows: FlowStore::default(), budget: PeerBudget::new(BudgetConfig::OAUTH_ENDPOINTS) }
    }
}

/// Inputs to [`decide`] besides the request.
pub struct Context<'a> {
    /// The loaded configuration.
    pub config: &'a GatewayConfig,
    /// The OAuth routes' state; needed only where [`Route::is_oauth`] holds (an OAuth request
    /// without it is refused with a 503, never served without its checks).
    pub oauth: Option<&'a mut OAuthState>,
    /// The time.
    pub now: Instant,
    /// 16 fresh random bytes for the upstream `state` when this request starts a flow. Only
    /// routes for which [`Route::needs_random`] holds use them, so a server can skip the system
    /// call on every other request; an authorization without them is refused (503).
    pub random: Option<[u8; 16]>,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let mut response = Response::new(body.to_string().into_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The JSON error every refusal uses: `{"error": code, "error_description": message}`.
pub fn error_response(status: StatusCode, error: &str, description: &str) -> Response<Vec<u8>> {
    json_response(status, &json!({"error": error, "error_description": description}))
}

fn not_found() -> Response<Vec<u8>> {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such route or server")
}

/// A server that serves the browser-facing OAuth endpoints (interactive oauth2 only).
fn interactive<'c>(config: &'c GatewayConfig, name: &str) -> Option<&'c ServerConfig> {
    config.servers.get(name).filter(|server| {
        server.policy.auth_type == AuthType::OAuth2 && server.policy.flow == Flow::AuthorizationCode
    })
}

/// Decides what to do with one request (see the module docs).
pub fn decide(head: &RequestHead<'_>, context: &mut Context<'_>) -> Action {
    decide_routed(route(head.method, head.path_and_query), head, context)
}

/// [`decide`] for a request the server has routed already (it needs the route before deciding,
/// to know whether to lock the OAuth state): the path is parsed once.
pub fn decide_routed(route: Route, head: &RequestHead<'_>, context: &mut Context<'_>) -> Action {
    if route == Route::Health {
        return Action::Respond(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    if route == Route::NotFound {
        return Action::Respond(not_found());
    }
    let config = context.config;
    // MCP routes need the public origin only to point a refused caller at the metadata; resolving
    // it (a strict parse of `Host`) on every forwarded call would be wasted work.
    match &route {
        Route::ServerMcp(name) => return mcp(head, name, config),
        Route::Mcp => return aggregate_mcp(head, config),
        Route::RestToolsList | Route::RestToolsCall => return rest_tools(head, &route, config),
        _ => {}
    }
    let origin = match public_origin(head, config) {
        Ok(origin) => origin,
        Err(refusal) => return Action::Respond(refusal),
    };
    if route.is_oauth() {
        // A stranger's OAuth traffic: its budget is spent before anything is parsed or kept, and
        // it is served only under an origin an attacker cannot choose.
        let Some(oauth) = context.oauth.as_deref_mut() else {
            return Action::Respond(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the gateway's OAuth state is not available to this request",
            ));
        };
        if let Err(over) = oauth.budget.spend(head.peer, context.now) {
            return Action::Respond(over_budget(&over));
        }
        if let Err(refusal) = oauth_origin(&origin, config) {
            return Action::Respond(refusal);
        }
    }
    let (now, random) = (context.now, context.random);
    let oauth = context.oauth.as_deref_mut();
    match (route, oauth) {
        (Route::ProtectedResourceMetadata(name), _) => match interactive(config, &name) {
            Some(_) => Action::Respond(json_response(
                StatusCode::OK,
                &json!({
                    "resource": format!("{origin}/{name}/mcp"),
                    "authorization_servers": [format!("{origin}/{name}")],
                    "bearer_methods_supported": ["header"],
                }),
            )),
            None => Action::Respond(not_found()),
        },
        (Route::AuthorizationServerMetadata(name), _) => match interactive(config, &name) {
            Some(server) => Action::Respond(json_response(
                StatusCode::OK,
                &authorization_server_metadata(&origin, server),
            )),
            None => Action::Respond(not_found()),
        },
        (Route::Authorize(name), Some(oauth)) => match interactive(config, &name) {
            Some(server) => {
                Action::Respond(authorize(head, &origin, server, config, &mut oauth.flows, now, random))
            }
            None => Action::Respond(not_found()),
        },
        (Route::Callback, Some(oauth)) => {
            Action::Respond(callback(head, &origin, config, &mut oauth.flows, now))
        }
        (Route::Token(name), Some(_)) => match interactive(config, &name) {
            Some(server) => proxy_token(head, origin, server),
            None => Action::Respond(not_found()),
        },
        (Route::Register(name), Some(_)) => match interactive(config, &name) {
            Some(server) => register(server),
            None => Action::Respond(not_found()),
        },
        _ => Action::Respond(not_found()),
    }
}

/// The 429 for a peer past its budget (or 503 when the budget table itself is full).
fn over_budget(over: &OverBudget) -> Response<Vec<u8>> {
    let (status, retry_after) = match over {
        OverBudget::Peer { retry_after } => (StatusCode::TOO_MANY_REQUESTS, retry_after.as_secs().max(1)),
        _ => (StatusCode::SERVICE_UNAVAILABLE, 1),
    };
    let mut response = error_response(status, over.reason(), &over.to_string());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// Whether OAuth may be served under `origin` (design §4.4): the origin must be pinned (a Host an
/// attacker chose would let him start a flow under his own origin and collect a victim's code),
/// and https unless it is loopback. Start-up refuses such configurations
/// ([`check_startup`]); this holds the rule for an embedder who skipped that check.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn oauth_origin(origin: &Origin, config: &GatewayConfig) -> Result<(), Response<Vec<u8>>> {
    if !config.settings.origin.is_pinned() {
        return Err(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "origin_not_pinned",
            "the gateway's public origin is not pinned; set PROXY_BASE_URL",
        ));
    }
    if origin.scheme() != Scheme::Https && !origin.is_loopback() {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "insecure_origin",
            "OAuth is served only over https (or on loopback)",
        ));
    }
    Ok(())
}

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
    Ok(warnings)
}

/// The gateway's public origin for this request (design §4.4), or the 400 that refuses a request
/// whose origin cannot be resolved (a malformed `Host`, forged or malformed forwarding headers).
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn public_origin(head: &RequestHead<'_>, config: &GatewayConfig) -> Result<Origin, Response<Vec<u8>>> {
    let request_origin = RequestOrigin {
        scheme: head.scheme,
        host: head.headers.get(header::HOST).and_then(|value| value.to_str().ok()),
        peer: head.peer,
        headers: head.headers,
    };
    resolve_public_origin(&config.settings.origin, &request_origin)
        .map(|resolved| resolved.origin)
        .map_err(|error| error_response(StatusCode::BAD_REQUEST, error.reason(), &error.to_string()))
}

/// RFC 8414 metadata the gateway publishes for one interactive server.
fn authorization_server_metadata(origin: &Origin, server: &ServerConfig) -> Value {
    let base = format!("{origin}/{}", server.name);
    let mut document = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
    });
    if let Some(scopes) = &server.entry.scopes {
        document["scopes_supported"] = json!(scopes);
    }
    document
}

fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    let query = path_and_query.split_once('?').map(|(_, query)| query).unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The single value of a query parameter; a repeated parameter is ambiguous and refused.
fn single(pairs: &[(String, String)], name: &str) -> Result<Option<String>, String> {
    let mut values = pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(format!("parameter `{name}` is repeated"));
    }
    Ok(first)
}

/// The most parameters an authorization request may carry.
const MAX_AUTHORIZE_PARAMETERS: usize = 32;

/// Refuses an authorization request whose parameters are too many or too long: a stranger must
/// not make the gateway hold more than a few KiB per flow.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn check_authorize_sizes(pairs: &[(String, String)]) -> Result<(), Response<Vec<u8>>> {
    let refuse = |why: String| Err(error_response(StatusCode::BAD_REQUEST, "invalid_request", &why));
    if pairs.len() > MAX_AUTHORIZE_PARAMETERS {
        return refuse(format!("more than {MAX_AUTHORIZE_PARAMETERS} parameters"));
    }
    for (name, value) in pairs {
        if name.len() > MAX_AUTHORIZE_PARAMETER || value.len() > MAX_AUTHORIZE_PARAMETER {
            return refuse(format!("a parameter is longer than {MAX_AUTHORIZE_PARAMETER} bytes"));
        }
        if name == "state" && value.len() > MAX_CLIENT_STATE {
            return refuse(format!("state is longer than {MAX_CLIENT_STATE} bytes"));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the request, where it is served, and the state it may change
fn authorize(
    head: &RequestHead<'_>,
    origin: &Origin,
    server: &ServerConfig,
    config: &GatewayConfig,
    flows: &mut FlowStore,
    now: Instant,
    random: Option<[u8; 16]>,
) -> Response<Vec<u8>> {
    let pairs = query_pairs(head.path_and_query);
    if let Err(refusal) = check_authorize_sizes(&pairs) {
        return refusal;
    }
    let param = |name: &str| single(&pairs, name);
    let (redirect_uri, state, challenge, method) = match (
        param("redirect_uri"),
        param("state"),
        param("code_challenge"),
        param("code_challenge_method"),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => return error_response(StatusCode::BAD_REQUEST, "invalid_request", "a parameter is repeated"),
    };
    let Some(redirect_uri) = redirect_uri else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is required");
    };
    let decision =
        validate_redirect_uri(&redirect_uri, Some(origin), &config.settings.trusted_redirect_origins);
    let Some(client_redirect) = decision.uri().cloned() else {
        let body = decision.error_body().unwrap_or_else(|| json!({"error": "invalid_request"}));
        return json_response(StatusCode::BAD_REQUEST, &body);
    };
    // From here on errors may be redirected to the validated redirect_uri, but only PKCE errors
    // are worth it; keep them as 400s so a misbehaving client sees them at once.
    if challenge.as_deref().is_none_or(str::is_empty) || method.as_deref() != Some("S256") {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required",
        );
    }
    let Some(authorization_url) =
        server.entry.authorization_url.as_deref().and_then(|url| Url::parse(url).ok())
    else {
        return error_response(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "the upstream authorization endpoint is not configured (set authorization_url)",
        );
    };
    let Some(client_id) = server.entry.client_id.as_deref() else {
        return error_response(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "no client_id is configured for the upstream",
        );
    };
    let Some(random) = random else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the gateway has no random source for the authorization state",
        );
    };
    flows.expire(now);
    if flows.is_full() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_pending_authorizations",
            "too many authorizations are in progress; retry in a few minutes",
        );
    }
    let upstream_state = crate::pkce::state_from_random(random);
    flows.insert_flow(
        upstream_state.clone(),
        PendingFlow {
            server: server.name.clone(),
            client_redirect_uri: client_redirect,
            client_state: state,
            origin: origin.clone(),
            started: now,
        },
    );
    let mut upstream = authorization_url;
    {
        let mut query = upstream.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", &format!("{origin}/callback"))
            .append_pair("state", &upstream_state)
            .append_pair("code_challenge", challenge.as_deref().unwrap_or_default())
            .append_pair("code_challenge_method", "S256");
        let scope = match single(&pairs, "scope") {
            Ok(Some(scope)) => Some(scope),
            _ => server.entry.scopes.as_ref().map(|scopes| scopes.join(" ")),
        };
        if let Some(scope) = scope.filter(|scope| !scope.is_empty()) {
            query.append_pair("scope", &scope);
        }
        if let Ok(Some(resource)) = single(&pairs, "resource") {
            query.append_pair("resource", &resource);
        }
    }
    redirect(&upstream)
}

fn redirect(location: &Url) -> Response<Vec<u8>> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location.as_str()) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /callback`: the upstream's answer to a flow this gateway started. The flow is single use
/// and must be answered under the origin it began under; a present `iss` must name the upstream
/// issuer (RFC 9207), and is refused when no issuer is known to compare it with.
fn callback(
    head: &RequestHead<'_>,
    origin: &Origin,
    config: &GatewayConfig,
    flows: &mut FlowStore,
    now: Instant,
) -> Response<Vec<u8>> {
    let pairs = query_pairs(head.path_and_query);
    let Ok(Some(state)) = single(&pairs, "state") else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the callback has no single state",
        );
    };
    flows.expire(now);
    // Single use: a replayed callback finds nothing.
    let Some(flow) = flows.flows.remove(&state) else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "unknown or expired state");
    };
    if &flow.origin != origin {
        return error_response(
            StatusCode::BAD_REQUEST,
            "origin_mismatch",
            "this authorization began under another origin of the gateway",
        );
    }
    let issuer = config
        .servers
        .get(&flow.server)
        .and_then(|server| server.entry.issuer.as_deref())
        .and_then(|issuer| Url::parse(issuer).ok());
    match (single(&pairs, "iss"), &issuer) {
        (Ok(None), _) => {}
        (Ok(Some(iss)), Some(issuer)) if crate::discovery::issuer_matches(issuer, &iss) => {}
        (Ok(Some(_)), None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "issuer_unknown",
                "the authorization server sent `iss` but no issuer is configured for this server to compare it with; set `issuer`",
            );
        }
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "issuer_mismatch",
                "the authorization response names another issuer (RFC 9207)",
            );
        }
    }
    let mut location = flow.client_redirect_uri.clone();
    {
        let mut query = location.query_pairs_mut();
        for name in ["code", "error", "error_description"] {
            if let Ok(Some(value)) = single(&pairs, name) {
                query.append_pair(name, &value);
            }
        }
        if let Some(state) = &flow.client_state {
            query.append_pair("state", state);
        }
    }
    if let Ok(Some(code)) = single(&pairs, "code")
        && code.len() <= MAX_AUTHORIZE_PARAMETER
    {
        flows
            .insert_code(code, RelayedCode { server: flow.server.clone(), origin: flow.origin, issued: now });
    }
    redirect(&location)
}

/// The body of a form request, parsed; a repeated field is refused.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    for (index, (name, _)) in pairs.iter().enumerate() {
        if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(format!("form field `{name}` is repeated"));
        }
    }
    Ok(pairs)
}

/// The token request arrives with its body, so [`decide`] only checks the route; the server calls
/// this with the body to build the upstream request. The error is the response to send back.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn build_token_request(
    server: &ServerConfig,
    origin: &Origin,
    body: &[u8],
    flows: &mut FlowStore,
    now: Instant,
) -> Result<http::Request<Vec<u8>>, Response<Vec<u8>>> {
    let form =
        parse_form(body).map_err(|why| error_response(StatusCode::BAD_REQUEST, "invalid_request", &why))?;
    let get = |name: &str| form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let Some(token_url) = server.entry.token_url.as_deref().and_then(|url| Url::parse(url).ok()) else {
        return Err(error_response(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "the upstream token endpoint is not configured",
        ));
    };
    let mut upstream = url::form_urlencoded::Serializer::new(String::new());
    match get("grant_type") {
        Some("authorization_code") => {
            let code = get("code").unwrap_or_default();
            flows.expire(now);
            // The code must come from a flow this gateway started for this server, under the
            // origin this request is served under.
            match flows.codes.remove(code) {
                Some(relayed) if relayed.server == server.name && &relayed.origin == origin => {}
                _ => {
                    return Err(error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown, expired or foreign code",
                    ));
                }
            }
            let Some(verifier) = get("code_verifier") else {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code_verifier is required (PKCE)",
                ));
            };
            upstream
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("code_verifier", verifier)
                .append_pair("redirect_uri", &format!("{origin}/callback"));
        }
        Some("refresh_token") => {
            let Some(refresh) = get("refresh_token") else {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                ));
            };
            upstream.append_pair("grant_type", "refresh_token").append_pair("refresh_token", refresh);
        }
        _ => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use authorization_code or refresh_token",
            ));
        }
    }
    if let Some(resource) = get("resource") {
        upstream.append_pair("resource", resource);
    }
    if let Some(client_id) = &server.entry.client_id {
        upstream.append_pair("client_id", client_id);
    }
    if let Some(secret) = &server.entry.client_secret {
        upstream.append_pair("client_secret", secret.expose());
    }
    http::Request::builder()
        .method(Method::POST)
        .uri(token_url.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(upstream.finish().into_bytes())
        .map_err(|_| {
            error_response(StatusCode::BAD_GATEWAY, "server_error", "cannot build the upstream token request")
        })
}

fn proxy_token(head: &RequestHead<'_>, origin: Origin, server: &ServerConfig) -> Action {
    let form = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Action::Respond(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the token endpoint takes application/x-www-form-urlencoded",
        ));
    }
    Action::ProxyToken { server: server.name.clone(), origin }
}

/// Applies `token_validation` to the upstream's token answer; a failure is a 403 naming the field.
pub fn finish_token_response(server: &ServerConfig, upstream: Response<Vec<u8>>) -> Response<Vec<u8>> {
    let status = upstream.status();
    if !status.is_success() {
        return json_response(
            if status.is_client_error() { status } else { StatusCode::BAD_GATEWAY },
            &serde_json::from_slice::<Value>(upstream.body()).unwrap_or_else(|_| json!({"error": "server_error", "error_description": "the upstream token endpoint failed"})),
        );
    }
    let Ok(document) = serde_json::from_slice::<Value>(upstream.body()) else {
        return error_response(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "the upstream token response is not JSON",
        );
    };
    if let Err(refusal) = check_token_validation(server, &document) {
        return refusal;
    }
    json_response(StatusCode::OK, &document)
}

/// `token_validation` (design §4.3) on a token response `document`: every rule must hold, else a
/// 403 `token_validation_failed` naming the field (never the token).
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn check_token_validation(server: &ServerConfig, document: &Value) -> Result<(), Response<Vec<u8>>> {
    match &server.entry.token_validation {
        Some(rules) => crate::token::validate_token_response(rules, document).map_err(|failure| {
            json_response(
                StatusCode::FORBIDDEN,
                &json!({"error": failure.reason(), "field": failure.field(), "error_description": failure.to_string()}),
            )
        }),
        None => Ok(()),
    }
}

/// Applies `token_validation` to a token the gateway fetched for itself (M2M, RFC 8693 exchange)
/// before it is cached or used: design §4.3 checks every token response "before it is stored or
/// returned". A body that is not JSON fails every rule.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn validate_fetched_token(server: &ServerConfig, body: &[u8]) -> Result<(), Response<Vec<u8>>> {
    if server.entry.token_validation.is_none() {
        return Ok(());
    }
    let document = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    check_token_validation(server, &document)
}

fn register(server: &ServerConfig) -> Action {
    match &server.entry.client_id {
        // A pre-stored client: hand out its ID, never its secret.
        Some(client_id) => Action::Respond(json_response(
            StatusCode::CREATED,
            &json!({
                "client_id": client_id,
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }),
        )),
        None => match server.entry.registration_url.as_deref().and_then(|url| Url::parse(url).ok()) {
            Some(url) => Action::ProxyRegister { server: server.name.clone(), url },
            None => Action::Respond(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "this server takes no registrations: configure client_id or registration_url",
            )),
        },
    }
}

/// Request headers that travel upstream with an MCP request.
const FORWARDED_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
    HeaderName::from_static("last-event-id"),
    header::USER_AGENT,
];

fn mcp(head: &RequestHead<'_>, name: &str, config: &GatewayConfig) -> Action {
    let Some(server) = config.servers.get(name) else {
        return Action::Respond(not_found());
    };
    let delegated = delegation(head, Some(name), config);
    if !delegated && !admitted(head.headers, server, config) {
        return Action::Respond(match public_origin(head, config) {
            Ok(origin) => key_required(Some(&challenge(&origin, name))),
            Err(refusal) => refusal,
        });
    }
    Action::Forward(forward(head, name, server, delegated, config))
}

/// Whether auth is delegated for this request (design §4.6), from the server the router resolved
/// (`routed`, `None` on the aggregating route) and `x-mcp-servers`.
fn delegation(head: &RequestHead<'_>, routed: Option<&str>, config: &GatewayConfig) -> bool {
    let lookup = |name: &str| match config.servers.get(name) {
        Some(server) => Target::Known(&server.policy),
        None => Target::Unknown,
    };
    decide_delegation(routed, head.headers, lookup).delegates()
}

/// The challenge a caller without a gateway key gets: where the server's protected-resource
/// metadata is, so an OAuth client can find its way.
fn challenge(origin: &Origin, name: &str) -> String {
    format!("Bearer resource_metadata=\"{origin}/.well-known/oauth-protected-resource/{name}/mcp\"")
}

/// 401 for a request without a valid gateway key.
fn key_required(challenge: Option<&str>) -> Response<Vec<u8>> {
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
fn forward(
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
    }
}

/// `POST /mcp`: the servers named in `x-mcp-servers`, aggregated (see [`crate::aggregate`]).
fn aggregate_mcp(head: &RequestHead<'_>, config: &GatewayConfig) -> Action {
    if head.method != Method::POST {
        // No session and no server-initiated stream: the aggregating endpoint is request/response.
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the aggregating endpoint accepts POST only",
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Action::Respond(response);
    }
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
    targets(head, crate::aggregate::Endpoint::Mcp, names, delegated, None, config)
}

/// `/mcp-rest/tools/list` and `/mcp-rest/tools/call`: always behind the gateway key (they are not
/// MCP endpoints, so there is nothing to delegate to). The targets are `server_id` (listing),
/// else `x-mcp-servers`, else every configured server.
fn rest_tools(head: &RequestHead<'_>, route: &Route, config: &GatewayConfig) -> Action {
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
fn named_targets(headers: &HeaderMap) -> Result<Option<Vec<String>>, Response<Vec<u8>>> {
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
fn targets(
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
            (crate::aggregate::Endpoint::Mcp, Some(name)) => match public_origin(head, config) {
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
    Action::Aggregate(Aggregate { endpoint, targets, cursor, names })
}

/// Whether the request carries a gateway key: in the key headers, or in `Authorization` when the
/// target server is not oauth2 (there `Authorization` is never an upstream token).
fn admitted(headers: &HeaderMap, server: &ServerConfig, config: &GatewayConfig) -> bool {
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

/// Checks the body of a request to forward before any credential is spent on it: a `POST` must
/// carry JSON-RPC 2.0 ([`crate::aggregate::check_message`]); other methods carry no message. The
/// error is a 400 with a JSON-RPC error.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn check_forward_body(method: &Method, body: &[u8]) -> Result<(), Response<Vec<u8>>> {
    if method == Method::POST { crate::aggregate::check_message(body) } else { Ok(()) }
}

/// The token request to send before forwarding with `credential` to `server`: the M2M
/// client-credentials grant to `token_url`, or the RFC 8693 exchange of the caller's token to
/// `token_exchange_endpoint` (else `token_url`). An incomplete configuration is a 503 naming what
/// is missing (never a secret); a credential that needs no token endpoint is a 500 (a caller bug).
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn outbound_token_request(
    server: &ServerConfig,
    credential: &OutboundCredential,
) -> Result<http::Request<Vec<u8>>, Response<Vec<u8>>> {
    use crate::client::token::{ACCESS_TOKEN_TYPE, Client, Grant, choose_token_endpoint_auth, token_request};
    let unavailable = |what: &str| {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_endpoint_failed",
            &format!("cannot request an upstream token for `{}`: {what}", server.name),
        )
    };
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
        _ => {
            return Err(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "this credential needs no token endpoint",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_yaml;

    const CONFIG: &str = "
general_settings:
  master_key: sk-gateway-key-0001
mcp_servers:
  github:
    url: https://api.github.example/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    client_id: gh-client
    client_secret: gh-secret-value-0001
    authorization_url: https://github.example/login/oauth/authorize
    token_url: https://github.example/login/oauth/access_token
    scopes: [repo]
    token_validation:
      team.enterprise_id: E1
  delegated:
    url: https://delegated.example/mcp
    auth_type: oauth2
    authorization_url: https://auth.example/authorize
    delegate_auth_to_upstream: true
  reports:
    url: https://reports.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: r
    client_secret: r-secret-value-0001
    token_url: https://auth.example/token
  wiki:
    url: https://wiki.example/mcp
    auth_type: bearer_token
    authentication_token: wiki-token-0001
";

    fn config() -> GatewayConfig {
        let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "https://gw.example.com".to_owned());
        load_yaml(CONFIG, &env).unwrap().config
    }

    fn run(
        config: &GatewayConfig,
        flows: &mut OAuthState,
        method: Method,
        path: &str,
        pairs: &[(&'static str, &str)],
    ) -> Action {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("internal:4000"));
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        let head = RequestHead {
            method: &method,
            path_and_query: path,
            headers: &headers,
            scheme: Scheme::Http,
            peer: None,
        };
        let mut context =
            Context { config, oauth: Some(flows), now: Instant::from_millis(1_000), random: Some([7; 16]) };
        decide(&head, &mut context)
    }

    fn respond(action: Action) -> Response<Vec<u8>> {
        match action {
            Action::Respond(response) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn body(response: &Response<Vec<u8>>) -> Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn oauth_endpoints_answer_only_for_interactive_servers() {
        let config = config();
        let mut flows = OAuthState::default();
        let prm = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/.well-known/oauth-protected-resource/github/mcp",
            &[],
        ));
        assert_eq!(prm.status(), StatusCode::OK);
        assert_eq!(body(&prm)["resource"], "https://gw.example.com/github/mcp");
        let asm = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/.well-known/oauth-authorization-server/github",
            &[],
        ));
        assert_eq!(body(&asm)["authorization_endpoint"], "https://gw.example.com/github/authorize");
        for name in ["reports", "wiki", "nope"] {
            let unknown = respond(run(
                &config,
                &mut flows,
                Method::GET,
                &format!("/.well-known/oauth-authorization-server/{name}"),
                &[],
            ));
            let known_404 = respond(run(
                &config,
                &mut flows,
                Method::GET,
                "/.well-known/oauth-authorization-server/nope",
                &[],
            ));
            assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "{name}");
            assert_eq!(
                unknown.body(),
                known_404.body(),
                "{name} is indistinguishable from an unknown server"
            );
            let register = respond(run(&config, &mut flows, Method::POST, &format!("/{name}/register"), &[]));
            assert_eq!(register.status(), StatusCode::NOT_FOUND);
        }
    }

    #[test]
    fn register_hands_out_the_client_id_never_the_secret() {
        let config = config();
        let response =
            respond(run(&config, &mut OAuthState::default(), Method::POST, "/github/register", &[]));
        assert_eq!(response.status(), StatusCode::CREATED);
        let text = String::from_utf8_lossy(response.body()).into_owned();
        assert!(text.contains("gh-client"));
        assert!(!text.contains("gh-secret-value-0001"));
    }

    fn as_metadata(
        authorization: Option<&str>,
        token: Option<&str>,
    ) -> crate::metadata::AuthorizationServerMetadata {
        crate::metadata::AuthorizationServerMetadata {
            issuer: "https://login.example".into(),
            authorization_endpoint: authorization.map(str::to_owned),
            token_endpoint: token.map(str::to_owned),
            registration_endpoint: Some("https://login.example/register".into()),
            ..Default::default()
        }
    }

    const DISCOVERED: &str = "
mcp_servers:
  bare:
    url: https://bare.example/mcp
    auth_type: oauth2
  half:
    url: https://half.example/mcp
    auth_type: oauth2
    authorization_url: https://configured.example/authorize
    issuer: https://configured.example
  m2m:
    url: https://m2m.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: m
    client_secret: m-secret-value
  local:
    url: http://127.0.0.1:9000/mcp
    auth_type: oauth2
";

    #[test]
    fn startup_discovery_fills_only_what_the_configuration_leaves_empty() {
        let mut discovered = load_yaml(DISCOVERED, &|_| None).unwrap().config;
        let names: Vec<(&str, Vec<&str>)> = discovered
            .servers
            .values()
            .map(|server| (server.name.as_str(), missing_endpoints(server)))
            .collect();
        assert_eq!(
            names,
            [
                ("bare", vec!["authorization_url", "token_url"]),
                ("half", vec!["token_url"]),
                ("m2m", vec!["token_url"]),
                ("local", vec!["authorization_url", "token_url"])
            ]
        );
        assert!(discovered.servers.values().all(|server| endpoint_discovery(server).is_some()));
        let configured = config();
        for name in ["github", "reports", "wiki"] {
            assert!(endpoint_discovery(&configured.servers[name]).is_none(), "{name} names its endpoints");
        }
        let half = &mut discovered.servers["half"];
        let discovery = endpoint_discovery(half).unwrap();
        assert_eq!(
            discovery.configured.issuer.as_ref().map(Url::as_str),
            Some("https://configured.example/")
        );
        let filled = apply_discovery(
            half,
            &as_metadata(Some("https://login.example/a"), Some("https://login.example/t")),
        );
        assert_eq!(filled, Ok(vec!["token_url", "registration_url"]));
        assert_eq!(half.entry.authorization_url.as_deref(), Some("https://configured.example/authorize"));
        assert_eq!(half.entry.token_url.as_deref(), Some("https://login.example/t"));
        assert!(missing_endpoints(half).is_empty());
    }

    #[test]
    fn startup_discovery_refuses_endpoints_it_must_not_send_secrets_to() {
        let mut config = load_yaml(DISCOVERED, &|_| None).unwrap().config;
        let bare = &mut config.servers["bare"];
        let plain = as_metadata(Some("https://login.example/a"), Some("http://login.example/t"));
        assert_eq!(
            apply_discovery(bare, &plain).map_err(|error| error.reason()),
            Err("blocked_by_fetch_policy")
        );
        let internal = as_metadata(Some("https://login.example/a"), Some("https://10.0.0.8/t"));
        assert_eq!(
            apply_discovery(bare, &internal).map_err(|error| error.reason()),
            Err("blocked_by_fetch_policy")
        );
        let without_token = as_metadata(Some("https://login.example/a"), None);
        assert_eq!(
            apply_discovery(bare, &without_token).map_err(|error| error.reason()),
            Err("endpoint_not_published")
        );
        assert!(bare.entry.authorization_url.is_none(), "a refused discovery changes nothing");
        // A token endpoint that discovery alone names on another origin never gets the secret.
        let mut secretive = bare.clone();
        secretive.entry.client_secret = Some(Secret::new("s3cret-value-0001"));
        let elsewhere = as_metadata(Some("https://login.example/a"), Some("https://login.example/t"));
        assert_eq!(
            apply_discovery(&mut secretive, &elsewhere).map_err(|error| error.reason()),
            Err("blocked_by_fetch_policy")
        );
        secretive.entry.issuer = Some("https://login.example".into());
        assert!(apply_discovery(&mut secretive, &elsewhere).is_ok(), "the configured issuer pins it");
        // A server on loopback may use http endpoints on loopback (a local development setup).
        let local = &mut config.servers["local"];
        let loopback = as_metadata(Some("http://127.0.0.1:9001/a"), Some("http://127.0.0.1:9001/t"));
        assert_eq!(
            apply_discovery(local, &loopback),
            Ok(vec!["issuer", "authorization_url", "token_url", "registration_url"])
        );
        assert_eq!(
            local.entry.issuer.as_deref(),
            Some("https://login.example"),
            "`iss` is checked against it"
        );
    }

    #[test]
    fn the_public_origin_is_resolved_only_where_it_is_used() {
        // Without PROXY_BASE_URL the origin comes from Host; a malformed Host cannot name the
        // metadata, so a refused MCP caller gets the 400 instead of a challenge, while an admitted
        // call (which never uses the origin) is forwarded.
        let config = load_yaml(CONFIG, &|_| None).unwrap().config;
        let mut flows = OAuthState::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.example.com:0080"));
        let mut decide_with = |method: Method, path: &str, key: bool| {
            if key {
                headers.insert("x-mcp-gateway-key", HeaderValue::from_static("sk-gateway-key-0001"));
            }
            let head = RequestHead {
                method: &method,
                path_and_query: path,
                headers: &headers,
                scheme: Scheme::Http,
                peer: None,
            };
            let mut context = Context {
                config: &config,
                oauth: Some(&mut flows),
                now: Instant::from_millis(1),
                random: None,
            };
            decide(&head, &mut context)
        };
        let refused = respond(decide_with(Method::POST, "/reports/mcp", false));
        assert_eq!(
            (refused.status(), body(&refused)["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("non_canonical_authority"))
        );
        assert!(matches!(decide_with(Method::POST, "/reports/mcp", true), Action::Forward(_)));
        let metadata =
            respond(decide_with(Method::GET, "/.well-known/oauth-protected-resource/github/mcp", true));
        assert_eq!(metadata.status(), StatusCode::BAD_REQUEST, "metadata needs the origin");
    }

    #[test]
    fn only_authorize_needs_randomness_and_fails_closed_without_it() {
        assert!(route(&Method::GET, "/github/authorize?x=1").needs_random());
        assert!(!route(&Method::POST, "/github/mcp").needs_random());
        assert!(!route(&Method::POST, "/github/token").needs_random());
        let config = config();
        let mut flows = OAuthState::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("internal:4000"));
        let path = "/github/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A9999%2Fcb&code_challenge=abc&code_challenge_method=S256";
        let head = RequestHead {
            method: &Method::GET,
            path_and_query: path,
            headers: &headers,
            scheme: Scheme::Http,
            peer: None,
        };
        let mut context =
            Context { config: &config, oauth: Some(&mut flows), now: Instant::from_millis(1), random: None };
        let refused = respond(decide(&head, &mut context));
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(flows.flows.is_empty(), "no flow starts without a fresh state");
    }

    #[test]
    fn authorize_validates_redirect_uri_and_binds_state_through_the_callback() {
        let config = config();
        let mut flows = OAuthState::default();
        let bad = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/github/authorize?redirect_uri=https%3A%2F%2Fevil.example%2Fcb&state=s&code_challenge=c&code_challenge_method=S256",
            &[],
        ));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(bad.headers().get(header::LOCATION).is_none());
        assert_eq!(body(&bad)["error"], "invalid_request");
        assert!(flows.flows.is_empty());

        let ok = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/github/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A9999%2Fcb&state=client-state&code_challenge=abc&code_challenge_method=S256",
            &[],
        ));
        assert_eq!(ok.status(), StatusCode::FOUND);
        let upstream = Url::parse(ok.headers()[header::LOCATION].to_str().unwrap()).unwrap();
        assert!(upstream.as_str().starts_with("https://github.example/login/oauth/authorize?"));
        let query: HashMap<String, String> = upstream.query_pairs().into_owned().collect();
        assert_eq!(query["redirect_uri"], "https://gw.example.com/callback");
        assert_eq!(query["code_challenge"], "abc");
        assert_eq!(query["client_id"], "gh-client");
        assert_ne!(query["state"], "client-state", "the upstream sees the gateway's own state");

        let callback = format!("/callback?code=up-code&state={}", query["state"]);
        let back = respond(run(&config, &mut flows, Method::GET, &callback, &[]));
        let client = Url::parse(back.headers()[header::LOCATION].to_str().unwrap()).unwrap();
        assert_eq!(client.host_str(), Some("127.0.0.1"));
        let returned: HashMap<String, String> = client.query_pairs().into_owned().collect();
        assert_eq!(returned["code"], "up-code");
        assert_eq!(returned["state"], "client-state");
        let replay = respond(run(&config, &mut flows, Method::GET, &callback, &[]));
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "a state is used once");

        let server = &config.servers["github"];
        let origin = Origin::parse("https://gw.example.com").unwrap();
        let foreign = build_token_request(
            server,
            &origin,
            b"grant_type=authorization_code&code=other&code_verifier=v",
            &mut flows.flows,
            Instant::from_millis(2_000),
        );
        assert!(foreign.is_err());
        let request = build_token_request(
            server,
            &origin,
            b"grant_type=authorization_code&code=up-code&code_verifier=v",
            &mut flows.flows,
            Instant::from_millis(2_000),
        )
        .unwrap();
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(request.body()).into_owned().collect();
        assert_eq!(form["client_secret"], "gh-secret-value-0001");
        assert_eq!(form["redirect_uri"], "https://gw.example.com/callback");
        assert!(
            build_token_request(
                server,
                &origin,
                b"grant_type=authorization_code&code=up-code&code_verifier=v",
                &mut flows.flows,
                Instant::from_millis(3_000)
            )
            .is_err(),
            "a code is used once"
        );
    }

    #[test]
    fn flows_expire() {
        let config = config();
        let mut flows = OAuthState::default();
        let ok = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/github/authorize?redirect_uri=http%3A%2F%2Flocalhost%2Fcb&code_challenge=abc&code_challenge_method=S256",
            &[],
        ));
        assert_eq!(ok.status(), StatusCode::FOUND);
        flows.flows.expire(Instant::from_millis(1_000 + FLOW_LIFETIME_MILLIS));
        assert!(flows.flows.is_empty());
    }

    #[test]
    fn token_validation_gates_the_token_response() {
        let config = config();
        let server = &config.servers["github"];
        let upstream = |body: &str| Response::builder().status(200).body(body.as_bytes().to_vec()).unwrap();
        let ok = finish_token_response(
            server,
            upstream(r#"{"access_token":"at-secret","team":{"enterprise_id":"E1"}}"#),
        );
        assert_eq!(ok.status(), StatusCode::OK);
        let refused = finish_token_response(
            server,
            upstream(r#"{"access_token":"at-secret","team":{"enterprise_id":"E2"}}"#),
        );
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let text = String::from_utf8_lossy(refused.body()).into_owned();
        assert!(text.contains("token_validation_failed") && text.contains("team.enterprise_id"));
        assert!(!text.contains("at-secret") && !text.contains("E2"));
    }

    #[test]
    fn mcp_admission_and_outbound_credentials() {
        let config = config();
        let mut flows = OAuthState::default();
        let refused = respond(run(&config, &mut flows, Method::POST, "/reports/mcp", &[]));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.headers()[header::WWW_AUTHENTICATE],
            "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/reports/mcp\""
        );
        let wrong = respond(run(
            &config,
            &mut flows,
            Method::POST,
            "/reports/mcp",
            &[("x-mcp-gateway-key", "sk-wrong")],
        ));
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

        let Action::Forward(m2m) = run(
            &config,
            &mut flows,
            Method::POST,
            "/reports/mcp",
            &[("x-litellm-api-key", "Bearer sk-gateway-key-0001"), ("x-mcp-debug", "true")],
        ) else {
            panic!("expected a forward")
        };
        assert_eq!(m2m.credential, OutboundCredential::ClientCredentialsToken);
        assert!(m2m.debug);
        assert!(m2m.headers.get("x-litellm-api-key").is_none(), "the gateway key never goes upstream");
        assert_eq!(
            upstream_reaction(&m2m, StatusCode::UNAUTHORIZED, false),
            UpstreamReaction::RetryWithFreshToken
        );
        assert_eq!(upstream_reaction(&m2m, StatusCode::UNAUTHORIZED, true), UpstreamReaction::Relay);
        assert_eq!(upstream_reaction(&m2m, StatusCode::FORBIDDEN, false), UpstreamReaction::Relay);
        let mut exchanged = Forward {
            credential: OutboundCredential::ExchangeToken { subject_token: Secret::new("caller") },
            ..m2m.clone()
        };
        assert_eq!(
            upstream_reaction(&exchanged, StatusCode::UNAUTHORIZED, false),
            UpstreamReaction::RetryWithFreshToken
        );
        exchanged.credential = OutboundCredential::StaticToken;
        assert_eq!(
            upstream_reaction(&exchanged, StatusCode::UNAUTHORIZED, false),
            UpstreamReaction::Relay,
            "a static token would fail again"
        );

        let Action::Forward(wiki) = run(
            &config,
            &mut flows,
            Method::POST,
            "/wiki/mcp",
            &[("authorization", "Bearer sk-gateway-key-0001")],
        ) else {
            panic!("the key in Authorization admits a non-oauth2 server")
        };
        assert_eq!(wiki.credential, OutboundCredential::StaticToken);
        assert!(wiki.headers.get(header::AUTHORIZATION).is_none());

        let github = respond(run(
            &config,
            &mut flows,
            Method::POST,
            "/github/mcp",
            &[("authorization", "Bearer sk-gateway-key-0001")],
        ));
        assert_eq!(
            github.status(),
            StatusCode::UNAUTHORIZED,
            "for oauth2 servers Authorization is not the key"
        );

        let Action::Forward(passthrough) = run(
            &config,
            &mut flows,
            Method::POST,
            "/github/mcp",
            &[("x-mcp-gateway-key", "sk-gateway-key-0001"), ("authorization", "Bearer user-token")],
        ) else {
            panic!("expected a forward")
        };
        assert_eq!(passthrough.credential, OutboundCredential::ForwardAuthorization);
        assert_eq!(passthrough.headers[header::AUTHORIZATION], "Bearer user-token");
    }

    #[test]
    fn delegation_skips_the_key_and_relays_upstream_challenges() {
        let config = config();
        let mut flows = OAuthState::default();
        let Action::Forward(delegated) =
            run(&config, &mut flows, Method::POST, "/delegated/mcp", &[("authorization", "Bearer user")])
        else {
            panic!("delegated servers need no gateway key")
        };
        assert!(delegated.delegated);
        assert_eq!(delegated.headers[header::AUTHORIZATION], "Bearer user");
        assert_eq!(upstream_reaction(&delegated, StatusCode::UNAUTHORIZED, false), UpstreamReaction::Relay);
        let mixed = respond(run(
            &config,
            &mut flows,
            Method::POST,
            "/delegated/mcp",
            &[("x-mcp-servers", "reports")],
        ));
        assert_eq!(
            mixed.status(),
            StatusCode::UNAUTHORIZED,
            "one non-delegating target enforces the gateway's auth"
        );
    }

    fn aggregate(action: Action) -> Aggregate {
        match action {
            Action::Aggregate(aggregate) => aggregate,
            other => panic!("expected an aggregate, got {other:?}"),
        }
    }

    fn target_names(aggregate: &Aggregate) -> Vec<&str> {
        aggregate.targets.iter().map(|target| target.server.as_str()).collect()
    }

    #[test]
    fn the_aggregating_endpoint_admits_every_target_or_none() {
        let config = config();
        let mut flows = OAuthState::default();
        let key = ("x-mcp-gateway-key", "sk-gateway-key-0001");
        let all = aggregate(run(
            &config,
            &mut flows,
            Method::POST,
            "/mcp",
            &[("x-mcp-servers", "reports, wiki,reports"), key, ("mcp-session-id", "s-1")],
        ));
        assert_eq!(target_names(&all), ["reports", "wiki"], "named order, no repeats");
        assert_eq!(all.targets[0].credential, OutboundCredential::ClientCredentialsToken);
        assert_eq!(all.targets[1].credential, OutboundCredential::StaticToken);
        assert!(all.targets.iter().all(|target| target.headers.get("mcp-session-id").is_none()));
        let unknown =
            respond(run(&config, &mut flows, Method::POST, "/mcp", &[("x-mcp-servers", "wiki,nope"), key]));
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let keyless =
            respond(run(&config, &mut flows, Method::POST, "/mcp", &[("x-mcp-servers", "github,wiki")]));
        assert_eq!(keyless.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            keyless.headers()[header::WWW_AUTHENTICATE],
            "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/github/mcp\""
        );
        // The key in Authorization admits a bearer_token target but not an oauth2 one.
        let authorization = ("authorization", "Bearer sk-gateway-key-0001");
        assert!(matches!(
            run(&config, &mut flows, Method::POST, "/mcp", &[("x-mcp-servers", "wiki"), authorization]),
            Action::Aggregate(_)
        ));
        let mixed = respond(run(
            &config,
            &mut flows,
            Method::POST,
            "/mcp",
            &[("x-mcp-servers", "wiki,github"), authorization],
        ));
        assert_eq!(mixed.status(), StatusCode::UNAUTHORIZED);
        let unnamed = respond(run(&config, &mut flows, Method::POST, "/mcp", &[key]));
        assert_eq!(unnamed.status(), StatusCode::BAD_REQUEST);
        let get = respond(run(&config, &mut flows, Method::GET, "/mcp", &[("x-mcp-servers", "wiki"), key]));
        assert_eq!(
            (get.status(), &get.headers()[header::ALLOW]),
            (StatusCode::METHOD_NOT_ALLOWED, &HeaderValue::from_static("POST"))
        );
    }

    #[test]
    fn aggregation_delegates_only_as_design_4_6_allows() {
        let config = config();
        let mut flows = OAuthState::default();
        let user = ("authorization", "Bearer user-token");
        let delegated = aggregate(run(
            &config,
            &mut flows,
            Method::POST,
            "/mcp",
            &[("x-mcp-servers", "delegated"), user],
        ));
        assert!(delegated.targets[0].delegated);
        assert_eq!(delegated.targets[0].headers[header::AUTHORIZATION], "Bearer user-token");
        // The REST routes are not MCP endpoints: the gateway key is always required.
        let rest = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/mcp-rest/tools/list?server_id=delegated",
            &[user],
        ));
        assert_eq!(rest.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn rest_routes_pick_their_targets() {
        let config = config();
        let mut flows = OAuthState::default();
        let key = ("x-mcp-gateway-key", "sk-gateway-key-0001");
        let every = aggregate(run(&config, &mut flows, Method::GET, "/mcp-rest/tools/list", &[key]));
        assert_eq!(target_names(&every), ["github", "delegated", "reports", "wiki"], "configuration order");
        assert_eq!(every.endpoint, crate::aggregate::Endpoint::RestList);
        let one = aggregate(run(
            &config,
            &mut flows,
            Method::GET,
            "/mcp-rest/tools/list?server_id=wiki&cursor=c",
            &[key],
        ));
        assert_eq!((target_names(&one), one.cursor.as_deref()), (vec!["wiki"], Some("c")));
        let named = aggregate(run(
            &config,
            &mut flows,
            Method::POST,
            "/mcp-rest/tools/call",
            &[("x-mcp-servers", "wiki"), key],
        ));
        assert_eq!(
            (target_names(&named), named.endpoint),
            (vec!["wiki"], crate::aggregate::Endpoint::RestCall)
        );
        let unknown =
            respond(run(&config, &mut flows, Method::GET, "/mcp-rest/tools/list?server_id=nope", &[key]));
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let repeated = respond(run(
            &config,
            &mut flows,
            Method::GET,
            "/mcp-rest/tools/list?server_id=a&server_id=b",
            &[key],
        ));
        assert_eq!(repeated.status(), StatusCode::BAD_REQUEST);
        assert_eq!(route(&Method::POST, "/mcp-rest/tools/list"), Route::NotFound);
    }

    #[test]
    fn routes_and_static_headers() {
        assert_eq!(route(&Method::GET, "/health"), Route::Health);
        assert_eq!(route(&Method::POST, "/a/mcp?x=1"), Route::ServerMcp("a".into()));
        assert_eq!(route(&Method::GET, "/a/b/c"), Route::NotFound);
        assert_eq!(route(&Method::PUT, "/a/mcp"), Route::NotFound);
        let token = Secret::new("t");
        assert_eq!(static_credential_header(AuthType::ApiKey, &token).0, "x-api-key");
        assert_eq!(static_credential_header(AuthType::BearerToken, &token).1, "Bearer t");
    }

    /// Runs one request with every input the OAuth routes read: headers, peer, time, randomness.
    struct Call<'c> {
        config: &'c GatewayConfig,
        method: Method,
        path: String,
        headers: Vec<(&'static str, String)>,
        peer: Option<std::net::IpAddr>,
        now: u64,
    }

    impl Call<'_> {
        fn get<'c>(config: &'c GatewayConfig, path: &str) -> Call<'c> {
            Call {
                config,
                method: Method::GET,
                path: path.to_owned(),
                headers: Vec::new(),
                peer: None,
                now: 1_000,
            }
        }

        fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers.push((name, value.to_owned()));
            self
        }

        fn run(&self, oauth: Option<&mut OAuthState>) -> Response<Vec<u8>> {
            let mut headers = HeaderMap::new();
            for (name, value) in &self.headers {
                headers.append(*name, HeaderValue::from_str(value).unwrap());
            }
            let head = RequestHead {
                method: &self.method,
                path_and_query: &self.path,
                headers: &headers,
                scheme: Scheme::Http,
                peer: self.peer,
            };
            // Fresh randomness per call, as a server draws it: every flow gets its own state.
            static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let drawn = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes();
            let mut random = [0u8; 16];
            random[..8].copy_from_slice(&drawn);
            let mut context = Context {
                config: self.config,
                oauth,
                now: Instant::from_millis(self.now),
                random: Some(random),
            };
            respond(decide(&head, &mut context))
        }
    }

    const AUTHORIZE: &str = "/github/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A9999%2Fcb&code_challenge=abc&code_challenge_method=S256";

    fn upstream_state(response: &Response<Vec<u8>>) -> String {
        let location = Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
        location.query_pairs().find(|(name, _)| name == "state").unwrap().1.into_owned()
    }

    fn forwarding_config() -> GatewayConfig {
        let yaml = format!(
            "{CONFIG}  notes:\n    url: https://notes.example/mcp\n    auth_type: oauth2\n    authorization_url: https://notes-auth.example/authorize\n    token_url: https://notes-auth.example/token\n    issuer: https://notes-auth.example\n    client_id: notes-client\n"
        )
        .replace("general_settings:\n", "general_settings:\n  use_x_forwarded_for: true\n  mcp_trusted_proxy_ranges: [10.0.0.0/8]\n");
        load_yaml(&yaml, &|_| None).unwrap().config
    }

    #[test]
    fn without_a_pinned_origin_no_authorization_starts() {
        // The review's theft: no PROXY_BASE_URL, so the origin followed the attacker's Host and
        // his redirect_uri passed as "same origin".
        let config = load_yaml(CONFIG, &|_| None).unwrap().config;
        assert_eq!(
            check_startup(&config).map_err(|error| error.reason()),
            Err("origin_not_pinned"),
            "serve refuses the configuration"
        );
        let mut oauth = OAuthState::default();
        let attack = Call::get(
            &config,
            "/github/authorize?redirect_uri=http%3A%2F%2Fevil.example%2Fx&code_challenge=abc&code_challenge_method=S256",
        )
        .header("host", "evil.example")
        .run(Some(&mut oauth));
        assert_eq!(attack.status(), StatusCode::SERVICE_UNAVAILABLE, "and an embedder that skipped it");
        assert_eq!(body(&attack)["error"], "origin_not_pinned");
        assert!(oauth.flows.is_empty());

        // A loopback listen address pins the origin: the attacker's Host no longer counts.
        let mut pinned = config.clone();
        assert!(pinned.settings.origin.pin_listen_address("127.0.0.1:4000".parse().unwrap()));
        assert!(check_startup(&pinned).unwrap()[0].contains("http://127.0.0.1:4000"));
        let refused = Call::get(
            &pinned,
            "/github/authorize?redirect_uri=http%3A%2F%2Fevil.example%2Fx&code_challenge=abc&code_challenge_method=S256",
        )
        .header("host", "evil.example")
        .run(Some(&mut oauth));
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(refused.headers().get(header::LOCATION).is_none());
        assert!(oauth.flows.is_empty());
        let mut elsewhere = config.clone();
        assert!(!elsewhere.settings.origin.pin_listen_address("0.0.0.0:4000".parse().unwrap()));
        assert!(check_startup(&elsewhere).is_err());
    }

    #[test]
    fn oauth_needs_https_off_loopback() {
        let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "http://gw.example.com".to_owned());
        let config = load_yaml(CONFIG, &env).unwrap().config;
        assert_eq!(check_startup(&config).map_err(|error| error.reason()), Err("insecure_origin"));
        let refused = Call::get(&config, AUTHORIZE).run(Some(&mut OAuthState::default()));
        assert_eq!(body(&refused)["error"], "insecure_origin");
        let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "http://localhost:4000".to_owned());
        assert!(check_startup(&load_yaml(CONFIG, &env).unwrap().config).unwrap().is_empty());
        // No interactive server, nothing to pin: a warning only.
        let plain =
            load_yaml("mcp_servers:\n  w:\n    url: https://w.example/mcp\n", &|_| None).unwrap().config;
        assert!(check_startup(&plain).unwrap()[0].contains("Host"));
    }

    #[test]
    fn each_step_of_a_flow_must_come_under_the_origin_it_began_under() {
        let config = forwarding_config();
        let mut oauth = OAuthState::default();
        let proxy = Some("10.0.0.1".parse().unwrap());
        let via = |host: &str, path: &str| {
            let mut call = Call::get(&config, path).header("host", "internal:4000");
            call.headers.push(("x-forwarded-proto", "https".into()));
            call.headers.push(("x-forwarded-host", host.into()));
            call.peer = proxy;
            call
        };
        let started = via("gw.example.com", AUTHORIZE).run(Some(&mut oauth));
        assert_eq!(started.status(), StatusCode::FOUND);
        let state = upstream_state(&started);
        let callback = format!("/callback?code=c1&state={state}&iss=https%3A%2F%2Fgithub.example");
        // The configured github server names no issuer, so a returned `iss` cannot be checked.
        let unknown = via("gw.example.com", &callback).run(Some(&mut oauth));
        assert_eq!(body(&unknown)["error"], "issuer_unknown");

        let notes = "/notes/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A9999%2Fcb&code_challenge=abc&code_challenge_method=S256";
        let state = upstream_state(&via("gw.example.com", notes).run(Some(&mut oauth)));
        let other_origin =
            via("other.example.com", &format!("/callback?code=c2&state={state}")).run(Some(&mut oauth));
        assert_eq!(body(&other_origin)["error"], "origin_mismatch");
        let state = upstream_state(&via("gw.example.com", notes).run(Some(&mut oauth)));
        let mixed_up =
            via("gw.example.com", &format!("/callback?code=c3&state={state}&iss=https%3A%2F%2Fevil.example"))
                .run(Some(&mut oauth));
        assert_eq!(body(&mixed_up)["error"], "issuer_mismatch");
        let state = upstream_state(&via("gw.example.com", notes).run(Some(&mut oauth)));
        let back = via(
            "gw.example.com",
            &format!("/callback?code=c4&state={state}&iss=https%3A%2F%2Fnotes-auth.example%2F"),
        )
        .run(Some(&mut oauth));
        assert_eq!(back.status(), StatusCode::FOUND);

        let server = &config.servers["notes"];
        let form = b"grant_type=authorization_code&code=c4&code_verifier=v";
        let elsewhere = Origin::parse("https://other.example.com").unwrap();
        let here = Origin::parse("https://gw.example.com").unwrap();
        let now = Instant::from_millis(2_000);
        assert!(build_token_request(server, &elsewhere, form, &mut oauth.flows, now).is_err());
        // The mismatch spent the code: single use holds whatever the outcome.
        assert!(build_token_request(server, &here, form, &mut oauth.flows, now).is_err());
    }

    #[test]
    fn authorize_parameters_are_bounded() {
        let config = config();
        let mut oauth = OAuthState::default();
        let long_state = format!("{AUTHORIZE}&state={}", "s".repeat(MAX_CLIENT_STATE + 1));
        let refused = Call::get(&config, &long_state).run(Some(&mut oauth));
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(body(&refused)["error_description"].as_str().unwrap().contains("state"));
        let ok_state = format!("{AUTHORIZE}&state={}", "s".repeat(MAX_CLIENT_STATE));
        assert_eq!(Call::get(&config, &ok_state).run(Some(&mut oauth)).status(), StatusCode::FOUND);
        let long_scope = format!("{AUTHORIZE}&scope={}", "a".repeat(MAX_AUTHORIZE_PARAMETER + 1));
        assert_eq!(Call::get(&config, &long_scope).run(Some(&mut oauth)).status(), StatusCode::BAD_REQUEST);
        let many = format!("{AUTHORIZE}{}", "&x=1".repeat(MAX_AUTHORIZE_PARAMETERS));
        assert_eq!(Call::get(&config, &many).run(Some(&mut oauth)).status(), StatusCode::BAD_REQUEST);
        assert_eq!(oauth.flows.len(), 1, "only the acceptable request started a flow");
    }

    #[test]
    fn a_peer_past_its_budget_gets_429_and_the_store_stays_bounded() {
        let config = config();
        let mut oauth = OAuthState::default();
        let mut call = Call::get(&config, AUTHORIZE);
        call.peer = Some("198.51.100.7".parse().unwrap());
        let burst = BudgetConfig::OAUTH_ENDPOINTS.burst;
        for _ in 0..burst {
            assert_eq!(call.run(Some(&mut oauth)).status(), StatusCode::FOUND);
        }
        let limited = call.run(Some(&mut oauth));
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
        assert_eq!(oauth.flows.len(), burst as usize);
        // The budget covers every OAuth route, the callback and token included.
        for (method, path) in [(Method::GET, "/callback?state=x"), (Method::POST, "/github/token")] {
            let mut other = Call::get(&config, path);
            other.method = method;
            other.peer = call.peer;
            assert_eq!(other.run(Some(&mut oauth)).status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        }
        // Another peer is unaffected; an OAuth route without the state fails closed.
        call.peer = Some("198.51.100.8".parse().unwrap());
        assert_eq!(call.run(Some(&mut oauth)).status(), StatusCode::FOUND);
        assert_eq!(call.run(None).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_flow_store_is_capped_and_expires_in_order() {
        let config = config();
        let mut oauth = OAuthState {
            budget: PeerBudget::new(BudgetConfig { burst: u32::MAX, ..BudgetConfig::OAUTH_ENDPOINTS }),
            ..OAuthState::default()
        };
        let mut call = Call::get(&config, AUTHORIZE);
        for index in 0..MAX_PENDING_FLOWS as u64 {
            call.now = 1_000 + index;
            assert_eq!(call.run(Some(&mut oauth)).status(), StatusCode::FOUND);
        }
        let full = call.run(Some(&mut oauth));
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(&full)["error"], "too_many_pending_authorizations");
        // Once the first flows have lived their 10 minutes, they make room.
        call.now = 1_000 + FLOW_LIFETIME_MILLIS + 10;
        assert_eq!(call.run(Some(&mut oauth)).status(), StatusCode::FOUND);
        assert_eq!(oauth.flows.len(), MAX_PENDING_FLOWS - 11 + 1);
    }

    #[test]
    fn m2m_token_requests_name_the_server_as_resource() {
        let yaml = |resource: &str, token_url: &str| {
            format!(
                "mcp_servers:\n  r:\n    url: https://reports.example/mcp\n    auth_type: oauth2\n    oauth2_flow: client_credentials\n    client_id: r\n    client_secret: r-secret-value-0001\n    token_url: {token_url}\n{resource}"
            )
        };
        let form = |resource: &str, token_url: &str| {
            let config = load_yaml(&yaml(resource, token_url), &|_| None).unwrap().config;
            let request =
                outbound_token_request(&config.servers["r"], &OutboundCredential::ClientCredentialsToken)
                    .unwrap();
            url::form_urlencoded::parse(request.body()).into_owned().collect::<HashMap<String, String>>()
        };
        let token = "https://auth.example/token";
        assert_eq!(form("", token)["resource"], "https://reports.example/mcp");
        assert_eq!(form("    resource: https://api.example\n", token)["resource"], "https://api.example");
        assert!(!form("    resource: null\n", token).contains_key("resource"));
        let entra = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token";
        assert!(!form("", entra).contains_key("resource"), "Entra refuses it");
        assert_eq!(form("    resource: api://reports\n", entra)["resource"], "api://reports");
    }

    #[test]
    fn a_body_with_a_numeric_method_is_not_forwarded() {
        let refused =
            check_forward_body(&Method::POST, br#"{"jsonrpc":"2.0","id":1,"method":5}"#).unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(&refused)["error"]["code"], -32600);
        assert_eq!(body(&refused)["id"], 1);
        assert!(check_forward_body(&Method::POST, br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_ok());
        assert!(check_forward_body(&Method::GET, b"").is_ok());
    }
}
