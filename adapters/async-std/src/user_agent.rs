//! The user agent: who performs the requests a browser would ([`Performer::UserAgent`]).
//!
//! Core asks for the authorization URL to be opened and expects the redirect it ends in back as a
//! `302` response whose `Location` is the callback URL; it then judges the callback itself
//! (`state`, `iss`, `code`). [`Headless`] fetches the authorization URL with the [`HttpClient`]
//! and returns its answer unfollowed: an authorization server that approves without a person (a
//! conformance suite, the mock upstream) answers `302` straight away. A user agent for a person
//! (open a browser, catch the redirect on loopback) implements [`UserAgent`] the same way.
//!
//! [`Io`] puts the client and a user agent together and implements [`Perform`] for the driver.

use std::future::Future;
use std::pin::Pin;

use http::Response;
use mcp_oauth_core::machine::{Outgoing, Performer, TransportError};

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
/// is (a `302` from an authorization server that approves without a person); never follows it.
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
