//! The parity suite: one table of scenarios (mock upstream behaviours × machines), each run
//! through the tokio adapter and through this one, asserting identical outcomes, identical request
//! sequences (method and URL of every request, in the order the machine asked for them) and
//! identical counters on the mock.
//!
//! The server is the tokio adapter's `MockUpstream` on a tokio runtime of its own (background
//! threads), a fresh one per run; ports and the mock's random values are normalized before
//! comparing. Everything stays on 127.0.0.1 and every run is bounded by a timeout.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::{Upstream, local_limits};
use http::Response;
use mcp_oauth_core::client::discovery::{Discovery, DiscoveryConfig};
use mcp_oauth_core::client::session::{GrantKind, Operation, Session, SessionConfig};
use mcp_oauth_core::client::token::{
    ACCESS_TOKEN_TYPE, Client, Grant, TokenEndpointAuth, parse_token_response, token_request,
};
use mcp_oauth_core::machine::{Limits, Machine, OneShot, Outgoing, Performer, TransportError};
use mcp_oauth_core::secret::Secret;
use mcp_oauth_tokio::mock::{Counters, Switch};
use serde_json::json;
use url::Url;

/// What a request comes back as.
type Answer = Result<Response<Vec<u8>>, TransportError>;

/// Each run is bounded by this.
const RUN_BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adapter {
    Tokio,
    AsyncStd,
}

/// Records the method and URL of every request before handing it to the adapter's I/O.
struct Recording<P> {
    inner: P,
    log: Arc<Mutex<Vec<String>>>,
}

impl<P> Recording<P> {
    fn record(&self, outgoing: &Outgoing) {
        let who = match outgoing.performer() {
            Performer::Client => "",
            Performer::UserAgent => " (user agent)",
        };
        let line = format!("{} {}{who}", outgoing.request().method(), outgoing.request().uri());
        self.log.lock().unwrap_or_else(PoisonError::into_inner).push(line);
    }
}

impl mcp_oauth_tokio::Perform for Recording<mcp_oauth_tokio::Io> {
    fn perform(
        &self,
        outgoing: Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send {
        self.record(&outgoing);
        mcp_oauth_tokio::Perform::perform(&self.inner, outgoing)
    }
}

impl mcp_oauth_async_std::Perform for Recording<mcp_oauth_async_std::Io> {
    fn perform(
        &self,
        outgoing: Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send {
        self.record(&outgoing);
        mcp_oauth_async_std::Perform::perform(&self.inner, outgoing)
    }
}

/// Drives `machine` to its outcome with `adapter`, recording into `log`.
fn drive_on<M: Machine>(
    adapter: Adapter,
    upstream: &Upstream,
    machine: &mut M,
    log: &Arc<Mutex<Vec<String>>>,
) -> Result<M::Outcome, String> {
    match adapter {
        Adapter::Tokio => {
            let runtime = upstream.runtime();
            let _entered = runtime.enter();
            let client = mcp_oauth_tokio::HttpClient::new().expect("TLS setup");
            let io = mcp_oauth_tokio::Io::new(client, Box::new(mcp_oauth_tokio::Headless));
            let io = Recording { inner: io, log: Arc::clone(log) };
            let run = tokio::time::timeout(RUN_BOUND, mcp_oauth_tokio::drive(machine, &io));
            match runtime.block_on(run).expect("the tokio run took too long") {
                Ok(outcome) => Ok(outcome),
                Err(error) => Err(format!("{error:?}")),
            }
        }
        Adapter::AsyncStd => {
            let client = mcp_oauth_async_std::HttpClient::new().expect("client");
            let io = mcp_oauth_async_std::Io::new(client, Box::new(mcp_oauth_async_std::Headless));
            let io = Recording { inner: io, log: Arc::clone(log) };
            let run = async_std::future::timeout(RUN_BOUND, mcp_oauth_async_std::drive(machine, &io));
            match async_std::task::block_on(run).expect("the async-std run took too long") {
                Ok(outcome) => Ok(outcome),
                Err(error) => Err(format!("{error:?}")),
            }
        }
    }
}

/// Which machine a scenario runs.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// Discovery, with this timeout on every request (milliseconds) if given, probing the
    /// candidates in parallel if asked (concurrent sends).
    Discovery { timeout_ms: Option<u64>, parallel: bool },
    /// A session with client credentials: `tools/list`, then `add`.
    ClientCredentialsSession,
    /// The interactive session (registration, authorization code with PKCE through the headless
    /// user agent), then `tools/list` and `echo`.
    InteractiveSession,
    /// One client-credentials token request (`OneShot`).
    ClientCredentialsToken,
    /// One RFC 8693 token exchange (`OneShot`).
    TokenExchange,
}

/// What one run produced, normalized.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    outcome: String,
    requests: Vec<String>,
    counters: Counters,
}

