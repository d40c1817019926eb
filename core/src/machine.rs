//! The sans-IO contract every multi-step protocol in this crate follows.
//!
//! A protocol is a value you feed and drain, in the style of quinn-proto and str0m: the driver
//! calls [`Machine::poll`] with the current time and gets a [`Step`]: requests to perform, a
//! deadline to wait for, or the outcome. Each answer goes back through
//! [`Machine::handle_response`]. Time is an argument ([`Instant`]), so a test can run a whole
//! exchange in a microsecond with scripted responses, and each adapter writes **one** generic
//! driver loop that runs any machine.
//!
//! ```
//! use mcp_oauth_core::machine::{Instant, Machine, Step};
//!
//! fn drive<M: Machine>(machine: &mut M, mut perform: impl FnMut(&http::Request<Vec<u8>>) -> http::Response<Vec<u8>>) -> M::Outcome {
//!     let now = Instant::ZERO;
//!     loop {
//!         match machine.poll(now) {
//!             Step::Send(requests) => for outgoing in requests {
//!                 let response = perform(outgoing.request());
//!                 machine.handle_response(outgoing.id(), Ok(response), now);
//!             },
//!             Step::Wait(_) => continue, // a real driver sleeps until the deadline or an answer
//!             Step::Done(outcome) => return outcome,
//!         }
//!     }
//! }
//! ```

use std::fmt;
use std::time::Duration;

