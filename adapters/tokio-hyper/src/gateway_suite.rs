//! The gateway's end-to-end suite over loopback, for every runtime that hosts it (feature
//! `gateway-suite`): every route, each failure, and what must never leak.
//!
//! Each test is a function generic over a [`GatewayHost`], the runtime that runs the gateway
//! (its accept loop, timers and upstream client); the test client, the mock upstream and the
//! assertions run on tokio. [`gateway_suite!`](macro@crate::gateway_suite) declares every test for one
//! host, so `cargo test -p mcp-oauth-tokio --test gateway` and `cargo test -p mcp-oauth-async-std
//! gateway` run the same suite.
//!
//! Every test binds `127.0.0.1:0`, runs under a 30 s bound and stops by itself (the gateway on a
//! shutdown signal, the mock when dropped). One global `tracing` subscriber captures every log
//! line of every test at TRACE level, so the secrets test checks all of them.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mcp_oauth_core::config::GatewayConfig;
use mcp_oauth_core::config::StoreSetting;
use mcp_oauth_core::config::load_yaml;
use mcp_oauth_core::pkce::Pkce;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_runtime::grant_store::DynGrantStore;

use crate::mock::{MockConfig, MockUpstream, Switch, Switches};
use crate::server::{ServerOptions, TokenKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

mod durable;
pub use durable::*;

const KEY: &str = "sk-gateway-test-key-0001";
const CLIENT_SECRET: &str = "mock-secret";

async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), body).await.expect("the test took longer than 30 s")
}

/// A grant store opening on the host's runtime.
pub type OpenedStore = std::pin::Pin<Box<dyn Future<Output = Result<Arc<dyn DynGrantStore>, String>> + Send>>;

/// A gateway in front of a mock, stopped when dropped.
struct Gateway {
    /// Shared by the replicas of one test.
    mock: Arc<MockUpstream>,
    origin: String,
    /// Where it listens (a restart binds the same port).
    listen: std::net::SocketAddr,
    /// What it was started with (a restart or a replica starts with the same).
    config: GatewayConfig,
    options: ServerOptions,
    fetches: Box<dyn Fn() -> u64 + Send + Sync>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn servers_yaml(upstream: &str) -> String {
    format!(
        "general_settings:
  master_key: {KEY}
mcp_servers:
  reports:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    token_url: {upstream}/token
  notes:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    issuer: {upstream}
    authorization_url: {upstream}/authorize
    token_url: {upstream}/token
  delegated:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    authorization_url: {upstream}/authorize
    delegate_auth_to_upstream: true
  exchange:
    url: {upstream}/mcp
    auth_type: oauth2_token_exchange
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    token_exchange_endpoint: {upstream}/token
    audience: mcp
  open:
    url: {upstream}/mcp
"
    )
}

/// Builds the YAML from the mock's origin.
type MakeYaml = Box<dyn FnOnce(&str) -> String>;

struct Setup {
    yaml: Option<MakeYaml>,
    options: ServerOptions,
    public_origin: bool,
    /// Pin the origin to the loopback listen address, as `mcp-oauth serve` does.
    pin_listen: bool,
    /// Lines added under `general_settings:` (a grant store and its sealing keys).
    general: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            yaml: None,
            options: ServerOptions::default(),
            public_origin: true,
            pin_listen: false,
            general: None,
        }
    }
}

/// The log lines of every gateway in this test binary.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        captured
    })
}

/// The runtime that hosts the gateway under test.
pub trait GatewayHost: 'static {
    /// Whether the upstream client keeps connections alive between requests (tokio's pooled
    /// client does; async-std's opens one per request).
    const POOLED: bool;

    /// Builds the gateway's state for `config`, or says why the runtime's constructor refuses it.
    fn check(config: GatewayConfig, options: ServerOptions) -> Result<(), String>;

    /// Opens the grant store `setting` names on this host's runtime
    /// ([`mcp_oauth_runtime::grant_store::open_store`]), as `mcp-oauth serve` does.
    fn open_store(setting: StoreSetting) -> OpenedStore;

    /// Serves `config` with `store` on `listener` (bound, non-blocking) until `stop` fires; `done`
    /// fires when serving has returned. The answer reads the gateway's token-fetch counter.
    fn start(
        config: GatewayConfig,
        options: ServerOptions,
        store: Arc<dyn DynGrantStore>,
        listener: std::net::TcpListener,
        stop: oneshot::Receiver<()>,
        done: oneshot::Sender<()>,
    ) -> Box<dyn Fn() -> u64 + Send + Sync>;
}

/// The gateway on tokio ([`crate::server::serve`]).
#[derive(Debug)]
pub struct TokioHost;

impl GatewayHost for TokioHost {
    const POOLED: bool = true;

    fn check(config: GatewayConfig, options: ServerOptions) -> Result<(), String> {
        crate::server::gateway_state(config, options).map(drop).map_err(|error| error.to_string())
    }

    fn open_store(setting: StoreSetting) -> OpenedStore {
        Box::pin(async move {
            mcp_oauth_runtime::grant_store::open_store(
                &setting,
                mcp_oauth_runtime::grant_store::DEFAULT_MAX_RECORDS,
                crate::TokioRuntime,
            )
            .await
            .map_err(|error| error.to_string())
        })
    }

    fn start(
        config: GatewayConfig,
        options: ServerOptions,
        store: Arc<dyn DynGrantStore>,
        listener: std::net::TcpListener,
        stop: oneshot::Receiver<()>,
        done: oneshot::Sender<()>,
    ) -> Box<dyn Fn() -> u64 + Send + Sync> {
        let state =
            Arc::new(crate::server::gateway_state(config, options).expect("state").with_grant_store(store));
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            crate::server::serve(listener, serving, async {
                let _ = stop.await;
            })
            .await;
            let _ = done.send(());
        });
        Box::new(move || state.tokens().fetches())
    }
}

async fn start<H: GatewayHost>(setup: Setup) -> Gateway {
    logs();
    let mock = MockUpstream::start(MockConfig::default()).await.expect("mock starts");
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let listen = listener.local_addr().expect("address");
    let origin = format!("http://{listen}");
    let mut yaml = match setup.yaml {
        Some(make) => make(mock.origin()),
        None => servers_yaml(mock.origin()),
    };
    if let Some(general) = &setup.general {
        yaml = yaml.replacen("general_settings:\n", &format!("general_settings:\n{general}"), 1);
    }
    let public = origin.clone();
    let with_origin = setup.public_origin;
    let env = move |name: &str| (with_origin && name == "PROXY_BASE_URL").then(|| public.clone());
    let mut loaded = load_yaml(&yaml, &env).unwrap_or_else(|errors| panic!("config: {:?}", errors.errors));
    if setup.pin_listen {
        loaded.config.settings.origin.pin_listen_address(listen);
    }
    let mut gateway = Gateway {
        mock: Arc::new(mock),
        origin,
        listen,
        config: loaded.config,
        options: setup.options,
        fetches: Box::new(|| 0),
        stop: None,
        done: None,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    launch::<H>(&mut gateway, listener).await;
    gateway
}

/// Opens the configured store on the host and serves `gateway`'s configuration on `listener`.
async fn launch<H: GatewayHost>(gateway: &mut Gateway, listener: std::net::TcpListener) {
    let store =
        H::open_store(gateway.config.settings.grants.store.clone()).await.expect("the grant store opens");
    let (stop, stopped) = oneshot::channel::<()>();
    let (finished, done) = oneshot::channel::<()>();
    gateway.fetches = H::start(gateway.config.clone(), gateway.options, store, listener, stopped, finished);
    gateway.stop = Some(stop);
    gateway.done = Some(done);
    gateway.client = Client::builder(TokioExecutor::new()).build_http();
}

impl Gateway {
    /// Stops the gateway, waits until it has stopped, and starts it again on the same port with
    /// the same configuration and a freshly opened store: a process restart, minus the process.
    async fn restart<H: GatewayHost>(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        let listener = std::net::TcpListener::bind(self.listen).expect("the same port again");
        listener.set_nonblocking(true).expect("non-blocking");
        launch::<H>(self, listener).await;
    }

    /// A second gateway with the same configuration (so the same public origin, keys and store)
    /// and the same upstream, on its own port, sharing nothing in memory with this one.
    async fn replica<H: GatewayHost>(&self) -> Gateway {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let listen = listener.local_addr().expect("address");
        let mut replica = Gateway {
            mock: Arc::clone(&self.mock),
            origin: format!("http://{listen}"),
            listen,
            config: self.config.clone(),
            options: self.options,
            fetches: Box::new(|| 0),
            stop: None,
            done: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        launch::<H>(&mut replica, listener).await;
        replica
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

impl Gateway {
    async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.origin) };
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).expect("request");
        let response: Response<_> = self.client.request(request).await.expect("the gateway answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn call(&self, server: &str, extra: &[(&str, &str)], method: &str, params: Value) -> Answer {
        let mut headers =
            vec![("content-type", "application/json"), ("accept", "application/json, text/event-stream")];
        headers.extend_from_slice(extra);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        self.request(Method::POST, &format!("/{server}/mcp"), &headers, &body).await
    }

    async fn echo(&self, server: &str, extra: &[(&str, &str)]) -> Answer {
        self.call(server, extra, "tools/call", json!({"name": "echo", "arguments": {"text": "hi"}})).await
    }
}

fn keyed() -> Vec<(&'static str, &'static str)> {
    vec![("x-mcp-gateway-key", KEY)]
}

/// The gateway key, and the caller's own `Authorization` (the subject of a token exchange).
fn keyed_as(authorization: &str) -> Vec<(&'static str, &str)> {
    let mut headers: Vec<(&str, &str)> = keyed();
    headers.push(("authorization", authorization));
    headers
}

/// A `tracing` subscriber writing into a shared buffer, for the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// Routes answer and oauth endpoints hide non interactive servers.
pub async fn routes_answer_and_oauth_endpoints_hide_non_interactive_servers<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let health = gateway.request(Method::GET, "/health", &[], "").await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.json()["status"], "ok");

        let prm =
            gateway.request(Method::GET, "/.well-known/oauth-protected-resource/notes/mcp", &[], "").await;
        assert_eq!(prm.status, StatusCode::OK);
        assert_eq!(prm.json()["resource"], format!("{}/notes/mcp", gateway.origin));
        let asm =
            gateway.request(Method::GET, "/.well-known/oauth-authorization-server/notes", &[], "").await;
        assert_eq!(asm.json()["token_endpoint"], format!("{}/notes/token", gateway.origin));

        let unknown =
            gateway.request(Method::GET, "/.well-known/oauth-authorization-server/nope", &[], "").await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        for name in ["reports", "open", "nope"] {
            for (method, path) in [
                (Method::GET, format!("/.well-known/oauth-protected-resource/{name}/mcp")),
                (Method::GET, format!("/.well-known/oauth-authorization-server/{name}")),
                (Method::GET, format!("/{name}/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb")),
                (Method::POST, format!("/{name}/register")),
            ] {
                let answer = gateway.request(method, &path, &[], "{}").await;
                assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
                assert_eq!(answer.body, unknown.body, "{path} looks like an unknown server");
            }
            let token = gateway
                .request(
                    Method::POST,
                    &format!("/{name}/token"),
                    &[("content-type", "application/x-www-form-urlencoded")],
                    "grant_type=refresh_token&refresh_token=x",
                )
                .await;
            assert_eq!(token.status, StatusCode::NOT_FOUND);
            assert_eq!(token.body, unknown.body);
        }

        let register = gateway
            .request(
                Method::POST,
                "/notes/register",
                &[("content-type", "application/json")],
                r#"{"redirect_uris":["http://127.0.0.1:9/cb"]}"#,
            )
            .await;
        assert_eq!(register.status, StatusCode::CREATED, "{}", register.body);
        assert_eq!(register.json()["redirect_uris"], json!(["http://127.0.0.1:9/cb"]));
        assert_ne!(
            register.json()["client_id"],
            "mock-client",
            "the gateway's own upstream client stays hidden"
        );
        assert!(!register.body.contains(CLIENT_SECRET));

        let nowhere = gateway.request(Method::GET, "/no/such/route", &[], "").await;
        assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
        assert_eq!(nowhere.header("content-type"), Some("application/json"));
    })
    .await;
}

