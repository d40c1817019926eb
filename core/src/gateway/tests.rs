//! Unit tests of the gateway's decisions, driven through [`decide`] with scripted inputs.
//!
//! Compiled only under `#[cfg(test)]` (see `gateway/mod.rs`), so the unwraps here never meet
//! outside input.

use std::collections::HashMap;

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
    let mut context = Context {
        config,
        oauth: Some(flows),
        now: Instant::from_millis(1_000),
        unix_now: crate::seal::UnixTime::from_secs(1_800_000_000),
        random: Some([7; 32]),
    };
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
    let mut metadata = as_metadata(Some("https://login.example/a"), Some("https://login.example/t"));
    metadata.authorization_response_iss_parameter_supported = true;
    assert!(!half.issuer_in_responses);
    let filled = apply_discovery(half, &metadata);
    assert_eq!(filled, Ok(vec!["token_url", "registration_url"]));
    assert!(half.issuer_in_responses, "RFC 9207 support is remembered for /callback");
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
    // metadata, so a refused caller of an interactive server gets the 400 instead of a challenge,
    // while an admitted call (which never uses the origin) is forwarded.
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
        let mut context = Context {
            config: &config,
            oauth: Some(&mut flows),
            now: Instant::from_millis(1),
            unix_now: crate::seal::UnixTime::from_secs(1_800_000_000),
            random: None,
        };
        decide(&head, &mut context)
    };
    // An interactive server's challenge names its metadata, so it needs the origin.
    let refused = respond(decide_with(Method::POST, "/github/mcp", false));
    assert_eq!(
        (refused.status(), body(&refused)["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("non_canonical_authority"))
    );
    // Another server's challenge names no metadata, so the malformed Host does not matter.
    let refused = respond(decide_with(Method::POST, "/reports/mcp", false));
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(matches!(decide_with(Method::POST, "/reports/mcp", true), Action::Forward(_)));
    let metadata =
        respond(decide_with(Method::GET, "/.well-known/oauth-protected-resource/github/mcp", true));
    assert_eq!(metadata.status(), StatusCode::BAD_REQUEST, "metadata needs the origin");
}

#[test]
fn mcp_admission_and_outbound_credentials() {
    let config = config();
    let mut flows = OAuthState::default();
    let refused = respond(run(&config, &mut flows, Method::POST, "/reports/mcp", &[]));
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // `reports` publishes no protected-resource metadata (it is not interactive): the challenge
    // points nowhere rather than at a 404.
    assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"mcp-oauth\"");
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

    // An interactive server is reached with the gateway's own access token only (design §4.8):
    // the key and an upstream token together are refused with the gateway's challenge, and the
    // upstream token is never passed through.
    let refused = respond(run(
        &config,
        &mut flows,
        Method::POST,
        "/github/mcp",
        &[("x-mcp-gateway-key", "sk-gateway-key-0001"), ("authorization", "Bearer user-token")],
    ));
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        refused.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("oauth-protected-resource/github/mcp")
    );
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
    // GET (the session's event stream) and DELETE (its end) are admitted like POST.
    for method in [Method::GET, Method::DELETE] {
        let action = run(&config, &mut flows, method.clone(), "/mcp", &[("x-mcp-servers", "wiki"), key]);
        assert!(matches!(action, Action::Aggregate(_)), "{method} /mcp is aggregated: {action:?}");
        let refused = respond(run(&config, &mut flows, method, "/mcp", &[("x-mcp-servers", "wiki")]));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
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

#[test]
fn a_caller_without_accept_gets_litellms_default_and_its_own_accept_is_kept() {
    let config = config();
    let mut flows = OAuthState::default();
    let key = ("x-mcp-gateway-key", "sk-gateway-key-0001");
    let accept_of = |action: Action| match action {
        Action::Forward(forward) => {
            forward.headers.get(header::ACCEPT).map(|value| value.to_str().unwrap().to_owned())
        }
        other => panic!("expected a forward, got {other:?}"),
    };
    let post = accept_of(run(&config, &mut flows, Method::POST, "/reports/mcp", &[key]));
    assert_eq!(post.as_deref(), Some("application/json, text/event-stream"));
    let get = accept_of(run(&config, &mut flows, Method::GET, "/reports/mcp", &[key]));
    assert_eq!(get.as_deref(), Some("text/event-stream"));
    let own = accept_of(run(
        &config,
        &mut flows,
        Method::POST,
        "/reports/mcp",
        &[key, ("accept", "application/json")],
    ));
    assert_eq!(own.as_deref(), Some("application/json"), "the caller's own Accept is relayed as sent");
}

#[test]
fn without_a_pinned_https_origin_no_authorization_starts() {
    // Design §4.4: an origin taken from Host would let an attacker begin a sign-in under his own
    // origin and collect a victim's code; off loopback, codes never cross the network in clear.
    let with = |base: Option<&str>| {
        let base = base.map(str::to_owned);
        load_yaml(CONFIG, &move |name: &str| base.clone().filter(|_| name == "PROXY_BASE_URL"))
            .unwrap()
            .config
    };
    assert!(matches!(check_startup(&with(None)), Err(StartupError::OriginNotPinned { .. })));
    let clear = with(Some("http://gw.example.com"));
    assert!(matches!(check_startup(&clear), Err(StartupError::InsecureOrigin { .. })));
    assert!(check_startup(&with(Some("http://127.0.0.1:4000"))).is_ok(), "loopback may be http");
    assert!(check_startup(&with(Some("https://gw.example.com"))).is_ok());
    // An embedder that skipped the start-up check still gets no sign-in under such an origin.
    let mut flows = OAuthState::default();
    for (config, reason) in [(with(None), "origin_not_pinned"), (clear, "insecure_origin")] {
        let path = "/github/authorize?response_type=code&client_id=x&redirect_uri=https://c.example/cb";
        let refused = respond(run(&config, &mut flows, Method::GET, path, &[]));
        assert_eq!(body(&refused)["error"], reason, "{refused:?}");
    }
}

#[test]
fn start_up_warns_about_an_interactive_server_without_any_upstream_client() {
    let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "https://gw.example.com".to_owned());
    let yaml = |extra: &str| {
        format!(
            "general_settings:\n  master_key: sk-1\nmcp_servers:\n  gh:\n    url: https://gh.example/mcp\n    auth_type: oauth2\n    oauth2_flow: authorization_code\n    authorization_url: https://gh.example/authorize\n    token_url: https://gh.example/token\n{extra}"
        )
    };
    let warnings = |extra: &str| check_startup(&load_yaml(&yaml(extra), &env).unwrap().config).unwrap();
    assert!(
        warnings("").iter().any(|warning| warning.contains("`gh` has no client_id")),
        "{:?}",
        warnings("")
    );
    assert!(!warnings("    client_id: gw\n").iter().any(|warning| warning.contains("no client_id")));
    let registers = warnings("    registration_url: https://gh.example/register\n");
    assert!(!registers.iter().any(|warning| warning.contains("no client_id")), "{registers:?}");
}

