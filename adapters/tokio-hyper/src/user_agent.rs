//! The user agent: who performs the requests a browser would ([`Performer::UserAgent`]).
//!
//! Core asks for the authorization URL to be opened and expects the redirect it ends in back as a
//! `302` response whose `Location` is the callback URL; it then judges the callback itself
//! (`state`, `iss`, `code`). Two user agents are provided:
//!
//! - [`Headless`] fetches the authorization URL with the [`HttpClient`] and returns its answer
//!   unfollowed. An authorization server that approves without a person (a conformance suite, the
//!   mock upstream) answers `302` straight away.
//! - [`LoopbackBrowser`] is for a person: it listens on `127.0.0.1:redirect_port` first, then
//!   prints the URL on standard error, waits (bounded) for the browser to come back to the redirect
//!   path, tells the browser it may close the tab, and returns a synthesized `302` to the full
//!   callback URL.
//!
//! [`Io`] puts the client and a user agent together and implements [`Perform`] for the driver.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mcp_oauth_core::machine::{Outgoing, Performer, TransportError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use url::Url;

use crate::client::HttpClient;
use crate::driver::Perform;

/// A boxed, sendable future, so that [`UserAgent`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Performs [`Performer::UserAgent`] requests (opening the authorization URL).
pub trait UserAgent: Send + Sync {
    /// Performs `outgoing` and answers with the redirect it ends in (a `302` with `Location`), or
    /// why there is none. `client` is there for user agents that fetch the URL themselves.
    fn navigate<'a>(
        &'a self,
        outgoing: Outgoing,
        client: &'a HttpClient,
    ) -> BoxFuture<'a, Result<Response<Vec<u8>>, TransportError>>;
}

/// Fetches the URL with the HTTP client, under the request's limits, and returns the answer as it
/// is (a `302` from an authorization server that approves without a person).
#[derive(Clone, Copy, Debug, Default)]
pub struct Headless;

impl UserAgent for Headless {
    fn navigate<'a>(
        &'a self,
        outgoing: Outgoing,
        client: &'a HttpClient,
    ) -> BoxFuture<'a, Result<Response<Vec<u8>>, TransportError>> {
        Box::pin(async move { client.perform(&outgoing).await })
    }
}

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

impl UserAgent for LoopbackBrowser {
    fn navigate<'a>(
        &'a self,
        outgoing: Outgoing,
        _client: &'a HttpClient,
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

/// The driver's I/O: client requests go to the [`HttpClient`], browser requests to the
/// [`UserAgent`].
pub struct Io {
    client: HttpClient,
    user_agent: Box<dyn UserAgent>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").field("client", &self.client).finish_non_exhaustive()
    }
}

impl Io {
    /// Routes client requests to `client` and browser requests to `user_agent`.
    pub fn new(client: HttpClient, user_agent: Box<dyn UserAgent>) -> Self {
        Self { client, user_agent }
    }

    /// The HTTP client.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }
}

impl Perform for Io {
    async fn perform(&self, outgoing: Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        match outgoing.performer() {
            Performer::Client => self.client.perform(&outgoing).await,
            Performer::UserAgent => self.user_agent.navigate(outgoing, &self.client).await,
        }
    }
}