/// M2m calls send one upstream request each and fetch one token.
pub async fn m2m_calls_send_one_upstream_request_each_and_fetch_one_token<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        for _ in 0..5 {
            let answer = gateway.echo("reports", &keyed()).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.json()["result"]["content"][0]["text"], "hi");
        }
        let counters = gateway.mock.handle().counters();
        assert_eq!(counters.mcp_requests_for("tools/call"), 5);
        // The caller sent no session id, so the calls run in the gateway's own upstream session
        // (design §4.11): opened once, then one upstream request per call.
        assert_eq!(counters.mcp_requests_for("initialize"), 1, "one session for all five calls");
        assert_eq!(
            counters.mcp_requests.values().sum::<u64>(),
            5 + 2,
            "no initialize or tools/list per call"
        );
        assert_eq!(counters.token_requests_for("client_credentials"), 1);
        assert_eq!((gateway.fetches)(), 1);
        if H::POOLED {
            assert!(counters.connections <= 3, "keep-alive: {} connections", counters.connections);
        } else {
            assert_eq!(counters.connections, 5 + 2 + 1, "one connection per upstream request");
        }
    })
    .await;
}

/// Concurrent first calls share one token fetch.
pub async fn concurrent_first_calls_share_one_token_fetch<H: GatewayHost>() {
    bounded(async {
        let gateway = Arc::new(start::<H>(Setup::default()).await);
        gateway.mock.handle().set(Switch::SlowMs(50));
        let mut calls = Vec::new();
        for _ in 0..10 {
            let gateway = Arc::clone(&gateway);
            calls.push(tokio::spawn(async move { gateway.echo("reports", &keyed()).await.status }));
        }
        for call in calls {
            assert_eq!(call.await.expect("task"), StatusCode::OK);
        }
        assert_eq!(gateway.mock.handle().counters().token_requests_for("client_credentials"), 1);
    })
    .await;
}

/// Exchanged tokens are cached per caller token.
pub async fn exchanged_tokens_are_cached_per_caller_token<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let exchanges = || gateway.mock.handle().counters().token_requests_for("token_exchange");
        let alice = keyed_as("Bearer alice-caller-token-0001");
        for _ in 0..2 {
            let answer = gateway.echo("exchange", &alice).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.json()["result"]["content"][0]["text"], "hi");
        }
        assert_eq!(exchanges(), 1, "the second call reuses the exchanged token");
        let bob = gateway.echo("exchange", &keyed_as("Bearer bob-caller-token-0002")).await;
        assert_eq!(bob.status, StatusCode::OK, "{}", bob.body);
        assert_eq!(exchanges(), 2, "another caller token gets its own exchange");
        assert_eq!(gateway.echo("exchange", &alice).await.status, StatusCode::OK);
        assert_eq!(exchanges(), 2);
        assert_eq!((gateway.fetches)(), 2);

        // An upstream 401 to a cached exchanged token: one fresh exchange, one retry, success.
        gateway.mock.handle().set(Switch::UnauthorizedOnce(true));
        let calls_before = gateway.mock.handle().counters().mcp_requests_for("tools/call");
        let answer = gateway.echo("exchange", &alice).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(exchanges(), 3, "the refused token is exchanged afresh once");
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("tools/call") - calls_before, 2);
    })
    .await;
}

/// An upstream 401 refetches the token once and retries once.
pub async fn an_upstream_401_refetches_the_token_once_and_retries_once<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        assert_eq!(gateway.echo("reports", &keyed()).await.status, StatusCode::OK);
        gateway.mock.handle().set(Switch::UnauthorizedOnce(true));
        let answer = gateway.echo("reports", &keyed()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let counters = gateway.mock.handle().counters();
        assert_eq!(counters.token_requests_for("client_credentials"), 2);
        assert_eq!(counters.mcp_requests_for("tools/call"), 3, "1 + the refused one + its retry");

        // An upstream that keeps refusing gets one retry, then its 401 is relayed.
        gateway.mock.handle().set(Switch::McpStatus(Some(401)));
        let before = gateway.mock.handle().counters().mcp_requests_for("tools/call");
        let refused = gateway.echo("reports", &keyed()).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(refused.header("www-authenticate").is_none());
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("tools/call") - before, 2);
    })
    .await;
}

/// Upstream down is a 502 naming the step.
pub async fn upstream_down_is_a_502_naming_the_step<H: GatewayHost>() {
    bounded(async {
        // Port 1 on loopback: nothing listens there (a port freed by another test could be bound
        // again by a parallel one, which made this test flaky).
        let dead = "http://127.0.0.1:1".to_owned();
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(move |_| {
                format!(
                    "general_settings:\n  master_key: {KEY}\nmcp_servers:\n  wiki:\n    url: {dead}/mcp\n    auth_type: bearer_token\n    authentication_token: wiki-static-token-0001\n"
                )
            })),
            ..Setup::default()
        })
        .await;
        let answer = gateway.echo("wiki", &keyed()).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert_eq!(answer.json()["error"], "upstream_unreachable");
        assert!(answer.json()["error_description"].as_str().unwrap_or_default().contains("`wiki`"));
        assert!(!answer.body.contains("wiki-static-token-0001") && !answer.body.contains(KEY));
    })
    .await;
}

/// Upstream 5xx is a 502.
pub async fn upstream_5xx_is_a_502<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        gateway.mock.handle().set(Switch::McpStatus(Some(500)));
        let answer = gateway.echo("reports", &keyed()).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert_eq!(answer.json()["error"], "upstream_error");
    })
    .await;
}

/// Token endpoint failure is a 503 without secrets.
pub async fn token_endpoint_failure_is_a_503_without_secrets<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        gateway.mock.handle().set(Switch::TokenStatus(Some(500)));
        let answer = gateway.echo("reports", &keyed()).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.json()["error"], "token_endpoint_failed");
        assert!(answer.json()["error_description"].as_str().unwrap_or_default().contains("token"));
        assert!(!answer.body.contains(CLIENT_SECRET) && !answer.body.contains(KEY));

        // Right after a failure the cache backs off: the same 503, without asking the endpoint.
        let again = gateway.echo("reports", &keyed()).await;
        assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(again.json()["error"], "token_endpoint_failed");
        assert!(again.json()["error_description"].as_str().unwrap_or_default().contains("`reports`"));
        assert!(again.header("retry-after").is_some_and(|seconds| seconds.parse::<u64>().is_ok()));
        assert!(!again.body.contains(CLIENT_SECRET) && !again.body.contains(KEY));
        assert_eq!(gateway.mock.handle().counters().token_requests_for("client_credentials"), 1);

        // Callers waiting for a fetch that fails get the 503 too; the endpoint saw one request.
        gateway.mock.handle().set(Switch::SlowMs(100));
        let caller = keyed_as("Bearer carol-caller-token-0003");
        let answers = futures_util::future::join_all((0..5).map(|_| gateway.echo("exchange", &caller))).await;
        for answer in answers {
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
            assert_eq!(answer.json()["error"], "token_endpoint_failed");
            assert!(answer.json()["error_description"].as_str().unwrap_or_default().contains("`exchange`"));
            assert!(!answer.body.contains("carol-caller-token-0003") && !answer.body.contains(CLIENT_SECRET));
        }
        assert_eq!(gateway.mock.handle().counters().token_requests_for("token_exchange"), 1);
        assert_eq!(gateway.mock.handle().counters().mcp_requests.values().sum::<u64>(), 0);
    })
    .await;
}

/// A slow upstream is a 504.
pub async fn a_slow_upstream_is_a_504<H: GatewayHost>() {
    bounded(async {
        let options =
            ServerOptions { upstream_timeout: Duration::from_millis(300), ..ServerOptions::default() };
        let gateway = start::<H>(Setup { options, ..Setup::default() }).await;
        assert_eq!(gateway.echo("reports", &keyed()).await.status, StatusCode::OK);
        gateway.mock.handle().set(Switch::SlowMs(2_000));
        let answer = gateway.echo("reports", &keyed()).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(answer.json()["error"], "upstream_timeout");
    })
    .await;
}

