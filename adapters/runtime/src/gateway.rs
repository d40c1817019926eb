//! The gateway's request handling on any runtime: core decides, this module carries the bytes.
//!
//! [`handle`] is the whole life of one request after hyper parsed its head: it asks core's
//! [`gateway::decide_routed`] what to do and carries the [`Action`] out, reading bodies under
//! their limits and deadlines and running core's forwarded-call machine ([`Call`]) step by step:
//! a token from the shared cache, a session from the session store, a request to the upstream
//! through the adapter's [`Upstream`] client. It holds no policy of its own: every status, retry
//! and credential comes from core. An adapter adds its accept loop, its upstream client and its
//! timer; the tokio and async-std adapters both serve exactly this code.
//!
//! Responses are core's complete answers or the upstream's body, streamed (JSON or SSE, never
//! buffered). No log line carries a header value, a body or a secret: logs hold the method, route,
//! server, status and latency.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use mcp_oauth_core::aggregate::{Endpoint, GatewaySessions, Plan, SessionStore, Sessions, StreamAnswer};
use mcp_oauth_core::config::GatewayConfig;
use mcp_oauth_core::gateway::{
    self, Action, Aggregate, Call, CallAction, CallFailure, CallLimits, CallOutcome, Context, Forward,
    Gathered, OAuthState, Read, RequestHead, StartupError, TokenKey, TokenNeed, UpstreamFailure,
    UpstreamRequest, error_response,
};
use mcp_oauth_core::origin::Scheme;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_core::token_cache::CacheConfig;

use crate::grant_store::{DynGrantStore, MemoryGrantStore, unix_now};
use crate::token_cache::{CacheError, FetchError, SharedTokenCache};
use crate::{Clock, Runtime, timeout};

/// Any error a response body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends: core's complete answers or an upstream stream.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// The adapter's upstream HTTP client: sends one request and returns the answer with its body
/// still streaming.
///
/// An implementation applies the fetch policy (design §4.9) to the resolved addresses before
/// connecting (`allow_private` says whether private and loopback addresses may be reached),
/// connects only to a checked address, never follows a redirect, and reports what went wrong as
/// [`UpstreamFailure::Blocked`] or [`UpstreamFailure::Unreachable`]. Deadlines are applied here,
/// around it.
pub trait Upstream: Send + Sync + 'static {
    /// The streaming body of an answer.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;

    /// Sends `request`; resolves when the answer's head has arrived.
    fn send(
        &self,
        request: Request<Bytes>,
        allow_private: bool,
    ) -> impl Future<Output = Result<Response<Self::Body>, UpstreamFailure>> + Send;
}

/// Limits and timeouts of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Time until the upstream MCP server's response head arrives; the body then streams without
    /// a deadline (SSE streams may be long). An answer read whole (an aggregated listing) must be
    /// complete by then. Default 30 s.
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
    /// Upstream sessions kept for the aggregating endpoints (one per server and caller identity,
    /// and one per server in each gateway session); beyond it the least recently used is
    /// forgotten. Default 16,384.
    pub max_upstream_sessions: usize,
    /// Gateway sessions of the aggregating `POST /mcp` (design §4.11); beyond it the least
    /// recently used ends. Default 10,000.
    pub max_gateway_sessions: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let call = CallLimits::default();
        Self {
            upstream_timeout: call.upstream_timeout,
            token_timeout: call.token_timeout,
            max_request_body: 4 * 1024 * 1024,
            max_form_body: 64 * 1024,
            max_token_response: call.max_token_response,
            shutdown_grace: Duration::from_secs(10),
            pool_max_idle_per_host: 256,
            max_gathered_answer: call.max_gathered_answer,
            max_upstream_sessions: 16_384,
            max_gateway_sessions: mcp_oauth_core::aggregate::MAX_SESSIONS,
        }
    }
}

impl ServerOptions {
    /// The limits core's forwarded-call machine gives each upstream request.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            upstream_timeout: self.upstream_timeout,
            token_timeout: self.token_timeout,
            max_token_response: self.max_token_response,
            max_gathered_answer: self.max_gathered_answer,
        }
    }
}

