//! `mcp-oauth demo`: the gateway and a mock upstream on loopback, walked through step by step.
//!
//! Starts the mock upstream (an OAuth authorization server and an MCP server with `echo` and
//! `add`) and the gateway on `127.0.0.1:0` with a generated configuration: `reports`, an M2M server
//! (client credentials), and `notes`, an interactive server (authorization code + PKCE, no
//! delegation). Then it runs (a) an M2M `tools/call` through the gateway with the debug headers,
//! (b) a headless interactive flow through the gateway's own OAuth endpoints followed by a
//! `tools/call` with the token it issued, (c) lists and calls both servers' tools through the
//! aggregating `POST /mcp` (each with its own credential), and (d) prints curl lines to try by hand. Every step is
//! checked; a failed step ends the demo with exit status 1.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use mcp_oauth_core::config::load_yaml;
use mcp_oauth_core::machine::{Limits, Outgoing, Performer, RequestId};
use mcp_oauth_core::pkce::Pkce;
use mcp_oauth_tokio::HttpClient;
use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};
use mcp_oauth_tokio::server::{ServerOptions, gateway_state, serve};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use url::Url;

const DEBUG_HEADERS: [&str; 5] = [
    "x-mcp-debug-inbound-auth",
    "x-mcp-debug-oauth2-token",
    "x-mcp-debug-auth-resolution",
    "x-mcp-debug-outbound-url",
    "x-mcp-debug-server-auth-type",
];

/// A step that did not go as expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StepFailed(String);

fn fail<T>(message: impl Into<String>) -> Result<T, StepFailed> {
    Err(StepFailed(message.into()))
}

fn random_hex(bytes: usize) -> Result<String, StepFailed> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| StepFailed(format!("no randomness: {error}")))?;
    Ok(buffer.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    }))
}

struct Walkthrough {
    client: HttpClient,
    gateway: String,
    key: String,
}

impl Walkthrough {
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response<Vec<u8>>, StepFailed> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(|error| StepFailed(format!("bad request: {error}")))?;
        let limits = Limits {
            max_body_bytes: 1024 * 1024,
            timeout: Duration::from_secs(10),
            allow_private_addresses: true,
        };
        let outgoing = Outgoing::new(RequestId(0), request, limits, Performer::Client, "demo")
            .map_err(|error| StepFailed(format!("{url}: {error}")))?;
        self.client.perform(&outgoing).await.map_err(|error| StepFailed(format!("{url}: {error}")))
    }

    async fn tools_call(
        &self,
        server: &str,
        extra: &[(&str, &str)],
        name: &str,
        arguments: Value,
    ) -> Result<Response<Vec<u8>>, StepFailed> {
        let url = format!("{}/{server}/mcp", self.gateway);
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("x-mcp-gateway-key", self.key.as_str()),
            ("x-mcp-debug", "true"),
        ];
        headers.extend_from_slice(extra);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}});
        println!("  → POST {url}  tools/call {name} {}", body["params"]["arguments"]);
        let response = self.send(Method::POST, &url, &headers, body.to_string().into_bytes()).await?;
        println!("  ← HTTP {}", response.status().as_u16());
        for name in DEBUG_HEADERS {
            if let Some(value) = response.headers().get(name).and_then(|value| value.to_str().ok()) {
                println!("      {name}: {value}");
            }
        }
        Ok(response)
    }
}

fn location(response: &Response<Vec<u8>>, step: &str) -> Result<Url, StepFailed> {
    if response.status() != StatusCode::FOUND {
        return fail(format!(
            "{step}: expected a 302, got HTTP {} {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body())
        ));
    }
    let Some(value) = response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok()) else {
        return fail(format!("{step}: the 302 has no Location"));
    };
    Url::parse(value).map_err(|_| StepFailed(format!("{step}: the Location is not a URL")))
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn result_text(response: &Response<Vec<u8>>, step: &str) -> Result<String, StepFailed> {
    if response.status() != StatusCode::OK {
        return fail(format!(
            "{step}: HTTP {} {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body())
        ));
    }
    let message: Value = serde_json::from_slice(response.body())
        .map_err(|_| StepFailed(format!("{step}: the answer is not JSON")))?;
    match message["result"]["content"][0]["text"].as_str() {
        Some(text) => Ok(text.to_owned()),
        None => fail(format!("{step}: no tool result in {message}")),
    }
}