/// Oversized bodies are 413.
pub async fn oversized_bodies_are_413<H: GatewayHost>() {
    bounded(async {
        let options = ServerOptions { max_request_body: 1024, ..ServerOptions::default() };
        let gateway = start::<H>(Setup { options, ..Setup::default() }).await;
        let big = "x".repeat(4096);
        let answer = gateway
            .request(
                Method::POST,
                "/reports/mcp",
                &[("x-mcp-gateway-key", KEY), ("content-type", "application/json")],
                &big,
            )
            .await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.json()["error"], "payload_too_large");
        let form = "a".repeat(70 * 1024);
        let token = gateway
            .request(
                Method::POST,
                "/notes/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                &form,
            )
            .await;
        assert_eq!(token.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(gateway.mock.handle().counters().mcp_requests.values().sum::<u64>(), 0);
    })
    .await;
}

/// An invalid redirect uri is a 400 without location.
pub async fn an_invalid_redirect_uri_is_a_400_without_location<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let client_id = gateway.register("http://127.0.0.1:9/cb").await;
        for uri in ["https://evil.example/cb", "http://127.0.0.1\\@evil.example/cb", "javascript:alert(1)"] {
            let registered = gateway
                .request(
                    Method::POST,
                    "/notes/register",
                    &[("content-type", "application/json")],
                    &json!({"redirect_uris": [uri]}).to_string(),
                )
                .await;
            assert_eq!(registered.status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(registered.json()["error"], "invalid_redirect_uri");
            let path = authorize_path(&client_id, uri, &Pkce::from_random([1; 32]));
            let answer = gateway.request(Method::GET, &path, &[], "").await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(answer.header("location").is_none(), "{uri}");
            assert!(answer.body.contains("redirect_uri"), "the page says what is wrong: {}", answer.body);
        }
        assert_eq!(gateway.mock.handle().counters().authorize_calls, 0);
    })
    .await;
}

/// Forged forwarded headers from an untrusted peer change nothing.
pub async fn forged_forwarded_headers_from_an_untrusted_peer_change_nothing<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(|upstream| {
                servers_yaml(upstream).replacen(
                    "general_settings:\n",
                    "general_settings:\n  use_x_forwarded_for: true\n  mcp_trusted_proxy_ranges: [10.0.0.0/8]\n",
                    1,
                )
            })),
            public_origin: false,
            ..Setup::default()
        })
        .await;
        let forged = [("x-forwarded-host", "evil.example"), ("x-forwarded-proto", "https")];
        let prm = gateway.request(Method::GET, "/.well-known/oauth-protected-resource/notes/mcp", &forged, "").await;
        assert_eq!(prm.status, StatusCode::OK);
        assert_eq!(prm.json()["resource"], format!("{}/notes/mcp", gateway.origin));
        assert!(!prm.body.contains("evil.example"));
        let asm = gateway.request(Method::GET, "/.well-known/oauth-authorization-server/notes", &forged, "").await;
        assert!(!asm.body.contains("evil.example"));
        let refused = gateway.echo("reports", &forged).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(!refused.header("www-authenticate").unwrap_or_default().contains("evil.example"));
    })
    .await;
}

/// Delegation fails closed.
pub async fn delegation_fails_closed<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        // No key on a non-delegating server: the gateway's own challenge.
        let refused = gateway.echo("reports", &[]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        // `reports` is not interactive: it publishes no metadata, so the challenge names none.
        assert_eq!(refused.header("www-authenticate"), Some("Bearer realm=\"mcp-oauth\""));
        let metadata =
            gateway.request(Method::GET, "/.well-known/oauth-protected-resource/reports/mcp", &[], "").await;
        assert_eq!(metadata.status, StatusCode::NOT_FOUND);
        let wrong = gateway.echo("reports", &[("x-mcp-gateway-key", "sk-wrong")]).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.body.contains(KEY));
        assert_eq!(gateway.mock.handle().counters().mcp_requests.values().sum::<u64>(), 0);

        // A delegating server: no challenge of the gateway's own; the upstream's 401 and its
        // WWW-Authenticate come back, and the caller's Authorization goes up untouched.
        let upstream = gateway.echo("delegated", &[]).await;
        assert_eq!(upstream.status, StatusCode::UNAUTHORIZED);
        let challenge = upstream.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains(gateway.mock.origin()), "{challenge}");
        let token = gateway.mock.handle().issue_access_token();
        let bearer = format!("Bearer {token}");
        let ok = gateway.echo("delegated", &[("authorization", bearer.as_str())]).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

        // Mixing in a non-delegating target enforces the gateway's auth again.
        let mixed = gateway
            .echo("delegated", &[("x-mcp-servers", "reports"), ("authorization", bearer.as_str())])
            .await;
        assert_eq!(mixed.status, StatusCode::UNAUTHORIZED);
        assert_eq!(mixed.header("www-authenticate"), Some("Bearer realm=\"mcp-oauth\""), "the gateway's own");
    })
    .await;
}

/// Interactive flow through the gateway then passthrough.
pub async fn interactive_flow_through_the_gateway_then_passthrough<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let signed = gateway.sign_in("http://127.0.0.1:9/cb").await;
        let access = signed.access.clone();
        assert!(access.starts_with("mcpgw_") && signed.refresh.starts_with("mcpgw_"), "gateway tokens only");
        assert_eq!(gateway.mock.handle().counters().authorize_calls, 1);

        // The gateway's token admits the call with no key; the upstream sees its own token.
        let bearer = format!("Bearer {access}");
        let ok = gateway.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
        // The key alone, or the token at another server, is the gateway's 401 challenge.
        let keyed_only = gateway.echo("notes", &keyed()).await;
        assert_eq!(keyed_only.status, StatusCode::UNAUTHORIZED);
        assert!(
            keyed_only
                .header("www-authenticate")
                .is_some_and(|value| value.contains("/.well-known/oauth-protected-resource/notes/mcp"))
        );
        let elsewhere = gateway.echo("reports", &[("authorization", bearer.as_str())]).await;
        assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED, "never forwarded elsewhere");

        // The aggregating endpoint uses the newest grant of the identity the key admits (design §4.8).
        let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "notes-echo", "arguments": {"text": "aggregated"}}});
        let aggregated = gateway.aggregated("notes", &keyed(), &call).await;
        assert_eq!(aggregated.json()["result"]["content"][0]["text"], "aggregated", "{}", aggregated.body);

        // The upstream drops its tokens: the gateway refreshes once with its refresh token and retries.
        gateway.mock.handle().revoke_access_tokens();
        let refreshed = gateway.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
        assert_eq!(gateway.mock.handle().counters().token_requests_for("refresh_token"), 1);

        // The client refreshes its own pair at the gateway: rotated, and the new token works.
        let form = format!(
            "grant_type=refresh_token&refresh_token={}&client_id={}",
            signed.refresh,
            urlencode(&signed.client_id)
        );
        let rotated = gateway.token(&form).await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
        let new_access = rotated.json()["access_token"].as_str().expect("access_token").to_owned();
        assert_ne!(rotated.json()["refresh_token"].as_str(), Some(signed.refresh.as_str()));
        let bearer = format!("Bearer {new_access}");
        assert_eq!(gateway.echo("notes", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);

        // Revoked: the next call is the gateway's challenge, and nothing reaches the upstream.
        let revoke = gateway
            .request(
                Method::POST,
                "/notes/revoke",
                &[("content-type", "application/x-www-form-urlencoded")],
                &format!("token={new_access}"),
            )
            .await;
        assert_eq!(revoke.status, StatusCode::OK);
        let before = gateway.mock.handle().counters().mcp_requests_for("tools/call");
        let ended = gateway.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(ended.status, StatusCode::UNAUTHORIZED, "{}", ended.body);
        assert!(ended.header("www-authenticate").is_some());
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("tools/call"), before);

        // A code is used once; its second use revokes the grant it made (RFC 6749 §4.1.2).
        let second = gateway.sign_in("http://127.0.0.1:9/cb").await;
        let replay = gateway.token(&second.code_form).await;
        assert_eq!(replay.status, StatusCode::BAD_REQUEST, "a code is used once");
        let bearer = format!("Bearer {}", second.access);
        assert_eq!(
            gateway.echo("notes", &[("authorization", bearer.as_str())]).await.status,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}

/// Without a configured client_id the gateway registers itself at the upstream (RFC 7591) once
/// per server and origin (kept in the grant store), and uses that client for the code and every
/// refresh.
pub async fn the_gateway_registers_itself_upstream_without_a_client_id<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(|upstream| {
                format!(
                    "{}  selfreg:\n    url: {upstream}/mcp\n    auth_type: oauth2\n    oauth2_flow: authorization_code\n    issuer: {upstream}\n    authorization_url: {upstream}/authorize\n    token_url: {upstream}/token\n    registration_url: {upstream}/register\n",
                    servers_yaml(upstream)
                )
            })),
            ..Setup::default()
        })
        .await;
        let first = gateway.sign_in_at("selfreg", "http://127.0.0.1:9/cb").await;
        let bearer = format!("Bearer {}", first.access);
        assert_eq!(gateway.echo("selfreg", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);
        let registrations = gateway.mock.handle().counters().registrations;
        assert_eq!(registrations, 1, "the gateway registered itself once");
        // A refresh runs with the registered client too.
        gateway.mock.handle().revoke_access_tokens();
        assert_eq!(gateway.echo("selfreg", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);
        // A second user reuses the registration.
        let _second = gateway.sign_in_at("selfreg", "http://127.0.0.1:9/cb").await;
        assert_eq!(gateway.mock.handle().counters().registrations, registrations);
    })
    .await;
}

