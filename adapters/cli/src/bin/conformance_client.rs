//! The client the MCP conformance suite drives: `conformance-client [args…] SERVER_URL`.
//!
//! It maps the harness's environment onto the library's normal configuration and runs the same
//! session as `mcp-oauth connect`. The library never reads these variables:
//! - `MCP_CONFORMANCE_SCENARIO`: the scenario; `…client-credentials…` selects the M2M grant;
//! - `MCP_CONFORMANCE_PROTOCOL_VERSION`: the protocol version to speak;
//! - `MCP_CONFORMANCE_CONTEXT`: JSON with `client_id` / `client_secret` for pre-registered clients.
//!
//! Exit status 0 when the session completed, 1 when it failed (the reason on stderr).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use mcp_oauth_cli::connect::{Browser, entropy, run_session};
use mcp_oauth_core::client::registration::ClientIdentity;
use mcp_oauth_core::client::session::{GrantKind, Operation, SessionConfig};
use mcp_oauth_core::secret::Secret;
use serde_json::Value;
use url::Url;

/// The client ID metadata document URL the conformance authorization server expects.
const CONFORMANCE_CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";

fn main() -> ExitCode {
    let Some(server) = std::env::args().next_back() else {
        eprintln!("usage: conformance-client SERVER_URL");
        return ExitCode::from(2);
    };
    let Ok(server_url) = Url::parse(&server) else {
        eprintln!("conformance-client: `{server}` is not a URL");
        return ExitCode::from(2);
    };
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let context: Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let text = |key: &str| context.get(key).and_then(Value::as_str).map(str::to_owned);
    let Ok(randomness) = entropy(4) else {
        eprintln!("conformance-client: no randomness available");
        return ExitCode::from(1);
    };
    let redirect_uri = Url::parse("http://127.0.0.1:33418/callback").unwrap_or_else(|_| server_url.clone());
    let mut config = SessionConfig::new(server_url, redirect_uri, randomness);
    if let Ok(version) = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION")
        && !version.is_empty()
    {
        config.protocol_version = version;
    }
    config.identity = ClientIdentity {
        client_id: text("client_id"),
        client_secret: text("client_secret").map(Secret::new),
        metadata_document_url: Url::parse(CONFORMANCE_CLIENT_METADATA_URL).ok(),
        client_name: "mcp-oauth conformance client".to_owned(),
    };
    // The harness hands out both the authorization server (on its own port) and the credentials
    // for it, so it is trusted as a whole; a real deployment pins the issuer or token_url instead.
    config.trust_discovered_token_endpoint = true;
    if scenario.contains("client-credentials") {
        config.grant = GrantKind::ClientCredentials;
    }
    config.operations = vec![
        Operation::ListTools,
        Operation::CallTool { name: "test-tool".to_owned(), arguments: serde_json::json!({}) },
    ];
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("conformance-client: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_session(config, Browser::Headless)) {
        Ok(outcome) => {
            println!(
                "{}",
                serde_json::json!({
                    "protocol_version": outcome.protocol_version,
                    "authorizations": outcome.authorizations,
                    "scopes": outcome.scopes,
                    "results": outcome.results,
                })
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("conformance-client: {error}");
            ExitCode::from(1)
        }
    }
}