fn session_config(upstream: &Upstream, grant: GrantKind) -> SessionConfig {
    let server_url = Url::parse(&upstream.mcp_url()).expect("url");
    let redirect_uri = Url::parse("http://127.0.0.1:9/callback").expect("url");
    let mut config = SessionConfig::new(server_url, redirect_uri, vec![[1u8; 48], [2u8; 48], [3u8; 48]]);
    config.grant = grant;
    if grant == GrantKind::ClientCredentials {
        config.identity.client_id = Some("mock-client".to_owned());
        config.identity.client_secret = Some(Secret::new("mock-secret"));
    }
    config.operations = vec![
        Operation::ListTools,
        match grant {
            GrantKind::ClientCredentials => {
                Operation::CallTool { name: "add".into(), arguments: json!({"a": 20, "b": 22}) }
            }
            GrantKind::AuthorizationCode => {
                Operation::CallTool { name: "echo".into(), arguments: json!({"text": "parity"}) }
            }
        },
    ];
    config
}

fn token_machine(upstream: &Upstream, grant: &Grant<'_>) -> OneShot<impl FnOnce(Answer) -> String + use<>> {
    let endpoint = Url::parse(&format!("{}/token", upstream.origin())).expect("url");
    let secret = Secret::new("mock-secret");
    let client = Client {
        client_id: "mock-client",
        client_secret: Some(&secret),
        auth: TokenEndpointAuth::ClientSecretBasic,
    };
    let request = token_request(&endpoint, &client, grant, &["mcp".to_owned()], None).expect("request");
    OneShot::new(request, local_limits(), "token", |result: Result<Response<Vec<u8>>, TransportError>| {
        match result {
            Ok(response) => debug(&parse_token_response(&response)),
            Err(error) => format!("transport: {error:?}"),
        }
    })
    .expect("the fetch policy allows the loopback mock")
}

fn debug(value: &impl Debug) -> String {
    format!("{value:?}")
}