/// The mock checks the audience of the tokens it is shown (RFC 8707): the gateway's tokens for
/// `notes` name the MCP server, so they pass; a server configured with another `resource` gets
/// tokens the MCP server refuses, and the caller sees that 401 after one refresh and retry.
pub async fn upstream_tokens_carry_the_servers_audience<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(|upstream| {
                format!(
                    "{}  elsewhere:\n    url: {upstream}/mcp\n    auth_type: oauth2\n    oauth2_flow: authorization_code\n    client_id: mock-client\n    client_secret: {CLIENT_SECRET}\n    issuer: {upstream}\n    authorization_url: {upstream}/authorize\n    token_url: {upstream}/token\n    resource: https://elsewhere.example/mcp\n",
                    servers_yaml(upstream)
                )
            })),
            ..Setup::default()
        })
        .await;
        let right = gateway.sign_in_at("notes", "http://127.0.0.1:9/cb").await;
        let bearer = format!("Bearer {}", right.access);
        assert_eq!(gateway.echo("notes", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);
        let wrong = gateway.sign_in_at("elsewhere", "http://127.0.0.1:9/cb").await;
        let bearer = format!("Bearer {}", wrong.access);
        let refused = gateway.echo("elsewhere", &[("authorization", bearer.as_str())]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
        assert!(refused.header("www-authenticate").is_none(), "the upstream's challenge is not relayed");
    })
    .await;
}

/// What a finished sign-in gave the client.
struct SignedIn {
    client_id: String,
    code_form: String,
    access: String,
    refresh: String,
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn authorize_path(client_id: &str, redirect_uri: &str, pkce: &Pkce) -> String {
    authorize_path_at("notes", client_id, redirect_uri, pkce)
}

fn authorize_path_at(server: &str, client_id: &str, redirect_uri: &str, pkce: &Pkce) -> String {
    let mut url = Url::parse(&format!("http://x/{server}/authorize")).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("state", "client-state")
        .append_pair("code_challenge", pkce.challenge())
        .append_pair("code_challenge_method", "S256");
    format!("/{server}/authorize?{}", url.query().unwrap_or_default())
}

/// The `name=value` pairs of an answer's `Set-Cookie` headers, as a `Cookie` header.
fn cookies_of(answer: &Answer, jar: &mut Vec<String>) {
    for value in answer.headers.get_all("set-cookie") {
        let Ok(text) = value.to_str() else { continue };
        let pair = text.split(';').next().unwrap_or_default().to_owned();
        let name = pair.split('=').next().unwrap_or_default().to_owned();
        jar.retain(|existing| !existing.starts_with(&format!("{name}=")));
        if !text.contains("Max-Age=0") {
            jar.push(pair);
        }
    }
}

fn form_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
}

impl Gateway {
    async fn register(&self, redirect_uri: &str) -> String {
        self.register_at("notes", redirect_uri).await
    }

    async fn register_at(&self, server: &str, redirect_uri: &str) -> String {
        let answer = self
            .request(
                Method::POST,
                &format!("/{server}/register"),
                &[("content-type", "application/json")],
                &json!({"redirect_uris": [redirect_uri], "client_name": "suite"}).to_string(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.json()["client_id"].as_str().expect("client_id").to_owned()
    }

    async fn token(&self, form: &str) -> Answer {
        self.token_at("notes", form).await
    }

    async fn token_at(&self, server: &str, form: &str) -> Answer {
        let path = format!("/{server}/token");
        self.request(Method::POST, &path, &[("content-type", "application/x-www-form-urlencoded")], form)
            .await
    }

    /// Register, authorize, approve with the key, pass the mock upstream, come back through the
    /// callback and redeem the gateway's code: what an MCP client and its user do.
    async fn sign_in(&self, redirect_uri: &str) -> SignedIn {
        self.sign_in_at("notes", redirect_uri).await
    }

    async fn sign_in_at(&self, server: &str, redirect_uri: &str) -> SignedIn {
        sign_in_via(&[self], server, redirect_uri).await
    }
}

/// Signs in with each step on the next of `replicas` in turn (register, authorize, consent,
/// callback, token): what a load balancer without sticky sessions does. The public origin is the
/// first replica's (the replicas share it, as behind one host name).
async fn sign_in_via(replicas: &[&Gateway], server: &str, redirect_uri: &str) -> SignedIn {
    let mut steps = replicas.iter().cycle();
    let mut next = || *steps.next().expect("at least one replica");
    let origin = replicas[0].origin.clone();
    let client_id = next().register_at(server, redirect_uri).await;
    let pkce = Pkce::from_random([9; 32]);
    let mut jar = Vec::new();
    let page = next()
        .request(Method::GET, &authorize_path_at(server, &client_id, redirect_uri, &pkce), &[], "")
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    cookies_of(&page, &mut jar);
    let form = format!(
        "request={}&csrf={}&gateway_key={KEY}&decision=approve",
        urlencode(&form_field(&page.body, "request")),
        urlencode(&form_field(&page.body, "csrf"))
    );
    let cookie = jar.join("; ");
    let consent = format!("/{server}/consent");
    let approved = next()
        .request(
            Method::POST,
            &consent,
            &[("content-type", "application/x-www-form-urlencoded"), ("cookie", cookie.as_str())],
            &form,
        )
        .await;
    assert_eq!(approved.status, StatusCode::FOUND, "{}", approved.body);
    cookies_of(&approved, &mut jar);
    let upstream = approved.header("location").expect("location").to_owned();
    let first = replicas[0];
    assert!(upstream.starts_with(first.mock.origin()));
    let from_upstream = first.request(Method::GET, &upstream, &[], "").await;
    let callback = from_upstream.header("location").expect("location").to_owned();
    assert!(callback.starts_with(&format!("{origin}/callback")), "{callback}");
    let landing = next();
    let callback = callback.replacen(&origin, &landing.origin, 1);
    let cookie = jar.join("; ");
    let back = landing.request(Method::GET, &callback, &[("cookie", cookie.as_str())], "").await;
    assert_eq!(back.status, StatusCode::FOUND, "{}", back.body);
    let back = Url::parse(back.header("location").expect("location")).expect("url");
    let query: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "client-state");
    assert_eq!(query["iss"], format!("{origin}/{server}"));
    let code_form = format!(
        "grant_type=authorization_code&code={}&code_verifier={}&client_id={}&redirect_uri={}",
        urlencode(&query["code"]),
        pkce.verifier().expose(),
        urlencode(&client_id),
        urlencode(redirect_uri)
    );
    let token = next().token_at(server, &code_form).await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.body);
    let json = token.json();
    SignedIn {
        client_id,
        code_form,
        access: json["access_token"].as_str().expect("access_token").to_owned(),
        refresh: json["refresh_token"].as_str().expect("refresh_token").to_owned(),
    }
}

/// Debug headers are masked.
pub async fn debug_headers_are_masked<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let mut headers = keyed();
        headers.push(("x-mcp-debug", "true"));
        let answer = gateway.echo("reports", &headers).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-mcp-debug-auth-resolution"), Some("m2m-client-credentials"));
        assert_eq!(answer.header("x-mcp-debug-server-auth-type"), Some("oauth2"));
        assert_eq!(answer.header("x-mcp-debug-outbound-url"), Some(gateway.mock.mcp_url().as_str()));
        let inbound = answer.header("x-mcp-debug-inbound-auth").expect("inbound");
        assert_eq!(inbound, "x-mcp-gateway-key=****0001");
        let token = answer.header("x-mcp-debug-oauth2-token").expect("token");
        assert!(token.starts_with("Bearer****") && token.len() == "Bearer****".len() + 4, "{token}");
        let plain = gateway.echo("reports", &keyed()).await;
        assert!(plain.header("x-mcp-debug-oauth2-token").is_none());
    })
    .await;
}

/// Sse answers and session ids pass through.
pub async fn sse_answers_and_session_ids_pass_through<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let initialize = gateway
            .call("reports", &keyed(), "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
            .await;
        assert_eq!(initialize.status, StatusCode::OK);
        let session = initialize.header("mcp-session-id").expect("Mcp-Session-Id relayed").to_owned();
        let mut headers = keyed();
        headers.push(("mcp-session-id", session.as_str()));
        let in_session = gateway.echo("reports", &headers).await;
        assert_eq!(in_session.status, StatusCode::OK, "the session id reached the upstream");
        let mut unknown = keyed();
        unknown.push(("mcp-session-id", "no-such-session"));
        assert_eq!(gateway.echo("reports", &unknown).await.status, StatusCode::NOT_FOUND);

        gateway.mock.handle().set(Switch::Sse(true));
        let sse = gateway.echo("reports", &keyed()).await;
        assert_eq!(sse.status, StatusCode::OK);
        assert_eq!(sse.header("content-type"), Some("text/event-stream"));
        assert!(sse.body.starts_with("event: message\ndata: "), "{}", sse.body);
    })
    .await;
}

/// An upstream that sends one SSE event, then waits for a signal before the second: the first
/// must reach the client before the upstream finishes (the gateway streams, never buffers).
/// Sse is streamed event by event.
pub async fn sse_is_streamed_event_by_event<H: GatewayHost>() {
    bounded(async {
        let upstream = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let upstream_url = format!("http://{}", upstream.local_addr().expect("address"));
        let (release, released) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                let read = socket.read(&mut buffer).await.expect("read");
                assert!(read > 0);
                seen.extend_from_slice(&buffer[..read]);
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.expect("write");
            let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
            socket.write_all(chunk("data: first\n\n").as_bytes()).await.expect("write");
            let _ = released.await;
            socket.write_all(chunk("data: second\n\n").as_bytes()).await.expect("write");
            socket.write_all(b"0\r\n\r\n").await.expect("write");
        });
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(move |_| {
                format!("general_settings:\n  master_key: {KEY}\nmcp_servers:\n  stream:\n    url: {upstream_url}/mcp\n")
            })),
            ..Setup::default()
        })
        .await;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/stream/mcp", gateway.origin))
            .header("x-mcp-gateway-key", KEY)
            .header("content-type", "application/json")
            // In the caller's own session: passed through as it is, as a stream.
            .header("mcp-session-id", "callers-own")
            .body(Full::new(Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}")))
            .expect("request");
        let response = gateway.client.request(request).await.expect("answer");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first event arrives before the upstream finishes")
            .expect("a frame")
            .expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"data: first\n\n"));
        release.send(()).expect("release");
        let rest = body.collect().await.expect("rest").to_bytes();
        assert_eq!(rest, Bytes::from_static(b"data: second\n\n"));
    })
    .await;
}