/// Runs the demo; with `once` it exits after the walkthrough, else it serves until Ctrl-C.
pub(crate) fn run(once: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mcp-oauth demo: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(walkthrough(once)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            println!("\nFAILED: {error}");
            ExitCode::from(1)
        }
    }
}

async fn walkthrough(once: bool) -> Result<(), StepFailed> {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .map_err(|error| StepFailed(format!("cannot start the mock upstream: {error}")))?;
    let upstream = mock.origin().to_owned();
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|error| StepFailed(format!("cannot listen on 127.0.0.1: {error}")))?;
    let address = listener.local_addr().map_err(|error| StepFailed(error.to_string()))?;
    let gateway = format!("http://{address}");
    let key = format!("sk-demo-{}", random_hex(12)?);
    let config = MockConfig::default();
    let yaml = format!(
        "general_settings:
  master_key: {key}
mcp_servers:
  reports:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: {id}
    client_secret: {secret}
    token_url: {upstream}/token
  notes:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: authorization_code
    client_id: {id}
    client_secret: {secret}
    scopes: [mcp]
",
        id = config.client_id,
        secret = config.client_secret,
    );
    let public = gateway.clone();
    let env = move |name: &str| (name == "PROXY_BASE_URL").then(|| public.clone());
    let loaded = load_yaml(&yaml, &env).map_err(|failed| {
        StepFailed(format!("the generated configuration has {} error(s)", failed.errors.len()))
    })?;
    for warning in &loaded.warnings {
        println!("config warning: {warning}");
    }
    let mut config = loaded.config;
    // `notes` names only its MCP URL: its authorization server's endpoints are discovered
    // (RFC 9728, then RFC 8414), as `serve` does for such servers.
    let reports = mcp_oauth_tokio::startup::discover_endpoints(&mut config, Duration::from_secs(10))
        .await
        .map_err(|error| StepFailed(error.to_string()))?;
    for report in reports {
        match report.outcome {
            Ok(filled) => println!("discovered for `{}`: {}", report.server, filled.join(", ")),
            Err(failed) => return fail(format!("discovery for `{}` failed: {failed}", report.server)),
        }
    }
    let state =
        gateway_state(config, ServerOptions::default()).map_err(|error| StepFailed(error.to_string()))?;
    let state = Arc::new(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::clone(&state), async {
        let _ = stopped.await;
    }));
    println!("mock upstream (OAuth authorization server + MCP server): {upstream}");
    println!("gateway: {gateway}   (servers: reports = M2M client credentials, notes = interactive)");
    println!("gateway key: {key}\n");

    let client = HttpClient::new().map_err(|error| StepFailed(error.to_string()))?;
    let demo = Walkthrough { client, gateway: gateway.clone(), key: key.clone() };
    let outcome = steps(&demo, &mock).await;
    if outcome.is_ok() {
        print_curl_lines(&gateway, &key);
        if once {
            println!("\n--once: done.");
        } else {
            println!("\nServing until Ctrl-C …");
            crate::serve::shutdown_signal().await;
        }
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    outcome
}

