//! The adapter against the mock upstream and raw sockets, all on 127.0.0.1.
//!
//! Every test binds `127.0.0.1:0`, runs under a timeout and stops by itself (the mock stops when
//! dropped).

use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use mcp_oauth_core::client::authorization::{AuthorizationParams, authorization_request, handle_callback};
use mcp_oauth_core::client::discovery::{Discovered, Discovery, DiscoveryConfig, MetadataSource};
use mcp_oauth_core::client::mcp::{McpEndpoint, parse_rpc_response, rpc_request};
use mcp_oauth_core::client::token::{
    ACCESS_TOKEN_TYPE, Client, Grant, TokenEndpointAuth, TokenError, parse_token_response, token_request,
};
use mcp_oauth_core::machine::{Limits, OneShot, Outgoing, Performer, RequestId, TransportError};
use mcp_oauth_core::metadata::TokenResponse;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_tokio::mock::{MockConfig, MockHandle, MockUpstream, Switch};
use mcp_oauth_tokio::{Headless, HttpClient, Io, LoopbackBrowser, Perform, UserAgent, drive};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

/// Runs a test body under a 30 s bound so nothing can hang CI.
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), body).await.expect("the test took longer than 30 s")
}

fn local_limits() -> Limits {
    Limits { allow_private_addresses: true, ..Limits::METADATA }
}

fn outgoing(method: Method, url: &str, limits: Limits) -> Outgoing {
    Outgoing::unchecked(
        RequestId(1),
        Request::builder().method(method).uri(url).body(Vec::new()).expect("request"),
        limits,
        Performer::Client,
        "test",
    )
}

fn client() -> HttpClient {
    HttpClient::new().expect("TLS setup")
}

fn io(user_agent: Box<dyn UserAgent<HttpClient>>) -> Io {
    Io::new(client(), user_agent)
}

async fn mock() -> MockUpstream {
    MockUpstream::start(MockConfig::default()).await.expect("mock starts")
}

async fn discover(io: &Io, mcp_url: &str) -> Discovered {
    let config = DiscoveryConfig::new(Url::parse(mcp_url).expect("url"));
    let mut machine = Discovery::new(config);
    drive(&mut machine, io).await.expect("driver").expect("discovery")
}

#[tokio::test]
async fn discovery_finds_the_mock_authorization_server() {
    bounded(async {
        let mock = mock().await;
        let io = io(Box::new(Headless));
        let discovered = discover(&io, &mock.mcp_url()).await;
        let origin = mock.origin();
        assert_eq!(discovered.probe_status, 401);
        assert!(discovered.challenge.is_some());
        assert_eq!(
            discovered.source,
            MetadataSource::Document(
                Url::parse(&format!("{origin}/.well-known/oauth-authorization-server")).expect("url")
            )
        );
        assert_eq!(discovered.authorization_server.issuer, origin);
        assert_eq!(discovered.authorization_server.token_endpoint, Some(format!("{origin}/token")));
        assert_eq!(discovered.resource, mock.mcp_url());
        assert_eq!(discovered.scopes, Some(vec!["mcp".to_owned()]));
        let (prm_url, _) = discovered.protected_resource.expect("protected resource metadata");
        assert_eq!(prm_url.as_str(), format!("{origin}/.well-known/oauth-protected-resource/mcp"));
        // The probe, two metadata documents, all over one kept-alive connection.
        let counters = mock.handle().counters();
        assert_eq!(counters.mcp_requests_for("initialize"), 1);
        assert_eq!(counters.connections, 1);
    })
    .await;
}

#[tokio::test]
async fn discovery_falls_back_to_the_legacy_layout_without_metadata() {
    bounded(async {
        let mock = mock().await;
        mock.handle().set(Switch::MetadataMissing(true));
        let io = io(Box::new(Headless));
        let discovered = discover(&io, &mock.mcp_url()).await;
        assert_eq!(discovered.source, MetadataSource::LegacyDefaults);
        assert!(discovered.protected_resource.is_none());
        let origin = mock.origin();
        assert_eq!(discovered.authorization_server.token_endpoint, Some(format!("{origin}/token")));
        assert_eq!(discovered.authorization_server.registration_endpoint, Some(format!("{origin}/register")));
        assert!(discovered.trail.len() >= 3, "the probe and the 404 candidates are in the trail");
    })
    .await;
}

