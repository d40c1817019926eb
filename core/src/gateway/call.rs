//! One forwarded MCP call as a machine (design §3): which credential goes up and where it comes
//! from, its cache key and lifetime, the single retry after the upstream refuses a token the
//! gateway obtained, the upstream session an aggregated call runs in (opened with `initialize` and
//! `notifications/initialized`, reopened once when it expired), and the answer for every failure.
//!
//! The adapter feeds it and drains it, as it drives the client machines: [`Call::poll`] says what
//! to do next ([`CallAction`]), and each action that waits for something is answered with one
//! `handle_*` call. The adapter performs exactly what it is told (a cache lookup, a store lookup, a
//! request under the given limits) and decides nothing; the machine ends with a [`CallOutcome`].
//!
//! ```text
//! LookupSession? ─▶ FetchToken? ─▶ Send(initialize) ─▶ Send(initialized) ─▶ StoreSession
//!                        ▲                                                      │
//!                        └─ InvalidateToken ◀─ 401 ─┐    ┌─ 404: ForgetSession ◀┤
//!                                                   └─ Send(the call) ──────────┴─▶ Respond
//! ```
//!
//! The credential source is [`OutboundCredential`]: the gateway's M2M token and the RFC 8693
//! exchange come from the adapter's shared token cache ([`CallAction::FetchToken`], one fetch per
//! [`TokenKey`] in flight); the others are header values. The grant behind a gateway access token
//! (design §4.8) will be one more source, read and refreshed through store steps.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::*;
use crate::aggregate::{self, Answer, Gather, Learned, SessionKey, SessionMode, SessionUse, UpstreamSession};
use crate::client::mcp::SESSION_HEADER;
use crate::token_cache::{Fetched, TtlPolicy};

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

    /// The server the token is for.
    pub fn server(&self) -> &str {
        &self.server
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.subject.is_some() { "exchange" } else { "m2m" };
        f.debug_struct("TokenKey").field("server", &self.server).field("kind", &kind).finish()
    }
}

/// The limits of a call's upstream requests (the adapter's server options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Time until the MCP server's response head arrives (a streamed answer), or until the whole
    /// answer is read (an answer read whole). Default 30 s.
    pub upstream_timeout: Duration,
    /// Time for a whole exchange with a token endpoint. Default 10 s.
    pub token_timeout: Duration,
    /// The largest token response read. Default 1 MiB.
    pub max_token_response: usize,
    /// The largest MCP answer read whole (aggregated listings, REST calls, `initialize`).
    /// Default 4 MiB.
    pub max_gathered_answer: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(30),
            token_timeout: Duration::from_secs(10),
            max_token_response: 1024 * 1024,
            max_gathered_answer: 4 * 1024 * 1024,
        }
    }
}

/// Why a forwarded call failed. [`CallFailure::response`] is the one place that maps each to the
/// caller's status and error code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallFailure {
    /// An exchange with an upstream failed in `step`.
    Upstream {
        /// The step.
        step: CallStep,
        /// What went wrong.
        failure: UpstreamFailure,
    },
    /// The configuration cannot produce the token request (503: the operator must fix it).
    TokenNotConfigured {
        /// What is missing, without a secret.
        missing: &'static str,
    },
    /// A token the gateway fetched for itself failed `token_validation` (502: the caller cannot
    /// fix it; design §7). It was neither used nor cached.
    TokenValidation {
        /// The rule's path, when this request ran the check.
        field: Option<String>,
    },
    /// The credential cannot be sent as a header value.
    InvalidCredential,
    /// The adapter polled while the machine waited for an answer (a driver bug).
    OutOfOrder,
    /// The grant behind the caller's gateway token has ended (revoked, expired, its key changed,
    /// its refresh refused): 401 with the gateway's challenge, so the client authorizes again.
    GrantEnded,
    /// An interactive server on a route that cannot name its grant (the aggregating routes):
    /// 401 `authorization_required`, naming where to authorize.
    AuthorizationRequired,
    /// The grant store could not answer (fail closed: 503).
    StoreUnavailable {
        /// The store's reason code.
        reason: &'static str,
    },
    /// Another request holds the grant's refresh lock for longer than this one waits (503).
    RefreshBusy,
}

impl CallFailure {
    /// The stable code of the failure: the answer's `error`, and what a token cache hands the
    /// requests that waited for a failed fetch ([`CallFailure::from_reason`] reads it back).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Upstream { failure, .. } => failure.reason(),
            Self::TokenNotConfigured { .. } => "token_endpoint_failed",
            Self::TokenValidation { .. } => "token_validation_failed",
            Self::InvalidCredential => "invalid_request",
            Self::OutOfOrder => "server_error",
            Self::GrantEnded => "invalid_token",
            Self::AuthorizationRequired => "authorization_required",
            Self::StoreUnavailable { reason } => reason,
            Self::RefreshBusy => "refresh_in_progress",
        }
    }

    /// The failure of a token fetch another request ran, from its [`reason`](Self::reason).
    pub fn from_reason(reason: &str) -> Self {
        if reason == "token_validation_failed" {
            return Self::TokenValidation { field: None };
        }
        Self::Upstream { step: CallStep::FetchToken, failure: UpstreamFailure::from_reason(reason) }
    }

    /// The caller's answer for this failure in a call to `server`; never a secret.
    pub fn response(&self, server: &str) -> Response<Vec<u8>> {
        match self {
            Self::Upstream { step, failure } => failure_response(*step, server, failure),
            Self::TokenNotConfigured { missing } => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                self.reason(),
                &format!("cannot request an upstream token for `{server}`: {missing}"),
            ),
            Self::TokenValidation { field } => json_response(
                StatusCode::BAD_GATEWAY,
                &json!({
                    "error": self.reason(),
                    "field": field,
                    "error_description": format!("the upstream token for `{server}` failed token_validation; it was not used"),
                }),
            ),
            Self::InvalidCredential => error_response(
                StatusCode::BAD_REQUEST,
                self.reason(),
                "the outbound credential is not a valid header value",
            ),
            Self::OutOfOrder => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                self.reason(),
                "the gateway's driver skipped a step of the call",
            ),
            Self::GrantEnded => error_response(
                StatusCode::UNAUTHORIZED,
                self.reason(),
                &format!("the authorization for `{server}` has ended; authorize again"),
            ),
            Self::AuthorizationRequired => error_response(
                StatusCode::UNAUTHORIZED,
                self.reason(),
                &format!("`{server}` needs you to authorize it first, at its own endpoint /{server}/mcp"),
            ),
            Self::StoreUnavailable { .. } => {
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    self.reason(),
                    "the gateway's grant store is unavailable; retry shortly",
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                response
            }
            Self::RefreshBusy => {
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    self.reason(),
                    &format!("the upstream token for `{server}` is being refreshed; retry shortly"),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                response
            }
        }
    }

    /// What went wrong, without the step, for logs and a token cache's message.
    pub fn message(&self) -> String {
        match self {
            Self::Upstream { failure, .. } => failure.message(),
            Self::TokenNotConfigured { missing } => (*missing).to_owned(),
            Self::TokenValidation { .. } => "the upstream token failed token_validation".to_owned(),
            Self::InvalidCredential => "the credential is not a valid header value".to_owned(),
            Self::OutOfOrder => "a step was skipped".to_owned(),
            Self::GrantEnded => "the grant has ended".to_owned(),
            Self::AuthorizationRequired => "authorization is required".to_owned(),
            Self::StoreUnavailable { reason } => format!("the grant store is unavailable ({reason})"),
            Self::RefreshBusy => "a refresh is in progress".to_owned(),
        }
    }
}

