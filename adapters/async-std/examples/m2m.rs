//! Machine to machine on async-std: client credentials against an MCP server, then `tools/list`.
//!
//! ```text
//! MCP_CLIENT_ID=mock-client MCP_CLIENT_SECRET=mock-secret \
//!   cargo run -p mcp-oauth-async-std --example m2m -- http://127.0.0.1:8080/mcp
//! ```
//!
//! The URL comes from the first argument or `MCP_URL`; the credentials from `MCP_CLIENT_ID` and
//! `MCP_CLIENT_SECRET`. Core runs the whole session (probe, discovery, token request, MCP calls);
//! this program only drives it.

use std::process::ExitCode;

use mcp_oauth_async_std::{Headless, HttpClient, Io, drive};
use mcp_oauth_core::client::session::{GrantKind, Operation, Session, SessionConfig};
use mcp_oauth_core::secret::Secret;
use url::Url;

fn main() -> ExitCode {
    match async_std::task::block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("m2m: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::args().nth(1).or_else(|| std::env::var("MCP_URL").ok()).ok_or("usage: m2m <mcp-url>")?;
    let client_id = std::env::var("MCP_CLIENT_ID").map_err(|_| "set MCP_CLIENT_ID")?;
    let client_secret = std::env::var("MCP_CLIENT_SECRET").map_err(|_| "set MCP_CLIENT_SECRET")?;

    // No browser in machine-to-machine: the redirect URI is never used by client credentials.
    let redirect_uri = Url::parse("http://127.0.0.1:9/callback")?;
    let mut config = SessionConfig::new(Url::parse(&url)?, redirect_uri, Vec::new());
    config.grant = GrantKind::ClientCredentials;
    config.identity.client_id = Some(client_id);
    config.identity.client_secret = Some(Secret::new(client_secret));
    config.operations = vec![Operation::ListTools];

    let io = Io::new(HttpClient::new()?, Box::new(Headless));
    let outcome = drive(&mut Session::new(config), &io).await??;
    let tools =
        outcome.results.first().and_then(|result| result["tools"].as_array()).cloned().unwrap_or_default();
    println!("{} tool(s) on {url}:", tools.len());
    for tool in tools {
        let name = tool["name"].as_str().unwrap_or("?");
        let description = tool["description"].as_str().unwrap_or("");
        println!("  {name}: {description}");
    }
    Ok(())
}