async fn steps(demo: &Walkthrough, mock: &MockUpstream) -> Result<(), StepFailed> {
    let counters_before = mock.handle().counters();
    println!("(a) M2M: tools/call through the gateway; the gateway fetches a client-credentials token");
    let response =
        demo.tools_call("reports", &[], "echo", json!({"text": "hello through the gateway"})).await?;
    let text = result_text(&response, "M2M tools/call")?;
    println!("      result: {text}");
    let second = demo.tools_call("reports", &[], "add", json!({"a": 2, "b": 40})).await?;
    println!("      result: {}", result_text(&second, "second M2M tools/call")?);
    let counters = mock.handle().counters();
    let fetched = counters.token_requests_for("client_credentials")
        - counters_before.token_requests_for("client_credentials");
    let calls = counters.mcp_requests_for("tools/call") - counters_before.mcp_requests_for("tools/call");
    let opened = counters.mcp_requests_for("initialize") - counters_before.mcp_requests_for("initialize");
    let others: u64 = counters.mcp_requests.values().sum::<u64>()
        - counters_before.mcp_requests.values().sum::<u64>()
        - calls;
    println!(
        "  upstream saw: {calls} tools/call, {others} other MCP request(s) ({opened} initialize: the gateway's own session, opened once), {fetched} token fetch(es) for 2 calls"
    );
    // The calls carry no session id, so they run in the gateway's own upstream session (design
    // §4.11): initialize and notifications/initialized once, then one request per call.
    if calls != 2 || opened > 1 || others > 2 * opened || fetched != 1 {
        return fail("expected one upstream request per call after one session opening, and one token fetch");
    }

    println!(
        "\n(b) Interactive: the gateway is the client's authorization server (register, consent, code, token)"
    );
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|error| StepFailed(format!("no randomness: {error}")))?;
    let pkce = Pkce::from_random(random);
    let client_redirect = "http://127.0.0.1:33418/callback";
    let client_state = random_hex(8)?;
    let register_url = format!("{}/notes/register", demo.gateway);
    println!("  → POST {register_url}  (an MCP client registers itself)");
    let registration = json!({"redirect_uris": [client_redirect], "client_name": "mcp-oauth demo"});
    let response = demo
        .send(
            Method::POST,
            &register_url,
            &[("content-type", "application/json")],
            registration.to_string().into_bytes(),
        )
        .await?;
    let registered: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    let Some(client_id) =
        registered["client_id"].as_str().filter(|_| response.status() == StatusCode::CREATED)
    else {
        return fail(format!(
            "register: HTTP {} {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body())
        ));
    };
    println!("  ← 201 a sealed client_id ({} characters; the gateway stores nothing)", client_id.len());
    let mut authorize = Url::parse(&format!("{}/notes/authorize", demo.gateway))
        .map_err(|_| StepFailed("bad gateway URL".into()))?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", client_redirect)
        .append_pair("state", &client_state)
        .append_pair("code_challenge", pkce.challenge())
        .append_pair("code_challenge_method", "S256");
    println!("  → GET {}", authorize.as_str().split('?').next().unwrap_or_default());
    let page = demo.send(Method::GET, authorize.as_str(), &[], Vec::new()).await?;
    if page.status() != StatusCode::OK {
        return fail(format!("authorize: HTTP {} (expected the consent page)", page.status().as_u16()));
    }
    let mut jar = Vec::new();
    keep_cookies(&page, &mut jar);
    let html = String::from_utf8_lossy(page.body()).into_owned();
    println!("  ← 200 the consent page; the user signs in with the gateway key and approves");
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("request", &form_field(&html, "request"))
        .append_pair("csrf", &form_field(&html, "csrf"))
        .append_pair("gateway_key", &demo.key)
        .append_pair("decision", "approve")
        .finish();
    let consent_url = format!("{}/notes/consent", demo.gateway);
    let cookie = jar.join("; ");
    let response = demo
        .send(
            Method::POST,
            &consent_url,
            &[("content-type", "application/x-www-form-urlencoded"), ("cookie", cookie.as_str())],
            form.into_bytes(),
        )
        .await?;
    keep_cookies(&response, &mut jar);
    let upstream_authorize = location(&response, "gateway /consent")?;
    println!(
        "  ← 302 to the upstream's authorization endpoint {} (the gateway's own PKCE)",
        upstream_authorize.path()
    );
    let response = demo.send(Method::GET, upstream_authorize.as_str(), &[], Vec::new()).await?;
    let callback = location(&response, "upstream /authorize")?;
    println!("  ← 302 back to the gateway's {} (the mock approves at once)", callback.path());
    let cookie = jar.join("; ");
    let response =
        demo.send(Method::GET, callback.as_str(), &[("cookie", cookie.as_str())], Vec::new()).await?;
    let back = location(&response, "gateway /callback")?;
    let (Some(code), Some(state)) = (query(&back, "code"), query(&back, "state")) else {
        return fail("the client redirect carries no code or state");
    };
    if state != client_state || !back.as_str().starts_with(client_redirect) {
        return fail("the client redirect does not match the client's redirect_uri and state");
    }
    println!(
        "  ← 302 to the client's redirect_uri with the gateway's own code (the upstream tokens stay in the gateway)"
    );
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("code_verifier", pkce.verifier().expose())
        .append_pair("redirect_uri", client_redirect)
        .append_pair("client_id", client_id)
        .finish();
    let token_url = format!("{}/notes/token", demo.gateway);
    println!("  → POST {token_url}  (code + code_verifier)");
    let response = demo
        .send(
            Method::POST,
            &token_url,
            &[("content-type", "application/x-www-form-urlencoded")],
            form.into_bytes(),
        )
        .await?;
    if response.status() != StatusCode::OK {
        return fail(format!(
            "token: HTTP {} {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body())
        ));
    }
    let token: Value = serde_json::from_slice(response.body())
        .map_err(|_| StepFailed("the token answer is not JSON".into()))?;
    let Some(access_token) = token["access_token"].as_str().filter(|token| token.starts_with("mcpgw_"))
    else {
        return fail("the token answer has no gateway access token");
    };
    println!(
        "  ← 200 a gateway access token (mcpgw_…, expires_in {}, refresh token: {})",
        token["expires_in"],
        if token["refresh_token"].is_string() { "yes" } else { "no" }
    );
    let bearer = format!("Bearer {access_token}");
    let response = demo
        .tools_call("notes", &[("authorization", bearer.as_str())], "add", json!({"a": 2, "b": 3}))
        .await?;
    println!("      result: {}", result_text(&response, "interactive tools/call")?);
    aggregated(demo, mock).await
}

