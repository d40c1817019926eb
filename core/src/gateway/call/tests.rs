//! The forwarded-call machine driven with scripted answers, as the client machines are: every
//! step the adapter would perform is asserted, then answered by hand.
//!
//! Compiled only under `#[cfg(test)]` (see the parent module), so the unwraps here never meet
//! outside input.

use std::collections::HashMap;

use super::*;
use crate::config::load_yaml;

const CONFIG: &str = "
general_settings:
  master_key: sk-gateway-key-0001
mcp_servers:
  reports:
    url: https://reports.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: r
    client_secret: r-secret-value-0001
    token_url: https://auth.example/token
  exchange:
    url: https://exchange.example/mcp
    auth_type: oauth2_token_exchange
    client_id: x
    client_secret: x-secret-value-0001
    token_url: https://auth.example/token
    token_storage_ttl_seconds: 120
  checked:
    url: https://checked.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: c
    client_secret: c-secret-value-0001
    token_url: https://auth.example/token
    token_validation:
      team.enterprise_id: E1
  wiki:
    url: http://127.0.0.1:9/mcp
    auth_type: bearer_token
    authentication_token: wiki-token-0001
";

fn config() -> GatewayConfig {
    load_yaml(CONFIG, &|_| None).unwrap().config
}

/// A forward for a caller in its own upstream session (it sends `Mcp-Session-Id`), so the call is
/// passed through; [`sessionless`] is the caller that sent none.
fn forward(server: &str, credential: OutboundCredential) -> Forward {
    let mut forward = sessionless(server, credential);
    forward.headers.insert(SESSION_HEADER, HeaderValue::from_static("callers-own-session"));
    forward
}

fn sessionless(server: &str, credential: OutboundCredential) -> Forward {
    let config = config();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Forward {
        server: server.to_owned(),
        url: config.servers[server].url.clone(),
        headers,
        credential,
        resolution: AuthResolution::M2mClientCredentials,
        delegated: false,
        debug: false,
        challenge: None,
    }
}

const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;

fn call<'a>(config: &'a GatewayConfig, forward: &'a Forward) -> Call<'a> {
    Call::forward(config, forward, Method::POST, Bytes::from_static(CALL), CallLimits::default()).unwrap()
}

fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_owned()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
    }
    response
}

fn token_answer(token: &str) -> Response<Bytes> {
    answer(200, &[], &format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#))
}

fn expect_token<'a>(call: &mut Call<'a>) -> TokenNeed<'a> {
    match call.poll() {
        CallAction::FetchToken(need) => need,
        other => panic!("expected a token fetch, got {other:?}"),
    }
}

