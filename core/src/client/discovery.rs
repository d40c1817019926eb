//! The discovery machine (design §4.2): how an MCP server wants to be authorized.
//!
//! Steps: an unauthenticated `initialize` probe; protected-resource metadata (the challenge's
//! `resource_metadata`, else the well-known locations); authorization-server metadata for each
//! listed issuer (RFC 8414, then OpenID); the Microsoft Entra fallback; and, when the server
//! publishes no resource metadata at all, the 2025-03-26 layout on the server's own origin. Every
//! candidate tried is kept in a trail with the reason it was rejected, so `mcp-oauth discover` can
//! print it. Configured endpoints win over discovered ones.

use std::fmt;

use http::{Method, Request, Response, StatusCode, header};
use url::Url;

use super::stage::{Decision, Stage};
use crate::Reason;
use crate::discovery::{
    EntraEndpoints, authorization_server_candidates, entra_fallback, issuer_matches,
    protected_resource_candidates, resource_matches,
};
use crate::fetch_policy::{FetchPolicyError, check_url, is_local_server};
use crate::machine::{
    InFlight, Instant, Limits, Machine, Outgoing, Performer, RequestId, RequestIds, Step, TransportError,
};
use crate::metadata::{AuthorizationServerMetadata, ProtectedResourceMetadata};
use crate::www_authenticate::{BearerChallenge, parse_bearer};

/// The MCP protocol revision the probe announces unless told otherwise.
pub const DEFAULT_PROTOCOL_VERSION: &str = "2025-11-25";

/// Endpoints from the configuration, which win over discovered ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfiguredEndpoints {
    /// `issuer`: use this authorization server instead of the resource metadata's list.
    pub issuer: Option<Url>,
    /// `authorization_url`.
    pub authorization_endpoint: Option<Url>,
    /// `token_url`.
    pub token_endpoint: Option<Url>,
    /// `registration_url`.
    pub registration_endpoint: Option<Url>,
}

/// What to discover and how.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The MCP endpoint.
    pub server_url: Url,
    /// The protocol version for the probe's `initialize` and the `MCP-Protocol-Version` header.
    pub protocol_version: String,
    /// Request every candidate of a stage at once (still chosen by priority).
    pub parallel: bool,
    /// Configured endpoints.
    pub configured: ConfiguredEndpoints,
    /// Per-request limits; `allow_private_addresses` is set from the server's own address.
    pub limits: Limits,
}

impl DiscoveryConfig {
    /// Sensible defaults for `server_url`: sequential, metadata limits, the fetch policy relaxed
    /// only when the server itself is on loopback or private address space.
    pub fn new(server_url: Url) -> Self {
        let limits = Limits { allow_private_addresses: is_local_server(&server_url), ..Limits::METADATA };
        Self {
            server_url,
            protocol_version: DEFAULT_PROTOCOL_VERSION.to_owned(),
            parallel: false,
            configured: ConfiguredEndpoints::default(),
            limits,
        }
    }
}

/// A discovery stage, for the trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageName {
    /// The unauthenticated `initialize`.
    Probe,
    /// RFC 9728 protected-resource metadata.
    ProtectedResource,
    /// RFC 8414 / OpenID authorization-server metadata.
    AuthorizationServer,
}

impl StageName {
    /// A short label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::ProtectedResource => "protected_resource",
            Self::AuthorizationServer => "authorization_server",
        }
    }
}

/// Why a candidate was not used (or that it was).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CandidateOutcome {
    /// Used.
    Accepted,
    /// Answered with a non-success status.
    Status(u16),
    /// No response.
    Transport(TransportError),
    /// Refused before sending.
    Blocked(FetchPolicyError),
    /// Not a JSON document of the expected shape.
    InvalidDocument(String),
    /// The resource metadata names another resource.
    ResourceMismatch(String),
    /// The authorization-server metadata names another issuer.
    IssuerMismatch(String),
    /// The resource metadata lists no authorization server.
    NoAuthorizationServers,
    /// The challenge's `resource_metadata` is on another origin than the MCP server; not fetched.
    CrossOrigin(String),
    /// The probe's answer (status and whether a Bearer challenge came with it).
    Probed {
        /// The HTTP status.
        status: u16,
        /// Whether a `WWW-Authenticate: Bearer` challenge was present and parsed.
        challenge: bool,
    },
}

impl fmt::Display for CandidateOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted => f.write_str("accepted"),
            Self::Status(status) => write!(f, "HTTP {status}"),
            Self::Transport(error) => write!(f, "{error}"),
            Self::Blocked(error) => write!(f, "{error}"),
            Self::InvalidDocument(why) => write!(f, "invalid document: {why}"),
            Self::ResourceMismatch(found) => write!(f, "resource `{found}` does not identify the server"),
            Self::IssuerMismatch(found) => {
                write!(f, "issuer `{found}` differs from the issuer it was fetched for")
            }
            Self::NoAuthorizationServers => f.write_str("no authorization_servers listed"),
            Self::CrossOrigin(origin) => {
                write!(f, "not fetched: on {origin}, another origin than the MCP server")
            }
            Self::Probed { status, challenge: true } => write!(f, "HTTP {status} with a Bearer challenge"),
            Self::Probed { status, challenge: false } => write!(f, "HTTP {status}, no Bearer challenge"),
        }
    }
}

