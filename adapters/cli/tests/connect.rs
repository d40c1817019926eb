//! `mcp-oauth discover` and `mcp-oauth connect` against the loopback mock upstream.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};

/// Starts the mock on its own runtime thread; it stops when the returned runtime is dropped.
fn mock() -> (tokio::runtime::Runtime, MockUpstream) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let upstream = runtime.block_on(MockUpstream::start(MockConfig::default())).unwrap();
    (runtime, upstream)
}

fn run(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-oauth"));
    child.args(args).env_remove("MCP_OAUTH_CLIENT_ID").env_remove("MCP_OAUTH_CLIENT_SECRET");
    let output = run_bounded(child);
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_bounded(mut command: Command) -> std::process::Output {
    let child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    receiver.recv_timeout(Duration::from_secs(60)).expect("the command finished within 60 s").unwrap()
}

#[test]
fn discover_prints_the_trail_and_the_metadata() {
    let (_runtime, upstream) = mock();
    let (ok, stdout) = run(&["discover", &upstream.mcp_url()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("probe"), "{stdout}");
    assert!(stdout.contains("protected_resource"), "{stdout}");
    assert!(stdout.contains("accepted"), "{stdout}");
    assert!(stdout.contains(&format!("issuer:   {}", upstream.origin())), "{stdout}");
    assert!(stdout.contains("\"token_endpoint\""), "{stdout}");
}

#[test]
fn discover_says_when_a_server_needs_no_authorization() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let open = MockConfig {
        switches: mcp_oauth_tokio::mock::Switches {
            require_auth: false,
            metadata_missing: true,
            ..mcp_oauth_tokio::mock::Switches::default()
        },
        ..MockConfig::default()
    };
    let upstream = runtime.block_on(MockUpstream::start(open)).unwrap();
    let (ok, stdout) = run(&["discover", &upstream.mcp_url()]);
    assert!(ok, "exit 0: {stdout}");
    assert!(stdout.contains("no authorization needed"), "{stdout}");
    assert!(!stdout.contains("token_endpoint"), "no guessed endpoints printed: {stdout}");

    // A server that answers without a token but publishes metadata: printed, with a note.
    let (_runtime, documented) = mock();
    documented.handle().set(mcp_oauth_tokio::mock::Switch::RequireAuth(false));
    let (ok, stdout) = run(&["discover", &documented.mcp_url()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("without a token") && stdout.contains("token_endpoint"), "{stdout}");
}

#[test]
fn discover_reports_a_dead_server_with_its_reason() {
    let (ok, stdout) = run(&["discover", "http://127.0.0.1:9/mcp"]);
    assert!(!ok);
    assert!(stdout.contains("probe_failed"), "{stdout}");
}

#[test]
fn connect_runs_the_interactive_flow_headless_and_calls_a_tool() {
    let (_runtime, upstream) = mock();
    let (ok, stdout) = run(&[
        "connect",
        &upstream.mcp_url(),
        "--headless",
        "--call",
        "add",
        "--args",
        r#"{"a": 40, "b": 2}"#,
    ]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("1 authorization(s)"), "{stdout}");
    assert!(stdout.contains("\"echo\""), "tools/list result printed: {stdout}");
    assert!(stdout.contains("42"), "the add result: {stdout}");
    let counters = upstream.handle().counters();
    assert_eq!(counters.registrations, 1);
    assert_eq!(counters.authorize_calls, 1);
}

#[test]
fn connect_with_client_credentials() {
    let (_runtime, upstream) = mock();
    let config = MockConfig::default();
    let (ok, stdout) = run(&[
        "connect",
        &upstream.mcp_url(),
        "--grant",
        "client_credentials",
        "--client-id",
        &config.client_id,
        "--client-secret",
        &config.client_secret,
        "--call",
        "echo",
        "--args",
        r#"{"text": "hello"}"#,
    ]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("hello"), "{stdout}");
    assert_eq!(upstream.handle().counters().authorize_calls, 0);
}

#[test]
fn connect_refuses_bad_arguments_with_a_fix() {
    let (ok, stdout) = run(&["connect", "not a url"]);
    assert!(!ok);
    assert!(stdout.contains("fix:"), "{stdout}");
    let (ok, stdout) = run(&["connect", "https://mcp.example.com/mcp", "--grant", "implicit"]);
    assert!(!ok);
    assert!(stdout.contains("unknown grant"), "{stdout}");
}

/// `connect --header` reaches a gateway's machine-to-machine server with the gateway key: the key
/// goes to the MCP endpoint only, and the gateway attaches its own upstream token.
#[test]
fn connect_with_a_header_reaches_a_gateway_server() {
    let (runtime, upstream) = mock();
    let yaml = format!(
        "general_settings:\n  master_key: sk-gateway-cli-0001\nmcp_servers:\n  reports:\n    url: {origin}/mcp\n    auth_type: oauth2\n    oauth2_flow: client_credentials\n    client_id: mock-client\n    client_secret: mock-secret\n    token_url: {origin}/token\n",
        origin = upstream.origin()
    );
    let config = mcp_oauth_core::config::load_yaml(&yaml, &|_| None).unwrap().config;
    let state = std::sync::Arc::new(
        mcp_oauth_tokio::server::gateway_state(config, mcp_oauth_tokio::server::ServerOptions::default())
            .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let gateway = format!("http://{}/reports/mcp", listener.local_addr().unwrap());
    runtime.spawn(mcp_oauth_tokio::server::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let call = ["--call", "add", "--args", r#"{"a": 40, "b": 2}"#];
    let mut with_key =
        vec!["connect", gateway.as_str(), "--header", "x-mcp-gateway-key: sk-gateway-cli-0001"];
    with_key.extend(call);
    let (ok, stdout) = run(&with_key);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("42"), "the add result: {stdout}");
    assert!(!stdout.contains("sk-gateway-cli-0001"), "the key is not printed: {stdout}");
    assert_eq!(
        upstream.handle().counters().token_requests_for("client_credentials"),
        1,
        "the gateway's own token"
    );

    let (ok, stdout) = run(&["connect", gateway.as_str(), "--header", "authorization: Bearer x"]);
    assert!(!ok);
    assert!(stdout.contains("set by the session itself"), "{stdout}");
    let (ok, stdout) = run(&["connect", gateway.as_str(), "--header", "no-colon"]);
    assert!(!ok);
    assert!(stdout.contains("NAME:VALUE"), "{stdout}");
    let _ = stop.send(());
}