fn expect_send(call: &mut Call<'_>) -> UpstreamRequest {
    match call.poll() {
        CallAction::Send(request) => request,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn expect_answer(call: &mut Call<'_>) -> Response<Vec<u8>> {
    match call.poll() {
        CallAction::Respond(CallOutcome::Answer(response)) => response,
        other => panic!("expected a complete answer, got {other:?}"),
    }
}

fn expect_gathered(call: &mut Call<'_>) -> Gathered {
    match call.poll() {
        CallAction::Respond(CallOutcome::Gathered(gathered)) => gathered,
        other => panic!("expected a gathered answer, got {other:?}"),
    }
}

fn authorization(request: &UpstreamRequest) -> &str {
    request.request.headers().get(header::AUTHORIZATION).map_or("", |value| value.to_str().unwrap())
}

fn error_of(response: &Response<Vec<u8>>) -> (u16, String) {
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    (response.status().as_u16(), body["error"].as_str().unwrap_or_default().to_owned())
}

/// Fetches the token the machine asks for from a scripted token endpoint answer.
fn feed_token(call: &mut Call<'_>, token: &str) -> TokenKey {
    let need = expect_token(call);
    let fetched = need.finish(Ok(token_answer(token))).unwrap();
    call.handle_token(Ok(fetched.access_token));
    need.key().clone()
}

#[test]
fn an_m2m_call_fetches_the_token_sends_once_and_relays_only_the_allowed_headers() {
    let (config, forward) = (config(), forward("reports", OutboundCredential::ClientCredentialsToken));
    let mut call = call(&config, &forward);
    let need = expect_token(&mut call);
    assert_eq!(need.key(), &TokenKey::m2m("reports"));
    let token_request = need.request().unwrap();
    assert_eq!(token_request.request.uri(), "https://auth.example/token");
    assert_eq!(token_request.read, Read::Whole(CallLimits::default().max_token_response));
    assert!(!token_request.allow_private, "a public server's token endpoint stays public");
    let form: HashMap<String, String> =
        url::form_urlencoded::parse(token_request.request.body()).into_owned().collect();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["resource"], "https://reports.example/mcp", "design §4.3: the audience is the server");
    let fetched = need.finish(Ok(token_answer("m2m-token-0001"))).unwrap();
    assert_eq!(fetched.policy, TtlPolicy::M2m);
    call.handle_token(Ok(fetched.access_token));

    let sent = expect_send(&mut call);
    assert_eq!(authorization(&sent), "Bearer m2m-token-0001");
    assert_eq!(sent.read, Read::Head);
    assert_eq!(sent.request.body().as_ref(), CALL);
    assert_eq!(sent.request.uri(), "https://reports.example/mcp");
    let upstream = answer(
        200,
        &[("content-type", "text/event-stream"), ("mcp-session-id", "s-1"), ("set-cookie", "tracking=1")],
        "",
    );
    call.handle_head(Ok(&upstream));
    match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => {
            assert_eq!(head.status(), StatusCode::OK);
            assert_eq!(head.headers()["content-type"], "text/event-stream");
            assert_eq!(head.headers()["mcp-session-id"], "s-1");
            assert!(head.headers().get("set-cookie").is_none(), "only relayed headers pass");
        }
        other => panic!("expected a relay, got {other:?}"),
    }
}

#[test]
fn a_401_drops_the_token_fetches_a_fresh_one_and_retries_exactly_once() {
    let (config, forward) = (config(), forward("reports", OutboundCredential::ClientCredentialsToken));
    let mut call = call(&config, &forward);
    let key = feed_token(&mut call, "stale-token-0001");
    expect_send(&mut call);
    call.handle_head(Ok(&answer(401, &[], "")));
    match call.poll() {
        CallAction::InvalidateToken { key: dropped, token } => {
            assert_eq!(dropped, key);
            assert_eq!(token.expose(), "stale-token-0001");
        }
        other => panic!("expected the refused token to be dropped, got {other:?}"),
    }
    feed_token(&mut call, "fresh-token-0002");
    assert_eq!(authorization(&expect_send(&mut call)), "Bearer fresh-token-0002");
    call.handle_head(Ok(&answer(401, &[("www-authenticate", "Bearer")], "")));
    match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => {
            assert_eq!(head.status(), StatusCode::UNAUTHORIZED, "the second 401 is the answer");
            assert!(head.headers().get("www-authenticate").is_none(), "not delegated: no upstream challenge");
        }
        other => panic!("expected the second 401 relayed, got {other:?}"),
    }
}

#[test]
fn credentials_the_gateway_did_not_obtain_are_never_retried() {
    let config = config();
    for credential in [
        OutboundCredential::StaticToken,
        OutboundCredential::Authorization(Secret::new("Bearer caller-0001")),
        OutboundCredential::ForwardAuthorization,
    ] {
        let forward = forward("wiki", credential.clone());
        let mut call = call(&config, &forward);
        let sent = expect_send(&mut call);
        assert!(sent.allow_private, "the wiki is configured on loopback");
        call.handle_head(Ok(&answer(401, &[], "")));
        assert!(matches!(call.poll(), CallAction::Respond(CallOutcome::Relay(_))), "{credential:?}");
    }
    let mut delegated = forward("reports", OutboundCredential::ClientCredentialsToken);
    delegated.delegated = true;
    let mut call = call(&config, &delegated);
    feed_token(&mut call, "m2m-token-0001");
    expect_send(&mut call);
    call.handle_head(Ok(&answer(401, &[("www-authenticate", "Bearer realm=\"up\"")], "")));
    match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => {
            assert_eq!(head.headers()["www-authenticate"], "Bearer realm=\"up\"", "delegated: relayed");
        }
        other => panic!("expected a relay, got {other:?}"),
    }
}

