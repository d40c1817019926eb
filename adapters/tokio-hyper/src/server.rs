//! The gateway's HTTP server: core decides each request, this module carries the bytes.
//!
//! [`serve`] accepts connections (HTTP/1.1 and HTTP/2, keep-alive) and, for every request, builds
//! core's [`RequestHead`] (the peer from the accepted socket, scheme `http`), asks
//! [`gateway::decide`] what to do and carries the answer out:
//!
//! - [`Action::Respond`]: the response is sent as it is;
//! - [`Action::Forward`]: the request body is read (up to [`ServerOptions::max_request_body`], so a
//!   retry can resend it), the credential core chose is attached (an M2M token or an RFC 8693
//!   exchanged token from the token cache, a static or per-request value, or the caller's own
//!   `Authorization` already in the headers), **one** request goes upstream over a shared
//!   keep-alive pool, and the upstream's answer is streamed back (JSON or SSE, never buffered)
//!   with the headers core relays ([`gateway::relays_upstream_header`]). When core's
//!   [`gateway::upstream_reaction`] says so (a 401 to an M2M or exchanged token), the cached token is dropped
//!   once, a fresh one fetched and the request retried once;
//! - [`Action::Aggregate`] (`POST /mcp` with `x-mcp-servers`, `/mcp-rest/tools/*`): the body is
//!   read and core's [`Aggregate::plan`] says what to do: answer at once (`initialize`, `ping`,
//!   notifications, refusals), forward one rewritten `tools/call` to the server its prefix names
//!   (streamed like a single-server request), or ask every target at the same time, read each
//!   answer whole (up to [`ServerOptions::max_gathered_answer`]) and hand them to core, which
//!   merges the listing under `{server}-{tool}` names;
//! - [`Action::ProxyToken`] / [`Action::ProxyRegister`]: the form or JSON body (up to
//!   [`ServerOptions::max_form_body`]) goes to the upstream token or registration endpoint;
//!   token answers pass through [`gateway::finish_token_response`] (`token_validation`).
//!
//! Upstream tokens live in one [`SharedTokenCache`] keyed by [`TokenKey`]: the M2M token per server,
//! and the exchanged token per server and caller token (kept as its SHA-256 digest). Core decides
//! their lifetimes (`m2m_cache_ttl` for M2M tokens, `user_token_ttl` with the server's
//! `token_storage_ttl_seconds` for exchanged ones, which act for a user), refreshes them ahead of
//! expiry, lets one fetch per key run at a time and backs off after failed fetches.
//!
//! Every upstream request (MCP, token, registration) goes through the discovery client's
//! [`crate::client`] resolver and pinning under the fetch policy of design §4.9: private and
//! loopback addresses only for a server whose configured URL is itself local
//! ([`fetch_policy::is_local_server`](mcp_oauth_core::fetch_policy::is_local_server)), link-local
//! and metadata addresses never, and a host name is refused when any address it resolves to is;
//! a refusal connects nothing and answers `blocked_by_fetch_policy` (502 for MCP requests, 503 for
//! token requests, the status of the step otherwise).
//!
//! Failures of a step answer with core's JSON error ([`gateway::error_response`]) naming it: 413 for
//! an oversized body, 502 when the upstream cannot be reached or fails (5xx), 504 when it does not
//! answer in time, 503 when the token endpoint fails or token fetches are backing off. No error
//! body and no log line carries a header value, a body or a secret: logs hold the method, route,
//! server, status and latency.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mcp_oauth_tokio::server::{GatewayState, ServerOptions, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let yaml = std::fs::read_to_string("config.yaml")?;
//! let loaded = mcp_oauth_core::config::load_yaml(&yaml, &|name| std::env::var(name).ok())
//!     .map_err(|errors| format!("{} configuration error(s)", errors.errors.len()))?;
//! let state = Arc::new(GatewayState::new(loaded.config, ServerOptions::default())?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_rustls::ConfigBuilderExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mcp_oauth_core::Reason;
use mcp_oauth_core::aggregate::{self, Answer, Endpoint, Plan, SessionStore, UpstreamSession};
use mcp_oauth_core::client::token::parse_token_response;
use mcp_oauth_core::config::{GatewayConfig, ServerConfig};
use mcp_oauth_core::gateway::{
    self, Action, Aggregate, CallStep, Context, Forward, OAuthState, RequestHead, StartupError,
    UpstreamFailure, UpstreamReaction, error_response,
};
use mcp_oauth_core::metadata::TokenResponse;
use mcp_oauth_core::origin::{Origin, Scheme};
use mcp_oauth_core::outbound::{DebugContext, OutboundCredential, debug_headers};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::{CacheConfig, Fetched, TtlPolicy};
use mcp_oauth_runtime::token_cache::{CacheError, FetchError};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use url::Url;

