//! Several MCP servers behind one endpoint: `POST /mcp` with `x-mcp-servers: a,b`, and the REST
//! routes `GET /mcp-rest/tools/list` and `POST /mcp-rest/tools/call`.
//!
//! Callers see every tool as `{server}-{tool}` (LiteLLM's naming, so its users keep their tool
//! names). A listing asks each target server once and merges the answers; a call is routed back to
//! the one server whose name prefixes the tool name. LiteLLM splits a prefixed name at its first
//! `-`, which sends `github-enterprise-search` to a server called `github` even when a server
//! `github-enterprise` is the target; here the name is matched against the request's target
//! servers (the longest matching name wins), and a listed tool whose prefixed name would route
//! elsewhere is left out of the listing, so every listed name calls the tool it describes.
//!
//! Everything here is a JSON transform. [`plan`] reads the caller's body and answers with a
//! [`Plan`]: a response to send at once (`initialize`, `ping`, notifications, refusals), one
//! request to forward with its answer streamed back (an MCP `tools/call`), or a [`Gather`]: a set
//! of upstream requests whose answers, read whole, [`Gather::finish`] turns into the response. The
//! server performs the requests with the credentials core chose for each target (see
//! [`crate::gateway::Action::Aggregate`]); it never looks inside the JSON.
//!
//! Listings tolerate a failing server: its tools are missing and the failure is named (in
//! `result._meta` for MCP, in `errors` for REST) while the other servers' tools are served. Only
//! when every target fails does the listing fail, with the first failure's status. A delegated
//! request (design §4.6) whose upstream answers 401 gets that 401 and its `WWW-Authenticate`, so the
//! caller can authenticate.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::Reason;
use crate::client::mcp::{RpcError, parse_rpc_response};
use crate::jsonrpc::{JsonRpcError, Shape};
use crate::reply::{error_response, json_response};

mod relay;
mod session;

pub use self::relay::{ID_SEPARATOR, MAX_PENDING_EVENT, StreamRewrite, inbound_response, outbound_id};

pub use self::session::{
    GatewaySessions, Learned, MAX_INITIALIZE, MAX_LEARNED, MAX_SESSIONS, MAX_SESSIONS_PER_OWNER,
    MAX_TABLE_BYTES, MAX_TEMPLATES, Opening, Owner, SESSION_IDLE, Scope, SessionView,
};

/// What joins a server's name and a tool's name in the names callers see.
pub const SEPARATOR: &str = "-";

/// The `_meta` key under which an MCP listing names the servers that failed.
pub const ERRORS_META_KEY: &str = "mcp-oauth/errors";

/// The newest protocol revision the aggregating endpoint answers `initialize` with when the
/// caller asks for one it does not know.
pub const LATEST_STATEFUL_VERSION: &str = "2025-11-25";

/// The JSON-RPC id the gateway gives the requests it builds itself (each goes on its own).
const UPSTREAM_ID: u64 = 1;

/// The longest piece of caller input quoted back in an error message.
const QUOTE_LIMIT: usize = 120;

/// The name a caller sees for `tool` of `server`.
pub fn prefixed_name(server: &str, tool: &str) -> String {
    format!("{server}{SEPARATOR}{tool}")
}

/// Why an aggregated request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    /// The body is not JSON.
    #[error("the body is not JSON: {0}")]
    ParseError(String),
    /// The body is JSON but not a JSON-RPC 2.0 message.
    #[error("the body is not a JSON-RPC 2.0 message: {0}")]
    InvalidMessage(String),
    /// A JSON-RPC batch (an array); MCP removed batching in 2025-06-18.
    #[error("JSON-RPC batches are not accepted; send one message per request")]
    Batch,
    /// A JSON-RPC response whose id names no request a target sent this caller in its session.
    #[error("no request of a target in this session has this id")]
    UnexpectedResponse,
    /// The method is not served by the aggregating endpoint.
    #[error(
        "method `{0}` is not served here; the aggregating endpoint serves tools, prompts, resources, completion and logging"
    )]
    MethodNotFound(String),
    /// A tool call without a tool name.
    #[error("the tool call names no tool (`name` must be a non-empty string)")]
    MissingToolName,
    /// A tool call's `arguments` is not an object.
    #[error("`arguments` must be a JSON object")]
    InvalidArguments,
    /// No target server's name prefixes the tool name.
    #[error("tool `{0}` does not start with a target server's name and `-`")]
    UnknownTool(String),
    /// `server_id` names no target server.
    #[error("server `{0}` is not a target of this request")]
    UnknownServer(String),
    /// The cursor was not issued by this gateway for these servers.
    #[error("the cursor was not issued by this gateway for these servers")]
    InvalidCursor,
    /// A resource request to several targets for a URI no target listed in the caller's session.
    #[error(
        "no target listed this resource URI in this session; list resources first, or name one server in x-mcp-servers"
    )]
    AmbiguousResource,
    /// The params do not fit the method.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The `Mcp-Session-Id` names no live session of this caller (unknown, ended, expired, or
    /// opened with other credentials): HTTP 404, so the client initializes again.
    #[error("no such session; send initialize without Mcp-Session-Id to open one")]
    UnknownSession,
    /// `initialize` inside a session.
    #[error("this session is initialized already; send initialize without Mcp-Session-Id")]
    AlreadyInitialized,
    /// A session-only request (`DELETE`) without a session.
    #[error("the request names no session (Mcp-Session-Id)")]
    MissingSession,
}

impl Reason for AggregateError {
    fn reason(&self) -> &'static str {
        match self {
            Self::ParseError(_) => "parse_error",
            Self::InvalidMessage(_) => "invalid_jsonrpc",
            Self::Batch => "batch_not_supported",
            Self::UnexpectedResponse => "unexpected_response",
            Self::MethodNotFound(_) => "method_not_found",
            Self::MissingToolName => "missing_tool_name",
            Self::InvalidArguments => "invalid_arguments",
            Self::UnknownTool(_) => "unknown_tool",
            Self::UnknownServer(_) => "unknown_server",
            Self::InvalidCursor => "invalid_cursor",
            Self::AmbiguousResource => "ambiguous_resource",
            Self::InvalidParams(_) => "invalid_params",
            Self::UnknownSession => "unknown_session",
            Self::AlreadyInitialized => "already_initialized",
            Self::MissingSession => "missing_session",
        }
    }
}

impl AggregateError {
    /// The JSON-RPC error code for this refusal.
    pub fn rpc_code(&self) -> i64 {
        match self {
            Self::ParseError(_) => -32700,
            Self::InvalidMessage(_)
            | Self::Batch
            | Self::UnexpectedResponse
            | Self::AlreadyInitialized
            | Self::MissingSession => -32600,
            Self::MethodNotFound(_) => -32601,
            // The code the MCP SDKs use for an unknown session.
            Self::UnknownSession => -32001,
            _ => -32602,
        }
    }
}

fn quote(text: &str) -> String {
    text.chars().take(QUOTE_LIMIT).collect()
}

/// The target server and the upstream tool name for the prefixed tool `name`.
///
/// A server matches when its name followed by [`SEPARATOR`] starts `name` and something follows.
/// Server names may themselves contain `-`, so with servers `github` and `github-enterprise`
/// both match `github-enterprise-search`: the longest name wins, and the listing leaves out any
/// tool of `github` whose prefixed name would therefore route to `github-enterprise`.
pub fn route_tool<S: AsRef<str>>(name: &str, servers: &[S]) -> Result<(usize, String), AggregateError> {
    servers
        .iter()
        .enumerate()
        .filter_map(|(index, server)| {
            let server = server.as_ref();
            let tool = name.strip_prefix(server)?.strip_prefix(SEPARATOR)?;
            (!tool.is_empty()).then_some((index, server.len(), tool))
        })
        .max_by_key(|(_, length, _)| *length)
        .map(|(index, _, tool)| (index, tool.to_owned()))
        .ok_or_else(|| AggregateError::UnknownTool(quote(name)))
}

impl From<JsonRpcError> for Refused {
    fn from(error: JsonRpcError) -> Self {
        match error {
            JsonRpcError::Parse(why) => (None, AggregateError::ParseError(why)),
            JsonRpcError::Invalid { id, why } => (id, AggregateError::InvalidMessage(why)),
        }
    }
}

/// Checks that a body forwarded to one MCP server is JSON-RPC 2.0 ([`crate::jsonrpc::validate`],
/// the validator the aggregating route uses too): one message, or a non-empty batch of them for
/// clients of the 2025-03-26 revision. A malformed body gets a 400 with a JSON-RPC error here,
/// before any credential is spent on it; the upstream judges everything else.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn check_message(body: &[u8]) -> Result<crate::jsonrpc::Shape, Response<Vec<u8>>> {
    match crate::jsonrpc::validate(body) {
        Ok(shape) => Ok(shape),
        Err(error) => {
            let (id, error) = Refused::from(error);
            Err(refusal(Endpoint::Mcp, id, &error))
        }
    }
}

type Refused = (Option<Value>, AggregateError);

/// Which aggregating endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /mcp`: JSON-RPC, answered in JSON-RPC.
    Mcp,
    /// `DELETE /mcp`: ends the caller's gateway session and its upstream sessions.
    McpEnd,
    /// `GET /mcp`: the caller's gateway session's event stream, every target's merged.
    McpStream,
    /// `GET /mcp-rest/tools/list`: the merged listing as plain JSON.
    RestList,
    /// `POST /mcp-rest/tools/call`: `{"server_id"?, "name", "arguments"}`, the tool's result as JSON.
    RestCall,
}

/// One request to one target server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamCall {
    /// The index of the target server (in the order the plan was given them).
    pub target: usize,
    /// The JSON-RPC body to send.
    pub body: Vec<u8>,
    /// The caller's gateway session the call runs in; `None`: the gateway's own upstream session
    /// for (server, credential).
    pub session: Option<SessionUse>,
}

/// How an upstream call uses the caller's gateway session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionUse {
    /// The gateway session's view: its scope and the caller's `initialize`.
    pub view: SessionView,
    /// What the call does with its upstream session.
    pub mode: SessionMode,
}

/// What an upstream call does with its upstream session in a gateway session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMode {
    /// Send the body in the upstream session, opening it with the caller's `initialize` first
    /// when there is none.
    Use,
    /// The body is the caller's `initialize`: open the upstream session with it and answer with
    /// the upstream's `initialize` answer.
    Open,
    /// End the upstream session (`DELETE`) if there is one; the body is unused.
    End,
    /// Open the upstream session's own event stream (`GET`), streamed back; the body is unused.
    Listen,
    /// The body answers a request the target sent in its upstream session: sent there only, never
    /// in a new session (a 202 when the session is gone, as the request it answers is).
    Reply,
}

/// What the server does with an aggregated request.
#[derive(Debug)]
pub enum Plan {
    /// Send this response.
    Respond(Response<Vec<u8>>),
    /// Forward this call as an MCP request and stream the answer back as it comes (the caller's
    /// JSON-RPC id is kept, so the answer needs no rewriting).
    Forward(UpstreamCall),
    /// Send every call, read every answer whole, and answer with [`Gather::finish`].
    Gather(Gather),
    /// Open every target's event stream (each call streams, [`SessionMode::Listen`]); hand the
    /// heads to [`merge_streams`], which says which bodies to merge into the answer.
    Stream(Vec<UpstreamCall>),
}

