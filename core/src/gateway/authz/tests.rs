//! The authorization-server facade driven through `decide` with scripted answers: a whole flow
//! (register, authorize, consent, callback, token, refresh, revoke, a call with the gateway's
//! token) against an in-test grant store, and each refusal design §4.8 pins.
//!
//! Compiled only under `#[cfg(test)]` (see the parent module), so the unwraps here never meet
//! outside input.

use std::collections::HashMap;

use super::*;
use crate::config::load_yaml;
use crate::grant::{LockHolder, StoreResult};

const KEY: &str = "sk-gateway-key-0001";
const T0: u64 = 1_800_000_000;

const CONFIG: &str = "
general_settings:
  master_key: sk-gateway-key-0001
  sealing_keys: [AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8]
mcp_servers:
  notes:
    url: https://notes.example/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    client_id: gw-client
    client_secret: gw-secret-value-0001
    issuer: https://auth.example
    authorization_url: https://auth.example/authorize
    token_url: https://auth.example/token
    revocation_url: https://auth.example/revoke
    scopes: [notes.read, offline_access]
  selfreg:
    url: https://selfreg.example/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    issuer: https://auth.example
    authorization_url: https://auth.example/authorize
    token_url: https://auth.example/token
    registration_url: https://auth.example/register
  other:
    url: https://other.example/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    client_id: gw-client
    authorization_url: https://auth.example/authorize
    token_url: https://auth.example/token
  delegated:
    url: https://delegated.example/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    authorization_url: https://auth.example/authorize
    delegate_auth_to_upstream: true
  reports:
    url: https://reports.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: r
    client_secret: r-secret-value-0001
    token_url: https://auth.example/token
";

fn config() -> GatewayConfig {
    let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "https://gw.example.com".to_owned());
    load_yaml(CONFIG, &env).unwrap().config
}

/// A grant store in a map, exactly the five primitives.
#[derive(Default)]
struct Store {
    grants: HashMap<String, Grant>,
    marks: HashMap<String, UnixTime>,
    locks: HashMap<String, String>,
    now: u64,
    /// Every operation answers `Unavailable` (an outage).
    down: bool,
}

impl Store {
    fn apply(&mut self, op: StoreOp) -> StoreResult {
        if self.down {
            return StoreResult::Unavailable { reason: "store_unreachable" };
        }
        let now = UnixTime::from_secs(self.now);
        match op {
            StoreOp::GetGrant { id } => StoreResult::Grant(
                self.grants.get(id.as_str()).filter(|grant| !grant.is_expired(now)).cloned().map(Box::new),
            ),
            StoreOp::PutGrant(grant) => {
                self.grants.insert(grant.id.as_str().to_owned(), *grant);
                StoreResult::Stored
            }
            StoreOp::TakeOnce { key, until } => {
                StoreResult::Taken(until > now && self.marks.insert(key.0, until).is_none())
            }
            StoreOp::AdvanceGeneration { grant, expected, now } => {
                match self.grants.get_mut(grant.as_str()) {
                    Some(grant) if grant.generation == expected => {
                        grant.generation += 1;
                        grant.rotated_at = now;
                        StoreResult::Advanced(true)
                    }
                    _ => StoreResult::Advanced(false),
                }
            }
            StoreOp::TryLock { grant, holder, .. } => {
                let free = !self.locks.contains_key(grant.as_str());
                if free {
                    self.locks.insert(grant.as_str().to_owned(), holder.0);
                }
                StoreResult::Locked(free)
            }
            StoreOp::Unlock { grant, holder } => {
                if self.locks.get(grant.as_str()) == Some(&holder.0) {
                    self.locks.remove(grant.as_str());
                }
                StoreResult::Unlocked
            }
        }
    }
}

/// One browser or client, with its cookie jar.
struct Agent {
    config: GatewayConfig,
    oauth: OAuthState,
    store: Store,
    cookies: HashMap<String, String>,
    seed: u8,
    /// The upstream token endpoint's scripted answer.
    upstream: Option<Response<Bytes>>,
    /// Upstream requests seen.
    sent: Vec<http::Request<Bytes>>,
    /// Audit events the machines reported.
    audit: Vec<Audit>,
}

impl Agent {
    fn new() -> Self {
        Self {
            config: config(),
            oauth: OAuthState::default(),
            store: Store { now: T0, ..Store::default() },
            cookies: HashMap::new(),
            seed: 0,
            upstream: None,
            sent: Vec::new(),
            audit: Vec::new(),
        }
    }

    fn request(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Response<Vec<u8>> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.example.com"));
        if !self.cookies.is_empty() {
            let jar: Vec<String> =
                self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
            headers.insert(header::COOKIE, HeaderValue::from_str(&jar.join("; ")).unwrap());
        }
        for (name, value) in extra {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let head = RequestHead {
            method: &method,
            path_and_query: path,
            headers: &headers,
            scheme: Scheme::Https,
            peer: None,
        };
        self.seed = self.seed.wrapping_add(1);
        let random = Some([self.seed; 32]);
        let unix_now = UnixTime::from_secs(self.store.now);
        let config = self.config.clone();
        let mut context = Context {
            config: &config,
            oauth: Some(&mut self.oauth),
            now: Instant::from_millis(1_000),
            unix_now,
            random,
        };
        let action = match decide(&head, &mut context) {
            Action::ReadForm(form) => decide_form(form, &head, body, &mut context),
            other => other,
        };
        let response = match action {
            Action::Respond(response) => response,
            Action::Authz(machine) => self.drive(*machine),
            other => panic!("unexpected action {other:?}"),
        };
        for value in response.headers().get_all(header::SET_COOKIE) {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        response
    }

    fn drive(&mut self, mut machine: Authz) -> Response<Vec<u8>> {
        for _ in 0..20 {
            match machine.poll() {
                AuthzStep::Store(op) => machine.handle_store(self.store.apply(op)),
                AuthzStep::Send(request) => {
                    self.sent.push(request.request);
                    machine.handle_answer(self.upstream.clone().ok_or(UpstreamFailure::Unreachable));
                }
                AuthzStep::Respond(response) => {
                    self.audit.extend(machine.take_audit());
                    if let Some(document) = machine.take_client_document() {
                        self.oauth.remember_client_document(document, Instant::from_millis(1_000));
                    }
                    return response;
                }
            }
        }
        panic!("the machine did not finish");
    }

    fn register(&mut self) -> (String, Value) {
        let body = br#"{"redirect_uris":["http://127.0.0.1:33418/callback"],"client_name":"Claude <b>Code</b>","token_endpoint_auth_method":"none"}"#;
        let response = self.request(Method::POST, "/notes/register", body, &[]);
        assert_eq!(response.status(), StatusCode::CREATED, "{}", String::from_utf8_lossy(response.body()));
        let document: Value = serde_json::from_slice(response.body()).unwrap();
        (document["client_id"].as_str().unwrap().to_owned(), document)
    }

    /// The consent page for a fresh authorization request; returns (sealed request, csrf).
    fn authorize(&mut self, client_id: &str, challenge: &str) -> (Response<Vec<u8>>, String, String) {
        let mut url = Url::parse("https://gw.example.com/notes/authorize").unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", "http://127.0.0.1:40000/callback")
            .append_pair("response_type", "code")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "client-state-1")
            .append_pair("resource", "https://gw.example.com/notes/mcp");
        let path = format!("{}?{}", url.path(), url.query().unwrap());
        let page = self.request(Method::GET, &path, b"", &[]);
        let html = String::from_utf8_lossy(page.body()).into_owned();
        let field = |name: &str| {
            let marker = format!("name=\"{name}\" value=\"");
            html.split(&marker).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
        };
        let (request, csrf) = (field("request"), field("csrf"));
        (page, request, csrf)
    }

    fn consent(&mut self, request: &str, csrf: &str, key: &str, decision: &str) -> Response<Vec<u8>> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("request", request)
            .append_pair("csrf", csrf)
            .append_pair("gateway_key", key)
            .append_pair("decision", decision)
            .finish();
        self.request(Method::POST, "/notes/consent", form.as_bytes(), &[])
    }