/// A point in time on the driver's monotonic clock, in milliseconds since an epoch the driver picks.
///
/// Core never reads a clock; adapters convert their runtime's instant into this value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Self = Self(0);

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This instant moved forward by `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Identifies one request a machine asked for, so its answer can be routed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who performs a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Performer {
    /// The adapter's HTTP client.
    Client,
    /// The user's browser: the adapter opens the URL (or, headless, fetches it without following
    /// redirects) and answers with the redirect it ends in, as a `302` with `Location`.
    UserAgent,
}

/// What an adapter must enforce for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The response body is cut off (and the request failed) past this many bytes.
    pub max_body_bytes: usize,
    /// The whole exchange, connect to last body byte, must finish within this.
    pub timeout: Duration,
    /// Whether the target may resolve to loopback or private addresses (never link-local or
    /// cloud metadata addresses); see [`crate::fetch_policy`].
    pub allow_private_addresses: bool,
}

impl Limits {
    /// Limits for metadata documents: 256 KiB, 10 s.
    pub const METADATA: Self =
        Self { max_body_bytes: 256 * 1024, timeout: Duration::from_secs(10), allow_private_addresses: false };
}

/// One request a machine wants performed. Redirects are never followed: a 3xx is an answer.
///
/// The only way to build one is [`Outgoing::new`], which applies the fetch policy
/// ([`crate::fetch_policy::check_url`]) to the request's target under its limits, so no machine can
/// emit a request to a refused URL; the fields are read through accessors and cannot be changed
/// afterwards (only [`Child`] renumbers the id).
#[derive(Debug)]
pub struct Outgoing {
    id: RequestId,
    request: http::Request<Vec<u8>>,
    limits: Limits,
    performer: Performer,
    purpose: &'static str,
}

impl Outgoing {
    /// A request to perform, refused unless its target is an absolute URL the fetch policy allows
    /// under `limits.allow_private_addresses` (https, or http for a local server; no userinfo; an
    /// IP-literal host through the address table; `localhost` only for a local server).
    pub fn new(
        id: RequestId,
        request: http::Request<Vec<u8>>,
        limits: Limits,
        performer: Performer,
        purpose: &'static str,
    ) -> Result<Self, crate::fetch_policy::FetchPolicyError> {
        let target = request.uri().to_string();
        let url = url::Url::parse(&target)
            .map_err(|_| crate::fetch_policy::FetchPolicyError::InvalidUrl { target: target.clone() })?;
        crate::fetch_policy::check_url(&url, limits.allow_private_addresses)?;
        Ok(Self { id, request, limits, performer, purpose })
    }

    /// Builds a request **without** the fetch policy, for adapter tests that check the adapter's
    /// own address filter (defence in depth). Only with the `test-util` feature; never in a
    /// production build.
    #[cfg(feature = "test-util")]
    pub fn unchecked(
        id: RequestId,
        request: http::Request<Vec<u8>>,
        limits: Limits,
        performer: Performer,
        purpose: &'static str,
    ) -> Self {
        Self { id, request, limits, performer, purpose }
    }

    /// Routes the answer back to the machine.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The request; the body is complete.
    pub fn request(&self) -> &http::Request<Vec<u8>> {
        &self.request
    }

    /// What the adapter enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Who performs it.
    pub fn performer(&self) -> Performer {
        self.performer
    }

    /// A short label for logs and traces (`"protected_resource_metadata"`).
    pub fn purpose(&self) -> &'static str {
        self.purpose
    }

    /// The request, taken out (the policy was applied when it was built).
    pub fn into_request(self) -> http::Request<Vec<u8>> {
        self.request
    }
}

/// Why a request produced no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The exchange did not finish within [`Limits::timeout`].
    #[error("timed out")]
    Timeout,
    /// The body exceeded [`Limits::max_body_bytes`].
    #[error("response body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The fetch policy refused the destination (e.g. a link-local address).
    #[error("destination refused by the fetch policy: {0}")]
    Blocked(String),
    /// Connecting, TLS or reading failed.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The adapter cannot perform this kind of request (e.g. no browser in headless mode).
    #[error("cannot perform the request: {0}")]
    Unsupported(String),
}

impl crate::Reason for TransportError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Blocked(_) => "blocked",
            Self::Connect(_) => "connect_failed",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

/// What a machine wants next.
#[derive(Debug)]
pub enum Step<T> {
    /// Perform these requests (concurrently if several), then feed each answer back.
    Send(Vec<Outgoing>),
    /// Nothing to send; poll again on an answer or at this deadline.
    Wait(Option<Instant>),
    /// The outcome; polling again is a logic error and returns `Wait(None)`.
    Done(T),
}

/// A sans-IO protocol state machine.
pub trait Machine {
    /// What the machine produces.
    type Outcome;

    /// Advances the machine; called after construction, after every answer and at deadlines.
    fn poll(&mut self, now: Instant) -> Step<Self::Outcome>;

    /// Feeds the answer to request `id` (a response, or why there is none).
    fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<http::Response<Vec<u8>>, TransportError>,
        now: Instant,
    );
}

/// Hands out request ids in order; each machine owns one.
#[derive(Clone, Debug, Default)]
pub struct RequestIds(u64);

impl RequestIds {
    /// The next unused id.
    pub fn next_id(&mut self) -> RequestId {
        self.0 += 1;
        RequestId(self.0)
    }
}

/// A machine that performs one request and maps its answer: the building block for token,
/// registration and refresh exchanges.
pub struct OneShot<F> {
    outgoing: Option<Outgoing>,
    id: RequestId,
    map: Option<F>,
    result: Option<Result<http::Response<Vec<u8>>, TransportError>>,
}

impl<F> OneShot<F> {
    /// Sends `request` under `limits`, then hands the answer to `map`; refused (and nothing is
    /// ever sent) when the fetch policy refuses the request's target.
    pub fn new(
        request: http::Request<Vec<u8>>,
        limits: Limits,
        purpose: &'static str,
        map: F,
    ) -> Result<Self, crate::fetch_policy::FetchPolicyError> {
        let id = RequestId(1);
        let outgoing = Outgoing::new(id, request, limits, Performer::Client, purpose)?;
        Ok(Self { outgoing: Some(outgoing), id, map: Some(map), result: None })
    }
}

impl<T, F: FnOnce(Result<http::Response<Vec<u8>>, TransportError>) -> T> Machine for OneShot<F> {
    type Outcome = T;

    fn poll(&mut self, _now: Instant) -> Step<T> {
        if let Some(outgoing) = self.outgoing.take() {
            return Step::Send(vec![outgoing]);
        }
        match (self.result.take(), self.map.take()) {
            (Some(result), Some(map)) => Step::Done(map(result)),
            (result, map) => {
                self.result = result;
                self.map = map;
                Step::Wait(None)
            }
        }
    }

    fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<http::Response<Vec<u8>>, TransportError>,
        _now: Instant,
    ) {
        if id == self.id && self.result.is_none() {
            self.result = Some(result);
        }
    }
}

/// A machine run inside another: its request ids are mapped into the parent's id space so the
/// parent can forward answers without collisions.
pub struct Child<M> {
    /// The inner machine.
    pub machine: M,
    ids: std::collections::HashMap<RequestId, RequestId>,
}

impl<M: Machine> Child<M> {
    /// Wraps `machine`.
    pub fn new(machine: M) -> Self {
        Self { machine, ids: std::collections::HashMap::new() }
    }

    /// Polls the inner machine, renumbering its requests with `ids`.
    pub fn poll(&mut self, now: Instant, ids: &mut RequestIds) -> Step<M::Outcome> {
        match self.machine.poll(now) {
            Step::Send(requests) => Step::Send(
                requests
                    .into_iter()
                    .map(|mut outgoing| {
                        let outer = ids.next_id();
                        self.ids.insert(outer, outgoing.id);
                        outgoing.id = outer;
                        outgoing
                    })
                    .collect(),
            ),
            Step::Wait(deadline) => Step::Wait(deadline),
            Step::Done(outcome) => Step::Done(outcome),
        }
    }

    /// Forwards an answer if `id` belongs to this child; returns whether it did.
    pub fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<http::Response<Vec<u8>>, TransportError>,
        now: Instant,
    ) -> bool {
        match self.ids.remove(&id) {
            Some(inner) => {
                self.machine.handle_response(inner, result, now);
                true
            }
            None => false,
        }
    }
}
