//! The HTTP client that performs [`Outgoing`] requests under their [`Limits`], over surf.
//!
//! One surf client carries every request, with a backend of this crate's own instead of surf's
//! (`PinnedH1`, a surf [`HttpClient`](surf::HttpClient)): it takes the socket addresses
//! [`HttpClient::perform`] resolved and checked, connects a `TcpStream` to one of them and to
//! nothing else (it never resolves a name), adds TLS when the URL is `https` (rustls with the
//! Mozilla roots from `webpki-roots`, feature `h1-client`; SNI and certificate verification for
//! the URL's host name) and runs async-h1 over that stream; the URL keeps the host name, so the
//! `Host` header is the name's. There is **one connection per request**, closed when the response
//! is dropped: no pool can hand a TLS connection verified for one host name to another name on
//! the same address, or give back a connection whose response was not read to the end (a body
//! past the cap, a timeout). Requests and responses are converted between `http` 1.x (what core
//! speaks) and http-types (what surf speaks) by hand, at this edge, with these rules:
//!
//! - a request header value that is not visible ASCII (`to_str()` fails) is never handed to
//!   http-types, which would panic on it: the request fails with [`TransportError::Unsupported`]
//!   naming the header (never its value), rather than going out without, say, its
//!   `Authorization`;
//! - a response header whose name or value `http` refuses is dropped (and logged at `debug`);
//! - the `Date` header async-h1 invents when a server sends none (async-h1 issue #193: the value
//!   is `"date: <now>\r\n"`) is dropped, so the response looks like the server's, as it does
//!   through the tokio adapter;
//! - a `HTTP/1.0` response cannot be read: async-h1 refuses every version but 1.1. The request
//!   fails with [`TransportError::Unsupported`] whose message says so (`"the server answered with
//!   HTTP/1.0, which the async-std adapter (async-h1) cannot read"`). The tokio adapter reads such
//!   answers; this is the one documented difference;
//! - a response header value that is not ASCII makes http-types panic inside async-h1's parser;
//!   the panic is caught at this edge and the request fails with [`TransportError::Connect`]
//!   (the default panic hook still prints it on standard error);
//! - a response body delimited by the connection closing (no `Content-Length`, not chunked) is
//!   read by async-h1 as empty; bodies with a length or chunked are read normally.
//!
//! The limits are the tokio adapter's:
//!
//! - an IP-literal host is checked by [`permits_address`] before any connection is attempted;
//! - a host name is resolved **once**, with async-std ([`async_std::net::ToSocketAddrs`]), and
//!   the target is refused when **any** address it resolves to is refused (design §4.9): the
//!   request fails with [`TransportError::Blocked`] naming the host and the address, without
//!   connecting. The checked addresses travel with the request to the backend, which connects to
//!   them in order and never looks the name up again, so a DNS answer that changes after the
//!   check (DNS rebinding) cannot redirect the connection;
//! - the whole exchange, connect to last body byte, runs under [`Limits::timeout`]
//!   (on async-std's timer, through [`perform_within_limits`]); the body is read in chunks and the request fails as soon as
//!   it exceeds [`Limits::max_body_bytes`] (at once when the declared length does);
//! - redirects are never followed: surf follows them only with its `Redirect` middleware, which
//!   this client never adds, so a 3xx is returned as it is.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use async_std::io::ReadExt;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use mcp_oauth_core::fetch_policy::{FetchPolicyError, permits_address, permits_addresses};
use mcp_oauth_core::machine::{Limits, Outgoing, TransportError};
use mcp_oauth_runtime::Client;
use mcp_oauth_runtime::limits::{BodyLimit, perform_within_limits};
use surf::http::headers::{HeaderName as TypesHeaderName, HeaderValue as TypesHeaderValue};
use surf::http::{Method as TypesMethod, Request as TypesRequest, Version};

use crate::runtime::AsyncStdRuntime;

/// The longest error message passed on; the rest is cut.
const MAX_MESSAGE_CHARS: usize = 300;
/// How much of the body is read at a time.
const CHUNK_BYTES: usize = 16 * 1024;
/// What async-h1 says when the status line is not `HTTP/1.1`.
const UNSUPPORTED_VERSION: &str = "Unsupported HTTP version";