/// How one gathered call ended, as the server hands it back.
#[derive(Debug)]
pub enum Answer {
    /// The upstream answered (any status).
    Upstream(Response<Vec<u8>>),
    /// The step failed before an answer (unreachable, timeout, no token); this is the gateway's
    /// JSON error for it, with the status that names the failure (502, 503, 504).
    Failed(Response<Vec<u8>>),
}

/// Upstream requests whose answers are merged into one response.
#[derive(Debug)]
pub struct Gather {
    calls: Vec<UpstreamCall>,
    servers: Vec<String>,
    finish: Finish,
    delegated: bool,
    /// The caller's gateway session a resource listing teaches which target listed what.
    session: Option<String>,
    /// The session this `initialize` opens: its id goes in the answer's `Mcp-Session-Id`, and it
    /// is kept once a target accepted it.
    opening: Option<Opening>,
}

#[derive(Debug)]
enum Finish {
    McpList {
        id: Value,
        listing: Listing,
    },
    /// Every target was told (`logging/setLevel`): an empty result once one of them took it.
    McpEveryTarget {
        id: Value,
    },
    RestList,
    RestCall,
    /// The caller's `initialize`, sent to every target: the union of their capabilities, at the
    /// revision the gateway negotiated, in a new gateway session.
    Initialize {
        id: Value,
        version: String,
    },
    /// An empty answer with this status whatever the upstreams said: 204 when the gateway
    /// session ended (`DELETE /mcp`), 202 for a notification every target was told.
    Status(StatusCode),
}

/// What a merged listing lists (design §4.11): tool and prompt names get the `{server}-` prefix;
/// resource and template URIs are not rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl Listing {
    fn of(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Self::Tools),
            "prompts/list" => Some(Self::Prompts),
            "resources/list" => Some(Self::Resources),
            "resources/templates/list" => Some(Self::ResourceTemplates),
            _ => None,
        }
    }

    fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The result's member that holds the items.
    fn field(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// Whether items are named `{server}-{name}` (tools, prompts) or passed as they are (URIs).
    fn prefixed(self) -> bool {
        matches!(self, Self::Tools | Self::Prompts)
    }
}

/// The part of a request [`plan`] needs besides the body.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Where the request came.
    pub endpoint: Endpoint,
    /// The target servers' names, in order.
    pub servers: &'a [String],
    /// Auth was delegated to the upstreams (their 401 goes back to the caller as it is).
    pub delegated: bool,
    /// The REST listing's `cursor` query parameter.
    pub cursor: Option<&'a str>,
    /// The `Mcp-Session-Id` the caller sent (`POST /mcp`, `DELETE /mcp`).
    pub session: Option<&'a str>,
    /// Who the caller is, for its gateway sessions.
    pub owner: Owner,
}

/// The gateway sessions a plan may open, find and end, with the time and a source of random
/// bytes for a new session's id.
pub struct Sessions<'s> {
    /// The table.
    pub table: &'s mut GatewaySessions,
    /// The time.
    pub now: crate::machine::Instant,
    /// Draws 32 fresh random bytes. Called only to open a session (an `initialize`), so no other
    /// request costs the system call; when it has none, `initialize` is answered without a
    /// session, as [`plan`] answers it.
    pub random: &'s mut dyn FnMut() -> Option<[u8; 32]>,
}

impl std::fmt::Debug for Sessions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("table", &self.table).field("now", &self.now).finish_non_exhaustive()
    }
}

/// Plans an aggregated request from its body (ignored for [`Endpoint::RestList`]) without
/// gateway sessions: `initialize` is answered by the gateway itself and every call runs in the
/// gateway's own upstream session for (server, credential).
pub fn plan(request: &Request<'_>, body: &[u8]) -> Plan {
    plan_with(request, body, None)
}

/// Plans an aggregated request with the caller's gateway sessions (design §4.11): `initialize`
/// opens one, a request naming one runs in it, `DELETE` ends it.
pub fn plan_in(request: &Request<'_>, body: &[u8], sessions: Sessions<'_>) -> Plan {
    plan_with(request, body, Some(sessions))
}

fn plan_with(request: &Request<'_>, body: &[u8], sessions: Option<Sessions<'_>>) -> Plan {
    let outcome = match request.endpoint {
        Endpoint::Mcp => plan_mcp(request, body, sessions),
        Endpoint::McpEnd => plan_end(request, sessions),
        Endpoint::McpStream => plan_stream(request, sessions),
        Endpoint::RestList => list_calls(request, Listing::Tools, &json!({}), request.cursor)
            .map(|calls| Plan::Gather(gather(request, calls, Finish::RestList))),
        Endpoint::RestCall => plan_rest_call(request, body),
    };
    outcome.unwrap_or_else(|(id, error)| Plan::Respond(refusal(request.endpoint, id, &error)))
}

fn gather(request: &Request<'_>, calls: Vec<UpstreamCall>, finish: Finish) -> Gather {
    Gather {
        calls,
        servers: request.servers.to_vec(),
        finish,
        delegated: request.delegated,
        session: None,
        opening: None,
    }
}

/// `DELETE /mcp`: ends the caller's gateway session, then each upstream session it opened.
fn plan_end(request: &Request<'_>, sessions: Option<Sessions<'_>>) -> Result<Plan, Refused> {
    let Some(id) = request.session else {
        return Err((None, AggregateError::MissingSession));
    };
    let Some(sessions) = sessions else {
        return Err((None, AggregateError::UnknownSession));
    };
    let view = sessions.table.find(id, request.owner, sessions.now);
    let Some(view) = view.filter(|_| sessions.table.close(id, request.owner, sessions.now).is_some()) else {
        return Err((None, AggregateError::UnknownSession));
    };
    let calls = every_target(request, &[], Some(SessionUse { view, mode: SessionMode::End }));
    Ok(Plan::Gather(gather(request, calls, Finish::Status(StatusCode::NO_CONTENT))))
}

/// `GET /mcp`: every target's event stream in the caller's gateway session.
fn plan_stream(request: &Request<'_>, mut sessions: Option<Sessions<'_>>) -> Result<Plan, Refused> {
    let Some(view) = caller_session(request, &mut sessions).map_err(|error| (None, error))? else {
        return Err((None, AggregateError::MissingSession));
    };
    Ok(Plan::Stream(every_target(request, &[], Some(SessionUse { view, mode: SessionMode::Listen }))))
}

/// The same body to every target, in the same session use.
fn every_target(request: &Request<'_>, body: &[u8], session: Option<SessionUse>) -> Vec<UpstreamCall> {
    (0..request.servers.len())
        .map(|target| UpstreamCall { target, body: body.to_vec(), session: session.clone() })
        .collect()
}

/// How `GET /mcp` answers, from each target's answer to its `GET`.
#[derive(Debug)]
pub enum StreamAnswer {
    /// Answer with this head; the body merges the kept targets' bodies (one flag per target).
    Merge {
        /// The head: 200 `text/event-stream`.
        head: Response<()>,
        /// Whether each target's body is merged in (it answered with an event stream).
        keep: Vec<bool>,
    },
    /// No target opened a stream, and none offers one: this 405.
    Refuse(Response<Vec<u8>>),
    /// No target opened a stream: answer with this target's answer as it is (the first that
    /// failed otherwise than with a 405: a delegated 401 with its challenge, a 502, a 404).
    Relay(usize),
}

/// The answer to `GET /mcp` from each target's answer head (status and headers), in target
/// order: the targets that opened an event stream are merged; a target without one (405, an
/// error) is left out, since its server-to-client messages come on its answers instead. When no
/// target opened one, a target's failure is the answer (so a client told to authenticate is not
/// told there is no stream), or a 405 when every target said it has none.
pub fn merge_streams(heads: &[(StatusCode, &http::HeaderMap)]) -> StreamAnswer {
    let keep: Vec<bool> = heads
        .iter()
        .map(|(status, headers)| *status == StatusCode::OK && crate::sse::is_event_stream(headers))
        .collect();
    if keep.iter().any(|kept| *kept) {
        let mut head = Response::new(());
        head.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        head.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return StreamAnswer::Merge { head, keep };
    }
    if let Some(failed) = heads.iter().position(|(status, _)| *status != StatusCode::METHOD_NOT_ALLOWED) {
        return StreamAnswer::Relay(failed);
    }
    let mut refused = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "no target server offers an event stream for this session",
    );
    refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    StreamAnswer::Refuse(refused)
}

/// The caller's gateway session, when it named one: `Err` for one it cannot use (404).
fn caller_session(
    request: &Request<'_>,
    sessions: &mut Option<Sessions<'_>>,
) -> Result<Option<SessionView>, AggregateError> {
    let Some(id) = request.session else { return Ok(None) };
    let found = sessions.as_mut().and_then(|sessions| sessions.table.find(id, request.owner, sessions.now));
    found.map(Some).ok_or(AggregateError::UnknownSession)
}