#[test]
fn the_static_credential_goes_in_the_header_its_auth_type_names() {
    let config = config();
    let forward = forward("wiki", OutboundCredential::StaticToken);
    let mut call = call(&config, &forward);
    assert_eq!(authorization(&expect_send(&mut call)), "Bearer wiki-token-0001");
}

#[test]
fn each_failure_is_answered_with_the_status_of_its_step() {
    let config = config();
    let cases = [
        (UpstreamFailure::Timeout, 504, "upstream_timeout"),
        (UpstreamFailure::Unreachable, 502, "upstream_unreachable"),
        (UpstreamFailure::Blocked, 502, "blocked_by_fetch_policy"),
    ];
    for (failure, status, error) in cases {
        let forward = forward("wiki", OutboundCredential::StaticToken);
        let mut call = call(&config, &forward);
        expect_send(&mut call);
        call.handle_head::<Bytes>(Err(failure.clone()));
        assert_eq!(error_of(&expect_answer(&mut call)), (status, error.to_owned()), "{failure:?}");
    }
    let forward = forward("wiki", OutboundCredential::StaticToken);
    let mut call = call(&config, &forward);
    expect_send(&mut call);
    call.handle_head(Ok(&answer(503, &[], "down")));
    let response = expect_answer(&mut call);
    assert_eq!(error_of(&response), (502, "upstream_error".to_owned()));
    assert!(String::from_utf8_lossy(response.body()).contains("HTTP 503"));
}

#[test]
fn token_failures_are_503_504_or_502_and_name_the_token_step() {
    let config = config();
    let forward_m2m = forward("reports", OutboundCredential::ClientCredentialsToken);
    let answer_for = |failure: CallFailure| {
        let mut call = call(&config, &forward_m2m);
        expect_token(&mut call);
        call.handle_token(Err(failure));
        expect_answer(&mut call)
    };
    let waited = answer_for(CallFailure::from_reason("upstream_timeout"));
    assert_eq!(error_of(&waited), (504, "upstream_timeout".to_owned()));
    assert!(String::from_utf8_lossy(waited.body()).contains("fetching the upstream token for `reports`"));
    let backing_off = answer_for(CallFailure::Upstream {
        step: CallStep::FetchToken,
        failure: UpstreamFailure::BackingOff { retry_in: Duration::from_secs(3) },
    });
    assert_eq!(error_of(&backing_off), (503, "token_endpoint_failed".to_owned()));
    assert_eq!(backing_off.headers()[header::RETRY_AFTER], "3");
    let invalid = answer_for(CallFailure::from_reason("token_validation_failed"));
    assert_eq!(error_of(&invalid), (502, "token_validation_failed".to_owned()), "design §7");
}