/// Everything the server shares between requests: the configuration snapshot, the flows in
/// progress, the upstream sessions, the clock, the upstream client and the upstream token cache.
pub struct GatewayState<R, U> {
    config: GatewayConfig,
    oauth: Mutex<OAuthState>,
    sessions: Mutex<SessionStore>,
    gateway_sessions: Mutex<GatewaySessions>,
    clock: Clock<R>,
    upstream: U,
    tokens: SharedTokenCache<TokenKey, R>,
    grants: Arc<dyn DynGrantStore>,
    options: ServerOptions,
    requests: AtomicU64,
}

impl<R, U> std::fmt::Debug for GatewayState<R, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("servers", &self.config.servers.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime, U: Upstream> GatewayState<R, U> {
    /// The state for `config` on `runtime`, sending upstream with `upstream`. Refuses a
    /// configuration core's [`gateway::check_startup`] refuses (interactive servers without a
    /// pinned public origin) and logs its warnings.
    pub fn new(
        mut config: GatewayConfig,
        options: ServerOptions,
        upstream: U,
        runtime: R,
    ) -> Result<Self, StartupError> {
        for warning in gateway::check_startup(&config)? {
            tracing::warn!("{warning}");
        }
        if config.settings.grants.sealing_keys.is_none() {
            // Design §4.10: without configured keys (memory store only; the loader refuses a
            // durable store without them) a key is drawn now, and grants die with the process.
            if let Some(seed) = draw() {
                config.settings.grants.sealing_keys = Some(mcp_oauth_core::seal::SealingKeys::generate(seed));
            }
        }
        let clock = Clock::with_runtime(runtime);
        Ok(Self {
            config,
            oauth: Mutex::new(OAuthState::default()),
            sessions: Mutex::new(SessionStore::new(options.max_upstream_sessions)),
            gateway_sessions: Mutex::new(GatewaySessions::new(
                options.max_gateway_sessions,
                mcp_oauth_core::aggregate::SESSION_IDLE,
            )),
            tokens: SharedTokenCache::with_clock(CacheConfig::default(), clock.clone()),
            grants: Arc::new(MemoryGrantStore::new(crate::grant_store::DEFAULT_MAX_RECORDS)),
            clock,
            upstream,
            options,
            requests: AtomicU64::new(0),
        })
    }

    /// The state with `store` as its grant store instead of the memory store.
    #[must_use]
    pub fn with_grant_store(mut self, store: Arc<dyn DynGrantStore>) -> Self {
        self.grants = store;
        self
    }

    /// The grant store.
    pub fn grants(&self) -> &Arc<dyn DynGrantStore> {
        &self.grants
    }

    /// The configuration snapshot.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The server's limits.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The upstream token cache: M2M and exchanged tokens (its [`SharedTokenCache::fetches`]
    /// counter is useful in tests and benchmarks).
    pub fn tokens(&self) -> &SharedTokenCache<TokenKey, R> {
        &self.tokens
    }

    /// The runtime the state's clock and timers run on.
    pub fn runtime(&self) -> &R {
        self.clock.runtime()
    }

    /// Requests handled since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A complete response as the gateway's body type.
pub fn full(response: Response<Vec<u8>>) -> Response<GatewayBody> {
    response.map(|body| Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync())
}

/// The answer for a connection past the cap (design §7: 503), written before the socket closes;
/// nothing of the request is read.
pub const CONNECTION_REFUSAL: &str = concat!(
    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 105\r\n",
    "retry-after: 1\r\nconnection: close\r\n\r\n",
    r#"{"error":"too_many_connections","error_description":"the gateway is at its connection limit; retry shortly"}"#,
);

/// An adapter's listening socket: what [`serve`] needs from it.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// The connection as hyper's I/O.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    /// The next connection and its peer.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, std::net::SocketAddr)>> + Send;

    /// Waits until the connection has sent a byte, without consuming it; `false` when it closed or
    /// failed first. [`serve`] bounds the wait with the idle timeout.
    fn first_byte(stream: &Self::Stream) -> impl Future<Output = bool> + Send;

    /// Writes `answer` and closes the connection (a refusal past the connection cap).
    fn refuse(stream: Self::Stream, answer: &'static [u8]) -> impl Future<Output = ()> + Send;

    /// The connection as hyper's I/O.
    fn into_io(stream: Self::Stream) -> Self::Io;
}

/// Connections open at once, at most `max`: a slot is held for a connection's life.
#[derive(Clone, Debug)]
struct ConnectionSlots {
    open: Arc<AtomicU64>,
    max: u64,
}

/// One held connection slot; dropping it frees the slot.
struct Slot(Arc<AtomicU64>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionSlots {
    fn try_take(&self) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < self.max).then_some(open + 1));
        taken.ok().map(|_| Slot(Arc::clone(&self.open)))
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting and gives open connections
/// [`ServerOptions::shutdown_grace`] to finish their requests. HTTP/1.1 (keep-alive) and HTTP/2
/// are served, detected from the first bytes.
///
/// Strangers are bounded by the configuration's
/// [`ConnectionLimits`](mcp_oauth_core::config::ConnectionLimits): a connection that sends nothing
/// (no first byte, or no next request on a kept-alive HTTP/1.1 connection) is closed after the idle
/// timeout, request bodies have a read deadline per route, and past the connection cap a new
/// connection gets a 503 and is closed.
pub async fn serve<R: Runtime, U: Upstream, L: Listener>(
    listener: L,
    state: Arc<GatewayState<R, U>>,
    shutdown: impl Future<Output = ()>,
) {
    let timer = crate::hyper_rt::RuntimeTimer(state.runtime().clone());
    serve_with_timer(listener, state, shutdown, timer).await;
}

/// [`serve`] with hyper's timer of the adapter's choice: a runtime's own (hyper-util's for tokio)
/// saves the boxing [`RuntimeTimer`](crate::hyper_rt::RuntimeTimer) needs on every wait for a
/// request head.
pub async fn serve_with_timer<R, U, L, T>(
    listener: L,
    state: Arc<GatewayState<R, U>>,
    shutdown: impl Future<Output = ()>,
    timer: T,
) where
    R: Runtime,
    U: Upstream,
    L: Listener,
    T: hyper::rt::Timer + Clone + Send + Sync + 'static,
{
    use futures_util::future::{Either, select};
    let runtime = state.runtime().clone();
    let limits = state.config.settings.connections;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(crate::hyper_rt::RuntimeExecutor(runtime.clone()));
    // hyper starts this timer whenever it waits for a request head, the idle time between
    // kept-alive requests included.
    builder.http1().timer(timer.clone()).keep_alive(true).header_read_timeout(limits.idle_timeout);
    builder.http2().timer(timer);
    let slots = ConnectionSlots { open: Arc::new(AtomicU64::new(0)), max: limits.max_connections as u64 };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = match select(std::pin::pin!(listener.accept()), shutdown.as_mut()).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(((), _)) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                runtime.sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = slots.try_take() else {
            let timer = runtime.clone();
            runtime.spawn(async move {
                let refusal = L::refuse(stream, CONNECTION_REFUSAL.as_bytes());
                if timeout(&timer, Duration::from_secs(1), refusal).await.is_err() {
                    tracing::debug!("a refused connection did not take its 503 in time");
                }
            });
            continue;
        };
        let service = service(Arc::clone(&state), peer.ip());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let runtime_for_task = runtime.clone();
        runtime.spawn(async move {
            let _slot = slot;
            // The protocol is detected from the first bytes, with no deadline of its own: a
            // socket that never speaks is closed here.
            if timeout(&runtime_for_task, limits.idle_timeout, L::first_byte(&stream)).await != Ok(true) {
                return;
            }
            let connection = builder.serve_connection(L::into_io(stream), service).into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for open ones");
    if timeout(&runtime, state.options.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// The hyper service for one connection from `peer`: every request goes to [`handle`].
pub fn service<R: Runtime, U: Upstream>(
    state: Arc<GatewayState<R, U>>,
    peer: IpAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<GatewayBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<GatewayBody>, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok(handle(&state, request, peer).await) }
    })
}

/// Handles one request: decide, then carry out the action.
pub async fn handle<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    request: Request<Incoming>,
    peer: IpAddr,
) -> Response<GatewayBody> {
    let started = state.clock.runtime().now();
    state.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |value| value.as_str());
    let route = gateway::route(&parts.method, path_and_query);
    let (label, server) = (route.label(), route.server().map(str::to_owned));
    // Only a route that starts an authorization consumes randomness; the others skip the system
    // call (one per request otherwise, measurable under load).
    let random = route.needs_random().then(draw).flatten();
    let wall = unix_now();
    let head = RequestHead {
        method: &parts.method,
        path_and_query,
        headers: &parts.headers,
        scheme: Scheme::Http,
        peer: Some(peer),
    };
    let connections = state.config.settings.connections;
    let deadline =
        if route.is_oauth() { connections.oauth_body_timeout } else { connections.mcp_body_timeout };
    let action = {
        // Only the OAuth routes touch the pending flows and the per-peer budget: an MCP call
        // never waits on that lock.
        let mut oauth = route.is_oauth().then(|| lock(&state.oauth));
        let mut context = Context {
            config: &state.config,
            oauth: oauth.as_deref_mut(),
            now: state.clock.now(),
            unix_now: wall,
            random,
        };
        gateway::decide_routed(route, &head, &mut context)
    };
    let reader = BodyReader { runtime: state.clock.runtime(), deadline };
    let response = match action {
        Action::Respond(response) => full(response),
        Action::Forward(forward) => forward_mcp(state, &parts, body, reader, forward).await,
        Action::Aggregate(aggregate) => aggregated(state, &parts, body, reader, aggregate).await,
        Action::ReadForm(form) => {
            match reader.read(&parts.headers, body, state.options.max_form_body).await {
                Ok(body) => {
                    let action = {
                        let mut oauth = lock(&state.oauth);
                        let mut context = Context {
                            config: &state.config,
                            oauth: Some(&mut oauth),
                            now: state.clock.now(),
                            unix_now: wall,
                            random,
                        };
                        gateway::decide_form(form, &head, &body, &mut context)
                    };
                    match action {
                        Action::Authz(machine) => run_authz(state, *machine).await,
                        Action::Respond(response) => full(response),
                        _ => full(error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "server_error",
                            "unexpected action",
                        )),
                    }
                }
                Err(refused) => refused,
            }
        }
        Action::Authz(machine) => run_authz(state, *machine).await,
        Action::Probe(probe) => full(probe.answer(&state.grants.apply_boxed(probe.op()).await)),
    };
    tracing::info!(
        method = %parts.method,
        route = label,
        server = server.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        latency_us = u64::try_from(state.clock.runtime().now().saturating_duration_since(started).as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

/// 32 fresh random bytes, or `None` when the system has none (core then refuses the request).
fn draw() -> Option<[u8; 32]> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).ok().map(|()| random)
}

/// Logs core's audit events (design §4.8): never a token.
fn log_audit(events: Vec<gateway::Audit>) {
    for event in events {
        tracing::info!(
            event = event.event,
            server = %event.server,
            identity = event.identity.as_deref().unwrap_or("-"),
            client_host = event.client_host.as_deref().unwrap_or("-"),
            reason = event.reason.unwrap_or("-"),
            "audit"
        );
    }
}

/// Runs an authorization-server machine (callback, token, revocation) to its answer.
async fn run_authz<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    mut machine: gateway::Authz,
) -> Response<GatewayBody> {
    machine = machine.with_limits(state.options.call_limits());
    loop {
        match machine.poll() {
            gateway::AuthzStep::Store(op) => {
                let result = state.grants.apply_boxed(op).await;
                machine.handle_store(result);
            }
            gateway::AuthzStep::Send(request) => {
                let answer = perform_whole(state, request).await;
                machine.handle_answer(answer);
            }
            gateway::AuthzStep::Respond(response) => {
                log_audit(machine.take_audit());
                if let Some((server, origin, client)) = machine.take_registered_client() {
                    lock(&state.oauth).remember_upstream_client(server, &origin, client);
                }
                if let Some(document) = machine.take_client_document() {
                    lock(&state.oauth).remember_client_document(document, state.clock.now());
                }
                return full(response);
            }
        }
    }
}

