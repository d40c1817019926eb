//! The HTTP client that performs [`Outgoing`] requests under their [`Limits`].
//!
//! One hyper-util client with a keep-alive pool carries every request, over HTTPS (rustls with the
//! Mozilla roots from `webpki-roots`, HTTP/2 by ALPN) or plain HTTP. The fetch policy of core is
//! enforced where only the adapter can enforce it:
//!
//! - an IP-literal host is checked by [`permits_address`] before any connection is attempted;
//! - a host name is resolved **once**, with tokio, and the target is refused when **any** address
//!   it resolves to is refused (design §4.9): a name that answers with one public and one private
//!   or metadata address fails with [`TransportError::Blocked`] naming the refused address, and
//!   nothing is connected. Otherwise hyper-util connects to exactly the addresses that were
//!   checked (the resolver hands them to the connector; there is no second lookup), so a DNS
//!   answer that changes after the check (DNS rebinding) cannot redirect the connection;
//! - whether private addresses are allowed is per request
//!   ([`Limits::allow_private_addresses`]), so the client keeps two pools, a strict one and a
//!   permissive one: a connection opened for a local server is never reused for a request whose
//!   policy forbids private addresses;
//! - the gateway's own upstream client ([`crate::server`]) is the same pair of pools
//!   (`PolicyClient`), chosen per request from the forwarded server's configured URL;
//! - the whole exchange, connect to last body byte, runs under [`Limits::timeout`]; the body is
//!   streamed and the request fails as soon as it exceeds [`Limits::max_body_bytes`];
//! - redirects are never followed: a 3xx is returned as it is.
//!
//! Error messages name the failure (refused connection, TLS, DNS) and never a header value.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mcp_oauth_core::fetch_policy::{FetchPolicyError, permits_address, permits_addresses};
use mcp_oauth_core::machine::{Limits, Outgoing, TransportError};
use mcp_oauth_runtime::Client as PerformClient;
use mcp_oauth_runtime::limits::{BodyLimit, perform_within_limits};

use crate::runtime::TokioRuntime;

/// The longest error message passed on; the rest is cut.
const MAX_MESSAGE_CHARS: usize = 300;

type Inner = Client<HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// Performs requests for core's machines; cheap to clone (the pools are shared).
#[derive(Clone)]
pub struct HttpClient {
    pools: PolicyClient,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// The TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS: {0}")]
pub struct TlsSetupError(#[from] rustls::Error);

impl HttpClient {
    /// A client trusting the Mozilla root certificates (`webpki-roots`), with the `ring` provider.
    pub fn new() -> Result<Self, TlsSetupError> {
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_webpki_roots()
                .with_no_client_auth();
        Ok(Self::with_tls_config(tls))
    }

    /// A client with a TLS configuration of your own (other roots, client certificates).
    ///
    /// The ALPN protocols of `tls` are replaced by `h2` and `http/1.1`.
    pub fn with_tls_config(tls: rustls::ClientConfig) -> Self {
        Self { pools: PolicyClient::new(tls, Duration::from_secs(60), 8) }
    }

    /// Performs `outgoing` under its limits and returns the response as it is (a 3xx included).
    ///
    /// Fails with [`TransportError::Blocked`] when the fetch policy refuses the host's address or
    /// any address its name resolves to (checked before connecting), [`TransportError::Timeout`] when the whole exchange takes
    /// longer than [`Limits::timeout`], [`TransportError::BodyTooLarge`] as soon as the body passes
    /// [`Limits::max_body_bytes`], [`TransportError::Unsupported`] for a URL that is not absolute
    /// `http` or `https`, and [`TransportError::Connect`] when connecting, TLS or reading fails.
    pub async fn perform(&self, outgoing: &Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        let uri = outgoing.request().uri();
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(TransportError::Unsupported("only absolute http and https URLs are fetched".into()));
        }
        if uri.host().is_none() {
            return Err(TransportError::Unsupported("the URL has no host".into()));
        }
        let request = to_hyper_request(outgoing.request());
        perform_within_limits(&TokioRuntime, outgoing, exchange(&self.pools, request, outgoing.limits()))
            .await
    }
}

impl PerformClient for HttpClient {
    fn perform(
        &self,
        outgoing: &Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send {
        HttpClient::perform(self, outgoing)
    }
}

/// The address of an IP-literal host (`127.0.0.1`, `[::1]`), as hyper-util would parse it.
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn to_hyper_request(request: &Request<Vec<u8>>) -> Request<Full<Bytes>> {
    let mut out = Request::new(Full::new(Bytes::from(request.body().clone())));
    *out.method_mut() = request.method().clone();
    *out.uri_mut() = request.uri().clone();
    *out.headers_mut() = request.headers().clone();
    out
}

async fn exchange(
    pools: &PolicyClient,
    request: Request<Full<Bytes>>,
    limits: Limits,
) -> Result<Response<Vec<u8>>, TransportError> {
    let response = match pools.request(request, limits.allow_private_addresses).await {
        Ok(response) => response,
        Err(SendError::Blocked(message)) => return Err(TransportError::Blocked(message)),
        Err(SendError::Client(error)) => return Err(classify(&error)),
    };
    let (parts, mut body) = response.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut collected = BodyLimit::for_limits(limits, declared)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| classify(&error))?;
        if let Ok(data) = frame.into_data() {
            collected.push(&data)?;
        }
    }
    Ok(Response::from_parts(parts, collected.into_body()))
}