fn run(adapter: Adapter, switches: &[Switch], job: Job) -> Run {
    let upstream = Upstream::start(switches);
    let log = Arc::new(Mutex::new(Vec::new()));
    let outcome = match job {
        Job::Discovery { timeout_ms, parallel } => {
            let mut config = DiscoveryConfig::new(Url::parse(&upstream.mcp_url()).expect("url"));
            config.parallel = parallel;
            if let Some(ms) = timeout_ms {
                config.limits = Limits { timeout: Duration::from_millis(ms), ..config.limits };
            }
            drive_on(adapter, &upstream, &mut Discovery::new(config), &log).map(|mut outcome| {
                if parallel {
                    // The trail lists answers as they arrive, which under parallel probing is a
                    // race on any runtime: compare it as a set.
                    let trail = match &mut outcome {
                        Ok(discovered) => &mut discovered.trail,
                        Err(failure) => &mut failure.trail,
                    };
                    trail.sort_by(|a, b| a.url.cmp(&b.url));
                }
                debug(&outcome)
            })
        }
        Job::ClientCredentialsSession => {
            let mut session = Session::new(session_config(&upstream, GrantKind::ClientCredentials));
            drive_on(adapter, &upstream, &mut session, &log).map(|outcome| debug(&outcome))
        }
        Job::InteractiveSession => {
            let mut session = Session::new(session_config(&upstream, GrantKind::AuthorizationCode));
            drive_on(adapter, &upstream, &mut session, &log).map(|outcome| debug(&outcome))
        }
        Job::ClientCredentialsToken => {
            drive_on(adapter, &upstream, &mut token_machine(&upstream, &Grant::ClientCredentials), &log)
        }
        Job::TokenExchange => {
            let subject = Secret::new("caller-token");
            let grant = Grant::TokenExchange {
                subject_token: &subject,
                subject_token_type: ACCESS_TOKEN_TYPE,
                audience: Some("mcp"),
            };
            drive_on(adapter, &upstream, &mut token_machine(&upstream, &grant), &log)
        }
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => format!("driver error: {error}"),
    };
    let port = upstream.port();
    let mut counters = upstream.handle().counters();
    // Connection reuse is a property of each HTTP client, not of the protocol: the tokio adapter
    // pools connections, the async-std adapter opens one per request on purpose.
    counters.connections = 0;
    let requests =
        log.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|line| normalize(line, port)).collect();
    Run { outcome: normalize(&outcome, port), requests, counters }
}