/// Reads request bodies under a size limit and a deadline (core's
/// [`ConnectionLimits`](mcp_oauth_core::config::ConnectionLimits), per route).
#[derive(Clone, Copy)]
struct BodyReader<'r, R> {
    runtime: &'r R,
    deadline: Duration,
}

impl<R: Runtime> BodyReader<'_, R> {
    /// Reads a request body up to `limit` bytes; beyond the size a 413, past the deadline a 408
    /// (a body dribbled a byte at a time must not hold the connection).
    async fn read(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        limit: usize,
    ) -> Result<Bytes, Response<GatewayBody>> {
        let refuse = |status, error, description: &str| full(error_response(status, error, description));
        let too_large = || {
            let description = format!("the request body is larger than {limit} bytes");
            refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &description)
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        let Ok(collected) = timeout(self.runtime, self.deadline, Limited::new(body, limit).collect()).await
        else {
            let description = format!("the request body did not arrive within {} s", self.deadline.as_secs());
            return Err(refuse(StatusCode::REQUEST_TIMEOUT, "request_timeout", &description));
        };
        match collected {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(_) => {
                Err(refuse(StatusCode::BAD_REQUEST, "invalid_request", "the request body could not be read"))
            }
        }
    }
}

/// Sends `request` and waits for the head of the answer, within its deadline.
async fn perform<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    request: UpstreamRequest,
) -> Result<Response<U::Body>, UpstreamFailure> {
    let sent = state.upstream.send(request.request, request.allow_private);
    match timeout(state.clock.runtime(), request.timeout, sent).await {
        Ok(Err(UpstreamFailure::Blocked)) => {
            tracing::warn!("upstream request refused by the fetch policy");
            Err(UpstreamFailure::Blocked)
        }
        Ok(answer) => answer,
        Err(_elapsed) => Err(UpstreamFailure::Timeout),
    }
}