/// Performs requests for core's machines over surf; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    surf: surf::Client,
    lookup: Lookup,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// The surf client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client: {0}")]
pub struct ClientSetupError(String);

impl HttpClient {
    /// A client with `TCP_NODELAY`, one connection per request (see the module docs), and TLS
    /// (feature `h1-client`) trusting the Mozilla root certificates (`webpki-roots`), with the
    /// `ring` provider.
    pub fn new() -> Result<Self, ClientSetupError> {
        #[cfg(feature = "h1-client")]
        {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| ClientSetupError(error.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Self::with_tls_config(tls))
        }
        #[cfg(not(feature = "h1-client"))]
        {
            Ok(Self::build(PinnedH1 {}, async_std_lookup()))
        }
    }

    /// A client with a TLS configuration of your own (other roots, client certificates).
    ///
    /// The ALPN protocols of `tls` are replaced by `http/1.1`.
    #[cfg(feature = "h1-client")]
    pub fn with_tls_config(mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::build(PinnedH1 { tls: futures_rustls::TlsConnector::from(Arc::new(tls)) }, async_std_lookup())
    }

    fn build(backend: PinnedH1, lookup: Lookup) -> Self {
        Self { surf: surf::Client::with_http_client(backend), lookup }
    }

    /// Performs `outgoing` under its limits and returns the response as it is (a 3xx included).
    ///
    /// Fails with [`TransportError::Blocked`] when the fetch policy refuses the host's address or
    /// any address its name resolves to (checked before connecting), [`TransportError::Timeout`]
    /// when the whole exchange takes longer than [`Limits::timeout`],
    /// [`TransportError::BodyTooLarge`] as soon as the body passes [`Limits::max_body_bytes`],
    /// [`TransportError::Unsupported`] for a URL that is not absolute `http` or `https` (or
    /// `https` without TLS support compiled in), a header value that is not visible ASCII, or an
    /// `HTTP/1.0` answer, and [`TransportError::Connect`] when connecting, TLS or reading fails.
    pub async fn perform(&self, outgoing: &Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        let limits = outgoing.limits();
        let uri = outgoing.request().uri();
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if cfg!(feature = "h1-client") => {}
            Some("https") => {
                return Err(TransportError::Unsupported(
                    "https needs the `h1-client` feature of mcp-oauth-async-std".into(),
                ));
            }
            _ => {
                return Err(TransportError::Unsupported(
                    "only absolute http and https URLs are fetched".into(),
                ));
            }
        }
        let host = uri.host().ok_or_else(|| TransportError::Unsupported("the URL has no host".into()))?;
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let mut request = to_surf_request(outgoing.request())?;
        let exchange = async {
            let addresses = resolve_checked(&self.lookup, host, port, limits.allow_private_addresses).await?;
            request.ext_mut().insert(Checked(addresses));
            // async-h1 panics (through http-types) on a non-ASCII response header value.
            AssertUnwindSafe(exchange(&self.surf, request, limits)).catch_unwind().await.unwrap_or_else(
                |_| {
                    Err(TransportError::Connect(
                    "the response could not be parsed (async-h1 panicked, e.g. on a non-ASCII header value)"
                        .into(),
                ))
                },
            )
        };
        perform_within_limits(&AsyncStdRuntime, outgoing, exchange).await
    }
}

impl Client for HttpClient {
    fn perform(
        &self,
        outgoing: &Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send {
        HttpClient::perform(self, outgoing)
    }
}

/// The address of an IP-literal host (`127.0.0.1`, `[::1]`).
pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Looks `(host, port)` up. async-std's resolver, except in tests, which answer from a table.
pub(crate) type Lookup =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

pub(crate) fn async_std_lookup() -> Lookup {
    Arc::new(|host: String, port: u16| {
        Box::pin(async move {
            let resolved = async_std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).await?;
            Ok(resolved.collect())
        })
    })
}

/// The addresses [`resolve_checked`] let through for a request: the only ones `PinnedH1` connects
/// to. A request without them is never sent.
#[derive(Clone, Debug)]
struct Checked(Vec<SocketAddr>);

