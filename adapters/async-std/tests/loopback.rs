//! The async-std adapter against the mock upstream and raw sockets, all on 127.0.0.1.
//!
//! Every test binds `127.0.0.1:0`, runs under a timeout and stops by itself (the mock and its
//! runtime stop when dropped; raw servers serve one connection).

mod common;

use std::future::Future;
use std::time::Duration;

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpListener;
use common::{Upstream, local_limits, outgoing};
use http::{Method, Response, StatusCode, header};
use mcp_oauth_async_std::{Headless, HttpClient, Io, drive};
use mcp_oauth_core::client::discovery::{Discovery, DiscoveryConfig, MetadataSource};
use mcp_oauth_core::client::session::{GrantKind, Operation, Session, SessionConfig};
use mcp_oauth_core::client::token::{
    ACCESS_TOKEN_TYPE, Client, Grant, TokenEndpointAuth, parse_token_response, token_request,
};
use mcp_oauth_core::machine::{Limits, OneShot, TransportError};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_tokio::mock::Switch;
use serde_json::json;
use url::Url;

/// What a request comes back as.
type Answer = Result<Response<Vec<u8>>, TransportError>;

/// Runs a test body under a 30 s bound so nothing can hang CI.
fn bounded<T>(body: impl Future<Output = T>) -> T {
    async_std::task::block_on(async_std::future::timeout(Duration::from_secs(30), body))
        .expect("the test took longer than 30 s")
}

fn client() -> HttpClient {
    HttpClient::new().expect("client")
}

fn io() -> Io {
    Io::new(client(), Box::new(Headless))
}

#[test]
fn discovery_finds_the_mock_authorization_server() {
    let upstream = Upstream::start(&[]);
    bounded(async {
        let mut machine = Discovery::new(DiscoveryConfig::new(Url::parse(&upstream.mcp_url()).expect("url")));
        let discovered = drive(&mut machine, &io()).await.expect("driver").expect("discovery");
        let origin = upstream.origin();
        assert_eq!(discovered.probe_status, 401);
        assert_eq!(
            discovered.source,
            MetadataSource::Document(
                Url::parse(&format!("{origin}/.well-known/oauth-authorization-server")).expect("url")
            )
        );
        assert_eq!(discovered.authorization_server.token_endpoint, Some(format!("{origin}/token")));
        assert_eq!(discovered.scopes, Some(vec!["mcp".to_owned()]));
    });
    assert_eq!(upstream.handle().counters().mcp_requests_for("initialize"), 1);
}

/// Serves one connection: reads the request head, writes `head`, then `body_chunks` copies of a
/// 16 KiB chunk (stopping when the client goes away).
async fn raw_server(head: &'static [u8], body_chunks: usize) -> (String, async_std::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let task = async_std::task::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        if stream.write_all(head).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..body_chunks {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stream.flush().await;
    });
    (url, task)
}

#[test]
fn an_endless_chunked_body_is_cut_at_the_limit() {
    bounded(async {
        // One chunk of 64 MiB announced, 64 MiB sent (never read past the cap).
        let (url, server) =
            raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4000000\r\n", 4096).await;
        let limits = Limits { max_body_bytes: 64 * 1024, ..local_limits() };
        let result = client().perform(&outgoing(Method::GET, &url, limits)).await;
        assert_eq!(result.unwrap_err(), TransportError::BodyTooLarge { limit: 64 * 1024 });
        server.cancel().await;
    });
}

#[test]
fn a_declared_length_past_the_limit_fails_before_reading() {
    bounded(async {
        let (url, server) = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", 1).await;
        let limits = Limits { max_body_bytes: 1024, ..local_limits() };
        let result = client().perform(&outgoing(Method::GET, &url, limits)).await;
        assert_eq!(result.unwrap_err(), TransportError::BodyTooLarge { limit: 1024 });
        server.cancel().await;
    });
}

#[test]
fn a_missing_date_is_not_invented() {
    bounded(async {
        let (url, server) =
            raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\nok", 0).await;
        let response = client().perform(&outgoing(Method::GET, &url, local_limits())).await.expect("200");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), b"ok");
        assert_eq!(response.headers()["x-kept"], "yes");
        assert!(response.headers().get(header::DATE).is_none(), "{:?}", response.headers());
        server.await;
        let (url, server) = raw_server(
            b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jul 2025 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
            0,
        )
        .await;
        let response = client().perform(&outgoing(Method::GET, &url, local_limits())).await.expect("200");
        assert_eq!(response.headers()[header::DATE], "Tue, 01 Jul 2025 10:00:00 GMT");
        server.await;
    });
}