use crate::client::{PolicyClient, SendError, TlsSetupError};
use crate::runtime::{Clock, SharedTokenCache};

/// The body of every response the gateway sends: core's complete answers or an upstream stream.
pub type GatewayBody = BoxBody<Bytes, hyper::Error>;

/// The upstream client: the discovery client's resolver and pinning (design §4.9), a strict and a
/// permissive pool, chosen per request by [`private_allowed`].
type Upstream = PolicyClient;

/// The fetch policy for requests on behalf of `server`: private and loopback addresses only when
/// its configured URL is itself local (an operator who configured a private URL may reach private
/// space; a public name that resolves to a private address is refused: DNS rebinding). Link-local
/// and metadata addresses are refused always.
fn private_allowed(server: &ServerConfig) -> bool {
    mcp_oauth_core::fetch_policy::is_local_server(&server.url)
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The upstream TLS client cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// Core refuses to serve this configuration.
    #[error(transparent)]
    Config(#[from] StartupError),
}

/// Limits and timeouts of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Time until the upstream MCP server's response head arrives; the body then streams without
    /// a deadline (SSE streams may be long). Default 30 s.
    pub upstream_timeout: Duration,
    /// Time for a whole exchange with a token or registration endpoint. Default 10 s.
    pub token_timeout: Duration,
    /// The largest MCP request body (it is kept so a retry can resend it). Default 4 MiB.
    pub max_request_body: usize,
    /// The largest token or registration request body. Default 64 KiB.
    pub max_form_body: usize,
    /// The largest token or registration response read from upstream. Default 1 MiB.
    pub max_token_response: usize,
    /// How long open connections may finish after shutdown is requested. Default 10 s.
    pub shutdown_grace: Duration,
    /// Idle keep-alive connections kept per upstream host. Default 256.
    pub pool_max_idle_per_host: usize,
    /// The largest upstream answer read whole to merge it (aggregated listings, REST calls).
    /// Default 4 MiB.
    pub max_gathered_answer: usize,
    /// Upstream sessions kept for the aggregating endpoints (one per server and caller identity);
    /// beyond it the least recently used is forgotten. Default 4096.
    pub max_upstream_sessions: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(30),
            token_timeout: Duration::from_secs(10),
            max_request_body: 4 * 1024 * 1024,
            max_form_body: 64 * 1024,
            max_token_response: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            pool_max_idle_per_host: 256,
            max_gathered_answer: 4 * 1024 * 1024,
            max_upstream_sessions: 4096,
        }
    }
}

/// What a cached upstream token is for: a server's M2M (client-credentials) token, or the token
/// an RFC 8693 exchange gave for one caller's token at a server. The caller's token is kept only
/// as its SHA-256 digest, and `Debug` shows neither it nor the digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    server: String,
    subject: Option<[u8; 32]>,
}

impl TokenKey {
    /// The key of `server`'s M2M token.
    pub fn m2m(server: &str) -> Self {
        Self { server: server.to_owned(), subject: None }
    }