    fn token(&mut self, pairs: &[(&str, &str)]) -> Response<Vec<u8>> {
        let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        self.request(Method::POST, "/notes/token", form.as_bytes(), &[])
    }
}

fn location(response: &Response<Vec<u8>>) -> Url {
    assert_eq!(response.status(), StatusCode::FOUND, "{}", String::from_utf8_lossy(response.body()));
    Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap()
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn upstream_tokens(access: &str, refresh: Option<&str>) -> Response<Bytes> {
    let mut document =
        json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "scope": "notes.read"});
    if let Some(refresh) = refresh {
        document["refresh_token"] = json!(refresh);
    }
    Response::new(Bytes::from(document.to_string()))
}

const VERIFIER: &str = "client-verifier-0123456789-0123456789-0123456789";

/// Runs register → authorize → consent → callback → token; returns the token answer.
fn signed_in(agent: &mut Agent) -> (String, Value) {
    let (client_id, _) = agent.register();
    let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    let upstream = location(&agent.consent(&request, &csrf, KEY, "approve"));
    let state = query(&upstream, "state").unwrap();
    agent.upstream = Some(upstream_tokens("upstream-at-0001", Some("upstream-rt-0001")));
    let callback =
        format!("/callback?code=up-code&state={}&iss=https%3A%2F%2Fauth.example", urlencode(&state));
    let back = location(&agent.request(Method::GET, &callback, b"", &[]));
    let code = query(&back, "code").unwrap();
    let answer = agent.token(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", "http://127.0.0.1:40000/callback"),
        ("client_id", &client_id),
        ("code_verifier", VERIFIER),
    ]);
    assert_eq!(answer.status(), StatusCode::OK, "{}", String::from_utf8_lossy(answer.body()));
    (client_id, serde_json::from_slice(answer.body()).unwrap())
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[test]
fn metadata_names_every_endpoint_design_4_8_pins() {
    let mut agent = Agent::new();
    let response = agent.request(Method::GET, "/.well-known/oauth-authorization-server/notes", b"", &[]);
    let document: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(document["issuer"], "https://gw.example.com/notes");
    assert_eq!(document["revocation_endpoint"], "https://gw.example.com/notes/revoke");
    assert_eq!(document["client_id_metadata_document_supported"], true);
    assert_eq!(document["authorization_response_iss_parameter_supported"], true);
    assert_eq!(document["token_endpoint_auth_methods_supported"], json!(["none"]));
    let prm = agent.request(Method::GET, "/.well-known/oauth-protected-resource/notes/mcp", b"", &[]);
    let prm: Value = serde_json::from_slice(prm.body()).unwrap();
    assert_eq!(prm["authorization_servers"], json!(["https://gw.example.com/notes"]));
    assert_eq!(prm["scopes_supported"], json!(["notes.read", "offline_access"]));
}

#[test]
fn a_delegating_server_has_no_authorization_server_endpoints() {
    let mut agent = Agent::new();
    for (method, path) in [
        (Method::GET, "/.well-known/oauth-authorization-server/delegated"),
        (Method::GET, "/.well-known/oauth-protected-resource/delegated/mcp"),
        (Method::GET, "/delegated/authorize?client_id=x"),
        (Method::POST, "/delegated/register"),
        (Method::POST, "/delegated/token"),
    ] {
        let response = agent.request(method, path, b"{}", &[]);
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[test]
fn registration_is_sealed_and_repeated_whole_and_refuses_what_design_4_5_refuses() {
    let mut agent = Agent::new();
    let (client_id, document) = agent.register();
    assert_eq!(document["redirect_uris"], json!(["http://127.0.0.1:33418/callback"]));
    assert_eq!(document["token_endpoint_auth_method"], "none");
    assert_eq!(document["client_id_issued_at"], T0);
    assert!(!client_id.contains("127.0.0.1"), "the registration is sealed, not readable");
    assert!(agent.store.grants.is_empty() && agent.store.marks.is_empty(), "nothing is stored");
    for body in [
        r#"{"redirect_uris":["https://evil.example/cb"]}"#.to_owned(),
        r#"{"client_name":"x"}"#.to_owned(),
        format!(r#"{{"redirect_uris":{}}}"#, json!(vec!["http://127.0.0.1/cb"; 6])),
        format!(r#"{{"redirect_uris":["http://127.0.0.1/cb"],"client_name":"{}"}}"#, "n".repeat(101)),
        r#"{"redirect_uris":["http://127.0.0.1/cb"],"token_endpoint_auth_method":"client_secret_basic"}"#
            .to_owned(),
    ] {
        let response = agent.request(Method::POST, "/notes/register", body.as_bytes(), &[]);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    // A registration for one server does not open at another's endpoints.
    let mut url = Url::parse("https://gw.example.com/other/authorize").unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:33418/callback");
    let page = agent.request(Method::GET, &format!("/other/authorize?{}", url.query().unwrap()), b"", &[]);
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(page.body()).contains("Remove the server"), "the 400 page names the fix");
}

#[test]
fn the_consent_page_follows_the_contract() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let (page, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; form-action 'self' https://auth.example http://127.0.0.1:40000"
    );
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.starts_with("__Host-mcp_csrf=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure")
            && cookie.contains("Max-Age=600"),
        "{cookie}"
    );
    let html = String::from_utf8_lossy(page.body()).into_owned();
    assert!(html.contains("<form method=\"post\" action=\"/notes/consent\">"));
    assert!(html.contains("name=\"gateway_key\"") && html.contains("type=\"password\""));
    assert!(html.contains("value=\"approve\"") && html.contains("value=\"deny\""));
    assert!(html.contains("Claude &lt;b&gt;Code&lt;/b&gt;"), "client text is escaped");
    assert!(html.contains("an application on this computer"));
    assert!(!request.is_empty() && !csrf.is_empty());
    // A second tab reuses the cookie.
    let (second, _, csrf_again) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    assert!(second.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(csrf_again, csrf);
}

#[test]
fn authorize_refuses_requests_design_4_8_refuses() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let challenge = crate::pkce::challenge_for(VERIFIER);
    let cases = [
        format!(
            "client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fother&response_type=code&code_challenge={challenge}&code_challenge_method=S256",
            urlencode(&client_id)
        ),
        format!(
            "client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcallback&response_type=token&code_challenge={challenge}&code_challenge_method=S256",
            urlencode(&client_id)
        ),
        format!(
            "client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcallback&response_type=code&code_challenge={challenge}&code_challenge_method=plain",
            urlencode(&client_id)
        ),
        format!(
            "client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcallback&response_type=code&code_challenge={challenge}&code_challenge_method=S256&resource=https%3A%2F%2Fother.example%2Fmcp",
            urlencode(&client_id)
        ),
        format!(
            "client_id=forged&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcallback&response_type=code&code_challenge={challenge}&code_challenge_method=S256"
        ),
    ];
    for query in cases {
        let response = agent.request(Method::GET, &format!("/notes/authorize?{query}"), b"", &[]);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(response.headers().get(header::LOCATION).is_none());
    }
}

#[test]
fn consent_checks_csrf_and_the_key_and_counts_failures() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    let forged = agent.consent(&request, "A".repeat(22).as_str(), KEY, "approve");
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST, "CSRF mismatch");
    let wrong = agent.consent(&request, &csrf, "sk-wrong", "approve");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(wrong.body()).contains("name=\"request\""), "the page is shown again");
    for _ in 0..4 {
        agent.consent(&request, &csrf, "sk-wrong", "approve");
    }
    assert_eq!(agent.consent(&request, &csrf, "sk-wrong", "approve").status(), StatusCode::TOO_MANY_REQUESTS);
    let deny = location(&agent.consent(&request, &csrf, KEY, "deny"));
    assert!(agent.audit.iter().any(|audit| audit.event == "consent_denied" && audit.client_host.as_deref() == Some("127.0.0.1")));
    assert!(agent.audit.iter().any(|audit| audit.event == "consent_refused"));
    assert_eq!(query(&deny, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&deny, "state").as_deref(), Some("client-state-1"));
    assert_eq!(query(&deny, "iss").as_deref(), Some("https://gw.example.com/notes"));
}