#[test]
fn the_token_answer_is_refused_when_unusable_or_invalid() {
    let config = config();
    let forward_checked = forward("checked", OutboundCredential::ClientCredentialsToken);
    let mut call = call(&config, &forward_checked);
    let need = expect_token(&mut call);
    let refused = need.finish(Ok(answer(400, &[], r#"{"error":"invalid_client"}"#))).unwrap_err();
    assert_eq!(
        refused,
        CallFailure::Upstream {
            step: CallStep::FetchToken,
            failure: UpstreamFailure::TokenRefused { status: 400 }
        }
    );
    assert_eq!(refused.response("checked").status(), StatusCode::SERVICE_UNAVAILABLE);
    let invalid = need.finish(Ok(token_answer("unchecked-token-0001"))).unwrap_err();
    assert_eq!(invalid, CallFailure::TokenValidation { field: Some("team.enterprise_id".to_owned()) });
    let response = invalid.response("checked");
    assert_eq!(error_of(&response).0, 502);
    assert!(!String::from_utf8_lossy(response.body()).contains("unchecked-token-0001"), "never echoed");
    let valid = answer(200, &[], r#"{"access_token":"ok-token-0001","team":{"enterprise_id":"E1"}}"#);
    assert!(need.finish(Ok(valid)).is_ok());
    let timeout = need.finish(Err(UpstreamFailure::Timeout)).unwrap_err();
    assert_eq!(error_of(&timeout.response("checked")).0, 504);
}

#[test]
fn an_incomplete_token_configuration_is_a_503_naming_what_is_missing() {
    let mut config = config();
    let mut broken = config.servers["reports"].clone();
    broken.name = "broken".to_owned();
    broken.entry.token_url = None;
    config.servers.insert("broken".to_owned(), broken);
    let forward = forward("reports", OutboundCredential::ClientCredentialsToken);
    let forward = Forward { server: "broken".to_owned(), ..forward };
    let mut call = call(&config, &forward);
    let need = expect_token(&mut call);
    let failure = need.request().unwrap_err();
    assert_eq!(failure, CallFailure::TokenNotConfigured { missing: "no valid token_url is configured" });
    let response = failure.response("broken");
    assert_eq!(error_of(&response), (503, "token_endpoint_failed".to_owned()));
}

#[test]
fn exchanged_tokens_are_keyed_per_caller_token_and_live_as_user_tokens() {
    let config = config();
    let credential = |token: &str| OutboundCredential::ExchangeToken { subject_token: Secret::new(token) };
    let (first, second) =
        (forward("exchange", credential("alice-0001")), forward("exchange", credential("bob-0002")));
    let (mut alice, mut bob) = (call(&config, &first), call(&config, &second));
    let (alice, bob) = (expect_token(&mut alice), expect_token(&mut bob));
    assert_ne!(alice.key(), bob.key());
    assert_eq!(alice.key(), &TokenKey::exchange("exchange", &Secret::new("alice-0001")));
    assert!(!format!("{:?}", alice.key()).contains("alice"), "Debug shows no token");
    let fetched = alice.finish(Ok(token_answer("exchanged-0001"))).unwrap();
    assert_eq!(fetched.policy, TtlPolicy::User { token_storage_ttl_seconds: Some(120) });
    let form: HashMap<String, String> =
        url::form_urlencoded::parse(alice.request().unwrap().request.body()).into_owned().collect();
    assert_eq!(form["subject_token"], "alice-0001");
}

#[test]
fn a_body_that_is_not_json_rpc_is_refused_before_any_token() {
    let config = config();
    let forward = forward("reports", OutboundCredential::ClientCredentialsToken);
    let refused = Call::forward(
        &config,
        &forward,
        Method::POST,
        Bytes::from_static(b"{\"hello\":1}"),
        CallLimits::default(),
    )
    .unwrap_err();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(Call::forward(&config, &forward, Method::GET, Bytes::new(), CallLimits::default()).is_ok());
    let unknown = Forward { server: "nope".to_owned(), ..forward.clone() };
    let missing = Call::forward(&config, &unknown, Method::GET, Bytes::new(), CallLimits::default());
    assert_eq!(missing.unwrap_err().status(), StatusCode::NOT_FOUND);
}

fn aggregate_of(forward: Forward) -> Aggregate {
    Aggregate {
        endpoint: crate::aggregate::Endpoint::Mcp,
        names: vec![forward.server.clone()],
        targets: vec![forward],
        cursor: None,
        session: None,
        owner: crate::aggregate::Owner::of(&HeaderMap::new()),
    }
}

fn initialized(session: &str) -> Response<Bytes> {
    answer(
        200,
        &[("mcp-session-id", session), ("content-type", "application/json")],
        r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#,
    )
}

fn session_of(request: &UpstreamRequest) -> Option<&str> {
    request.request.headers().get(SESSION_HEADER).map(|value| value.to_str().unwrap())
}

#[test]
fn an_aggregated_call_opens_a_session_uses_it_and_reopens_it_once_when_it_expires() {
    let config = config();
    let aggregate = aggregate_of(forward("wiki", OutboundCredential::StaticToken));
    let mut call =
        Call::aggregated(&config, &aggregate, 0, Bytes::from_static(CALL), CallLimits::default(), true)
            .unwrap();
    let key = match call.poll() {
        CallAction::LookupSession(key) => key,
        other => panic!("expected a session lookup, got {other:?}"),
    };
    assert_eq!(key, aggregate.targets[0].session_key());
    call.handle_session(None);
    let opening = expect_send(&mut call);
    assert_eq!(session_of(&opening), None);
    assert!(String::from_utf8_lossy(opening.request.body()).contains("\"initialize\""));
    assert_eq!(
        authorization(&opening),
        "Bearer wiki-token-0001",
        "the session is opened with the credential"
    );
    call.handle_whole(Ok(initialized("s-1")));
    let notification = expect_send(&mut call);
    assert_eq!(session_of(&notification), Some("s-1"));
    assert!(String::from_utf8_lossy(notification.request.body()).contains("notifications/initialized"));
    call.handle_whole(Ok(answer(202, &[], "")));
    match call.poll() {
        CallAction::StoreSession(stored, UpstreamSession::Session { id, .. }) => {
            assert_eq!((stored, id.as_str()), (key.clone(), "s-1"));
        }
        other => panic!("expected the session stored, got {other:?}"),
    }
    let request = expect_send(&mut call);
    assert_eq!((session_of(&request), request.request.body().as_ref()), (Some("s-1"), CALL));
    assert_eq!(request.read, Read::Whole(CallLimits::default().max_gathered_answer));

    // The upstream forgot the session: forget it, open a new one, send again; only once.
    call.handle_whole(Ok(answer(404, &[], "")));
    assert!(matches!(call.poll(), CallAction::ForgetSession(forgotten, _) if forgotten == key));
    expect_send(&mut call);
    call.handle_whole(Ok(initialized("s-2")));
    expect_send(&mut call);
    call.handle_whole(Ok(answer(202, &[], "")));
    assert!(matches!(call.poll(), CallAction::StoreSession(..)));
    assert_eq!(session_of(&expect_send(&mut call)), Some("s-2"));
    call.handle_whole(Ok(answer(404, &[], "gone again")));
    match expect_gathered(&mut call).answer {
        Answer::Upstream(response) => assert_eq!(response.status(), StatusCode::NOT_FOUND),
        other => panic!("expected the second 404 as the answer, got {other:?}"),
    }
}

fn gateway_session(mode: crate::aggregate::SessionMode) -> (crate::aggregate::SessionUse, Vec<u8>) {
    let mut table = crate::aggregate::GatewaySessions::default();
    let initialize =
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{"sampling":{}}}}"#;
    let owner = crate::aggregate::Owner::of(&HeaderMap::new());
    let (_, view) = table.open([4; 32], owner, initialize.to_vec(), crate::machine::Instant::ZERO);
    (crate::aggregate::SessionUse { view, mode }, initialize.to_vec())
}

#[test]
fn in_a_gateway_session_the_callers_initialize_opens_the_upstream_session_under_its_scope() {
    use crate::aggregate::SessionMode;
    let config = config();
    let aggregate = aggregate_of(forward("wiki", OutboundCredential::StaticToken));
    let (open, initialize) = gateway_session(SessionMode::Open);
    let scoped = aggregate.targets[0].session_key().in_scope(open.view.scope);
    let body = Bytes::from(initialize.clone());
    let mut call = Call::aggregated(&config, &aggregate, 0, body, CallLimits::default(), true)
        .unwrap()
        .in_session(Some(&open));
    // A new gateway session has nothing to look up: the caller's own initialize goes first.
    let opening = expect_send(&mut call);
    assert_eq!(opening.request.body().as_ref(), initialize.as_slice());
    call.handle_whole(Ok(initialized("up-1")));
    assert!(
        String::from_utf8_lossy(expect_send(&mut call).request.body()).contains("notifications/initialized")
    );
    call.handle_whole(Ok(answer(202, &[], "")));
    match call.poll() {
        CallAction::StoreSession(key, UpstreamSession::Session { id, .. }) => {
            assert_eq!((key, id.as_str()), (scoped.clone(), "up-1"));
        }
        other => panic!("expected the scoped session stored, got {other:?}"),
    }
    let Answer::Upstream(answered) = expect_gathered(&mut call).answer else {
        panic!("the initialize answer")
    };
    assert!(
        String::from_utf8_lossy(answered.body()).contains("2025-06-18"),
        "the upstream's initialize answer"
    );
    assert_ne!(scoped, aggregate.targets[0].session_key(), "never the shared session");

    // Later calls in the session reopen an expired upstream session with the caller's initialize.
    let (use_, initialize) = gateway_session(SessionMode::Use);
    let mut call =
        Call::aggregated(&config, &aggregate, 0, Bytes::from_static(CALL), CallLimits::default(), true)
            .unwrap()
            .in_session(Some(&use_));
    assert!(
        matches!(call.poll(), CallAction::LookupSession(key) if key == aggregate.targets[0].session_key().in_scope(use_.view.scope))
    );
    call.handle_session(None);
    assert_eq!(expect_send(&mut call).request.body().as_ref(), initialize.as_slice());
}

#[test]
fn ending_a_gateway_session_deletes_its_upstream_session_or_answers_at_once_without_one() {
    use crate::aggregate::SessionMode;
    let config = config();
    let aggregate = aggregate_of(forward("wiki", OutboundCredential::StaticToken));
    let (end, _) = gateway_session(SessionMode::End);
    let ending = || {
        Call::aggregated(&config, &aggregate, 0, Bytes::new(), CallLimits::default(), true)
            .unwrap()
            .in_session(Some(&end))
    };
    let mut call = ending();
    assert!(matches!(call.poll(), CallAction::LookupSession(_)));
    call.handle_session(None);
    assert!(matches!(expect_gathered(&mut call).answer, Answer::Upstream(_)), "nothing to end, nothing sent");

    let mut call = ending();
    let CallAction::LookupSession(key) = call.poll() else { panic!("a lookup first") };
    let held = UpstreamSession::Session { id: "up-9".into(), protocol_version: "2025-06-18".into() };
    call.handle_session(Some(held.clone()));
    // Forgotten before the DELETE goes, so a failed DELETE leaves nothing behind.
    assert!(
        matches!(call.poll(), CallAction::ForgetSession(forgotten, session) if forgotten == key && session == held)
    );
    let delete = expect_send(&mut call);
    assert_eq!((delete.request.method(), session_of(&delete)), (&Method::DELETE, Some("up-9")));
    call.handle_whole(Err(UpstreamFailure::Unreachable));
    assert!(matches!(expect_gathered(&mut call).answer, Answer::Failed(_)));
}

#[test]
fn an_answer_to_a_targets_request_goes_only_into_the_session_that_asked() {
    use crate::aggregate::SessionMode;
    let config = config();
    let aggregate = aggregate_of(forward("wiki", OutboundCredential::StaticToken));
    let (reply, _) = gateway_session(SessionMode::Reply);
    let answer_body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":4,"result":{}}"#);
    let replying = || {
        Call::aggregated(&config, &aggregate, 0, answer_body.clone(), CallLimits::default(), false)
            .unwrap()
            .in_session(Some(&reply))
    };
    // The session is gone: so is the request; nothing is opened, the caller gets a 202.
    let mut call = replying();
    assert!(matches!(call.poll(), CallAction::LookupSession(_)));
    call.handle_session(None);
    assert_eq!(expect_answer(&mut call).status(), StatusCode::ACCEPTED);
    // The upstream no longer knows the session: its answer is relayed, never resent elsewhere.
    let mut call = replying();
    assert!(matches!(call.poll(), CallAction::LookupSession(_)));
    call.handle_session(Some(UpstreamSession::Session {
        id: "up-1".into(),
        protocol_version: "2025-06-18".into(),
    }));
    assert_eq!(expect_send(&mut call).request.body(), &answer_body);
    call.handle_head(Ok(&answer(404, &[], "")));
    match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => assert_eq!(head.status(), StatusCode::NOT_FOUND),
        other => panic!("expected the 404 relayed, got {other:?}"),
    }
}

#[test]
fn a_request_without_a_session_runs_in_the_gateways_own_and_never_sees_its_id() {
    // Design §4.11: `tools/list` without `initialize` (LiteLLM's curl examples) works against a
    // server that requires a session, and the session's id never reaches the caller.
    let config = config();
    let forward = sessionless("wiki", OutboundCredential::StaticToken);
    let list = br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    let mut call =
        Call::forward(&config, &forward, Method::POST, Bytes::from_static(list), CallLimits::default())
            .unwrap();
    let key = match call.poll() {
        CallAction::LookupSession(key) => key,
        other => panic!("expected a session lookup, got {other:?}"),
    };
    assert_eq!(key, forward.session_key());
    call.handle_session(None);
    assert!(String::from_utf8_lossy(expect_send(&mut call).request.body()).contains("\"initialize\""));
    call.handle_whole(Ok(initialized("gw-own-1")));
    expect_send(&mut call);
    call.handle_whole(Ok(answer(202, &[], "")));
    assert!(matches!(call.poll(), CallAction::StoreSession(..)));
    let request = expect_send(&mut call);
    assert_eq!((session_of(&request), request.read), (Some("gw-own-1"), Read::Head));
    // A 400 for a session the upstream no longer knows (as server-everything answers) reopens once.
    call.handle_head(Ok(&answer(400, &[], "")));
    assert!(matches!(call.poll(), CallAction::ForgetSession(..)));
    expect_send(&mut call);
    call.handle_whole(Ok(initialized("gw-own-2")));
    expect_send(&mut call);
    call.handle_whole(Ok(answer(202, &[], "")));
    assert!(matches!(call.poll(), CallAction::StoreSession(..)));
    assert_eq!(session_of(&expect_send(&mut call)), Some("gw-own-2"));
    call.handle_head(Ok(&answer(
        200,
        &[("mcp-session-id", "gw-own-2"), ("content-type", "application/json")],
        "",
    )));
    match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => {
            assert_eq!(head.status(), StatusCode::OK);
            assert!(head.headers().get(SESSION_HEADER).is_none(), "the gateway's session id stays inside");
            assert_eq!(head.headers()[header::CONTENT_TYPE], "application/json");
        }
        other => panic!("expected the relayed head, got {other:?}"),
    }

    // A caller on the stateless wire has no session to miss: passed through as it is.
    let mut stateless = sessionless("wiki", OutboundCredential::StaticToken);
    stateless.headers.insert("mcp-protocol-version", HeaderValue::from_static("2026-07-28"));
    let mut call =
        Call::forward(&config, &stateless, Method::POST, Bytes::from_static(list), CallLimits::default())
            .unwrap();
    assert_eq!(session_of(&expect_send(&mut call)), None, "no gateway session for a stateless caller");

    // `initialize`, and a caller in its own session, are passed through as they are.
    let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let mut call =
        Call::forward(&config, &forward, Method::POST, Bytes::from_static(initialize), CallLimits::default())
            .unwrap();
    assert_eq!(session_of(&expect_send(&mut call)), None);
    let own = self::forward("wiki", OutboundCredential::StaticToken);
    let mut call =
        Call::forward(&config, &own, Method::POST, Bytes::from_static(list), CallLimits::default()).unwrap();
    let request = expect_send(&mut call);
    assert_eq!(session_of(&request), Some("callers-own-session"));
    call.handle_head(Ok(&answer(200, &[("mcp-session-id", "callers-own-session")], "")));
    match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => {
            assert_eq!(head.headers()[SESSION_HEADER], "callers-own-session", "its own session, relayed");
        }
        other => panic!("expected the relayed head, got {other:?}"),
    }
}