    /// The key of the token exchanged for `subject_token` (the caller's token) at `server`.
    pub fn exchange(server: &str, subject_token: &Secret) -> Self {
        let digest = Sha256::digest(subject_token.expose().as_bytes());
        Self { server: server.to_owned(), subject: Some(digest.into()) }
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.subject.is_some() { "exchange" } else { "m2m" };
        f.debug_struct("TokenKey").field("server", &self.server).field("kind", &kind).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answer for a request that waited for another request's failed token fetch, or that came
/// while the cache backs off after failures: core's answer for the failure the fetch had.
fn token_unavailable(error: &CacheError, server: &str) -> Response<GatewayBody> {
    let failure = match error {
        CacheError::BackingOff { retry_in, .. } => UpstreamFailure::BackingOff { retry_in: *retry_in },
        CacheError::Fetch { reason, .. } => UpstreamFailure::from_reason(reason),
    };
    fail(CallStep::FetchToken, server, &failure)
}

/// Core's answer for a failed step.
fn fail(step: CallStep, server: &str, failure: &UpstreamFailure) -> Response<GatewayBody> {
    full(gateway::failure_response(step, server, failure))
}

/// Everything the server shares between requests: the configuration snapshot, the flows in
/// progress, the clock, the upstream connection pool and the upstream token cache.
pub struct GatewayState {
    config: GatewayConfig,
    oauth: Mutex<OAuthState>,
    sessions: Mutex<SessionStore>,
    clock: Clock,
    upstream: Upstream,
    tokens: SharedTokenCache<TokenKey>,
    options: ServerOptions,
    requests: AtomicU64,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("servers", &self.config.servers.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
    /// The state for `config`, with an upstream client trusting the Mozilla roots. Refuses a
    /// configuration core's [`gateway::check_startup`] refuses (interactive servers without a
    /// pinned public origin); pin a loopback listen address first with
    /// [`OriginSettings::pin_listen_address`](mcp_oauth_core::origin::OriginSettings::pin_listen_address).
    pub fn new(config: GatewayConfig, options: ServerOptions) -> Result<Self, StartError> {
        for warning in gateway::check_startup(&config)? {
            tracing::warn!("{warning}");
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(TlsSetupError::from)?
                .with_webpki_roots()
                .with_no_client_auth();
        let upstream = PolicyClient::new(tls, Duration::from_secs(90), options.pool_max_idle_per_host);
        let clock = Clock::new();
        Ok(Self {
            config,
            oauth: Mutex::new(OAuthState::default()),
            sessions: Mutex::new(SessionStore::new(options.max_upstream_sessions)),
            clock,
            upstream,
            tokens: SharedTokenCache::with_clock(CacheConfig::default(), clock),
            options,
            requests: AtomicU64::new(0),
        })
    }

    /// The configuration snapshot.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The upstream token cache: M2M and exchanged tokens (its [`SharedTokenCache::fetches`]
    /// counter is useful in tests and benchmarks).
    pub fn tokens(&self) -> &SharedTokenCache<TokenKey> {
        &self.tokens
    }

    /// Requests handled since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting and gives open connections
/// [`ServerOptions::shutdown_grace`] to finish their requests.
///
/// Strangers are bounded by the configuration's
/// [`ConnectionLimits`](mcp_oauth_core::config::ConnectionLimits): a connection that sends nothing
/// (no first byte, or no next request on a kept-alive HTTP/1.1 connection) is closed after the idle
/// timeout, request bodies have a read deadline per route, and past the connection cap a new
/// connection gets a 503 and is closed.
pub async fn serve(listener: TcpListener, state: Arc<GatewayState>, shutdown: impl Future<Output = ()>) {
    let limits = state.config.settings.connections;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts this timer whenever it waits for a request head, the idle time between
    // kept-alive requests included.
    builder.http1().timer(TokioTimer::new()).keep_alive(true).header_read_timeout(limits.idle_timeout);
    builder.http2().timer(TokioTimer::new());
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let state = Arc::clone(&state);
        let peer = peer.ip();
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(&state, request, peer).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            // The protocol is detected from the first bytes, with no deadline of its own: a
            // socket that never speaks is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.idle_timeout, stream.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return,
            }
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for open ones");
    if tokio::time::timeout(state.options.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// Answers a connection past the cap with a 503 and closes it, without reading its request.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too_many_connections","error_description":"the gateway is at its connection limit; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(1), write).await.is_err() {
        tracing::debug!("a refused connection did not take its 503 in time");
    }
}

fn full(response: Response<Vec<u8>>) -> Response<GatewayBody> {
    response.map(|body| Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
}

fn refuse(status: StatusCode, error: &str, description: &str) -> Response<GatewayBody> {
    full(error_response(status, error, description))
}

/// Handles one request: decide, then carry out the action.
async fn handle(state: &GatewayState, request: Request<Incoming>, peer: IpAddr) -> Response<GatewayBody> {
    let started = std::time::Instant::now();
    state.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |value| value.as_str());
    let route = gateway::route(&parts.method, path_and_query);
    let (label, server) = (route.label(), route.server().map(str::to_owned));
    // Only a route that starts an authorization consumes randomness; the others skip the system
    // call (one per request otherwise, measurable under load).
    let random = route.needs_random().then(|| {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).ok().map(|()| random)
    });
    let head = RequestHead {
        method: &parts.method,
        path_and_query,
        headers: &parts.headers,
        scheme: Scheme::Http,
        peer: Some(peer),
    };
    let body_timeout = if route.is_oauth() {
        state.config.settings.connections.oauth_body_timeout
    } else {
        state.config.settings.connections.mcp_body_timeout
    };
    let action = {
        // Only the OAuth routes touch the pending flows and the per-peer budget: an MCP call
        // never waits on that lock.
        let mut oauth = route.is_oauth().then(|| lock(&state.oauth));
        let mut context = Context {
            config: &state.config,
            oauth: oauth.as_deref_mut(),
            now: state.clock.now(),
            random: random.flatten(),
        };
        gateway::decide_routed(route, &head, &mut context)
    };
    let limits = BodyLimits { deadline: body_timeout };
    let response = match action {
        Action::Respond(response) => full(response),
        Action::Forward(forward) => forward_mcp(state, &parts, body, limits, forward).await,
        Action::Aggregate(aggregate) => aggregated(state, &parts, body, limits, aggregate).await,
        Action::ProxyToken { server, origin } => {
            proxy_token(state, &parts, body, limits, &server, &origin).await
        }
        Action::ProxyRegister { server, url } => {
            proxy_register(state, &parts, body, limits, &server, &url).await
        }
    };
    tracing::info!(
        method = %parts.method,
        route = label,
        server = server.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

/// How long a request's body may take to arrive (core's
/// [`ConnectionLimits`](mcp_oauth_core::config::ConnectionLimits), per route).
#[derive(Clone, Copy, Debug)]
struct BodyLimits {
    deadline: Duration,
}

/// Reads a request body up to `limit` bytes within `limits.deadline`; beyond the size a 413, past
/// the deadline a 408 (a body dribbled a byte at a time must not hold the connection).
async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    limits: BodyLimits,
) -> Result<Bytes, Response<GatewayBody>> {
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let Ok(collected) = tokio::time::timeout(limits.deadline, Limited::new(body, limit).collect()).await
    else {
        return Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!("the request body did not arrive within {} s", limits.deadline.as_secs()),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => {
            Err(refuse(StatusCode::BAD_REQUEST, "invalid_request", "the request body could not be read"))
        }
    }
}

fn parse_uri(url: &Url) -> Result<Uri, UpstreamFailure> {
    url.as_str().parse::<Uri>().map_err(|_| UpstreamFailure::Unreachable)
}

/// Sends one request under the fetch policy ([`private_allowed`] of the server it is for) and
/// waits for the response head at most `timeout`.
async fn send(
    state: &GatewayState,
    request: Request<Full<Bytes>>,
    allow_private: bool,
    timeout: Duration,
) -> Result<Response<Incoming>, UpstreamFailure> {
    match tokio::time::timeout(timeout, state.upstream.request(request, allow_private)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(SendError::Blocked(why))) => {
            tracing::warn!(%why, "upstream request refused by the fetch policy");
            Err(UpstreamFailure::Blocked)
        }
        Ok(Err(SendError::Client(error))) => {
            tracing::debug!(connect = error.is_connect(), "upstream request failed");
            Err(UpstreamFailure::Unreachable)
        }
        Err(_elapsed) => Err(UpstreamFailure::Timeout),
    }
}

/// Reads an upstream answer's body whole, at most `limit` bytes.
async fn read_whole<B>(body: B, limit: usize) -> Result<Bytes, UpstreamFailure>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(UpstreamFailure::TooLarge),
        Err(_) => Err(UpstreamFailure::Unreachable),
    }
}

/// Sends a complete request (see [`send`]) and reads the whole answer (at most `limit` bytes), all
/// within `timeout`.
async fn exchange(
    state: &GatewayState,
    request: Request<Vec<u8>>,
    allow_private: bool,
    timeout: Duration,
    limit: usize,
) -> Result<Response<Vec<u8>>, UpstreamFailure> {
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
    let whole = async {
        let response = send(state, request, allow_private, timeout).await?;
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(parts, read_whole(body, limit).await?.to_vec()))
    };
    tokio::time::timeout(timeout, whole).await.unwrap_or(Err(UpstreamFailure::Timeout))
}

