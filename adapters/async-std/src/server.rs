//! The gateway on async-std: the same gateway as the tokio adapter's, hosted by async-std.
//!
//! Everything a request goes through is [`mcp_oauth_runtime::gateway`] over core's decisions;
//! this module adds what is async-std's: the listener ([`serve`]: hyper's runtime-agnostic server
//! over async-std sockets, with async-std's timer and executor) and [`AsyncStdUpstream`], the
//! upstream client.
//!
//! The upstream client is hyper's HTTP/1.1 client connection over an async-std socket (and
//! rustls, feature `h1-client`), not surf: an MCP answer may be a long SSE stream, which must
//! reach the caller event by event, and async-h1 (surf's backend here) reads a body delimited by
//! the connection closing as empty. Like the crate's [`HttpClient`](crate::HttpClient), it
//! resolves a host name once, refuses it when any address is refused by the fetch policy (design
//! §4.9), connects only to a checked address, and opens **one connection per request**, closed
//! when the answer's body is done: no pool, so no connection verified for one name serves another.
//! That costs a connect (and a TLS handshake) per upstream request, which the tokio adapter's
//! pooled client avoids; see `docs/async-std.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mcp_oauth_async_std::server::{ServerOptions, gateway_state, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let yaml = std::fs::read_to_string("config.yaml")?;
//! let loaded = mcp_oauth_core::config::load_yaml(&yaml, &|name| std::env::var(name).ok())
//!     .map_err(|errors| format!("{} configuration error(s)", errors.errors.len()))?;
//! let state = Arc::new(gateway_state(loaded.config, ServerOptions::default())?);
//! let listener = async_std::net::TcpListener::bind("127.0.0.1:4000").await?;
//! serve(listener, state, std::future::pending()).await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_std::net::{TcpListener, TcpStream};
use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use mcp_oauth_core::config::GatewayConfig;
use mcp_oauth_core::gateway::{StartupError, UpstreamFailure};
use mcp_oauth_core::machine::TransportError;
use mcp_oauth_runtime::gateway::{self, Listener, Upstream};
use mcp_oauth_runtime::hyper_rt::FuturesIo;

pub use mcp_oauth_core::gateway::TokenKey;
pub use mcp_oauth_runtime::gateway::{GatewayBody, ServerOptions};

use crate::client::{Lookup, async_std_lookup, connect_checked, ip_literal, resolve_checked};
use crate::runtime::AsyncStdRuntime;

/// The gateway's shared state on async-std.
pub type GatewayState = gateway::GatewayState<AsyncStdRuntime, AsyncStdUpstream>;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The upstream TLS client cannot be set up.
    #[error("cannot set up the upstream TLS client: {0}")]
    Tls(String),
    /// Core refuses to serve this configuration.
    #[error(transparent)]
    Config(#[from] StartupError),
}

/// The gateway's state for `config`, with an upstream client trusting the Mozilla roots. Refuses
/// what core's [`check_startup`](mcp_oauth_core::gateway::check_startup) refuses, as the tokio
/// adapter does.
pub fn gateway_state(config: GatewayConfig, options: ServerOptions) -> Result<GatewayState, StartError> {
    let upstream = AsyncStdUpstream::new()?;
    Ok(GatewayState::new(config, options, upstream, AsyncStdRuntime)?)
}

/// Serves `listener` until `shutdown` completes (see [`gateway::serve`]: connection limits,
/// HTTP/1.1 and HTTP/2, graceful shutdown within [`ServerOptions::shutdown_grace`]).
pub async fn serve(listener: TcpListener, state: Arc<GatewayState>, shutdown: impl Future<Output = ()>) {
    gateway::serve(AsyncStdListener(listener), state, shutdown).await;
}

/// async-std's listener for [`gateway::serve`].
struct AsyncStdListener(TcpListener);

impl Listener for AsyncStdListener {
    type Stream = TcpStream;
    type Io = FuturesIo<TcpStream>;

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
        use async_std::io::WriteExt;
        if stream.write_all(answer).await.is_ok() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn into_io(stream: TcpStream) -> FuturesIo<TcpStream> {
        FuturesIo(stream)
    }
}

