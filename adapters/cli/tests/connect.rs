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
