//! The HTTP client that performs [`Outgoing`] requests under their [`Limits`].
//!
//! One hyper-util client with a keep-alive pool carries every request, over HTTPS (rustls with the
//! Mozilla roots from `webpki-roots`, HTTP/2 by ALPN) or plain HTTP. The fetch policy of core is
//! enforced where only the adapter can enforce it:
//!
//! - an IP-literal host is checked by [`permits_address`] before any connection is attempted;
//! - a host name is resolved with tokio, and every address it resolves to goes through
//!   [`permits_address`]; refused addresses are dropped, and when none is left the request fails
//!   with [`TransportError::Blocked`] without connecting;
//! - whether private addresses are allowed is per request
//!   ([`Limits::allow_private_addresses`]), so the client keeps two pools, a strict one and a
//!   permissive one: a connection opened for a local server is never reused for a request whose
//!   policy forbids private addresses;
//! - the whole exchange, connect to last body byte, runs under [`Limits::timeout`]; the body is
//!   streamed and the request fails as soon as it exceeds [`Limits::max_body_bytes`];
//! - redirects are never followed: a 3xx is returned as it is.
//!
//! Error messages name the failure (refused connection, TLS, DNS) and never a header value.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mcp_oauth_core::fetch_policy::permits_address;
use mcp_oauth_core::machine::{Limits, Outgoing, TransportError};

/// The longest error message passed on; the rest is cut.
const MAX_MESSAGE_CHARS: usize = 300;

type Inner = Client<HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// Performs requests for core's machines; cheap to clone (the pools are shared).
#[derive(Clone)]
pub struct HttpClient {
    strict: Inner,
    permissive: Inner,
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
        let build = |allow_private: bool| {
            let mut http = HttpConnector::new_with_resolver(PolicyResolver { allow_private });
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
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(8)
                .build(https)
        };
        Self { strict: build(false), permissive: build(true) }
    }

    /// Performs `outgoing` under its limits and returns the response as it is (a 3xx included).
    ///
    /// Fails with [`TransportError::Blocked`] when the fetch policy refuses every address of the
    /// host (checked before connecting), [`TransportError::Timeout`] when the whole exchange takes
    /// longer than [`Limits::timeout`], [`TransportError::BodyTooLarge`] as soon as the body passes
    /// [`Limits::max_body_bytes`], [`TransportError::Unsupported`] for a URL that is not absolute
    /// `http` or `https`, and [`TransportError::Connect`] when connecting, TLS or reading fails.
    pub async fn perform(&self, outgoing: &Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        let limits = outgoing.limits();
        let uri = outgoing.request().uri();
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(TransportError::Unsupported("only absolute http and https URLs are fetched".into()));
        }
        let host = uri.host().ok_or_else(|| TransportError::Unsupported("the URL has no host".into()))?;
        if let Some(ip) = ip_literal(host) {
            permits_address(ip, limits.allow_private_addresses)
                .map_err(|error| TransportError::Blocked(error.to_string()))?;
        }
        tracing::debug!(
            purpose = outgoing.purpose(),
            method = %outgoing.request().method(),
            host,
            "performing request"
        );
        let client = if limits.allow_private_addresses { &self.permissive } else { &self.strict };
        let request = to_hyper_request(outgoing.request());
        let result = match tokio::time::timeout(limits.timeout, exchange(client, request, limits)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(TransportError::Timeout),
        };
        match &result {
            Ok(response) => tracing::debug!(
                purpose = outgoing.purpose(),
                status = response.status().as_u16(),
                bytes = response.body().len(),
                "response"
            ),
            Err(error) => tracing::debug!(purpose = outgoing.purpose(), %error, "request failed"),
        }
        result
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
    client: &Inner,
    request: Request<Full<Bytes>>,
    limits: Limits,
) -> Result<Response<Vec<u8>>, TransportError> {
    let limit = limits.max_body_bytes;
    let response = client.request(request).await.map_err(|error| classify(&error))?;
    let (parts, mut body) = response.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(TransportError::BodyTooLarge { limit });
    }
    let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(limit).min(limit));
    let mut collected = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| classify(&error))?;
        if let Ok(data) = frame.into_data() {
            if collected.len().saturating_add(data.len()) > limit {
                return Err(TransportError::BodyTooLarge { limit });
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(Response::from_parts(parts, collected))
}

/// Maps a client error to a transport error: a policy refusal from the resolver is `Blocked`,
/// anything else `Connect` with the error chain (which never holds header values).
fn classify(error: &(dyn StdError + 'static)) -> TransportError {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut parts: Vec<String> = Vec::new();
    while let Some(error) = current {
        if let Some(ResolveError::Blocked(message)) = error.downcast_ref::<ResolveError>() {
            return TransportError::Blocked(message.clone());
        }
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

/// Resolves with tokio and keeps only the addresses the fetch policy permits.
#[derive(Clone, Copy, Debug)]
struct PolicyResolver {
    allow_private: bool,
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

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move { resolve(name.as_str(), allow_private).await })
    }
}

async fn resolve(host: &str, allow_private: bool) -> Result<std::vec::IntoIter<SocketAddr>, ResolveError> {
    let resolved = tokio::net::lookup_host((host, 0)).await.map_err(ResolveError::Lookup)?;
    let mut permitted = Vec::new();
    let mut refused = None;
    for address in resolved {
        match permits_address(address.ip(), allow_private) {
            Ok(()) => permitted.push(address),
            Err(error) => {
                tracing::debug!(host, %error, "resolved address refused by the fetch policy");
                refused.get_or_insert(error);
            }
        }
    }
    match (permitted.is_empty(), refused) {
        (false, _) => Ok(permitted.into_iter()),
        (true, Some(error)) => Err(ResolveError::Blocked(format!("host `{host}`: {error}"))),
        (true, None) => Err(ResolveError::NoAddress),
    }
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

    #[tokio::test]
    async fn resolver_drops_refused_addresses() {
        let blocked = resolve("localhost", false).await.unwrap_err();
        assert!(matches!(blocked, ResolveError::Blocked(_)), "{blocked}");
        let allowed: Vec<_> = resolve("localhost", true).await.unwrap().collect();
        assert!(allowed.iter().all(|address| address.ip().is_loopback()));
    }
}