#[test]
fn a_held_session_is_used_without_opening_and_a_stateless_server_needs_no_notification() {
    let config = config();
    let aggregate = aggregate_of(forward("wiki", OutboundCredential::StaticToken));
    let held =
        UpstreamSession::Session { id: "held-1".to_owned(), protocol_version: "2025-06-18".to_owned() };
    let mut call =
        Call::aggregated(&config, &aggregate, 0, Bytes::from_static(CALL), CallLimits::default(), false)
            .unwrap();
    assert!(matches!(call.poll(), CallAction::LookupSession(_)));
    call.handle_session(Some(held));
    let request = expect_send(&mut call);
    assert_eq!((session_of(&request), request.read), (Some("held-1"), Read::Head));

    let mut call =
        Call::aggregated(&config, &aggregate, 0, Bytes::from_static(CALL), CallLimits::default(), true)
            .unwrap();
    call.poll();
    call.handle_session(None);
    expect_send(&mut call);
    let stateless = answer(200, &[], r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}"#);
    call.handle_whole(Ok(stateless));
    assert!(matches!(call.poll(), CallAction::StoreSession(_, UpstreamSession::Stateless { .. })));
    assert_eq!(session_of(&expect_send(&mut call)), None);
}

#[test]
fn an_initialize_refused_with_401_is_the_callers_answer() {
    let config = config();
    let aggregate = aggregate_of(forward("wiki", OutboundCredential::StaticToken));
    for whole in [true, false] {
        let mut call =
            Call::aggregated(&config, &aggregate, 0, Bytes::from_static(CALL), CallLimits::default(), whole)
                .unwrap();
        call.poll();
        call.handle_session(None);
        expect_send(&mut call);
        call.handle_whole(Ok(answer(
            401,
            &[("www-authenticate", "Bearer"), ("content-type", "application/json")],
            "{}",
        )));
        let status = match call.poll() {
            CallAction::Respond(CallOutcome::Gathered(Gathered {
                answer: Answer::Upstream(response),
                ..
            })) => response.status(),
            CallAction::Respond(CallOutcome::Answer(response)) => {
                assert!(response.headers().get("www-authenticate").is_none(), "not delegated");
                response.status()
            }
            other => panic!("expected the initialize answer, got {other:?}"),
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(Call::aggregated(&config, &aggregate, 1, Bytes::new(), CallLimits::default(), true).is_err());
}

#[test]
fn a_driver_that_skips_a_step_gets_a_500_never_a_hang_or_a_panic() {
    let config = config();
    let forward = forward("reports", OutboundCredential::ClientCredentialsToken);
    let mut skipped = call(&config, &forward);
    expect_token(&mut skipped);
    assert_eq!(error_of(&expect_answer(&mut skipped)), (500, "server_error".to_owned()));
    let mut early = call(&config, &forward);
    early.handle_head(Ok(&answer(200, &[], "")));
    assert_eq!(error_of(&expect_answer(&mut early)), (500, "server_error".to_owned()));
    let mut unasked = call(&config, &forward);
    unasked.handle_session(None);
    assert_eq!(error_of(&expect_answer(&mut unasked)), (500, "server_error".to_owned()));
}

#[test]
fn debug_headers_describe_the_call_with_every_secret_masked() {
    let config = config();
    let mut forward = forward("reports", OutboundCredential::ClientCredentialsToken);
    forward.debug = true;
    let mut inbound = HeaderMap::new();
    inbound.insert("x-mcp-gateway-key", HeaderValue::from_static("sk-gateway-key-0001"));
    let mut call = call(&config, &forward).with_inbound(&inbound);
    feed_token(&mut call, "m2m-token-abcdef");
    expect_send(&mut call);
    call.handle_head(Ok(&answer(200, &[], "")));
    let head = match call.poll() {
        CallAction::Respond(CallOutcome::Relay(head)) => head,
        other => panic!("expected a relay, got {other:?}"),
    };
    assert_eq!(head.headers()["x-mcp-debug-auth-resolution"], "m2m-client-credentials");
    assert_eq!(head.headers()["x-mcp-debug-oauth2-token"], "Bearer****cdef");
    let all = format!("{:?}", head.headers());
    assert!(!all.contains("m2m-token-abcdef") && !all.contains("sk-gateway-key-0001"), "{all}");
}

#[test]
fn a_gathered_listing_from_one_target_carries_its_debug_headers() {
    use crate::aggregate::{Plan, Request};
    let names = vec!["wiki".to_owned()];
    let request = Request {
        endpoint: crate::aggregate::Endpoint::RestList,
        servers: &names,
        delegated: false,
        cursor: None,
        session: None,
        owner: crate::aggregate::Owner::of(&HeaderMap::new()),
    };
    let Plan::Gather(gather) = crate::aggregate::plan(&request, b"") else { panic!("expected a gather") };
    let listing = r#"{"jsonrpc":"2.0","id":"x","result":{"tools":[{"name":"echo"}]}}"#;
    let gathered = Gathered {
        answer: Answer::Upstream(answer(200, &[], listing).map(|body| body.to_vec())),
        debug: vec![("x-mcp-debug-auth-resolution", "static-token".to_owned())],
    };
    let (response, _) = finish_gather(gather, vec![gathered]);
    assert_eq!(response.headers()["x-mcp-debug-auth-resolution"], "static-token");
}