fn plan_mcp(request: &Request<'_>, body: &[u8], mut sessions: Option<Sessions<'_>>) -> Result<Plan, Refused> {
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err((None, AggregateError::Batch));
    }
    let shape = crate::jsonrpc::validate(body)?;
    let view = caller_session(request, &mut sessions).map_err(|error| (None, error))?;
    let uses =
        |view: &Option<SessionView>| view.clone().map(|view| SessionUse { view, mode: SessionMode::Use });
    let (method, id) = match shape {
        Shape::Request { method, id } => (method, id),
        Shape::Notification { method }
            if view.is_some()
                && matches!(
                    method.as_str(),
                    "notifications/roots/list_changed" | "notifications/cancelled"
                ) =>
        {
            // Every target in the session may have asked for the roots, and the request a
            // cancellation names went to one of them (with the caller's own id): each hears of it.
            let calls = every_target(request, body, uses(&view));
            return Ok(Plan::Gather(gather(request, calls, Finish::Status(StatusCode::ACCEPTED))));
        }
        Shape::Notification { .. } => {
            // A notification (`notifications/initialized`, which the gateway sent each target
            // itself; cancellations): nothing to answer.
            let mut response = Response::new(Vec::new());
            *response.status_mut() = StatusCode::ACCEPTED;
            return Ok(Plan::Respond(response));
        }
        Shape::Response if view.is_some() => {
            // The caller answers a target's request (sampling, elicitation, roots): back to the
            // target whose id it carries, in its upstream session, with the target's own id.
            let message: Map<String, Value> = serde_json::from_slice(body).unwrap_or_default();
            let Some((target, body)) = inbound_response(&message, request.servers) else {
                return Err((None, AggregateError::UnexpectedResponse));
            };
            let session = view.clone().map(|view| SessionUse { view, mode: SessionMode::Reply });
            return Ok(Plan::Forward(UpstreamCall { target, body, session }));
        }
        Shape::Response => return Err((None, AggregateError::UnexpectedResponse)),
        Shape::Batch => return Err((None, AggregateError::Batch)),
    };
    // The validator has checked the envelope; the members are read from here on.
    let mut message: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|error| (None, AggregateError::ParseError(quote(&error.to_string()))))?;
    let params = match message.get("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(params @ Value::Object(_)) => params.clone(),
        Some(_) => {
            return Err((Some(id), AggregateError::InvalidMessage("`params` must be an object".into())));
        }
    };
    let session = uses(&view);
    let call = |target: usize, body: Vec<u8>| UpstreamCall { target, body, session: session.clone() };
    match method.as_str() {
        "initialize" if view.is_some() => Err((Some(id), AggregateError::AlreadyInitialized)),
        "initialize" => match sessions.and_then(|sessions| (sessions.random)()) {
            Some(random) => {
                // The caller's own initialize opens each upstream session, so every target sees
                // its capabilities and client info (design §4.11). The session is kept only once
                // a target accepted it (see `Gather::finish_learning`).
                message.insert("id".into(), json!(UPSTREAM_ID));
                let initialize = bytes::Bytes::from(Value::Object(message).to_string().into_bytes());
                if initialize.len() > MAX_INITIALIZE {
                    let why = format!("initialize params larger than {MAX_INITIALIZE} bytes");
                    return Err((Some(id), AggregateError::InvalidParams(why)));
                }
                let opening = GatewaySessions::begin(random, request.owner, initialize.clone());
                let use_ = SessionUse { view: opening.view.clone(), mode: SessionMode::Open };
                let calls = every_target(request, &initialize, Some(use_));
                let version = negotiated_version(&params);
                let mut gathered = gather(request, calls, Finish::Initialize { id, version });
                gathered.opening = Some(opening);
                Ok(Plan::Gather(gathered))
            }
            _ => Ok(Plan::Respond(rpc_result(&id, &initialize_result(&params)))),
        },
        "ping" => Ok(Plan::Respond(rpc_result(&id, &json!({})))),
        listed if Listing::of(listed).is_some() => {
            let listing = Listing::of(listed).unwrap_or(Listing::Tools);
            let cursor = match params.get("cursor") {
                None | Some(Value::Null) => None,
                Some(Value::String(cursor)) => Some(cursor.as_str()),
                Some(_) => return Err((Some(id), AggregateError::InvalidCursor)),
            };
            let mut calls = list_calls(request, listing, &params, cursor)
                .map_err(|(_, error)| (Some(id.clone()), error))?;
            for listed in &mut calls {
                listed.session.clone_from(&session);
            }
            let mut gathered = gather(request, calls, Finish::McpList { id, listing });
            gathered.session = request.session.filter(|_| view.is_some()).map(str::to_owned);
            Ok(Plan::Gather(gathered))
        }
        "tools/call" | "prompts/get" => {
            let name = params.get("name").and_then(Value::as_str).filter(|name| !name.is_empty());
            let Some(name) = name else {
                return Err((Some(id), AggregateError::MissingToolName));
            };
            let (target, own) =
                route_tool(name, request.servers).map_err(|error| (Some(id.clone()), error))?;
            let mut params = params;
            params["name"] = Value::String(own);
            message.insert("params".into(), params);
            Ok(Plan::Forward(call(target, Value::Object(message).to_string().into_bytes())))
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let uri = params.get("uri").and_then(Value::as_str);
            let target =
                resource_target(request, &mut sessions, uri).map_err(|error| (Some(id.clone()), error))?;
            Ok(Plan::Forward(call(target, body.to_vec())))
        }
        "completion/complete" => {
            let reference = params.get("ref").and_then(Value::as_object);
            let kind = reference.and_then(|reference| reference.get("type")).and_then(Value::as_str);
            let target = match kind {
                Some("ref/prompt") => {
                    let name = reference.and_then(|reference| reference.get("name")).and_then(Value::as_str);
                    let (target, own) = route_tool(name.unwrap_or_default(), request.servers)
                        .map_err(|error| (Some(id.clone()), error))?;
                    let mut params = params;
                    params["ref"]["name"] = Value::String(own);
                    message.insert("params".into(), params);
                    return Ok(Plan::Forward(call(target, Value::Object(message).to_string().into_bytes())));
                }
                Some("ref/resource") => {
                    let uri = reference.and_then(|reference| reference.get("uri")).and_then(Value::as_str);
                    resource_target(request, &mut sessions, uri).map_err(|error| (Some(id.clone()), error))?
                }
                _ => {
                    let why = "`ref` must be a ref/prompt or a ref/resource".to_owned();
                    return Err((Some(id), AggregateError::InvalidParams(why)));
                }
            };
            Ok(Plan::Forward(call(target, body.to_vec())))
        }
        "logging/setLevel" => {
            // Every target logs at the level asked (design §4.11); each answer is read by the
            // gateway's own id, as a listing's is.
            message.insert("id".into(), json!(UPSTREAM_ID));
            let upstream = Value::Object(message).to_string().into_bytes();
            let calls = every_target(request, &upstream, session);
            Ok(Plan::Gather(gather(request, calls, Finish::McpEveryTarget { id })))
        }
        other => Err((Some(id), AggregateError::MethodNotFound(quote(other)))),
    }
}

/// The target of a resource request (design §4.11): the target that listed the URI (or a
/// template it expands) in the caller's session, the first in `x-mcp-servers` order when several
/// did; else the one target when there is one. Anything else cannot be placed and is refused.
fn resource_target(
    request: &Request<'_>,
    sessions: &mut Option<Sessions<'_>>,
    uri: Option<&str>,
) -> Result<usize, AggregateError> {
    let listers = match (request.session, sessions.as_mut(), uri) {
        (Some(id), Some(sessions), Some(uri)) => {
            sessions.table.resource_servers(id, request.owner, uri, sessions.now)
        }
        _ => Vec::new(),
    };
    let listed = request.servers.iter().position(|name| listers.contains(name));
    match (listed, request.servers.len()) {
        (Some(target), _) => Ok(target),
        (None, 1) => Ok(0),
        _ => Err(AggregateError::AmbiguousResource),
    }
}

/// The revision the gateway answers `initialize` with: the caller's when it knows it, else the
/// newest.
fn negotiated_version(params: &Value) -> String {
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    requested
        .filter(|version| crate::client::mcp::STATEFUL_VERSIONS.contains(version))
        .unwrap_or(LATEST_STATEFUL_VERSION)
        .to_owned()
}

/// The `initialize` answer without gateway sessions: the gateway's own capabilities.
fn initialize_result(params: &Value) -> Value {
    let version = negotiated_version(params);
    json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": {"listChanged": false},
            "prompts": {"listChanged": false},
            "resources": {"listChanged": false},
            "completions": {},
            "logging": {},
        },
        "serverInfo": {"name": "mcp-oauth-gateway", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// The cursor a listing hands out: each unfinished server's own cursor, encoded so the caller
/// treats it as opaque.
fn encode_cursor(pending: &Map<String, Value>) -> String {
    URL_SAFE_NO_PAD.encode(Value::Object(pending.clone()).to_string())
}

/// The servers a cursor continues, with their own cursors; every name must be a target.
fn decode_cursor<S: AsRef<str>>(cursor: &str, servers: &[S]) -> Result<Vec<(usize, String)>, AggregateError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| AggregateError::InvalidCursor)?;
    let Ok(Value::Object(pending)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(AggregateError::InvalidCursor);
    };
    if pending.is_empty() {
        return Err(AggregateError::InvalidCursor);
    }
    pending
        .iter()
        .map(|(server, cursor)| {
            let index = servers.iter().position(|name| name.as_ref() == server);
            match (index, cursor.as_str()) {
                (Some(index), Some(cursor)) => Ok((index, cursor.to_owned())),
                _ => Err(AggregateError::InvalidCursor),
            }
        })
        .collect()
}

/// One listing request per server to ask: every target, or those the cursor continues.
fn list_calls(
    request: &Request<'_>,
    listing: Listing,
    params: &Value,
    cursor: Option<&str>,
) -> Result<Vec<UpstreamCall>, Refused> {
    let pages: Vec<(usize, Option<String>)> = match cursor {
        None => (0..request.servers.len()).map(|index| (index, None)).collect(),
        Some(cursor) => decode_cursor(cursor, request.servers)
            .map_err(|error| (None, error))?
            .into_iter()
            .map(|(index, cursor)| (index, Some(cursor)))
            .collect(),
    };
    Ok(pages
        .into_iter()
        .map(|(target, cursor)| {
            let mut params = params.clone();
            if let Some(object) = params.as_object_mut() {
                object.remove("cursor");
                if let Some(cursor) = cursor {
                    object.insert("cursor".into(), Value::String(cursor));
                }
            }
            let body =
                json!({"jsonrpc": "2.0", "id": UPSTREAM_ID, "method": listing.method(), "params": params});
            UpstreamCall { target, body: body.to_string().into_bytes(), session: None }
        })
        .collect())
}

fn plan_rest_call(request: &Request<'_>, body: &[u8]) -> Result<Plan, Refused> {
    let refuse = |error| (None, error);
    let Ok(Value::Object(call)) = serde_json::from_slice::<Value>(body) else {
        return Err(refuse(AggregateError::InvalidMessage("the body must be a JSON object".into())));
    };
    let name = call.get("name").and_then(Value::as_str).filter(|name| !name.is_empty());
    let Some(name) = name else {
        return Err(refuse(AggregateError::MissingToolName));
    };
    let arguments = match call.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(arguments @ Value::Object(_)) => arguments.clone(),
        Some(_) => return Err(refuse(AggregateError::InvalidArguments)),
    };
    // With `server_id` the name is the server's own tool name; without, it is the listed name,
    // or (design §7, as LiteLLM's own example does) the server's own name when exactly one server
    // is in scope.
    let (target, tool) = match call.get("server_id") {
        None | Some(Value::Null) => match route_tool(name, request.servers) {
            Ok(routed) => routed,
            Err(_) if request.servers.len() == 1 => (0, name.to_owned()),
            Err(error) => return Err(refuse(error)),
        },
        Some(Value::String(server)) => {
            let Some(index) = request.servers.iter().position(|name| name == server) else {
                return Err(refuse(AggregateError::UnknownServer(quote(server))));
            };
            (index, name.to_owned())
        }
        Some(_) => return Err(refuse(AggregateError::InvalidMessage("`server_id` must be a string".into()))),
    };
    let body = json!({
        "jsonrpc": "2.0",
        "id": UPSTREAM_ID,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    });
    let calls = vec![UpstreamCall { target, body: body.to_string().into_bytes(), session: None }];
    Ok(Plan::Gather(gather(request, calls, Finish::RestCall)))
}

fn rpc_result(id: &Value, result: &Value) -> Response<Vec<u8>> {
    json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// A refusal of the caller's input: a JSON-RPC error on the MCP endpoint, the gateway's JSON error
/// on REST. HTTP 404 for an unknown server (as for an unknown route). On the MCP endpoint a
/// refusal of the protocol (an unknown method or tool, invalid params) is a JSON-RPC error in an
/// HTTP 200 (design §4.11: clients read an HTTP 400 as a transport failure), and only a body that
/// is not a JSON-RPC request gets a 400; on REST every refusal is a 400.
fn refusal(endpoint: Endpoint, id: Option<Value>, error: &AggregateError) -> Response<Vec<u8>> {
    let not_jsonrpc = matches!(
        error,
        AggregateError::ParseError(_)
            | AggregateError::InvalidMessage(_)
            | AggregateError::Batch
            | AggregateError::UnexpectedResponse
    );
    let status = match error {
        AggregateError::UnknownServer(_) | AggregateError::UnknownSession => StatusCode::NOT_FOUND,
        AggregateError::MissingSession => StatusCode::BAD_REQUEST,
        _ if endpoint == Endpoint::Mcp && !not_jsonrpc => StatusCode::OK,
        _ => StatusCode::BAD_REQUEST,
    };
    match endpoint {
        Endpoint::Mcp | Endpoint::McpEnd | Endpoint::McpStream => json_response(
            status,
            &json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": error.rpc_code(), "message": error.to_string(), "data": {"reason": error.reason()}},
            }),
        ),
        Endpoint::RestList | Endpoint::RestCall => error_response(status, error.reason(), &error.to_string()),
    }
}