/// Applies the fetch policy before connecting and returns the addresses to connect to: an IP
/// literal directly, a host name resolved once, every address checked (see
/// [`permits_addresses`]).
pub(crate) async fn resolve_checked(
    lookup: &Lookup,
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TransportError> {
    if let Some(ip) = ip_literal(host) {
        permits_address(ip, allow_private).map_err(|error| TransportError::Blocked(error.to_string()))?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved = lookup(host.to_owned(), port)
        .await
        .map_err(|error| TransportError::Connect(cut(format!("DNS lookup failed: {error}"))))?;
    let ips: Vec<IpAddr> = resolved.iter().map(SocketAddr::ip).collect();
    match permits_addresses(&ips, allow_private) {
        Ok(()) => Ok(resolved),
        Err(FetchPolicyError::NoAddresses) => {
            Err(TransportError::Connect("the host name resolved to no address".into()))
        }
        Err(error) => {
            tracing::debug!(host, %error, "the host resolves to an address the fetch policy refuses");
            Err(TransportError::Blocked(format!("host `{host}`: {error}")))
        }
    }
}

/// surf's backend: async-h1 over a stream connected to a checked address (see the module docs).
#[derive(Clone)]
struct PinnedH1 {
    #[cfg(feature = "h1-client")]
    tls: futures_rustls::TlsConnector,
}

impl fmt::Debug for PinnedH1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedH1").finish_non_exhaustive()
    }
}

/// What `PinnedH1` returns through surf: a message that names the step, never a header value.
fn backend_error(message: String) -> surf::Error {
    surf::Error::from_str(surf::StatusCode::BadGateway, cut(message))
}

/// Connects to the first of `addresses` that accepts, in order; never to anything else.
pub(crate) async fn connect_checked(addresses: &[SocketAddr]) -> std::io::Result<async_std::net::TcpStream> {
    let mut last = None;
    for address in addresses {
        match async_std::net::TcpStream::connect(address).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no checked address to connect to")))
}

impl PinnedH1 {
    async fn exchange(&self, request: surf::http::Request) -> Result<surf::http::Response, surf::Error> {
        let Some(Checked(addresses)) = request.ext().get::<Checked>().cloned() else {
            return Err(backend_error("the request carries no checked address; it is not sent".into()));
        };
        let stream = connect_checked(&addresses)
            .await
            .map_err(|error| backend_error(format!("connecting failed: {error}")))?;
        match request.url().scheme() {
            "http" => async_h1::connect(stream, request).await,
            #[cfg(feature = "h1-client")]
            "https" => {
                let name = match request.url().host() {
                    Some(url::Host::Domain(domain)) => {
                        rustls::pki_types::ServerName::try_from(domain.to_owned()).map_err(|_| {
                            backend_error(format!("`{domain}` is not a valid TLS server name"))
                        })?
                    }
                    Some(url::Host::Ipv4(ip)) => rustls::pki_types::ServerName::from(IpAddr::V4(ip)),
                    Some(url::Host::Ipv6(ip)) => rustls::pki_types::ServerName::from(IpAddr::V6(ip)),
                    None => return Err(backend_error("the URL has no host".into())),
                };
                let stream = self
                    .tls
                    .connect(name, stream)
                    .await
                    .map_err(|error| backend_error(format!("TLS handshake failed: {error}")))?;
                async_h1::connect(stream, request).await
            }
            scheme => Err(backend_error(format!("scheme `{scheme}` is not supported"))),
        }
    }
}

impl surf::HttpClient for PinnedH1 {
    // What `#[async_trait]` makes of `async fn send(&self, req: Request) -> Result<Response>`.
    fn send<'life0, 'async_trait>(
        &'life0 self,
        request: surf::http::Request,
    ) -> Pin<Box<dyn Future<Output = Result<surf::http::Response, surf::Error>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.exchange(request))
    }
}

