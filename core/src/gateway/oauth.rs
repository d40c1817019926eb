//! The browser-facing OAuth endpoints of an interactive server: metadata, `authorize`,
//! `callback`, `token` and `register`, with the pending flows they keep and the bounds on them.
//! (The proxied flow here is replaced by the authorization-server facade of design §4.8.)

use super::*;

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
pub(super) enum Pending {
    Flow,
    Code,
}

#[derive(Debug)]
pub(super) struct PendingFlow {
    server: String,
    client_redirect_uri: Url,
    client_state: Option<String>,
    /// The public origin the flow began under; the callback must resolve to the same one.
    origin: Origin,
    started: Instant,
}

#[derive(Debug)]
pub(super) struct RelayedCode {
    server: String,
    /// The origin of the flow that relayed it; the token request must come under the same one.
    origin: Origin,
    issued: Instant,
}

pub(super) fn alive(started: Instant, now: Instant) -> bool {
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

/// RFC 8414 metadata the gateway publishes for one interactive server.
pub(super) fn authorization_server_metadata(origin: &Origin, server: &ServerConfig) -> Value {
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

pub(super) fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    let query = path_and_query.split_once('?').map(|(_, query)| query).unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The single value of a query parameter; a repeated parameter is ambiguous and refused.
pub(super) fn single(pairs: &[(String, String)], name: &str) -> Result<Option<String>, String> {
    let mut values = pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(format!("parameter `{name}` is repeated"));
    }
    Ok(first)
}

/// The most parameters an authorization request may carry.
pub(super) const MAX_AUTHORIZE_PARAMETERS: usize = 32;

/// Refuses an authorization request whose parameters are too many or too long: a stranger must
/// not make the gateway hold more than a few KiB per flow.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub(super) fn check_authorize_sizes(pairs: &[(String, String)]) -> Result<(), Response<Vec<u8>>> {
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
pub(super) fn authorize(
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

pub(super) fn redirect(location: &Url) -> Response<Vec<u8>> {
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
pub(super) fn callback(
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

pub(super) fn proxy_token(head: &RequestHead<'_>, origin: Origin, server: &ServerConfig) -> Action {
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
pub(super) fn check_token_validation(
    server: &ServerConfig,
    document: &Value,
) -> Result<(), Response<Vec<u8>>> {
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

/// The upstream exchange behind [`Action::ProxyToken`]: `request` (from [`build_token_request`])
/// under the token limits and the server's fetch policy.
pub fn proxied_token_request(
    server: &ServerConfig,
    request: http::Request<Vec<u8>>,
    limits: &CallLimits,
) -> UpstreamRequest {
    UpstreamRequest {
        request: request.map(bytes::Bytes::from),
        allow_private: crate::fetch_policy::is_local_server(&server.url),
        timeout: limits.token_timeout,
        read: Read::Whole(limits.max_token_response),
    }
}

/// The caller's answer to a proxied token request: the upstream's answer through
/// [`finish_token_response`], or the failure of the exchange (503, 504 on a timeout).
pub fn finish_proxied_token(
    server: &ServerConfig,
    answer: Result<Response<bytes::Bytes>, UpstreamFailure>,
) -> Response<Vec<u8>> {
    match answer {
        Ok(answer) => finish_token_response(server, answer.map(|body| body.to_vec())),
        Err(failure) => failure_response(CallStep::ExchangeCode, &server.name, &failure),
    }
}

/// The upstream exchange behind [`Action::ProxyRegister`]: the client's JSON `body` to `url`,
/// under the token limits and the server's fetch policy. An unknown server is a 404.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub fn proxied_register_request(
    config: &GatewayConfig,
    server: &str,
    url: &Url,
    body: bytes::Bytes,
    limits: &CallLimits,
) -> Result<UpstreamRequest, Response<Vec<u8>>> {
    let server = config.servers.get(server).ok_or_else(not_found)?;
    let unusable = || failure_response(CallStep::Register, &server.name, &UpstreamFailure::Unreachable);
    let uri = url.as_str().parse::<http::Uri>().map_err(|_| unusable())?;
    let mut request = http::Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    Ok(UpstreamRequest {
        request,
        allow_private: crate::fetch_policy::is_local_server(&server.url),
        timeout: limits.token_timeout,
        read: Read::Whole(limits.max_token_response),
    })
}

/// The caller's answer to a proxied registration: the upstream's status and JSON (`no-store`),
/// a 502 for an upstream 5xx, or the failure of the exchange.
pub fn finish_proxied_register(
    server: &str,
    answer: Result<Response<bytes::Bytes>, UpstreamFailure>,
) -> Response<Vec<u8>> {
    let failed = |failure| failure_response(CallStep::Register, server, &failure);
    match answer {
        Ok(answer) if answer.status().is_server_error() => {
            failed(UpstreamFailure::ServerError(answer.status().as_u16()))
        }
        Ok(answer) => {
            let mut response = Response::new(answer.body().to_vec());
            *response.status_mut() = answer.status();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(failure) => failed(failure),
    }
}

pub(super) fn register(server: &ServerConfig) -> Action {
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