/// The upstream token (M2M or exchange) for `key` from the token cache; on a miss this request
/// or a concurrent one for the same key fetches it (single flight), cached for as long as `policy`
/// allows. A failure is core's JSON error naming the step: 503 (504 when the token endpoint does
/// not answer in time), also while the cache backs off after failed fetches.
async fn fetch_token(
    state: &GatewayState,
    server: &ServerConfig,
    credential: &OutboundCredential,
    key: TokenKey,
    policy: TtlPolicy,
) -> Result<Secret, Response<GatewayBody>> {
    // The answer for this request when it fetched and failed: exactly what the failed step said.
    let mut refusal = None;
    let slot = &mut refusal;
    let fetched = state
        .tokens
        .get_or_fetch(key, move || async move {
            match request_token(state, server, credential).await {
                Ok(response) => Ok(Fetched::with_policy(&response, policy)),
                Err((error, answer)) => {
                    *slot = Some(answer);
                    Err(error)
                }
            }
        })
        .await;
    match fetched {
        Ok(token) => Ok(token.access_token().clone()),
        Err(error) => Err(refusal.unwrap_or_else(|| token_unavailable(&error, &server.name))),
    }
}

/// Requests an upstream token as core builds the request. A failure comes as the cache's
/// [`FetchError`] (reason: the answer's error code; message: what failed, without the step) and
/// this request's own answer (core's JSON error naming the step).
async fn request_token(
    state: &GatewayState,
    server: &ServerConfig,
    credential: &OutboundCredential,
) -> Result<TokenResponse, (FetchError, Response<GatewayBody>)> {
    let request = gateway::outbound_token_request(server, credential).map_err(|refusal| {
        let message = "the configuration does not allow a token request";
        (FetchError::new("token_endpoint_failed", message), full(refusal))
    })?;
    let (limit, private) = (state.options.max_token_response, private_allowed(server));
    let response =
        exchange(state, request, private, state.options.token_timeout, limit).await.map_err(|failure| {
            let answer = fail(CallStep::FetchToken, &server.name, &failure);
            (FetchError::new(failure.reason(), failure.message()), answer)
        })?;
    let token = parse_token_response(&response).map_err(|error| {
        tracing::warn!(server = %server.name, reason = error.reason(), "the token endpoint refused or failed");
        let failure = UpstreamFailure::TokenRefused { status: response.status().as_u16() };
        let answer = fail(CallStep::FetchToken, &server.name, &failure);
        (FetchError::new(failure.reason(), failure.message()), answer)
    })?;
    gateway::validate_fetched_token(server, response.body()).map_err(|refusal| {
        tracing::warn!(server = %server.name, "the upstream token failed token_validation; not used");
        let message = "the upstream token failed token_validation";
        (FetchError::new("token_validation_failed", message), full(refusal))
    })?;
    Ok(token)
}

