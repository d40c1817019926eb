//! The gateway's per-request decision (design §3, §4.4–§4.8): what to do with one request.
//!
//! Given the request head, the peer, the configuration and `now`, [`decide`] answers with an
//! [`Action`]: a complete response (health, metadata, errors, refusals, redirects), or an
//! instruction to forward the MCP request upstream with a chosen credential, or to proxy a token
//! or registration request. The server that runs it only carries bytes. OAuth endpoints answer only
//! for servers configured for the interactive flow; every other name gets the same 404 as an
//! unknown one, so a scanner cannot tell which servers exist.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use url::Url;

use crate::Reason;
use crate::budget::{BudgetConfig, OverBudget, PeerBudget};
use crate::config::{AuthType, GatewayConfig, ServerConfig};
use crate::delegate::{GATEWAY_KEY_HEADERS, Target, decide_delegation};
use crate::flow::Flow;
use crate::grant::{GrantId, StoreOp, StoreResult};
use crate::machine::Instant;
use crate::origin::{Origin, RequestOrigin, Scheme, resolve_public_origin};
use crate::outbound::{
    AuthResolution, OutboundCredential, debug_requested, is_gateway_key, resolve_outbound_auth,
};
use crate::redirect::validate_redirect_uri;
use crate::seal::UnixTime;
use crate::secret::Secret;

mod admission;
mod authz;
mod call;
mod failure;
mod oauth;
mod startup;
#[cfg(test)]
mod tests;
mod upstream;

use self::admission::*;
pub use self::authz::{
    ACCESS_TOKEN_LIFETIME, Audit, Authz, AuthzStep, CODE_LIFETIME, ClientDocument, ClientDocuments,
    FLOW_LIFETIME, MAX_CACHED_DOCUMENTS, MAX_CLIENT_DOCUMENT, MAX_CLIENT_NAME, MAX_DOCUMENT_LIFETIME,
    MAX_REDIRECT_URIS, REFRESH_GRACE, Random, RegistrationRefused, UpstreamClientInfo, open_access_token,
    upstream_callback, upstream_resource, validate_registration,
};
pub use self::call::*;
pub use self::failure::*;
pub use self::oauth::*;
pub use self::startup::*;
pub use self::upstream::*;

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
    /// Read the form or JSON body (up to the form limit, within the OAuth body deadline), then
    /// hand it to [`decide_form`].
    ReadForm(FormRequest),
    /// Run this authorization-server machine (callback, token, revocation) to its answer.
    Authz(Box<Authz>),
    /// `GET /health` with a durable or shared grant store: ask the store [`StoreProbe::op`] and
    /// answer with [`StoreProbe::answer`].
    Probe(StoreProbe),
}

/// The health check of a durable or shared grant store (design §4.10): when the store cannot
/// answer, `/health` answers 503 so a load balancer drains the replica, as every grant read and
/// single-use check on it would fail closed anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreProbe;

impl StoreProbe {
    /// The id read by the probe; no grant has it (grant ids are random, derived ids have a prefix).
    pub const ID: &'static str = "health-probe";

    /// The operation to ask the store: a read, so the probe writes nothing.
    pub fn op(self) -> StoreOp {
        StoreOp::GetGrant { id: GrantId::new(Self::ID) }
    }

    /// Whether the store's `result` shows it answering: `Err` with the reason code when not (its
    /// own reason, or `store_wrong_answer` for an answer of the wrong kind).
    pub fn verdict(self, result: &StoreResult) -> Result<(), &'static str> {
        match result {
            StoreResult::Grant(_) => Ok(()),
            StoreResult::Unavailable { reason } => Err(reason),
            _ => Err("store_wrong_answer"),
        }
    }

    /// The health answer for the store's `result`.
    pub fn answer(self, result: &StoreResult) -> Response<Vec<u8>> {
        match self.verdict(result) {
            Ok(()) => json_response(StatusCode::OK, &json!({"status": "ok", "store": "ok"})),
            Err(reason) => {
                let mut response = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unavailable", "store": reason}),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                response
            }
        }
    }
}

/// An OAuth request whose body must be read before core can decide (`register`, `consent`,
/// `token`, `revoke`).
#[derive(Debug)]
pub struct FormRequest {
    route: Route,
    origin: Origin,
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
    /// The gateway's `WWW-Authenticate` challenge for this server, sent when the grant behind the
    /// caller's gateway token has ended (interactive servers).
    pub challenge: Option<String>,
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
    /// The `Mcp-Session-Id` the caller sent (the aggregating MCP endpoint's own session).
    session: Option<String>,
    /// Who the caller is, for its gateway sessions.
    owner: crate::aggregate::Owner,
}

impl Forward {
    /// The upstream session this forward belongs to (see [`crate::aggregate::session_key`]).
    pub fn session_key(&self) -> crate::aggregate::SessionKey {
        crate::aggregate::session_key(&self.server, &self.credential, &self.headers)
    }
}

impl Aggregate {
    /// Plans the request from its body without gateway sessions (see
    /// [`crate::aggregate::plan`]); a plan's `target` is an index into [`Aggregate::targets`].
    pub fn plan(&self, body: &[u8]) -> crate::aggregate::Plan {
        crate::aggregate::plan(&self.request(), body)
    }