#[test]
fn approving_sends_the_gateways_own_pkce_and_resource_upstream() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let client_challenge = crate::pkce::challenge_for(VERIFIER);
    let (_, request, csrf) = agent.authorize(&client_id, &client_challenge);
    let approved = agent.consent(&request, &format!("Bearer {csrf}"), KEY, "approve");
    assert_eq!(approved.status(), StatusCode::BAD_REQUEST, "the csrf field is compared exactly");
    let approved = agent.consent(&request, &csrf, &format!("Bearer {KEY}"), "approve");
    let upstream = location(&approved);
    assert_eq!(upstream.origin().ascii_serialization(), "https://auth.example");
    assert_eq!(query(&upstream, "client_id").as_deref(), Some("gw-client"));
    assert_eq!(query(&upstream, "redirect_uri").as_deref(), Some("https://gw.example.com/callback"));
    assert_eq!(
        query(&upstream, "resource").as_deref(),
        Some("https://notes.example/mcp"),
        "§4.3: the upstream's audience"
    );
    assert_eq!(query(&upstream, "scope").as_deref(), Some("notes.read offline_access"));
    let challenge = query(&upstream, "code_challenge").unwrap();
    assert_ne!(challenge, client_challenge, "the client's challenge never goes upstream");
    let state = query(&upstream, "state").unwrap();
    assert!(state.starts_with("notes.") && state.len() < 1024, "{} bytes", state.len());
    let cookie = approved.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("__Host-mcp_flow_") && cookie.contains("SameSite=Lax"), "{cookie}");
}

#[test]
fn a_whole_flow_ends_with_gateway_tokens_only_and_a_stored_grant() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert!(access.starts_with("mcpgw_") && refresh.starts_with("mcpgw_"));
    assert!(
        !tokens.to_string().contains("upstream-at-0001") && !tokens.to_string().contains("upstream-rt-0001")
    );
    assert_eq!(tokens["scope"], "notes.read");
    assert_eq!(tokens["expires_in"], 3600);
    let redeem = &agent.sent[0];
    let form: HashMap<String, String> = url::form_urlencoded::parse(redeem.body()).into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], "https://gw.example.com/callback");
    assert_eq!(form["resource"], "https://notes.example/mcp");
    assert!(form["code_verifier"].len() >= 43 && form["code_verifier"] != VERIFIER);
    let grant = agent.store.grants.values().find(|grant| grant.pointed().is_none()).unwrap();
    assert_eq!(grant.identity.name, "master");
    assert!(!format!("{grant:?}").contains("upstream-at-0001"), "the stored upstream token is sealed");
    assert!(
        agent.cookies.keys().all(|name| !name.starts_with("__Host-mcp_flow_")),
        "the flow cookie is cleared"
    );
    let (id, identity) = open_access_token(
        agent.config.settings.grants.sealing_keys.as_ref().unwrap(),
        "notes",
        UnixTime::from_secs(T0),
        access,
    )
    .unwrap();
    assert_eq!((id.as_str(), identity.as_str()), (grant.id.as_str(), "master"));
    assert!(
        open_access_token(
            agent.config.settings.grants.sealing_keys.as_ref().unwrap(),
            "other",
            UnixTime::from_secs(T0),
            access
        )
        .is_none()
    );
}

#[test]
fn the_callback_is_single_use_bound_to_the_browser_and_checks_iss() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    let upstream = location(&agent.consent(&request, &csrf, KEY, "approve"));
    let state = urlencode(&query(&upstream, "state").unwrap());
    agent.upstream = Some(upstream_tokens("upstream-at-0001", None));
    // Another browser (no flow cookie) gets a page, never a redirect.
    let cookies = std::mem::take(&mut agent.cookies);
    let stranger = agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]);
    assert_eq!(stranger.status(), StatusCode::BAD_REQUEST);
    agent.cookies = cookies;
    let wrong_iss = agent.request(
        Method::GET,
        &format!("/callback?code=c&state={state}&iss=https%3A%2F%2Fevil.example"),
        b"",
        &[],
    );
    assert_eq!(wrong_iss.status(), StatusCode::BAD_REQUEST);
    let tampered = agent.request(Method::GET, &format!("/callback?code=c&state={state}x"), b"", &[]);
    assert_eq!(tampered.status(), StatusCode::BAD_REQUEST);
    // Design §4.8: an upstream that advertises RFC 9207 must name itself; an answer without `iss`
    // is refused (a mix-up attack strips it).
    agent.config.servers.get_mut("notes").unwrap().issuer_in_responses = true;
    let no_iss = agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]);
    assert_eq!(no_iss.status(), StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(no_iss.body()).contains("RFC 9207"));
    agent.config.servers.get_mut("notes").unwrap().issuer_in_responses = false;
    assert!(agent.sent.is_empty(), "no code was redeemed for a refused callback");
    let first = agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]);
    assert_eq!(first.status(), StatusCode::FOUND);
    // The flow cookie is gone now; a replay with the cookie put back is refused by the mark.
    let flow_cookie = agent.cookies.clone();
    let _ = flow_cookie;
    let replay = agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]);
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(agent.sent.len(), 1, "the code was redeemed once");
}

#[test]
fn an_upstream_error_and_a_failed_validation_go_back_to_the_client() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    let upstream = location(&agent.consent(&request, &csrf, KEY, "approve"));
    let state = urlencode(&query(&upstream, "state").unwrap());
    let back = location(&agent.request(
        Method::GET,
        &format!("/callback?error=access_denied&state={state}"),
        b"",
        &[],
    ));
    assert_eq!(query(&back, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&back, "state").as_deref(), Some("client-state-1"));
    assert!(agent.store.grants.is_empty());

    let mut agent = Agent::new();
    agent.config.servers.get_mut("notes").unwrap().entry.token_validation =
        Some(serde_json::from_value(json!({"team.id": "T1"})).unwrap());
    let (client_id, _) = agent.register();
    let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    let upstream = location(&agent.consent(&request, &csrf, KEY, "approve"));
    let state = urlencode(&query(&upstream, "state").unwrap());
    agent.upstream = Some(upstream_tokens("upstream-at-0001", None));
    let back = location(&agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]));
    assert_eq!(query(&back, "error").as_deref(), Some("server_error"));
    assert_eq!(query(&back, "error_description").as_deref(), Some("token_validation_failed"));
    assert!(agent.store.grants.is_empty());
}