/// The credential header to attach for `forward`, and the M2M token used (for invalidation).
async fn credential_header(
    state: &GatewayState,
    server: &ServerConfig,
    forward: &Forward,
) -> Result<(Option<(HeaderName, String)>, Option<(TokenKey, Secret)>), Response<GatewayBody>> {
    let bearer = |token: &Secret| Some((header::AUTHORIZATION, format!("Bearer {}", token.expose())));
    match &forward.credential {
        credential @ OutboundCredential::ClientCredentialsToken => {
            let key = TokenKey::m2m(&server.name);
            let token = fetch_token(state, server, credential, key.clone(), TtlPolicy::M2m).await?;
            Ok((bearer(&token), Some((key, token))))
        }
        credential @ OutboundCredential::ExchangeToken { subject_token } => {
            // An exchanged token acts for the caller: a per-user lifetime, keyed by the caller's token.
            let key = TokenKey::exchange(&server.name, subject_token);
            let policy =
                TtlPolicy::User { token_storage_ttl_seconds: server.entry.token_storage_ttl_seconds };
            let token = fetch_token(state, server, credential, key.clone(), policy).await?;
            Ok((bearer(&token), Some((key, token))))
        }
        OutboundCredential::Authorization(value) => {
            Ok((Some((header::AUTHORIZATION, value.expose().to_owned())), None))
        }
        OutboundCredential::StaticToken => Ok((
            server
                .entry
                .authentication_token
                .as_ref()
                .map(|token| gateway::static_credential_header(server.policy.auth_type, token)),
            None,
        )),
        OutboundCredential::ForwardAuthorization | OutboundCredential::None => Ok((None, None)),
    }
}

