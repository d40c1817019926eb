//! A whole MCP client session with OAuth, as one machine: what `mcp-oauth connect` and the
//! conformance client run.
//!
//! The session sends its MCP requests (`initialize`, `notifications/initialized`, then the
//! requested operations). The first unauthenticated answer doubles as the discovery probe: a
//! `401` starts [`Discovery`], then registration, the grant (authorization code + PKCE through the
//! user agent, or client credentials), and the request is retried with the token. A later `401`
//! refreshes the token (or re-authorizes); a `403 insufficient_scope` re-authorizes with the union
//! of the scopes held and the scopes challenged. At most `max_authorizations` authorizations run.

use http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use url::Url;

use super::authorization::{
    AuthorizationParams, PendingAuthorization, authorization_request, handle_callback,
};
use super::discovery::{ConfiguredEndpoints, Discovered, Discovery, DiscoveryConfig, DiscoveryFailure};
use super::mcp::{McpEndpoint, RpcError, SESSION_HEADER, initialize_params, parse_rpc_response, rpc_request};
use super::registration::{
    ClientIdentity, Registration, RegistrationError, RegistrationPlan, RegistrationSource, RegistrationStore,
    parse_registration_response, plan_registration,
};
use super::token::{
    Client, Grant, TokenEndpointAuth, TokenError, choose_token_endpoint_auth, parse_token_response,
    token_request,
};
use crate::Reason;
use crate::fetch_policy::{
    FetchPolicyError, SecretPins, check_secret_destination, check_url, is_local_server,
};
use crate::machine::{
    Child, InFlight, Instant, Limits, Machine, Outgoing, Performer, RequestId, RequestIds, Step,
    TransportError,
};
use crate::metadata::TokenResponse;
use crate::secret::Secret;
use crate::www_authenticate::parse_bearer;

/// Which grant obtains the access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    /// Interactive: authorization code with PKCE through the user agent.
    AuthorizationCode,
    /// Machine-to-machine client credentials.
    ClientCredentials,
}

/// One MCP operation after initialization.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    /// `tools/list`.
    ListTools,
    /// `tools/call` with a tool name and JSON arguments.
    CallTool {
        /// The tool.
        name: String,
        /// Its arguments.
        arguments: Value,
    },
}

impl Operation {
    fn method(&self) -> &'static str {
        match self {
            Self::ListTools => "tools/list",
            Self::CallTool { .. } => "tools/call",
        }
    }

    fn params(&self) -> Value {
        match self {
            Self::ListTools => json!({}),
            Self::CallTool { name, arguments } => json!({"name": name, "arguments": arguments}),
        }
    }
}

/// Everything a session needs; the random bytes come from the caller (core draws none).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The MCP endpoint.
    pub server_url: Url,
    /// The protocol version to request.
    pub protocol_version: String,
    /// The grant.
    pub grant: GrantKind,
    /// Pre-registered credentials, metadata document URL, client name.
    pub identity: ClientIdentity,
    /// Scopes to request instead of the discovered ones.
    pub scopes: Option<Vec<String>>,
    /// Where the user agent returns (loopback for a CLI).
    pub redirect_uri: Url,
    /// Configured token endpoint client authentication.
    pub token_endpoint_auth: Option<TokenEndpointAuth>,
    /// Accept servers that omit `code_challenge_methods_supported`.
    pub assume_s256: bool,
    /// Probe discovery candidates in parallel.
    pub parallel_discovery: bool,
    /// Configured endpoints.
    pub configured: ConfiguredEndpoints,
    /// The operations after initialization.
    pub operations: Vec<Operation>,
    /// The most authorizations (initial plus step-ups) to run.
    pub max_authorizations: usize,
    /// 48 random bytes per authorization attempt (PKCE verifier and `state`).
    pub entropy: Vec<[u8; 48]>,
    /// Limits on MCP requests.
    pub mcp_limits: Limits,
    /// Send a configured client secret to the token endpoint discovery names even on another
    /// origin. Design §4.2 step 7 refuses that by default (hostile metadata could collect the
    /// secret); set it only when the authorization server is trusted as a whole, as a conformance
    /// harness that hands out both the server and the credentials is. Pinning `configured.issuer`
    /// or `configured.token_endpoint` is the better fix.
    pub trust_discovered_token_endpoint: bool,
    /// A token a credential store kept from an earlier run ([`SessionOutcome::token`]): the first
    /// MCP request carries it, so an agent does not authorize again on every start. If the server
    /// refuses it, the session authorizes as it would without one. (The store itself is the
    /// embedder's: core reads no file, rmcp's `CredentialStore` is the precedent.)
    pub stored_token: Option<TokenResponse>,
    /// Headers added to every MCP request and to nothing else (never to a discovery, registration
    /// or token request): a gateway key, say. Values are secrets, masked in `Debug`. A header the
    /// session sets itself (`Authorization`, `Accept`, `Content-Type`, `Mcp-Session-Id`,
    /// `Mcp-Protocol-Version`) is overridden by the session's own value.
    pub mcp_headers: Vec<(http::HeaderName, Secret)>,
}

impl SessionConfig {
    /// Defaults for `server_url`: interactive grant, 3 authorizations, the server's scopes.
    pub fn new(server_url: Url, redirect_uri: Url, entropy: Vec<[u8; 48]>) -> Self {
        let mcp_limits = Limits {
            max_body_bytes: 4 * 1024 * 1024,
            timeout: std::time::Duration::from_secs(30),
            allow_private_addresses: is_local_server(&server_url),
        };
        Self {
            server_url,
            protocol_version: super::discovery::DEFAULT_PROTOCOL_VERSION.to_owned(),
            grant: GrantKind::AuthorizationCode,
            identity: ClientIdentity { client_name: "mcp-oauth".to_owned(), ..ClientIdentity::default() },
            scopes: None,
            redirect_uri,
            token_endpoint_auth: None,
            assume_s256: false,
            parallel_discovery: false,
            configured: ConfiguredEndpoints::default(),
            operations: vec![Operation::ListTools],
            max_authorizations: 3,
            entropy,
            mcp_limits,
            trust_discovered_token_endpoint: false,
            stored_token: None,
            mcp_headers: Vec::new(),
        }
    }
}

/// A completed session.
#[derive(Clone, Debug)]
pub struct SessionOutcome {
    /// The protocol version the server chose.
    pub protocol_version: Option<String>,
    /// The `initialize` result.
    pub server_info: Value,
    /// Each operation's `result`, in order.
    pub results: Vec<Value>,
    /// What discovery found, if authorization was needed.
    pub discovery: Option<Discovered>,
    /// How many authorizations ran.
    pub authorizations: usize,
    /// The scopes of the last token request.
    pub scopes: Vec<String>,
    /// The token the session ended with, for the embedder's credential store (its `Debug` masks
    /// the secrets); hand it back as [`SessionConfig::stored_token`] on the next start.
    pub token: Option<TokenResponse>,
    /// The client registration the session used, so a dynamically registered client can be
    /// reused (as [`SessionConfig::identity`]) instead of registering again.
    pub registration: Option<Registration>,
}