/// Secrets never reach logs or error bodies.
pub async fn secrets_never_reach_logs_or_error_bodies<H: GatewayHost>() {
    let captured = logs();
    let mut bodies = Vec::new();
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let mut debug = keyed();
        debug.push(("x-mcp-debug", "true"));
        bodies.push(gateway.echo("reports", &debug).await.body);
        gateway.mock.handle().set(Switch::UnauthorizedOnce(true));
        bodies.push(gateway.echo("reports", &debug).await.body);
        bodies.push(gateway.echo("reports", &[("x-mcp-gateway-key", "sk-wrong-key-value")]).await.body);
        bodies.push(gateway.echo("reports", &[("authorization", &format!("Bearer {KEY}"))]).await.body);
        let token = gateway.mock.handle().issue_access_token();
        let bearer = format!("Bearer {token}");
        let mut passthrough = keyed();
        passthrough.push(("authorization", bearer.as_str()));
        bodies.push(gateway.echo("notes", &passthrough).await.body);
        let caller = "sk-caller-token-0004";
        let mut exchange = keyed_as("Bearer sk-caller-token-0004");
        exchange.push(("x-mcp-debug", "true"));
        bodies.push(gateway.echo("exchange", &exchange).await.body);
        let key = format!("{:?}", TokenKey::exchange("exchange", &Secret::new(caller)));
        assert_eq!(key, "TokenKey { server: \"exchange\", kind: \"exchange\" }");
        gateway.mock.handle().revoke_access_tokens();
        gateway.mock.handle().set(Switch::TokenStatus(Some(500)));
        let fresh = start::<H>(Setup::default()).await;
        fresh.mock.handle().set(Switch::TokenStatus(Some(500)));
        bodies.push(fresh.echo("reports", &keyed()).await.body);
        fresh.mock.handle().set(Switch::TokenStatus(Some(400)));
        bodies.push(fresh.echo("reports", &keyed()).await.body);
        let logs = captured.text();
        assert!(
            logs.contains("route=\"server_mcp\"") || logs.contains("route=server_mcp"),
            "the gateway logs requests: {logs}"
        );
        for secret in [KEY, CLIENT_SECRET, "sk-wrong-key-value", token.as_str(), caller] {
            assert!(!logs.contains(secret), "`{secret}` leaked into the logs");
            for body in &bodies {
                assert!(!body.contains(secret), "`{secret}` leaked into {body}");
            }
        }
        assert!(!logs.contains("mock_at_"), "no M2M token in the logs");
    })
    .await;
}

/// Serve stops on the shutdown signal.
/// A request in flight when the signal arrives still gets its answer (the drain), then serving
/// returns and the port no longer accepts.
pub async fn serve_stops_on_the_shutdown_signal<H: GatewayHost>() {
    bounded(async {
        let mut gateway = start::<H>(Setup::default()).await;
        assert_eq!(gateway.request(Method::GET, "/health", &[], "").await.status, StatusCode::OK);
        assert_eq!(gateway.echo("reports", &keyed()).await.status, StatusCode::OK);
        gateway.mock.handle().set(Switch::SlowMs(800));
        let stop = gateway.stop.take().expect("stop");
        let done = gateway.done.take().expect("done");
        let key = keyed();
        let in_flight = gateway.echo("reports", &key);
        let signal = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.send(()).expect("send");
        };
        let (answer, ()) = tokio::join!(in_flight, signal);
        assert_eq!(answer.status, StatusCode::OK, "the request in flight was drained: {}", answer.body);
        tokio::time::timeout(Duration::from_secs(15), done).await.expect("serve returns").expect("no panic");
        assert!(tokio::net::TcpStream::connect(gateway.listen).await.is_err(), "no longer accepting");
    })
    .await;
}

/// The usual gateway plus `reports-archive` (no auth) on a second mock, while `reports` (M2M)
/// stays on the first, so each call's destination is visible in the mocks' counters. Names share a
/// prefix on purpose: `reports-archive-add` must reach the archive, not `reports`.
async fn two_upstreams<H: GatewayHost>() -> (Gateway, MockUpstream) {
    let open = MockConfig {
        switches: Switches { require_auth: false, ..Switches::default() },
        ..MockConfig::default()
    };
    let archive = MockUpstream::start(open).await.expect("second mock starts");
    let archive_origin = archive.origin().to_owned();
    let gateway = start::<H>(Setup {
        yaml: Some(Box::new(move |upstream| {
            format!("{}  reports-archive:\n    url: {archive_origin}/mcp\n", servers_yaml(upstream))
        })),
        ..Setup::default()
    })
    .await;
    (gateway, archive)
}

impl Gateway {
    async fn aggregated(&self, servers: &str, extra: &[(&str, &str)], message: &Value) -> Answer {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("x-mcp-servers", servers),
        ];
        headers.extend_from_slice(extra);
        self.request(Method::POST, "/mcp", &headers, &message.to_string()).await
    }
}

fn tool_names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tool| tool["name"].as_str().map(str::to_owned))
        .collect()
}

/// Aggregated mcp lists prefixed tools and routes each call to its server.
pub async fn aggregated_mcp_lists_prefixed_tools_and_routes_each_call_to_its_server<H: GatewayHost>() {
    bounded(async {
        let (gateway, archive) = two_upstreams::<H>().await;
        let servers = "reports,reports-archive";
        let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
        let answer = gateway.aggregated(servers, &keyed(), &initialize).await;
        assert_eq!(answer.json()["result"]["protocolVersion"], "2025-06-18", "{}", answer.body);
        let session = answer.header("mcp-session-id").expect("initialize opens a gateway session").to_owned();
        let mut in_session = keyed();
        in_session.push(("mcp-session-id", &session));
        let in_session = in_session.as_slice();
        let list = json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"});
        let answer = gateway.aggregated(servers, in_session, &list).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(
            tool_names(&answer.json()["result"]),
            ["reports-echo", "reports-add", "reports-archive-echo", "reports-archive-add"]
        );
        let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "reports-archive-add", "arguments": {"a": 2, "b": 3}}});
        let answer = gateway.aggregated(servers, in_session, &call).await;
        assert_eq!((answer.json()["id"].clone(), answer.json()["result"]["structuredContent"]["sum"].clone()), (json!(9), json!(5)));
        let call = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "reports-echo", "arguments": {"text": "hi"}}});
        let answer = gateway.aggregated(servers, in_session, &call).await;
        assert_eq!(answer.json()["result"]["content"][0]["text"], "hi", "{}", answer.body);

        // Each upstream saw its own listing and its own call, and one handshake for the session
        // the gateway keeps with it: no initialize per call.
        let (main, other) = (gateway.mock.handle().counters(), archive.handle().counters());
        assert_eq!((main.mcp_requests_for("tools/list"), other.mcp_requests_for("tools/list")), (1, 1));
        assert_eq!((main.mcp_requests_for("tools/call"), other.mcp_requests_for("tools/call")), (1, 1));
        assert_eq!((main.mcp_requests_for("initialize"), other.mcp_requests_for("initialize")), (1, 1));
        let initialized = "notifications/initialized";
        assert_eq!((main.mcp_requests_for(initialized), other.mcp_requests_for(initialized)), (1, 1));
        assert_eq!(main.token_requests_for("client_credentials"), 1);
        let before = main.mcp_requests.values().sum::<u64>();
        for _ in 0..3 {
            assert_eq!(gateway.aggregated(servers, in_session, &call).await.status, StatusCode::OK);
        }
        assert_eq!(gateway.mock.handle().counters().mcp_requests.values().sum::<u64>() - before, 3, "one request per call");

        let unknown = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "wiki-echo"}});
        let answer = gateway.aggregated(servers, &keyed(), &unknown).await;
        // An unknown tool is a refusal of the protocol: a JSON-RPC error in an HTTP 200 (design §4.11).
        assert_eq!((answer.status, answer.json()["error"]["code"].clone()), (StatusCode::OK, json!(-32602)));
        let answer = gateway.aggregated(servers, &[], &list).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        let answer = gateway.aggregated("reports,nope", &keyed(), &list).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        let answer = gateway.request(Method::POST, "/mcp", &[("x-mcp-servers", servers), ("x-mcp-gateway-key", KEY)], "{").await;
        assert_eq!((answer.status, answer.json()["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!(-32700)));
    })
    .await;
}

/// The aggregating endpoint's sessions (design §4.11): `initialize` opens one with its own id,
/// its upstream sessions are its own (reopened with the caller's `initialize` when an upstream
/// forgets one), nobody with other credentials can use it, and `DELETE` ends it and them.
pub async fn aggregated_sessions_belong_to_their_caller_and_end_with_delete<H: GatewayHost>() {
    bounded(async {
        let (gateway, archive) = two_upstreams::<H>().await;
        let servers = "reports,reports-archive";
        let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {"sampling": {}}, "clientInfo": {"name": "t", "version": "1"}}});
        let opened = gateway.aggregated(servers, &keyed(), &initialize).await;
        assert_eq!(opened.status, StatusCode::OK, "{}", opened.body);
        assert_eq!(opened.json()["result"]["capabilities"]["tools"], json!({"listChanged": false}), "{}", opened.body);
        let session = opened.header("mcp-session-id").expect("a gateway session").to_owned();
        assert!(!session.starts_with("mock_session_"), "an upstream session id reached the caller");
        assert_eq!((gateway.mock.handle().open_sessions(), archive.handle().open_sessions()), (1, 1));

        let mut mine = keyed();
        mine.push(("mcp-session-id", &session));
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let listed = gateway.aggregated(servers, &mine, &list).await;
        assert_eq!(tool_names(&listed.json()["result"]).len(), 4, "{}", listed.body);
        assert!(listed.header("mcp-session-id").is_none(), "no session id is relayed on later answers");

        // The id alone is worth nothing: other credentials, or a forged id, get a 404.
        let mut theirs = keyed_as("Bearer someone-else");
        theirs.push(("mcp-session-id", &session));
        let stolen = gateway.aggregated(servers, &theirs, &list).await;
        assert_eq!((stolen.status, stolen.json()["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!(-32001)));
        let mut forged = keyed();
        forged.push(("mcp-session-id", "forged"));
        assert_eq!(gateway.aggregated(servers, &forged, &list).await.status, StatusCode::NOT_FOUND);
        let ending = [("x-mcp-servers", servers), ("x-mcp-gateway-key", KEY), ("mcp-session-id", "forged")];
        assert_eq!(gateway.request(Method::DELETE, "/mcp", &ending, "").await.status, StatusCode::NOT_FOUND);

        // An upstream that forgot its session is reopened with the caller's own initialize.
        gateway.mock.handle().end_sessions();
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "reports-echo", "arguments": {"text": "again"}}});
        let answer = gateway.aggregated(servers, &mine, &call).await;
        assert_eq!(answer.json()["result"]["content"][0]["text"], "again", "{}", answer.body);
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("initialize"), 2);

        // DELETE ends the gateway session and every upstream session it opened.
        let ending = [("x-mcp-servers", servers), ("x-mcp-gateway-key", KEY), ("mcp-session-id", session.as_str())];
        assert_eq!(gateway.request(Method::DELETE, "/mcp", &ending, "").await.status, StatusCode::NO_CONTENT);
        assert_eq!((gateway.mock.handle().open_sessions(), archive.handle().open_sessions()), (0, 0));
        assert_eq!(gateway.aggregated(servers, &mine, &list).await.status, StatusCode::NOT_FOUND);
        assert_eq!(gateway.request(Method::DELETE, "/mcp", &ending, "").await.status, StatusCode::NOT_FOUND);
    })
    .await;
}