/// Forwards an MCP request: one upstream request, a retry only when core asks for one.
async fn forward_mcp(
    state: &GatewayState,
    parts: &Parts,
    body: Incoming,
    limits: BodyLimits,
    forward: Forward,
) -> Response<GatewayBody> {
    let Some(server) = state.config.servers.get(&forward.server) else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "no such route or server");
    };
    let body = match read_body(&parts.headers, body, state.options.max_request_body, limits).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if let Err(refused) = gateway::check_forward_body(&parts.method, &body) {
        return full(refused);
    }
    match send_forward(state, server, &parts.method, &forward, body).await {
        Ok((response, outbound)) => {
            let response = response.map(BodyExt::boxed);
            relay(state, server, &parts.headers, &forward, outbound.as_deref(), response)
        }
        Err(response) => response,
    }
}

/// Sends `body` to `forward`'s upstream with the credential core chose: one request, and one
/// retry with a fresh token when core's [`gateway::upstream_reaction`] asks for it. Returns the
/// answer and the `Authorization` value that went up (for the debug headers).
async fn send_forward(
    state: &GatewayState,
    server: &ServerConfig,
    method: &Method,
    forward: &Forward,
    body: Bytes,
) -> Result<(Response<Incoming>, Option<String>), Response<GatewayBody>> {
    let uri = parse_uri(&forward.url).map_err(|failure| fail(CallStep::Forward, &server.name, &failure))?;
    let mut retried = false;
    loop {
        let (credential, cached) = credential_header(state, server, forward).await?;
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = forward.headers.clone();
        if let Some((name, value)) = &credential {
            let Ok(value) = HeaderValue::from_str(value) else {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the outbound credential is not a valid header value",
                ));
            };
            request.headers_mut().insert(name.clone(), value);
        }
        let response = send(state, request, private_allowed(server), state.options.upstream_timeout)
            .await
            .map_err(|failure| fail(CallStep::Forward, &server.name, &failure))?;
        match gateway::upstream_reaction(forward, response.status(), retried) {
            UpstreamReaction::RetryWithFreshToken if !retried => {
                if let Some((key, token)) = &cached {
                    state.tokens.invalidate(key, token);
                }
                tracing::info!(server = %server.name, "upstream refused the cached token; fetching a fresh one once");
                retried = true;
            }
            _ => {
                let outbound = credential.map(|(_, value)| value).or_else(|| {
                    forward
                        .headers
                        .get(header::AUTHORIZATION)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned)
                });
                return Ok((response, outbound));
            }
        }
    }
}