    /// Plans the request from its body with the gateway's sessions (see
    /// [`crate::aggregate::plan_in`]): what a server does for `POST` and `DELETE /mcp`.
    pub fn plan_in(&self, body: &[u8], sessions: crate::aggregate::Sessions<'_>) -> crate::aggregate::Plan {
        crate::aggregate::plan_in(&self.request(), body, sessions)
    }

    fn request(&self) -> crate::aggregate::Request<'_> {
        crate::aggregate::Request {
            endpoint: self.endpoint,
            servers: &self.names,
            delegated: self.targets.iter().all(|target| target.delegated),
            cursor: self.cursor.as_deref(),
            session: self.session.as_deref(),
            owner: self.owner,
        }
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
    /// The wall-clock time (sealed values expire by it, across processes).
    pub unix_now: UnixTime,
    /// 32 fresh random bytes (a seed for [`Random`]) when the route needs any. Only routes for
    /// which [`Route::needs_random`] holds use them, so a server can skip the system call on every
    /// other request; such a request without them is refused (503).
    pub random: Option<[u8; 32]>,
}

pub use crate::reply::error_response;
use crate::reply::json_response;

fn not_found() -> Response<Vec<u8>> {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such route or server")
}

/// A server for which the gateway is the authorization server (design §4.8): interactive oauth2
/// that does not delegate (a delegating server has none of these endpoints: 404 as an unknown name).
fn interactive<'c>(config: &'c GatewayConfig, name: &str) -> Option<&'c ServerConfig> {
    config.servers.get(name).filter(|server| server.policy.gateway_authorizes())
}

/// Decides what to do with one request (see the module docs).
pub fn decide(head: &RequestHead<'_>, context: &mut Context<'_>) -> Action {
    decide_routed(route(head.method, head.path_and_query), head, context)
}

/// [`decide`] for a request the server has routed already (it needs the route before deciding,
/// to know whether to lock the OAuth state): the path is parsed once.
pub fn decide_routed(route: Route, head: &RequestHead<'_>, context: &mut Context<'_>) -> Action {
    if route == Route::Health {
        if context.config.settings.grants.store.is_durable() {
            return Action::Probe(StoreProbe);
        }
        return Action::Respond(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    if route == Route::NotFound {
        return Action::Respond(not_found());
    }
    let config = context.config;
    // MCP routes need the public origin only to point a refused caller at the metadata; resolving
    // it (a strict parse of `Host`) on every forwarded call would be wasted work.
    match &route {
        Route::ServerMcp(name) => return mcp(head, name, config, context.unix_now),
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
    let random = context.random;
    let served = |server| authz::Served { head, origin: &origin, server, config, now: context.unix_now };
    match route {
        Route::ProtectedResourceMetadata(name) => match interactive(config, &name) {
            Some(server) => {
                let mut document = json!({
                    "resource": format!("{origin}/{name}/mcp"),
                    "authorization_servers": [format!("{origin}/{name}")],
                    "bearer_methods_supported": ["header"],
                });
                if let Some(scopes) = &server.entry.scopes {
                    document["scopes_supported"] = json!(scopes);
                }
                Action::Respond(json_response(StatusCode::OK, &document))
            }
            None => Action::Respond(not_found()),
        },
        Route::AuthorizationServerMetadata(name) => match interactive(config, &name) {
            Some(server) => Action::Respond(json_response(
                StatusCode::OK,
                &authz::authorization_server_metadata(&origin, server),
            )),
            None => Action::Respond(not_found()),
        },
        Route::Authorize(name) => match interactive(config, &name) {
            Some(server) => {
                let documents = context.oauth.as_deref().map(|oauth| &oauth.client_documents);
                authz::authorize(&served(server), random, documents, context.now)
            }
            None => Action::Respond(not_found()),
        },
        Route::Callback => authz::callback(head, &origin, config, context.unix_now, random),
        Route::Token(ref name)
        | Route::Register(ref name)
        | Route::Consent(ref name)
        | Route::Revoke(ref name) => match interactive(config, name) {
            Some(_) => Action::ReadForm(FormRequest { route, origin }),
            None => Action::Respond(not_found()),
        },
        _ => Action::Respond(not_found()),
    }
}

/// Decides an OAuth request whose body the server has read ([`Action::ReadForm`]).
pub fn decide_form(
    form: FormRequest,
    head: &RequestHead<'_>,
    body: &[u8],
    context: &mut Context<'_>,
) -> Action {
    let config = context.config;
    let Some(server) = form.route.server().and_then(|name| interactive(config, name)) else {
        return Action::Respond(not_found());
    };
    let served = authz::Served { head, origin: &form.origin, server, config, now: context.unix_now };
    let random = context.random;
    match &form.route {
        Route::Register(_) => Action::Respond(authz::register(&served, body, random)),
        Route::Token(_) => authz::token(&served, body, random),
        Route::Revoke(_) => authz::revoke(&served, body, random),
        Route::Consent(_) => {
            let Some(oauth) = context.oauth.as_deref_mut() else {
                return Action::Respond(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the gateway's OAuth state is not available to this request",
                ));
            };
            let registered = oauth.upstream_client(&server.name, &form.origin);
            let inputs = authz::ConsentInputs {
                body,
                random,
                failures: &mut oauth.consent_failures,
                now: context.now,
                registered,
            };
            authz::consent(&served, inputs)
        }
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
