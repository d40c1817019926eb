//! Discovery and a client-credentials session on smol, with ureq (blocking, run through
//! `smol::unblock`) as the HTTP client: core's machines need no tokio, hyper or surf.
//!
//! ```text
//! cargo run -p mcp-oauth-tests --example smol -- http://127.0.0.1:PORT/mcp CLIENT_ID CLIENT_SECRET
//! ```
//!
//! Against the mock upstream (`mcp_oauth_tokio::mock`) the credentials are `mock-client mock-secret`;
//! the test `tests/smol_example.rs` starts the mock and runs [`run`] against it in CI.

use mcp_oauth_core::client::discovery::{Discovery, DiscoveryConfig};
use mcp_oauth_core::client::session::{GrantKind, Operation, Session, SessionConfig, SessionOutcome};
use mcp_oauth_core::machine::{Instant, Machine, Outgoing, Step, TransportError};
use ureq::{Agent, RequestExt};

// One exchange under the request's limits (timeout, body cap); a redirect is the answer, never followed,
// so a browser step (`Performer::UserAgent`, not used by client credentials) is performed headless.
// `Outgoing::new` applied the fetch policy to the URL; a production adapter also checks every address
// a host name resolves to and connects to that address (as the tokio and async-std adapters do).
fn perform(agent: &Agent, outgoing: Outgoing) -> Result<http::Response<Vec<u8>>, TransportError> {
    let limits = outgoing.limits();
    let mapped = |error: ureq::Error| match error {
        ureq::Error::Timeout(_) => TransportError::Timeout,
        ureq::Error::BodyExceedsLimit(_) => TransportError::BodyTooLarge { limit: limits.max_body_bytes },
        other => TransportError::Connect(other.to_string()),
    };
    let request = outgoing.into_request().with_agent(agent).configure().timeout_global(Some(limits.timeout));
    let (parts, mut body) = request.build().run().map_err(mapped)?.into_parts();
    let body = body.with_config().limit(limits.max_body_bytes as u64).read_to_vec().map_err(mapped)?;
    Ok(http::Response::from_parts(parts, body))
}

// The driver: poll, perform what the machine asks for off the executor, feed the answers back.
async fn drive<M: Machine>(machine: &mut M, agent: &Agent) -> Result<M::Outcome, Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    loop {
        match machine.poll(now()) {
            Step::Done(outcome) => return Ok(outcome),
            Step::Send(requests) => {
                for outgoing in requests {
                    let (id, agent) = (outgoing.id(), agent.clone());
                    let answer = smol::unblock(move || perform(&agent, outgoing)).await;
                    machine.handle_response(id, answer, now());
                }
            }
            Step::Wait(at) => _ = smol::Timer::after(at.ok_or("stalled")?.saturating_since(now())).await,
        }
    }
}

/// Discovers how the MCP server is authorized, then runs a client-credentials session listing tools.
pub(crate) async fn run(args: &[String]) -> Result<SessionOutcome, Box<dyn std::error::Error>> {
    let [url, client_id, secret] = args else { return Err("usage: smol MCP_URL CLIENT_ID SECRET".into()) };
    let agent = Agent::config_builder().max_redirects(0).http_status_as_error(false).build().new_agent();
    let discovered = drive(&mut Discovery::new(DiscoveryConfig::new(url.parse()?)), &agent).await??;
    println!("token endpoint: {:?}", discovered.authorization_server.token_endpoint);
    let mut config = SessionConfig::new(url.parse()?, "http://127.0.0.1:9/".parse()?, Vec::new());
    config.grant = GrantKind::ClientCredentials;
    config.identity.client_id = Some(client_id.clone());
    config.identity.client_secret = Some(mcp_oauth_core::secret::Secret::new(secret.as_str()));
    config.operations = vec![Operation::ListTools];
    let outcome = drive(&mut Session::new(config), &agent).await??;
    println!("token obtained (scopes {:?}); tools/list: {}", outcome.scopes, outcome.results[0]);
    Ok(outcome)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(run(&std::env::args().skip(1).collect::<Vec<_>>())).map(drop)
}