#[test]
fn a_code_works_once_and_a_second_use_revokes_the_grant() {
    let mut agent = Agent::new();
    let (client_id, _) = agent.register();
    let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
    let upstream = location(&agent.consent(&request, &csrf, KEY, "approve"));
    let state = urlencode(&query(&upstream, "state").unwrap());
    agent.upstream = Some(upstream_tokens("upstream-at-0001", Some("rt")));
    let back = location(&agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]));
    let code = query(&back, "code").unwrap();
    let redeem = |agent: &mut Agent, verifier: &str, redirect: &str| {
        agent.token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("client_id", &client_id),
            ("code_verifier", verifier),
        ])
    };
    let wrong_verifier = redeem(
        &mut agent,
        "another-verifier-0123456789-0123456789-012345678",
        "http://127.0.0.1:40000/callback",
    );
    assert_eq!(wrong_verifier.status(), StatusCode::BAD_REQUEST);
    let wrong_redirect = redeem(&mut agent, VERIFIER, "http://127.0.0.1:40000/elsewhere");
    assert_eq!(wrong_redirect.status(), StatusCode::BAD_REQUEST);
    assert_eq!(redeem(&mut agent, VERIFIER, "http://127.0.0.1:40000/callback").status(), StatusCode::OK);
    let replay = redeem(&mut agent, VERIFIER, "http://127.0.0.1:40000/callback");
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    let grant = agent.store.grants.values().find(|grant| grant.pointed().is_none()).unwrap();
    assert!(grant.is_expired(UnixTime::from_secs(T0)), "the replay revoked the grant");
    let unknown = agent.token(&[("grant_type", "authorization_code"), ("client_id", "forged")]);
    assert_eq!(
        unknown.status(),
        StatusCode::UNAUTHORIZED,
        "a client_id that does not open is invalid_client"
    );
}

#[test]
fn refresh_rotates_honours_the_previous_token_for_60_s_and_revokes_on_other_reuse() {
    let mut agent = Agent::new();
    let (client_id, tokens) = signed_in(&mut agent);
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |agent: &mut Agent, token: &str| {
        agent.token(&[("grant_type", "refresh_token"), ("refresh_token", token), ("client_id", &client_id)])
    };
    let rotated = refresh(&mut agent, &first);
    assert_eq!(rotated.status(), StatusCode::OK);
    let second: Value = serde_json::from_slice(rotated.body()).unwrap();
    let second = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    // The client lost the answer and retries within 60 s: a fresh pair, the grant lives.
    agent.store.now += 30;
    assert_eq!(refresh(&mut agent, &first).status(), StatusCode::OK);
    // The same token after the grace: reuse, the grant is revoked.
    agent.store.now += 60;
    assert_eq!(refresh(&mut agent, &first).status(), StatusCode::BAD_REQUEST);
    assert_eq!(refresh(&mut agent, &second).status(), StatusCode::BAD_REQUEST, "the whole grant ended");
}

#[test]
fn revoke_ends_the_grant_and_always_answers_200() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let form = format!("token={}", urlencode(&access));
    assert_eq!(agent.request(Method::POST, "/notes/revoke", form.as_bytes(), &[]).status(), StatusCode::OK);
    assert!(
        agent
            .store
            .grants
            .values()
            .filter(|grant| grant.pointed().is_none())
            .all(|grant| grant.is_expired(UnixTime::from_secs(T0)))
    );
    // Best effort upstream (design §4.8): the upstream refresh token is revoked there too.
    let revocation = agent.sent.last().unwrap();
    assert_eq!(revocation.uri(), "https://auth.example/revoke");
    let form: HashMap<String, String> = url::form_urlencoded::parse(revocation.body()).into_owned().collect();
    assert_eq!(
        (form["token"].as_str(), form["token_type_hint"].as_str()),
        ("upstream-rt-0001", "refresh_token")
    );
    assert!(!form.contains_key("resource") && !form.contains_key("grant_type"));
    assert!(
        agent
            .audit
            .iter()
            .any(|audit| audit.event == "upstream_token_revoked"
                || audit.event == "upstream_revocation_failed")
    );
    assert_eq!(agent.request(Method::POST, "/notes/revoke", b"token=nonsense", &[]).status(), StatusCode::OK);
}

fn forward_of(action: Action) -> Forward {
    match action {
        Action::Forward(forward) => forward,
        other => panic!("expected a forward, got {other:?}"),
    }
}

