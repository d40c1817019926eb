//! `mcp-oauth serve`: the gateway in production mode.
//!
//! Loads the configuration with core's loader (every warning printed, any error fatal), starts
//! `tracing` logs on stderr (method, route, server, status, latency; never a header value or a
//! body), serves until SIGTERM or Ctrl-C, then lets open requests finish.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_oauth_core::config::{Diagnostic, Severity, load_yaml};
use mcp_oauth_runtime::grant_store::{DEFAULT_MAX_RECORDS, open_store};
use mcp_oauth_runtime::log::BufferedLog;
use mcp_oauth_tokio::TokioRuntime;
use mcp_oauth_tokio::server::{ServerOptions, gateway_state, serve};
use mcp_oauth_tokio::startup::discover_endpoints;
use tokio::net::TcpListener;
use tracing_subscriber::filter::LevelFilter;

/// Starts `tracing` output on stderr at the level named by `MCP_OAUTH_LOG` (`info` by default),
/// batched: lines go out every 100 ms (one system call per batch, not one per request) and when
/// the returned log is dropped.
pub(crate) fn init_logs() -> BufferedLog {
    let level = std::env::var("MCP_OAUTH_LOG")
        .ok()
        .and_then(|value| value.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let log = BufferedLog::stderr(Duration::from_millis(100));
    let writer = log.writer();
    let _already_set = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(move || writer.clone())
        .with_target(false)
        .try_init();
    log
}

/// Prints diagnostics compiler-style, prefixed with the file.
pub(crate) fn print_diagnostics(file: &str, diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        let at = match diagnostic.location {
            Some(at) => format!("{file}:{}:{}", at.line, at.column),
            None => file.to_owned(),
        };
        let unplaced = Diagnostic { location: None, ..diagnostic.clone() };
        eprintln!("{at}: {unplaced}");
    }
}

/// Resolves when SIGTERM (Unix) or Ctrl-C arrives.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Runs `mcp-oauth serve --config FILE --listen ADDR`.
pub(crate) fn run(config: &Path, listen: &str) -> ExitCode {
    let started = Instant::now();
    let file = config.display().to_string();
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("mcp-oauth serve: cannot read {file}: {error}");
            return ExitCode::from(1);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let loaded = match load_yaml(&text, &env) {
        Ok(loaded) => loaded,
        Err(failed) => {
            print_diagnostics(&file, &failed.errors);
            print_diagnostics(&file, &failed.warnings);
            eprintln!("mcp-oauth serve: {} error(s) in {file}; not starting", failed.errors.len());
            return ExitCode::from(1);
        }
    };
    print_diagnostics(&file, &loaded.warnings);
    debug_assert!(loaded.warnings.iter().all(|warning| warning.severity != Severity::Error));
    let address: SocketAddr = match listen.parse() {
        Ok(address) => address,
        Err(_) => {
            eprintln!("mcp-oauth serve: --listen `{listen}` is not an address such as 127.0.0.1:4000");
            return ExitCode::from(2);
        }
    };
    let _log = init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mcp-oauth serve: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let servers = loaded.config.servers.len();
    let mut config = loaded.config;
    runtime.block_on(async move {
        if !discover(&mut config).await {
            return ExitCode::from(1);
        }
        let listener = match TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("mcp-oauth serve: cannot listen on {address}: {error}");
                return ExitCode::from(1);
            }
        };
        // A loopback listen address pins the public origin (design §4.4); any other pins nothing,
        // and core refuses interactive servers without a pinned origin.
        if let Ok(bound) = listener.local_addr() {
            config.settings.origin.pin_listen_address(bound);
        }
        // Design §4.10: a store that cannot be opened or does not answer stops the start, with the
        // reason; serving would fail every sign-in and every grant read.
        let store = match open_store(&config.settings.grants.store, DEFAULT_MAX_RECORDS, TokioRuntime).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("mcp-oauth serve: {error}");
                return ExitCode::from(1);
            }
        };
        let state = match gateway_state(config, ServerOptions::default()) {
            Ok(state) => Arc::new(state.with_grant_store(store)),
            Err(error) => {
                eprintln!("mcp-oauth serve: {error}");
                return ExitCode::from(1);
            }
        };
        let bound = listener.local_addr().map_or_else(|_| address.to_string(), |a| a.to_string());
        tracing::info!(
            address = %bound,
            servers,
            startup_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "gateway listening"
        );
        serve(listener, state, shutdown_signal()).await;
        tracing::info!("gateway stopped");
        ExitCode::SUCCESS
    })
}

/// Fills the endpoints the configuration leaves to discovery and logs what happened per server;
/// `false` only when the HTTP client cannot be set up. A server whose discovery fails is served
/// as configured (its OAuth routes say the endpoint is missing).
pub(crate) async fn discover(config: &mut mcp_oauth_core::config::GatewayConfig) -> bool {
    match discover_endpoints(config, std::time::Duration::from_secs(10)).await {
        Ok(reports) => {
            for report in reports {
                match report.outcome {
                    Ok(filled) => {
                        tracing::info!(server = %report.server, filled = %filled.join(","), "endpoints discovered");
                    }
                    Err(failed) => tracing::warn!(
                        server = %report.server,
                        reason = failed.reason,
                        "endpoint discovery failed ({}); set authorization_url/token_url to serve this server's OAuth routes",
                        failed.message
                    ),
                }
            }
            true
        }
        Err(error) => {
            eprintln!("mcp-oauth serve: {error}");
            false
        }
    }
}