/// Sends `request` and reads the whole answer (at most its [`Read::Whole`] bytes), all within its
/// deadline.
async fn perform_whole<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    request: UpstreamRequest,
) -> Result<Response<Bytes>, UpstreamFailure> {
    let (deadline, limit) = match request.read {
        Read::Whole(limit) => (request.timeout, limit),
        Read::Head => (request.timeout, 0),
    };
    let whole = async {
        let (parts, body) = perform(state, request).await?.into_parts();
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(Response::from_parts(parts, collected.to_bytes())),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                Err(UpstreamFailure::TooLarge)
            }
            Err(_) => Err(UpstreamFailure::Unreachable),
        }
    };
    timeout(state.clock.runtime(), deadline, whole).await.unwrap_or(Err(UpstreamFailure::Timeout))
}

/// The token `need` names, from the cache or fetched (one fetch per key in flight). A fetch this
/// request ran fails with its own failure; a fetch it waited for, with the failure that fetch had.
async fn fetch_token<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    need: &TokenNeed<'_>,
) -> Result<Secret, CallFailure> {
    let mut own = None;
    let slot = &mut own;
    let fetched = state
        .tokens
        .get_or_fetch(need.key().clone(), move || async move {
            let fetched = match need.request() {
                Ok(request) => need.finish(perform_whole(state, request).await),
                Err(failure) => Err(failure),
            };
            fetched.map_err(|failure| {
                tracing::warn!(
                    server = need.key().server(),
                    reason = failure.reason(),
                    "upstream token fetch failed"
                );
                let error = FetchError::new(failure.reason(), failure.message());
                *slot = Some(failure);
                error
            })
        })
        .await;
    match fetched {
        Ok(token) => Ok(token.access_token().clone()),
        Err(error) => Err(own.unwrap_or_else(|| match error {
            CacheError::BackingOff { retry_in, .. } => CallFailure::Upstream {
                step: gateway::CallStep::FetchToken,
                failure: UpstreamFailure::BackingOff { retry_in },
            },
            CacheError::Fetch { reason, .. } => CallFailure::from_reason(reason),
        })),
    }
}