/// One line of the discovery trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrailEntry {
    /// The stage.
    pub stage: StageName,
    /// The URL tried.
    pub url: String,
    /// What happened.
    pub outcome: CandidateOutcome,
}

/// Where the authorization-server metadata came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataSource {
    /// A fetched document.
    Document(Url),
    /// Built by the Microsoft Entra fallback.
    EntraFallback,
    /// The 2025-03-26 default endpoints on the server's origin.
    LegacyDefaults,
    /// Built entirely from configured endpoints.
    Configured,
}

/// A successful discovery.
#[derive(Clone, Debug)]
pub struct Discovered {
    /// The probe's status (a 2xx means the server answered without a token).
    pub probe_status: u16,
    /// The probe's Bearer challenge, if any.
    pub challenge: Option<BearerChallenge>,
    /// The resource metadata and where it came from, unless the server publishes none.
    pub protected_resource: Option<(Url, ProtectedResourceMetadata)>,
    /// The authorization server's issuer.
    pub issuer: Url,
    /// The authorization server's metadata, with configured endpoints applied.
    pub authorization_server: AuthorizationServerMetadata,
    /// Where that metadata came from.
    pub source: MetadataSource,
    /// The scopes to request: the challenge's, else the resource's `scopes_supported`, else none.
    pub scopes: Option<Vec<String>>,
    /// The RFC 8707 resource indicator to send (the resource metadata's `resource`, else the server URL).
    pub resource: String,
    /// Every candidate tried.
    pub trail: Vec<TrailEntry>,
}

/// Discovery failed; the trail says what was tried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct DiscoveryFailure {
    /// What went wrong.
    pub kind: DiscoveryErrorKind,
    /// Every candidate tried.
    pub trail: Vec<TrailEntry>,
}

/// What went wrong in discovery.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryErrorKind {
    /// The MCP server could not be reached for the probe.
    #[error("the MCP server did not answer the probe: {0}")]
    ProbeFailed(TransportError),
    /// The server URL is refused by the fetch policy.
    #[error("{0}")]
    Blocked(FetchPolicyError),
    /// Resource metadata exists but none of it is usable (mismatch or malformed).
    #[error("the server's protected-resource metadata was found but rejected; see the trail")]
    ProtectedResourceRejected,
    /// No authorization-server metadata could be found for any listed issuer.
    #[error("no authorization-server metadata found for any listed issuer")]
    NoAuthorizationServerMetadata,
    /// An issuer in the resource metadata is not a valid URL.
    #[error("authorization server `{0}` is not a valid issuer URL")]
    InvalidIssuer(String),
}

impl Reason for DiscoveryFailure {
    fn reason(&self) -> &'static str {
        match self.kind {
            DiscoveryErrorKind::ProbeFailed(_) => "probe_failed",
            DiscoveryErrorKind::Blocked(_) => "blocked_by_fetch_policy",
            DiscoveryErrorKind::ProtectedResourceRejected => "protected_resource_rejected",
            DiscoveryErrorKind::NoAuthorizationServerMetadata => "no_authorization_server_metadata",
            DiscoveryErrorKind::InvalidIssuer(_) => "invalid_issuer",
        }
    }
}

type PrmStage = Stage<ProtectedResourceMetadata, CandidateOutcome>;
type AsStage = Stage<AuthorizationServerMetadata, CandidateOutcome>;

enum State {
    Probe,
    Probing(RequestId),
    ProtectedResource(PrmStage),
    AuthorizationServer { stage: AsStage, issuers: Vec<Url>, owners: Vec<usize> },
    Finished,
}

/// The discovery state machine; see the module docs.
pub struct Discovery {
    config: DiscoveryConfig,
    state: State,
    ids: RequestIds,
    in_flight: InFlight,
    trail: Vec<TrailEntry>,
    probe_status: u16,
    challenge: Option<BearerChallenge>,
    protected_resource: Option<(Url, ProtectedResourceMetadata)>,
    legacy: bool,
    outcome: Option<Result<Discovered, DiscoveryFailure>>,
}

impl Discovery {
    /// A machine that will discover `config.server_url`.
    pub fn new(config: DiscoveryConfig) -> Self {
        Self {
            config,
            state: State::Probe,
            ids: RequestIds::default(),
            in_flight: InFlight::new(),
            trail: Vec::new(),
            probe_status: 0,
            challenge: None,
            protected_resource: None,
            legacy: false,
            outcome: None,
        }
    }