/// Maps a client error (not a policy refusal: [`PolicyClient::request`] took those out) to
/// `Connect` with the error chain (which never holds header values).
fn classify(error: &(dyn StdError + 'static)) -> TransportError {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut parts: Vec<String> = Vec::new();
    while let Some(error) = current {
        let text = error.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        current = error.source();
    }
    let mut message = parts.join(": ");
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect();
        message.push('…');
    }
    TransportError::Connect(message)
}

/// Two hyper-util clients, a strict and a permissive one, whose connectors resolve through
/// [`PolicyResolver`]: what both [`HttpClient`] and the gateway's upstream client
/// ([`crate::server`]) send with. Cheap to clone (the pools are shared).
#[derive(Clone)]
pub(crate) struct PolicyClient {
    strict: Inner,
    permissive: Inner,
}

/// Why [`PolicyClient::request`] produced no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The fetch policy refused the host's address or one its name resolves to; nothing was
    /// connected. The message names the host and the refused address.
    Blocked(String),
    /// Connecting, TLS, or the exchange failed (a DNS failure included).
    Client(hyper_util::client::legacy::Error),
}

/// Looks a host name up. Tokio's resolver, except in tests, which answer from a table.
type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> + Send + Sync>;

fn tokio_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(resolved.map(|address| address.ip()).collect())
        })
    })
}

impl PolicyClient {
    /// Both pools over `tls` (ALPN set to `h2` and `http/1.1`), resolving with tokio.
    pub(crate) fn new(tls: rustls::ClientConfig, idle_timeout: Duration, max_idle_per_host: usize) -> Self {
        Self::with_lookup(tls, idle_timeout, max_idle_per_host, tokio_lookup())
    }

    fn with_lookup(
        tls: rustls::ClientConfig,
        idle_timeout: Duration,
        max_idle_per_host: usize,
        lookup: Lookup,
    ) -> Self {
        let build = |allow_private: bool| {
            let resolver = PolicyResolver { allow_private, lookup: Arc::clone(&lookup) };
            let mut http = HttpConnector::new_with_resolver(resolver);
            http.enforce_http(false);
            http.set_nodelay(true);
            let https = HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(idle_timeout)
                .pool_max_idle_per_host(max_idle_per_host)
                .build(https)
        };
        Self { strict: build(false), permissive: build(true) }
    }

    /// Sends `request` from the pool `allow_private` chooses. An IP-literal host is checked here
    /// (hyper-util connects to it without asking the resolver); a host name is checked by the
    /// resolver, whose checked addresses are the only ones connected to.
    pub(crate) async fn request(
        &self,
        request: Request<Full<Bytes>>,
        allow_private: bool,
    ) -> Result<Response<Incoming>, SendError> {
        if let Some(ip) = request.uri().host().and_then(ip_literal) {
            permits_address(ip, allow_private).map_err(|error| SendError::Blocked(error.to_string()))?;
        }
        let client = if allow_private { &self.permissive } else { &self.strict };
        client.request(request).await.map_err(|error| match blocked(&error) {
            Some(message) => SendError::Blocked(message),
            None => SendError::Client(error),
        })
    }
}

/// The resolver's refusal somewhere in `error`'s chain, if that is why it failed.
fn blocked(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(ResolveError::Blocked(message)) = error.downcast_ref::<ResolveError>() {
            return Some(message.clone());
        }
        current = error.source();
    }
    None
}

/// Resolves once and passes on the addresses only when the fetch policy permits every one of
/// them (see [`permits_addresses`]); hyper-util then connects to those addresses and no others.
#[derive(Clone)]
struct PolicyResolver {
    allow_private: bool,
    lookup: Lookup,
}

impl fmt::Debug for PolicyResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyResolver").field("allow_private", &self.allow_private).finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum ResolveError {
    Lookup(std::io::Error),
    NoAddress,
    Blocked(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lookup(error) => write!(f, "DNS lookup failed: {error}"),
            Self::NoAddress => f.write_str("the host name resolved to no address"),
            Self::Blocked(message) => f.write_str(message),
        }
    }
}

impl StdError for ResolveError {}