#[test]
fn an_http_1_0_answer_is_reported_clearly() {
    bounded(async {
        let (url, server) = raw_server(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 0).await;
        let result = client().perform(&outgoing(Method::GET, &url, local_limits())).await;
        match result {
            Err(TransportError::Unsupported(message)) => assert!(message.contains("HTTP/1.0"), "{message}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        server.await;
    });
}

#[test]
fn a_non_ascii_response_header_fails_the_request_without_a_panic() {
    bounded(async {
        let (url, server) =
            raw_server("HTTP/1.1 200 OK\r\nX-Name: café\r\nContent-Length: 2\r\n\r\nok".as_bytes(), 0).await;
        let result = client().perform(&outgoing(Method::GET, &url, local_limits())).await;
        assert!(matches!(result, Err(TransportError::Connect(_))), "{result:?}");
        server.await;
        // Bytes that are not UTF-8 at all are refused by async-h1 with an error.
        let (url, server) =
            raw_server(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok", 0).await;
        let result = client().perform(&outgoing(Method::GET, &url, local_limits())).await;
        assert!(matches!(result, Err(TransportError::Connect(_))), "{result:?}");
        server.await;
    });
}

#[test]
fn a_slow_server_times_out() {
    let upstream = Upstream::start(&[Switch::SlowMs(5_000)]);
    bounded(async {
        let limits = Limits { timeout: Duration::from_millis(200), ..local_limits() };
        let url = format!("{}/.well-known/oauth-authorization-server", upstream.origin());
        let started = std::time::Instant::now();
        let result = client().perform(&outgoing(Method::GET, &url, limits)).await;
        assert_eq!(result.unwrap_err(), TransportError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));
    });
}

#[test]
fn redirects_are_returned_not_followed() {
    let upstream = Upstream::start(&[]);
    bounded(async {
        // The redirect points at port 9, where nothing listens: following it would fail.
        let url = format!(
            "{}/authorize?response_type=code&client_id=mock-client&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb\
             &code_challenge=abc&code_challenge_method=S256&state=xyz",
            upstream.origin()
        );
        let response = client().perform(&outgoing(Method::GET, &url, local_limits())).await.expect("302");
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response.headers()[header::LOCATION].to_str().expect("location");
        assert!(location.starts_with("http://127.0.0.1:9/cb?code="), "{location}");
    });
    assert_eq!(upstream.handle().counters().authorize_calls, 1);
}

#[test]
fn refused_addresses_are_blocked_before_connecting() {
    let upstream = Upstream::start(&[]);
    bounded(async {
        let client = client();
        for url in ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://0.0.0.0:80/"] {
            let result = client.perform(&outgoing(Method::GET, url, local_limits())).await;
            assert!(matches!(result, Err(TransportError::Blocked(_))), "{url}: {result:?}");
        }
        let port = upstream.port();
        for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
            let result = client.perform(&outgoing(Method::GET, &url, Limits::METADATA)).await;
            assert!(matches!(result, Err(TransportError::Blocked(_))), "{url}: {result:?}");
        }
        let unsupported = client.perform(&outgoing(Method::GET, "ftp://127.0.0.1/", local_limits())).await;
        assert!(matches!(unsupported, Err(TransportError::Unsupported(_))));
    });
    assert_eq!(upstream.handle().counters().connections, 0, "no connection was attempted");
}

#[test]
fn connection_refused_is_a_connect_error() {
    bounded(async {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        drop(listener);
        let result = client().perform(&outgoing(Method::GET, &url, local_limits())).await;
        assert!(matches!(result, Err(TransportError::Connect(_))), "{result:?}");
    });
}

fn cc_machine(origin: &str, secret: &str, auth: TokenEndpointAuth) -> OneShot<impl FnOnce(Answer) -> String> {
    let endpoint = Url::parse(&format!("{origin}/token")).expect("url");
    let secret = Secret::new(secret);
    let client = Client { client_id: "mock-client", client_secret: Some(&secret), auth };
    let request = token_request(&endpoint, &client, &Grant::ClientCredentials, &["mcp".to_owned()], None)
        .expect("request");
    OneShot::new(request, local_limits(), "token", |result: Result<Response<Vec<u8>>, _>| {
        match parse_token_response(&result.expect("transport")) {
            Ok(token) => format!("token {}", &token.access_token.expose()[..8]),
            Err(error) => format!("{error:?}"),
        }
    })
    .expect("the fetch policy allows the loopback mock")
}