/// A server's failure in a listing, as the caller sees it.
struct ServerFailure {
    server: String,
    error: String,
    description: String,
}

impl ServerFailure {
    fn to_json(&self) -> Value {
        json!({"server_id": self.server, "error": self.error, "error_description": self.description})
    }
}

/// What one answer amounts to: the JSON-RPC result, or why there is none.
enum Outcome {
    Result(Value),
    /// The upstream's own answer must reach the caller as it is (a delegated 401).
    Relay(Response<Vec<u8>>),
    /// The step failed; the response says how (the gateway's JSON error).
    Failed(Response<Vec<u8>>, ServerFailure),
}

fn failure(server: &str, status: StatusCode, error: &str, description: String) -> Outcome {
    let response = error_response(status, error, &description);
    Outcome::Failed(
        response,
        ServerFailure { server: server.to_owned(), error: error.to_owned(), description },
    )
}

fn outcome(server: &str, delegated: bool, answer: Answer) -> Outcome {
    let upstream = match answer {
        Answer::Upstream(upstream) => upstream,
        Answer::Failed(response) => {
            let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
            let text =
                |key: &str| body.get(key).and_then(Value::as_str).unwrap_or("upstream_error").to_owned();
            let failed = ServerFailure {
                server: server.to_owned(),
                error: text("error"),
                description: text("error_description"),
            };
            return Outcome::Failed(response, failed);
        }
    };
    let status = upstream.status();
    if status == StatusCode::UNAUTHORIZED && delegated {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &format!("server `{server}` requires authorization"),
        );
        if let Some(challenge) = upstream.headers().get(header::WWW_AUTHENTICATE) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        return Outcome::Relay(response);
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return failure(
            server,
            status,
            "upstream_unauthorized",
            format!("server `{server}` refused the credential (HTTP {})", status.as_u16()),
        );
    }
    match parse_rpc_response(&upstream, UPSTREAM_ID) {
        Ok(result) => Outcome::Result(result),
        Err(RpcError::Rpc { code, message }) => {
            // The caller's mistake (no such tool, bad arguments) is a 400; anything else is the
            // upstream's failure.
            let status = if matches!(code, -32602 | -32601) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::BAD_GATEWAY
            };
            failure(
                server,
                status,
                "tool_error",
                format!("server `{server}` answered JSON-RPC error {code}: {message}"),
            )
        }
        Err(error) => failure(
            server,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("server `{server}` gave no usable answer ({}): HTTP {}", error.reason(), status.as_u16()),
        ),
    }
}

impl Gather {
    /// The requests to send, each to its target server.
    pub fn calls(&self) -> &[UpstreamCall] {
        &self.calls
    }

    /// The response for the caller, from one answer per call, in the order of [`Gather::calls`].
    /// A missing answer counts as a failure of its server.
    pub fn finish(self, answers: Vec<Answer>) -> Response<Vec<u8>> {
        self.finish_learning(answers).0
    }

    /// [`Gather::finish`], with what a resource listing in a gateway session taught it (hand it to
    /// [`GatewaySessions::learn`]).
    pub fn finish_learning(mut self, answers: Vec<Answer>) -> (Response<Vec<u8>>, Learned) {
        if let Finish::Status(status) = self.finish {
            let mut response = Response::new(Vec::new());
            *response.status_mut() = status;
            return (response, Learned::default());
        }
        let mut answers = answers.into_iter();
        let mut results: Vec<(usize, Value)> = Vec::new();
        let mut failures: Vec<(Response<Vec<u8>>, ServerFailure)> = Vec::new();
        for call in &self.calls {
            let server = self.servers.get(call.target).map_or("", String::as_str);
            let answer = answers.next().unwrap_or_else(|| {
                Answer::Failed(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    &format!("server `{server}` was not asked"),
                ))
            });
            match outcome(server, self.delegated, answer) {
                Outcome::Result(result) => results.push((call.target, result)),
                Outcome::Relay(response) => return (response, Learned::default()),
                Outcome::Failed(response, failed) => failures.push((response, failed)),
            }
        }
        let mut learned = match &self.finish {
            Finish::McpList {
                listing: listing @ (Listing::Resources | Listing::ResourceTemplates), ..
            } => learned(&self.servers, &results, *listing, self.session.clone()),
            _ => Learned::default(),
        };
        let response = match self.finish {
            Finish::RestCall => match (results.pop(), failures.into_iter().next()) {
                (Some((_, result)), _) => json_response(StatusCode::OK, &result),
                (None, Some((response, _))) => response,
                (None, None) => error_response(StatusCode::BAD_GATEWAY, "upstream_error", "no answer"),
            },
            Finish::McpList { .. }
            | Finish::McpEveryTarget { .. }
            | Finish::RestList
            | Finish::Initialize { .. }
                if results.is_empty() =>
            {
                match failures.into_iter().next() {
                    Some((response, _)) => response,
                    None => error_response(StatusCode::BAD_GATEWAY, "upstream_error", "no server was asked"),
                }
            }
            Finish::McpEveryTarget { id } => rpc_result(&id, &json!({})),
            Finish::McpList { id, listing } => {
                let (items, next) = merge(&self.servers, &results, listing, false);
                let mut result = Map::new();
                result.insert(listing.field().into(), Value::Array(items));
                let mut result = Value::Object(result);
                if let Some(next) = next {
                    result["nextCursor"] = Value::String(next);
                }
                if !failures.is_empty() {
                    let errors: Vec<Value> = failures.iter().map(|(_, failed)| failed.to_json()).collect();
                    result["_meta"] = json!({ERRORS_META_KEY: errors});
                }
                rpc_result(&id, &result)
            }
            Finish::RestList => {
                let (tools, next) = merge(&self.servers, &results, Listing::Tools, true);
                let errors: Vec<Value> = failures.iter().map(|(_, failed)| failed.to_json()).collect();
                let mut body = json!({"tools": tools, "errors": errors});
                if let Some(next) = next {
                    body["next_cursor"] = Value::String(next);
                }
                json_response(StatusCode::OK, &body)
            }
            Finish::Initialize { id, version } => {
                let mut result = json!({
                    "protocolVersion": version,
                    "capabilities": capability_union(results.iter().map(|(_, result)| result)),
                    "serverInfo": {"name": "mcp-oauth-gateway", "version": env!("CARGO_PKG_VERSION")},
                });
                if !failures.is_empty() {
                    let errors: Vec<Value> = failures.iter().map(|(_, failed)| failed.to_json()).collect();
                    result["_meta"] = json!({ERRORS_META_KEY: errors});
                }
                let mut response = rpc_result(&id, &result);
                let header =
                    self.opening.as_ref().and_then(|opening| HeaderValue::from_str(&opening.id).ok());
                if let Some(value) = header {
                    response.headers_mut().insert(crate::client::mcp::SESSION_HEADER, value);
                    learned.opened = self.opening.take();
                }
                response
            }
            Finish::Status(status) => {
                let mut response = Response::new(Vec::new());
                *response.status_mut() = status;
                response
            }
        };
        (response, learned)
    }
}

/// Which target listed which resource URI (or template), in `x-mcp-servers` order.
fn learned(
    servers: &[String],
    results: &[(usize, Value)],
    listing: Listing,
    session: Option<String>,
) -> Learned {
    let mut learned = Learned { session, ..Learned::default() };
    if learned.session.is_none() {
        return learned;
    }
    let mut ordered: Vec<&(usize, Value)> = results.iter().collect();
    ordered.sort_by_key(|(target, _)| *target);
    for (target, result) in ordered {
        let Some(server) = servers.get(*target) else { continue };
        for item in result.get(listing.field()).and_then(Value::as_array).into_iter().flatten() {
            let (key, into) = match listing {
                Listing::ResourceTemplates => ("uriTemplate", &mut learned.templates),
                _ => ("uri", &mut learned.resources),
            };
            if let Some(uri) = item.get(key).and_then(Value::as_str) {
                into.push((uri.to_owned(), server.clone()));
            }
        }
    }
    learned
}