/// Aggregated listing names a failing server and serves the rest.
pub async fn aggregated_listing_names_a_failing_server_and_serves_the_rest<H: GatewayHost>() {
    bounded(async {
        let (gateway, archive) = two_upstreams::<H>().await;
        archive.handle().set(Switch::McpStatus(Some(503)));
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let answer = gateway.aggregated("reports,reports-archive", &keyed(), &list).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let result = &answer.json()["result"];
        assert_eq!(tool_names(result), ["reports-echo", "reports-add"]);
        assert_eq!(result["_meta"]["mcp-oauth/errors"][0]["server_id"], "reports-archive");
        // Every target failing fails the listing with a 502 that names the server.
        let answer = gateway.aggregated("reports-archive", &keyed(), &list).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(answer.json()["error_description"].as_str().unwrap_or_default().contains("reports-archive"));
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "reports-archive-echo", "arguments": {"text": "x"}}});
        assert_eq!(gateway.aggregated("reports,reports-archive", &keyed(), &call).await.status, StatusCode::BAD_GATEWAY);
    })
    .await;
}

/// Aggregated delegation relays the upstream challenge.
pub async fn aggregated_delegation_relays_the_upstream_challenge<H: GatewayHost>() {
    bounded(async {
        let (gateway, _archive) = two_upstreams::<H>().await;
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let answer = gateway.aggregated("delegated", &[], &list).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
        assert!(answer.header("www-authenticate").unwrap_or_default().contains(gateway.mock.origin()));
        let bearer = format!("Bearer {}", gateway.mock.handle().issue_access_token());
        let answer = gateway.aggregated("delegated", &[("authorization", bearer.as_str())], &list).await;
        assert_eq!(tool_names(&answer.json()["result"]), ["delegated-echo", "delegated-add"]);
    })
    .await;
}

/// Rest tools list and call.
pub async fn rest_tools_list_and_call<H: GatewayHost>() {
    bounded(async {
        let (gateway, archive) = two_upstreams::<H>().await;
        let key = keyed();
        let answer =
            gateway.request(Method::GET, "/mcp-rest/tools/list?server_id=reports-archive", &key, "").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let body = answer.json();
        assert_eq!(tool_names(&body), ["reports-archive-echo", "reports-archive-add"]);
        assert_eq!(
            (body["tools"][0]["server_id"].clone(), body["errors"].clone()),
            (json!("reports-archive"), json!([]))
        );

        let json_body = [("content-type", "application/json"), ("x-mcp-gateway-key", KEY)];
        let inferred = r#"{"name": "reports-archive-add", "arguments": {"a": 1, "b": 41}}"#;
        let answer = gateway.request(Method::POST, "/mcp-rest/tools/call", &json_body, inferred).await;
        assert_eq!(answer.json()["structuredContent"]["sum"], 42, "{}", answer.body);
        let named = r#"{"server_id": "reports", "name": "echo", "arguments": {"text": "direct"}}"#;
        let answer = gateway.request(Method::POST, "/mcp-rest/tools/call", &json_body, named).await;
        assert_eq!(answer.json()["content"][0]["text"], "direct", "{}", answer.body);
        assert_eq!(archive.handle().counters().mcp_requests_for("tools/call"), 1);

        let missing = r#"{"server_id": "reports", "name": "nope"}"#;
        let answer = gateway.request(Method::POST, "/mcp-rest/tools/call", &json_body, missing).await;
        assert_eq!(
            (answer.status, answer.json()["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("tool_error"))
        );
        let answer = gateway.request(Method::POST, "/mcp-rest/tools/call", &json_body, "[1]").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        let answer = gateway.request(Method::GET, "/mcp-rest/tools/list?server_id=ghost", &key, "").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        let answer = gateway.request(Method::GET, "/mcp-rest/tools/list", &[], "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(!answer.body.contains(KEY) && !answer.body.contains(CLIENT_SECRET));
    })
    .await;
}

/// LiteLLM's documented curl examples (its MCP REST API page and MCP gateway page), sent as printed
/// against a gateway with one server: the REST listing, a call by the server's own tool name, a
/// call with `server_id`, and a JSON-RPC `tools/list` with neither `Accept` nor `initialize`.
pub async fn litellms_documented_curl_examples_work_as_printed<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(|upstream| {
                format!(
                    "general_settings:\n  master_key: {KEY}\nmcp_servers:\n  reports:\n    url: {upstream}/mcp\n    auth_type: oauth2\n    oauth2_flow: client_credentials\n    client_id: mock-client\n    client_secret: {CLIENT_SECRET}\n    token_url: {upstream}/token\n"
                )
            })),
            ..Setup::default()
        })
        .await;
        let key = [("x-litellm-api-key", KEY)];
        // curl -s $PROXY/mcp-rest/tools/list -H "x-litellm-api-key: $KEY"
        let listed = gateway.request(Method::GET, "/mcp-rest/tools/list", &key, "").await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        assert_eq!(tool_names(&listed.json()), ["reports-echo", "reports-add"]);
        // curl $PROXY/mcp-rest/tools/call -H "Content-Type: application/json" -H "x-litellm-api-key: $KEY" \
        //   -d '{"name": "echo", "arguments": {...}}'
        let json_key = [("content-type", "application/json"), ("x-litellm-api-key", KEY)];
        let bare = r#"{"name": "echo", "arguments": {"text": "hello"}}"#;
        let called = gateway.request(Method::POST, "/mcp-rest/tools/call", &json_key, bare).await;
        assert_eq!(called.json()["content"][0]["text"], "hello", "{}", called.body);
        let named = r#"{"server_id": "reports", "name": "add", "arguments": {"a": 2, "b": 2}}"#;
        let called = gateway.request(Method::POST, "/mcp-rest/tools/call", &json_key, named).await;
        assert_eq!(called.json()["structuredContent"]["sum"], 4, "{}", called.body);
        // curl -X POST $PROXY/mcp -H "Content-Type: application/json" -H "x-litellm-api-key: $KEY" \
        //   -H "x-mcp-servers: reports" -d '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        let headers = [("content-type", "application/json"), ("x-litellm-api-key", KEY), ("x-mcp-servers", "reports")];
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        for path in ["/mcp", "/reports/mcp"] {
            let answer = gateway.request(Method::POST, path, &headers, list).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
            assert!(answer.body.contains("echo"), "{path}: {}", answer.body);
        }
    })
    .await;
}

/// Malformed jsonrpc is refused before any token or upstream request.
pub async fn malformed_jsonrpc_is_refused_before_any_token_or_upstream_request<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let mut headers = keyed();
        headers.push(("content-type", "application/json"));
        for (body, code) in
            [("{not json", -32700), (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600), ("[]", -32600)]
        {
            let answer = gateway.request(Method::POST, "/reports/mcp", &headers, body).await;
            assert_eq!(
                (answer.status, answer.json()["error"]["code"].clone()),
                (StatusCode::BAD_REQUEST, json!(code)),
                "{body}"
            );
        }
        let counters = gateway.mock.handle().counters();
        assert_eq!((counters.token_requests_total(), counters.mcp_requests.values().sum::<u64>()), (0, 0));
    })
    .await;
}

/// Token validation applies to tokens the gateway fetches for itself.
pub async fn token_validation_applies_to_tokens_the_gateway_fetches_for_itself<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(|upstream| {
                format!(
                    "general_settings:
  master_key: {KEY}
mcp_servers:
  checked:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    token_url: {upstream}/token
    token_validation:
      token_type: Bearer
  strict:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    token_url: {upstream}/token
    token_validation:
      team.enterprise_id: E1
"
                )
            })),
            ..Setup::default()
        })
        .await;
        assert_eq!(gateway.echo("checked", &keyed()).await.status, StatusCode::OK);
        let refused = gateway.echo("strict", &keyed()).await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "design §7: {}", refused.body);
        assert_eq!(
            (refused.json()["error"].clone(), refused.json()["field"].clone()),
            (json!("token_validation_failed"), json!("team.enterprise_id"))
        );
        assert!(!refused.body.contains("mock_at_"), "the refused token is never echoed");
        // The refused token was neither used nor cached: the MCP server saw only `checked`'s call.
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("tools/call"), 1);
    })
    .await;
}