#[test]
fn client_credentials_and_token_exchange() {
    let upstream = Upstream::start(&[]);
    bounded(async {
        let io = io();
        let origin = upstream.origin();
        for auth in [TokenEndpointAuth::ClientSecretBasic, TokenEndpointAuth::ClientSecretPost] {
            let outcome = drive(&mut cc_machine(&origin, "mock-secret", auth), &io).await.expect("driver");
            assert_eq!(outcome, "token mock_at_");
        }
        let refused = drive(&mut cc_machine(&origin, "wrong", TokenEndpointAuth::ClientSecretPost), &io)
            .await
            .expect("driver");
        assert!(refused.contains("status: 401"), "{refused}");

        let endpoint = Url::parse(&format!("{origin}/token")).expect("url");
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
        let mut machine = OneShot::new(request, local_limits(), "token_exchange", |result: Result<_, _>| {
            parse_token_response(&result.expect("transport"))
        })
        .expect("the fetch policy allows the loopback mock");
        let token = drive(&mut machine, &io).await.expect("driver").expect("token");
        assert_eq!(token.issued_token_type.as_deref(), Some(ACCESS_TOKEN_TYPE));
    });
    let counters = upstream.handle().counters();
    assert_eq!(counters.token_requests_for("client_credentials"), 3);
    assert_eq!(counters.token_requests_for("token_exchange"), 1);
}

/// The whole interactive session: probe, discovery, registration, authorization code with PKCE
/// through the headless user agent, token, MCP calls.
#[test]
fn an_interactive_session_runs_against_the_mock() {
    let upstream = Upstream::start(&[]);
    bounded(async {
        let server_url = Url::parse(&upstream.mcp_url()).expect("url");
        let redirect_uri = Url::parse("http://127.0.0.1:9/callback").expect("url");
        let mut config = SessionConfig::new(server_url, redirect_uri, vec![[1u8; 48], [2u8; 48], [3u8; 48]]);
        config.operations = vec![
            Operation::ListTools,
            Operation::CallTool { name: "echo".into(), arguments: json!({"text": "hello"}) },
        ];
        let outcome = drive(&mut Session::new(config), &io()).await.expect("driver").expect("session");
        assert_eq!(outcome.results[1]["content"][0]["text"], "hello");
        assert_eq!(outcome.authorizations, 1);
    });
    let counters = upstream.handle().counters();
    assert_eq!(counters.registrations, 1);
    assert_eq!(counters.authorize_calls, 1);
    assert_eq!(counters.token_requests_for("authorization_code"), 1);
}

#[test]
fn a_client_credentials_session_over_sse() {
    let upstream = Upstream::start(&[Switch::Sse(true)]);
    bounded(async {
        let server_url = Url::parse(&upstream.mcp_url()).expect("url");
        let redirect_uri = Url::parse("http://127.0.0.1:9/callback").expect("url");
        let mut config = SessionConfig::new(server_url, redirect_uri, Vec::new());
        config.grant = GrantKind::ClientCredentials;
        config.identity.client_id = Some("mock-client".to_owned());
        config.identity.client_secret = Some(Secret::new("mock-secret"));
        config.operations =
            vec![Operation::CallTool { name: "add".into(), arguments: json!({"a": 1, "b": 2}) }];
        let outcome = drive(&mut Session::new(config), &io()).await.expect("driver").expect("session");
        assert_eq!(outcome.results[0]["structuredContent"]["sum"], 3);
    });
    assert_eq!(upstream.handle().counters().token_requests_for("client_credentials"), 1);
}

/// The M2M example (cargo builds examples for `cargo test`, next to `deps/`) against the mock.
#[test]
fn the_m2m_example_lists_the_tools() {
    let Some(example) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join("m2m")))
        .filter(|path| path.exists())
    else {
        eprintln!("the m2m example is not built next to the tests; skipped");
        return;
    };
    let upstream = Upstream::start(&[]);
    let mut child = std::process::Command::new(example)
        .arg(upstream.mcp_url())
        .env("MCP_CLIENT_ID", "mock-client")
        .env("MCP_CLIENT_SECRET", "mock-secret")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the example");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the example took longer than 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("2 tool(s)") && stdout.contains("echo: Returns its text."), "{stdout}");
    assert_eq!(upstream.handle().counters().token_requests_for("client_credentials"), 1);
}