/// How a call ended, for the caller.
enum Ended {
    Response(Response<GatewayBody>),
    Gathered(Gathered),
}

/// Runs core's forwarded-call machine to its end, performing each step it asks for.
async fn run_call<R: Runtime, U: Upstream>(state: &GatewayState<R, U>, call: Call<'_>) -> Ended {
    let random = if call.needs_random() { draw() } else { None };
    let mut call = call.with_clock(unix_now(), random);
    let ended = step_call(state, &mut call).await;
    log_audit(call.take_audit());
    ended
}

async fn step_call<R: Runtime, U: Upstream>(state: &GatewayState<R, U>, call: &mut Call<'_>) -> Ended {
    let mut streamed: Option<U::Body> = None;
    loop {
        match call.poll() {
            CallAction::FetchToken(need) => {
                let token = fetch_token(state, &need).await;
                call.handle_token(token);
            }
            CallAction::InvalidateToken { key, token } => {
                tracing::info!(
                    server = key.server(),
                    "upstream refused the cached token; fetching a fresh one once"
                );
                state.tokens.invalidate(&key, &token);
            }
            CallAction::LookupSession(key) => {
                let session = lock(&state.sessions).get(&key, state.clock.now());
                call.handle_session(session);
            }
            CallAction::StoreSession(key, session) => {
                tracing::debug!(server = call.server().name.as_str(), "upstream session opened");
                lock(&state.sessions).insert(key, session, state.clock.now());
            }
            CallAction::ForgetSession(key, session) => {
                tracing::info!(
                    server = call.server().name.as_str(),
                    "the upstream session expired; opening a new one"
                );
                lock(&state.sessions).remove(&key, &session);
            }
            CallAction::Store(op) => {
                let result = state.grants.apply_boxed(op).await;
                call.handle_store(result);
            }
            CallAction::Wait(duration) => state.clock.runtime().sleep(duration).await,
            CallAction::Send(request) => match request.read {
                Read::Head => match perform(state, request).await {
                    Ok(answer) => {
                        call.handle_head(Ok(&answer));
                        streamed = Some(answer.into_body());
                    }
                    Err(failure) => call.handle_head::<()>(Err(failure)),
                },
                Read::Whole(_) => call.handle_whole(perform_whole(state, request).await),
            },
            CallAction::Respond(CallOutcome::Relay(head)) => {
                let (parts, ()) = head.into_parts();
                let response = match (streamed, call.take_stream_rewrite()) {
                    (Some(body), None) => {
                        Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
                    }
                    (Some(body), Some(mut rewrite)) => {
                        let body = body
                            .map_frame(move |frame| frame.map_data(|data| Bytes::from(rewrite.push(&data))))
                            .map_err(Into::into)
                            .boxed_unsync();
                        Response::from_parts(parts, body)
                    }
                    (None, _) => full(CallFailure::OutOfOrder.response(&call.server().name)),
                };
                return Ended::Response(response);
            }
            CallAction::Respond(CallOutcome::Answer(response)) => return Ended::Response(full(response)),
            CallAction::Respond(CallOutcome::Gathered(gathered)) => return Ended::Gathered(gathered),
        }
    }
}

