//! The user agent: who performs the requests a browser would ([`Performer::UserAgent`](mcp_oauth_core::machine::Performer::UserAgent)).
//!
//! Core asks for the authorization URL to be opened and expects the redirect it ends in back as a
//! `302` response whose `Location` is the callback URL; it then judges the callback itself
//! (`state`, `iss`, `code`). Two user agents are provided:
//!
//! - [`Headless`] ([`mcp_oauth_runtime`]'s, shared by every adapter) fetches the authorization URL with the [`HttpClient`] and returns its answer
//!   unfollowed. An authorization server that approves without a person (a conformance suite, the
//!   mock upstream) answers `302` straight away.
//! - [`LoopbackBrowser`] is for a person: it listens on `127.0.0.1:redirect_port` first, then
//!   prints the URL on standard error, waits (bounded) for the browser to come back to the redirect
//!   path, tells the browser it may close the tab, and returns a synthesized `302` to the full
//!   callback URL.
//!
//! [`Io`] ([`mcp_oauth_runtime::Io`] with this crate's [`HttpClient`]) puts the client and a user
//! agent together and implements [`Perform`](mcp_oauth_runtime::Perform) for the driver.

use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mcp_oauth_core::machine::{Outgoing, TransportError};
pub use mcp_oauth_runtime::io::{BoxFuture, Headless, UserAgent};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use url::Url;

#[cfg(doc)]
use crate::client::HttpClient;
pub use crate::runtime::Io;

/// Asks a person to open the URL and catches the browser's return on a loopback port.
#[derive(Clone, Debug)]
pub struct LoopbackBrowser {
    /// The port of the `redirect_uri` (`http://127.0.0.1:{port}/...` or `http://localhost:{port}/...`).
    pub redirect_port: u16,
    /// How long to wait for the browser at most (also bounded by the request's timeout).
    pub wait: Duration,
}

impl LoopbackBrowser {
    /// Waits at most five minutes on `127.0.0.1:redirect_port`.
    pub fn new(redirect_port: u16) -> Self {
        Self { redirect_port, wait: Duration::from_secs(300) }
    }
}

const CLOSE_TAB_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>mcp-oauth</title></head>\
<body><p>mcp-oauth received the authorization response. You can close this tab.</p></body></html>";

impl<C> UserAgent<C> for LoopbackBrowser {
    fn navigate<'a>(
        &'a self,
        outgoing: Outgoing,
        _client: &'a C,
    ) -> BoxFuture<'a, Result<Response<Vec<u8>>, TransportError>> {
        Box::pin(async move {
            let wait = self.wait.min(outgoing.limits().timeout);
            let (authorization_url, redirect_uri) = self.redirect_target(&outgoing)?;
            let bind: SocketAddr = match redirect_uri.host() {
                Some(url::Host::Ipv6(_)) => (Ipv6Addr::LOCALHOST, self.redirect_port).into(),
                _ => ([127, 0, 0, 1], self.redirect_port).into(),
            };
            let listener = TcpListener::bind(bind)
                .await
                .map_err(|error| TransportError::Connect(format!("cannot listen on {bind}: {error}")))?;
            eprintln!(
                "Open this URL in your browser to authorize (waiting up to {} s for the redirect to {}):\n\n  {authorization_url}\n",
                wait.as_secs(),
                bind
            );
            let callback = tokio::time::timeout(wait, catch_redirect(listener, &redirect_uri))
                .await
                .map_err(|_elapsed| TransportError::Timeout)??;
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, callback.as_str())
                .body(Vec::new())
                .map_err(|error| TransportError::Connect(format!("cannot build the redirect: {error}")))
        })
    }
}

impl LoopbackBrowser {
    /// The URL to open and its `redirect_uri`, which must point at this listener.
    fn redirect_target(&self, outgoing: &Outgoing) -> Result<(Url, Url), TransportError> {
        if outgoing.request().method() != Method::GET {
            return Err(TransportError::Unsupported("a browser only opens GET requests".into()));
        }
        let url = Url::parse(&outgoing.request().uri().to_string())
            .map_err(|_| TransportError::Unsupported("the authorization URL is not absolute".into()))?;
        let redirect_uri = url
            .query_pairs()
            .find(|(name, _)| name == "redirect_uri")
            .and_then(|(_, value)| Url::parse(&value).ok())
            .ok_or_else(|| TransportError::Unsupported("the authorization URL has no redirect_uri".into()))?;
        let loopback = match redirect_uri.host() {
            Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if redirect_uri.scheme() != "http"
            || !loopback
            || redirect_uri.port_or_known_default() != Some(self.redirect_port)
        {
            return Err(TransportError::Unsupported(format!(
                "the redirect_uri must be http on loopback port {}",
                self.redirect_port
            )));
        }
        Ok((url, redirect_uri))
    }
}

/// Serves the loopback listener until one `GET` of the redirect path arrives; returns the full
/// callback URL. Other paths get 404; the connection that carried the callback is given a moment
/// to deliver the "close this tab" page.
async fn catch_redirect(listener: TcpListener, redirect_uri: &Url) -> Result<Url, TransportError> {
    let (sender, mut receiver) = oneshot::channel::<String>();
    let sender = Arc::new(Mutex::new(Some(sender)));
    let path = redirect_uri.path().to_owned();
    let mut connections = JoinSet::new();
    let query = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = accepted
                    .map_err(|error| TransportError::Connect(format!("accepting the browser failed: {error}")))?;
                let sender = Arc::clone(&sender);
                let path = path.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let answer = answer_browser(&request, &path, &sender);
                    async move { Ok::<_, Infallible>(answer) }
                });
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "browser connection ended with an error");
                    }
                });
            }
            query = &mut receiver => {
                break query.map_err(|_| TransportError::Connect("the loopback listener stopped".into()))?;
            }
        }
        while connections.try_join_next().is_some() {}
    };
    drop(listener);
    // Let the page reach the browser; idle connections are cut after a short grace.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    let mut callback = redirect_uri.clone();
    callback.set_query(if query.is_empty() { None } else { Some(&query) });
    Ok(callback)
}

fn answer_browser(
    request: &Request<Incoming>,
    path: &str,
    sender: &Mutex<Option<oneshot::Sender<String>>>,
) -> Response<Full<Bytes>> {
    let page = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
        response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
    };
    if request.method() != Method::GET || request.uri().path() != path {
        return page(StatusCode::NOT_FOUND, "<!doctype html><p>Not found.</p>");
    }
    let taken = sender.lock().unwrap_or_else(PoisonError::into_inner).take();
    match taken {
        Some(sender) => {
            let _ = sender.send(request.uri().query().unwrap_or_default().to_owned());
            page(StatusCode::OK, CLOSE_TAB_PAGE)
        }
        None => page(
            StatusCode::CONFLICT,
            "<!doctype html><p>This authorization response was already received.</p>",
        ),
    }
}
