//! Runs `examples/smol.rs` against the mock upstream: discovery, then a client-credentials session.
//!
//! The test runs the example's own binary, exactly what ships (`cargo test` builds every example
//! of the package; when a filtered run did not, the test builds it with the same cargo). The mock
//! runs on a tokio runtime of its own; the example is a child process bounded by 60 s.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};

/// `target/<profile>/examples/smol`, next to this test's own `deps/` directory; built if absent.
fn example_binary() -> PathBuf {
    let current = std::env::current_exe().expect("the test's own path");
    let profile = current.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile.join("examples").join(format!("smol{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "mcp-oauth-tests", "--example", "smol"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building the smol example failed");
    }
    binary
}

#[test]
fn the_smol_example_stays_within_50_lines_of_code() {
    let source = include_str!("../examples/smol.rs");
    let code = source.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("//"));
    assert!(code.count() <= 50, "examples/smol.rs: at most 50 lines that are neither blank nor comments");
}

#[test]
fn the_smol_example_gets_a_token_and_lists_tools() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mock = runtime.block_on(MockUpstream::start(MockConfig::default())).expect("mock starts");
    let mcp_url = mock.mcp_url();
    let mut child = Command::new(example_binary())
        .args([mcp_url.as_str(), "mock-client", "mock-secret"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut text);
        let _ = sender.send(text);
    });
    let Ok(printed) = receiver.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("the example did not finish within 60 s");
    };
    let status = child.wait().expect("the example ends");
    assert!(status.success(), "the example failed: {printed}");
    assert!(
        printed.contains("token endpoint: Some("),
        "the session discovered the authorization server: {printed}"
    );
    let listed = printed.split("tools/list: ").nth(1).expect("a tools/list line");
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("the listing is JSON");
    assert!(!listed["tools"].as_array().expect("a tool list").is_empty());
    let counters = mock.handle().counters();
    assert_eq!(counters.token_requests_for("client_credentials"), 1, "one token from /token");
    assert_eq!(counters.mcp_requests_for("tools/list"), 1, "tools/list sent with that token");
}