/// The capabilities the gateway advertises in a session (design §4.11): the union of the
/// targets'. A capability's flags (`listChanged`, `subscribe`) hold when any target that offers it
/// sets them; other members are taken from the first target that has them.
fn capability_union<'v>(results: impl Iterator<Item = &'v Value>) -> Value {
    let mut union = Map::new();
    for result in results {
        let Some(capabilities) = result.get("capabilities").and_then(Value::as_object) else { continue };
        for (name, offered) in capabilities {
            let Some(offered) = offered.as_object() else { continue };
            let Value::Object(merged) = union.entry(name.clone()).or_insert_with(|| json!({})) else {
                continue;
            };
            for (flag, value) in offered {
                match (merged.get(flag), value) {
                    (Some(Value::Bool(held)), Value::Bool(more)) => {
                        let either = *held || *more;
                        merged.insert(flag.clone(), Value::Bool(either));
                    }
                    (None, value) => {
                        merged.insert(flag.clone(), value.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    Value::Object(union)
}

/// The merged items, tools and prompts each named `{server}-{name}` (with `server_id` on REST),
/// resources and templates as their servers listed them, and the cursor for the servers with more
/// pages. A named item without a name, or whose prefixed name would route to another target, is
/// left out.
fn merge(
    servers: &[String],
    results: &[(usize, Value)],
    listing: Listing,
    rest: bool,
) -> (Vec<Value>, Option<String>) {
    let mut tools = Vec::new();
    let mut pending = Map::new();
    for (target, result) in results {
        let Some(server) = servers.get(*target) else { continue };
        for tool in result.get(listing.field()).and_then(Value::as_array).into_iter().flatten() {
            if !listing.prefixed() {
                if tool.is_object() {
                    tools.push(tool.clone());
                }
                continue;
            }
            let (Some(object), Some(name)) = (tool.as_object(), tool.get("name").and_then(Value::as_str))
            else {
                continue;
            };
            let listed = prefixed_name(server, name);
            if route_tool(&listed, servers).ok() != Some((*target, name.to_owned())) {
                continue;
            }
            let mut object = object.clone();
            object.insert("name".into(), Value::String(listed));
            if rest {
                object.insert("server_id".into(), Value::String(server.clone()));
            }
            tools.push(Value::Object(object));
        }
        if let Some(next) = result.get("nextCursor").and_then(Value::as_str) {
            pending.insert(server.clone(), Value::String(next.to_owned()));
        }
    }
    let next = (!pending.is_empty()).then(|| encode_cursor(&pending));
    (tools, next)
}

// ---------------------------------------------------------------------------------------------
// Upstream sessions. Servers on the stateful revisions (2024-11-05 … 2025-11-25) may refuse any
// request without the `Mcp-Session-Id` their `initialize` issued. Behind the aggregating endpoint
// the caller holds no session with any upstream, so the gateway opens one per server and caller
// identity the first time it needs it (`initialize`, then `notifications/initialized`), keeps it
// in a [`SessionStore`] and sends every later request in it: one upstream request per call after
// the first, instead of LiteLLM's initialize-per-call. A server that issues no session is
// remembered as stateless; a 404 in a session means it expired, and the gateway opens a new one
// once. The server performs the requests; these functions decide what they are.
// ---------------------------------------------------------------------------------------------

/// How the gateway speaks to one upstream for one caller identity, learned from `initialize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamSession {
    /// No session was issued (or the server has no `initialize`): requests go without one.
    Stateless {
        /// The negotiated protocol revision, when `initialize` answered one.
        protocol_version: Option<String>,
    },
    /// Requests carry this session and protocol revision.
    Session {
        /// The `Mcp-Session-Id` the server issued.
        id: String,
        /// The negotiated protocol revision.
        protocol_version: String,
    },
}

impl UpstreamSession {
    /// Sets the session and protocol-version headers on a request to the upstream.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        let (id, version) = match self {
            Self::Stateless { protocol_version } => (None, protocol_version.as_deref()),
            Self::Session { id, protocol_version } => (Some(id.as_str()), Some(protocol_version.as_str())),
        };
        headers.remove(crate::client::mcp::SESSION_HEADER);
        if let Some(value) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(crate::client::mcp::SESSION_HEADER, value);
        }
        if let Some(value) = version.and_then(|version| HeaderValue::from_str(version).ok()) {
            headers.insert(crate::client::mcp::PROTOCOL_VERSION_HEADER, value);
        }
    }

    /// Whether an upstream answer says this session is gone, so a new one must be opened
    /// (design §4.11): a 404, or a 400 naming the session (the reference `server-everything` and
    /// the TypeScript SDK's examples answer 400 "No valid session ID provided" for a session they
    /// do not know). `body` is the answer read whole; `None` for a streamed answer, which is
    /// judged by its head alone, so any 400 counts there: the caller reopens once per request, so
    /// a 400 for another reason costs one more round trip and is then relayed.
    pub fn expired_by(&self, status: StatusCode, body: Option<&[u8]>) -> bool {
        let names_session =
            |body: &[u8]| body.windows(7).any(|window| window.eq_ignore_ascii_case(b"session"));
        matches!(self, Self::Session { .. })
            && (status == StatusCode::NOT_FOUND
                || status == StatusCode::BAD_REQUEST && body.is_none_or(names_session))
    }
}

/// Whom a session belongs to: the server and the identity the gateway speaks for there (its own
/// for M2M, static and anonymous credentials; the caller's, as a SHA-256 digest, when the
/// caller's token goes up or is exchanged). A session is never shared across callers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    server: String,
    identity: [u8; 32],
    scope: Option<Scope>,
}

impl SessionKey {
    /// The same key inside a gateway session: its upstream sessions are the caller's own, opened
    /// with the caller's `initialize`, and shared with no other gateway session.
    #[must_use]
    pub fn in_scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// The server the session is with.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether the session belongs to the gateway session `scope`.
    pub fn is_in(&self, scope: Scope) -> bool {
        self.scope == Some(scope)
    }
}

/// The session key for requests to `server` sent with `credential` (and, when the caller's own
/// `Authorization` goes up, the forwarded `headers`).
pub fn session_key(
    server: &str,
    credential: &crate::outbound::OutboundCredential,
    headers: &http::HeaderMap,
) -> SessionKey {
    use crate::outbound::OutboundCredential;
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    match credential {
        OutboundCredential::ClientCredentialsToken
        | OutboundCredential::StaticToken
        | OutboundCredential::None => {
            digest.update(b"gateway");
        }
        OutboundCredential::ExchangeToken { subject_token } => {
            digest.update(b"exchange:");
            digest.update(subject_token.expose().as_bytes());
        }
        OutboundCredential::Authorization(value) => {
            digest.update(b"header:");
            digest.update(value.expose().as_bytes());
        }
        OutboundCredential::Grant { grant, .. } => {
            digest.update(b"grant:");
            digest.update(grant.as_str().as_bytes());
        }
        OutboundCredential::IdentityGrant { pointer, .. } => {
            digest.update(b"identity-grant:");
            digest.update(pointer.as_str().as_bytes());
        }
        OutboundCredential::AuthorizationRequired => digest.update(b"none"),
        OutboundCredential::ForwardAuthorization => {
            digest.update(b"caller:");
            if let Some(value) = headers.get(header::AUTHORIZATION) {
                digest.update(value.as_bytes());
            }
        }
    }
    SessionKey { server: server.to_owned(), identity: digest.finalize().into(), scope: None }
}

/// The `initialize` the gateway sends to open a session: the caller's protocol revision (from its
/// `MCP-Protocol-Version` header) when it is a stateful one, else the newest.
pub fn initialize_request(headers: &http::HeaderMap) -> Vec<u8> {
    let requested =
        headers.get(crate::client::mcp::PROTOCOL_VERSION_HEADER).and_then(|value| value.to_str().ok());
    let version = requested
        .filter(|version| crate::client::mcp::STATEFUL_VERSIONS.contains(version))
        .unwrap_or(LATEST_STATEFUL_VERSION);
    let params = crate::client::mcp::initialize_params(version);
    json!({"jsonrpc": "2.0", "id": UPSTREAM_ID, "method": "initialize", "params": params})
        .to_string()
        .into_bytes()
}

/// The notification that completes the handshake once a session is open.
pub fn initialized_notification() -> Vec<u8> {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string().into_bytes()
}

/// What the `initialize` answer says: the session to use, or `None` when the answer itself must
/// reach the caller (a 401 or 403, a 5xx), as the answer to its request would have.
///
/// A server without `initialize` (a JSON-RPC error, or a 400/404/405 to it) is stateless; a
/// success with a usable `Mcp-Session-Id` opens a session.
pub fn session_from_initialize(response: &Response<Vec<u8>>) -> Option<UpstreamSession> {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || status.is_server_error() {
        return None;
    }
    if !status.is_success() {
        return Some(UpstreamSession::Stateless { protocol_version: None });
    }
    let Ok(result) = parse_rpc_response(response, UPSTREAM_ID) else {
        return Some(UpstreamSession::Stateless { protocol_version: None });
    };
    let protocol_version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|version| HeaderValue::from_str(version).is_ok())
        .map(str::to_owned);
    let id = response
        .headers()
        .get(crate::client::mcp::SESSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.bytes().all(|byte| (0x21..=0x7e).contains(&byte)));
    Some(match (id, protocol_version) {
        (Some(id), Some(protocol_version)) => {
            UpstreamSession::Session { id: id.to_owned(), protocol_version }
        }
        (Some(id), None) => UpstreamSession::Session {
            id: id.to_owned(),
            protocol_version: LATEST_STATEFUL_VERSION.to_owned(),
        },
        (None, protocol_version) => UpstreamSession::Stateless { protocol_version },
    })
}

/// The sessions the gateway holds with upstreams, bounded: beyond `capacity` the least recently
/// used is forgotten (the server expires it on its side; a later request opens a new one).
#[derive(Debug)]
pub struct SessionStore {
    entries: std::collections::HashMap<SessionKey, (UpstreamSession, crate::machine::Instant)>,
    capacity: usize,
}