/// How much of an upstream answer the adapter reads before handing it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The head only ([`Call::handle_head`]); the adapter keeps the body to stream it.
    Head,
    /// The whole body, at most this many bytes ([`Call::handle_whole`]).
    Whole(usize),
}

/// One upstream request, with the limits the adapter applies to it.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// The request, credential attached.
    pub request: http::Request<Bytes>,
    /// Whether private and loopback addresses may be reached (the server's URL is itself local;
    /// design §4.9). Link-local and metadata addresses never are.
    pub allow_private: bool,
    /// The deadline: until the head for [`Read::Head`], for the whole exchange otherwise.
    pub timeout: Duration,
    /// How much of the answer to read.
    pub read: Read,
}

/// A token the call needs from the shared cache: on a miss the adapter sends [`TokenNeed::request`]
/// (one fetch per key in flight) and hands the answer to [`TokenNeed::finish`].
#[derive(Debug)]
pub struct TokenNeed<'a> {
    key: TokenKey,
    policy: TtlPolicy,
    server: &'a ServerConfig,
    credential: &'a OutboundCredential,
    limits: CallLimits,
}

impl TokenNeed<'_> {
    /// The cache key.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The token request to send on a miss.
    pub fn request(&self) -> Result<UpstreamRequest, CallFailure> {
        let request = outbound_token_request(self.server, self.credential)?;
        Ok(UpstreamRequest {
            request: request.map(Bytes::from),
            allow_private: crate::fetch_policy::is_local_server(&self.server.url),
            timeout: self.limits.token_timeout,
            read: Read::Whole(self.limits.max_token_response),
        })
    }

    /// Reads the token endpoint's answer: the token with its cache lifetime, or why none is
    /// usable (refused, malformed, failing `token_validation`).
    pub fn finish(&self, answer: Result<Response<Bytes>, UpstreamFailure>) -> Result<Fetched, CallFailure> {
        let fetch_failed = |failure| CallFailure::Upstream { step: CallStep::FetchToken, failure };
        let answer = answer.map_err(fetch_failed)?;
        let token = crate::client::token::parse_token_response(&answer)
            .map_err(|_| fetch_failed(UpstreamFailure::TokenRefused { status: answer.status().as_u16() }))?;
        if let Some(rules) = &self.server.entry.token_validation {
            let document = serde_json::from_slice::<Value>(answer.body()).unwrap_or(Value::Null);
            crate::token::validate_token_response(rules, &document).map_err(|failure| {
                CallFailure::TokenValidation { field: Some(failure.field().to_owned()) }
            })?;
        }
        Ok(Fetched::with_policy(&token, self.policy))
    }
}

/// What the adapter does next for a call.
#[derive(Debug)]
pub enum CallAction<'a> {
    /// Get the token from the shared cache (fetching it on a miss); answer with
    /// [`Call::handle_token`].
    FetchToken(TokenNeed<'a>),
    /// Drop this token from the cache if it is still the cached one (the upstream refused it);
    /// then poll again.
    InvalidateToken {
        /// Its key.
        key: TokenKey,
        /// The refused token.
        token: Secret,
    },
    /// Look up the upstream session; answer with [`Call::handle_session`].
    LookupSession(SessionKey),
    /// Remember this upstream session; then poll again.
    StoreSession(SessionKey, UpstreamSession),
    /// Forget this session if it is still the stored one (the upstream ended it); then poll again.
    ForgetSession(SessionKey, UpstreamSession),
    /// Send this request; answer with [`Call::handle_head`] or [`Call::handle_whole`] as its
    /// [`Read`] says.
    Send(UpstreamRequest),
    /// Apply this grant-store operation; answer with [`Call::handle_store`].
    Store(crate::grant::StoreOp),
    /// Sleep this long, then poll again (another request is refreshing the grant).
    Wait(Duration),
    /// The call is over.
    Respond(CallOutcome),
}

/// How a call ends.
#[derive(Debug)]
pub enum CallOutcome {
    /// Answer with this head and the body of the last request sent, streamed.
    Relay(Response<()>),
    /// Answer with this complete response (a failure, or an `initialize` answer the caller must
    /// see); any body kept from a sent request is dropped.
    Answer(Response<Vec<u8>>),
    /// A call read whole for an aggregated answer: hand it to [`finish_gather`].
    Gathered(Gathered),
}

