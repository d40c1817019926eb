//! The `mcp-oauth` command: the policy core's decisions from a shell.
//!
//! `eval` speaks the JSON-lines contract for test suites; `check` explains one decision in words
//! with the change that would fix it. Exit status: 0 accepted or valid, 1 rejected or invalid,
//! 2 usage error (unknown flag, missing argument), as documented in `--help`.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_oauth_core::Reason;
use mcp_oauth_core::config::{Diagnostic, Severity, load_yaml};
use mcp_oauth_core::eval::evaluate_line;
use mcp_oauth_core::origin::{
    Origin, OriginSettings, RequestOrigin, Scheme, TrustedProxies, resolve_public_origin,
};
use mcp_oauth_core::redirect::{RedirectDecision, Rejected, TrustedRedirectOrigins, validate_redirect_uri};

const EXIT_STATUS_HELP: &str = "\
Examples:
  mcp-oauth check config config.yaml
  mcp-oauth check redirect-uri https://app.example.com/cb --public-origin https://gw.example.com
  echo '{\"check\":\"mask\",\"value\":\"Bearer abcdefghijklmnop\"}' | mcp-oauth eval

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
    }
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
    let settings =
        OriginSettings { proxy_base_url, use_x_forwarded_for, trusted_proxies, allowed_hosts: Vec::new() };
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
        Ok(loaded) => (loaded.warnings, Some(loaded.config.servers)),
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
        Some(servers) => {
            for (name, server) in &servers {
                println!(
                    "server {name}: {} auth_type={} flow={}",
                    server.url,
                    server.policy.auth_type.as_str(),
                    server.policy.flow.as_str()
                );
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