    /// A machine that skips the probe because the caller already sent the MCP request and got
    /// `status` with these `WWW-Authenticate` values (the session's own unauthenticated request).
    pub fn after_probe<'a>(
        config: DiscoveryConfig,
        status: u16,
        www_authenticate: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut machine = Self::new(config);
        machine.record_probe(status, www_authenticate);
        machine
    }

    fn record_probe<'a>(&mut self, status: u16, www_authenticate: impl IntoIterator<Item = &'a str>) {
        self.probe_status = status;
        if status == 401 || status == 403 {
            self.challenge = parse_bearer(www_authenticate).ok().flatten();
        }
        self.trail.push(TrailEntry {
            stage: StageName::Probe,
            url: self.config.server_url.to_string(),
            outcome: CandidateOutcome::Probed { status, challenge: self.challenge.is_some() },
        });
        self.start_protected_resource();
    }

    /// The trail so far.
    pub fn trail(&self) -> &[TrailEntry] {
        &self.trail
    }

    fn fail(&mut self, kind: DiscoveryErrorKind) {
        self.state = State::Finished;
        self.outcome = Some(Err(DiscoveryFailure { kind, trail: std::mem::take(&mut self.trail) }));
    }

    fn probe_request(&self) -> Result<Request<Vec<u8>>, http::Error> {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": self.config.protocol_version,
                "capabilities": {},
                "clientInfo": {"name": "mcp-oauth", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        Request::builder()
            .method(Method::POST)
            .uri(self.config.server_url.as_str())
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
    }

    /// A metadata GET for candidate `url`, built through [`Outgoing::new`] (the fetch policy).
    fn get(
        id: RequestId,
        url: &Url,
        protocol_version: &str,
        limits: Limits,
        purpose: &'static str,
    ) -> Result<Outgoing, CandidateOutcome> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .header(header::ACCEPT, "application/json")
            .header("mcp-protocol-version", protocol_version)
            .body(Vec::new())
            .map_err(|error| CandidateOutcome::InvalidDocument(error.to_string()))?;
        Outgoing::new(id, request, limits, Performer::Client, purpose).map_err(CandidateOutcome::Blocked)
    }

    fn start_protected_resource(&mut self) {
        let urls = protected_resource_candidates(&self.config.server_url, self.challenge.as_ref());
        self.state = State::ProtectedResource(Stage::new(urls, self.config.parallel));
    }

    fn start_authorization_servers(&mut self, issuers: Vec<Url>) {
        let mut urls = Vec::new();
        let mut owners = Vec::new();
        for (index, issuer) in issuers.iter().enumerate() {
            match authorization_server_candidates(issuer) {
                Ok(candidates) => {
                    owners.extend(candidates.iter().map(|_| index));
                    urls.extend(candidates);
                }
                Err(error) => self.trail.push(TrailEntry {
                    stage: StageName::AuthorizationServer,
                    url: issuer.to_string(),
                    outcome: CandidateOutcome::InvalidDocument(error.to_string()),
                }),
            }
        }
        self.state =
            State::AuthorizationServer { stage: Stage::new(urls, self.config.parallel), issuers, owners };
    }

    fn after_protected_resource(&mut self, stage: &mut PrmStage) {
        match stage.decision() {
            Decision::Pending => {}
            Decision::Winner(index) => {
                let url = stage.url(index).clone();
                let Some(document) = stage.take(index) else { return };
                let issuers: Result<Vec<Url>, String> = match &self.config.configured.issuer {
                    Some(issuer) => Ok(vec![issuer.clone()]),
                    None => document
                        .authorization_servers
                        .iter()
                        .map(|issuer| Url::parse(issuer).map_err(|_| issuer.clone()))
                        .collect(),
                };
                self.protected_resource = Some((url, document));
                match issuers {
                    Ok(issuers) => self.start_authorization_servers(issuers),
                    Err(issuer) => self.fail(DiscoveryErrorKind::InvalidIssuer(issuer)),
                }
            }
            Decision::Exhausted => {
                // A document that exists but is wrong must not be bypassed by the legacy layout.
                let rejected = self.trail.iter().any(|entry| {
                    entry.stage == StageName::ProtectedResource
                        && matches!(
                            entry.outcome,
                            CandidateOutcome::ResourceMismatch(_)
                                | CandidateOutcome::InvalidDocument(_)
                                | CandidateOutcome::NoAuthorizationServers
                                | CandidateOutcome::CrossOrigin(_)
                        )
                });
                if rejected {
                    return self.fail(DiscoveryErrorKind::ProtectedResourceRejected);
                }
                let issuer = match &self.config.configured.issuer {
                    Some(issuer) => issuer.clone(),
                    None => {
                        self.legacy = true;
                        let mut origin = self.config.server_url.clone();
                        origin.set_path("/");
                        origin.set_query(None);
                        origin.set_fragment(None);
                        origin
                    }
                };
                self.start_authorization_servers(vec![issuer]);
            }
        }
    }

    fn after_authorization_servers(&mut self, stage: &mut AsStage, issuers: &[Url], owners: &[usize]) {
        match stage.decision() {
            Decision::Pending => {}
            Decision::Winner(index) => {
                let url = stage.url(index).clone();
                let issuer = owners.get(index).and_then(|owner| issuers.get(*owner)).cloned();
                if let (Some(document), Some(issuer)) = (stage.take(index), issuer) {
                    self.finish(issuer, document, MetadataSource::Document(url));
                }
            }
            Decision::Exhausted => {
                if let Some((issuer, endpoints)) = issuers
                    .iter()
                    .find_map(|issuer| entra_fallback(issuer.as_str()).map(|e| (issuer.clone(), e)))
                {
                    let document = entra_metadata(&issuer, &endpoints);
                    return self.finish(issuer, document, MetadataSource::EntraFallback);
                }
                if self.legacy
                    && let Some(issuer) = issuers.first().cloned()
                {
                    let document = legacy_metadata(&issuer);
                    return self.finish(issuer, document, MetadataSource::LegacyDefaults);
                }
                let configured = &self.config.configured;
                if let (Some(issuer), Some(authorization), Some(token)) = (
                    issuers.first().cloned(),
                    configured.authorization_endpoint.clone(),
                    configured.token_endpoint.clone(),
                ) {
                    let document = AuthorizationServerMetadata {
                        issuer: issuer.to_string(),
                        authorization_endpoint: Some(authorization.to_string()),
                        token_endpoint: Some(token.to_string()),
                        ..AuthorizationServerMetadata::default()
                    };
                    return self.finish(issuer, document, MetadataSource::Configured);
                }
                self.fail(DiscoveryErrorKind::NoAuthorizationServerMetadata);
            }
        }
    }

    fn finish(&mut self, issuer: Url, mut document: AuthorizationServerMetadata, source: MetadataSource) {
        let configured = &self.config.configured;
        if let Some(endpoint) = &configured.authorization_endpoint {
            document.authorization_endpoint = Some(endpoint.to_string());
        }
        if let Some(endpoint) = &configured.token_endpoint {
            document.token_endpoint = Some(endpoint.to_string());
        }
        if let Some(endpoint) = &configured.registration_endpoint {
            document.registration_endpoint = Some(endpoint.to_string());
        }
        let scopes = self
            .challenge
            .as_ref()
            .and_then(|challenge| challenge.scope.clone())
            .or_else(|| self.protected_resource.as_ref().and_then(|(_, prm)| prm.scopes_supported.clone()))
            .filter(|scopes| !scopes.is_empty());
        let resource = self
            .protected_resource
            .as_ref()
            .map_or_else(|| self.config.server_url.to_string(), |(_, prm)| prm.resource.clone());
        self.state = State::Finished;
        self.outcome = Some(Ok(Discovered {
            probe_status: self.probe_status,
            challenge: self.challenge.clone(),
            protected_resource: self.protected_resource.take(),
            issuer,
            authorization_server: document,
            source,
            scopes,
            resource,
            trail: std::mem::take(&mut self.trail),
        }));
    }
}