/// One target's answer to a gathered request, with the debug headers that describe it.
#[derive(Debug)]
pub struct Gathered {
    /// The answer.
    pub answer: Answer,
    /// The `x-mcp-debug-*` headers, when the caller asked for them.
    pub debug: Vec<(&'static str, String)>,
}

/// Merges gathered answers (in the order of `gather`'s calls); when one target answered, its
/// debug headers describe the response. With it comes what a resource listing taught the
/// caller's gateway session (see [`aggregate::GatewaySessions::learn`]).
pub fn finish_gather(gather: Gather, mut answers: Vec<Gathered>) -> (Response<Vec<u8>>, Learned) {
    let debug = match answers.as_mut_slice() {
        [one] => std::mem::take(&mut one.debug),
        _ => Vec::new(),
    };
    let (mut response, learned) =
        gather.finish_learning(answers.into_iter().map(|gathered| gathered.answer).collect());
    add_debug(response.headers_mut(), debug);
    (response, learned)
}

fn add_debug(headers: &mut HeaderMap, debug: Vec<(&'static str, String)>) {
    for (name, value) in debug {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// Where the call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    AwaitSession,
    Credential,
    AwaitToken,
    AwaitStore(GrantStage),
    Ready,
    AwaitAnswer,
    Done,
}

/// Where the grant credential is (design §4.8: read, refresh under the grant's lock, write back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GrantStage {
    /// Reading the grant.
    Read,
    /// Taking the refresh lock.
    Lock,
    /// Writing the refreshed (or revoked) grant.
    Put,
    /// Releasing the lock.
    Unlock,
    /// Reading the grant again before writing a refresh onto it.
    Reread,
    /// Reading the grant again once the lock is held.
    LockedRead,
    /// Reading the identity's pointer to its newest grant.
    Pointer,
}

/// How long a request waits for another's refresh of the same grant, in steps of
/// [`REFRESH_WAIT`].
const REFRESH_WAITS: u32 = 40;
/// One wait for another request's refresh.
const REFRESH_WAIT: Duration = Duration::from_millis(250);
/// An upstream access token this close to its expiry is refreshed first.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// The grant credential's working state.
#[derive(Debug, Default)]
struct GrantWork {
    /// The grant as read.
    grant: Option<crate::grant::Grant>,
    /// Refresh even if the upstream token looks fresh (the upstream refused it).
    force: bool,
    /// A refresh ran in this call already.
    refreshed: bool,
    /// The lock's fencing value, while held.
    holder: Option<crate::grant::LockHolder>,
    /// Waits for another request's refresh so far.
    waits: u32,
    /// The sealed upstream token last tried (a re-read grant with another one was refreshed by
    /// someone else).
    tried: Option<String>,
    /// What the call continues with once the lock is released.
    after_unlock: Option<Result<Secret, CallFailure>>,
    /// The grant with the refreshed upstream tokens, to write onto a fresh read.
    refreshed_grant: Option<crate::grant::Grant>,
    /// The grant an identity's pointer named.
    resolved: Option<crate::grant::GrantId>,
    /// The request phase a refresh interrupted (opening the session, or the caller's request).
    resume: Option<Phase>,
}

/// Which request of the call goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Opening the upstream session.
    Initialize,
    /// Completing the handshake in the new session.
    Initialized,
    /// The caller's request.
    Request,
    /// Refreshing the grant's upstream token.
    Refresh,
}

/// One forwarded MCP call (see the module docs).
#[derive(Debug)]
pub struct Call<'a> {
    config: &'a GatewayConfig,
    server: &'a ServerConfig,
    forward: &'a Forward,
    inbound: Option<&'a HeaderMap>,
    method: Method,
    body: Bytes,
    limits: CallLimits,
    whole: bool,
    session_key: Option<SessionKey>,
    session: Option<UpstreamSession>,
    /// In a gateway session: the caller's `initialize`, which opens the upstream session.
    initialize: Option<Bytes>,
    /// What the call does with its upstream session.
    mode: SessionMode,
    /// The upstream's `initialize` answer, kept to answer a [`SessionMode::Open`] call with.
    opening: Option<Response<Vec<u8>>>,
    /// The rewrite a relayed event stream needs (server-to-client request ids, design §4.11).
    rewrite: Option<aggregate::StreamRewrite>,
    phase: Phase,
    state: State,
    credential: Option<(HeaderName, String)>,
    token: Option<(TokenKey, Secret)>,
    retried: bool,
    reopened: bool,
    effects: VecDeque<CallAction<'a>>,
    outcome: Option<CallOutcome>,
    unix_now: crate::seal::UnixTime,
    random: Option<Random>,
    work: GrantWork,
    audit: Vec<Audit>,
}

impl<'a> Call<'a> {
    /// A call for `/{server}/mcp`: `body` goes to `forward`'s upstream with `method`, outside any
    /// session the gateway holds (the caller's own session header, if any, goes along). A `POST`
    /// whose body is not JSON-RPC 2.0 is refused here (400), before any credential is spent.
    #[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
    pub fn forward(
        config: &'a GatewayConfig,
        forward: &'a Forward,
        method: Method,
        body: Bytes,
        limits: CallLimits,
    ) -> Result<Self, Response<Vec<u8>>> {
        let shape = check_forward_body(&method, &body)?;
        let mut call = Self::new(config, forward, method, body, limits)?;
        // Design §4.11: a request without a session id that is not `initialize` runs in the
        // gateway's own upstream session for (server, credential), so `tools/list` before (or
        // without) an `initialize` works against servers that require one.
        // A caller on the stateless wire (2026-07-28 on) has no session to miss: passed through.
        let stateless_caller = forward
            .headers
            .get("mcp-protocol-version")
            .and_then(|value| value.to_str().ok())
            .is_some_and(crate::client::mcp::is_stateless);
        if let Some(crate::jsonrpc::Shape::Request { method, .. }) = &shape
            && method != "initialize"
            && !stateless_caller
            && !forward.headers.contains_key(SESSION_HEADER)
        {
            call.session_key = Some(forward.session_key());
        }
        Ok(call)
    }