/// Why a session failed; each variant names the step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server URL is refused by the fetch policy, or a request could not be built.
    #[error("the MCP server URL is refused: {0}")]
    Blocked(String),
    /// A request the session was about to send was refused by the fetch policy (nothing was
    /// sent): a clear-text or private endpoint named by metadata, or a configured client secret
    /// bound for an endpoint configuration did not pin. The reason is the policy's.
    #[error("{step}: {error}")]
    Refused {
        /// The request's purpose (`client_registration`, `token`, ...).
        step: &'static str,
        /// Why.
        error: FetchPolicyError,
    },
    /// Discovery failed.
    #[error("discovery failed: {0}")]
    Discovery(DiscoveryFailure),
    /// No client ID could be obtained.
    #[error("client registration failed: {0}")]
    Registration(RegistrationError),
    /// The authorization request could not be built.
    #[error("authorization failed: {0}")]
    Authorization(#[from] super::authorization::AuthorizationError),
    /// The user agent's redirect was not a valid authorization response.
    #[error("the authorization response was refused: {0}")]
    Callback(#[from] super::authorization::CallbackError),
    /// The user agent did not come back with a redirect.
    #[error("the authorization endpoint did not redirect back (HTTP {0})")]
    NoRedirect(u16),
    /// The authorization server answered with a page for a person (a sign-in or consent page)
    /// instead of redirecting back: a headless user agent cannot go on.
    #[error(
        "the authorization server answered with a sign-in page at {0} instead of redirecting back; a person must sign in there: run without --headless"
    )]
    LoginPage(String),
    /// The token endpoint issued no token.
    #[error("the token request failed: {0}")]
    Token(TokenError),
    /// Client credentials need a configured client ID and secret.
    #[error("client_credentials needs a configured client_id and client_secret")]
    MissingClientCredentials,
    /// The server has no token endpoint.
    #[error("the authorization server publishes no token_endpoint")]
    NoTokenEndpoint,
    /// A request got no response.
    #[error("{step}: {error}")]
    Transport {
        /// The step.
        step: &'static str,
        /// What happened.
        error: TransportError,
    },
    /// An MCP request failed.
    #[error("{step}: {error}")]
    Rpc {
        /// The MCP method.
        step: &'static str,
        /// What happened.
        error: RpcError,
    },
    /// Still unauthorized after the allowed number of authorizations.
    #[error("the server still refuses after {0} authorization(s)")]
    TooManyAuthorizations(usize),
    /// The caller supplied too few random byte sets.
    #[error("no random bytes left for another authorization")]
    EntropyExhausted,
}

impl Reason for SessionError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Blocked(_) => "blocked_by_fetch_policy",
            Self::Refused { error, .. } => error.reason(),
            Self::Discovery(failure) => failure.reason(),
            Self::Registration(error) => error.reason(),
            Self::Authorization(error) => error.reason(),
            Self::Callback(error) => error.reason(),
            Self::NoRedirect(_) => "no_redirect",
            Self::LoginPage(_) => "login_page",
            Self::Token(error) => error.reason(),
            Self::MissingClientCredentials => "missing_client_credentials",
            Self::NoTokenEndpoint => "no_token_endpoint",
            Self::Transport { error, .. } => error.reason(),
            Self::Rpc { error, .. } => error.reason(),
            Self::TooManyAuthorizations(_) => "too_many_authorizations",
            Self::EntropyExhausted => "entropy_exhausted",
        }
    }
}

/// Client authentication at the token endpoint, the same for every grant of one registration:
/// what the registration response assigned, else the configuration, else the metadata.
fn token_endpoint_auth(
    registration: &Registration,
    discovered: &Discovered,
    configured: Option<TokenEndpointAuth>,
) -> TokenEndpointAuth {
    let has_secret = registration.client_secret.is_some();
    match registration.token_endpoint_auth_method.as_deref() {
        Some("none") => TokenEndpointAuth::None,
        Some("client_secret_post") if has_secret => TokenEndpointAuth::ClientSecretPost,
        Some("client_secret_basic") if has_secret => TokenEndpointAuth::ClientSecretBasic,
        _ => choose_token_endpoint_auth(Some(&discovered.authorization_server), has_secret, configured),
    }
}

/// Which MCP request is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum McpStep {
    Initialize,
    Initialized,
    Operation(usize),
}

enum Phase {
    /// Ready to send the current MCP step.
    Mcp,
    McpSent(RequestId),
    Discovering(Box<Child<Discovery>>),
    Registering(RequestId),
    Authorizing(RequestId, Box<PendingAuthorization>),
    Exchanging(RequestId),
    Refreshing(RequestId),
    Finished,
}

/// The session machine; see the module docs.
pub struct Session {
    config: SessionConfig,
    ids: RequestIds,
    phase: Phase,
    step: McpStep,
    endpoint: McpEndpoint,
    rpc_id: u64,
    token: Option<TokenResponse>,
    discovered: Option<Discovered>,
    registration: Option<Registration>,
    registrations: RegistrationStore,
    scopes: Vec<String>,
    authorizations: usize,
    refreshed: bool,
    server_info: Value,
    results: Vec<Value>,
    outcome: Option<Result<SessionOutcome, SessionError>>,
    pending_send: Vec<Outgoing>,
    in_flight: InFlight,
    checked_server: bool,
}

impl Session {
    /// A session that will run `config`.
    pub fn new(config: SessionConfig) -> Self {
        let stateless = super::mcp::is_stateless(&config.protocol_version);
        let endpoint = McpEndpoint {
            url: config.server_url.clone(),
            protocol_version: stateless.then(|| config.protocol_version.clone()),
            session_id: None,
            stateless,
        };
        let scopes = config.scopes.clone().unwrap_or_default();
        let token = config.stored_token.clone();
        Self {
            config,
            ids: RequestIds::default(),
            phase: Phase::Mcp,
            step: if stateless { McpStep::Operation(0) } else { McpStep::Initialize },
            endpoint,
            rpc_id: 0,
            token,
            discovered: None,
            registration: None,
            registrations: RegistrationStore::default(),
            scopes,
            authorizations: 0,
            refreshed: false,
            server_info: Value::Null,
            results: Vec::new(),
            outcome: None,
            pending_send: Vec::new(),
            in_flight: InFlight::new(),
            checked_server: false,
        }
    }

    fn fail(&mut self, error: SessionError) {
        self.phase = Phase::Finished;
        self.outcome = Some(Err(error));
    }

    fn mcp_request(&mut self) -> Result<Request<Vec<u8>>, http::Error> {
        let (id, method, params) = match self.step {
            McpStep::Initialize => {
                self.rpc_id += 1;
                (Some(self.rpc_id), "initialize", initialize_params(&self.config.protocol_version))
            }
            McpStep::Initialized => (None, "notifications/initialized", json!({})),
            McpStep::Operation(index) => {
                self.rpc_id += 1;
                let operation = &self.config.operations[index];
                (Some(self.rpc_id), operation.method(), operation.params())
            }
        };
        let token = self.token.as_ref().map(|token| &token.access_token);
        let mut request = rpc_request(&self.endpoint, id, method, params, token)?;
        for (name, value) in &self.config.mcp_headers {
            if !request.headers().contains_key(name) {
                request.headers_mut().insert(name.clone(), http::HeaderValue::from_str(value.expose())?);
            }
        }
        Ok(request)
    }