fn judge_authorization_server(
    issuer: &Url,
    response: &Response<Vec<u8>>,
) -> Result<AuthorizationServerMetadata, CandidateOutcome> {
    if response.status() != StatusCode::OK {
        return Err(CandidateOutcome::Status(response.status().as_u16()));
    }
    let document: AuthorizationServerMetadata = serde_json::from_slice(response.body())
        .map_err(|error| CandidateOutcome::InvalidDocument(error.to_string()))?;
    if !issuer_matches(issuer, &document.issuer) {
        return Err(CandidateOutcome::IssuerMismatch(document.issuer.chars().take(200).collect()));
    }
    Ok(document)
}

fn blocked(stage: StageName, url: &Url, outcome: &CandidateOutcome) -> TrailEntry {
    TrailEntry { stage, url: url.to_string(), outcome: outcome.clone() }
}

fn entra_metadata(issuer: &Url, endpoints: &EntraEndpoints) -> AuthorizationServerMetadata {
    AuthorizationServerMetadata {
        issuer: issuer.to_string(),
        authorization_endpoint: Some(endpoints.authorization_endpoint.to_string()),
        token_endpoint: Some(endpoints.token_endpoint.to_string()),
        code_challenge_methods_supported: Some(vec!["S256".to_owned()]),
        ..AuthorizationServerMetadata::default()
    }
}

/// The 2025-03-26 default endpoints: `/authorize`, `/token`, `/register` on the server's origin.
fn legacy_metadata(origin: &Url) -> AuthorizationServerMetadata {
    let endpoint = |path: &str| origin.join(path).map(|url| url.to_string()).ok();
    AuthorizationServerMetadata {
        // An origin issuer is written without the trailing slash a URL serialiser adds.
        issuer: origin.origin().ascii_serialization(),
        authorization_endpoint: endpoint("/authorize"),
        token_endpoint: endpoint("/token"),
        registration_endpoint: endpoint("/register"),
        // The 2025-03-26 revision required PKCE, so S256 is implied by the layout.
        code_challenge_methods_supported: Some(vec!["S256".to_owned()]),
        ..AuthorizationServerMetadata::default()
    }
}

impl Machine for Discovery {
    type Outcome = Result<Discovered, DiscoveryFailure>;

    fn poll(&mut self, now: Instant) -> Step<Self::Outcome> {
        // Discovery has no timers of its own: every wait is a request's deadline.
        for id in self.in_flight.expire(now) {
            self.on_response(id, Err(TransportError::Timeout));
        }
        let step = self.advance();
        self.in_flight.track(step, now)
    }

    fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<Response<Vec<u8>>, TransportError>,
        _now: Instant,
    ) {
        if self.in_flight.answer(id) {
            self.on_response(id, result);
        }
    }
}