/// Converts an `http` 1.x request into an http-types request, checking every header value first.
fn to_surf_request(request: &Request<Vec<u8>>) -> Result<TypesRequest, TransportError> {
    let method = TypesMethod::from_str(request.method().as_str())
        .map_err(|_| TransportError::Unsupported(format!("method {} is not supported", request.method())))?;
    let url = url::Url::parse(&request.uri().to_string())
        .map_err(|_| TransportError::Unsupported("the URL is not absolute".into()))?;
    let mut out = TypesRequest::new(method, url);
    for name in request.headers().keys() {
        let types_name = TypesHeaderName::from_str(name.as_str())
            .map_err(|_| TransportError::Unsupported(format!("header name `{name}` is not ASCII")))?;
        for value in request.headers().get_all(name) {
            // `to_str` accepts visible ASCII only: exactly what http-types takes without panicking.
            let value = value.to_str().map_err(|_| {
                TransportError::Unsupported(format!("the value of header `{name}` is not visible ASCII"))
            })?;
            let value = TypesHeaderValue::from_str(value).map_err(|_| {
                TransportError::Unsupported(format!("the value of header `{name}` is not ASCII"))
            })?;
            out.append_header(types_name.clone(), value);
        }
    }
    if !request.body().is_empty() {
        let had_content_type = request.headers().contains_key(header::CONTENT_TYPE);
        out.set_body(request.body().clone());
        if !had_content_type {
            // http-types adds `application/octet-stream`; send what core built, nothing more.
            out.remove_header("content-type");
        }
    }
    Ok(out)
}

async fn exchange(
    client: &surf::Client,
    request: TypesRequest,
    limits: Limits,
) -> Result<Response<Vec<u8>>, TransportError> {
    let mut response = client.send(request).await.map_err(|error| classify(&error))?;
    if response.version().is_some_and(|version| version != Version::Http1_1) {
        return Err(http_1_0());
    }
    let mut builder = Response::builder().status(response.status() as u16);
    for (name, values) in response.iter() {
        let Ok(http_name) = header::HeaderName::from_bytes(name.as_str().as_bytes()) else {
            tracing::debug!(header = name.as_str(), "response header with an invalid name dropped");
            continue;
        };
        for value in values {
            let value = value.as_str();
            if http_name == header::DATE && is_invented_date(value) {
                // async-h1 issue #193: the server sent no Date; async-h1 made up a malformed one.
                continue;
            }
            match header::HeaderValue::from_str(value) {
                Ok(value) => builder = builder.header(&http_name, value),
                Err(_) => {
                    tracing::debug!(header = name.as_str(), "response header with an invalid value dropped")
                }
            }
        }
    }
    let declared = response.len().or_else(|| {
        response.header("content-length").and_then(|values| values.last().as_str().parse::<usize>().ok())
    });
    let mut collected = BodyLimit::for_limits(limits, declared.map(|length| length as u64))?;
    let mut body = response.take_body();
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let read = body.read(&mut chunk).await.map_err(|error| {
            TransportError::Connect(cut(format!("reading the response body failed: {error}")))
        })?;
        if read == 0 {
            break;
        }
        collected.push(&chunk[..read])?;
    }
    builder
        .body(collected.into_body())
        .map_err(|error| TransportError::Connect(cut(format!("cannot build the response: {error}"))))
}

/// Whether a `Date` value is the one async-h1 invents (`"date: <now>\r\n"`); a server's own value
/// can hold neither the prefix nor a line break.
fn is_invented_date(value: &str) -> bool {
    value.contains(['\r', '\n']) || value.get(..5).is_some_and(|prefix| prefix.eq_ignore_ascii_case("date:"))
}

fn http_1_0() -> TransportError {
    TransportError::Unsupported(
        "the server answered with HTTP/1.0, which the async-std adapter (async-h1) cannot read".into(),
    )
}

/// Maps a surf error to a transport error. Its message names the failure (refused connection,
/// TLS, a malformed answer) and never a header value.
fn classify(error: &surf::Error) -> TransportError {
    let message = error.to_string();
    if message.contains(UNSUPPORTED_VERSION) {
        return http_1_0();
    }
    TransportError::Connect(cut(message))
}

