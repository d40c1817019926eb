//! Running a core client session or discovery over the tokio adapter, and printing the results.

use mcp_oauth_core::Reason;
use mcp_oauth_core::client::discovery::{
    Discovered, Discovery, DiscoveryConfig, DiscoveryFailure, TrailEntry,
};
use mcp_oauth_core::client::session::{Session, SessionConfig, SessionError, SessionOutcome};
use mcp_oauth_tokio::client::HttpClient;
use mcp_oauth_tokio::driver::drive;
use mcp_oauth_tokio::user_agent::{Headless, Io, LoopbackBrowser};

/// How the browser step is performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Browser {
    /// Fetch the authorization URL and read its redirect (servers that approve at once).
    Headless,
    /// Ask a person to open the URL and catch the redirect on this loopback port.
    Loopback(u16),
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// TLS or randomness could not be set up.
    #[error("cannot start: {0}")]
    Setup(String),
    /// The driver stalled (a machine bug).
    #[error("the client stalled (a bug: please report it)")]
    Stalled,
    /// The session failed.
    #[error("{0} [{reason}]", reason = .0.reason())]
    Session(SessionError),
    /// Discovery failed.
    #[error("{0} [{reason}]", reason = .0.reason())]
    Discovery(DiscoveryFailure),
}

fn io(browser: Browser) -> Result<Io, RunError> {
    let client = HttpClient::new().map_err(|error| RunError::Setup(error.to_string()))?;
    Ok(match browser {
        Browser::Headless => Io::new(client, Box::new(Headless)),
        Browser::Loopback(port) => Io::new(client, Box::new(LoopbackBrowser::new(port))),
    })
}

/// Runs one MCP session with OAuth as `config` says.
pub async fn run_session(config: SessionConfig, browser: Browser) -> Result<SessionOutcome, RunError> {
    let io = io(browser)?;
    let mut session = Session::new(config);
    drive(&mut session, &io).await.map_err(|_| RunError::Stalled)?.map_err(RunError::Session)
}

/// Runs discovery for `config`.
pub async fn run_discovery(config: DiscoveryConfig) -> Result<Discovered, RunError> {
    let io = io(Browser::Headless)?;
    let mut discovery = Discovery::new(config);
    drive(&mut discovery, &io).await.map_err(|_| RunError::Stalled)?.map_err(RunError::Discovery)
}

/// Fresh random bytes for `attempts` authorizations, from the operating system.
pub fn entropy(attempts: usize) -> Result<Vec<[u8; 48]>, RunError> {
    (0..attempts)
        .map(|_| {
            let mut bytes = [0u8; 48];
            getrandom::fill(&mut bytes)
                .map_err(|error| RunError::Setup(format!("no randomness: {error}")))?;
            Ok(bytes)
        })
        .collect()
}

/// The discovery trail as an aligned table.
pub fn trail_table(trail: &[TrailEntry]) -> String {
    let width = trail.iter().map(|entry| entry.url.len()).max().unwrap_or(3).max(3);
    let mut out = format!("{:<22} {:<width$} RESULT\n", "STAGE", "URL");
    for entry in trail {
        out.push_str(&format!("{:<22} {:<width$} {}\n", entry.stage.as_str(), entry.url, entry.outcome));
    }
    out
}