impl SessionStore {
    /// A store holding at most `capacity` sessions (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { entries: std::collections::HashMap::new(), capacity: capacity.max(1) }
    }

    /// The session for `key`, marked as used at `now`.
    pub fn get(&mut self, key: &SessionKey, now: crate::machine::Instant) -> Option<UpstreamSession> {
        let (session, used) = self.entries.get_mut(key)?;
        *used = now;
        Some(session.clone())
    }

    /// Remembers `session` for `key`.
    pub fn insert(&mut self, key: SessionKey, session: UpstreamSession, now: crate::machine::Instant) {
        if !self.entries.contains_key(&key)
            && self.entries.len() >= self.capacity
            && let Some(oldest) =
                self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(key, _)| key.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (session, now));
    }

    /// Forgets `key`'s session if it is still `session` (another request may have replaced it).
    pub fn remove(&mut self, key: &SessionKey, session: &UpstreamSession) {
        if self.entries.get(key).is_some_and(|(current, _)| current == session) {
            self.entries.remove(key);
        }
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request to `servers` at `endpoint`: not delegated, no cursor, no session, anonymous.
    fn request_to(endpoint: Endpoint, servers: &[String]) -> Request<'_> {
        Request {
            endpoint,
            servers,
            delegated: false,
            cursor: None,
            session: None,
            owner: Owner::of(&http::HeaderMap::new()),
        }
    }

    fn servers(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn body_json(response: &Response<Vec<u8>>) -> Value {
        serde_json::from_slice(response.body()).unwrap_or(Value::Null)
    }

    fn mcp_plan(names: &[String], body: &str) -> Plan {
        let request = request_to(Endpoint::Mcp, names);
        plan(&request, body.as_bytes())
    }

    fn listing(names: &[String]) -> Gather {
        match mcp_plan(names, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#) {
            Plan::Gather(gather) => gather,
            other => panic!("a listing gathers, got {other:?}"),
        }
    }

    fn upstream(body: &Value) -> Answer {
        let mut response = Response::new(body.to_string().into_bytes());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Answer::Upstream(response)
    }

    fn tools(names: &[&str]) -> Value {
        let tools: Vec<Value> = names.iter().map(|name| json!({"name": name, "inputSchema": {}})).collect();
        json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}})
    }

    fn forwarded(plan: Plan) -> (usize, Value) {
        match plan {
            Plan::Forward(call) => (call.target, serde_json::from_slice(&call.body).unwrap()),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[test]
    fn prompts_and_resources_are_listed_from_every_target_with_the_rules_of_design_4_11() {
        let names = servers(&["a", "b"]);
        for (method, field) in [
            ("prompts/list", "prompts"),
            ("resources/list", "resources"),
            ("resources/templates/list", "resourceTemplates"),
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":7,"method":"{method}"}}"#);
            let Plan::Gather(gather) = mcp_plan(&names, &body) else { panic!("{method} gathers") };
            assert_eq!(gather.calls().len(), 2, "{method}");
            let sent: Value = serde_json::from_slice(&gather.calls()[0].body).unwrap();
            assert_eq!(sent["method"], method);
            let item = |n: &str| match field {
                "prompts" => json!({"name": n}),
                "resources" => json!({"uri": format!("file:///{n}"), "name": n}),
                _ => json!({"uriTemplate": format!("file:///{n}/{{x}}"), "name": n}),
            };
            let answer =
                |n: &str| upstream(&json!({"jsonrpc": "2.0", "id": 1, "result": {field: [item(n)]}}));
            let merged = body_json(&gather.finish(vec![answer("one"), answer("two")]));
            assert_eq!(merged["id"], 7);
            let items = merged["result"][field].as_array().unwrap().clone();
            if field == "prompts" {
                // Prompt names get the server's prefix, like tools.
                assert_eq!(items, vec![json!({"name": "a-one"}), json!({"name": "b-two"})]);
            } else {
                // URIs are never rewritten.
                assert_eq!(items, vec![item("one"), item("two")], "{method}");
            }
        }
    }

    #[test]
    fn prompts_completion_and_resources_are_routed_to_one_target() {
        let names = servers(&["a", "b"]);
        let (target, sent) = forwarded(mcp_plan(
            &names,
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"b-greet","arguments":{"x":"1"}}}"#,
        ));
        assert_eq!((target, &sent["params"]["name"], &sent["id"]), (1, &json!("greet"), &json!(1)));
        let (target, sent) = forwarded(mcp_plan(
            &names,
            r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a-greet"},"argument":{"name":"x","value":"h"}}}"#,
        ));
        assert_eq!((target, &sent["params"]["ref"]["name"]), (0, &json!("greet")));
        // Several targets: a resource cannot be placed without a session (a JSON-RPC error, 200).
        let read = r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///x"}}"#;
        let Plan::Respond(refused) = mcp_plan(&names, read) else { panic!("refused") };
        assert_eq!(refused.status(), StatusCode::OK);
        assert_eq!(body_json(&refused)["error"]["data"]["reason"], "ambiguous_resource");
        // One target: it is that target's, sent as it is.
        let one = servers(&["a"]);
        let (target, sent) = forwarded(mcp_plan(&one, read));
        assert_eq!((target, &sent["params"]["uri"]), (0, &json!("file:///x")));
        let resource_completion = r#"{"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{x}"},"argument":{"name":"x","value":"h"}}}"#;
        assert_eq!(forwarded(mcp_plan(&one, resource_completion)).0, 0);
        let bad = r#"{"jsonrpc":"2.0","id":5,"method":"completion/complete","params":{"ref":{"type":"ref/other"}}}"#;
        let Plan::Respond(refused) = mcp_plan(&one, bad) else { panic!("refused") };
        assert_eq!(body_json(&refused)["error"]["data"]["reason"], "invalid_params");
    }

    #[test]
    fn logging_set_level_goes_to_every_target_and_initialize_advertises_what_is_served() {
        let names = servers(&["a", "b"]);
        let body = r#"{"jsonrpc":"2.0","id":9,"method":"logging/setLevel","params":{"level":"debug"}}"#;
        let Plan::Gather(gather) = mcp_plan(&names, body) else { panic!("every target") };
        assert_eq!(gather.calls().iter().map(|call| call.target).collect::<Vec<_>>(), vec![0, 1]);
        let sent: Value = serde_json::from_slice(&gather.calls()[0].body).unwrap();
        assert_eq!(
            (sent["id"].clone(), sent["params"]["level"].clone()),
            (json!(UPSTREAM_ID), json!("debug"))
        );
        let ok = upstream(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        let answer = body_json(&gather.finish(vec![ok, Answer::Failed(Response::new(Vec::new()))]));
        assert_eq!((answer["id"].clone(), answer["result"].clone()), (json!(9), json!({})));
        let init =
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;
        let Plan::Respond(response) = mcp_plan(&names, init) else { panic!("local") };
        let capabilities = body_json(&response)["result"]["capabilities"].clone();
        for served in ["tools", "prompts", "resources", "completions", "logging"] {
            assert!(capabilities.get(served).is_some(), "{served}: {capabilities}");
        }
    }

    #[test]
    fn routes_a_prefixed_tool_to_the_one_server_it_names() {
        let names = servers(&["github", "jira"]);
        assert_eq!(route_tool("jira-create-issue", &names), Ok((1, "create-issue".to_owned())));
        assert_eq!(route_tool("github-search", &names), Ok((0, "search".to_owned())));
        assert_eq!(route_tool("gitlab-search", &names).map_err(|error| error.reason()), Err("unknown_tool"));
        assert_eq!(route_tool("github-", &names).map_err(|error| error.reason()), Err("unknown_tool"));
        assert_eq!(route_tool("github", &names).map_err(|error| error.reason()), Err("unknown_tool"));
    }

    #[test]
    fn the_longest_server_name_wins_where_names_share_a_prefix() {
        // LiteLLM splits at the first `-` and would send this to `github`.
        let names = servers(&["github", "github-enterprise"]);
        assert_eq!(route_tool("github-enterprise-search", &names), Ok((1, "search".to_owned())));
        assert_eq!(route_tool("github-search", &names), Ok((0, "search".to_owned())));
    }

    #[test]
    fn listing_prefixes_names_and_drops_those_that_would_route_elsewhere() {
        let names = servers(&["a", "a-b", "c"]);
        let Plan::Gather(gather) = mcp_plan(&names, r#"{"jsonrpc":"2.0","id":"x","method":"tools/list"}"#)
        else {
            panic!("a listing gathers");
        };
        assert_eq!(gather.calls().iter().map(|call| call.target).collect::<Vec<_>>(), [0, 1, 2]);
        let answers = vec![
            upstream(&tools(&["b-c", "echo"])),
            upstream(&tools(&["c", "d"])),
            upstream(&tools(&["add"])),
        ];
        let response = gather.finish(answers);
        assert_eq!(response.status(), StatusCode::OK);
        let body = body_json(&response);
        assert_eq!(body["id"], "x");
        let listed: Vec<&str> = body["result"]["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|tool| tool["name"].as_str())
            .collect();
        // a's `b-c` would be listed as `a-b-c`, which calls a-b's `c`: it is left out.
        assert_eq!(listed, ["a-echo", "a-b-c", "a-b-d", "c-add"]);
    }

    #[test]
    fn a_call_is_rewritten_for_its_server_and_keeps_the_callers_id_and_meta() {
        let names = servers(&["echo-server", "math"]);
        let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"math-add","arguments":{"a":1},"_meta":{"progressToken":3}}}"#;
        let Plan::Forward(call) = mcp_plan(&names, body) else { panic!("a call forwards") };
        assert_eq!(call.target, 1);
        let sent: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        assert_eq!(sent["id"], 7);
        assert_eq!(sent["params"]["name"], "add");
        assert_eq!(sent["params"]["arguments"]["a"], 1);
        assert_eq!(sent["params"]["_meta"]["progressToken"], 3);
    }

    #[test]
    fn bad_messages_get_a_400_with_a_jsonrpc_error() {
        let names = servers(&["a"]);
        for (body, code, reason) in [
            ("not json", -32700, "parse_error"),
            ("[]", -32600, "batch_not_supported"),
            (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600, "invalid_jsonrpc"),
            (r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, -32600, "invalid_jsonrpc"),
            (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, -32600, "unexpected_response"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#, -32601, "method_not_found"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#, -32602, "missing_tool_name"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"b-x"}}"#,
                -32602,
                "unknown_tool",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"!!"}}"#,
                -32602,
                "invalid_cursor",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#, -32600, "invalid_jsonrpc"),
        ] {
            let Plan::Respond(response) = mcp_plan(&names, body) else { panic!("{body} is refused") };
            // Design §4.11: a refusal of the protocol is a JSON-RPC error in an HTTP 200; only a
            // body that is not a JSON-RPC request is a 400.
            let expected =
                if code == -32601 || code == -32602 { StatusCode::OK } else { StatusCode::BAD_REQUEST };
            assert_eq!(response.status(), expected, "{body}");
            let answer = body_json(&response);
            assert_eq!(answer["error"]["code"], code, "{body}");
            assert_eq!(answer["error"]["data"]["reason"], reason, "{body}");
        }
    }

    #[test]
    fn forwarded_bodies_must_be_jsonrpc() {
        for good in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#" [{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"}]"#,
        ] {
            assert!(check_message(good.as_bytes()).is_ok(), "{good}");
        }
        for (bad, code) in [
            ("", -32700),
            ("{", -32700),
            ("[", -32700),
            ("42", -32600),
            ("[]", -32600),
            (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":1}"#, -32600),
            (r#"{"id":1,"method":"ping"}"#, -32600),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},7]"#, -32600),
        ] {
            let Err(response) = check_message(bad.as_bytes()) else { panic!("{bad} passed") };
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body_json(&response)["error"]["code"], code, "{bad}");
        }
    }

    #[test]
    fn the_gateway_answers_initialize_ping_and_notifications_itself() {
        let names = servers(&["a"]);
        let initialize =
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;
        let Plan::Respond(response) = mcp_plan(&names, initialize) else { panic!("initialize is local") };
        assert_eq!(body_json(&response)["result"]["protocolVersion"], "2025-06-18");
        let unknown =
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#;
        let Plan::Respond(response) = mcp_plan(&names, unknown) else { panic!("initialize is local") };
        assert_eq!(body_json(&response)["result"]["protocolVersion"], LATEST_STATEFUL_VERSION);
        let Plan::Respond(response) =
            mcp_plan(&names, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        else {
            panic!("a notification is local");
        };
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert!(response.body().is_empty());
        let Plan::Respond(response) = mcp_plan(&names, r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#)
        else {
            panic!("ping is local");
        };
        assert_eq!(body_json(&response), json!({"jsonrpc": "2.0", "id": "p", "result": {}}));
    }

    #[test]
    fn cursors_continue_only_the_servers_with_more_pages() {
        let names = servers(&["a", "b"]);
        let first = listing(&names);
        let mut paged = tools(&["one"]);
        paged["result"]["nextCursor"] = json!("page-2");
        let response = first.finish(vec![upstream(&paged), upstream(&tools(&["two"]))]);
        let cursor = body_json(&response)["result"]["nextCursor"].as_str().map(str::to_owned);
        let Some(cursor) = cursor else { panic!("a cursor for a's second page") };
        let next = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": cursor}})
            .to_string();
        let Plan::Gather(second) = mcp_plan(&names, &next) else { panic!("gather") };
        assert_eq!(second.calls().len(), 1);
        let sent: Value = serde_json::from_slice(&second.calls()[0].body).unwrap_or(Value::Null);
        assert_eq!((second.calls()[0].target, sent["params"]["cursor"].clone()), (0, json!("page-2")));
        // A cursor naming a server that is not a target is refused.
        let Plan::Respond(refused) = mcp_plan(&servers(&["b"]), &next) else { panic!("refused") };
        assert_eq!(body_json(&refused)["error"]["data"]["reason"], "invalid_cursor");
    }

    #[test]
    fn a_failing_server_is_named_while_the_others_are_served() {
        let names = servers(&["a", "b"]);
        let gather = listing(&names);
        let down = error_response(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "b: no answer in time");
        let response = gather.finish(vec![upstream(&tools(&["echo"])), Answer::Failed(down)]);
        assert_eq!(response.status(), StatusCode::OK);
        let body = body_json(&response);
        assert_eq!(body["result"]["tools"][0]["name"], "a-echo");
        assert_eq!(body["result"]["_meta"][ERRORS_META_KEY][0]["server_id"], "b");
        assert_eq!(body["result"]["_meta"][ERRORS_META_KEY][0]["error"], "upstream_timeout");
    }

    #[test]
    fn when_every_server_fails_the_listing_fails_with_the_first_status() {
        let names = servers(&["a"]);
        let gather = listing(&names);
        let mut broken = Response::new(b"oops".to_vec());
        *broken.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        let response = gather.finish(vec![Answer::Upstream(broken)]);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(body_json(&response)["error"], "upstream_error");
    }

    #[test]
    fn a_delegated_401_reaches_the_caller_with_its_challenge() {
        let names = servers(&["a", "b"]);
        let request = Request { delegated: true, ..request_to(Endpoint::Mcp, &names) };
        let Plan::Gather(gather) = plan(&request, br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        else {
            panic!("gather");
        };
        let mut refused = Response::new(Vec::new());
        *refused.status_mut() = StatusCode::UNAUTHORIZED;
        let challenge = HeaderValue::from_static(
            "Bearer resource_metadata=\"https://a.example/.well-known/oauth-protected-resource\"",
        );
        refused.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.clone());
        let response = gather.finish(vec![upstream(&tools(&["x"])), Answer::Upstream(refused)]);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers().get(header::WWW_AUTHENTICATE), Some(&challenge));
    }

    #[test]
    fn rest_call_infers_the_server_or_takes_server_id_verbatim() {
        let names = servers(&["a", "b"]);
        let request = request_to(Endpoint::RestCall, &names);
        let sent = |body: &str| match plan(&request, body.as_bytes()) {
            Plan::Gather(gather) => {
                let call = &gather.calls()[0];
                let sent: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
                Ok((call.target, sent["params"].clone()))
            }
            Plan::Respond(response) => Err((response.status(), body_json(&response)["error"].clone())),
            Plan::Forward(_) | Plan::Stream(_) => Err((StatusCode::IM_A_TEAPOT, Value::Null)),
        };
        assert_eq!(
            sent(r#"{"name":"b-echo","arguments":{"text":"hi"}}"#),
            Ok((1, json!({"name": "echo", "arguments": {"text": "hi"}})))
        );
        assert_eq!(
            sent(r#"{"server_id":"a","name":"b-echo"}"#),
            Ok((0, json!({"name": "b-echo", "arguments": {}})))
        );
        assert_eq!(
            sent(r#"{"server_id":"z","name":"echo"}"#),
            Err((StatusCode::NOT_FOUND, json!("unknown_server")))
        );
        assert_eq!(sent(r#"{"name":"echo"}"#), Err((StatusCode::BAD_REQUEST, json!("unknown_tool"))));
        // With exactly one server in scope an unprefixed name is that server's own (design §7).
        let one = servers(&["a"]);
        let single = request_to(Endpoint::RestCall, &one);
        let Plan::Gather(gather) = plan(&single, br#"{"name":"echo","arguments":{"text":"hi"}}"#) else {
            panic!("one server: a call");
        };
        let first: Value = serde_json::from_slice(&gather.calls()[0].body).unwrap();
        assert_eq!((gather.calls()[0].target, &first["params"]["name"]), (0, &json!("echo")));
        let Plan::Gather(gather) = plan(&single, br#"{"name":"a-echo"}"#) else { panic!("a call") };
        let second: Value = serde_json::from_slice(&gather.calls()[0].body).unwrap();
        assert_eq!(second["params"]["name"], "echo", "the listed (prefixed) name still works");
        assert_eq!(
            sent(r#"{"name":"a-echo","arguments":[1]}"#),
            Err((StatusCode::BAD_REQUEST, json!("invalid_arguments")))
        );
        assert_eq!(sent(r#"{"arguments":{}}"#), Err((StatusCode::BAD_REQUEST, json!("missing_tool_name"))));
    }

    #[test]
    fn rest_call_answers_the_tool_result_or_names_the_error() {
        let names = servers(&["a"]);
        let request = request_to(Endpoint::RestCall, &names);
        let call = || match plan(&request, br#"{"name":"a-add","arguments":{"a":1,"b":2}}"#) {
            Plan::Gather(gather) => gather,
            other => panic!("{other:?}"),
        };
        let result = json!({"content": [{"type": "text", "text": "3"}]});
        let ok = call().finish(vec![upstream(&json!({"jsonrpc": "2.0", "id": 1, "result": result}))]);
        assert_eq!((ok.status(), body_json(&ok)), (StatusCode::OK, result));
        let error =
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unknown tool: add"}});
        let refused = call().finish(vec![upstream(&error)]);
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body_json(&refused)["error"], "tool_error");
    }

    fn initialize_answer(session: Option<&str>, result: &Value, status: StatusCode) -> Response<Vec<u8>> {
        let mut response =
            Response::new(json!({"jsonrpc": "2.0", "id": 1, "result": result}).to_string().into_bytes());
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(session) = session {
            response.headers_mut().insert(
                "mcp-session-id",
                HeaderValue::from_str(session).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        response
    }

    #[test]
    fn the_initialize_answer_decides_the_session() {
        let result = json!({"protocolVersion": "2025-06-18"});
        let opened = session_from_initialize(&initialize_answer(Some("s-1"), &result, StatusCode::OK));
        assert_eq!(
            opened,
            Some(UpstreamSession::Session { id: "s-1".into(), protocol_version: "2025-06-18".into() })
        );
        let stateless = session_from_initialize(&initialize_answer(None, &result, StatusCode::OK));
        assert_eq!(
            stateless,
            Some(UpstreamSession::Stateless { protocol_version: Some("2025-06-18".into()) })
        );
        // No initialize on the server (the stateless wire): requests go without a session.
        let mut refused =
            Response::new(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#.to_vec());
        refused.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(
            session_from_initialize(&refused),
            Some(UpstreamSession::Stateless { protocol_version: None })
        );
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::BAD_GATEWAY] {
            assert_eq!(
                session_from_initialize(&initialize_answer(Some("s"), &result, status)),
                None,
                "{status}"
            );
        }
        let mut headers = http::HeaderMap::new();
        headers.insert("mcp-session-id", HeaderValue::from_static("caller-session"));
        if let Some(session) = &opened {
            session.apply(&mut headers);
            assert!(session.expired_by(StatusCode::NOT_FOUND, Some(b"")));
            let unknown = br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#;
            assert!(
                session.expired_by(StatusCode::BAD_REQUEST, Some(unknown)),
                "server-everything's answer for an unknown session"
            );
            assert!(
                session.expired_by(StatusCode::BAD_REQUEST, None),
                "a streamed head cannot be read further"
            );
            let other = br#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"bad arguments"},"id":1}"#;
            assert!(!session.expired_by(StatusCode::BAD_REQUEST, Some(other)), "a 400 about something else");
        }
        assert_eq!(headers["mcp-session-id"], "s-1");
        assert_eq!(headers["mcp-protocol-version"], "2025-06-18");
        assert!(
            !UpstreamSession::Stateless { protocol_version: None }.expired_by(StatusCode::NOT_FOUND, None)
        );
    }

    #[test]
    fn sessions_are_per_caller_identity_and_bounded() {
        use crate::outbound::OutboundCredential;
        use crate::secret::Secret;
        let forward = |credential: OutboundCredential, authorization: Option<&'static str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = authorization {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            }
            (credential, headers)
        };
        let session_key = |(credential, headers): &(OutboundCredential, http::HeaderMap)| {
            session_key("a", credential, headers)
        };
        let m2m = session_key(&forward(OutboundCredential::ClientCredentialsToken, None));
        assert_eq!(
            m2m,
            session_key(&forward(OutboundCredential::StaticToken, None)),
            "the gateway's own identity"
        );
        let alice = session_key(&forward(OutboundCredential::ForwardAuthorization, Some("Bearer alice")));
        let bob = session_key(&forward(OutboundCredential::ForwardAuthorization, Some("Bearer bob")));
        let exchanged = session_key(&forward(
            OutboundCredential::ExchangeToken { subject_token: Secret::new("Bearer alice") },
            None,
        ));
        assert!(alice != bob && alice != m2m && exchanged != alice && exchanged != m2m);
        assert!(!format!("{alice:?}").contains("alice"), "the key holds a digest, not the token");

        let mut store = SessionStore::new(2);
        let session =
            |id: &str| UpstreamSession::Session { id: id.into(), protocol_version: "2025-06-18".into() };
        store.insert(alice.clone(), session("a"), crate::machine::Instant::from_millis(1));
        store.insert(bob.clone(), session("b"), crate::machine::Instant::from_millis(2));
        assert_eq!(store.get(&alice, crate::machine::Instant::from_millis(3)), Some(session("a")));
        store.insert(m2m.clone(), session("m"), crate::machine::Instant::from_millis(4));
        assert_eq!(store.len(), 2);
        assert!(
            store.get(&bob, crate::machine::Instant::from_millis(5)).is_none(),
            "the least recently used goes"
        );
        store.remove(&alice, &session("other"));
        assert!(
            store.get(&alice, crate::machine::Instant::from_millis(6)).is_some(),
            "a replaced session is not removed"
        );
        store.remove(&alice, &session("a"));
        assert!(store.get(&alice, crate::machine::Instant::from_millis(7)).is_none());
    }

    #[test]
    fn sse_answers_are_read_like_json_ones() {
        let names = servers(&["a"]);
        let gather = listing(&names);
        let event = format!("event: message\ndata: {}\n\n", tools(&["echo"]));
        let mut response = Response::new(event.into_bytes());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        let body = body_json(&gather.finish(vec![Answer::Upstream(response)]));
        assert_eq!(body["result"]["tools"][0]["name"], "a-echo");
    }

    // Gateway sessions (design §4.11).

    fn owner(key: &str) -> Owner {
        let mut headers = http::HeaderMap::new();
        headers
            .insert("x-mcp-gateway-key", HeaderValue::from_str(key).unwrap_or(HeaderValue::from_static("k")));
        Owner::of(&headers)
    }

    fn session_plan(
        table: &mut GatewaySessions,
        endpoint: Endpoint,
        names: &[String],
        session: Option<&str>,
        who: Owner,
        body: &str,
    ) -> Plan {
        let request =
            Request { endpoint, servers: names, delegated: false, cursor: None, session, owner: who };
        // Each session gets its own id, as fresh randomness would give.
        static DRAWS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let mut random = || Some([DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 32]);
        let sessions = Sessions { table, now: crate::machine::Instant::ZERO, random: &mut random };
        plan_in(&request, body.as_bytes(), sessions)
    }

    /// Opens a session for `who` over `names`; its id and the upstream calls that opened it.
    fn open_session(table: &mut GatewaySessions, names: &[String], who: Owner) -> (String, Gather) {
        let body = r#"{"jsonrpc":"2.0","id":"init-7","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{},"roots":{"listChanged":true}},"clientInfo":{"name":"c","version":"1"}}}"#;
        let Plan::Gather(gather) = session_plan(table, Endpoint::Mcp, names, None, who, body) else {
            panic!("initialize gathers from every target");
        };
        let id = gather.opening.as_ref().map(|opening| opening.id.clone()).unwrap_or_default();
        (id, gather)
    }

    /// A session opened and kept: every target accepted the initialize.
    fn opened(table: &mut GatewaySessions, names: &[String], who: Owner) -> String {
        let (id, gather) = open_session(table, names, who);
        let answers = gather.calls().iter().map(|_| rpc(&json!({"capabilities": {}}))).collect();
        let (_, learned) = gather.finish_learning(answers);
        table.learn(learned, crate::machine::Instant::ZERO);
        id
    }

    fn rpc(result: &Value) -> Answer {
        upstream(&json!({"jsonrpc": "2.0", "id": 1, "result": result}))
    }

    #[test]
    fn initialize_opens_a_gateway_session_with_the_callers_initialize_at_every_target() {
        let names = servers(&["a", "b"]);
        let mut table = GatewaySessions::default();
        let alice = owner("alice");
        let (id, gather) = open_session(&mut table, &names, alice);
        assert_eq!(gather.calls().len(), 2);
        for call in gather.calls() {
            let session = call.session.as_ref().expect("each call opens the target's session");
            assert_eq!(session.mode, SessionMode::Open);
            let sent: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
            assert_eq!(sent["id"], json!(UPSTREAM_ID), "the gateway's own id goes up");
            assert_eq!(
                sent["params"]["capabilities"]["sampling"],
                json!({}),
                "the caller's capabilities go up"
            );
            assert_eq!(session.view.initialize, call.body, "reopening uses the same initialize");
        }
        let a = rpc(
            &json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": false}, "resources": {"subscribe": true}}}),
        );
        let b = rpc(
            &json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": true}, "prompts": {}, "logging": {}}}),
        );
        assert!(table.find(&id, alice, crate::machine::Instant::ZERO).is_none(), "kept only once accepted");
        let (response, learned) = gather.finish_learning(vec![a, b]);
        table.learn(learned, crate::machine::Instant::ZERO);
        assert_eq!(response.headers()["mcp-session-id"], id.as_str());
        let body = body_json(&response);
        assert_eq!(body["id"], "init-7", "the caller's id comes back");
        assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(
            body["result"]["capabilities"],
            json!({"tools": {"listChanged": true}, "resources": {"subscribe": true}, "prompts": {}, "logging": {}}),
            "the union of what the targets offer, flags set when any target sets them"
        );
        assert!(table.find(&id, alice, crate::machine::Instant::ZERO).is_some());
        // A session no target accepted is not kept, and its id is never sent.
        let (refused_id, gather) = open_session(&mut table, &names, alice);
        let failed =
            || Answer::Failed(error_response(StatusCode::BAD_GATEWAY, "upstream_unreachable", "down"));
        let (response, learned) = gather.finish_learning(vec![failed(), failed()]);
        table.learn(learned, crate::machine::Instant::ZERO);
        assert!(!response.headers().contains_key("mcp-session-id"));
        assert!(table.find(&refused_id, alice, crate::machine::Instant::ZERO).is_none());
        // Nothing is advertised that no target offers.
        let (_, gather) = open_session(&mut table, &servers(&["p"]), alice);
        let (response, _) = gather.finish_learning(vec![rpc(&json!({"capabilities": {"prompts": {}}}))]);
        assert_eq!(body_json(&response)["result"]["capabilities"], json!({"prompts": {}}));
    }

    #[test]
    fn a_session_is_usable_only_by_the_credentials_that_opened_it() {
        let names = servers(&["a"]);
        let mut table = GatewaySessions::default();
        let id = opened(&mut table, &names, owner("alice"));
        let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
        for (who, session) in [(owner("mallory"), id.as_str()), (owner("alice"), "forged")] {
            let Plan::Respond(refused) =
                session_plan(&mut table, Endpoint::Mcp, &names, Some(session), who, list)
            else {
                panic!("an unknown session is refused");
            };
            assert_eq!(refused.status(), StatusCode::NOT_FOUND);
            assert_eq!(body_json(&refused)["error"]["code"], -32001);
        }
        // Its owner's calls run in it; initialize inside it is a protocol refusal.
        let Plan::Gather(listing) =
            session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), owner("alice"), list)
        else {
            panic!("a listing gathers");
        };
        assert_eq!(listing.calls()[0].session.as_ref().map(|session| session.mode), Some(SessionMode::Use));
        let again = r#"{"jsonrpc":"2.0","id":3,"method":"initialize","params":{}}"#;
        let Plan::Respond(refused) =
            session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), owner("alice"), again)
        else {
            panic!("initialize in a session is refused");
        };
        assert_eq!(
            (refused.status(), body_json(&refused)["error"]["code"].clone()),
            (StatusCode::OK, json!(-32600))
        );
    }

    #[test]
    fn delete_ends_the_gateway_session_and_each_upstream_session() {
        let names = servers(&["a", "b"]);
        let mut table = GatewaySessions::default();
        let alice = owner("alice");
        let id = opened(&mut table, &names, alice);
        let Plan::Respond(refused) =
            session_plan(&mut table, Endpoint::McpEnd, &names, Some(&id), owner("bob"), "")
        else {
            panic!("another caller cannot end it");
        };
        assert_eq!(refused.status(), StatusCode::NOT_FOUND);
        let Plan::Gather(end) = session_plan(&mut table, Endpoint::McpEnd, &names, Some(&id), alice, "")
        else {
            panic!("ending asks every target");
        };
        assert!(
            end.calls()
                .iter()
                .all(|call| call.session.as_ref().map(|use_| use_.mode) == Some(SessionMode::End))
        );
        let answers =
            vec![Answer::Upstream(Response::new(Vec::new())), Answer::Failed(Response::new(Vec::new()))];
        assert_eq!(end.finish(answers).status(), StatusCode::NO_CONTENT);
        assert!(table.find(&id, alice, crate::machine::Instant::ZERO).is_none());
        let Plan::Respond(gone) = session_plan(&mut table, Endpoint::McpEnd, &names, Some(&id), alice, "")
        else {
            panic!("an ended session is unknown");
        };
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        let Plan::Respond(unnamed) = session_plan(&mut table, Endpoint::McpEnd, &names, None, alice, "")
        else {
            panic!("DELETE names a session");
        };
        assert_eq!(unnamed.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_resource_goes_to_the_target_that_listed_it_in_the_session() {
        let names = servers(&["a", "b"]);
        let mut table = GatewaySessions::default();
        let alice = owner("alice");
        let id = opened(&mut table, &names, alice);
        let read = |uri: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{{"uri":"{uri}"}}}}"#)
        };
        // Before any listing, two targets cannot be told apart.
        let Plan::Respond(refused) =
            session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), alice, &read("b://x"))
        else {
            panic!("an unplaced resource is refused");
        };
        assert_eq!(body_json(&refused)["error"]["data"]["reason"], "ambiguous_resource");
        for (method, field, key) in [
            ("resources/list", "resources", "uri"),
            ("resources/templates/list", "resourceTemplates", "uriTemplate"),
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":2,"method":"{method}"}}"#);
            let Plan::Gather(listing) =
                session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), alice, &body)
            else {
                panic!("a listing gathers");
            };
            let (a_items, b_items) = if key == "uri" {
                (json!([{key: "shared://s"}]), json!([{key: "b://x"}, {key: "shared://s"}]))
            } else {
                (json!([]), json!([{key: "b://items/{id}"}]))
            };
            let (_, learned) =
                listing.finish_learning(vec![rpc(&json!({field: a_items})), rpc(&json!({field: b_items}))]);
            table.learn(learned, crate::machine::Instant::ZERO);
        }
        for (uri, target) in [("b://x", 1), ("shared://s", 0), ("b://items/42", 1)] {
            assert_eq!(
                forwarded(session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), alice, &read(uri))).0,
                target,
                "{uri}"
            );
        }
        // Another session learned nothing.
        let other = opened(&mut table, &names, alice);
        let Plan::Respond(_) =
            session_plan(&mut table, Endpoint::Mcp, &names, Some(&other), alice, &read("b://x"))
        else {
            panic!("what one session listed does not route another's");
        };
    }

    #[test]
    fn the_get_stream_merges_every_target_that_opens_one_in_the_callers_session() {
        let names = servers(&["a", "b"]);
        let mut table = GatewaySessions::default();
        let alice = owner("alice");
        let Plan::Respond(unnamed) = session_plan(&mut table, Endpoint::McpStream, &names, None, alice, "")
        else {
            panic!("a stream needs a session");
        };
        assert_eq!(unnamed.status(), StatusCode::BAD_REQUEST);
        let id = opened(&mut table, &names, alice);
        let Plan::Stream(listens) =
            session_plan(&mut table, Endpoint::McpStream, &names, Some(&id), alice, "")
        else {
            panic!("the owner's GET opens every target's stream");
        };
        assert_eq!(listens.iter().map(|listen| listen.target).collect::<Vec<_>>(), [0, 1]);
        assert!(
            listens
                .iter()
                .all(|listen| listen.session.as_ref().map(|use_| use_.mode) == Some(SessionMode::Listen))
        );

        let sse = http::HeaderMap::from_iter([(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        )]);
        let json = http::HeaderMap::from_iter([(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )]);
        match merge_streams(&[(StatusCode::METHOD_NOT_ALLOWED, &json), (StatusCode::OK, &sse)]) {
            StreamAnswer::Merge { head, keep } => {
                assert_eq!(keep, [false, true]);
                assert_eq!(head.headers()[header::CONTENT_TYPE], "text/event-stream");
            }
            other => panic!("one target streams: {other:?}"),
        }
        let no_stream = [(StatusCode::METHOD_NOT_ALLOWED, &json), (StatusCode::METHOD_NOT_ALLOWED, &json)];
        let StreamAnswer::Refuse(refused) = merge_streams(&no_stream) else {
            panic!("no target streams");
        };
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        // A target that failed otherwise (a delegated 401, a 502) is not hidden behind a 405.
        let failed = [(StatusCode::METHOD_NOT_ALLOWED, &json), (StatusCode::UNAUTHORIZED, &json)];
        assert!(matches!(merge_streams(&failed), StreamAnswer::Relay(1)));
    }

    #[test]
    fn the_callers_answers_to_a_targets_request_go_back_to_that_target_with_its_id() {
        let names = servers(&["a", "b"]);
        let mut table = GatewaySessions::default();
        let alice = owner("alice");
        let id = opened(&mut table, &names, alice);
        let answer = r#"{"jsonrpc":"2.0","id":"b|7","result":{"roots":[]}}"#;
        let Plan::Forward(back) = session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), alice, answer)
        else {
            panic!("an answer is forwarded");
        };
        let sent: Value = serde_json::from_slice(&back.body).unwrap_or_default();
        assert_eq!((back.target, sent["id"].clone()), (1, json!(7)));
        assert_eq!(back.session.map(|use_| use_.mode), Some(SessionMode::Reply));
        // An id the gateway did not write, or an answer outside a session, is refused.
        let stray = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        let Plan::Respond(refused) = session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), alice, stray)
        else {
            panic!("a stray answer is refused");
        };
        assert_eq!(body_json(&refused)["error"]["data"]["reason"], "unexpected_response");
        let Plan::Respond(_) = session_plan(&mut table, Endpoint::Mcp, &names, None, alice, answer) else {
            panic!("no session, nothing to answer");
        };
        // A change of roots is told to every target in the session, then accepted.
        let changed = r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#;
        let Plan::Gather(told) = session_plan(&mut table, Endpoint::Mcp, &names, Some(&id), alice, changed)
        else {
            panic!("every target hears of it");
        };
        assert_eq!(told.calls().len(), 2);
        assert_eq!(told.finish(Vec::new()).status(), StatusCode::ACCEPTED);
    }

    #[test]
    fn only_initialize_draws_randomness_and_without_it_no_session_is_opened() {
        let names = servers(&["a"]);
        let mut table = GatewaySessions::default();
        let mut draws = 0;
        let mut plan_with_draws = |table: &mut GatewaySessions, body: &str, bytes: Option<[u8; 32]>| {
            let request = Request { owner: owner("alice"), ..request_to(Endpoint::Mcp, &names) };
            let mut random = || {
                draws += 1;
                bytes
            };
            plan_in(
                &request,
                body.as_bytes(),
                Sessions { table, now: crate::machine::Instant::ZERO, random: &mut random },
            )
        };
        let Plan::Gather(_) =
            plan_with_draws(&mut table, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, Some([1; 32]))
        else {
            panic!("a listing gathers");
        };
        let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        let Plan::Respond(answer) = plan_with_draws(&mut table, initialize, None) else {
            panic!("without randomness initialize is answered at once");
        };
        assert!(!answer.headers().contains_key("mcp-session-id"));
        assert!(table.is_empty());
        assert_eq!(draws, 1, "the listing drew nothing, the initialize once");
    }
}