/// The upstream's answer for the caller: its status and the headers core relays, the body
/// streamed; a 5xx becomes a 502 naming the step.
fn relay(
    state: &GatewayState,
    server: &ServerConfig,
    inbound: &HeaderMap,
    forward: &Forward,
    outbound_authorization: Option<&str>,
    upstream: Response<GatewayBody>,
) -> Response<GatewayBody> {
    let status = upstream.status();
    let mut response = if status.is_server_error() {
        fail(CallStep::Forward, &server.name, &UpstreamFailure::ServerError(status.as_u16()))
    } else {
        let (parts, body) = upstream.into_parts();
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if gateway::relays_upstream_header(forward, name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        response
    };
    add_debug_headers(state, server, inbound, forward, outbound_authorization, response.headers_mut());
    response
}

/// Core's debug headers (design §4.7), when the caller asked for them.
fn add_debug_headers(
    state: &GatewayState,
    server: &ServerConfig,
    inbound: &HeaderMap,
    forward: &Forward,
    outbound_authorization: Option<&str>,
    headers: &mut HeaderMap,
) {
    if !forward.debug {
        return;
    }
    let context = DebugContext {
        auth_type: server.entry.auth_type,
        resolution: forward.resolution,
        outbound_url: Some(&forward.url),
        outbound_authorization,
    };
    for (name, value) in debug_headers(inbound, &state.config.settings.gateway_keys, &context) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// `POST /mcp` and `/mcp-rest/tools/*`: core plans the request from its body; a call forwards
/// and streams like a single-server request, a listing (or a REST call) asks its targets at the
/// same time, reads each answer whole and lets core merge them.
async fn aggregated(
    state: &GatewayState,
    parts: &Parts,
    body: Incoming,
    limits: BodyLimits,
    aggregate: Aggregate,
) -> Response<GatewayBody> {
    let body = if aggregate.endpoint == Endpoint::RestList {
        Bytes::new()
    } else {
        match read_body(&parts.headers, body, state.options.max_request_body, limits).await {
            Ok(body) => body,
            Err(response) => return response,
        }
    };
    let target = |index: usize| {
        let forward = aggregate.targets.get(index)?;
        Some((forward, state.config.servers.get(&forward.server)?))
    };
    match aggregate.plan(&body) {
        Plan::Respond(response) => full(response),
        Plan::Forward(call) => {
            let Some((forward, server)) = target(call.target) else {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no such target");
            };
            match send_in_session(state, server, forward, Bytes::from(call.body)).await {
                Ok((response, outbound)) => {
                    relay(state, server, &parts.headers, forward, outbound.as_deref(), response)
                }
                Err(response) => response,
            }
        }
        Plan::Gather(gather) => {
            let asks = gather.calls().iter().map(|call| async {
                let Some((forward, server)) = target(call.target) else {
                    let error =
                        error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no such target");
                    return (Answer::Failed(error), None);
                };
                gathered(state, server, forward, Bytes::from(call.body.clone())).await
            });
            let mut answers = futures_util::future::join_all(asks).await;
            // One target (a REST call, a one-server listing): its debug headers describe the answer.
            let debug = match (gather.calls(), answers.as_slice()) {
                ([call], [(_, outbound)]) => {
                    target(call.target).map(|(forward, server)| (forward, server, outbound.clone()))
                }
                _ => None,
            };
            let answers = answers.drain(..).map(|(answer, _)| answer).collect();
            let mut response = full(gather.finish(answers));
            if let Some((forward, server, outbound)) = debug {
                add_debug_headers(
                    state,
                    server,
                    &parts.headers,
                    forward,
                    outbound.as_deref(),
                    response.headers_mut(),
                );
            }
            response
        }
    }
}

/// One gathered request: sent as [`send_forward`] does, its answer read whole (at most
/// [`ServerOptions::max_gathered_answer`] bytes, within the upstream timeout).
async fn gathered(
    state: &GatewayState,
    server: &ServerConfig,
    forward: &Forward,
    body: Bytes,
) -> (Answer, Option<String>) {
    let failed = |response: Response<Vec<u8>>| (Answer::Failed(response), None);
    let whole = async {
        let (response, outbound) = match send_in_session(state, server, forward, body).await {
            Ok(sent) => sent,
            Err(response) => return failed(into_vec(response).await),
        };
        let (parts, body) = response.into_parts();
        match read_whole(body, state.options.max_gathered_answer).await {
            Ok(bytes) => (Answer::Upstream(Response::from_parts(parts, bytes.to_vec())), outbound),
            Err(failure) => failed(gateway::failure_response(CallStep::Forward, &server.name, &failure)),
        }
    };
    match tokio::time::timeout(state.options.upstream_timeout, whole).await {
        Ok(answer) => answer,
        Err(_elapsed) => {
            failed(gateway::failure_response(CallStep::Forward, &server.name, &UpstreamFailure::Timeout))
        }
    }
}

/// Sends one aggregated request in the upstream session for its caller identity (see
/// [`aggregate::UpstreamSession`]): opens the session first when the store has none, and once more
/// when the server answers that it expired. The answer is the upstream's, or the `initialize`
/// answer when that one must reach the caller (a 401, a 5xx).
async fn send_in_session(
    state: &GatewayState,
    server: &ServerConfig,
    forward: &Forward,
    body: Bytes,
) -> Result<(Response<GatewayBody>, Option<String>), Response<GatewayBody>> {
    let key = forward.session_key();
    let mut reopened = false;
    loop {
        let stored = lock(&state.sessions).get(&key, state.clock.now());
        let session = match stored {
            Some(session) => session,
            None => match open_session(state, server, forward).await? {
                Ok(session) => {
                    lock(&state.sessions).insert(key.clone(), session.clone(), state.clock.now());
                    session
                }
                Err(answer) => return Ok((answer, None)),
            },
        };
        let mut in_session = forward.clone();
        session.apply(&mut in_session.headers);
        let (response, outbound) =
            send_forward(state, server, &Method::POST, &in_session, body.clone()).await?;
        if session.expired_by(response.status()) && !reopened {
            lock(&state.sessions).remove(&key, &session);
            tracing::info!(server = %server.name, "the upstream session expired; opening a new one");
            reopened = true;
            continue;
        }
        return Ok((response.map(BodyExt::boxed), outbound));
    }
}

/// Opens a session with `server` for `forward`'s identity: `initialize`, then (when a session was
/// issued) `notifications/initialized` in it. `Ok(Err(answer))` is the `initialize` answer the
/// caller must get instead (core's [`aggregate::session_from_initialize`] says when).
async fn open_session(
    state: &GatewayState,
    server: &ServerConfig,
    forward: &Forward,
) -> Result<Result<UpstreamSession, Response<GatewayBody>>, Response<GatewayBody>> {
    let mut opening = forward.clone();
    opening.headers.remove(mcp_oauth_core::client::mcp::SESSION_HEADER);
    let body = Bytes::from(aggregate::initialize_request(&forward.headers));
    let (response, _) = send_forward(state, server, &Method::POST, &opening, body).await?;
    let (parts, body) = response.into_parts();
    let read = read_whole(body, state.options.max_gathered_answer);
    let bytes = match tokio::time::timeout(state.options.upstream_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(failure)) => return Err(fail(CallStep::Forward, &server.name, &failure)),
        Err(_elapsed) => return Err(fail(CallStep::Forward, &server.name, &UpstreamFailure::Timeout)),
    };
    let answer = Response::from_parts(parts, bytes.to_vec());
    let Some(session) = aggregate::session_from_initialize(&answer) else {
        return Ok(Err(full(answer)));
    };
    if let UpstreamSession::Session { .. } = session {
        session.apply(&mut opening.headers);
        let notification = Bytes::from(aggregate::initialized_notification());
        let (acknowledged, _) = send_forward(state, server, &Method::POST, &opening, notification).await?;
        // Drain it so the connection goes back to the pool.
        let _ =
            tokio::time::timeout(state.options.upstream_timeout, acknowledged.into_body().collect()).await;
    }
    tracing::debug!(server = %server.name, stateful = matches!(session, UpstreamSession::Session { .. }), "upstream session opened");
    Ok(Ok(session))
}

/// A complete response of the gateway's own (a JSON error) as bytes, for core to merge.
async fn into_vec(response: Response<GatewayBody>) -> Response<Vec<u8>> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|collected| collected.to_bytes().to_vec()).unwrap_or_default();
    Response::from_parts(parts, bytes)
}