/// Serves one connection: reads the request head, then writes `head` and `body_chunks` copies
/// of a 16 KiB chunk (stopping when the client goes away).
async fn raw_server(head: &'static str, body_chunks: usize) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..body_chunks {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    (url, task)
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_limit() {
    bounded(async {
        // No Content-Length: the body runs until the connection closes (here: 64 MiB, never read).
        let (url, server) = raw_server("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", 4096).await;
        let limits = Limits { max_body_bytes: 64 * 1024, ..local_limits() };
        let result = client().perform(&outgoing(Method::GET, &url, limits)).await;
        assert_eq!(result.unwrap_err(), TransportError::BodyTooLarge { limit: 64 * 1024 });
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn a_declared_length_past_the_limit_fails_before_reading() {
    bounded(async {
        let (url, server) = raw_server("HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", 1).await;
        let limits = Limits { max_body_bytes: 1024, ..local_limits() };
        let result = client().perform(&outgoing(Method::GET, &url, limits)).await;
        assert_eq!(result.unwrap_err(), TransportError::BodyTooLarge { limit: 1024 });
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn a_slow_server_times_out() {
    bounded(async {
        let mock = mock().await;
        mock.handle().set(Switch::SlowMs(5_000));
        let limits = Limits { timeout: Duration::from_millis(200), ..local_limits() };
        let url = format!("{}/.well-known/oauth-authorization-server", mock.origin());
        let started = tokio::time::Instant::now();
        let result = client().perform(&outgoing(Method::GET, &url, limits)).await;
        assert_eq!(result.unwrap_err(), TransportError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await;
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    bounded(async {
        let mock = mock().await;
        // The mock's authorization endpoint redirects to port 9, where nothing listens: following
        // it would fail to connect.
        let url = format!(
            "{}/authorize?response_type=code&client_id=mock-client&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb\
             &code_challenge=abc&code_challenge_method=S256&state=xyz",
            mock.origin()
        );
        let response = client().perform(&outgoing(Method::GET, &url, local_limits())).await.expect("302");
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response.headers()[header::LOCATION].to_str().expect("location");
        assert!(location.starts_with("http://127.0.0.1:9/cb?code="), "{location}");
        assert_eq!(mock.handle().counters().authorize_calls, 1);
    })
    .await;
}

#[tokio::test]
async fn refused_addresses_are_blocked_before_connecting() {
    bounded(async {
        let mock = mock().await;
        let client = client();
        for url in ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://0.0.0.0:80/"] {
            let result = client.perform(&outgoing(Method::GET, url, local_limits())).await;
            assert!(matches!(result, Err(TransportError::Blocked(_))), "{url}: {result:?}");
        }
        // Loopback is refused for a public server's requests: by IP literal and through DNS.
        let strict = Limits::METADATA;
        let port = mock.address().port();
        for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
            let result = client.perform(&outgoing(Method::GET, &url, strict)).await;
            assert!(matches!(result, Err(TransportError::Blocked(_))), "{url}: {result:?}");
        }
        assert_eq!(mock.handle().counters().connections, 0, "no connection was attempted");
        let unsupported = client.perform(&outgoing(Method::GET, "ftp://127.0.0.1/", local_limits())).await;
        assert!(matches!(unsupported, Err(TransportError::Unsupported(_))));
    })
    .await;
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    bounded(async {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        drop(listener);
        let result = client().perform(&outgoing(Method::GET, &url, local_limits())).await;
        assert!(matches!(result, Err(TransportError::Connect(_))), "{result:?}");
    })
    .await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    bounded(async {
        let mock = mock().await;
        let client = client();
        let url = format!("{}/.well-known/oauth-authorization-server", mock.origin());
        for _ in 0..3 {
            let response = client.perform(&outgoing(Method::GET, &url, local_limits())).await.expect("200");
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(mock.handle().counters().connections, 1);
    })
    .await;
}

async fn client_credentials(
    io: &Io,
    mock: &MockUpstream,
    secret: &str,
    auth: TokenEndpointAuth,
) -> Result<TokenResponse, TokenError> {
    let endpoint = Url::parse(&format!("{}/token", mock.origin())).expect("url");
    let secret = Secret::new(secret);
    let client = Client { client_id: "mock-client", client_secret: Some(&secret), auth };
    let scopes = vec!["mcp".to_owned()];
    let request =
        token_request(&endpoint, &client, &Grant::ClientCredentials, &scopes, None).expect("request");
    let mut machine =
        OneShot::new(request, local_limits(), "token", |result: Result<Response<Vec<u8>>, _>| {
            parse_token_response(&result.expect("transport"))
        })
        .expect("the fetch policy allows the loopback mock");
    drive(&mut machine, io).await.expect("driver")
}

#[tokio::test]
async fn client_credentials_with_basic_and_post() {
    bounded(async {
        let mock = mock().await;
        let io = io(Box::new(Headless));
        for auth in [TokenEndpointAuth::ClientSecretBasic, TokenEndpointAuth::ClientSecretPost] {
            let token = client_credentials(&io, &mock, "mock-secret", auth).await.expect("token");
            assert!(token.access_token.expose().starts_with("mock_at_"));
            assert_eq!(token.expires_in, Some(3600));
            assert!(token.refresh_token.is_none());
        }
        let refused = client_credentials(&io, &mock, "wrong", TokenEndpointAuth::ClientSecretPost).await;
        assert!(matches!(refused, Err(TokenError::Refused { status: 401, .. })), "{refused:?}");
        mock.handle().set(Switch::TokenStatus(Some(503)));
        let unavailable =
            client_credentials(&io, &mock, "mock-secret", TokenEndpointAuth::ClientSecretBasic).await;
        assert!(matches!(unavailable, Err(TokenError::Refused { status: 503, .. })), "{unavailable:?}");
        assert_eq!(mock.handle().counters().token_requests_for("client_credentials"), 4);
    })
    .await;
}

#[tokio::test]
async fn token_exchange_issues_a_token() {
    bounded(async {
        let mock = mock().await;
        let io = io(Box::new(Headless));
        let endpoint = Url::parse(&format!("{}/token", mock.origin())).expect("url");
        let secret = Secret::new("mock-secret");
        let client = Client {
            client_id: "mock-client",
            client_secret: Some(&secret),
            auth: TokenEndpointAuth::ClientSecretPost,
        };
        let subject = Secret::new("caller-token");
        let grant = Grant::TokenExchange {
            subject_token: &subject,
            subject_token_type: ACCESS_TOKEN_TYPE,
            audience: Some("mcp"),
        };
        let request = token_request(&endpoint, &client, &grant, &[], None).expect("request");
        let mut machine = OneShot::new(
            request,
            local_limits(),
            "token_exchange",
            |result: Result<Response<Vec<u8>>, _>| parse_token_response(&result.expect("transport")),
        )
        .expect("the fetch policy allows the loopback mock");
        let token = drive(&mut machine, &io).await.expect("driver").expect("token");
        assert_eq!(token.issued_token_type.as_deref(), Some(ACCESS_TOKEN_TYPE));
        assert_eq!(mock.handle().counters().token_requests_for("token_exchange"), 1);
    })
    .await;
}

/// Authorizes through `io`'s user agent (after `browser` is given the URL to open), checks the
/// callback with core and exchanges the code.
async fn authorization_code_flow(
    io: &Io,
    mock: &MockUpstream,
    redirect_uri: &Url,
    browser: impl FnOnce(Url),
) -> TokenResponse {
    let discovered = discover(io, &mock.mcp_url()).await;
    let scopes = discovered.scopes.clone().unwrap_or_default();
    let params = AuthorizationParams {
        client_id: "mock-client",
        redirect_uri,
        scopes: &scopes,
        resource: &discovered.resource,
        issuer: &discovered.authorization_server.issuer,
        assume_s256: false,
    };
    let pending =
        authorization_request(&discovered.authorization_server, &params, [7u8; 48]).expect("pending");
    browser(pending.url.clone());
    let limits = Limits { timeout: Duration::from_secs(10), ..local_limits() };
    let request =
        Request::builder().method(Method::GET).uri(pending.url.as_str()).body(Vec::new()).expect("request");
    let navigate = Outgoing::unchecked(RequestId(1), request, limits, Performer::UserAgent, "test");
    let response = io.perform(navigate).await.expect("redirect");
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = Url::parse(response.headers()[header::LOCATION].to_str().expect("ascii")).expect("url");
    let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert!(pairs.iter().any(|(name, value)| name == "iss" && value == mock.origin()));
    assert!(pairs.iter().any(|(name, _)| name == "state"));
    let code = handle_callback(&pending, &location).expect("core accepts the callback");

    let endpoint =
        Url::parse(discovered.authorization_server.token_endpoint.as_deref().expect("token endpoint"))
            .expect("url");
    let secret = Secret::new("mock-secret");
    let client = Client {
        client_id: "mock-client",
        client_secret: Some(&secret),
        auth: TokenEndpointAuth::ClientSecretBasic,
    };
    let grant = Grant::AuthorizationCode {
        code: &code,
        verifier: pending.pkce.verifier(),
        redirect_uri: &pending.redirect_uri,
    };
    let request =
        token_request(&endpoint, &client, &grant, &pending.scopes, Some(&pending.resource)).expect("request");
    let mut machine =
        OneShot::new(request, local_limits(), "token", |result: Result<Response<Vec<u8>>, _>| {
            parse_token_response(&result.expect("transport"))
        })
        .expect("the fetch policy allows the loopback mock");
    drive(&mut machine, io).await.expect("driver").expect("token")
}

async fn call(
    handle: &MockHandle,
    io: &Io,
    id: u64,
    method: &str,
    params: serde_json::Value,
    token: Option<&Secret>,
) -> Response<Vec<u8>> {
    let endpoint = McpEndpoint {
        url: Url::parse(&handle.mcp_url()).expect("url"),
        protocol_version: None,
        session_id: None,
        stateless: false,
    };
    let request = rpc_request(&endpoint, Some(id), method, params, token).expect("request");
    let outgoing = Outgoing::unchecked(RequestId(1), request, local_limits(), Performer::Client, "test");
    io.client().perform(&outgoing).await.expect("response")
}

#[tokio::test]
async fn headless_user_agent_returns_the_authorization_redirect() {
    bounded(async {
        let mock = mock().await;
        let io = io(Box::new(Headless));
        let redirect_uri = Url::parse("http://127.0.0.1:9/callback").expect("url");
        let token = authorization_code_flow(&io, &mock, &redirect_uri, |_| {}).await;
        assert!(token.refresh_token.is_some());
        let handle = mock.handle();
        let answer = call(
            &handle,
            &io,
            1,
            "tools/call",
            json!({"name": "add", "arguments": {"a": 2, "b": 40}}),
            Some(&token.access_token),
        )
        .await;
        let result = parse_rpc_response(&answer, 1).expect("result");
        assert_eq!(result["structuredContent"]["sum"], 42);
        let counters = handle.counters();
        assert_eq!(counters.authorize_calls, 1);
        assert_eq!(counters.token_requests_for("authorization_code"), 1);
    })
    .await;
}

#[tokio::test]
async fn loopback_browser_catches_the_redirect() {
    bounded(async {
        let mock = mock().await;
        let port = free_port().await;
        let browser = LoopbackBrowser { wait: Duration::from_secs(10), ..LoopbackBrowser::new(port) };
        let io = io(Box::new(browser));
        let redirect_uri = Url::parse(&format!("http://127.0.0.1:{port}/callback")).expect("url");
        let (page_sender, page) = tokio::sync::oneshot::channel();
        // A stand-in for the person's browser: opens the URL, follows the redirect to the loopback
        // listener (retrying until it listens) and reads the page it is shown.
        let person = |url: Url| {
            tokio::spawn(async move {
                let client = client();
                let authorize = client.perform(&outgoing(Method::GET, url.as_str(), local_limits())).await;
                let authorize = authorize.expect("authorize answers");
                let location = authorize.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
                for _ in 0..100 {
                    match client.perform(&outgoing(Method::GET, &location, local_limits())).await {
                        Ok(response) => {
                            let _ = page_sender.send(response);
                            return;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
        };
        let token = authorization_code_flow(&io, &mock, &redirect_uri, person).await;
        assert!(token.access_token.expose().starts_with("mock_at_"));
        let page = page.await.expect("the browser was answered");
        assert_eq!(page.status(), StatusCode::OK);
        assert!(String::from_utf8_lossy(page.body()).contains("You can close this tab"));
        // The listener is gone once the redirect was caught.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    })
    .await;
}

async fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test]
async fn mcp_server_challenges_then_answers_json_and_sse() {
    bounded(async {
        let mock = mock().await;
        let handle = mock.handle();
        let io = io(Box::new(Headless));
        let unauthorized = call(&handle, &io, 1, "tools/list", json!({}), None).await;
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        let challenge = unauthorized.headers()[header::WWW_AUTHENTICATE].to_str().expect("ascii");
        assert_eq!(
            challenge,
            format!(
                "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", scope=\"mcp\"",
                mock.origin()
            )
        );
        let token = Secret::new(handle.issue_access_token());
        let initialized =
            call(&handle, &io, 2, "initialize", json!({"protocolVersion": "2025-06-18"}), Some(&token)).await;
        assert!(initialized.headers().contains_key("mcp-session-id"));
        assert_eq!(parse_rpc_response(&initialized, 2).expect("result")["protocolVersion"], "2025-06-18");
        let echoed = call(
            &handle,
            &io,
            3,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
            Some(&token),
        )
        .await;
        assert_eq!(parse_rpc_response(&echoed, 3).expect("result")["content"][0]["text"], "hi");

        handle.set(Switch::Sse(true));
        let listed = call(&handle, &io, 4, "tools/list", json!({}), Some(&token)).await;
        assert_eq!(listed.headers()[header::CONTENT_TYPE], "text/event-stream");
        let tools = parse_rpc_response(&listed, 4).expect("result");
        assert_eq!(tools["tools"].as_array().map(Vec::len), Some(2));

        handle.set(Switch::UnauthorizedOnce(true));
        assert_eq!(
            call(&handle, &io, 5, "ping", json!({}), Some(&token)).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(call(&handle, &io, 6, "ping", json!({}), Some(&token)).await.status(), StatusCode::OK);
        handle.set(Switch::McpStatus(Some(502)));
        assert_eq!(
            call(&handle, &io, 7, "ping", json!({}), Some(&token)).await.status(),
            StatusCode::BAD_GATEWAY
        );
        handle.set(Switch::McpStatus(None));
        handle.set(Switch::RequireAuth(false));
        assert_eq!(call(&handle, &io, 8, "ping", json!({}), None).await.status(), StatusCode::OK);
        let counters = handle.counters();
        assert_eq!(counters.mcp_requests_for("ping"), 4);
        assert_eq!(counters.mcp_requests_for("tools/list"), 2);
    })
    .await;
}

/// The core session machine end to end against the mock: probe, discovery, dynamic
/// registration, authorization through the headless user agent, token, MCP calls, then a forced
/// `401` answered by a refresh.
#[tokio::test]
async fn a_whole_session_runs_against_the_mock() {
    use mcp_oauth_core::client::session::{Operation, Session, SessionConfig};
    bounded(async {
        let mock = mock().await;
        let io = io(Box::new(Headless));
        let server_url = Url::parse(&mock.mcp_url()).expect("url");
        let redirect_uri = Url::parse("http://127.0.0.1:9/callback").expect("url");
        let mut config = SessionConfig::new(server_url, redirect_uri, vec![[1u8; 48], [2u8; 48], [3u8; 48]]);
        config.operations = vec![
            Operation::ListTools,
            Operation::CallTool { name: "echo".into(), arguments: json!({"text": "hello"}) },
        ];
        let mut session = Session::new(config);
        let outcome = drive(&mut session, &io).await.expect("driver").expect("session");
        assert_eq!(outcome.results.len(), 2);
        assert_eq!(outcome.results[1]["content"][0]["text"], "hello");
        assert_eq!(outcome.authorizations, 1);
        let counters = mock.handle().counters();
        assert_eq!(counters.registrations, 1);
        assert_eq!(counters.authorize_calls, 1);
        assert_eq!(counters.token_requests_for("authorization_code"), 1);
    })
    .await;
}

/// The session with client credentials over SSE answers.
#[tokio::test]
async fn a_client_credentials_session_over_sse() {
    use mcp_oauth_core::client::session::{GrantKind, Operation, Session, SessionConfig};
    bounded(async {
        let mock = mock().await;
        mock.handle().set(Switch::Sse(true));
        let io = io(Box::new(Headless));
        let server_url = Url::parse(&mock.mcp_url()).expect("url");
        let redirect_uri = Url::parse("http://127.0.0.1:9/callback").expect("url");
        let mut config = SessionConfig::new(server_url, redirect_uri, Vec::new());
        config.grant = GrantKind::ClientCredentials;
        config.identity.client_id = Some("mock-client".to_owned());
        config.identity.client_secret = Some(Secret::new("mock-secret"));
        config.operations =
            vec![Operation::CallTool { name: "add".into(), arguments: json!({"a": 1, "b": 2}) }];
        let mut session = Session::new(config);
        let outcome = drive(&mut session, &io).await.expect("driver").expect("session");
        assert_eq!(outcome.results[0]["structuredContent"]["sum"], 3);
        let counters = mock.handle().counters();
        assert_eq!(counters.token_requests_for("client_credentials"), 1);
        assert_eq!(counters.authorize_calls, 0);
    })
    .await;
}