    fn step_name(&self) -> &'static str {
        match self.step {
            McpStep::Initialize => "initialize",
            McpStep::Initialized => "notifications/initialized",
            McpStep::Operation(index) => {
                self.config.operations.get(index).map_or("operation", Operation::method)
            }
        }
    }

    /// Starts (or restarts) authorization after a refusal.
    fn authorize(&mut self, status: u16, www_authenticate: Vec<String>) {
        if self.authorizations >= self.config.max_authorizations {
            return self.fail(SessionError::TooManyAuthorizations(self.authorizations));
        }
        let challenge = parse_bearer(www_authenticate.iter().map(String::as_str)).ok().flatten();
        if let Some(challenged) = challenge.as_ref().and_then(|c| c.scope.clone()) {
            // Step-up: keep what we had and add what the server asks for.
            for scope in challenged {
                if !self.scopes.contains(&scope) {
                    self.scopes.push(scope);
                }
            }
        }
        // A 403 step-up keeps what discovery found. A 401 discovers again: the resource may have
        // moved to another authorization server, whose credentials must not be the old ones.
        let step_up = status == 403 && self.discovered.is_some();
        if step_up {
            return self.obtain_token();
        }
        let config = DiscoveryConfig {
            server_url: self.config.server_url.clone(),
            protocol_version: self.config.protocol_version.clone(),
            parallel: self.config.parallel_discovery,
            configured: self.config.configured.clone(),
            limits: DiscoveryConfig::new(self.config.server_url.clone()).limits,
        };
        let discovery = Discovery::after_probe(config, status, www_authenticate.iter().map(String::as_str));
        self.phase = Phase::Discovering(Box::new(Child::new(discovery)));
    }

    /// Registration (if needed), then the grant.
    fn obtain_token(&mut self) {
        let Some(discovered) = &self.discovered else { return };
        if self.scopes.is_empty()
            && self.config.scopes.is_none()
            && let Some(scopes) = &discovered.scopes
        {
            self.scopes = scopes.clone();
        }
        match self.config.grant {
            GrantKind::ClientCredentials => {
                if self.config.identity.client_id.is_none() || self.config.identity.client_secret.is_none() {
                    return self.fail(SessionError::MissingClientCredentials);
                }
                self.registration = Some(Registration {
                    issuer: discovered.authorization_server.issuer.clone(),
                    client_id: self.config.identity.client_id.clone().unwrap_or_default(),
                    client_secret: self.config.identity.client_secret.clone(),
                    token_endpoint_auth_method: None,
                    source: RegistrationSource::PreRegistered,
                });
                self.request_token(None);
            }
            GrantKind::AuthorizationCode => {
                let issuer = &discovered.authorization_server.issuer;
                if self.registration.as_ref().is_some_and(|registration| &registration.issuer == issuer) {
                    return self.start_authorization();
                }
                self.registration = None;
                let plan = plan_registration(
                    &discovered.authorization_server.issuer,
                    &discovered.authorization_server,
                    &self.config.identity,
                    std::slice::from_ref(&self.config.redirect_uri),
                    &self.scopes,
                    &self.registrations,
                );
                match plan {
                    Ok(RegistrationPlan::Ready(registration)) => {
                        self.registration = Some(registration);
                        self.start_authorization();
                    }
                    Ok(RegistrationPlan::Register(request)) => {
                        let limits = self.metadata_limits();
                        if let Some(id) = self.send(request, limits, Performer::Client, "client_registration")
                        {
                            self.phase = Phase::Registering(id);
                        }
                    }
                    Err(error) => self.fail(SessionError::Registration(error)),
                }
            }
        }
    }

    fn metadata_limits(&self) -> Limits {
        DiscoveryConfig::new(self.config.server_url.clone()).limits
    }

    fn start_authorization(&mut self) {
        let (Some(discovered), Some(registration)) = (&self.discovered, &self.registration) else { return };
        let Some(random) = self.config.entropy.get(self.authorizations).copied() else {
            return self.fail(SessionError::EntropyExhausted);
        };
        let params = AuthorizationParams {
            client_id: &registration.client_id,
            redirect_uri: &self.config.redirect_uri,
            scopes: &self.scopes,
            resource: &discovered.resource,
            issuer: &discovered.authorization_server.issuer,
            assume_s256: self.config.assume_s256,
        };
        let pending = match authorization_request(&discovered.authorization_server, &params, random) {
            Ok(pending) => pending,
            Err(error) => return self.fail(error.into()),
        };
        self.authorizations += 1;
        let request = Request::builder().method(Method::GET).uri(pending.url.as_str()).body(Vec::new());
        match request {
            Ok(request) => {
                let limits =
                    Limits { timeout: std::time::Duration::from_secs(300), ..self.metadata_limits() };
                if let Some(id) = self.send(request, limits, Performer::UserAgent, "authorization") {
                    self.phase = Phase::Authorizing(id, Box::new(pending));
                }
            }
            Err(error) => self.fail(SessionError::Blocked(error.to_string())),
        }
    }

    /// Sends the token request for the grant (`code` for the authorization-code grant).
    fn request_token(&mut self, code: Option<(Secret, Box<PendingAuthorization>)>) {
        let (Some(discovered), Some(registration)) = (&self.discovered, &self.registration) else { return };
        let Some(endpoint) =
            discovered.authorization_server.token_endpoint.as_deref().and_then(|e| Url::parse(e).ok())
        else {
            return self.fail(SessionError::NoTokenEndpoint);
        };
        let limits = self.metadata_limits();
        let auth = token_endpoint_auth(registration, discovered, self.config.token_endpoint_auth);
        if let Err(error) = self.check_secret_destination(registration, auth, &endpoint) {
            return self.fail(SessionError::Refused { step: "token", error });
        }
        let client = Client {
            client_id: &registration.client_id,
            client_secret: registration.client_secret.as_ref(),
            auth,
        };
        let request = match &code {
            Some((code, pending)) => token_request(
                &endpoint,
                &client,
                &Grant::AuthorizationCode {
                    code,
                    verifier: pending.pkce.verifier(),
                    redirect_uri: &pending.redirect_uri,
                },
                &[],
                Some(&pending.resource),
            ),
            None => token_request(
                &endpoint,
                &client,
                &Grant::ClientCredentials,
                &self.scopes,
                Some(&discovered.resource),
            ),
        };
        match request {
            Ok(request) => {
                if let Some(id) = self.send(request, limits, Performer::Client, "token") {
                    self.phase = Phase::Exchanging(id);
                }
            }
            Err(error) => self.fail(SessionError::Token(TokenError::InvalidResponse(error.to_string()))),
        }
    }

    /// Design §4.2 step 7: a **configured** client secret goes only to the configured
    /// `token_url`, or to an endpoint on the origin of the configured issuer or MCP server, never
    /// to one that discovery alone named elsewhere. A secret the authorization server issued at
    /// dynamic registration is its own and goes back to the endpoint its metadata names.
    fn check_secret_destination(
        &self,
        registration: &Registration,
        auth: TokenEndpointAuth,
        endpoint: &Url,
    ) -> Result<(), FetchPolicyError> {
        let sends_secret = registration.client_secret.is_some() && auth != TokenEndpointAuth::None;
        if !sends_secret
            || registration.source != RegistrationSource::PreRegistered
            || self.config.trust_discovered_token_endpoint
        {
            return Ok(());
        }
        let configured = &self.config.configured;
        let pins = SecretPins {
            server_url: &self.config.server_url,
            token_url: configured.token_endpoint.as_ref(),
            issuer: configured.issuer.as_ref(),
        };
        check_secret_destination(endpoint, &pins)
    }
}