#[test]
fn the_gateway_token_admits_its_own_server_only_and_never_goes_upstream() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap());
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let mut headers_map = HeaderMap::new();
    headers_map.insert(header::HOST, HeaderValue::from_static("gw.example.com"));
    for (name, value) in headers {
        headers_map.insert(name, HeaderValue::from_str(value).unwrap());
    }
    let decide_for = |config: &GatewayConfig, path: &str, headers: &HeaderMap| {
        let head = RequestHead {
            method: &Method::POST,
            path_and_query: path,
            headers,
            scheme: Scheme::Https,
            peer: None,
        };
        let mut context = Context {
            config,
            oauth: None,
            now: Instant::from_millis(1),
            unix_now: UnixTime::from_secs(T0),
            random: None,
        };
        decide(&head, &mut context)
    };
    let forward = forward_of(decide_for(&agent.config, "/notes/mcp", &headers_map));
    assert!(matches!(forward.credential, OutboundCredential::Grant { .. }));
    assert_eq!(forward.resolution, AuthResolution::GatewayGrant);
    assert!(forward.headers.get(header::AUTHORIZATION).is_none(), "the gateway token is not forwarded");
    let elsewhere = decide_for(&agent.config, "/other/mcp", &headers_map);
    let Action::Respond(refused) = elsewhere else { panic!("expected a refusal") };
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        refused.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("/.well-known/oauth-protected-resource/other/mcp")
    );
    let m2m = decide_for(&agent.config, "/reports/mcp", &headers_map);
    assert!(
        matches!(m2m, Action::Respond(ref response) if response.status() == StatusCode::UNAUTHORIZED),
        "never on another route"
    );
    // The key alone does not admit an interactive server: the gateway's challenge.
    let mut keyed = HeaderMap::new();
    keyed.insert(header::HOST, HeaderValue::from_static("gw.example.com"));
    keyed.insert("x-mcp-gateway-key", HeaderValue::from_static(KEY));
    let Action::Respond(challenge) = decide_for(&agent.config, "/notes/mcp", &keyed) else {
        panic!("expected a challenge")
    };
    assert_eq!(challenge.status(), StatusCode::UNAUTHORIZED);

    // The forward runs as a call: the grant is read from the store, its upstream token attached.
    let mut call =
        Call::forward(&agent.config, &forward, Method::POST, Bytes::from_static(call), CallLimits::default())
            .unwrap()
            .with_clock(UnixTime::from_secs(T0), Some([9; 32]));
    let request = loop {
        match call.poll() {
            CallAction::Store(op) => call.handle_store(agent.store.apply(op)),
            // No session id: the gateway's own session for the grant; a stateless upstream here.
            CallAction::LookupSession(_) => {
                call.handle_session(Some(crate::aggregate::UpstreamSession::Stateless {
                    protocol_version: None,
                }))
            }
            CallAction::Send(request) => break request,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(request.request.headers()[header::AUTHORIZATION], "Bearer upstream-at-0001");
}

/// The forward a gateway access token makes at `notes` (what admission builds for it).
fn grant_forward(agent: &Agent, access: &str, challenge: Option<&str>) -> Forward {
    let keys = agent.config.settings.grants.sealing_keys.clone().unwrap();
    let (grant, identity) =
        open_access_token(&keys, "notes", UnixTime::from_secs(agent.store.now), access).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // A caller in its own upstream session: the call is passed through (no gateway session).
    headers.insert("mcp-session-id", HeaderValue::from_static("callers-own-session"));
    Forward {
        server: "notes".to_owned(),
        url: Url::parse("https://notes.example/mcp").unwrap(),
        headers,
        credential: OutboundCredential::Grant { grant, identity },
        resolution: AuthResolution::GatewayGrant,
        delegated: false,
        debug: false,
        challenge: challenge.map(str::to_owned),
    }
}

/// Drives a grant call: every store step against `store`, each upstream request answered by
/// `answer`; returns the final outcome and the requests sent.
fn drive_call(
    call: &mut Call<'_>,
    store: &mut Store,
    mut answer: impl FnMut(&UpstreamRequest) -> Response<Bytes>,
) -> (CallOutcome, Vec<String>) {
    let mut sent = Vec::new();
    for _ in 0..40 {
        match call.poll() {
            CallAction::Store(op) => call.handle_store(store.apply(op)),
            CallAction::Send(request) => {
                let response = answer(&request);
                sent.push(
                    String::from_utf8_lossy(request.request.body()).into_owned()
                        + " "
                        + request
                            .request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .map_or("", |value| value.to_str().unwrap()),
                );
                match request.read {
                    Read::Head => call.handle_head(Ok(&response)),
                    Read::Whole(_) => call.handle_whole(Ok(response)),
                }
            }
            CallAction::Wait(_) | CallAction::StoreSession(..) | CallAction::ForgetSession(..) => {}
            // An aggregated call: the upstream is stateless here.
            CallAction::LookupSession(_) => {
                call.handle_session(Some(crate::aggregate::UpstreamSession::Stateless {
                    protocol_version: None,
                }));
            }
            CallAction::Respond(outcome) => return (outcome, sent),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the call did not finish");
}

#[test]
fn an_upstream_401_refreshes_once_under_the_lock_and_retries_once() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let challenge =
        "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/notes/mcp\"";
    let forward = grant_forward(&agent, tokens["access_token"].as_str().unwrap(), Some(challenge));
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let config = agent.config.clone();
    let mut call = Call::forward(&config, &forward, Method::POST, body.clone(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0), Some([9; 32]));
    let mut mcp_calls = 0;
    let (outcome, sent) = drive_call(&mut call, &mut agent.store, |request| {
        if request.request.uri().path() == "/token" {
            upstream_tokens("upstream-at-0002", Some("upstream-rt-0002"))
        } else {
            mcp_calls += 1;
            let mut response = Response::new(Bytes::new());
            if mcp_calls == 1 {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            response
        }
    });
    assert!(
        matches!(outcome, CallOutcome::Relay(ref head) if head.status() == StatusCode::OK),
        "{outcome:?}"
    );
    assert_eq!(sent.len(), 3, "call, refresh, retry: {sent:?}");
    assert!(sent[0].ends_with("Bearer upstream-at-0001"));
    assert!(sent[1].contains("grant_type=refresh_token") && sent[1].contains("upstream-rt-0001"));
    assert!(sent[2].ends_with("Bearer upstream-at-0002"));
    assert!(agent.store.locks.is_empty(), "the lock is released");
    assert!(call.take_audit().iter().any(|audit| audit.event == "grant_refreshed"));

    // A second 401 after the refresh is the answer; no second refresh.
    let mut call = Call::forward(&config, &forward, Method::POST, body.clone(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0), Some([8; 32]));
    let (outcome, sent) = drive_call(&mut call, &mut agent.store, |request| {
        let mut response = if request.request.uri().path() == "/token" {
            upstream_tokens("upstream-at-0003", None)
        } else {
            Response::new(Bytes::new())
        };
        if request.request.uri().path() != "/token" {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        response
    });
    assert_eq!(sent.len(), 3);
    assert!(matches!(outcome, CallOutcome::Relay(ref head) if head.status() == StatusCode::UNAUTHORIZED));

    // Someone else holds the lock: the call waits and re-reads, and fails with a 503 in the end.
    agent.store.locks.insert(forward_grant(&forward), LockHolder("other".to_owned()).0);
    let mut call = Call::forward(&config, &forward, Method::POST, body.clone(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0 + 7200), Some([7; 32]));
    let mut waits = 0;
    let outcome = loop {
        match call.poll() {
            CallAction::Store(op) => call.handle_store(agent.store.apply(op)),
            CallAction::Wait(_) => waits += 1,
            CallAction::Respond(outcome) => break outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(waits > 0);
    assert!(
        matches!(outcome, CallOutcome::Answer(ref response) if response.status() == StatusCode::SERVICE_UNAVAILABLE)
    );
}

fn forward_grant(forward: &Forward) -> String {
    match &forward.credential {
        OutboundCredential::Grant { grant, .. } => grant.as_str().to_owned(),
        _ => String::new(),
    }
}

#[test]
fn a_refused_refresh_revokes_the_grant_and_answers_the_gateways_challenge() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let forward = grant_forward(
        &agent,
        tokens["access_token"].as_str().unwrap(),
        Some("Bearer resource_metadata=\"x\""),
    );
    let config = agent.config.clone();
    // Two hours on: the upstream token has expired, so the refresh comes first.
    agent.store.now = T0 + 7200;
    let mut call = Call::forward(&config, &forward, Method::GET, Bytes::new(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0 + 7200), Some([9; 32]));
    let (outcome, sent) = drive_call(&mut call, &mut agent.store, |_| {
        let mut response = Response::new(Bytes::from_static(br#"{"error":"invalid_grant"}"#));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response
    });
    assert_eq!(sent.len(), 1, "only the refresh was sent: {sent:?}");
    let CallOutcome::Answer(response) = outcome else { panic!("expected an answer") };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer resource_metadata=\"x\"");
    assert!(
        agent
            .store
            .grants
            .values()
            .filter(|grant| grant.pointed().is_none())
            .all(|grant| grant.is_expired(UnixTime::from_secs(T0 + 7200))),
        "revoked"
    );
    assert!(call.take_audit().iter().any(|audit| audit.event == "grant_revoked"));
    // Removing the key that signed in ends the grant too.
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let forward =
        grant_forward(&agent, tokens["access_token"].as_str().unwrap(), forward.challenge.as_deref());
    let mut changed = agent.config.clone();
    changed.settings.gateway_keys = vec![Secret::new("sk-new-key-0002")];
    let mut call = Call::forward(&changed, &forward, Method::GET, Bytes::new(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0), Some([9; 32]));
    let (outcome, sent) = drive_call(&mut call, &mut agent.store, |_| Response::new(Bytes::new()));
    assert!(sent.is_empty());
    assert!(
        matches!(outcome, CallOutcome::Answer(ref response) if response.status() == StatusCode::UNAUTHORIZED)
    );
}

#[test]
fn a_client_id_metadata_document_is_fetched_strictly_and_must_name_itself() {
    const DOCUMENT_URL: &str = "https://client.example/oauth/client.json";
    let challenge = crate::pkce::challenge_for(VERIFIER);
    let path = |client_id: &str| {
        format!(
            "/notes/authorize?client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A40000%2Fcallback&response_type=code&code_challenge={challenge}&code_challenge_method=S256&state=s",
            urlencode(client_id)
        )
    };
    let document = |client_id: &str| {
        Response::new(Bytes::from(
            json!({"client_id": client_id, "client_name": "Doc Client", "redirect_uris": ["http://127.0.0.1/callback"], "token_endpoint_auth_method": "none"})
                .to_string(),
        ))
    };
    let mut agent = Agent::new();
    agent.upstream = Some(document(DOCUMENT_URL));
    let page = agent.request(Method::GET, &path(DOCUMENT_URL), b"", &[]);
    assert_eq!(page.status(), StatusCode::OK, "{}", String::from_utf8_lossy(page.body()));
    let fetched = &agent.sent[0];
    assert_eq!(fetched.uri(), DOCUMENT_URL);
    assert!(
        String::from_utf8_lossy(page.body()).contains("Doc Client (client.example)"),
        "the verified host is shown"
    );

    // A document that names another client_id is refused; so is a URL the strict mode refuses.
    let mut agent = Agent::new();
    agent.upstream = Some(document("https://elsewhere.example/client.json"));
    assert_eq!(agent.request(Method::GET, &path(DOCUMENT_URL), b"", &[]).status(), StatusCode::BAD_REQUEST);
    for refused in [
        "http://client.example/c.json",
        "https://client.example:8443/c.json",
        "https://client.example/",
        "https://u:p@client.example/c.json",
    ] {
        let mut agent = Agent::new();
        agent.upstream = Some(document(refused));
        assert_eq!(
            agent.request(Method::GET, &path(refused), b"", &[]).status(),
            StatusCode::BAD_REQUEST,
            "{refused}"
        );
        assert!(agent.sent.is_empty(), "{refused} was not fetched");
    }
}

#[test]
fn without_a_client_id_the_gateway_registers_itself_upstream_once_and_carries_the_client() {
    let mut agent = Agent::new();
    agent.upstream = Some(Response::new(Bytes::from_static(
        br#"{"client_id":"gw-registered-1","client_secret":"gw-registered-secret"}"#,
    )));
    let approved = self_registering_consent(&mut agent);
    let upstream = location(&approved);
    assert_eq!(query(&upstream, "client_id").as_deref(), Some("gw-registered-1"));
    let registration: Value = serde_json::from_slice(agent.sent[0].body()).unwrap();
    assert_eq!(registration["redirect_uris"], json!(["https://gw.example.com/callback"]));
    assert!(agent.audit.iter().any(|audit| audit.event == "upstream_registered"));
    // The callback redeems with the registered client, carried sealed in the state.
    agent.upstream = Some(upstream_tokens("upstream-at-9", Some("upstream-rt-9")));
    let state = urlencode(&query(&upstream, "state").unwrap());
    let back = agent.request(Method::GET, &format!("/callback?code=c&state={state}"), b"", &[]);
    assert_eq!(back.status(), StatusCode::FOUND, "{}", String::from_utf8_lossy(back.body()));
    let redeem = agent.sent.last().unwrap();
    let basic = redeem.headers()[header::AUTHORIZATION].to_str().unwrap();
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(basic.trim_start_matches("Basic ")).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "gw-registered-1:gw-registered-secret");
    let grant = agent.store.grants.values().find(|grant| grant.pointed().is_none()).unwrap();
    assert_eq!(
        grant.upstream_client.as_ref().map(|client| client.client_id.as_str()),
        Some("gw-registered-1")
    );
    assert!(!format!("{grant:?}").contains("gw-registered-secret"), "the registered secret is sealed");
    // The registration is kept in the store, sealed, for every replica (design §4.8).
    let kept = agent.store.grants.values().find(|record| record.registration().is_some()).unwrap();
    assert_eq!(kept.registration().map(|client| client.client_id.as_str()), Some("gw-registered-1"));
    assert!(!kept.is_user_grant());
    assert!(!format!("{kept:?}").contains("gw-registered-secret"));
}

/// Runs register → authorize → consent at `selfreg` and returns the consent answer.
fn self_registering_consent(agent: &mut Agent) -> Response<Vec<u8>> {
    let body = br#"{"redirect_uris":["http://127.0.0.1:33418/callback"]}"#;
    let registered = agent.request(Method::POST, "/selfreg/register", body, &[]);
    let client_id: Value = serde_json::from_slice(registered.body()).unwrap();
    let client_id = client_id["client_id"].as_str().unwrap().to_owned();
    let challenge = crate::pkce::challenge_for(VERIFIER);
    let path = format!(
        "/selfreg/authorize?client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A40000%2Fcallback&response_type=code&code_challenge={challenge}&code_challenge_method=S256&state=s",
        urlencode(&client_id)
    );
    let page = agent.request(Method::GET, &path, b"", &[]);
    let html = String::from_utf8_lossy(page.body()).into_owned();
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        html.split(&marker).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
    };
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("request", &field("request"))
        .append_pair("csrf", &field("csrf"))
        .append_pair("gateway_key", KEY)
        .append_pair("decision", "approve")
        .finish();
    agent.request(Method::POST, "/selfreg/consent", form.as_bytes(), &[])
}

#[test]
fn another_replica_uses_the_registration_kept_in_the_store_and_an_outage_fails_closed() {
    let mut first = Agent::new();
    first.upstream = Some(Response::new(Bytes::from_static(
        br#"{"client_id":"gw-registered-1","client_secret":"gw-registered-secret"}"#,
    )));
    let approved = self_registering_consent(&mut first);
    assert_eq!(query(&location(&approved), "client_id").as_deref(), Some("gw-registered-1"));
    assert_eq!(first.sent.len(), 1, "one registration");

    // A second replica: its own process state, the same store. It registers nothing.
    let mut second = Agent::new();
    second.store = std::mem::take(&mut first.store);
    second.upstream = None;
    let approved = self_registering_consent(&mut second);
    assert_eq!(approved.status(), StatusCode::FOUND, "{}", String::from_utf8_lossy(approved.body()));
    assert_eq!(query(&location(&approved), "client_id").as_deref(), Some("gw-registered-1"));
    assert!(second.sent.is_empty(), "the kept registration was used");

    // Past the record's lifetime the gateway registers again.
    let mut third = Agent::new();
    third.store = std::mem::take(&mut second.store);
    third.store.now += crate::grant::REGISTRATION_LIFETIME.as_secs();
    third.upstream = Some(Response::new(Bytes::from_static(br#"{"client_id":"gw-registered-2"}"#)));
    let approved = self_registering_consent(&mut third);
    assert_eq!(query(&location(&approved), "client_id").as_deref(), Some("gw-registered-2"));
    assert_eq!(third.sent.len(), 1);

    // A store outage fails closed: no registration upstream, a 503 with the reason.
    let mut fourth = Agent::new();
    fourth.store.down = true;
    fourth.upstream = Some(Response::new(Bytes::from_static(br#"{"client_id":"gw-registered-3"}"#)));
    let refused = self_registering_consent(&mut fourth);
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(fourth.sent.is_empty());
}

#[test]
fn an_upstream_refresh_never_sets_the_grants_generation_back() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let keys = agent.config.settings.grants.sealing_keys.clone().unwrap();
    let forward = grant_forward(&agent, tokens["access_token"].as_str().unwrap(), None);
    let id = forward_grant(&forward);
    let config = agent.config.clone();
    agent.store.now = T0 + 7200;
    let mut call = Call::forward(&config, &forward, Method::GET, Bytes::new(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0 + 7200), Some([9; 32]));
    let store = &mut agent.store;
    let outcome = loop {
        match call.poll() {
            CallAction::Store(op) => {
                let result = store.apply(op);
                call.handle_store(result);
            }
            CallAction::Send(request) if request.request.uri().path() == "/token" => {
                // Meanwhile the client rotates its gateway refresh token: the generation moves on.
                let grant = store.grants.get_mut(&id).unwrap();
                grant.generation += 1;
                call.handle_whole(Ok(upstream_tokens("upstream-at-new", Some("upstream-rt-new"))));
            }
            CallAction::Send(_) => call.handle_head(Ok(&Response::new(Bytes::new()))),
            CallAction::Respond(outcome) => break outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(outcome, CallOutcome::Relay(ref head) if head.status() == StatusCode::OK));
    let grant = &agent.store.grants[&id];
    assert_eq!(grant.generation, 1, "the client's rotation survives the upstream refresh");
    let stored =
        grant.upstream_access_token.open(&keys, "notes", &grant.id, UnixTime::from_secs(T0 + 7200)).unwrap();
    assert_eq!(stored.expose(), "upstream-at-new");
}

#[test]
fn a_refresh_that_another_request_finished_before_the_lock_is_used_not_repeated() {
    let mut agent = Agent::new();
    let (_, tokens) = signed_in(&mut agent);
    let keys = agent.config.settings.grants.sealing_keys.clone().unwrap();
    let forward = grant_forward(&agent, tokens["access_token"].as_str().unwrap(), None);
    let id = forward_grant(&forward);
    let config = agent.config.clone();
    let later = UnixTime::from_secs(T0 + 7200);
    agent.store.now = T0 + 7200;
    let mut call = Call::forward(&config, &forward, Method::GET, Bytes::new(), CallLimits::default())
        .unwrap()
        .with_clock(later, Some([9; 32]));
    let store = &mut agent.store;
    let mut sent = Vec::new();
    loop {
        match call.poll() {
            CallAction::Store(op) => {
                let lock = matches!(op, StoreOp::TryLock { .. });
                if lock {
                    // Between this call's read and its lock, another request refreshed the grant.
                    let grant = store.grants.get_mut(&id).unwrap();
                    let fresh = crate::grant::SealedUpstreamToken::seal(
                        &keys,
                        "notes",
                        &grant.id,
                        grant.expires_at,
                        &Secret::new("upstream-at-other"),
                        [3; 24],
                    )
                    .unwrap();
                    grant.upstream_access_token = fresh;
                    grant.upstream_access_expires_at = Some(later.plus(Duration::from_secs(3600)));
                }
                let result = store.apply(op);
                call.handle_store(result);
            }
            CallAction::Send(request) => {
                sent.push(request.request.uri().path().to_owned());
                let authorization = request.request.headers().get(header::AUTHORIZATION).cloned();
                call.handle_head(Ok(&Response::new(Bytes::new())));
                assert_eq!(authorization.unwrap(), "Bearer upstream-at-other");
            }
            CallAction::Respond(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sent, vec!["/mcp".to_owned()], "no second refresh with a stale refresh token");
    assert!(agent.store.locks.is_empty());
}

/// One thing a client (or an attacker holding its values) may do after a sign-in.
#[derive(Clone, Debug)]
enum Move {
    /// Redeem the sign-in's code (again).
    Redeem,
    /// Replay the upstream's callback with the sign-in's state.
    Callback,
    /// Refresh with the `n`-th refresh token issued so far (wrapping).
    Refresh(usize),
    /// Call the MCP server with the newest access token.
    Call,
    /// Let time pass.
    Wait(u64),
}

fn moves() -> impl proptest::strategy::Strategy<Value = Vec<Move>> {
    use proptest::prelude::*;
    prop::collection::vec(
        prop_oneof![
            Just(Move::Redeem),
            Just(Move::Callback),
            (0usize..6).prop_map(Move::Refresh),
            Just(Move::Call),
            (0u64..90).prop_map(Move::Wait),
        ],
        1..14,
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// Design §4.8's promises under any sequence of replays, refreshes, calls and waits: no
    /// upstream token ever appears in an answer to the client; the code and the state are each
    /// accepted once; a refresh token refused as reused ends the grant for good.
    #[test]
    fn single_use_values_and_no_upstream_token_in_any_answer(moves in moves()) {
        let mut agent = Agent::new();
        let (client_id, _) = agent.register();
        let (_, request, csrf) = agent.authorize(&client_id, &crate::pkce::challenge_for(VERIFIER));
        let upstream = location(&agent.consent(&request, &csrf, KEY, "approve"));
        let state = urlencode(&query(&upstream, "state").unwrap());
        agent.upstream = Some(upstream_tokens("upstream-at-0001", Some("upstream-rt-0001")));
        let callback = format!("/callback?code=c&state={state}");
        let back = location(&agent.request(Method::GET, &callback, b"", &[]));
        let code = query(&back, "code").unwrap();
        let first = agent.token(&[
            ("grant_type", "authorization_code"), ("code", &code),
            ("redirect_uri", "http://127.0.0.1:40000/callback"), ("client_id", &client_id), ("code_verifier", VERIFIER),
        ]);
        proptest::prop_assert_eq!(first.status(), StatusCode::OK);
        let first: Value = serde_json::from_slice(first.body()).unwrap();
        let mut refresh_tokens = vec![first["refresh_token"].as_str().unwrap().to_owned()];
        let mut access = first["access_token"].as_str().unwrap().to_owned();
        let (mut codes_accepted, mut callbacks_accepted, mut dead) = (1, 1, false);
        let mut upstream_n = 1;
        for step in moves {
            let answer = match step {
                Move::Redeem => {
                    let answer = agent.token(&[
                        ("grant_type", "authorization_code"), ("code", &code),
                        ("redirect_uri", "http://127.0.0.1:40000/callback"), ("client_id", &client_id), ("code_verifier", VERIFIER),
                    ]);
                    codes_accepted += usize::from(answer.status() == StatusCode::OK);
                    // A code used twice while it is valid (60 s) revokes the grant; an expired one
                    // no longer opens, so it is refused without being recognised.
                    dead |= agent.store.now < T0 + CODE_LIFETIME.as_secs();
                    answer
                }
                Move::Callback => {
                    let answer = agent.request(Method::GET, &callback, b"", &[]);
                    callbacks_accepted += usize::from(answer.status() == StatusCode::FOUND);
                    answer
                }
                Move::Refresh(n) => {
                    let token = refresh_tokens[n % refresh_tokens.len()].clone();
                    let answer = agent.token(&[("grant_type", "refresh_token"), ("refresh_token", &token), ("client_id", &client_id)]);
                    if answer.status() == StatusCode::OK {
                        proptest::prop_assert!(!dead, "a refresh was accepted after the grant ended");
                        let document: Value = serde_json::from_slice(answer.body()).unwrap();
                        refresh_tokens.push(document["refresh_token"].as_str().unwrap().to_owned());
                        access = document["access_token"].as_str().unwrap().to_owned();
                    } else if !dead {
                        dead = true;
                    }
                    answer
                }
                Move::Call => {
                    let forward = grant_forward(&agent, &access, None);
                    let now = UnixTime::from_secs(agent.store.now);
                    let config = agent.config.clone();
                    let mut call = Call::forward(&config, &forward, Method::GET, Bytes::new(), CallLimits::default())
                        .unwrap()
                        .with_clock(now, Some([upstream_n as u8; 32]));
                    let (outcome, _) = drive_call(&mut call, &mut agent.store, |request| {
                        if request.request.uri().path() == "/token" {
                            upstream_n += 1;
                            upstream_tokens(&format!("upstream-at-{upstream_n:04}"), Some(&format!("upstream-rt-{upstream_n:04}")))
                        } else {
                            Response::new(Bytes::new())
                        }
                    });
                    match outcome {
                        CallOutcome::Relay(head) => {
                            proptest::prop_assert!(!dead, "a call went through after the grant ended");
                            let mut response = Response::new(Vec::new());
                            *response.headers_mut() = head.headers().clone();
                            response
                        }
                        CallOutcome::Answer(response) => response,
                        CallOutcome::Gathered(_) => Response::new(Vec::new()),
                    }
                }
                Move::Wait(seconds) => {
                    agent.store.now += seconds;
                    continue;
                }
            };
            let text = format!("{:?} {}", answer.headers(), String::from_utf8_lossy(answer.body()));
            proptest::prop_assert!(!text.contains("upstream-at-") && !text.contains("upstream-rt-"), "an upstream token reached the client: {text}");
        }
        proptest::prop_assert_eq!(codes_accepted, 1, "the code was accepted more than once");
        proptest::prop_assert_eq!(callbacks_accepted, 1, "the state was accepted more than once");
    }
}

#[test]
fn the_aggregating_routes_use_the_identitys_newest_grant() {
    let mut agent = Agent::new();
    // Before any sign-in the identity has no grant there: authorization_required.
    let keyed_aggregate_for = |config: &GatewayConfig, key: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.example.com"));
        headers.insert("x-mcp-gateway-key", HeaderValue::from_str(key).unwrap());
        headers.insert("x-mcp-servers", HeaderValue::from_static("notes"));
        let head = RequestHead {
            method: &Method::POST,
            path_and_query: "/mcp",
            headers: &headers,
            scheme: Scheme::Https,
            peer: None,
        };
        let mut context = Context {
            config,
            oauth: None,
            now: Instant::from_millis(1),
            unix_now: UnixTime::from_secs(T0),
            random: None,
        };
        match decide(&head, &mut context) {
            Action::Aggregate(aggregate) => aggregate,
            other => panic!("expected an aggregate, got {other:?}"),
        }
    };
    let aggregate_for = |config: &GatewayConfig| keyed_aggregate_for(config, KEY);
    let config = agent.config.clone();
    let before = aggregate_for(&config);
    // The key is admitted however the scheme is written, and so is its identity: the same grant.
    let pointer = |aggregate: &Aggregate| match &aggregate.targets[0].credential {
        OutboundCredential::IdentityGrant { pointer, .. } => pointer.clone(),
        other => panic!("expected the identity's grant, got {other:?}"),
    };
    assert_eq!(pointer(&keyed_aggregate_for(&config, &format!("bearer {KEY}"))), pointer(&before));
    assert!(matches!(before.targets[0].credential, OutboundCredential::IdentityGrant { .. }));
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let mut call = Call::aggregated(&config, &before, 0, body.clone(), CallLimits::default(), true)
        .unwrap()
        .with_clock(UnixTime::from_secs(T0), Some([4; 32]));
    let (outcome, sent) = drive_call(&mut call, &mut agent.store, |_| Response::new(Bytes::new()));
    assert!(sent.is_empty());
    match outcome {
        CallOutcome::Gathered(Gathered { answer: crate::aggregate::Answer::Failed(response), .. }) => {
            assert_eq!(
                serde_json::from_slice::<Value>(response.body()).unwrap()["error"],
                "authorization_required"
            );
        }
        other => panic!("expected authorization_required, got {other:?}"),
    }
    // After the key's holder signed in, the aggregated call carries that grant's upstream token.
    signed_in(&mut agent);
    let after = aggregate_for(&config);
    let mut call = Call::aggregated(&config, &after, 0, body, CallLimits::default(), true)
        .unwrap()
        .with_clock(UnixTime::from_secs(T0), Some([4; 32]));
    let (_, sent) = drive_call(&mut call, &mut agent.store, |_| Response::new(Bytes::new()));
    assert!(sent.first().is_some_and(|first| first.ends_with("Bearer upstream-at-0001")), "{sent:?}");
}

#[test]
fn a_refresh_extends_the_grant_to_30_days_after_it() {
    let mut agent = Agent::new();
    let (client_id, tokens) = signed_in(&mut agent);
    let day = 86_400;
    let created = agent.store.grants.values().find(|grant| grant.pointed().is_none()).unwrap().expires_at;
    assert_eq!(created, UnixTime::from_secs(T0 + 30 * day));
    agent.store.now = T0 + 10 * day;
    let refreshed = agent.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ("client_id", &client_id),
    ]);
    assert_eq!(refreshed.status(), StatusCode::OK);
    let grant = agent.store.grants.values().find(|grant| grant.pointed().is_none()).unwrap();
    assert_eq!(grant.expires_at, UnixTime::from_secs(T0 + 40 * day), "30 days after the last refresh");
    assert_eq!(grant.generation, 1, "the extension keeps the rotation");
    assert!(agent.store.locks.is_empty());
    let pointer = agent.store.grants.values().find(|record| record.pointed().is_some()).unwrap();
    assert_eq!(pointer.pointed().as_ref(), Some(&grant.id));
    assert_eq!(pointer.expires_at, grant.expires_at, "the aggregating routes' pointer moves with it");
    // The new refresh token lives as long as the grant now does.
    let refreshed: Value = serde_json::from_slice(refreshed.body()).unwrap();
    agent.store.now = T0 + 35 * day;
    let again = agent.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refreshed["refresh_token"].as_str().unwrap()),
        ("client_id", &client_id),
    ]);
    assert_eq!(again.status(), StatusCode::OK, "{}", String::from_utf8_lossy(again.body()));
    // Past the grant's first 30 days its sealed upstream tokens still open: they were sealed
    // again to the extended expiry. The call refreshes upstream (its access token is long gone).
    let again: Value = serde_json::from_slice(again.body()).unwrap();
    let forward = grant_forward(&agent, again["access_token"].as_str().unwrap(), None);
    let config = agent.config.clone();
    agent.store.now = T0 + 35 * day + 7200;
    let mut call = Call::forward(&config, &forward, Method::GET, Bytes::new(), CallLimits::default())
        .unwrap()
        .with_clock(UnixTime::from_secs(T0 + 35 * day + 7200), Some([9; 32]));
    let (outcome, sent) = drive_call(&mut call, &mut agent.store, |request| {
        if request.request.uri().path() == "/token" {
            upstream_tokens("upstream-at-0002", None)
        } else {
            Response::new(Bytes::new())
        }
    });
    assert!(sent[0].contains("upstream-rt-0001"), "the sealed refresh token opened: {sent:?}");
    assert!(matches!(outcome, CallOutcome::Relay(ref head) if head.status() == StatusCode::OK), "{sent:?}");
}

#[test]
fn a_refresh_seals_the_grant_again_under_a_rotated_key() {
    let mut agent = Agent::new();
    let (client_id, tokens) = signed_in(&mut agent);
    let old = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    let new = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([42u8; 32]);
    let old_keys = crate::seal::SealingKeys::parse(old).unwrap();
    let new_key = crate::seal::SealingKeys::parse(&new).unwrap();
    let rotated = crate::seal::SealingKeys::parse_list([new.as_str(), old]).unwrap();
    agent.config.settings.grants.sealing_keys = Some(rotated);
    let refreshed = agent.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ("client_id", &client_id),
    ]);
    assert_eq!(refreshed.status(), StatusCode::OK, "{}", String::from_utf8_lossy(refreshed.body()));
    let grant = agent.store.grants.values().find(|grant| grant.is_user_grant()).unwrap();
    let now = UnixTime::from_secs(agent.store.now);
    let access = &grant.upstream_access_token;
    assert!(access.open(&new_key, "notes", &grant.id, now).is_ok(), "sealed under the new key alone");
    assert!(access.open(&old_keys, "notes", &grant.id, now).is_err());
}
