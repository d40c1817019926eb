//! Unit tests of the gateway's decisions, driven through [`decide`] with scripted inputs.
//!
//! Compiled only under `#[cfg(test)]` (see `gateway/mod.rs`), so the unwraps here never meet
//! outside input.

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
    let asm =
        respond(run(&config, &mut flows, Method::GET, "/.well-known/oauth-authorization-server/github", &[]));
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
        assert_eq!(unknown.body(), known_404.body(), "{name} is indistinguishable from an unknown server");
        let register = respond(run(&config, &mut flows, Method::POST, &format!("/{name}/register"), &[]));
        assert_eq!(register.status(), StatusCode::NOT_FOUND);
    }
}

#[test]
fn register_hands_out_the_client_id_never_the_secret() {
    let config = config();
    let response = respond(run(&config, &mut OAuthState::default(), Method::POST, "/github/register", &[]));
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
    let names: Vec<(&str, Vec<&str>)> =
        discovered.servers.values().map(|server| (server.name.as_str(), missing_endpoints(server))).collect();
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
    assert_eq!(discovery.configured.issuer.as_ref().map(Url::as_str), Some("https://configured.example/"));
    let filled =
        apply_discovery(half, &as_metadata(Some("https://login.example/a"), Some("https://login.example/t")));
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
    assert_eq!(apply_discovery(bare, &plain).map_err(|error| error.reason()), Err("blocked_by_fetch_policy"));
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
    assert_eq!(local.entry.issuer.as_deref(), Some("https://login.example"), "`iss` is checked against it");
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
        let mut context =
            Context { config: &config, oauth: Some(&mut flows), now: Instant::from_millis(1), random: None };
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
    let form: HashMap<String, String> = url::form_urlencoded::parse(request.body()).into_owned().collect();
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
    let wrong =
        respond(run(&config, &mut flows, Method::POST, "/reports/mcp", &[("x-mcp-gateway-key", "sk-wrong")]));
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
    assert_eq!(github.status(), StatusCode::UNAUTHORIZED, "for oauth2 servers Authorization is not the key");

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
    let mixed =
        respond(run(&config, &mut flows, Method::POST, "/delegated/mcp", &[("x-mcp-servers", "reports")]));
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
    let delegated =
        aggregate(run(&config, &mut flows, Method::POST, "/mcp", &[("x-mcp-servers", "delegated"), user]));
    assert!(delegated.targets[0].delegated);
    assert_eq!(delegated.targets[0].headers[header::AUTHORIZATION], "Bearer user-token");
    // The REST routes are not MCP endpoints: the gateway key is always required.
    let rest =
        respond(run(&config, &mut flows, Method::GET, "/mcp-rest/tools/list?server_id=delegated", &[user]));
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
    assert_eq!((target_names(&named), named.endpoint), (vec!["wiki"], crate::aggregate::Endpoint::RestCall));
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
        let mut context =
            Context { config: self.config, oauth, now: Instant::from_millis(self.now), random: Some(random) };
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
    let plain = load_yaml("mcp_servers:\n  w:\n    url: https://w.example/mcp\n", &|_| None).unwrap().config;
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
    let refused = check_forward_body(&Method::POST, br#"{"jsonrpc":"2.0","id":1,"method":5}"#).unwrap_err();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(&refused)["error"]["code"], -32600);
    assert_eq!(body(&refused)["id"], 1);
    assert!(check_forward_body(&Method::POST, br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_ok());
    assert!(check_forward_body(&Method::GET, b"").is_ok());
}