impl Session {
    /// Queues a request through [`Outgoing::new`] (the fetch policy); a refused request fails the
    /// session and is never sent.
    fn send(
        &mut self,
        request: Request<Vec<u8>>,
        limits: Limits,
        performer: Performer,
        purpose: &'static str,
    ) -> Option<RequestId> {
        let id = self.ids.next_id();
        match Outgoing::new(id, request, limits, performer, purpose) {
            Ok(outgoing) => {
                self.pending_send.push(outgoing);
                Some(id)
            }
            Err(error) => {
                self.fail(SessionError::Refused { step: purpose, error });
                None
            }
        }
    }

    fn refresh(&mut self) -> bool {
        let (Some(discovered), Some(registration), Some(token)) =
            (&self.discovered, &self.registration, &self.token)
        else {
            return false;
        };
        let Some(refresh_token) = token.refresh_token.clone() else { return false };
        let Some(endpoint) =
            discovered.authorization_server.token_endpoint.as_deref().and_then(|e| Url::parse(e).ok())
        else {
            return false;
        };
        let auth = token_endpoint_auth(registration, discovered, self.config.token_endpoint_auth);
        let client = Client {
            client_id: &registration.client_id,
            client_secret: registration.client_secret.as_ref(),
            auth,
        };
        let grant = Grant::RefreshToken { refresh_token: &refresh_token };
        let Ok(request) = token_request(&endpoint, &client, &grant, &[], Some(&discovered.resource)) else {
            return false;
        };
        if let Err(error) = self.check_secret_destination(registration, auth, &endpoint) {
            self.fail(SessionError::Refused { step: "refresh", error });
            return true;
        }
        let limits = self.metadata_limits();
        self.refreshed = true;
        if let Some(id) = self.send(request, limits, Performer::Client, "refresh") {
            self.phase = Phase::Refreshing(id);
        }
        true
    }

    fn on_mcp_response(&mut self, response: Response<Vec<u8>>) {
        let status = response.status();
        let www_authenticate: Vec<String> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok().map(str::to_owned))
            .collect();
        if status == StatusCode::UNAUTHORIZED {
            if self.token.is_some() && !self.refreshed && self.refresh() {
                return;
            }
            self.token = None;
            return self.authorize(status.as_u16(), www_authenticate);
        }
        if status == StatusCode::FORBIDDEN {
            let challenge = parse_bearer(www_authenticate.iter().map(String::as_str)).ok().flatten();
            if challenge.as_ref().and_then(|c| c.error.as_deref()) == Some("insufficient_scope") {
                return self.authorize(status.as_u16(), www_authenticate);
            }
        }
        let step = self.step_name();
        if !status.is_success() {
            return self.fail(SessionError::Rpc { step, error: RpcError::Status(status.as_u16()) });
        }
        self.refreshed = false;
        match self.step {
            McpStep::Initialize => match parse_rpc_response(&response, self.rpc_id) {
                Ok(result) => {
                    self.endpoint.protocol_version = result
                        .get("protocolVersion")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| Some(self.config.protocol_version.clone()));
                    self.endpoint.session_id = response
                        .headers()
                        .get(SESSION_HEADER)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    self.server_info = result;
                    self.step = McpStep::Initialized;
                    self.phase = Phase::Mcp;
                }
                Err(error) => self.fail(SessionError::Rpc { step, error }),
            },
            McpStep::Initialized => self.next_operation(0),
            McpStep::Operation(index) => match parse_rpc_response(&response, self.rpc_id) {
                Ok(result) => {
                    self.results.push(result);
                    self.next_operation(index + 1);
                }
                Err(error) => self.fail(SessionError::Rpc { step, error }),
            },
        }
    }

    fn next_operation(&mut self, index: usize) {
        if index < self.config.operations.len() {
            self.step = McpStep::Operation(index);
            self.phase = Phase::Mcp;
            return;
        }
        self.phase = Phase::Finished;
        self.outcome = Some(Ok(SessionOutcome {
            protocol_version: self.endpoint.protocol_version.clone(),
            server_info: std::mem::take(&mut self.server_info),
            results: std::mem::take(&mut self.results),
            discovery: self.discovered.clone(),
            authorizations: self.authorizations,
            scopes: self.scopes.clone(),
            token: self.token.clone(),
            registration: self.registration.clone(),
        }));
    }

    fn on_redirect(&mut self, response: Response<Vec<u8>>, pending: Box<PendingAuthorization>) {
        let callback = match callback_of(&response, &pending) {
            Ok(callback) => callback,
            Err(error) => return self.fail(error),
        };
        match handle_callback(&pending, &callback) {
            Ok(code) => self.request_token(Some((code, pending))),
            Err(error) => self.fail(error.into()),
        }
    }

    fn on_token(&mut self, response: Result<Response<Vec<u8>>, TransportError>, refreshing: bool) {
        let response = match response {
            Ok(response) => response,
            Err(error) => return self.fail(SessionError::Transport { step: "token", error }),
        };
        match parse_token_response(&response) {
            Ok(mut token) => {
                if token.refresh_token.is_none()
                    && let Some(previous) = self.token.as_ref().and_then(|t| t.refresh_token.clone())
                {
                    token.refresh_token = Some(previous);
                }
                self.token = Some(token);
                self.phase = Phase::Mcp;
            }
            Err(_) if refreshing => {
                // A refused refresh falls back to a full authorization.
                self.token = None;
                self.authorize(401, Vec::new());
            }
            Err(error) => self.fail(SessionError::Token(error)),
        }
    }
}

impl Machine for Session {
    type Outcome = Result<SessionOutcome, SessionError>;

    fn poll(&mut self, now: Instant) -> Step<Self::Outcome> {
        // Every request this session emits, its own and its discovery child's, is tracked here;
        // one past its deadline is answered with a timeout before anything else happens.
        for id in self.in_flight.expire(now) {
            self.on_answer(id, Err(TransportError::Timeout), now);
        }
        let step = self.advance(now);
        self.in_flight.track(step, now)
    }

    fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<Response<Vec<u8>>, TransportError>,
        now: Instant,
    ) {
        if self.in_flight.answer(id) {
            self.on_answer(id, result, now);
        }
    }
}