impl Discovery {
    fn advance(&mut self) -> Step<Result<Discovered, DiscoveryFailure>> {
        if let Some(outcome) = self.outcome.take() {
            return Step::Done(outcome);
        }
        let limits = self.config.limits;
        let version = self.config.protocol_version.clone();
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Probe => {
                if let Err(error) = check_url(&self.config.server_url, limits.allow_private_addresses) {
                    self.fail(DiscoveryErrorKind::Blocked(error));
                    return self.advance();
                }
                let id = self.ids.next_id();
                let outgoing = self.probe_request().map(|request| {
                    Outgoing::new(id, request, limits, Performer::Client, "probe")
                        .map_err(DiscoveryErrorKind::Blocked)
                });
                match outgoing {
                    Ok(Ok(outgoing)) => {
                        self.state = State::Probing(id);
                        Step::Send(vec![outgoing])
                    }
                    Ok(Err(kind)) => {
                        self.fail(kind);
                        self.advance()
                    }
                    Err(error) => {
                        self.fail(DiscoveryErrorKind::ProbeFailed(TransportError::Unsupported(
                            error.to_string(),
                        )));
                        self.advance()
                    }
                }
            }
            State::Probing(id) => {
                self.state = State::Probing(id);
                Step::Wait(None)
            }
            State::ProtectedResource(mut stage) => {
                let trail = &mut self.trail;
                let server_url = &self.config.server_url;
                let requests = stage.requests(&mut self.ids, |url, id| {
                    same_origin_resource_metadata(server_url, url)
                        .and_then(|()| Self::get(id, url, &version, limits, "protected_resource_metadata"))
                        .inspect_err(|outcome| {
                            trail.push(blocked(StageName::ProtectedResource, url, outcome))
                        })
                });
                if requests.is_empty() {
                    self.after_protected_resource(&mut stage);
                    if matches!(self.state, State::Finished) && self.outcome.is_none() {
                        self.state = State::ProtectedResource(stage);
                        return Step::Wait(None);
                    }
                    return self.advance();
                }
                self.state = State::ProtectedResource(stage);
                Step::Send(requests)
            }
            State::AuthorizationServer { mut stage, issuers, owners } => {
                let trail = &mut self.trail;
                let requests = stage.requests(&mut self.ids, |url, id| {
                    Self::get(id, url, &version, limits, "authorization_server_metadata").inspect_err(
                        |outcome| trail.push(blocked(StageName::AuthorizationServer, url, outcome)),
                    )
                });
                if requests.is_empty() {
                    self.after_authorization_servers(&mut stage, &issuers, &owners);
                    if matches!(self.state, State::Finished) && self.outcome.is_none() {
                        self.state = State::AuthorizationServer { stage, issuers, owners };
                        return Step::Wait(None);
                    }
                    return self.advance();
                }
                self.state = State::AuthorizationServer { stage, issuers, owners };
                Step::Send(requests)
            }
            State::Finished => Step::Wait(None),
        }
    }

    fn on_response(&mut self, id: RequestId, result: Result<Response<Vec<u8>>, TransportError>) {
        match &mut self.state {
            State::Probing(probe) if *probe == id => {
                let response = match result {
                    Ok(response) => response,
                    Err(error) => {
                        self.trail.push(TrailEntry {
                            stage: StageName::Probe,
                            url: self.config.server_url.to_string(),
                            outcome: CandidateOutcome::Transport(error.clone()),
                        });
                        return self.fail(DiscoveryErrorKind::ProbeFailed(error));
                    }
                };
                let values = response.headers().get_all(header::WWW_AUTHENTICATE);
                let values: Vec<&str> = values.iter().filter_map(|value| value.to_str().ok()).collect();
                self.record_probe(response.status().as_u16(), values);
            }
            State::ProtectedResource(stage) => {
                let Some(index) = stage.owner(id) else { return };
                let url = stage.url(index).to_string();
                let judged = match result {
                    Ok(response) => judge_protected_resource(&self.config, &response),
                    Err(error) => Err(CandidateOutcome::Transport(error)),
                };
                self.trail.push(TrailEntry {
                    stage: StageName::ProtectedResource,
                    url,
                    outcome: judged.as_ref().err().cloned().unwrap_or(CandidateOutcome::Accepted),
                });
                stage.complete(id, judged);
            }
            State::AuthorizationServer { stage, issuers, owners } => {
                let Some(index) = stage.owner(id) else { return };
                let url = stage.url(index).to_string();
                let issuer = owners.get(index).and_then(|owner| issuers.get(*owner));
                let judged = match (result, issuer) {
                    (Ok(response), Some(issuer)) => judge_authorization_server(issuer, &response),
                    (Err(error), _) => Err(CandidateOutcome::Transport(error)),
                    (Ok(_), None) => Err(CandidateOutcome::InvalidDocument("unknown issuer".into())),
                };
                self.trail.push(TrailEntry {
                    stage: StageName::AuthorizationServer,
                    url,
                    outcome: judged.as_ref().err().cloned().unwrap_or(CandidateOutcome::Accepted),
                });
                stage.complete(id, judged);
            }
            _ => {}
        }
    }
}

/// Protected-resource metadata is fetched only from the MCP server's own origin (design §4.2
/// step 7): a challenge naming `resource_metadata` elsewhere is refused before any request.
fn same_origin_resource_metadata(server_url: &Url, url: &Url) -> Result<(), CandidateOutcome> {
    if url.origin() == server_url.origin() {
        Ok(())
    } else {
        Err(CandidateOutcome::CrossOrigin(url.origin().ascii_serialization()))
    }
}

