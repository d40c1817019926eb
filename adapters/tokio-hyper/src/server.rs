//! The gateway's HTTP server on tokio: the accept loop and the upstream client; everything a
//! request goes through is the shared [`mcp_oauth_runtime::gateway`] over core's decisions.
//!
//! [`serve`] accepts connections (HTTP/1.1 and HTTP/2, keep-alive) and hands each request to
//! [`gateway::handle`], which asks core's [`decide`](mcp_oauth_core::gateway::decide) what to do
//! and runs core's forwarded-call machine ([`Call`](mcp_oauth_core::gateway::Call)): the
//! credential (an M2M or RFC 8693 exchanged token from the shared token cache, a static or
//! per-request value, or the caller's own `Authorization`), one request upstream (a retry only
//! when core asks for one), the upstream session of an aggregated call, and the answer for every
//! failure. This module keeps what is tokio's: sockets, the connection limits of the
//! configuration, graceful shutdown, and [`TokioUpstream`], the upstream client (hyper-util's
//! pooled client whose resolver applies the fetch policy of design §4.9 to every address).
//!
//! ```no_run
//! use std::sync::Arc;
//! use mcp_oauth_tokio::server::{ServerOptions, gateway_state, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let yaml = std::fs::read_to_string("config.yaml")?;
//! let loaded = mcp_oauth_core::config::load_yaml(&yaml, &|name| std::env::var(name).ok())
//!     .map_err(|errors| format!("{} configuration error(s)", errors.errors.len()))?;
//! let state = Arc::new(gateway_state(loaded.config, ServerOptions::default())?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::ConfigBuilderExt;
use hyper_util::rt::TokioIo;
use mcp_oauth_core::config::GatewayConfig;
use mcp_oauth_core::gateway::{StartupError, UpstreamFailure};
use mcp_oauth_runtime::gateway::{self, Listener, Upstream};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

pub use mcp_oauth_core::gateway::TokenKey;
pub use mcp_oauth_runtime::gateway::{GatewayBody, ServerOptions};

use crate::client::{PolicyClient, SendError, TlsSetupError};
use crate::runtime::TokioRuntime;

/// The gateway's shared state on tokio.
pub type GatewayState = gateway::GatewayState<TokioRuntime, TokioUpstream>;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The upstream TLS client cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// Core refuses to serve this configuration.
    #[error(transparent)]
    Config(#[from] StartupError),
}

/// The gateway's state for `config`, with an upstream client trusting the Mozilla roots. Refuses
/// a configuration core's [`check_startup`](mcp_oauth_core::gateway::check_startup) refuses
/// (interactive servers without a pinned public origin); pin a loopback listen address first with
/// [`OriginSettings::pin_listen_address`](mcp_oauth_core::origin::OriginSettings::pin_listen_address).
pub fn gateway_state(config: GatewayConfig, options: ServerOptions) -> Result<GatewayState, StartError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::from)?
        .with_webpki_roots()
        .with_no_client_auth();
    let upstream =
        TokioUpstream(PolicyClient::new(tls, Duration::from_secs(90), options.pool_max_idle_per_host));
    Ok(GatewayState::new(config, options, upstream, TokioRuntime)?)
}

/// The upstream client on tokio: hyper-util's pooled client (HTTP/1.1 and HTTP/2, keep-alive),
/// a strict and a permissive pool chosen per request, whose resolver refuses a host when any
/// address it resolves to is refused and hands on only checked addresses.
#[derive(Clone)]
pub struct TokioUpstream(PolicyClient);

impl std::fmt::Debug for TokioUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioUpstream").finish_non_exhaustive()
    }
}

impl Upstream for TokioUpstream {
    type Body = Incoming;

    async fn send(
        &self,
        request: Request<Bytes>,
        allow_private: bool,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        match self.0.request(request.map(Full::new), allow_private).await {
            Ok(response) => Ok(response),
            Err(SendError::Blocked(why)) => {
                tracing::warn!(%why, "upstream request refused by the fetch policy");
                Err(UpstreamFailure::Blocked)
            }
            Err(SendError::Client(error)) => {
                tracing::debug!(connect = error.is_connect(), "upstream request failed");
                Err(UpstreamFailure::Unreachable)
            }
        }
    }
}

/// Serves `listener` until `shutdown` completes (see [`gateway::serve`]: connection limits,
/// HTTP/1.1 and HTTP/2, graceful shutdown within [`ServerOptions::shutdown_grace`]).
pub async fn serve(listener: TcpListener, state: Arc<GatewayState>, shutdown: impl Future<Output = ()>) {
    gateway::serve_with_timer(TokioListener(listener), state, shutdown, hyper_util::rt::TokioTimer::new())
        .await;
}

/// tokio's listener for [`gateway::serve`].
struct TokioListener(TcpListener);

impl Listener for TokioListener {
    type Stream = TcpStream;
    type Io = TokioIo<TcpStream>;

    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        Ok((stream, peer))
    }

    async fn first_byte(stream: &TcpStream) -> bool {
        let mut first = [0u8; 1];
        matches!(stream.peek(&mut first).await, Ok(read) if read > 0)
    }

    async fn refuse(mut stream: TcpStream, answer: &'static [u8]) {
        use tokio::io::AsyncWriteExt;
        if stream.write_all(answer).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    }

    fn into_io(stream: TcpStream) -> TokioIo<TcpStream> {
        TokioIo::new(stream)
    }
}