/// Keeps the `name=value` of every `Set-Cookie` in `response` (a browser's cookie jar, in short).
fn keep_cookies(response: &Response<Vec<u8>>, jar: &mut Vec<String>) {
    for value in response.headers().get_all("set-cookie") {
        if let Some(pair) = value.to_str().ok().and_then(|text| text.split(';').next()) {
            jar.push(pair.to_owned());
        }
    }
}

/// The `value` of the form field `name` on the consent page.
fn form_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
}

/// (c) Both servers behind `POST /mcp` with the gateway key: each target gets its own credential
/// (the M2M token for `reports`, the newest grant of the key's identity for `notes`, which (b)
/// created), tools are listed as `{server}-{tool}` and a call goes only to the server its prefix
/// names.
async fn aggregated(demo: &Walkthrough, mock: &MockUpstream) -> Result<(), StepFailed> {
    println!("\n(c) Aggregated: reports and notes behind POST /mcp with x-mcp-servers");
    let url = format!("{}/mcp", demo.gateway);
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("x-mcp-gateway-key", demo.key.as_str()),
        ("x-mcp-servers", "reports,notes"),
    ];
    let before = mock.handle().counters();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    println!("  → POST {url}  tools/list");
    let response = demo.send(Method::POST, &url, &headers, list.to_string().into_bytes()).await?;
    let message: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    let names: Vec<&str> = message["result"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    println!("  ← HTTP {}  tools: {}", response.status().as_u16(), names.join(", "));
    if names != ["reports-echo", "reports-add", "notes-echo", "notes-add"] {
        return fail(format!("aggregated tools/list: unexpected tools {names:?}"));
    }
    println!("      notes: the newest grant of the key's identity (signed in at (b))");
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "notes-add", "arguments": {"a": 20, "b": 22}}});
    println!("  → POST {url}  tools/call notes-add {{\"a\":20,\"b\":22}}");
    let response = demo.send(Method::POST, &url, &headers, call.to_string().into_bytes()).await?;
    println!("  ← HTTP {}", response.status().as_u16());
    println!("      result: {}", result_text(&response, "aggregated tools/call")?);
    let after = mock.handle().counters();
    let lists = after.mcp_requests_for("tools/list") - before.mcp_requests_for("tools/list");
    let calls = after.mcp_requests_for("tools/call") - before.mcp_requests_for("tools/call");
    println!("  upstream saw: {lists} tools/list (one per server), {calls} tools/call");
    if lists != 2 || calls != 1 {
        return fail("expected one listing per server and one upstream call");
    }
    Ok(())
}

fn print_curl_lines(gateway: &str, key: &str) {
    println!("\n(d) Try it yourself (while the demo serves):");
    println!("  curl -s {gateway}/health");
    println!("  curl -s {gateway}/.well-known/oauth-protected-resource/notes/mcp");
    println!("  curl -s {gateway}/.well-known/oauth-authorization-server/notes");
    println!(
        "  curl -s -D - {gateway}/reports/mcp -H 'x-mcp-gateway-key: {key}' -H 'x-mcp-debug: true' \\\n      \
         -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\\n      \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hi\"}}}}}}'"
    );
    println!(
        "  curl -s -D - {gateway}/reports/mcp -H 'content-type: application/json' -d '{{}}'   # no key: 401 + resource_metadata"
    );
    println!("  curl -s '{gateway}/mcp-rest/tools/list?server_id=reports' -H 'x-mcp-gateway-key: {key}'");
    println!(
        "  curl -s {gateway}/mcp-rest/tools/call -H 'x-mcp-gateway-key: {key}' -H 'content-type: application/json' \\\n      \
         -d '{{\"name\":\"reports-add\",\"arguments\":{{\"a\":1,\"b\":2}}}}'"
    );
}