/// Replaces the mock's port and its random values (`mock_at_…`, `mock_client_…`) with
/// placeholders.
fn normalize(text: &str, port: u16) -> String {
    let text = text
        .replace(&format!(":{port}"), ":PORT")
        .replace(&format!("%3A{port}"), "%3APORT")
        .replace(&format!("port: Some({port})"), "port: Some(PORT)");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("mock_") {
        out.push_str(&rest[..at]);
        let candidate = &rest[at..];
        let prefix_len = candidate["mock_".len()..]
            .find('_')
            .filter(|&len| {
                candidate["mock_".len()..]["mock_".len().min(len)..len]
                    .chars()
                    .all(|c| c.is_ascii_lowercase())
            })
            .map(|len| "mock_".len() + len + 1);
        match prefix_len {
            Some(prefix)
                if candidate.len() >= prefix + 32
                    && candidate.as_bytes()[prefix..prefix + 32].iter().all(u8::is_ascii_hexdigit) =>
            {
                out.push_str(&candidate[..prefix]);
                out.push_str("RANDOM");
                rest = &candidate[prefix + 32..];
            }
            _ => {
                out.push_str("mock_");
                rest = &candidate["mock_".len()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One scenario: the mock's behaviour, the machine, and what both runs must show.
struct Scenario {
    name: &'static str,
    switches: &'static [Switch],
    job: Job,
    expect: fn(&Run),
}

fn contains(run: &Run, needle: &str) {
    assert!(run.outcome.contains(needle), "expected `{needle}` in {}", run.outcome);
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "discovery ok",
        switches: &[],
        job: Job::Discovery { timeout_ms: None, parallel: false },
        expect: |run| {
            contains(run, "Ok(Discovered");
            contains(run, "probe_status: 401");
            assert_eq!(run.requests.len(), 3, "{:?}", run.requests);
        },
    },
    Scenario {
        name: "discovery, metadata missing (legacy layout)",
        switches: &[Switch::MetadataMissing(true)],
        job: Job::Discovery { timeout_ms: None, parallel: false },
        expect: |run| {
            contains(run, "LegacyDefaults");
            assert!(run.requests.len() >= 3, "{:?}", run.requests);
        },
    },
    Scenario {
        name: "discovery, metadata missing, candidates probed in parallel",
        switches: &[Switch::MetadataMissing(true)],
        job: Job::Discovery { timeout_ms: None, parallel: true },
        expect: |run| contains(run, "LegacyDefaults"),
    },
    Scenario {
        name: "client credentials session",
        switches: &[],
        job: Job::ClientCredentialsSession,
        expect: |run| {
            contains(run, "Ok(SessionOutcome");
            contains(run, "\"sum\": Number(42)");
            assert_eq!(run.counters.token_requests_for("client_credentials"), 1);
        },
    },
    Scenario {
        name: "interactive session (headless user agent)",
        switches: &[],
        job: Job::InteractiveSession,
        expect: |run| {
            contains(run, "Ok(SessionOutcome");
            contains(run, "parity");
            assert_eq!(run.counters.authorize_calls, 1);
            assert_eq!(run.counters.registrations, 1);
            assert!(run.requests.iter().any(|line| line.ends_with("(user agent)")), "{:?}", run.requests);
        },
    },
    Scenario {
        name: "client credentials session over SSE",
        switches: &[Switch::Sse(true)],
        job: Job::ClientCredentialsSession,
        expect: |run| contains(run, "\"sum\": Number(42)"),
    },
    Scenario {
        name: "interactive session over SSE",
        switches: &[Switch::Sse(true)],
        job: Job::InteractiveSession,
        expect: |run| contains(run, "parity"),
    },
    Scenario {
        name: "token endpoint 500 in a session",
        switches: &[Switch::TokenStatus(Some(500))],
        job: Job::ClientCredentialsSession,
        expect: |run| {
            contains(run, "Err(Token(");
            contains(run, "500");
        },
    },
    Scenario {
        name: "token endpoint 500, one token request",
        switches: &[Switch::TokenStatus(Some(500))],
        job: Job::ClientCredentialsToken,
        expect: |run| contains(run, "status: 500"),
    },
    Scenario {
        name: "client credentials token request",
        switches: &[],
        job: Job::ClientCredentialsToken,
        expect: |run| contains(run, "Ok("),
    },
    Scenario {
        name: "token exchange",
        switches: &[],
        job: Job::TokenExchange,
        expect: |run| {
            contains(run, "Ok(TokenResponse");
            assert_eq!(run.counters.token_requests_for("token_exchange"), 1);
        },
    },
    Scenario {
        name: "MCP server 502",
        switches: &[Switch::McpStatus(Some(502))],
        job: Job::ClientCredentialsSession,
        expect: |run| {
            contains(run, "Err(");
            contains(run, "502");
        },
    },
    Scenario {
        name: "slow answers beyond the timeout",
        switches: &[Switch::SlowMs(1_500)],
        job: Job::Discovery { timeout_ms: Some(200), parallel: false },
        expect: |run| {
            contains(run, "Err(");
            contains(run, "Timeout");
        },
    },
];

#[test]
fn both_adapters_behave_identically() {
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let tokio = run(Adapter::Tokio, scenario.switches, scenario.job);
        let async_std = run(Adapter::AsyncStd, scenario.switches, scenario.job);
        (scenario.expect)(&tokio);
        if tokio == async_std {
            eprintln!("parity ok: {} ({} requests)", scenario.name, tokio.requests.len());
        } else {
            failures.push(format!("{}:\n  tokio:     {tokio:?}\n  async-std: {async_std:?}", scenario.name));
        }
    }
    assert!(failures.is_empty(), "the adapters differ:\n{}", failures.join("\n"));
}

#[test]
fn normalization_hides_ports_and_random_values() {
    assert_eq!(
        normalize(
            "http://127.0.0.1:4321/a?x=http%3A%2F%2F127.0.0.1%3A4321 mock_at_0123456789abcdef0123456789abcdef!",
            4321
        ),
        "http://127.0.0.1:PORT/a?x=http%3A%2F%2F127.0.0.1%3APORT mock_at_RANDOM!"
    );
    assert_eq!(normalize("mock_client mock-client", 1), "mock_client mock-client");
}
