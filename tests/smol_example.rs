//! Runs `examples/smol.rs` against the mock upstream: discovery, then a client-credentials session.
//!
//! The example's file is compiled into this test as a module, so CI runs exactly what the example
//! ships (cargo gives tests no path to an `[[example]]` binary). The mock runs on a tokio runtime of
//! its own, the example on smol in another thread; the whole run is bounded by 60 s.

use std::sync::mpsc;
use std::time::Duration;

use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};

#[allow(dead_code)]
#[path = "../examples/smol.rs"]
mod example;

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
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = smol::block_on(example::run(&[mcp_url, "mock-client".into(), "mock-secret".into()]));
        let _ = sender.send(outcome.map_err(|error| error.to_string()));
    });
    let outcome = receiver.recv_timeout(Duration::from_secs(60)).expect("the example finished within 60 s");
    let outcome = outcome.expect("the example succeeded");
    assert!(outcome.discovery.is_some(), "the session discovered the authorization server");
    let tools = outcome.results[0]["tools"].as_array().expect("a tool list");
    assert!(!tools.is_empty());
    let counters = mock.handle().counters();
    assert_eq!(counters.token_requests_for("client_credentials"), 1, "one token from /token");
    assert_eq!(counters.mcp_requests_for("tools/list"), 1, "tools/list sent with that token");
}
