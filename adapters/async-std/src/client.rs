//! The HTTP client that performs [`Outgoing`] requests under their [`Limits`], over surf.
//!
//! One surf client (its `h1-client` backend: async-h1, HTTPS through the system OpenSSL via
//! async-native-tls) carries every request, **one connection per request**: http-client's
//! keep-alive pool is keyed by socket address alone, so it would hand a TLS connection opened
//! (and verified) for one host name to another name served from the same address, and it takes
//! back connections whose response was not read to the end (a body past the cap, a timeout),
//! where the next answer would be read from the leftovers. Turning the pool off closes both. Requests and responses are
//! converted between `http` 1.x (what core speaks) and http-types (what surf speaks) by hand, at
//! this edge, with these rules:
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
//! - a host name is resolved with async-std ([`async_std::net::ToSocketAddrs`]) and **every**
//!   address it resolves to must pass [`permits_address`], or the request fails with
//!   [`TransportError::Blocked`] without connecting. Surf's h1 backend resolves the name again
//!   itself and picks the address (it cannot be pinned to the checked one), so a DNS answer that
//!   changes between the two lookups (DNS rebinding) is not caught: a time-of-check to
//!   time-of-use gap the tokio adapter does not have. Requiring every address to pass (the tokio
//!   adapter drops refused ones and connects to the rest) keeps the gap as narrow as it can be;
//! - the whole exchange, connect to last body byte, runs under [`Limits::timeout`]
//!   ([`async_std::future::timeout`]); the body is read in chunks and the request fails as soon as
//!   it exceeds [`Limits::max_body_bytes`] (at once when the declared length does);
//! - redirects are never followed: surf follows them only with its `Redirect` middleware, which
//!   this client never adds, so a 3xx is returned as it is.

use std::fmt;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use async_std::io::ReadExt;
use futures_util::FutureExt;
use http::{Request, Response, header};
use mcp_oauth_core::fetch_policy::permits_address;
use mcp_oauth_core::machine::{Limits, Outgoing, TransportError};
use surf::http::headers::{HeaderName as TypesHeaderName, HeaderValue as TypesHeaderValue};
use surf::http::{Method as TypesMethod, Request as TypesRequest, Version};

/// The longest error message passed on; the rest is cut.
const MAX_MESSAGE_CHARS: usize = 300;
/// How much of the body is read at a time.
const CHUNK_BYTES: usize = 16 * 1024;
/// What async-h1 says when the status line is not `HTTP/1.1`.
const UNSUPPORTED_VERSION: &str = "Unsupported HTTP version";

/// Performs requests for core's machines over surf; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    surf: surf::Client,
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
    /// (feature `h1-client`) trusting the system's root certificates through OpenSSL.
    pub fn new() -> Result<Self, ClientSetupError> {
        let config = surf::Config::new()
            .set_http_keep_alive(false)
            .set_tcp_no_delay(true)
            // The whole exchange is bounded per request, by `perform`.
            .set_timeout(None);
        let surf = surf::Client::try_from(config).map_err(|error| ClientSetupError(error.to_string()))?;
        Ok(Self { surf })
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
        let request = to_surf_request(outgoing.request())?;
        tracing::debug!(
            purpose = outgoing.purpose(),
            method = %outgoing.request().method(),
            host,
            "performing request"
        );
        let exchange = async {
            check_destination(host, port, limits.allow_private_addresses).await?;
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
        let result = match async_std::future::timeout(limits.timeout, exchange).await {
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

/// The address of an IP-literal host (`127.0.0.1`, `[::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Applies the fetch policy before connecting: an IP literal directly, a host name through every
/// address async-std resolves it to (all must pass; see the module docs).
async fn check_destination(host: &str, port: u16, allow_private: bool) -> Result<(), TransportError> {
    if let Some(ip) = ip_literal(host) {
        return permits_address(ip, allow_private)
            .map_err(|error| TransportError::Blocked(error.to_string()));
    }
    let resolved = async_std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .await
        .map_err(|error| TransportError::Connect(cut(format!("DNS lookup failed: {error}"))))?;
    let mut any = false;
    for address in resolved {
        any = true;
        if let Err(error) = permits_address(address.ip(), allow_private) {
            tracing::debug!(host, %error, "resolved address refused by the fetch policy");
            return Err(TransportError::Blocked(format!("host `{host}`: {error}")));
        }
    }
    if any { Ok(()) } else { Err(TransportError::Connect("the host name resolved to no address".into())) }
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
    let limit = limits.max_body_bytes;
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
    if declared.is_some_and(|length| length > limit) {
        return Err(TransportError::BodyTooLarge { limit });
    }
    let mut body = response.take_body();
    let mut collected = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let read = body.read(&mut chunk).await.map_err(|error| {
            TransportError::Connect(cut(format!("reading the response body failed: {error}")))
        })?;
        if read == 0 {
            break;
        }
        if collected.len().saturating_add(read) > limit {
            return Err(TransportError::BodyTooLarge { limit });
        }
        collected.extend_from_slice(&chunk[..read]);
    }
    builder
        .body(collected)
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

    #[async_std::test]
    async fn name_resolution_checks_every_address() {
        let blocked = check_destination("localhost", 80, false).await.unwrap_err();
        assert!(matches!(blocked, TransportError::Blocked(_)), "{blocked}");
        check_destination("localhost", 80, true).await.unwrap();
        let metadata = check_destination("169.254.169.254", 80, true).await.unwrap_err();
        assert!(matches!(metadata, TransportError::Blocked(_)));
    }
}