/// Aggregation keeps one session per upstream and reopens an expired one.
pub async fn aggregation_keeps_one_session_per_upstream_and_reopens_an_expired_one<H: GatewayHost>() {
    bounded(async {
        let (gateway, archive) = two_upstreams::<H>().await;
        gateway.mock.handle().set(Switch::RequireSession(true));
        let servers = "reports,reports-archive";
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let answer = gateway.aggregated(servers, &keyed(), &list).await;
        assert_eq!(tool_names(&answer.json()["result"]).len(), 4, "{}", answer.body);
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "reports-add", "arguments": {"a": 1, "b": 1}}});
        assert_eq!(gateway.aggregated(servers, &keyed(), &call).await.json()["result"]["structuredContent"]["sum"], 2);
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("initialize"), 1, "the session is reused");

        // The server forgets its sessions: the next call gets a 404, opens a new one, succeeds.
        gateway.mock.handle().end_sessions();
        let answer = gateway.aggregated(servers, &keyed(), &call).await;
        assert_eq!(answer.json()["result"]["structuredContent"]["sum"], 2, "{}", answer.body);
        let counters = gateway.mock.handle().counters();
        assert_eq!((counters.mcp_requests_for("initialize"), counters.mcp_requests_for("tools/call")), (2, 3));

        // Sessions belong to a caller identity: a caller whose token is exchanged gets its own.
        let bearer = format!("Bearer {}", gateway.mock.handle().issue_access_token());
        let mut caller = keyed();
        caller.push(("authorization", bearer.as_str()));
        let mine = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "exchange-echo", "arguments": {"text": "mine"}}});
        let answer = gateway.aggregated("exchange", &caller, &mine).await;
        assert_eq!(answer.json()["result"]["content"][0]["text"], "mine", "{}", answer.body);
        assert_eq!(gateway.mock.handle().counters().mcp_requests_for("initialize"), 3);
        // An interactive server cannot be reached here without its grant: it says where to go.
        let notes = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "notes-echo", "arguments": {"text": "x"}}});
        let answer = gateway.aggregated("notes", &caller, &notes).await;
        assert!(answer.body.contains("authorization_required"), "{}", answer.body);
        assert_eq!(archive.handle().counters().mcp_requests_for("initialize"), 1);
    })
    .await;
}

/// Design §4.9 for the gateway's own upstream client: a server configured on loopback by name
/// (`localhost`) is reached, its token endpoint too; a metadata address is refused with a 502 before any connection (a connection
/// attempt would end in a 504 after the short timeout); a public server's token endpoint on
/// loopback is never contacted.
/// Upstreams are reached only where the fetch policy allows.
pub async fn upstreams_are_reached_only_where_the_fetch_policy_allows<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup {
            yaml: Some(Box::new(|upstream| {
                // Reached by name; the token's audience stays the mock's own URL (it checks it).
                let by_name = upstream.replace("127.0.0.1", "localhost");
                format!(
                    "general_settings:
  master_key: {KEY}
mcp_servers:
  named:
    url: {by_name}/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    token_url: {by_name}/token
    resource: {upstream}/mcp
  metadata:
    url: http://169.254.169.254/mcp
  public:
    url: https://mcp.example.com/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: mock-client
    client_secret: {CLIENT_SECRET}
    token_url: {upstream}/token
"
                )
            })),
            options: ServerOptions { upstream_timeout: Duration::from_secs(5), ..ServerOptions::default() },
            ..Setup::default()
        })
        .await;
        let answer = gateway.echo("named", &keyed()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.json()["result"]["content"][0]["text"], "hi");

        let started = std::time::Instant::now();
        let answer = gateway.echo("metadata", &keyed()).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
        assert_eq!(answer.json()["error"], "blocked_by_fetch_policy");
        assert!(answer.json()["error_description"].as_str().unwrap_or_default().contains("`metadata`"));
        assert!(started.elapsed() < Duration::from_secs(4), "refused before connecting");

        let before = gateway.mock.handle().counters();
        let answer = gateway.echo("public", &keyed()).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
        assert_eq!(answer.json()["error"], "blocked_by_fetch_policy");
        let after = gateway.mock.handle().counters();
        assert_eq!(after.token_requests, before.token_requests);
        assert_eq!(after.connections, before.connections, "the loopback token endpoint was never connected");
    })
    .await;
}

// -------------------------------------------------------------------------------------------------
// Regressions of the security review (issue 9): each break, end to end.
// -------------------------------------------------------------------------------------------------

/// The mock's MCP requests so far, over every server.
fn upstream_mcp_requests(gateway: &Gateway) -> u64 {
    gateway.mock.handle().counters().mcp_requests.values().sum::<u64>()
}

/// A doubled slash or an encoded name reaches no server.
pub async fn a_doubled_slash_or_an_encoded_name_reaches_no_server<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        // The break: `//open/mcp` with a delegating server named in x-mcp-servers and no key was
        // forwarded to `open`, a server with no auth at all.
        for path in
            ["//open/mcp", "///open/mcp", "/open//mcp", "/./open/mcp", "/%6fpen/mcp", "/open/mcp/", "//mcp"]
        {
            let headers = [
                ("x-mcp-servers", "delegated"),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ];
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
            let answer = gateway.request(Method::POST, path, &headers, &body).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}: {}", answer.body);
        }
        assert_eq!(upstream_mcp_requests(&gateway), 0, "nothing reached an upstream");
        // The plain path still needs the key (open is not delegating), and works with it.
        assert_eq!(
            gateway.echo("open", &[("x-mcp-servers", "delegated")]).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(upstream_mcp_requests(&gateway), 0, "the gateway refused it itself");
        gateway.echo("open", &keyed()).await;
        assert_eq!(upstream_mcp_requests(&gateway), 1, "with the key, the plain path is forwarded");
    })
    .await;
}

/// An attacker host ends without a token.
pub async fn an_attacker_host_ends_without_a_token<H: GatewayHost>() {
    bounded(async {
        // No PROXY_BASE_URL: without a pinned origin the gateway does not start at all.
        let mock = MockUpstream::start(MockConfig::default()).await.expect("mock starts");
        let unpinned = load_yaml(&servers_yaml(mock.origin()), &|_| None).expect("config").config;
        let refused = H::check(unpinned, ServerOptions::default()).expect_err("refused");
        assert!(refused.to_string().contains("PROXY_BASE_URL"), "{refused}");
        drop(mock);

        // Listening on loopback pins the origin, as `serve` does: the attacker's Host is ignored.
        let gateway = start::<H>(Setup { public_origin: false, pin_listen: true, ..Setup::default() }).await;
        // An attacker registers his own page as a redirect URI under his Host: refused.
        let registered = gateway
            .request(
                Method::POST,
                "/notes/register",
                &[("content-type", "application/json"), ("host", "evil.example")],
                r#"{"redirect_uris":["http://evil.example/x"]}"#,
            )
            .await;
        assert_eq!(registered.status, StatusCode::BAD_REQUEST, "{}", registered.body);
        assert_eq!(gateway.mock.handle().counters().authorize_calls, 0);
        // Even a code he obtained elsewhere does not redeem: it is not a code this gateway sealed.
        let code = gateway.mock.handle().issue_access_token();
        let client_id = gateway.register("http://127.0.0.1:9/cb").await;
        let form = format!(
            "grant_type=authorization_code&code={code}&code_verifier={}&client_id={}",
            "v".repeat(43),
            urlencode(&client_id)
        );
        let token = gateway
            .request(
                Method::POST,
                "/notes/token",
                &[("content-type", "application/x-www-form-urlencoded"), ("host", "evil.example")],
                &form,
            )
            .await;
        assert_eq!(token.status, StatusCode::BAD_REQUEST);
        assert!(token.json().get("access_token").is_none());
        // A real client on this machine still gets through, under the pinned origin: the consent
        // page sends the user upstream with the callback on the pinned origin.
        let signed = gateway.sign_in("http://127.0.0.1:9/cb").await;
        assert!(signed.access.starts_with("mcpgw_"));
        assert_eq!(gateway.mock.handle().counters().authorize_calls, 1);
    })
    .await;
}

/// Strangers cannot grow the flow store.
pub async fn strangers_cannot_grow_the_flow_store<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let client_id = gateway.register("http://127.0.0.1:9/cb").await;
        let path = |state: &str| {
            let mut url = Url::parse("http://x/notes/authorize").expect("url");
            url.query_pairs_mut()
                .append_pair("client_id", &client_id)
                .append_pair("redirect_uri", "http://127.0.0.1:9/cb")
                .append_pair("response_type", "code")
                .append_pair("state", state)
                .append_pair("code_challenge", Pkce::from_random([3; 32]).challenge())
                .append_pair("code_challenge_method", "S256");
            format!("/notes/authorize?{}", url.query().unwrap_or_default())
        };
        let huge = gateway.request(Method::GET, &path(&"s".repeat(60_000)), &[], "").await;
        assert_eq!(huge.status, StatusCode::BAD_REQUEST, "a 60,000-byte state");
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(gateway.request(Method::GET, &path("s"), &[], "").await.status);
        }
        let served = statuses.iter().filter(|status| **status == StatusCode::OK).count();
        // The registration and the 60,000-byte request spent two units of the burst of 30 too.
        assert_eq!(served, 28, "one peer's burst, then 429: {statuses:?}");
        assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
        // MCP calls are not counted against the OAuth budget.
        assert_eq!(gateway.echo("reports", &keyed()).await.status, StatusCode::OK);
    })
    .await;
}

fn with_limits(idle: u64, body: u64, connections: u64) -> MakeYaml {
    Box::new(move |upstream| {
        servers_yaml(upstream).replacen(
            "general_settings:\n",
            &format!(
                "general_settings:\n  mcp_idle_timeout_seconds: {idle}\n  mcp_oauth_body_timeout_seconds: {body}\n  mcp_body_timeout_seconds: {body}\n  mcp_max_connections: {connections}\n"
            ),
            1,
        )
    })
}