type ResolveFuture = BoxFuture<'static, Result<std::vec::IntoIter<SocketAddr>, ResolveError>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        let lookup = Arc::clone(&self.lookup);
        Box::pin(async move { resolve(name.as_str(), allow_private, &lookup).await })
    }
}

async fn resolve(
    host: &str,
    allow_private: bool,
    lookup: &Lookup,
) -> Result<std::vec::IntoIter<SocketAddr>, ResolveError> {
    let resolved = lookup(host.to_owned()).await.map_err(ResolveError::Lookup)?;
    match permits_addresses(&resolved, allow_private) {
        Ok(()) => {}
        Err(FetchPolicyError::NoAddresses) => return Err(ResolveError::NoAddress),
        Err(error) => {
            tracing::debug!(host, %error, "the host resolves to an address the fetch policy refuses");
            return Err(ResolveError::Blocked(format!("host `{host}`: {error}")));
        }
    }
    // Port 0: hyper-util sets the URL's port on every address it is handed.
    Ok(resolved.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect::<Vec<_>>().into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_recognised_like_hyper_util_does() {
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("example.com"), None);
    }

    /// A lookup answering from `table` and counting its calls.
    fn table(entries: &[(&str, &[&str])], calls: Arc<std::sync::atomic::AtomicUsize>) -> Lookup {
        let table: Vec<(String, Vec<IpAddr>)> = entries
            .iter()
            .map(|(host, ips)| ((*host).to_owned(), ips.iter().map(|ip| ip.parse().unwrap()).collect()))
            .collect();
        Arc::new(move |host: String| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let found = table.iter().find(|(name, _)| *name == host).map(|(_, ips)| ips.clone());
            Box::pin(async move { Ok(found.unwrap_or_default()) })
        })
    }

    fn tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_webpki_roots()
            .with_no_client_auth()
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(url).body(Full::new(Bytes::new())).unwrap()
    }

    /// A loopback listener answering every connection with one `204`, counting connections.
    async fn answering() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
                });
            }
        });
        (port, accepted)
    }

    #[test]
    fn a_resolution_passes_only_when_every_address_does() {
        let ips = |list: &[&str]| list.iter().map(|ip| ip.parse().unwrap()).collect::<Vec<IpAddr>>();
        assert_eq!(permits_addresses(&ips(&["93.184.216.34", "2606:2800:220:1::1"]), false), Ok(()));
        let mixed = permits_addresses(&ips(&["93.184.216.34", "10.0.0.1"]), false).unwrap_err();
        assert!(matches!(mixed, FetchPolicyError::Address { .. }), "{mixed:?}");
        assert!(permits_addresses(&ips(&["127.0.0.1", "169.254.169.254"]), true).is_err());
        assert!(permits_addresses(&ips(&["127.0.0.1", "10.0.0.1"]), true).is_ok());
        assert_eq!(permits_addresses(&[], true), Err(FetchPolicyError::NoAddresses));
    }

    #[tokio::test]
    async fn a_name_with_one_refused_address_is_refused_whole_and_never_connected() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (port, accepted) = answering().await;
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let lookup = table(
                &[
                    ("mixed.test", &["127.0.0.1", "169.254.169.254"]),
                    ("rebound.test", &["127.0.0.1"]),
                    ("empty.test", &[]),
                ],
                Arc::clone(&calls),
            );
            let pools = PolicyClient::with_lookup(tls(), Duration::from_secs(5), 1, lookup);
            // Loopback and a metadata address: refused even where private space is allowed.
            let mixed = pools.request(get(&format!("http://mixed.test:{port}/")), true).await.unwrap_err();
            assert!(
                matches!(&mixed, SendError::Blocked(why) if why.contains("mixed.test") && why.contains("169.254.169.254")),
                "{mixed:?}"
            );
            // A public server's name that resolves to loopback (DNS rebinding): refused.
            let rebound = pools.request(get(&format!("http://rebound.test:{port}/")), false).await.unwrap_err();
            assert!(matches!(&rebound, SendError::Blocked(why) if why.contains("127.0.0.1")), "{rebound:?}");
            // An IP literal is checked although the resolver never sees it.
            let literal = pools.request(get(&format!("http://127.0.0.1:{port}/")), false).await.unwrap_err();
            assert!(matches!(literal, SendError::Blocked(_)), "{literal:?}");
            let empty = pools.request(get(&format!("http://empty.test:{port}/")), true).await.unwrap_err();
            assert!(matches!(empty, SendError::Client(_)), "{empty:?}");
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was connected");
            // The same name, allowed, connects to the checked address, resolved once.
            let before = calls.load(std::sync::atomic::Ordering::SeqCst);
            let answer = pools.request(get(&format!("http://rebound.test:{port}/")), true).await.unwrap();
            assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
            assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), before + 1);
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        })
        .await
        .expect("the test took longer than 10 s");
    }
}
