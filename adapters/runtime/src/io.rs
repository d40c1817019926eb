//! The driver's I/O: who performs each request a machine asks for.
//!
//! Core marks every [`Outgoing`] with a [`Performer`]: the adapter's HTTP [`Client`] performs
//! [`Performer::Client`] requests, a [`UserAgent`] the ones a browser would
//! ([`Performer::UserAgent`]: opening the authorization URL). Core expects the redirect that
//! navigation ends in back as a `302` whose `Location` is the callback URL, and judges the
//! callback itself (`state`, `iss`, `code`). [`Headless`] fetches the URL with the client and
//! returns its answer unfollowed: an authorization server that approves without a person (a
//! conformance suite, the mock upstream) answers `302` straight away. A user agent for a person
//! (open a browser, catch the redirect on loopback) implements [`UserAgent`] the same way.
//!
//! [`Io`] puts a client and a user agent together and implements [`Perform`] for the driver.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use http::Response;
use mcp_oauth_core::machine::{Outgoing, Performer, TransportError};

use crate::driver::Perform;

/// A boxed, sendable future, so that [`UserAgent`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An adapter's HTTP client: performs one request under its limits.
///
/// An implementation enforces every [`Limits`](mcp_oauth_core::machine::Limits) field (the
/// timeout on the whole exchange, the body cap, the address policy checked before connecting)
/// and never follows a redirect: a 3xx is returned as it is.
/// [`perform_within_limits`](crate::limits::perform_within_limits) and
/// [`BodyLimit`](crate::limits::BodyLimit) do the shared part.
pub trait Client: Send + Sync {
    /// Performs `outgoing` and returns the response as it is, or why there is none.
    fn perform(
        &self,
        outgoing: &Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send;
}

/// Performs [`Performer::UserAgent`] requests (opening the authorization URL) next to the
/// client `C`.
pub trait UserAgent<C>: Send + Sync {
    /// Performs `outgoing` and answers with the redirect it ends in (a `302` with `Location`), or
    /// why there is none. `client` is there for user agents that fetch the URL themselves.
    fn navigate<'a>(
        &'a self,
        outgoing: Outgoing,
        client: &'a C,
    ) -> BoxFuture<'a, Result<Response<Vec<u8>>, TransportError>>;
}

/// Fetches the URL with the HTTP client, under the request's limits, and returns the answer as it
/// is (a `302` from an authorization server that approves without a person); never follows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Headless;

impl<C: Client> UserAgent<C> for Headless {
    fn navigate<'a>(
        &'a self,
        outgoing: Outgoing,
        client: &'a C,
    ) -> BoxFuture<'a, Result<Response<Vec<u8>>, TransportError>> {
        Box::pin(async move { client.perform(&outgoing).await })
    }
}

/// The driver's I/O: client requests go to the [`Client`] `C`, browser requests to the
/// [`UserAgent`].
pub struct Io<C> {
    client: C,
    user_agent: Box<dyn UserAgent<C>>,
}

impl<C: fmt::Debug> fmt::Debug for Io<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io").field("client", &self.client).finish_non_exhaustive()
    }
}

impl<C> Io<C> {
    /// Routes client requests to `client` and browser requests to `user_agent`.
    pub fn new(client: C, user_agent: Box<dyn UserAgent<C>>) -> Self {
        Self { client, user_agent }
    }

    /// The HTTP client.
    pub fn client(&self) -> &C {
        &self.client
    }
}

impl<C: Client> Perform for Io<C> {
    async fn perform(&self, outgoing: Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
        match outgoing.performer() {
            Performer::Client => self.client.perform(&outgoing).await,
            Performer::UserAgent => self.user_agent.navigate(outgoing, &self.client).await,
        }
    }
}