/// Reads until the peer closes or 8 s pass; returns what arrived.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Idle and dribbling connections are closed.
pub async fn idle_and_dribbling_connections_are_closed<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup { yaml: Some(with_limits(1, 1, 100)), ..Setup::default() }).await;
        let address = gateway.origin.trim_start_matches("http://").to_owned();
        // A socket that never speaks.
        let mut silent = tokio::net::TcpStream::connect(&address).await.expect("connect");
        let started = std::time::Instant::now();
        assert_eq!(read_to_close(&mut silent).await, "");
        assert!(started.elapsed() < Duration::from_secs(5));
        // A kept-alive connection that goes quiet after one request.
        let mut quiet = tokio::net::TcpStream::connect(&address).await.expect("connect");
        quiet.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        assert!(read_to_close(&mut quiet).await.starts_with("HTTP/1.1 200"));
        // A token request whose body dribbles in: 408 at the body deadline.
        let mut dribble = tokio::net::TcpStream::connect(&address).await.expect("connect");
        dribble
            .write_all(b"POST /notes/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ng")
            .await
            .expect("write");
        let answer = read_to_close(&mut dribble).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    })
    .await;
}

/// Past the connection cap a 503.
pub async fn past_the_connection_cap_a_503<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup { yaml: Some(with_limits(5, 5, 1)), ..Setup::default() }).await;
        let address = gateway.origin.trim_start_matches("http://").to_owned();
        let mut first = tokio::net::TcpStream::connect(&address).await.expect("connect");
        first.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let mut head = [0u8; 12];
        first.read_exact(&mut head).await.expect("the first connection is served");
        assert_eq!(&head, b"HTTP/1.1 200");
        let mut second = tokio::net::TcpStream::connect(&address).await.expect("connect");
        second.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let answer = read_to_close(&mut second).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too_many_connections"));
    })
    .await;
}

/// A message that is not json rpc is not forwarded.
pub async fn a_message_that_is_not_json_rpc_is_not_forwarded<H: GatewayHost>() {
    bounded(async {
        let gateway = start::<H>(Setup::default()).await;
        let headers = [
            ("x-mcp-gateway-key", KEY),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        let answer = gateway
            .request(Method::POST, "/open/mcp", &headers, r#"{"jsonrpc":"2.0","id":1,"method":5}"#)
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.json()["error"]["code"], -32600);
        assert_eq!(upstream_mcp_requests(&gateway), 0);
    })
    .await;
}

/// Declares every test of the suite as a `#[tokio::test]` in a module `gateway`, with the
/// gateway hosted by `$host` (a [`GatewayHost`]).
#[macro_export]
macro_rules! gateway_suite {
    ($host:ty) => {
        mod gateway {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn routes_answer_and_oauth_endpoints_hide_non_interactive_servers() {
                $crate::gateway_suite::routes_answer_and_oauth_endpoints_hide_non_interactive_servers::<$host>().await;
            }
            #[tokio::test]
            async fn m2m_calls_send_one_upstream_request_each_and_fetch_one_token() {
                $crate::gateway_suite::m2m_calls_send_one_upstream_request_each_and_fetch_one_token::<$host>().await;
            }
            #[tokio::test]
            async fn concurrent_first_calls_share_one_token_fetch() {
                $crate::gateway_suite::concurrent_first_calls_share_one_token_fetch::<$host>().await;
            }
            #[tokio::test]
            async fn exchanged_tokens_are_cached_per_caller_token() {
                $crate::gateway_suite::exchanged_tokens_are_cached_per_caller_token::<$host>().await;
            }
            #[tokio::test]
            async fn an_upstream_401_refetches_the_token_once_and_retries_once() {
                $crate::gateway_suite::an_upstream_401_refetches_the_token_once_and_retries_once::<$host>().await;
            }
            #[tokio::test]
            async fn upstream_down_is_a_502_naming_the_step() {
                $crate::gateway_suite::upstream_down_is_a_502_naming_the_step::<$host>().await;
            }
            #[tokio::test]
            async fn upstream_5xx_is_a_502() {
                $crate::gateway_suite::upstream_5xx_is_a_502::<$host>().await;
            }
            #[tokio::test]
            async fn token_endpoint_failure_is_a_503_without_secrets() {
                $crate::gateway_suite::token_endpoint_failure_is_a_503_without_secrets::<$host>().await;
            }
            #[tokio::test]
            async fn a_slow_upstream_is_a_504() {
                $crate::gateway_suite::a_slow_upstream_is_a_504::<$host>().await;
            }
            #[tokio::test]
            async fn oversized_bodies_are_413() {
                $crate::gateway_suite::oversized_bodies_are_413::<$host>().await;
            }
            #[tokio::test]
            async fn an_invalid_redirect_uri_is_a_400_without_location() {
                $crate::gateway_suite::an_invalid_redirect_uri_is_a_400_without_location::<$host>().await;
            }
            #[tokio::test]
            async fn forged_forwarded_headers_from_an_untrusted_peer_change_nothing() {
                $crate::gateway_suite::forged_forwarded_headers_from_an_untrusted_peer_change_nothing::<$host>().await;
            }
            #[tokio::test]
            async fn delegation_fails_closed() {
                $crate::gateway_suite::delegation_fails_closed::<$host>().await;
            }
            #[tokio::test]
            async fn the_gateway_registers_itself_upstream_without_a_client_id() {
                $crate::gateway_suite::the_gateway_registers_itself_upstream_without_a_client_id::<$host>().await;
            }
            #[tokio::test]
            async fn upstream_tokens_carry_the_servers_audience() {
                $crate::gateway_suite::upstream_tokens_carry_the_servers_audience::<$host>().await;
            }
            #[tokio::test]
            async fn interactive_flow_through_the_gateway_then_passthrough() {
                $crate::gateway_suite::interactive_flow_through_the_gateway_then_passthrough::<$host>().await;
            }
            #[tokio::test]
            async fn debug_headers_are_masked() {
                $crate::gateway_suite::debug_headers_are_masked::<$host>().await;
            }
            #[tokio::test]
            async fn sse_answers_and_session_ids_pass_through() {
                $crate::gateway_suite::sse_answers_and_session_ids_pass_through::<$host>().await;
            }
            #[tokio::test]
            async fn sse_is_streamed_event_by_event() {
                $crate::gateway_suite::sse_is_streamed_event_by_event::<$host>().await;
            }
            #[tokio::test]
            async fn secrets_never_reach_logs_or_error_bodies() {
                $crate::gateway_suite::secrets_never_reach_logs_or_error_bodies::<$host>().await;
            }
            #[tokio::test]
            async fn grants_survive_a_restart_with_the_sqlite_store() {
                $crate::gateway_suite::grants_survive_a_restart_with_the_sqlite_store::<$host>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replicas_sharing_redis_act_as_one_gateway() {
                $crate::gateway_suite::replicas_sharing_redis_act_as_one_gateway::<$host>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_redis_outage_fails_closed_and_loses_no_grant() {
                $crate::gateway_suite::a_redis_outage_fails_closed_and_loses_no_grant::<$host>().await;
            }
            #[tokio::test]
            async fn serve_stops_on_the_shutdown_signal() {
                $crate::gateway_suite::serve_stops_on_the_shutdown_signal::<$host>().await;
            }
            #[tokio::test]
            async fn aggregated_mcp_lists_prefixed_tools_and_routes_each_call_to_its_server() {
                $crate::gateway_suite::aggregated_mcp_lists_prefixed_tools_and_routes_each_call_to_its_server::<$host>().await;
            }
            #[tokio::test]
            async fn litellms_documented_curl_examples_work_as_printed() {
                $crate::gateway_suite::litellms_documented_curl_examples_work_as_printed::<$host>().await;
            }
            #[tokio::test]
            async fn aggregated_sessions_belong_to_their_caller_and_end_with_delete() {
                $crate::gateway_suite::aggregated_sessions_belong_to_their_caller_and_end_with_delete::<$host>().await;
            }
            #[tokio::test]
            async fn aggregated_listing_names_a_failing_server_and_serves_the_rest() {
                $crate::gateway_suite::aggregated_listing_names_a_failing_server_and_serves_the_rest::<$host>().await;
            }
            #[tokio::test]
            async fn aggregated_delegation_relays_the_upstream_challenge() {
                $crate::gateway_suite::aggregated_delegation_relays_the_upstream_challenge::<$host>().await;
            }
            #[tokio::test]
            async fn rest_tools_list_and_call() {
                $crate::gateway_suite::rest_tools_list_and_call::<$host>().await;
            }
            #[tokio::test]
            async fn malformed_jsonrpc_is_refused_before_any_token_or_upstream_request() {
                $crate::gateway_suite::malformed_jsonrpc_is_refused_before_any_token_or_upstream_request::<$host>().await;
            }
            #[tokio::test]
            async fn token_validation_applies_to_tokens_the_gateway_fetches_for_itself() {
                $crate::gateway_suite::token_validation_applies_to_tokens_the_gateway_fetches_for_itself::<$host>().await;
            }
            #[tokio::test]
            async fn aggregation_keeps_one_session_per_upstream_and_reopens_an_expired_one() {
                $crate::gateway_suite::aggregation_keeps_one_session_per_upstream_and_reopens_an_expired_one::<$host>().await;
            }
            #[tokio::test]
            async fn upstreams_are_reached_only_where_the_fetch_policy_allows() {
                $crate::gateway_suite::upstreams_are_reached_only_where_the_fetch_policy_allows::<$host>().await;
            }
            #[tokio::test]
            async fn a_doubled_slash_or_an_encoded_name_reaches_no_server() {
                $crate::gateway_suite::a_doubled_slash_or_an_encoded_name_reaches_no_server::<$host>().await;
            }
            #[tokio::test]
            async fn an_attacker_host_ends_without_a_token() {
                $crate::gateway_suite::an_attacker_host_ends_without_a_token::<$host>().await;
            }
            #[tokio::test]
            async fn strangers_cannot_grow_the_flow_store() {
                $crate::gateway_suite::strangers_cannot_grow_the_flow_store::<$host>().await;
            }
            #[tokio::test]
            async fn idle_and_dribbling_connections_are_closed() {
                $crate::gateway_suite::idle_and_dribbling_connections_are_closed::<$host>().await;
            }
            #[tokio::test]
            async fn past_the_connection_cap_a_503() {
                $crate::gateway_suite::past_the_connection_cap_a_503::<$host>().await;
            }
            #[tokio::test]
            async fn a_message_that_is_not_json_rpc_is_not_forwarded() {
                $crate::gateway_suite::a_message_that_is_not_json_rpc_is_not_forwarded::<$host>().await;
            }
        }
    };
}
