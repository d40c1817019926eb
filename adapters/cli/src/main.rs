//! The `mcp-oauth` command: the policy core's decisions from a shell.
//!
//! `eval` speaks the JSON-lines contract for test suites; `check` explains one decision in words
//! with the change that would fix it. Exit status: 0 accepted or valid, 1 rejected or invalid,
//! 2 usage error (unknown flag, missing argument), as documented in `--help`.
#![forbid(unsafe_code)]
// clap prints the doc comments below as `--help` text, where a URL is plain text: an autolink's
// `<...>` would show up in the terminal.
#![allow(rustdoc::bare_urls)]

mod demo;
mod grants;
mod serve;

use std::io::{self, BufRead, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_oauth_cli::connect::{Browser, RunError, entropy, run_discovery, run_session, trail_table};
use mcp_oauth_core::Reason;
use mcp_oauth_core::client::discovery::{CandidateOutcome, DiscoveryConfig, MetadataSource, TrailEntry};
use mcp_oauth_core::client::registration::ClientIdentity;
use mcp_oauth_core::client::session::{GrantKind, Operation, SessionConfig};
use mcp_oauth_core::config::{Diagnostic, Severity, load_yaml};
use mcp_oauth_core::eval::evaluate_line;
use mcp_oauth_core::origin::{
    Origin, OriginSettings, RequestOrigin, Scheme, TrustedProxies, resolve_public_origin,
};
use mcp_oauth_core::redirect::{RedirectDecision, Rejected, TrustedRedirectOrigins, validate_redirect_uri};
use mcp_oauth_core::secret::Secret;
use url::Url;

const EXIT_STATUS_HELP: &str = "\
Examples:
  mcp-oauth demo --once
  mcp-oauth serve --config config.yaml --listen 127.0.0.1:4000
  mcp-oauth grants list --config config.yaml --server notes
  mcp-oauth grants revoke --config config.yaml --identity alice
  mcp-oauth check config config.yaml
  mcp-oauth check redirect-uri https://app.example.com/cb --public-origin https://gw.example.com
  echo '{\"check\":\"mask\",\"value\":\"Bearer abcdefghijklmnop\"}' | mcp-oauth eval
  mcp-oauth discover https://mcp.example.com/mcp
  mcp-oauth connect https://mcp.example.com/mcp --call echo --args '{\"text\":\"hi\"}'

Exit status:
  0  accepted / valid (eval: always, unless stdin is unreadable)
  1  rejected / invalid configuration
  2  usage error";

/// OAuth for MCP gateways, done correctly.
#[derive(Parser)]
#[command(
    name = "mcp-oauth",
    version,
    about = "OAuth for MCP gateways: check configs, redirect URIs and origins, or evaluate the policy as JSON lines.",
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer JSON-lines policy checks from stdin, one JSON object per line (see docs/eval.md).
    Eval,
    /// Explain one decision in words, with the change that would fix it.
    #[command(subcommand)]
    Check(Check),
    /// Connect to an MCP server as an OAuth client: initialize, list tools, optionally call one.
    Connect(ConnectArgs),
    /// Run the gateway: load a LiteLLM-style config.yaml and serve until SIGTERM or Ctrl-C.
    Serve {
        /// The YAML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: String,
    },
    /// See or end the users' grants in the configured grant store (sqlite:// or redis://).
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Start a mock upstream and the gateway on loopback and walk through an M2M call and an
    /// interactive OAuth flow, printing every step.
    Demo {
        /// Exit after the walkthrough (0 when every step passed) instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Show how an MCP server wants to be authorized: every discovery candidate and the result.
    Discover {
        /// The MCP endpoint, e.g. https://mcp.example.com/mcp.
        url: String,
        /// Request every candidate of a stage at once (still chosen by priority).
        #[arg(long)]
        parallel: bool,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// List the live grants (never a token): id, server, identity, generation, expiry, scope.
    List {
        /// The gateway's YAML configuration (its general_settings.mcp_oauth_store is used).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        filter: GrantFilter,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End the matching grants now: their gateway tokens stop working on every replica.
    Revoke {
        /// The gateway's YAML configuration (its general_settings.mcp_oauth_store is used).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        filter: GrantFilter,
    },
}

#[derive(clap::Args)]
struct GrantFilter {
    /// Only this grant (its id, as `grants list` shows it).
    #[arg(long)]
    grant: Option<String>,
    /// Only grants for this server.
    #[arg(long)]
    server: Option<String>,
    /// Only grants of this identity (the gateway key's name).
    #[arg(long)]
    identity: Option<String>,
}

impl GrantFilter {
    fn into_filter(self) -> grants::Filter {
        grants::Filter { grant: self.grant, server: self.server, identity: self.identity }
    }
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// The MCP endpoint, e.g. https://mcp.example.com/mcp.
    url: String,
    /// A pre-registered client ID (default: $MCP_OAUTH_CLIENT_ID; else dynamic registration).
    #[arg(long)]
    client_id: Option<String>,
    /// The client secret (default: $MCP_OAUTH_CLIENT_SECRET).
    #[arg(long)]
    client_secret: Option<String>,
    /// The authorization server's issuer: pins where a configured client secret may go (a token
    /// endpoint on this origin) and is checked against the discovered metadata.
    #[arg(long)]
    issuer: Option<String>,
    /// The token endpoint: the client secret goes here and nowhere else.
    #[arg(long)]
    token_url: Option<String>,
    /// A scope to request instead of the discovered ones; repeat for several.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// The grant: authorization_code (interactive) or client_credentials (machine to machine).
    #[arg(long, default_value = "authorization_code")]
    grant: String,
    /// The loopback port the browser returns to.
    #[arg(long, default_value_t = 33418)]
    redirect_port: u16,
    /// Follow the authorization endpoint's redirect without a browser (servers that approve at once).
    #[arg(long)]
    headless: bool,
    /// Call this tool after listing tools.
    #[arg(long)]
    call: Option<String>,
    /// The tool's arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// The MCP protocol version to speak (2026-07-28 uses the stateless wire).
    #[arg(long, default_value = "2025-11-25")]
    protocol_version: String,
    /// This client's metadata document URL, used as client_id where the server supports it.
    #[arg(long)]
    client_metadata_url: Option<String>,
    /// Accept authorization servers that omit code_challenge_methods_supported (assume S256).
    #[arg(long)]
    assume_s256: bool,
    /// A header for every MCP request, never for the OAuth endpoints, as `NAME:VALUE` (e.g.
    /// `x-mcp-gateway-key:sk-...` to reach a gateway's server); repeat for several.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
}

#[derive(Subcommand)]
enum Check {
    /// Would the gateway's authorize endpoint send a code to this redirect_uri?
    RedirectUri {
        /// The redirect_uri exactly as a client would send it.
        uri: String,
        /// The gateway's public origin, e.g. https://llm.example.com.
        #[arg(long)]
        public_origin: Option<String>,
        /// MCP_TRUSTED_REDIRECT_ORIGINS (comma-separated host, host:port or *.suffix); default: $MCP_TRUSTED_REDIRECT_ORIGINS.
        #[arg(long)]
        trusted_redirect_origins: Option<String>,
    },
    /// Which public origin would the gateway resolve for this request?
    Origin {
        /// The TCP peer's IP address.
        #[arg(long)]
        peer: Option<IpAddr>,
        /// The request's Host header.
        #[arg(long)]
        host: Option<String>,
        /// The scheme the gateway's listener speaks.
        #[arg(long, default_value = "http")]
        scheme: String,
        /// A request header as `Name: value`; repeat for several.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// PROXY_BASE_URL; default: $PROXY_BASE_URL.
        #[arg(long)]
        proxy_base_url: Option<String>,
        /// general_settings.use_x_forwarded_for.
        #[arg(long)]
        use_x_forwarded_for: bool,
        /// A mcp_trusted_proxy_ranges entry (CIDR); repeat for several.
        #[arg(long = "trusted-proxy-range")]
        trusted_proxy_ranges: Vec<String>,
    },
    /// Load a LiteLLM-style config.yaml and list every error and warning with its place.
    Config {
        /// The YAML file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    match cli.command {
        Command::Eval => eval(&env),
        Command::Check(Check::RedirectUri { uri, public_origin, trusted_redirect_origins }) => {
            check_redirect_uri(
                &uri,
                public_origin.or_else(|| env("PROXY_BASE_URL")),
                trusted_redirect_origins.or_else(|| env("MCP_TRUSTED_REDIRECT_ORIGINS")),
            )
        }
        Command::Check(Check::Origin {
            peer,
            host,
            scheme,
            headers,
            proxy_base_url,
            use_x_forwarded_for,
            trusted_proxy_ranges,
        }) => check_origin(
            peer,
            host.as_deref(),
            &scheme,
            &headers,
            proxy_base_url.or_else(|| env("PROXY_BASE_URL")),
            use_x_forwarded_for,
            &trusted_proxy_ranges,
        ),
        Command::Check(Check::Config { file }) => check_config(&file, &env),
        Command::Connect(args) => connect(args, &env),
        Command::Discover { url, parallel } => discover(&url, parallel),
        Command::Serve { config, listen } => serve::run(&config, &listen),
        Command::Demo { once } => demo::run(once),
        Command::Grants(GrantsCommand::List { config, filter, json }) => {
            grants::list(&config, &filter.into_filter(), json)
        }
        Command::Grants(GrantsCommand::Revoke { config, filter }) => {
            grants::revoke(&config, &filter.into_filter())
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("mcp-oauth: cannot start the runtime: {error}");
            None
        }
    }
}

fn connect(args: ConnectArgs, env: &dyn Fn(&str) -> Option<String>) -> ExitCode {
    let Ok(url) = Url::parse(&args.url) else {
        return invalid(
            format!("`{}` is not an absolute URL", args.url),
            "pass the MCP endpoint, e.g. https://mcp.example.com/mcp",
        );
    };
    let grant = match args.grant.as_str() {
        "authorization_code" => GrantKind::AuthorizationCode,
        "client_credentials" => GrantKind::ClientCredentials,
        other => {
            return invalid(
                format!("unknown grant `{other}`"),
                "use --grant authorization_code or --grant client_credentials",
            );
        }
    };
    let arguments: serde_json::Value = match serde_json::from_str(&args.args) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => return invalid("--args is not a JSON object", "pass --args '{\"text\": \"hi\"}'"),
    };
    let metadata_document_url = match args.client_metadata_url.as_deref().map(Url::parse).transpose() {
        Ok(url) => url,
        Err(_) => return invalid("--client-metadata-url is not a URL", "pass an https URL"),
    };
    let entropy = match entropy(3) {
        Ok(bytes) => bytes,
        Err(error) => return invalid(error, "run on a system with a random source"),
    };
    let redirect_uri = match Url::parse(&format!("http://127.0.0.1:{}/callback", args.redirect_port)) {
        Ok(url) => url,
        Err(error) => return invalid(error, "pass a valid --redirect-port"),
    };
    let mut config = SessionConfig::new(url, redirect_uri, entropy);
    config.grant = grant;
    config.protocol_version = args.protocol_version;
    config.assume_s256 = args.assume_s256;
    config.identity = ClientIdentity {
        client_id: args.client_id.or_else(|| env("MCP_OAUTH_CLIENT_ID")),
        client_secret: args.client_secret.or_else(|| env("MCP_OAUTH_CLIENT_SECRET")).map(Secret::new),
        metadata_document_url,
        client_name: "mcp-oauth".to_owned(),
    };
    for (value, slot, flag) in [
        (&args.issuer, &mut config.configured.issuer, "--issuer"),
        (&args.token_url, &mut config.configured.token_endpoint, "--token-url"),
    ] {
        if let Some(value) = value {
            match Url::parse(value) {
                Ok(url) => *slot = Some(url),
                Err(error) => return invalid(error, &format!("pass an absolute URL to {flag}")),
            }
        }
    }
    if !args.scopes.is_empty() {
        config.scopes = Some(args.scopes);
    }
    for header in &args.headers {
        match mcp_header(header) {
            Ok(pair) => config.mcp_headers.push(pair),
            Err(reason) => {
                return invalid(
                    reason,
                    "write --header NAME:VALUE, e.g. --header 'x-mcp-gateway-key:sk-...'",
                );
            }
        }
    }
    config.operations = vec![Operation::ListTools];
    if let Some(name) = args.call {
        config.operations.push(Operation::CallTool { name, arguments });
    }
    let browser = if args.headless { Browser::Headless } else { Browser::Loopback(args.redirect_port) };
    let Some(runtime) = runtime() else { return ExitCode::from(1) };
    match runtime.block_on(run_session(config, browser)) {
        Ok(outcome) => {
            if let Some(discovered) = &outcome.discovery {
                println!(
                    "authorization server: {} ({} authorization(s), scopes: {})",
                    discovered.issuer,
                    outcome.authorizations,
                    outcome.scopes.join(" ")
                );
            }
            println!("protocol version: {}", outcome.protocol_version.as_deref().unwrap_or("unknown"));
            for result in &outcome.results {
                println!("{}", serde_json::to_string_pretty(result).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("failed: {error}");
            ExitCode::from(1)
        }
    }
}

fn discover(url: &str, parallel: bool) -> ExitCode {
    let Ok(url) = Url::parse(url) else {
        return invalid(
            format!("`{url}` is not an absolute URL"),
            "pass the MCP endpoint, e.g. https://mcp.example.com/mcp",
        );
    };
    let mut config = DiscoveryConfig::new(url);
    config.parallel = parallel;
    let Some(runtime) = runtime() else { return ExitCode::from(1) };
    match runtime.block_on(run_discovery(config)) {
        Ok(found)
            if open_probe(&found.trail).is_some() && !matches!(found.source, MetadataSource::Document(_)) =>
        {
            // The server answered without a token and published no metadata: what discovery
            // would print now are guessed endpoints, not the server's.
            print!("{}", trail_table(&found.trail));
            println!();
            println!("{}", no_authorization(open_probe(&found.trail).unwrap_or(200)));
            ExitCode::SUCCESS
        }
        Ok(found) => {
            print!("{}", trail_table(&found.trail));
            println!();
            if let Some(status) = open_probe(&found.trail) {
                println!(
                    "note:     the server answered the probe without a token (HTTP {status}); it publishes this metadata for its protected operations"
                );
            }
            println!("issuer:   {}", found.issuer);
            println!("source:   {:?}", found.source);
            println!("resource: {}", found.resource);
            println!(
                "scopes:   {}",
                found.scopes.as_ref().map_or_else(|| "(none)".to_owned(), |s| s.join(" "))
            );
            if !found.authorization_server.supports_s256() {
                println!(
                    "warning:  S256 is not advertised; interactive flows are refused unless --assume-s256"
                );
            }
            println!("{}", serde_json::to_string_pretty(&found.authorization_server).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(RunError::Discovery(failure)) => {
            print!("{}", trail_table(&failure.trail));
            println!();
            if let Some(status) = open_probe(&failure.trail) {
                println!("{}", no_authorization(status));
                return ExitCode::SUCCESS;
            }
            println!("failed: {} [{}]", failure, failure.reason());
            ExitCode::from(1)
        }
        Err(error) => {
            println!("failed: {error}");
            ExitCode::from(1)
        }
    }
}

/// The probe's status when the server answered it without a token (a 2xx).
fn open_probe(trail: &[TrailEntry]) -> Option<u16> {
    trail.iter().find_map(|entry| match entry.outcome {
        CandidateOutcome::Probed { status, .. } if (200..300).contains(&status) => Some(status),
        _ => None,
    })
}

fn no_authorization(status: u16) -> String {
    format!(
        "no authorization needed: the server answered an unauthenticated initialize (HTTP {status}) and publishes no OAuth metadata; connect without a token"
    )
}

fn eval(env: &dyn Fn(&str) -> Option<String>) -> ExitCode {
    let stdin = io::stdin().lock();
    let mut out = BufWriter::new(io::stdout().lock());
    for line in stdin.split(b'\n') {
        let Ok(line) = line else {
            eprintln!("mcp-oauth eval: cannot read stdin");
            return ExitCode::from(1);
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        let answer = evaluate_line(line, env);
        if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    ExitCode::SUCCESS
}

/// Headers the MCP session sets itself: `--header` may not replace them.
const SESSION_HEADERS: [&str; 6] =
    ["authorization", "accept", "content-type", "content-length", "mcp-session-id", "mcp-protocol-version"];

/// Parses `--header NAME:VALUE`; the message never repeats the value (it is usually a key).
fn mcp_header(text: &str) -> Result<(HeaderName, Secret), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err("a --header has no `:` between its name and value".to_owned());
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
    if SESSION_HEADERS.contains(&name.as_str()) || name == http::header::HOST {
        return Err(format!("`{name}` is set by the session itself and cannot be given with --header"));
    }
    let value = value.trim();
    if value.is_empty() || HeaderValue::from_str(value).is_err() {
        return Err(format!("the value of --header `{name}` is empty or not a valid header value"));
    }
    Ok((name, Secret::new(value)))
}

fn invalid(message: impl std::fmt::Display, fix: &str) -> ExitCode {
    println!("invalid: {message}");
    println!("fix: {fix}");
    ExitCode::from(1)
}

fn check_redirect_uri(uri: &str, public_origin: Option<String>, trusted: Option<String>) -> ExitCode {
    let origin =
        match public_origin.as_deref().filter(|value| !value.is_empty()).map(Origin::parse).transpose() {
            Ok(origin) => origin,
            Err(error) => {
                return invalid(
                    error,
                    "pass --public-origin https://host[:port] (scheme, host and port only)",
                );
            }
        };
    let trusted = match TrustedRedirectOrigins::parse(trusted.as_deref().unwrap_or_default()) {
        Ok(trusted) => trusted,
        Err(error) => {
            return invalid(error, "list entries as host, host:port or *.example.com, comma-separated");
        }
    };
    let decision = validate_redirect_uri(uri, origin.as_ref(), &trusted);
    match &decision {
        RedirectDecision::Allowed { uri, because } => {
            println!("allowed: the gateway would send the authorization code to {uri}");
            println!(
                "reason: {} ({})",
                because.reason(),
                match because.reason() {
                    "loopback" => "a loopback address, where native apps and CLIs listen",
                    "same_origin" => "the gateway's own public origin",
                    _ => "an https origin listed in MCP_TRUSTED_REDIRECT_ORIGINS",
                }
            );
            ExitCode::SUCCESS
        }
        RedirectDecision::Rejected(why) => {
            println!("rejected: the gateway answers 400 invalid_request and does not redirect");
            println!("reason: {} ({why})", why.reason());
            let fix = match why {
                Rejected::UntrustedOrigin => match &origin {
                    Some(origin) => format!("use a loopback redirect, a redirect on {origin}, or add the client's host to MCP_TRUSTED_REDIRECT_ORIGINS"),
                    None => "set PROXY_BASE_URL (or --public-origin) to the gateway's origin, or add the client's host to MCP_TRUSTED_REDIRECT_ORIGINS".to_owned(),
                },
                Rejected::NotHttps => "register the client's redirect with https://".to_owned(),
                _ => "send the redirect_uri in canonical form: http(s)://lower-case-host[:port]/path, no userinfo, no fragment".to_owned(),
            };
            println!("fix: {fix}");
            ExitCode::from(1)
        }
    }
}

fn check_origin(
    peer: Option<IpAddr>,
    host: Option<&str>,
    scheme: &str,
    raw_headers: &[String],
    proxy_base_url: Option<String>,
    use_x_forwarded_for: bool,
    ranges: &[String],
) -> ExitCode {
    let proxy_base_url = match proxy_base_url
        .as_deref()
        .filter(|value| !value.is_empty())
        .map(Origin::parse)
        .transpose()
    {
        Ok(origin) => origin,
        Err(error) => {
            return invalid(
                format!("PROXY_BASE_URL: {error}"),
                "set PROXY_BASE_URL to a bare origin such as https://llm.example.com; the gateway refuses to start otherwise",
            );
        }
    };
    let trusted_proxies = match TrustedProxies::parse(ranges) {
        Ok(ranges) => ranges,
        Err(error) => return invalid(error, "write ranges in CIDR notation, e.g. 10.0.0.0/8"),
    };
    let Some(scheme) = Scheme::parse(scheme) else {
        return invalid("--scheme must be http or https", "pass --scheme http or --scheme https");
    };
    let mut headers = HeaderMap::new();
    for raw in raw_headers {
        let parsed = raw.split_once(':').and_then(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => {
                headers.append(name, value);
            }
            None => {
                return invalid(
                    format!("header `{raw}` is not `Name: value`"),
                    "pass headers as -H 'X-Forwarded-Host: gw.example.com'",
                );
            }
        }
    }
    let settings = OriginSettings {
        proxy_base_url,
        use_x_forwarded_for,
        trusted_proxies,
        allowed_hosts: Vec::new(),
        listen: None,
    };
    let request = RequestOrigin { scheme, host, peer, headers: &headers };
    match resolve_public_origin(&settings, &request) {
        Ok(resolved) => {
            println!("origin: {}", resolved.origin);
            println!("source: {}", resolved.source.as_str());
            if let Some(ignored) = resolved.forwarded_ignored {
                let why = match ignored.reason() {
                    "forwarded_disabled" => "use_x_forwarded_for is off",
                    "untrusted_peer" => "the peer is not inside mcp_trusted_proxy_ranges",
                    _ => "a header was repeated, held a list or an invalid value",
                };
                println!("note: X-Forwarded-* headers were ignored: {why}");
            }
            if resolved.source.as_str() == "request" {
                println!("warning: the origin came from the Host header, which the client controls");
                println!(
                    "fix: set PROXY_BASE_URL to the origin clients use, for example https://llm.example.com"
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            invalid(error, "set PROXY_BASE_URL to the origin clients use, e.g. https://llm.example.com")
        }
    }
}

fn check_config(file: &PathBuf, env: &dyn Fn(&str) -> Option<String>) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                return invalid(format!("{} is not UTF-8 text", file.display()), "save the file as UTF-8");
            }
        },
        Err(error) => {
            return invalid(
                format!("cannot read {}: {error}", file.display()),
                "pass the path of a LiteLLM-style config.yaml",
            );
        }
    };
    let (diagnostics, servers) = match load_yaml(&text, env) {
        Ok(loaded) => {
            let origin = loaded.config.settings.origin.proxy_base_url.clone();
            (loaded.warnings, Some((loaded.config.servers, origin)))
        }
        Err(failed) => {
            let mut all = failed.errors;
            all.extend(failed.warnings);
            (all, None)
        }
    };
    for diagnostic in &diagnostics {
        let at = match diagnostic.location {
            Some(at) => format!("{}:{}:{}", file.display(), at.line, at.column),
            None => file.display().to_string(),
        };
        // The place is printed in the compiler-style prefix, so not again in the message.
        let unplaced = Diagnostic { location: None, ..diagnostic.clone() };
        println!("{at}: {unplaced}");
    }
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diagnostics.len() - errors;
    match servers {
        Some((servers, origin)) => {
            for (name, server) in &servers {
                println!(
                    "server {name}: {} auth_type={} flow={}",
                    mcp_oauth_core::mask::mask_url(&server.url),
                    server.policy.auth_type.as_str(),
                    server.policy.flow.as_str()
                );
                if let Some(callback) = mcp_oauth_core::gateway::upstream_callback(server, origin.as_ref()) {
                    println!("  register at the upstream authorization server: redirect URI {callback}");
                }
            }
            println!("valid: {} server(s), {warnings} warning(s)", servers.len());
            ExitCode::SUCCESS
        }
        None => {
            println!("invalid: {errors} error(s), {warnings} warning(s)");
            ExitCode::from(1)
        }
    }
}