/// Accepts a protected-resource document only if it is JSON, names this server and lists an issuer.
fn judge_protected_resource(
    config: &DiscoveryConfig,
    response: &Response<Vec<u8>>,
) -> Result<ProtectedResourceMetadata, CandidateOutcome> {
    if response.status() != StatusCode::OK {
        return Err(CandidateOutcome::Status(response.status().as_u16()));
    }
    let document: ProtectedResourceMetadata = serde_json::from_slice(response.body())
        .map_err(|error| CandidateOutcome::InvalidDocument(error.to_string()))?;
    if !resource_matches(&config.server_url, &document.resource) {
        return Err(CandidateOutcome::ResourceMismatch(document.resource.chars().take(200).collect()));
    }
    if document.authorization_servers.is_empty() && config.configured.issuer.is_none() {
        return Err(CandidateOutcome::NoAuthorizationServers);
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::client::testkit::{Exchange, json, raw, run, run_from, run_partly_answered};

    const MCP: &str = "https://mcp.example.com/mcp";

    fn get(url: &str, answer: Result<Response<Vec<u8>>, TransportError>) -> Exchange {
        Exchange { method: "GET", url: url.to_owned(), answer }
    }

    fn probe(answer: Result<Response<Vec<u8>>, TransportError>) -> Exchange {
        Exchange { method: "POST", url: MCP.to_owned(), answer }
    }

    fn challenge(header: &str) -> Result<Response<Vec<u8>>, TransportError> {
        raw(401, &[("www-authenticate", header)], "")
    }

    fn prm(authorization_servers: &[&str]) -> Result<Response<Vec<u8>>, TransportError> {
        json(
            200,
            json!({"resource": MCP, "authorization_servers": authorization_servers, "scopes_supported": ["mcp:read"]}),
        )
    }

    fn as_metadata(issuer: &str) -> Result<Response<Vec<u8>>, TransportError> {
        json(
            200,
            json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "code_challenge_methods_supported": ["S256"],
            }),
        )
    }

    fn discover(script: Vec<Exchange>) -> crate::client::testkit::Run<Result<Discovered, DiscoveryFailure>> {
        let config = DiscoveryConfig::new(Url::parse(MCP).unwrap());
        run(&mut Discovery::new(config), script)
    }

    #[test]
    fn challenge_metadata_then_authorization_server() {
        let run = discover(vec![
            probe(challenge(
                r#"Bearer resource_metadata="https://mcp.example.com/prm", scope="files:read files:write""#,
            )),
            get("https://mcp.example.com/prm", prm(&["https://auth.example.com"])),
            get(
                "https://auth.example.com/.well-known/oauth-authorization-server",
                as_metadata("https://auth.example.com"),
            ),
        ]);
        let found = run.outcome.unwrap();
        assert_eq!(found.issuer.as_str(), "https://auth.example.com/");
        assert_eq!(found.scopes, Some(vec!["files:read".to_owned(), "files:write".to_owned()]));
        assert_eq!(found.resource, MCP);
        assert!(found.authorization_server.supports_s256());
        assert_eq!(run.requests.len(), 3);
        let probe = &run.sent[0];
        assert_eq!(probe.headers()["accept"], "application/json, text/event-stream");
        assert!(String::from_utf8_lossy(probe.body()).contains("\"initialize\""));
        assert!(probe.headers().get("authorization").is_none());
    }

    #[test]
    fn an_unanswered_probe_times_out_at_its_deadline() {
        let config = DiscoveryConfig::new(Url::parse(MCP).unwrap());
        let timeout = config.limits.timeout;
        let run = run_partly_answered(&mut Discovery::new(config), Instant::ZERO, |_| None);
        let failure = run.outcome.unwrap_err();
        assert_eq!(failure.kind, DiscoveryErrorKind::ProbeFailed(TransportError::Timeout));
        assert_eq!(run.finished_at, Instant::ZERO.plus(timeout));
        assert_eq!(run.requests.len(), 1);
    }

    /// A metadata candidate that does not answer in time is a timeout in the trail and discovery
    /// moves on; the late answer that arrives afterwards is ignored, even a valid document.
    #[test]
    fn a_timed_out_candidate_is_skipped_and_its_late_answer_ignored() {
        let mut discovery = Discovery::new(DiscoveryConfig::new(Url::parse(MCP).unwrap()));
        let at = Instant::from_millis;
        let Step::Send(probe) = discovery.poll(at(0)) else { panic!("the probe first") };
        discovery.handle_response(probe[0].id(), challenge("Bearer"), at(5));
        let Step::Send(first) = discovery.poll(at(5)) else { panic!("the first candidate") };
        assert_eq!(
            first[0].request().uri(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert!(matches!(discovery.poll(at(6)), Step::Wait(Some(deadline)) if deadline == at(10_005)));
        // Nobody answered by the deadline: the next candidate goes out, due 10 s later.
        let Step::Send(second) = discovery.poll(at(10_005)) else { panic!("the next candidate") };
        assert_eq!(second[0].request().uri(), "https://mcp.example.com/.well-known/oauth-protected-resource");
        discovery.handle_response(first[0].id(), prm(&["https://late.example.com"]), at(10_006));
        assert!(matches!(discovery.poll(at(10_006)), Step::Wait(Some(deadline)) if deadline == at(20_005)));
        discovery.handle_response(second[0].id(), prm(&["https://auth.example.com"]), at(10_007));
        let run = run_from(&mut discovery, at(10_007), |request| match request.uri().to_string().as_str() {
            "https://auth.example.com/.well-known/oauth-authorization-server" => {
                as_metadata("https://auth.example.com")
            }
            _ => raw(404, &[], ""),
        });
        let found = run.outcome.unwrap();
        assert_eq!(found.issuer.as_str(), "https://auth.example.com/", "the late document was ignored");
        assert_eq!(found.trail[1].outcome, CandidateOutcome::Transport(TransportError::Timeout));
        assert_eq!(found.trail[2].outcome, CandidateOutcome::Accepted);
    }

    #[test]
    fn well_known_order_and_prm_scopes() {
        let run = discover(vec![
            probe(challenge("Bearer")),
            get(
                "https://mcp.example.com/.well-known/oauth-protected-resource",
                prm(&["https://auth.example.com/tenant1"]),
            ),
            get(
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                as_metadata("https://auth.example.com/tenant1"),
            ),
        ]);
        assert_eq!(
            run.requests,
            [
                "POST https://mcp.example.com/mcp",
                "GET https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
                "GET https://mcp.example.com/.well-known/oauth-protected-resource",
                "GET https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "GET https://auth.example.com/.well-known/openid-configuration/tenant1",
            ]
        );
        let found = run.outcome.unwrap();
        assert_eq!(found.scopes, Some(vec!["mcp:read".to_owned()]));
        assert_eq!(found.trail.len(), 5);
        assert_eq!(found.trail[1].outcome, CandidateOutcome::Status(404));
    }

    #[test]
    fn a_404_chain_without_resource_metadata_uses_the_legacy_layout() {
        let run = discover(vec![probe(challenge("Bearer realm=\"x\""))]);
        let found = run.outcome.unwrap();
        assert_eq!(found.source, MetadataSource::LegacyDefaults);
        assert_eq!(
            found.authorization_server.authorization_endpoint.as_deref(),
            Some("https://mcp.example.com/authorize")
        );
        assert_eq!(
            found.authorization_server.token_endpoint.as_deref(),
            Some("https://mcp.example.com/token")
        );
        assert_eq!(
            found.authorization_server.registration_endpoint.as_deref(),
            Some("https://mcp.example.com/register")
        );
        assert!(run.requests.iter().all(|r| !r.ends_with("/authorize")));
    }

    #[test]
    fn a_path_issuer_never_fetches_the_root_document() {
        let run = discover(vec![
            probe(challenge(r#"Bearer resource_metadata="https://mcp.example.com/prm""#)),
            get("https://mcp.example.com/prm", prm(&["https://auth.example.com/tenant1"])),
            get(
                "https://auth.example.com/.well-known/oauth-authorization-server",
                as_metadata("https://auth.example.com"),
            ),
        ]);
        let failure = run.outcome.unwrap_err();
        assert_eq!(failure.reason(), "no_authorization_server_metadata");
        assert!(
            !run.requests
                .contains(&"GET https://auth.example.com/.well-known/oauth-authorization-server".to_owned())
        );
        assert_eq!(failure.trail.len(), 5);
    }

    #[test]
    fn issuer_mismatch_resource_mismatch_and_malformed_json_are_rejected() {
        let mismatch = discover(vec![
            probe(challenge(r#"Bearer resource_metadata="https://mcp.example.com/prm""#)),
            get("https://mcp.example.com/prm", prm(&["https://auth.example.com"])),
            get(
                "https://auth.example.com/.well-known/oauth-authorization-server",
                as_metadata("https://evil.example.com"),
            ),
            get("https://auth.example.com/.well-known/openid-configuration", raw(200, &[], "{not json")),
        ]);
        let failure = mismatch.outcome.unwrap_err();
        assert!(matches!(failure.trail[2].outcome, CandidateOutcome::IssuerMismatch(_)));
        assert!(matches!(failure.trail[3].outcome, CandidateOutcome::InvalidDocument(_)));

        let resource = discover(vec![
            probe(challenge(r#"Bearer resource_metadata="https://mcp.example.com/prm""#)),
            get(
                "https://mcp.example.com/prm",
                json(
                    200,
                    json!({"resource": "https://other.example.com/mcp", "authorization_servers": ["https://auth.example.com"]}),
                ),
            ),
        ]);
        assert_eq!(resource.outcome.unwrap_err().reason(), "protected_resource_rejected");
    }

    #[test]
    fn entra_fallback_when_every_candidate_fails() {
        let tenant = "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0";
        let run = discover(vec![
            probe(challenge(r#"Bearer resource_metadata="https://mcp.example.com/prm""#)),
            get("https://mcp.example.com/prm", prm(&[tenant])),
        ]);
        let found = run.outcome.unwrap();
        assert_eq!(found.source, MetadataSource::EntraFallback);
        assert_eq!(
            found.authorization_server.token_endpoint.as_deref(),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
        );
    }

    #[test]
    fn transport_failures_5xx_and_429_are_recorded_and_skipped() {
        let run = discover(vec![
            probe(challenge("Bearer")),
            get(
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
                Err(TransportError::Timeout),
            ),
            get("https://mcp.example.com/.well-known/oauth-protected-resource", raw(503, &[], "")),
            get("https://mcp.example.com/.well-known/oauth-authorization-server", raw(429, &[], "")),
            get(
                "https://mcp.example.com/.well-known/openid-configuration",
                Err(TransportError::BodyTooLarge { limit: 262_144 }),
            ),
        ]);
        let found = run.outcome.unwrap();
        let outcomes: Vec<_> = found.trail.iter().map(|entry| entry.outcome.to_string()).collect();
        assert_eq!(
            outcomes,
            [
                "HTTP 401 with a Bearer challenge",
                "timed out",
                "HTTP 503",
                "HTTP 429",
                "response body larger than 262144 bytes",
            ]
        );
        assert_eq!(found.source, MetadataSource::LegacyDefaults);
    }

    #[test]
    fn probe_failure_and_fetch_policy() {
        let run = discover(vec![probe(Err(TransportError::Connect("refused".into())))]);
        assert_eq!(run.outcome.unwrap_err().reason(), "probe_failed");

        let config = DiscoveryConfig::new(Url::parse("http://mcp.example.com/mcp").unwrap());
        let blocked = run_config(config, vec![]);
        assert_eq!(blocked.outcome.unwrap_err().reason(), "blocked_by_fetch_policy");
        assert!(blocked.requests.is_empty());

        let leaked = discover(vec![
            probe(challenge(r#"Bearer resource_metadata="https://mcp.example.com/prm""#)),
            get("https://mcp.example.com/prm", prm(&["http://169.254.169.254/latest"])),
        ]);
        let failure = leaked.outcome.unwrap_err();
        assert!(leaked.requests.iter().all(|r| !r.contains("169.254")));
        assert!(failure.trail.iter().any(|entry| matches!(entry.outcome, CandidateOutcome::Blocked(_))));
    }

    fn run_config(
        config: DiscoveryConfig,
        script: Vec<Exchange>,
    ) -> crate::client::testkit::Run<Result<Discovered, DiscoveryFailure>> {
        run(&mut Discovery::new(config), script)
    }

    #[test]
    fn parallel_mode_sends_a_stage_at_once_and_still_picks_by_priority() {
        let mut config = DiscoveryConfig::new(Url::parse(MCP).unwrap());
        config.parallel = true;
        let run = run_config(
            config,
            vec![
                probe(challenge("Bearer")),
                get(
                    "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
                    prm(&["https://a.example.com/t"]),
                ),
                get(
                    "https://mcp.example.com/.well-known/oauth-protected-resource",
                    prm(&["https://wrong.example.com"]),
                ),
                get(
                    "https://a.example.com/.well-known/openid-configuration/t",
                    as_metadata("https://a.example.com/t"),
                ),
                get(
                    "https://a.example.com/t/.well-known/openid-configuration",
                    as_metadata("https://a.example.com/t"),
                ),
            ],
        );
        let found = run.outcome.unwrap();
        assert_eq!(found.issuer.as_str(), "https://a.example.com/t");
        assert_eq!(
            found.source,
            MetadataSource::Document(
                Url::parse("https://a.example.com/.well-known/openid-configuration/t").unwrap()
            )
        );
        // The first document wins while the second is still in flight, and all three AS candidates go out together.
        assert_eq!(run.requests.len(), 6);
        assert_eq!(run.max_in_flight, 4);
    }

    #[test]
    fn configured_endpoints_win() {
        let mut config = DiscoveryConfig::new(Url::parse(MCP).unwrap());
        config.configured.token_endpoint = Some(Url::parse("https://auth.example.com/custom/token").unwrap());
        let run = run_config(
            config,
            vec![
                probe(challenge(r#"Bearer resource_metadata="https://mcp.example.com/prm""#)),
                get("https://mcp.example.com/prm", prm(&["https://auth.example.com"])),
                get(
                    "https://auth.example.com/.well-known/oauth-authorization-server",
                    as_metadata("https://auth.example.com"),
                ),
            ],
        );
        let found = run.outcome.unwrap();
        assert_eq!(
            found.authorization_server.token_endpoint.as_deref(),
            Some("https://auth.example.com/custom/token")
        );
        assert_eq!(
            found.authorization_server.authorization_endpoint.as_deref(),
            Some("https://auth.example.com/authorize")
        );
    }

    #[test]
    fn cross_origin_resource_metadata_is_never_fetched() {
        for header in [
            r#"Bearer resource_metadata="https://evil.example.com/prm""#,
            r#"Bearer resource_metadata="https://mcp.example.com:8443/prm""#,
            r#"Bearer resource_metadata="http://mcp.example.com/prm""#,
            r#"Bearer resource_metadata="https://169.254.169.254/latest/meta-data""#,
        ] {
            let run = discover(vec![probe(challenge(header))]);
            assert_eq!(run.requests, ["POST https://mcp.example.com/mcp"], "{header}");
            let failure = run.outcome.unwrap_err();
            assert_eq!(failure.reason(), "protected_resource_rejected", "{header}");
            assert!(
                failure.trail.iter().any(|entry| matches!(entry.outcome, CandidateOutcome::CrossOrigin(_))),
                "{header}: {:?}",
                failure.trail
            );
        }
    }
}