    /// One upstream request of an aggregated call (`POST /mcp`, `/mcp-rest/tools/*`): `body` goes
    /// to the target in the upstream session for the caller's identity, opened when none is held.
    /// With `whole`, the answer is read whole for [`finish_gather`]; otherwise it is streamed.
    #[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
    pub fn aggregated(
        config: &'a GatewayConfig,
        aggregate: &'a Aggregate,
        target: usize,
        body: Bytes,
        limits: CallLimits,
        whole: bool,
    ) -> Result<Self, Response<Vec<u8>>> {
        let Some(forward) = aggregate.targets.get(target) else {
            return Err(error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no such target"));
        };
        let mut call = Self::new(config, forward, Method::POST, body, limits)?;
        call.whole = whole;
        call.session_key = Some(forward.session_key());
        Ok(call)
    }

    /// The call a plan's [`aggregate::UpstreamCall`] describes: [`Call::aggregated`] with its
    /// body, in the gateway session it names ([`Call::in_session`]).
    #[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
    pub fn planned(
        config: &'a GatewayConfig,
        aggregate: &'a Aggregate,
        planned: &aggregate::UpstreamCall,
        limits: CallLimits,
        whole: bool,
    ) -> Result<Self, Response<Vec<u8>>> {
        let body = Bytes::from(planned.body.clone());
        Ok(Self::aggregated(config, aggregate, planned.target, body, limits, whole)?
            .in_session(planned.session.as_ref()))
    }

    #[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
    fn new(
        config: &'a GatewayConfig,
        forward: &'a Forward,
        method: Method,
        body: Bytes,
        limits: CallLimits,
    ) -> Result<Self, Response<Vec<u8>>> {
        let Some(server) = config.servers.get(&forward.server) else {
            return Err(not_found());
        };
        Ok(Self {
            config,
            server,
            forward,
            inbound: None,
            method,
            body,
            limits,
            whole: false,
            session_key: None,
            session: None,
            initialize: None,
            mode: SessionMode::Use,
            opening: None,
            rewrite: None,
            phase: Phase::Request,
            state: State::Start,
            credential: None,
            token: None,
            retried: false,
            reopened: false,
            effects: VecDeque::new(),
            outcome: None,
            unix_now: crate::seal::UnixTime::default(),
            random: None,
            work: GrantWork::default(),
            audit: Vec::new(),
        })
    }

    /// Runs the call in the caller's gateway session (design §4.11), as its plan says: its
    /// upstream session is the gateway session's own, opened with the caller's `initialize`.
    #[must_use]
    pub fn in_session(mut self, session: Option<&SessionUse>) -> Self {
        let Some(session) = session else { return self };
        self.session_key = self.session_key.map(|key| key.in_scope(session.view.scope));
        self.initialize = Some(session.view.initialize.clone());
        self.mode = session.mode;
        match session.mode {
            SessionMode::Use | SessionMode::Reply => {}
            // A new gateway session has no upstream session to look up.
            SessionMode::Open => self.phase = Phase::Initialize,
            SessionMode::End => {
                self.method = Method::DELETE;
                self.body = Bytes::new();
            }
            SessionMode::Listen => {
                self.method = Method::GET;
                self.body = Bytes::new();
                self.whole = false;
            }
        }
        self
    }

    /// The rewrite the relayed body must go through, chunk by chunk, once the call ended with
    /// [`CallOutcome::Relay`]: a target's event stream in a gateway session, whose requests to
    /// the caller get routable ids. `None`: relay the body unchanged.
    pub fn take_stream_rewrite(&mut self) -> Option<aggregate::StreamRewrite> {
        self.rewrite.take()
    }

    /// The caller's request headers, for the debug headers (design §4.7) when it asked for them.
    #[must_use]
    pub fn with_inbound(mut self, inbound: &'a HeaderMap) -> Self {
        self.inbound = Some(inbound);
        self
    }

    /// The wall-clock time and, when [`Call::needs_random`] holds, a random seed: what a grant
    /// credential needs (sealed expiries, the refresh lock's fencing value, new sealed tokens).
    #[must_use]
    pub fn with_clock(mut self, unix_now: crate::seal::UnixTime, random: Option<[u8; 32]>) -> Self {
        self.unix_now = unix_now;
        self.random = random.map(Random::new);
        self
    }

    /// Whether the call may need random bytes ([`Call::with_clock`]): only a grant credential does.
    pub fn needs_random(&self) -> bool {
        self.uses_grant()
    }

    /// Whether the credential is a grant (named by a gateway token, or an identity's newest).
    fn uses_grant(&self) -> bool {
        matches!(
            self.forward.credential,
            OutboundCredential::Grant { .. } | OutboundCredential::IdentityGrant { .. }
        )
    }

    /// The identity the grant credential was admitted as.
    fn grant_identity(&self) -> Option<&'a str> {
        match &self.forward.credential {
            OutboundCredential::Grant { identity, .. }
            | OutboundCredential::IdentityGrant { identity, .. } => Some(identity),
            _ => None,
        }
    }

    /// The audit events so far (a grant refreshed, revoked, failed to refresh), drained.
    pub fn take_audit(&mut self) -> Vec<Audit> {
        std::mem::take(&mut self.audit)
    }

