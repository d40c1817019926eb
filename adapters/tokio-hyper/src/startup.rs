//! Start-up discovery for the gateway: endpoints the configuration leaves to discovery.
//!
//! LiteLLM configurations often give an OAuth server only its MCP `url`. Before serving,
//! [`discover_endpoints`] asks core which servers miss endpoints their flow needs
//! ([`gateway::endpoint_discovery`]), runs core's discovery machine for each of them at the same
//! time over [`HttpClient`] (with its fetch policy), and lets core fill the configuration
//! ([`gateway::apply_discovery`]). A server whose discovery fails keeps its configuration as
//! written: its OAuth routes then answer that the endpoint is not configured, and the report says
//! why, so the operator can set it.
//!
//! ```no_run
//! # async fn run(mut config: mcp_oauth_core::config::GatewayConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! for report in mcp_oauth_tokio::startup::discover_endpoints(&mut config, Duration::from_secs(10)).await? {
//!     println!("{}: {:?}", report.server, report.outcome);
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use mcp_oauth_core::Reason;
use mcp_oauth_core::client::discovery::Discovery;
use mcp_oauth_core::config::GatewayConfig;
use mcp_oauth_core::gateway;

use crate::client::{HttpClient, TlsSetupError};
use crate::driver::drive;
use crate::user_agent::{Headless, Io};

/// What start-up discovery did for one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryReport {
    /// The server's name.
    pub server: String,
    /// The configuration fields filled, or why none were (with its reason code).
    pub outcome: Result<Vec<&'static str>, DiscoveryFailed>,
}

/// Why start-up discovery left a server as configured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{reason}]")]
pub struct DiscoveryFailed {
    /// The stable reason code.
    pub reason: &'static str,
    /// What happened, for people (no secret: URLs and codes only).
    pub message: String,
}

impl DiscoveryFailed {
    fn from<E: Reason + std::fmt::Display>(error: &E) -> Self {
        Self { reason: error.reason(), message: error.to_string() }
    }
}

/// Discovers and fills the endpoints `config` leaves empty, every server at once, each discovery
/// request within `timeout` (the discovery machine enforces it, so a server that never answers is
/// reported as a timeout). Returns one report per server that needed discovery (none when nothing
/// is missing).
pub async fn discover_endpoints(
    config: &mut GatewayConfig,
    timeout: Duration,
) -> Result<Vec<DiscoveryReport>, TlsSetupError> {
    let wanted: Vec<_> = config
        .servers
        .values()
        .filter_map(|server| {
            gateway::endpoint_discovery(server).map(|discovery| (server.name.clone(), discovery))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let io = Io::new(HttpClient::new()?, Box::new(Headless));
    let runs = wanted.into_iter().map(|(name, discovery_config)| {
        let io = &io;
        async move {
            let mut discovery_config = discovery_config;
            discovery_config.limits.timeout = timeout;
            let mut discovery = Discovery::new(discovery_config);
            let outcome = match drive(&mut discovery, io).await {
                Ok(Ok(discovered)) => Ok(discovered),
                Ok(Err(failure)) => Err(DiscoveryFailed::from(&failure)),
                Err(stalled) => Err(DiscoveryFailed { reason: "stalled", message: stalled.to_string() }),
            };
            (name, outcome)
        }
    });
    let mut reports = Vec::new();
    for (name, outcome) in futures_util::future::join_all(runs).await {
        let outcome = match (outcome, config.servers.get_mut(&name)) {
            (Ok(discovered), Some(server)) => {
                gateway::apply_discovery(server, &discovered.authorization_server)
                    .map_err(|error| DiscoveryFailed::from(&error))
            }
            (Ok(_), None) => {
                Err(DiscoveryFailed { reason: "unknown_server", message: "no such server".into() })
            }
            (Err(failed), _) => Err(failed),
        };
        reports.push(DiscoveryReport { server: name, outcome });
    }
    Ok(reports)
}