/// The upstream client on async-std (see the module docs).
#[derive(Clone)]
pub struct AsyncStdUpstream {
    lookup: Lookup,
    #[cfg(feature = "h1-client")]
    tls: futures_rustls::TlsConnector,
}

impl std::fmt::Debug for AsyncStdUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStdUpstream").finish_non_exhaustive()
    }
}

impl AsyncStdUpstream {
    /// A client resolving with async-std and, with feature `h1-client`, speaking TLS (rustls,
    /// `ring`, the Mozilla roots).
    pub fn new() -> Result<Self, StartError> {
        #[cfg(feature = "h1-client")]
        {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| StartError::Tls(error.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let tls = futures_rustls::TlsConnector::from(Arc::new(tls));
            Ok(Self { lookup: async_std_lookup(), tls })
        }
        #[cfg(not(feature = "h1-client"))]
        {
            Ok(Self { lookup: async_std_lookup() })
        }
    }

    /// A connection to the checked address of `uri`'s host, TLS added for `https`.
    async fn connect(
        &self,
        uri: &Uri,
        allow_private: bool,
    ) -> Result<Either<TcpStream, TlsStream>, UpstreamFailure> {
        let host = uri.host().ok_or(UpstreamFailure::Unreachable)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamFailure::Unreachable),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addresses =
            resolve_checked(&self.lookup, host, port, allow_private).await.map_err(|error| match error {
                TransportError::Blocked(why) => {
                    tracing::warn!(%why, "upstream request refused by the fetch policy");
                    UpstreamFailure::Blocked
                }
                _ => UpstreamFailure::Unreachable,
            })?;
        let stream = connect_checked(&addresses).await.map_err(|error| {
            tracing::debug!(%error, "connecting upstream failed");
            UpstreamFailure::Unreachable
        })?;
        if !https {
            return Ok(Either::Left(stream));
        }
        self.tls(host, stream).await.map(Either::Right)
    }

    #[cfg(feature = "h1-client")]
    async fn tls(&self, host: &str, stream: TcpStream) -> Result<TlsStream, UpstreamFailure> {
        let name = match ip_literal(host) {
            Some(ip) => rustls::pki_types::ServerName::from(ip),
            None => rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| UpstreamFailure::Unreachable)?,
        };
        self.tls.connect(name, stream).await.map_err(|error| {
            tracing::debug!(%error, "TLS with the upstream failed");
            UpstreamFailure::Unreachable
        })
    }

    #[cfg(not(feature = "h1-client"))]
    async fn tls(&self, _host: &str, _stream: TcpStream) -> Result<TlsStream, UpstreamFailure> {
        tracing::debug!("https upstreams need the `h1-client` feature");
        Err(UpstreamFailure::Unreachable)
    }
}

#[cfg(feature = "h1-client")]
type TlsStream = futures_rustls::client::TlsStream<TcpStream>;
#[cfg(not(feature = "h1-client"))]
type TlsStream = TcpStream;

impl Upstream for AsyncStdUpstream {
    type Body = Incoming;

    async fn send(
        &self,
        request: Request<Bytes>,
        allow_private: bool,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        let (mut parts, body) = request.into_parts();
        let io = self.connect(&parts.uri, allow_private).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(FuturesIo(io))
            .await
            .map_err(|_| UpstreamFailure::Unreachable)?;
        async_std::task::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        // A client connection speaks origin form and names the host itself.
        let authority = parts.uri.authority().map(|authority| authority.as_str().to_owned());
        if let Some(value) = authority.and_then(|authority| HeaderValue::from_str(&authority).ok()) {
            parts.headers.entry(header::HOST).or_insert(value);
        }
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        parts.uri = path.parse().map_err(|_| UpstreamFailure::Unreachable)?;
        sender.send_request(Request::from_parts(parts, Full::new(body))).await.map_err(|error| {
            tracing::debug!(%error, "upstream request failed");
            UpstreamFailure::Unreachable
        })
    }
}