    /// The server the call goes to.
    pub fn server(&self) -> &'a ServerConfig {
        self.server
    }

    /// What to do next.
    pub fn poll(&mut self) -> CallAction<'a> {
        if let Some(effect) = self.effects.pop_front() {
            return effect;
        }
        loop {
            match self.state {
                State::Start => match &self.session_key {
                    Some(key) if self.mode != SessionMode::Open => {
                        self.state = State::AwaitSession;
                        return CallAction::LookupSession(key.clone());
                    }
                    _ => self.state = State::Credential,
                },
                State::Credential => match self.credential_source() {
                    Ok(Some(need)) => {
                        self.state = State::AwaitToken;
                        return CallAction::FetchToken(need);
                    }
                    Ok(None) if matches!(self.state, State::AwaitStore(_)) => {
                        if let Some(effect) = self.effects.pop_front() {
                            return effect;
                        }
                    }
                    Ok(None) => self.state = State::Ready,
                    Err(failure) => self.fail(failure),
                },
                State::Ready => match self.next_request() {
                    Ok(request) => {
                        self.state = State::AwaitAnswer;
                        return CallAction::Send(request);
                    }
                    Err(failure) => self.fail(failure),
                },
                State::Done => {
                    let outcome = self.outcome.take().unwrap_or_else(|| {
                        CallOutcome::Answer(CallFailure::OutOfOrder.response(&self.server.name))
                    });
                    return CallAction::Respond(outcome);
                }
                State::AwaitSession | State::AwaitToken | State::AwaitAnswer | State::AwaitStore(_) => {
                    self.fail(CallFailure::OutOfOrder);
                }
            }
        }
    }

    /// The session lookup's answer.
    pub fn handle_session(&mut self, session: Option<UpstreamSession>) {
        if self.state != State::AwaitSession {
            return self.fail(CallFailure::OutOfOrder);
        }
        match (&session, self.mode) {
            (None, SessionMode::End) => {
                // No upstream session to end.
                return self.answer_whole(Response::new(Vec::new()));
            }
            (None, SessionMode::Reply) => {
                // The request this answers went with the session: nothing waits for the answer.
                let mut accepted = Response::new(Vec::new());
                *accepted.status_mut() = StatusCode::ACCEPTED;
                return self.answer_whole(accepted);
            }
            (Some(held), SessionMode::End) => {
                // Forgotten whatever the upstream answers to the DELETE, or whether it answers.
                if let Some(key) = self.session_key.clone() {
                    self.effects.push_back(CallAction::ForgetSession(key, held.clone()));
                }
            }
            _ => {}
        }
        self.phase = if session.is_some() { Phase::Request } else { Phase::Initialize };
        self.session = session;
        self.state = State::Credential;
    }

    /// The token from the cache, or why there is none (this request's own fetch failure, or
    /// [`CallFailure::from_reason`] of the fetch it waited for).
    pub fn handle_token(&mut self, token: Result<Secret, CallFailure>) {
        if self.state != State::AwaitToken {
            return self.fail(CallFailure::OutOfOrder);
        }
        match (token, self.token_key()) {
            (Ok(token), Some(key)) => {
                self.credential = Some((header::AUTHORIZATION, format!("Bearer {}", token.expose())));
                self.token = Some((key, token));
                self.state = State::Ready;
            }
            (Ok(_), None) => self.fail(CallFailure::OutOfOrder),
            (Err(failure), _) => self.fail(failure),
        }
    }

    /// The head of the answer to a [`Read::Head`] request (the adapter keeps its body), or why
    /// there is none.
    pub fn handle_head<B>(&mut self, answer: Result<&Response<B>, UpstreamFailure>) {
        if self.state != State::AwaitAnswer || self.phase != Phase::Request || self.whole {
            return self.fail(CallFailure::OutOfOrder);
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => return self.fail(CallFailure::Upstream { step: CallStep::Forward, failure }),
        };
        if self.try_again(answer.status(), None) {
            return;
        }
        let status = answer.status();
        if status.is_server_error() {
            let failure = CallFailure::Upstream {
                step: CallStep::Forward,
                failure: UpstreamFailure::ServerError(status.as_u16()),
            };
            let mut response = failure.response(&self.server.name);
            add_debug(response.headers_mut(), self.debug());
            return self.finish(CallOutcome::Answer(response));
        }
        let mut head = Response::new(());
        *head.status_mut() = status;
        self.relay_headers(answer.headers(), head.headers_mut());
        if crate::sse::is_event_stream(answer.headers()) && self.initialize.is_some() {
            // In a gateway session a target's requests to the caller get ids the caller's
            // answers can be routed back by.
            self.rewrite = Some(aggregate::StreamRewrite::new(&self.server.name));
        }
        self.finish(CallOutcome::Relay(head));
    }

    /// The whole answer to a [`Read::Whole`] request, or why there is none.
    pub fn handle_whole(&mut self, answer: Result<Response<Bytes>, UpstreamFailure>) {
        if self.state != State::AwaitAnswer {
            return self.fail(CallFailure::OutOfOrder);
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) if self.phase == Phase::Refresh => return self.refreshed(Err(failure)),
            Err(failure) => return self.fail(CallFailure::Upstream { step: CallStep::Forward, failure }),
        };
        match self.phase {
            Phase::Initialize => {
                if self.try_again(answer.status(), Some(answer.body())) {
                    return;
                }
                let answer = answer.map(|body| body.to_vec());
                let session = aggregate::session_from_initialize(&answer);
                if self.mode == SessionMode::Open {
                    self.opening = Some(answer.clone());
                }
                match session {
                    None => self.answer_whole(answer),
                    Some(session @ UpstreamSession::Session { .. }) => {
                        self.session = Some(session);
                        self.phase = Phase::Initialized;
                        self.state = State::Ready;
                    }
                    Some(session) => self.opened(session),
                }
            }
            // The acknowledgement's content does not matter: the session is open.
            Phase::Initialized => match self.session.clone() {
                Some(session) => self.opened(session),
                None => self.fail(CallFailure::OutOfOrder),
            },
            Phase::Refresh => self.refreshed(Ok(answer)),
            Phase::Request if self.whole => {
                if self.mode == SessionMode::End {
                    return self.answer_whole(answer.map(|body| body.to_vec()));
                }
                if !self.try_again(answer.status(), Some(answer.body())) {
                    self.answer_whole(answer.map(|body| body.to_vec()));
                }
            }
            Phase::Request => self.fail(CallFailure::OutOfOrder),
        }
    }

    /// Whether the call goes on after `status` instead of answering: once after a 401 to a
    /// token the gateway obtained (the token is dropped and fetched again), and once when the
    /// upstream ended the session the call ran in (it is forgotten and opened again).
    fn try_again(&mut self, status: StatusCode, body: Option<&[u8]>) -> bool {
        if status == StatusCode::UNAUTHORIZED && !self.retried && self.uses_grant() {
            // The upstream refused the grant's token: refresh once, retry once.
            self.retried = true;
            self.work.force = true;
            self.credential = None;
            self.state = State::Credential;
            return true;
        }
        if upstream_reaction(self.forward, status, self.retried) == UpstreamReaction::RetryWithFreshToken {
            self.retried = true;
            if let Some((key, token)) = self.token.take() {
                self.effects.push_back(CallAction::InvalidateToken { key, token });
            }
            self.credential = None;
            self.state = State::Credential;
            return true;
        }
        // An answer to a target's request is never resent in a new session: the request is gone.
        let expired = self.phase == Phase::Request
            && self.mode != SessionMode::Reply
            && self.session.as_ref().is_some_and(|session| session.expired_by(status, body));
        if expired
            && !self.reopened
            && let (Some(key), Some(session)) = (self.session_key.clone(), self.session.take())
        {
            self.reopened = true;
            self.effects.push_back(CallAction::ForgetSession(key, session));
            self.phase = Phase::Initialize;
            self.state = State::Ready;
            return true;
        }
        false
    }

    /// The grant store's answer to the last [`CallAction::Store`].
    pub fn handle_store(&mut self, result: crate::grant::StoreResult) {
        use crate::grant::StoreResult;
        let State::AwaitStore(stage) = self.state else {
            return self.fail(CallFailure::OutOfOrder);
        };
        if let StoreResult::Unavailable { reason } = result {
            // Fail closed; a lock this call holds lapses by its TTL.
            return self.fail(CallFailure::StoreUnavailable { reason });
        }
        match (stage, result) {
            (GrantStage::Read, StoreResult::Grant(grant)) => self.grant_read(grant.map(|grant| *grant)),
            (GrantStage::Pointer, StoreResult::Grant(pointer)) => {
                let target = pointer
                    .filter(|pointer| {
                        pointer.server == self.server.name && !pointer.is_expired(self.unix_now)
                    })
                    .and_then(|pointer| pointer.pointed());
                match target {
                    Some(id) => {
                        self.work.resolved = Some(id);
                        self.read_grant_for(GrantStage::Read);
                    }
                    None => self.fail(CallFailure::AuthorizationRequired),
                }
            }
            // Under the lock, read the grant again: another request may have refreshed it between
            // this one's read and its lock, and its rotated refresh token is the only valid one.
            (GrantStage::Lock, StoreResult::Locked(true)) => self.read_grant_for(GrantStage::LockedRead),
            (GrantStage::LockedRead, StoreResult::Grant(grant)) => {
                self.locked_read(grant.map(|grant| *grant))
            }
            (GrantStage::Lock, StoreResult::Locked(false)) => {
                // Another request refreshes this grant: wait, read it again, use its result.
                self.work.holder = None;
                if self.work.waits >= REFRESH_WAITS {
                    return self.fail(CallFailure::RefreshBusy);
                }
                self.work.waits += 1;
                self.effects.push_back(CallAction::Wait(REFRESH_WAIT));
                self.read_grant_for(GrantStage::Read);
            }
            (GrantStage::Put, StoreResult::Stored) => self.unlock(),
            (GrantStage::Reread, StoreResult::Grant(Some(mut fresh))) => {
                match self.work.refreshed_grant.take() {
                    Some(refreshed) if !fresh.is_expired(self.unix_now) => {
                        fresh.upstream_access_token = refreshed.upstream_access_token;
                        fresh.upstream_refresh_token = refreshed.upstream_refresh_token;
                        fresh.upstream_access_expires_at = refreshed.upstream_access_expires_at;
                        self.put(*fresh);
                    }
                    _ => self.unlock_then(Err(CallFailure::GrantEnded)),
                }
            }
            (GrantStage::Reread, StoreResult::Grant(None)) => {
                // Revoked while the refresh ran: the new upstream tokens are dropped.
                self.unlock_then(Err(CallFailure::GrantEnded));
            }
            (GrantStage::Unlock, StoreResult::Unlocked) => match self.work.after_unlock.take() {
                Some(Ok(token)) => self.use_token(&token),
                Some(Err(failure)) => self.fail(failure),
                None => self.fail(CallFailure::OutOfOrder),
            },
            _ => self.fail(CallFailure::OutOfOrder),
        }
    }

    fn grant_id(&self) -> Option<crate::grant::GrantId> {
        match &self.forward.credential {
            OutboundCredential::Grant { grant, .. } => Some(grant.clone()),
            OutboundCredential::IdentityGrant { .. } => self.work.resolved.clone(),
            _ => None,
        }
    }

    /// The grant as read: live, this server's, this identity's, its key unchanged; then its
    /// upstream token, refreshed first when it is about to expire or the upstream refused it.
    fn grant_read(&mut self, grant: Option<crate::grant::Grant>) {
        let (Some(id), Some(identity), Some(keys)) =
            (self.grant_id(), self.grant_identity(), self.config.settings.grants.sealing_keys.as_ref())
        else {
            return self.fail(CallFailure::GrantEnded);
        };
        let id = &id;
        let now = self.unix_now;
        let Some(grant) = grant.filter(|grant| {
            grant.id == *id
                && grant.is_user_grant()
                && grant.server == self.server.name
                && !grant.is_expired(now)
                && grant.identity.name == *identity
                && super::authz::identity_holds(self.config, keys, grant)
        }) else {
            return self.fail(CallFailure::GrantEnded);
        };
        let token = grant.upstream_access_token.open(keys, &self.server.name, id, now);
        let refused =
            self.work.force && self.work.tried.as_deref() == Some(grant.upstream_access_token.as_stored());
        let expiring = grant.upstream_access_expires_at.is_some_and(|at| at <= now.plus(REFRESH_AHEAD));
        let expired = grant.upstream_access_expires_at.is_some_and(|at| at <= now);
        let can_refresh = grant.upstream_refresh_token.is_some() && !self.work.refreshed;
        self.work.tried = Some(grant.upstream_access_token.as_stored().to_owned());
        match token {
            Ok(token) if !refused && !expiring => {
                self.work.grant = Some(grant);
                self.use_token(&token);
            }
            _ if can_refresh => self.lock(grant),
            Ok(token) if !refused && !expired => {
                self.work.grant = Some(grant);
                self.use_token(&token);
            }
            _ => self.fail(CallFailure::GrantEnded),
        }
    }

    /// The grant as read under the lock: refreshed meanwhile by another request (use its token),
    /// or still to be refreshed, now with the newest refresh token.
    fn locked_read(&mut self, grant: Option<crate::grant::Grant>) {
        let keys = self.config.settings.grants.sealing_keys.as_ref();
        let (Some(grant), Some(keys)) = (grant.filter(|grant| !grant.is_expired(self.unix_now)), keys) else {
            return self.unlock_then(Err(CallFailure::GrantEnded));
        };
        let changed = self.work.tried.as_deref() != Some(grant.upstream_access_token.as_stored());
        let expired = grant.upstream_access_expires_at.is_some_and(|at| at <= self.unix_now);
        if changed && !expired {
            let token = grant.upstream_access_token.open(keys, &self.server.name, &grant.id, self.unix_now);
            if let Ok(token) = token {
                self.work.grant = Some(grant);
                return self.unlock_then(Ok(token));
            }
        }
        self.work.grant = Some(grant);
        self.start_refresh();
    }

    fn use_token(&mut self, token: &Secret) {
        self.credential = Some((header::AUTHORIZATION, format!("Bearer {}", token.expose())));
        if self.phase == Phase::Refresh {
            self.phase = self.work.resume.take().unwrap_or(Phase::Request);
        }
        self.state = State::Ready;
    }

    /// Takes the grant's refresh lock (one refresh per grant in flight, across replicas).
    fn lock(&mut self, grant: crate::grant::Grant) {
        let Some(random) = self.random.as_mut() else {
            return self.fail(CallFailure::OutOfOrder);
        };
        let holder = crate::grant::LockHolder(random.token::<16>());
        let ttl = self.limits.token_timeout.saturating_mul(2);
        self.effects.push_back(CallAction::Store(crate::grant::StoreOp::TryLock {
            grant: grant.id.clone(),
            holder: holder.clone(),
            ttl,
        }));
        self.work.holder = Some(holder);
        self.work.grant = Some(grant);
        self.state = State::AwaitStore(GrantStage::Lock);
    }

    /// Sends the refresh under the lock.
    fn start_refresh(&mut self) {
        let keys = self.config.settings.grants.sealing_keys.as_ref();
        let request = self.work.grant.as_ref().zip(keys).and_then(|(grant, keys)| {
            let refresh = grant
                .upstream_refresh_token
                .as_ref()?
                .open(keys, &self.server.name, &grant.id, self.unix_now)
                .ok()?;
            let grant_type = crate::client::token::Grant::RefreshToken { refresh_token: &refresh };
            let client = match &grant.upstream_client {
                Some(registered) => super::authz::UpstreamClientInfo {
                    client_id: registered.client_id.clone(),
                    client_secret: match &registered.client_secret {
                        Some(sealed) => {
                            Some(sealed.open(keys, &self.server.name, &grant.id, self.unix_now).ok()?)
                        }
                        None => None,
                    },
                    registered: true,
                },
                None => super::authz::configured_client(self.server)?,
            };
            super::authz::upstream_token_request(self.server, &client, &grant_type, &self.limits)
        });
        self.work.refreshed = true;
        match request {
            Some(request) => {
                self.effects.push_back(CallAction::Send(request));
                self.work.resume = Some(self.phase);
                self.phase = Phase::Refresh;
                self.state = State::AwaitAnswer;
            }
            None => self.revoke_then_fail("refresh_unusable"),
        }
    }

    /// The upstream token endpoint's answer to the refresh.
    fn refreshed(&mut self, answer: Result<Response<Bytes>, UpstreamFailure>) {
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                // The upstream could not be asked: keep the grant, try again on a later call.
                self.record("grant_refresh_failed", Some(failure.reason()));
                return self.unlock_then(Err(CallFailure::Upstream { step: CallStep::FetchToken, failure }));
            }
        };
        let token = match crate::client::token::parse_token_response(&answer) {
            Ok(token) => token,
            Err(crate::client::token::TokenError::Refused { .. }) => {
                return self.revoke_then_fail("refresh_refused");
            }
            Err(_) => {
                let failure = UpstreamFailure::TokenRefused { status: answer.status().as_u16() };
                self.record("grant_refresh_failed", Some("upstream_token_refused"));
                return self.unlock_then(Err(CallFailure::Upstream { step: CallStep::FetchToken, failure }));
            }
        };
        if let Some(rules) = &self.server.entry.token_validation {
            let document = serde_json::from_slice::<Value>(answer.body()).unwrap_or(Value::Null);
            if crate::token::validate_token_response(rules, &document).is_err() {
                return self.revoke_then_fail("token_validation_failed");
            }
        }
        let (Some(mut grant), Some(keys), Some(random)) =
            (self.work.grant.take(), self.config.settings.grants.sealing_keys.as_ref(), self.random.as_mut())
        else {
            return self.fail(CallFailure::OutOfOrder);
        };
        let server = &self.server.name;
        let sealed = crate::grant::SealedUpstreamToken::seal(
            keys,
            server,
            &grant.id,
            grant.expires_at,
            &token.access_token,
            random.array(),
        );
        let rotated = token
            .refresh_token
            .as_ref()
            .map(|refresh| {
                crate::grant::SealedUpstreamToken::seal(
                    keys,
                    server,
                    &grant.id,
                    grant.expires_at,
                    refresh,
                    random.array(),
                )
            })
            .transpose();
        let (Ok(sealed), Ok(rotated)) = (sealed, rotated) else {
            return self.unlock_then(Err(CallFailure::OutOfOrder));
        };
        let lifetime =
            crate::token::user_token_ttl(token.expires_in, self.server.entry.token_storage_ttl_seconds);
        grant.upstream_access_token = sealed;
        if let Some(rotated) = rotated {
            grant.upstream_refresh_token = Some(rotated);
        }
        grant.upstream_access_expires_at = Some(self.unix_now.plus(Duration::from_secs(lifetime)));
        self.record("grant_refreshed", None);
        self.work.after_unlock = Some(Ok(token.access_token));
        // The client may have rotated its gateway refresh token while this refresh ran (that
        // advances the grant's generation without the lock): read the grant again and write only
        // the upstream fields onto it, so its generation is never set back.
        self.work.refreshed_grant = Some(grant);
        self.read_grant_for(GrantStage::Reread);
    }

    fn read_grant_for(&mut self, stage: GrantStage) {
        match self.grant_id() {
            Some(id) => {
                self.effects.push_back(CallAction::Store(crate::grant::StoreOp::GetGrant { id }));
                self.state = State::AwaitStore(stage);
            }
            None => self.fail(CallFailure::OutOfOrder),
        }
    }

    /// Revokes the grant (the upstream refused its refresh token, or it cannot be used) and ends
    /// the call with the gateway's 401 challenge.
    fn revoke_then_fail(&mut self, reason: &'static str) {
        self.record("grant_revoked", Some(reason));
        match self.work.grant.take() {
            Some(mut grant) => {
                grant.expires_at = self.unix_now;
                self.work.after_unlock = Some(Err(CallFailure::GrantEnded));
                self.put(grant);
            }
            None => self.unlock_then(Err(CallFailure::GrantEnded)),
        }
    }

    fn put(&mut self, grant: crate::grant::Grant) {
        self.effects.push_back(CallAction::Store(crate::grant::StoreOp::PutGrant(Box::new(grant))));
        self.state = State::AwaitStore(GrantStage::Put);
    }

    fn unlock_then(&mut self, then: Result<Secret, CallFailure>) {
        self.work.after_unlock = Some(then);
        self.unlock();
    }

    fn unlock(&mut self) {
        match (self.grant_id(), self.work.holder.take()) {
            (Some(grant), Some(holder)) => {
                self.effects.push_back(CallAction::Store(crate::grant::StoreOp::Unlock {
                    grant: grant.clone(),
                    holder,
                }));
                self.state = State::AwaitStore(GrantStage::Unlock);
            }
            _ => self.fail(CallFailure::OutOfOrder),
        }
    }

    fn record(&mut self, event: &'static str, reason: Option<&'static str>) {
        let identity = self.grant_identity().map(str::to_owned);
        self.audit.push(Audit {
            event,
            server: self.server.name.clone(),
            identity,
            client_host: None,
            reason,
        });
    }

    /// The session is open: remember it, then send the caller's request in it.
    fn opened(&mut self, session: UpstreamSession) {
        if let Some(key) = &self.session_key {
            self.effects.push_back(CallAction::StoreSession(key.clone(), session.clone()));
        }
        self.session = Some(session);
        if let Some(answer) = self.opening.take() {
            // The caller asked for the `initialize` itself: that answer is the call's.
            return self.answer_whole(answer);
        }
        self.phase = Phase::Request;
        self.state = State::Ready;
    }

    /// Ends with an answer read whole: for an aggregated answer as it is, for a streamed call as
    /// a relayed one (a 5xx becomes the gateway's 502, only relayed headers pass).
    fn answer_whole(&mut self, answer: Response<Vec<u8>>) {
        if self.whole {
            let debug = self.debug();
            return self.finish(CallOutcome::Gathered(Gathered { answer: Answer::Upstream(answer), debug }));
        }
        let status = answer.status();
        let mut response = if status.is_server_error() {
            let failure = UpstreamFailure::ServerError(status.as_u16());
            CallFailure::Upstream { step: CallStep::Forward, failure }.response(&self.server.name)
        } else {
            let (parts, body) = answer.into_parts();
            let mut response = Response::new(body);
            *response.status_mut() = parts.status;
            self.relay_headers(&parts.headers, response.headers_mut());
            response
        };
        add_debug(response.headers_mut(), self.debug());
        self.finish(CallOutcome::Answer(response));
    }

    fn relay_headers(&self, upstream: &HeaderMap, to: &mut HeaderMap) {
        for (name, value) in upstream {
            let relayed = if self.session_key.is_some() {
                super::upstream::relays_in_gateway_session(self.forward, name)
            } else {
                relays_upstream_header(self.forward, name)
            };
            if relayed {
                to.append(name.clone(), value.clone());
            }
        }
        add_debug(to, self.debug());
    }

    fn fail(&mut self, failure: CallFailure) {
        // On the aggregating routes a grant that ended means: authorize at the server's own route.
        let failure = match (failure, &self.forward.credential) {
            (CallFailure::GrantEnded, OutboundCredential::IdentityGrant { .. }) => {
                CallFailure::AuthorizationRequired
            }
            (failure, _) => failure,
        };
        let mut response = failure.response(&self.server.name);
        if matches!(failure, CallFailure::GrantEnded | CallFailure::AuthorizationRequired)
            && let Some(challenge) =
                self.forward.challenge.as_deref().and_then(|value| HeaderValue::from_str(value).ok())
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        let outcome = if self.whole {
            CallOutcome::Gathered(Gathered { answer: Answer::Failed(response), debug: Vec::new() })
        } else {
            CallOutcome::Answer(response)
        };
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: CallOutcome) {
        self.outcome = Some(outcome);
        self.state = State::Done;
    }

    /// The token key and lifetime for the credential, when the gateway obtains it itself.
    fn token_key(&self) -> Option<TokenKey> {
        match &self.forward.credential {
            OutboundCredential::ClientCredentialsToken => Some(TokenKey::m2m(&self.server.name)),
            OutboundCredential::ExchangeToken { subject_token } => {
                Some(TokenKey::exchange(&self.server.name, subject_token))
            }
            _ => None,
        }
    }

    /// The credential header, or the token the cache must provide first.
    fn credential_source(&mut self) -> Result<Option<TokenNeed<'a>>, CallFailure> {
        let forward = self.forward;
        let policy = match &forward.credential {
            OutboundCredential::ClientCredentialsToken => TtlPolicy::M2m,
            // An exchanged token acts for the caller: a per-user lifetime.
            OutboundCredential::ExchangeToken { .. } => {
                TtlPolicy::User { token_storage_ttl_seconds: self.server.entry.token_storage_ttl_seconds }
            }
            OutboundCredential::Authorization(value) => {
                self.credential = Some((header::AUTHORIZATION, value.expose().to_owned()));
                return Ok(None);
            }
            OutboundCredential::StaticToken => {
                self.credential = self
                    .server
                    .entry
                    .authentication_token
                    .as_ref()
                    .map(|token| static_credential_header(self.server.policy.auth_type, token));
                return Ok(None);
            }
            OutboundCredential::ForwardAuthorization | OutboundCredential::None => return Ok(None),
            OutboundCredential::AuthorizationRequired => return Err(CallFailure::AuthorizationRequired),
            OutboundCredential::Grant { grant, .. } => {
                self.effects
                    .push_back(CallAction::Store(crate::grant::StoreOp::GetGrant { id: grant.clone() }));
                self.state = State::AwaitStore(GrantStage::Read);
                return Ok(None);
            }
            OutboundCredential::IdentityGrant { pointer, .. } => {
                // A refresh after a 401 re-reads the grant already found.
                let (id, stage) = match &self.work.resolved {
                    Some(resolved) => (resolved.clone(), GrantStage::Read),
                    None => (pointer.clone(), GrantStage::Pointer),
                };
                self.effects.push_back(CallAction::Store(crate::grant::StoreOp::GetGrant { id }));
                self.state = State::AwaitStore(stage);
                return Ok(None);
            }
        };
        let key = self.token_key().ok_or(CallFailure::OutOfOrder)?;
        Ok(Some(TokenNeed {
            key,
            policy,
            server: self.server,
            credential: &forward.credential,
            limits: self.limits,
        }))
    }

    /// The request of the current phase, credential and session attached.
    fn next_request(&self) -> Result<UpstreamRequest, CallFailure> {
        let mut headers = self.forward.headers.clone();
        let (method, body, read) = match self.phase {
            Phase::Initialize => {
                headers.remove(SESSION_HEADER);
                let body = self
                    .initialize
                    .clone()
                    .unwrap_or_else(|| Bytes::from(aggregate::initialize_request(&self.forward.headers)));
                (Method::POST, body, Read::Whole(self.limits.max_gathered_answer))
            }
            Phase::Initialized => {
                let body = Bytes::from(aggregate::initialized_notification());
                (Method::POST, body, Read::Whole(self.limits.max_gathered_answer))
            }
            Phase::Refresh => return Err(CallFailure::OutOfOrder),
            Phase::Request => {
                let read = if self.whole { Read::Whole(self.limits.max_gathered_answer) } else { Read::Head };
                if self.mode == SessionMode::Listen {
                    headers.remove(header::CONTENT_TYPE);
                    headers.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
                }
                (self.method.clone(), self.body.clone(), read)
            }
        };
        if self.phase != Phase::Initialize
            && let Some(session) = &self.session
        {
            session.apply(&mut headers);
        }
        if let Some((name, value)) = &self.credential {
            let value = HeaderValue::from_str(value).map_err(|_| CallFailure::InvalidCredential)?;
            headers.insert(name.clone(), value);
        }
        let uri = self.forward.url.as_str().parse::<http::Uri>().map_err(|_| CallFailure::Upstream {
            step: CallStep::Forward,
            failure: UpstreamFailure::Unreachable,
        })?;
        let mut request = http::Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(UpstreamRequest {
            request,
            allow_private: crate::fetch_policy::is_local_server(&self.server.url),
            timeout: self.limits.upstream_timeout,
            read,
        })
    }

    /// The debug headers (design §4.7), when the caller asked for them.
    fn debug(&self) -> Vec<(&'static str, String)> {
        let (true, Some(inbound)) = (self.forward.debug, self.inbound) else {
            return Vec::new();
        };
        let outbound = self.credential.as_ref().map(|(_, value)| value.as_str()).or_else(|| {
            self.forward.headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok())
        });
        let context = crate::outbound::DebugContext {
            auth_type: self.server.entry.auth_type,
            resolution: self.forward.resolution,
            outbound_url: Some(&self.forward.url),
            outbound_authorization: outbound,
        };
        let mut headers =
            crate::outbound::debug_headers(inbound, &self.config.settings.gateway_keys, &context);
        if self.uses_grant() {
            // Design §4.7: no upstream token reaches a client, not even masked.
            for (name, value) in &mut headers {
                if *name == "x-mcp-debug-oauth2-token" {
                    "****".clone_into(value);
                }
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests;