/// `POST /{server}/token`: core builds the upstream request from the form, the answer goes through
/// `token_validation`.
async fn proxy_token(
    state: &GatewayState,
    parts: &Parts,
    body: Incoming,
    limits: BodyLimits,
    server: &str,
    origin: &Origin,
) -> Response<GatewayBody> {
    let Some(server) = state.config.servers.get(server) else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "no such route or server");
    };
    let body = match read_body(&parts.headers, body, state.options.max_form_body, limits).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = {
        let mut oauth = lock(&state.oauth);
        gateway::build_token_request(server, origin, &body, &mut oauth.flows, state.clock.now())
    };
    let request = match request {
        Ok(request) => request,
        Err(response) => return full(response),
    };
    let (timeout, limit) = (state.options.token_timeout, state.options.max_token_response);
    match exchange(state, request, private_allowed(server), timeout, limit).await {
        Ok(upstream) => full(gateway::finish_token_response(server, upstream)),
        Err(failure) => fail(CallStep::ExchangeCode, &server.name, &failure),
    }
}

/// `POST /{server}/register` for a server without a pre-stored client: the client's JSON goes to
/// the upstream registration endpoint and the answer comes back (status and JSON).
async fn proxy_register(
    state: &GatewayState,
    parts: &Parts,
    body: Incoming,
    limits: BodyLimits,
    server: &str,
    url: &Url,
) -> Response<GatewayBody> {
    let body = match read_body(&parts.headers, body, state.options.max_form_body, limits).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = Request::builder()
        .method(Method::POST)
        .uri(url.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body.to_vec());
    let Ok(request) = request else {
        return fail(CallStep::Register, server, &UpstreamFailure::Unreachable);
    };
    let allow_private = state.config.servers.get(server).is_some_and(private_allowed);
    let (timeout, limit) = (state.options.token_timeout, state.options.max_token_response);
    match exchange(state, request, allow_private, timeout, limit).await {
        Ok(upstream) if upstream.status().is_server_error() => {
            fail(CallStep::Register, server, &UpstreamFailure::ServerError(upstream.status().as_u16()))
        }
        Ok(upstream) => {
            let (parts, body) = upstream.into_parts();
            let mut response = Response::new(body);
            *response.status_mut() = parts.status;
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            full(response)
        }
        Err(failure) => fail(CallStep::Register, server, &failure),
    }
}