fn cut(mut message: String) -> String {
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect();
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_recognised() {
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("example.com"), None);
    }

    #[test]
    fn the_invented_date_is_recognised() {
        assert!(is_invented_date("date: Tue, 01 Jul 2025 10:00:00 GMT\r\n"));
        assert!(!is_invented_date("Tue, 01 Jul 2025 10:00:00 GMT"));
    }

    #[test]
    fn non_ascii_header_values_are_refused_not_panicked_on() {
        let request = Request::get("http://127.0.0.1/")
            .header("x-name", header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
            .body(Vec::new())
            .unwrap();
        let error = to_surf_request(&request).unwrap_err();
        assert!(
            matches!(&error, TransportError::Unsupported(message) if message.contains("x-name")),
            "{error}"
        );
    }

    #[test]
    fn requests_convert_with_repeated_headers_and_body() {
        let request = Request::post("http://127.0.0.1:8080/token?a=b")
            .header("accept", "application/json")
            .header("x-many", "1")
            .header("x-many", "2")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"grant_type=client_credentials".to_vec())
            .unwrap();
        let out = to_surf_request(&request).unwrap();
        assert_eq!(out.method(), TypesMethod::Post);
        assert_eq!(out.url().as_str(), "http://127.0.0.1:8080/token?a=b");
        let many: Vec<_> = out.header("x-many").unwrap().iter().map(|v| v.as_str().to_owned()).collect();
        assert_eq!(many, ["1", "2"]);
        assert_eq!(out.header("content-type").unwrap().last().as_str(), "application/x-www-form-urlencoded");
        let bare = to_surf_request(&Request::post("http://127.0.0.1/").body(b"x".to_vec()).unwrap()).unwrap();
        assert!(bare.header("content-type").is_none(), "no content type is made up");
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_std::io::WriteExt;
    use mcp_oauth_core::machine::{Performer, RequestId};

    fn limits(allow_private: bool) -> Limits {
        Limits { allow_private_addresses: allow_private, ..Limits::METADATA }
    }

    /// A request past core's URL check, so the adapter's own address filter is what is tested.
    fn get(url: &str, allow_private: bool) -> Outgoing {
        Outgoing::unchecked(
            RequestId(1),
            Request::get(url).body(Vec::new()).unwrap(),
            limits(allow_private),
            Performer::Client,
            "test",
        )
    }

    /// A client whose name lookups answer `answers(call number)`, counting calls.
    fn client_with(
        answers: impl Fn(usize) -> Vec<SocketAddr> + Send + Sync + 'static,
    ) -> (HttpClient, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let answers = Arc::new(answers);
        let mut client = HttpClient::new().unwrap();
        client.lookup = Arc::new(move |_host: String, _port: u16| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            let answer = answers(call);
            Box::pin(async move { Ok(answer) })
        });
        (client, calls)
    }

    /// A loopback listener: every connection's first bytes are kept, and a `200` whose body is
    /// the request's `Host` header is sent back. Returns the address and the connections' bytes.
    async fn listener() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let listener = async_std::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&seen);
        async_std::task::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 8192];
                let read = stream.read(&mut buffer).await.unwrap_or(0);
                buffer.truncate(read);
                let text = String::from_utf8_lossy(&buffer).into_owned();
                kept.lock().unwrap().push(buffer);
                let host = text
                    .lines()
                    .find_map(|line| line.strip_prefix("host: ").or_else(|| line.strip_prefix("Host: ")))
                    .unwrap_or("")
                    .to_owned();
                if text.starts_with("GET ") {
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{host}", host.len());
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            }
        });
        (address, seen)
    }

    fn metadata(port: u16) -> SocketAddr {
        SocketAddr::new("169.254.169.254".parse().unwrap(), port)
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

    #[async_std::test]
    async fn name_resolution_checks_every_address() {
        let lookup = async_std_lookup();
        let blocked = resolve_checked(&lookup, "localhost", 80, false).await.unwrap_err();
        assert!(matches!(blocked, TransportError::Blocked(_)), "{blocked}");
        let checked = resolve_checked(&lookup, "localhost", 80, true).await.unwrap();
        assert!(!checked.is_empty() && checked.iter().all(|address| address.ip().is_loopback()));
        assert!(checked.iter().all(|address| address.port() == 80));
        let metadata = resolve_checked(&lookup, "169.254.169.254", 80, true).await.unwrap_err();
        assert!(matches!(metadata, TransportError::Blocked(_)));
    }

    /// The connection goes to the address that was checked: the name is looked up once per
    /// request, and a lookup that would answer with a metadata address afterwards (DNS
    /// rebinding) is never consulted for the connection.
    #[async_std::test]
    async fn the_connection_goes_to_the_checked_address() {
        async_std::future::timeout(std::time::Duration::from_secs(10), async {
            let (address, seen) = listener().await;
            let port = address.port();
            let (client, calls) =
                client_with(move |call| if call == 0 { vec![address] } else { vec![metadata(port)] });
            let url = format!("http://rebind.test:{port}/");
            let response = client.perform(&get(&url, true)).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup per request");
            // The name is kept for `Host`.
            assert_eq!(String::from_utf8_lossy(response.body()), format!("rebind.test:{port}"));
            // The next request looks the name up again, gets the metadata address and is refused.
            let rebound = client.perform(&get(&url, true)).await.unwrap_err();
            assert!(
                matches!(&rebound, TransportError::Blocked(why) if why.contains("169.254.169.254")),
                "{rebound:?}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            assert_eq!(seen.lock().unwrap().len(), 1, "only the first request connected");
        })
        .await
        .expect("the test took longer than 10 s");
    }

    #[async_std::test]
    async fn a_name_with_one_refused_address_is_refused_whole_and_never_connected() {
        async_std::future::timeout(std::time::Duration::from_secs(10), async {
            let (address, seen) = listener().await;
            let port = address.port();
            let (client, _) = client_with(move |_| vec![address, metadata(port)]);
            let mixed = client.perform(&get(&format!("http://mixed.test:{port}/"), true)).await.unwrap_err();
            assert!(
                matches!(&mixed, TransportError::Blocked(why) if why.contains("mixed.test") && why.contains("169.254.169.254")),
                "{mixed:?}"
            );
            // A public server's name that resolves to loopback.
            let (client, _) = client_with(move |_| vec![address]);
            let strict = client.perform(&get(&format!("http://public.test:{port}/"), false)).await.unwrap_err();
            assert!(matches!(strict, TransportError::Blocked(_)), "{strict:?}");
            let (client, _) = client_with(|_| Vec::new());
            let empty = client.perform(&get(&format!("http://empty.test:{port}/"), true)).await.unwrap_err();
            assert!(matches!(empty, TransportError::Connect(_)), "{empty:?}");
            assert!(seen.lock().unwrap().is_empty(), "nothing was connected");
        })
        .await
        .expect("the test took longer than 10 s");
    }

    #[async_std::test]
    async fn the_backend_never_sends_a_request_without_checked_addresses() {
        let request =
            to_surf_request(&Request::get("http://127.0.0.1:9/").body(Vec::new()).unwrap()).unwrap();
        let client = HttpClient::new().unwrap();
        let error = client.surf.send(request).await.unwrap_err();
        assert!(error.to_string().contains("no checked address"), "{error}");
    }

    #[async_std::test]
    async fn connect_checked_tries_the_checked_addresses_in_order() {
        let (address, seen) = listener().await;
        let closed = async_std::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let stream = connect_checked(&[dead, address]).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), address);
        assert!(connect_checked(&[dead]).await.is_err());
        assert!(connect_checked(&[]).await.is_err());
        drop(stream);
        drop(seen);
    }

    /// TLS goes to the checked address with the URL's host name as SNI.
    #[cfg(feature = "h1-client")]
    #[async_std::test]
    async fn tls_names_the_host_in_sni_on_the_checked_address() {
        async_std::future::timeout(std::time::Duration::from_secs(10), async {
            let (address, seen) = listener().await;
            let (client, calls) = client_with(move |_| vec![address]);
            let url = format!("https://sni-name.test:{}/", address.port());
            let error = client.perform(&get(&url, true)).await.unwrap_err();
            assert!(matches!(error, TransportError::Connect(_)), "{error:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            let hello = seen.lock().unwrap().first().cloned().expect("one connection");
            assert_eq!(hello.first(), Some(&0x16), "a TLS handshake record");
            assert!(hello.windows(b"sni-name.test".len()).any(|window| window == b"sni-name.test"));
        })
        .await
        .expect("the test took longer than 10 s");
    }
}