impl Session {
    fn advance(&mut self, now: Instant) -> Step<Result<SessionOutcome, SessionError>> {
        for _ in 0..16 {
            if let Some(outcome) = self.outcome.take() {
                return Step::Done(outcome);
            }
            if !self.pending_send.is_empty() {
                return Step::Send(std::mem::take(&mut self.pending_send));
            }
            match std::mem::replace(&mut self.phase, Phase::Finished) {
                Phase::Mcp => {
                    if !self.checked_server {
                        self.checked_server = true;
                        if let Err(error) =
                            check_url(&self.config.server_url, self.config.mcp_limits.allow_private_addresses)
                        {
                            self.fail(SessionError::Blocked(error.to_string()));
                            continue;
                        }
                    }
                    match self.mcp_request() {
                        Ok(request) => {
                            let limits = self.config.mcp_limits;
                            let purpose = self.step_name();
                            if let Some(id) = self.send(request, limits, Performer::Client, purpose) {
                                self.phase = Phase::McpSent(id);
                            }
                        }
                        Err(error) => self.fail(SessionError::Blocked(error.to_string())),
                    }
                }
                Phase::Discovering(mut child) => match child.poll(now, &mut self.ids) {
                    Step::Send(requests) => {
                        self.phase = Phase::Discovering(child);
                        return Step::Send(requests);
                    }
                    Step::Wait(deadline) => {
                        self.phase = Phase::Discovering(child);
                        return Step::Wait(deadline);
                    }
                    Step::Done(Ok(discovered)) => {
                        self.discovered = Some(discovered);
                        self.obtain_token();
                    }
                    Step::Done(Err(failure)) => self.fail(SessionError::Discovery(failure)),
                },
                Phase::Finished => return Step::Wait(None),
                waiting => {
                    self.phase = waiting;
                    return Step::Wait(None);
                }
            }
        }
        Step::Wait(None)
    }

    fn on_answer(&mut self, id: RequestId, result: Result<Response<Vec<u8>>, TransportError>, now: Instant) {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::McpSent(sent) if sent == id => match result {
                Ok(response) => self.on_mcp_response(response),
                Err(error) => {
                    let step = self.step_name();
                    self.fail(SessionError::Transport { step, error });
                }
            },
            Phase::Discovering(mut child) => {
                child.handle_response(id, result, now);
                self.phase = Phase::Discovering(child);
            }
            Phase::Registering(sent) if sent == id => {
                let issuer = self
                    .discovered
                    .as_ref()
                    .map(|d| d.authorization_server.issuer.clone())
                    .unwrap_or_default();
                match result
                    .map_err(|error| SessionError::Transport { step: "client_registration", error })
                    .and_then(|response| {
                        parse_registration_response(&issuer, &response).map_err(SessionError::Registration)
                    }) {
                    Ok(registration) => {
                        self.registrations.insert(registration.clone());
                        self.registration = Some(registration);
                        self.start_authorization();
                    }
                    Err(error) => self.fail(error),
                }
            }
            Phase::Authorizing(sent, pending) if sent == id => match result {
                Ok(response) => self.on_redirect(response, pending),
                Err(error) => self.fail(SessionError::Transport { step: "authorization", error }),
            },
            Phase::Exchanging(sent) if sent == id => self.on_token(result, false),
            Phase::Refreshing(sent) if sent == id => self.on_token(result, true),
            other => self.phase = other,
        }
    }
}