impl Ended {
    fn into_response(self) -> Response<GatewayBody> {
        match self {
            Self::Response(response) => response,
            // A streamed call never ends gathered; answer what it gathered rather than nothing.
            Self::Gathered(Gathered { answer, .. }) => match answer {
                mcp_oauth_core::aggregate::Answer::Upstream(response)
                | mcp_oauth_core::aggregate::Answer::Failed(response) => full(response),
            },
        }
    }

    fn into_gathered(self, server: &str) -> Gathered {
        match self {
            Self::Gathered(gathered) => gathered,
            Self::Response(_) => Gathered {
                answer: mcp_oauth_core::aggregate::Answer::Failed(CallFailure::OutOfOrder.response(server)),
                debug: Vec::new(),
            },
        }
    }
}

/// `/{server}/mcp`: one call, streamed back.
async fn forward_mcp<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    parts: &Parts,
    body: Incoming,
    reader: BodyReader<'_, R>,
    forward: Forward,
) -> Response<GatewayBody> {
    let body = match reader.read(&parts.headers, body, state.options.max_request_body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let limits = state.options.call_limits();
    match Call::forward(&state.config, &forward, parts.method.clone(), body, limits) {
        Ok(call) => run_call(state, call.with_inbound(&parts.headers)).await.into_response(),
        Err(refused) => full(refused),
    }
}

/// `POST /mcp` and `/mcp-rest/tools/*`: core plans the request from its body; a call is streamed
/// like a single-server request, a listing asks its targets at the same time and core merges the
/// answers.
async fn aggregated<R: Runtime, U: Upstream>(
    state: &GatewayState<R, U>,
    parts: &Parts,
    body: Incoming,
    reader: BodyReader<'_, R>,
    aggregate: Aggregate,
) -> Response<GatewayBody> {
    let body = if aggregate.endpoint == Endpoint::RestList {
        Bytes::new()
    } else {
        match reader.read(&parts.headers, body, state.options.max_request_body).await {
            Ok(body) => body,
            Err(refused) => return refused,
        }
    };
    let limits = state.options.call_limits();
    let plan = match aggregate.endpoint {
        Endpoint::Mcp | Endpoint::McpEnd | Endpoint::McpStream => {
            let mut table = lock(&state.gateway_sessions);
            let random = &mut draw;
            aggregate.plan_in(&body, Sessions { table: &mut table, now: state.clock.now(), random })
        }
        Endpoint::RestList | Endpoint::RestCall => aggregate.plan(&body),
    };
    match plan {
        Plan::Respond(response) => full(response),
        Plan::Forward(one) => match Call::planned(&state.config, &aggregate, &one, limits, false) {
            Ok(call) => run_call(state, call.with_inbound(&parts.headers)).await.into_response(),
            Err(refused) => full(refused),
        },
        Plan::Stream(listens) => {
            // Every target's own event stream in the caller's session, merged as events arrive.
            let opens = listens.iter().map(|listen| async {
                match Call::planned(&state.config, &aggregate, listen, limits, false) {
                    Ok(call) => run_call(state, call.with_inbound(&parts.headers)).await.into_response(),
                    Err(refused) => full(refused),
                }
            });
            let answers = futures_util::future::join_all(opens).await;
            let heads: Vec<_> = answers.iter().map(|answer| (answer.status(), answer.headers())).collect();
            match mcp_oauth_core::aggregate::merge_streams(&heads) {
                StreamAnswer::Refuse(refused) => full(refused),
                StreamAnswer::Relay(target) => answers.into_iter().nth(target).unwrap_or_else(|| {
                    full(error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no such target"))
                }),
                StreamAnswer::Merge { head, keep } => {
                    let streams = answers
                        .into_iter()
                        .zip(keep)
                        .filter(|(_, kept)| *kept)
                        .map(|(answer, _)| http_body_util::BodyStream::new(answer.into_body()));
                    let merged = http_body_util::StreamBody::new(futures_util::stream::select_all(streams));
                    let (parts, ()) = head.into_parts();
                    Response::from_parts(parts, merged.boxed_unsync())
                }
            }
        }
        Plan::Gather(gather) => {
            let asks = gather.calls().iter().map(|ask| async {
                match Call::planned(&state.config, &aggregate, ask, limits, true) {
                    Ok(call) => {
                        let server = call.server().name.clone();
                        run_call(state, call.with_inbound(&parts.headers)).await.into_gathered(&server)
                    }
                    Err(refused) => Gathered {
                        answer: mcp_oauth_core::aggregate::Answer::Failed(refused),
                        debug: Vec::new(),
                    },
                }
            });
            let answers = futures_util::future::join_all(asks).await;
            let (response, learned) = gateway::finish_gather(gather, answers);
            lock(&state.gateway_sessions).learn(learned, state.clock.now());
            full(response)
        }
    }
}