#[test]
fn health_probes_a_durable_store_and_drains_the_replica_when_it_is_down() {
    let mut flows = OAuthState::default();
    let memory = config();
    assert_eq!(respond(run(&memory, &mut flows, Method::GET, "/health", &[])).status(), StatusCode::OK);
    let mut durable = config();
    durable.settings.grants.store = crate::config::StoreSetting::Sqlite { path: "g.db".into() };
    let Action::Probe(probe) = run(&durable, &mut flows, Method::GET, "/health", &[]) else {
        panic!("a durable store is probed");
    };
    assert!(matches!(probe.op(), StoreOp::GetGrant { .. }), "the probe only reads");
    assert_eq!(probe.answer(&StoreResult::Grant(None)).status(), StatusCode::OK);
    // The same verdict serves start-up (open_store) and /health.
    assert_eq!(probe.verdict(&StoreResult::Stored), Err("store_wrong_answer"));
    assert_eq!(probe.answer(&StoreResult::Stored).status(), StatusCode::SERVICE_UNAVAILABLE);
    let down = probe.answer(&StoreResult::Unavailable { reason: "store_unreachable" });
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(&down)["store"], "store_unreachable");
    assert!(down.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(probe.answer(&StoreResult::Stored).status(), StatusCode::SERVICE_UNAVAILABLE);
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