/// Where the user agent's answer to the authorization request sends the flow: the redirect back
/// to this client, or the reason there is none. A redirect elsewhere (to a sign-in page) or an
/// HTML page is a page for a person, told apart from a callback without the flow's `state`.
fn callback_of(response: &Response<Vec<u8>>, pending: &PendingAuthorization) -> Result<Url, SessionError> {
    let place = |url: &Url| format!("{}{}", url.origin().ascii_serialization(), url.path());
    let location = response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok());
    match (response.status().is_redirection(), location.and_then(|location| pending.url.join(location).ok()))
    {
        (true, Some(target)) => {
            if place(&target) == place(&pending.redirect_uri) {
                Ok(target)
            } else {
                Err(SessionError::LoginPage(place(&target)))
            }
        }
        _ => {
            let html = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("text/html"));
            if response.status().is_success() && html {
                Err(SessionError::LoginPage(place(&pending.url)))
            } else {
                Err(SessionError::NoRedirect(response.status().as_u16()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::client::testkit::{json, raw, run_partly_answered, run_with};
    use crate::pkce::challenge_for;

    const ORIGIN: &str = "https://mcp.example.com";

    /// A tiny scripted authorization server + MCP server with PKCE, DCR, refresh and step-up.
    #[derive(Default)]
    struct Fake {
        codes: HashMap<String, (String, Vec<String>)>,
        valid_tokens: HashMap<String, Vec<String>>,
        refresh_tokens: Vec<String>,
        issued: usize,
        required_scope_for_call: Option<String>,
        expire_next_call: bool,
        registrations: usize,
        token_requests: Vec<String>,
        iss_supported: bool,
        wrong_iss: bool,
    }

    fn query(url: &Url) -> HashMap<String, String> {
        url.query_pairs().into_owned().collect()
    }

    impl Fake {
        fn respond(&mut self, request: &http::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, TransportError> {
            let url = Url::parse(&request.uri().to_string()).unwrap();
            let auth =
                request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
            match (request.method().as_str(), url.path()) {
                ("POST", "/mcp") => self.mcp(request, auth),
                ("GET", "/.well-known/oauth-protected-resource/mcp") => json(
                    200,
                    json!({"resource": format!("{ORIGIN}/mcp"), "authorization_servers": ["https://auth.example.com"], "scopes_supported": ["mcp:read", "mcp:write"]}),
                ),
                ("GET", "/.well-known/oauth-authorization-server") => json(
                    200,
                    json!({
                        "issuer": "https://auth.example.com",
                        "authorization_endpoint": "https://auth.example.com/authorize",
                        "token_endpoint": "https://auth.example.com/token",
                        "registration_endpoint": "https://auth.example.com/register",
                        "code_challenge_methods_supported": ["S256"],
                        "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
                        "authorization_response_iss_parameter_supported": self.iss_supported,
                    }),
                ),
                ("POST", "/register") => {
                    self.registrations += 1;
                    let body: Value = serde_json::from_slice(request.body()).unwrap();
                    assert_eq!(body["token_endpoint_auth_method"], "none");
                    json(201, json!({"client_id": "dyn-client"}))
                }
                ("GET", "/authorize") => {
                    let q = query(&url);
                    assert_eq!(q["code_challenge_method"], "S256");
                    assert_eq!(q["resource"], format!("{ORIGIN}/mcp"));
                    let code = format!("code-{}", self.codes.len());
                    let scopes =
                        q.get("scope").map(|s| s.split(' ').map(str::to_owned).collect()).unwrap_or_default();
                    self.codes.insert(code.clone(), (q["code_challenge"].clone(), scopes));
                    let mut location = Url::parse(&q["redirect_uri"]).unwrap();
                    location.query_pairs_mut().append_pair("code", &code).append_pair("state", &q["state"]);
                    if self.iss_supported {
                        let iss = if self.wrong_iss {
                            "https://evil.example.com"
                        } else {
                            "https://auth.example.com"
                        };
                        location.query_pairs_mut().append_pair("iss", iss);
                    }
                    raw(302, &[("location", location.as_str())], "")
                }
                ("POST", "/token") => self.token(request),
                _ => raw(404, &[], ""),
            }
        }

        fn issue(&mut self, scopes: Vec<String>) -> Result<Response<Vec<u8>>, TransportError> {
            self.issued += 1;
            let access = format!("at-{}", self.issued);
            let refresh = format!("rt-{}", self.issued);
            self.valid_tokens.insert(access.clone(), scopes);
            self.refresh_tokens.push(refresh.clone());
            json(
                200,
                json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh}),
            )
        }

        fn token(&mut self, request: &http::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, TransportError> {
            let form: HashMap<String, String> =
                url::form_urlencoded::parse(request.body()).into_owned().collect();
            self.token_requests.push(form["grant_type"].clone());
            match form["grant_type"].as_str() {
                "authorization_code" => {
                    let Some((challenge, scopes)) = self.codes.remove(&form["code"]) else {
                        return json(400, json!({"error": "invalid_grant"}));
                    };
                    assert_eq!(challenge_for(&form["code_verifier"]), challenge, "PKCE verifier must match");
                    assert_eq!(form["resource"], format!("{ORIGIN}/mcp"));
                    self.issue(scopes)
                }
                "refresh_token" => {
                    if !self.refresh_tokens.contains(&form["refresh_token"]) {
                        return json(400, json!({"error": "invalid_grant"}));
                    }
                    self.issue(vec!["mcp:read".into(), "mcp:write".into()])
                }
                "client_credentials" => {
                    let basic = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(basic.trim_start_matches("Basic "))
                        .unwrap_or_default();
                    let post = form.get("client_secret").map(String::as_str);
                    if decoded != b"m2m:secret" && post != Some("secret") {
                        return json(401, json!({"error": "invalid_client"}));
                    }
                    self.issue(
                        form.get("scope")
                            .map(|s| s.split(' ').map(str::to_owned).collect())
                            .unwrap_or_default(),
                    )
                }
                _ => json(400, json!({"error": "unsupported_grant_type"})),
            }
        }

        fn mcp(
            &mut self,
            request: &http::Request<Vec<u8>>,
            auth: Option<String>,
        ) -> Result<Response<Vec<u8>>, TransportError> {
            let challenge = format!(
                r#"Bearer resource_metadata="{ORIGIN}/.well-known/oauth-protected-resource/mcp", scope="mcp:read""#
            );
            let scopes = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|token| self.valid_tokens.get(token).cloned());
            let Some(scopes) = scopes else {
                return raw(401, &[("www-authenticate", &challenge)], "");
            };
            let body: Value = serde_json::from_slice(request.body()).unwrap();
            let method = body["method"].as_str().unwrap_or_default().to_owned();
            if method == "tools/call" {
                if self.expire_next_call {
                    self.expire_next_call = false;
                    self.valid_tokens.clear();
                    return raw(401, &[("www-authenticate", &challenge)], "");
                }
                if let Some(required) = &self.required_scope_for_call
                    && !scopes.contains(required)
                {
                    let header = format!(r#"Bearer error="insufficient_scope", scope="{required}""#);
                    return raw(403, &[("www-authenticate", &header)], "");
                }
            }
            let id = body["id"].clone();
            let result = match method.as_str() {
                "initialize" => {
                    json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "fake"}})
                }
                "notifications/initialized" => return raw(202, &[], ""),
                "tools/list" => json!({"tools": [{"name": "echo"}]}),
                "tools/call" => {
                    json!({"content": [{"type": "text", "text": body["params"]["arguments"]["text"]}]})
                }
                _ => {
                    return json(
                        200,
                        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "nope"}}),
                    );
                }
            };
            let sse = format!(
                "event: message\ndata: {}\n\n",
                json!({"jsonrpc": "2.0", "id": id, "result": result})
            );
            raw(200, &[("content-type", "text/event-stream"), ("mcp-session-id", "sess-1")], &sse)
        }
    }

    fn config(grant: GrantKind) -> SessionConfig {
        let mut config = SessionConfig::new(
            Url::parse(&format!("{ORIGIN}/mcp")).unwrap(),
            Url::parse("http://127.0.0.1:33418/callback").unwrap(),
            vec![[1; 48], [2; 48], [3; 48]],
        );
        config.grant = grant;
        config.operations = vec![
            Operation::ListTools,
            Operation::CallTool { name: "echo".into(), arguments: json!({"text": "hi"}) },
        ];
        config
    }

    #[test]
    fn interactive_flow_discovers_registers_authorizes_and_calls() {
        let mut fake = Fake { iss_supported: true, ..Fake::default() };
        let run = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| {
            fake.respond(request)
        });
        let outcome = run.outcome.unwrap();
        assert_eq!(outcome.authorizations, 1);
        assert_eq!(outcome.results[1]["content"][0]["text"], "hi");
        assert_eq!(outcome.scopes, ["mcp:read"]);
        assert_eq!(fake.registrations, 1);
        let authorize = run.sent.iter().find(|r| r.uri().path() == "/authorize").unwrap();
        assert!(
            run.sent
                .iter()
                .filter(|r| r.uri().path() == "/mcp")
                .skip(1)
                .all(|r| r.headers().contains_key("authorization"))
        );
        assert!(authorize.uri().query().unwrap().contains("scope=mcp%3Aread"));
        let after_init = run.sent.iter().filter(|r| r.uri().path() == "/mcp").last().unwrap();
        assert_eq!(after_init.headers()["mcp-session-id"], "sess-1");
        assert_eq!(after_init.headers()["mcp-protocol-version"], "2025-11-25");
    }

    #[test]
    fn a_sign_in_page_is_named_as_such_not_as_a_state_mismatch() {
        let pending = PendingAuthorization {
            url: Url::parse("https://auth.example/authorize?client_id=c").unwrap(),
            state: Secret::new("s"),
            pkce: crate::pkce::Pkce::from_random([1; 32]),
            redirect_uri: Url::parse("http://127.0.0.1:33418/callback").unwrap(),
            resource: "https://mcp.example/mcp".into(),
            scopes: Vec::new(),
            issuer: "https://auth.example".into(),
            iss_required: false,
        };
        let answer = |status: u16, headers: &[(&str, &str)]| {
            let mut response = Response::new(Vec::new());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            response
        };
        let back = answer(302, &[("location", "http://127.0.0.1:33418/callback?code=x&state=s")]);
        assert_eq!(callback_of(&back, &pending).unwrap().path(), "/callback");
        let login = answer(302, &[("location", "/login?return=%2Fauthorize")]);
        let error = callback_of(&login, &pending).unwrap_err();
        assert_eq!(
            (error.reason(), error.to_string().contains("https://auth.example/login")),
            ("login_page", true)
        );
        let page = answer(200, &[("content-type", "text/html; charset=utf-8")]);
        assert_eq!(callback_of(&page, &pending).unwrap_err().reason(), "login_page");
        assert_eq!(callback_of(&answer(500, &[]), &pending).unwrap_err(), SessionError::NoRedirect(500));
    }

    #[test]
    fn extra_mcp_headers_go_to_the_mcp_endpoint_only() {
        let mut fake = Fake { iss_supported: true, ..Fake::default() };
        let mut config = config(GrantKind::AuthorizationCode);
        config.mcp_headers =
            vec![(http::HeaderName::from_static("x-mcp-gateway-key"), Secret::new("sk-gateway-0001"))];
        assert!(!format!("{config:?}").contains("sk-gateway-0001"), "masked in Debug");
        let run = run_with(&mut Session::new(config), |request| fake.respond(request));
        assert!(run.outcome.is_ok());
        for request in &run.sent {
            let carried = request.headers().get("x-mcp-gateway-key").is_some();
            assert_eq!(carried, request.uri().path() == "/mcp", "{}", request.uri());
        }
    }

    #[test]
    fn a_stored_token_spares_the_next_start_an_authorization() {
        let mut fake = Fake { iss_supported: true, ..Fake::default() };
        let first = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| {
            fake.respond(request)
        })
        .outcome
        .unwrap();
        let token = first.token.clone().expect("the session hands back its token");
        assert!(!format!("{first:?}").contains(token.access_token.expose()), "Debug masks it");
        let registration = first.registration.clone().expect("and its registration");

        // The next start: the stored token goes up at once; nothing is discovered or authorized.
        let mut next = config(GrantKind::AuthorizationCode);
        next.stored_token = Some(token.clone());
        next.identity.client_id = Some(registration.client_id.clone());
        let (registrations, token_requests) = (fake.registrations, fake.token_requests.len());
        let run = run_with(&mut Session::new(next), |request| fake.respond(request));
        let outcome = run.outcome.unwrap();
        assert_eq!(outcome.authorizations, 0);
        assert_eq!((fake.registrations, fake.token_requests.len()), (registrations, token_requests));
        assert!(run.sent.iter().all(|r| r.uri().path() == "/mcp"));
        let bearer = format!("Bearer {}", token.access_token.expose());
        assert_eq!(run.sent[0].headers()["authorization"], bearer.as_str());

        // A stored token the server no longer accepts: the session authorizes as usual.
        let mut stale = config(GrantKind::AuthorizationCode);
        stale.stored_token =
            Some(crate::metadata::TokenResponse { access_token: Secret::new("revoked-token"), ..token });
        let mut fresh = Fake { iss_supported: true, ..Fake::default() };
        let outcome = run_with(&mut Session::new(stale), |request| fresh.respond(request)).outcome.unwrap();
        assert_eq!(outcome.authorizations, 1);
    }

    /// Leaves each request of the interactive flow unanswered in turn: at every step the session
    /// reports a deadline while that request is in flight (checked by the test driver on every
    /// `Wait`), and finishes on its own once the deadline passes, with nobody ever answering.
    #[test]
    fn an_unanswered_request_at_any_step_times_out_instead_of_hanging() {
        let mut fake = Fake { iss_supported: true, ..Fake::default() };
        let whole = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| {
            fake.respond(request)
        });
        let steps = whole.requests.len();
        assert!(steps >= 8, "the flow has discovery, registration, authorization, token and MCP steps");
        for silent in 0..steps {
            let mut fake = Fake { iss_supported: true, ..Fake::default() };
            let mut seen = 0;
            let run = run_partly_answered(
                &mut Session::new(config(GrantKind::AuthorizationCode)),
                Instant::ZERO,
                |request| {
                    seen += 1;
                    (seen != silent + 1).then(|| fake.respond(request))
                },
            );
            assert!(run.finished_at > Instant::ZERO, "step {silent}: the outcome waited for the deadline");
            if silent == 0 {
                // The first MCP request: nothing else can happen, so the session fails at its deadline.
                let error = run.outcome.unwrap_err();
                assert_eq!(error.reason(), "timeout", "{error}");
                assert_eq!(run.finished_at, Instant::from_millis(30_000));
            }
        }
    }

    #[test]
    fn wrong_iss_never_reaches_the_token_endpoint() {
        let mut fake = Fake { iss_supported: true, wrong_iss: true, ..Fake::default() };
        let run = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| {
            fake.respond(request)
        });
        assert_eq!(run.outcome.unwrap_err().reason(), "wrong_iss");
        assert!(fake.token_requests.is_empty());
    }

    #[test]
    fn step_up_unions_scopes_and_stops_after_three_authorizations() {
        let mut fake = Fake { required_scope_for_call: Some("mcp:write".into()), ..Fake::default() };
        let run = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| {
            fake.respond(request)
        });
        let outcome = run.outcome.unwrap();
        assert_eq!(outcome.authorizations, 2);
        assert_eq!(outcome.scopes, ["mcp:read", "mcp:write"]);
        assert_eq!(fake.registrations, 1, "the registration is reused for the step-up");

        let mut stubborn = Fake { required_scope_for_call: Some("admin".into()), ..Fake::default() };
        stubborn.valid_tokens.clear();
        let mut session_config = config(GrantKind::AuthorizationCode);
        session_config.max_authorizations = 1;
        let run = run_with(&mut Session::new(session_config), |request| stubborn.respond(request));
        assert_eq!(run.outcome.unwrap_err().reason(), "too_many_authorizations");
    }

    #[test]
    fn an_expired_token_is_refreshed_once() {
        let mut fake = Fake { expire_next_call: true, ..Fake::default() };
        let run = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| {
            fake.respond(request)
        });
        let outcome = run.outcome.unwrap();
        assert_eq!(outcome.authorizations, 1);
        assert_eq!(fake.token_requests, ["authorization_code", "refresh_token"]);
    }

    #[test]
    fn client_credentials_needs_and_uses_configured_credentials() {
        let mut fake = Fake::default();
        let run = run_with(&mut Session::new(config(GrantKind::ClientCredentials)), |request| {
            fake.respond(request)
        });
        assert_eq!(run.outcome.unwrap_err().reason(), "missing_client_credentials");

        let mut configured = config(GrantKind::ClientCredentials);
        configured.identity.client_id = Some("m2m".into());
        configured.identity.client_secret = Some(Secret::new("secret"));
        // The token endpoint is on auth.example.com: the configured issuer pins that origin.
        configured.configured.issuer = Some(Url::parse("https://auth.example.com").unwrap());
        let mut fake = Fake::default();
        let run = run_with(&mut Session::new(configured), |request| fake.respond(request));
        let outcome = run.outcome.unwrap();
        assert_eq!(outcome.authorizations, 0);
        assert_eq!(fake.token_requests, ["client_credentials"]);
        assert!(!run.sent.iter().any(|r| r.uri().path() == "/authorize"));
    }

    /// Metadata for `https://auth.example.com` whose endpoints are overridden by `endpoints`.
    fn hostile_metadata(
        endpoints: Value,
    ) -> impl FnMut(&http::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, TransportError> {
        let mut fake = Fake::default();
        move |request| {
            let url = Url::parse(&request.uri().to_string()).unwrap();
            if url.path() == "/.well-known/oauth-authorization-server" {
                let mut document = json!({
                    "issuer": "https://auth.example.com",
                    "authorization_endpoint": "https://auth.example.com/authorize",
                    "token_endpoint": "https://auth.example.com/token",
                    "registration_endpoint": "https://auth.example.com/register",
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                });
                for (key, value) in endpoints.as_object().unwrap() {
                    document[key] = value.clone();
                }
                return json(200, document);
            }
            fake.respond(request)
        }
    }

    #[test]
    fn registration_over_clear_text_is_never_sent() {
        let mut respond =
            hostile_metadata(json!({"registration_endpoint": "http://auth.example.com/register"}));
        let run =
            run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |request| respond(request));
        assert!(
            run.sent.iter().all(|request| request.uri().scheme_str() == Some("https")),
            "a request went out in clear text: {:?}",
            run.sent.iter().map(|r| r.uri().to_string()).collect::<Vec<_>>()
        );
        assert_eq!(run.outcome.unwrap_err().reason(), "scheme_not_allowed");
    }

    fn m2m_config() -> SessionConfig {
        let mut configured = config(GrantKind::ClientCredentials);
        configured.identity.client_id = Some("m2m".into());
        configured.identity.client_secret = Some(Secret::new("secret"));
        configured
    }

    /// Whether any request carried the configured secret (form body or Basic header).
    fn leaked_secret(sent: &[http::Request<Vec<u8>>]) -> Vec<String> {
        let basic = base64::engine::general_purpose::STANDARD.encode("m2m:secret");
        sent.iter()
            .filter(|request| {
                String::from_utf8_lossy(request.body()).contains("client_secret=secret")
                    || request
                        .headers()
                        .get("authorization")
                        .is_some_and(|value| value.to_str().unwrap_or_default().contains(&basic))
            })
            .map(|request| request.uri().to_string())
            .collect()
    }

    #[test]
    fn a_configured_secret_never_goes_to_a_token_endpoint_only_discovery_named() {
        // Hostile metadata names a token endpoint on another host; nothing configured pins it.
        let hostile = json!({"token_endpoint": "https://collector.evil.example/token"});
        let mut respond = hostile_metadata(hostile.clone());
        let run = run_with(&mut Session::new(m2m_config()), |request| respond(request));
        assert_eq!(run.outcome.unwrap_err().reason(), "unpinned_secret_destination");
        assert!(leaked_secret(&run.sent).is_empty(), "secret sent to {:?}", leaked_secret(&run.sent));
        assert!(run.sent.iter().all(|r| r.uri().host() != Some("collector.evil.example")));

        // A configured issuer pins its own origin, not the hostile one.
        let mut pinned_issuer = m2m_config();
        pinned_issuer.configured.issuer = Some(Url::parse("https://auth.example.com").unwrap());
        let mut respond = hostile_metadata(hostile.clone());
        let run = run_with(&mut Session::new(pinned_issuer), |request| respond(request));
        assert_eq!(run.outcome.unwrap_err().reason(), "unpinned_secret_destination");
        assert!(leaked_secret(&run.sent).is_empty());

        // The interactive grant with a pre-registered confidential client: same rule.
        let mut interactive = config(GrantKind::AuthorizationCode);
        interactive.identity.client_id = Some("m2m".into());
        interactive.identity.client_secret = Some(Secret::new("secret"));
        let mut respond = hostile_metadata(hostile);
        let run = run_with(&mut Session::new(interactive), |request| respond(request));
        assert_eq!(run.outcome.unwrap_err().reason(), "unpinned_secret_destination");
        assert!(leaked_secret(&run.sent).is_empty());
    }

    #[test]
    fn trusting_the_discovered_token_endpoint_is_an_explicit_choice() {
        let hostile = json!({"token_endpoint": "https://collector.evil.example/token"});
        let mut trusting = m2m_config();
        trusting.trust_discovered_token_endpoint = true;
        let mut respond = hostile_metadata(hostile);
        let run = run_with(&mut Session::new(trusting), |request| respond(request));
        assert!(
            run.sent.iter().any(|r| r.uri().host() == Some("collector.evil.example")),
            "the opted-in client sends its token request to the discovered endpoint"
        );
    }

    #[test]
    fn a_configured_secret_goes_to_a_configured_token_url_or_the_servers_origin() {
        // A configured token_url wins over the hostile one and receives the secret.
        let mut configured = m2m_config();
        configured.configured.token_endpoint = Some(Url::parse("https://auth.example.com/token").unwrap());
        let mut respond = hostile_metadata(json!({"token_endpoint": "https://collector.evil.example/token"}));
        let run = run_with(&mut Session::new(configured), |request| respond(request));
        assert!(run.outcome.is_ok());
        assert_eq!(leaked_secret(&run.sent), ["https://auth.example.com/token"]);

        // Discovery naming a token endpoint on the MCP server's own origin is pinned by the server URL.
        let mut respond = hostile_metadata(json!({"token_endpoint": format!("{ORIGIN}/token")}));
        let run = run_with(&mut Session::new(m2m_config()), |request| respond(request));
        assert!(run.outcome.is_ok());
        assert_eq!(leaked_secret(&run.sent), [format!("{ORIGIN}/token")]);
    }

    #[test]
    fn a_dynamically_registered_secret_goes_back_to_its_authorization_server() {
        let mut fake = Fake::default();
        let mut session = Session::new(config(GrantKind::AuthorizationCode));
        let run = run_with(&mut session, |request| {
            if request.uri().path() == "/register" {
                return json(
                    201,
                    json!({"client_id": "dyn", "client_secret": "issued", "token_endpoint_auth_method": "client_secret_post"}),
                );
            }
            fake.respond(request)
        });
        assert!(run.outcome.is_ok(), "the AS's own secret is not a configured one");
        let token = run.sent.iter().find(|r| r.uri().path() == "/token").unwrap();
        assert!(String::from_utf8_lossy(token.body()).contains("client_secret=issued"));
    }

    #[test]
    fn every_request_goes_through_the_fetch_policy() {
        for (endpoints, reason) in [
            (json!({"token_endpoint": "http://auth.example.com/token"}), "scheme_not_allowed"),
            (json!({"token_endpoint": "https://169.254.169.254/token"}), "metadata_address"),
            (json!({"authorization_endpoint": "https://[64:ff9b::a9fe:a9fe]/authorize"}), "metadata_address"),
            (json!({"registration_endpoint": "https://10.0.0.1/register"}), "private_address"),
            (json!({"registration_endpoint": "https://u:p@auth.example.com/register"}), "userinfo"),
        ] {
            let mut respond = hostile_metadata(endpoints.clone());
            let run = run_with(&mut Session::new(config(GrantKind::AuthorizationCode)), |r| respond(r));
            assert_eq!(run.outcome.unwrap_err().reason(), reason, "{endpoints}");
            for request in &run.sent {
                let url = Url::parse(&request.uri().to_string()).unwrap();
                assert!(check_url(&url, false).is_ok(), "{url} was sent for {endpoints}");
            }
        }
    }
}
