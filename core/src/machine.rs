//! The sans-IO contract every multi-step protocol in this crate follows.
//!
//! A protocol is a value you feed and drain, in the style of quinn-proto and str0m: the driver
//! calls [`Machine::poll`] with the current time and gets a [`Step`]: requests to perform, a
//! deadline to wait for, or the outcome. Each answer goes back through
//! [`Machine::handle_response`]. Time is an argument ([`Instant`]), so a test can run a whole
//! exchange in a microsecond with scripted responses, and each adapter writes **one** generic
//! driver loop that runs any machine.
//!
//! # The drain contract
//!
//! What a driver does, and what it may rely on:
//!
//! - **Call `poll(now)`** after construction, after every `handle_response`, and whenever a
//!   deadline the machine reported has passed. Keep calling it after a `Send` until it returns
//!   `Wait` or `Done`.
//! - **`Send(requests)`**: perform them (concurrently if several) and feed each answer, or the
//!   [`TransportError`] that stopped it, to `handle_response(id, result, now)`.
//! - **`Wait(Some(deadline))`**: poll again when an answer arrives or when `now >= deadline`,
//!   whichever comes first.
//! - **`Wait(None)`**: the machine has **nothing in flight** and no timer: nothing can ever wake it.
//!   A driver treats it as a stall (a bug in the machine), not as a reason to wait.
//! - **`Done(outcome)`**: the run is over; requests still running can be dropped. Polling again
//!   returns `Wait(None)`.
//!
//! What the machine guarantees, so that a driver which forgets a timeout cannot hang:
//!
//! - **Machines own their deadlines** (quinn's `handle_timeout`, folded into `poll`). A request
//!   emitted by `poll(now)` is due at `now + limits.timeout`. While any request is in flight the
//!   machine returns `Wait(Some(d))` with `d` no later than the earliest of those deadlines.
//! - **A deadline passing is an input.** `poll(now)` at or after a request's deadline, with no
//!   answer fed for it, makes the machine act exactly as if `handle_response(id,
//!   Err(TransportError::Timeout), now)` had been called. An answer fed for that request later is
//!   ignored, as is an answer for an id the machine never sent or already had answered.
//!
//! The bookkeeping lives in one place, [`InFlight`]: a machine hands every `Step` it returns
//! through [`InFlight::track`], asks [`InFlight::expire`] at the top of `poll` which requests ran
//! out of time, and lets [`InFlight::answer`] decide whether an answer still counts. [`OneShot`],
//! discovery and the session machine are built that way. An adapter may still enforce
//! [`Limits::timeout`] itself (it cancels the socket sooner); the machine does not depend on it.
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
//!             // A real driver sleeps until the deadline or the next answer, then polls again.
//!             Step::Wait(Some(_deadline)) => continue,
//!             Step::Wait(None) => panic!("a machine waiting for nothing can never finish"),
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
    /// Perform these requests (concurrently if several), then feed each answer back; each is due
    /// `limits.timeout` after the `poll` that returned it.
    Send(Vec<Outgoing>),
    /// Nothing to send; poll again on an answer or at this deadline. `Some` whenever a request is
    /// in flight (no later than its deadline); `None` only when nothing is in flight and no timer
    /// is set, so nothing can wake the machine.
    Wait(Option<Instant>),
    /// The outcome; polling again is a logic error and returns `Wait(None)`.
    Done(T),
}

/// A sans-IO protocol state machine.
pub trait Machine {
    /// What the machine produces.
    type Outcome;

    /// Advances the machine; called after construction, after every answer and at deadlines.
    ///
    /// A request whose deadline is at or before `now` and which has no answer is treated as
    /// answered with [`TransportError::Timeout`] (see the module docs).
    fn poll(&mut self, now: Instant) -> Step<Self::Outcome>;

    /// Feeds the answer to request `id` (a response, or why there is none). An answer for a
    /// request that is not in flight (never sent, already answered, or past its deadline at an
    /// earlier `poll`) is ignored.
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

/// The requests a machine has sent and not yet had answered, each with its deadline: the one
/// piece that makes a machine keep the deadline half of the drain contract (module docs).
///
/// Use it in three places:
///
/// ```ignore
/// fn poll(&mut self, now: Instant) -> Step<Outcome> {
///     for id in self.in_flight.expire(now) {
///         self.on_answer(id, Err(TransportError::Timeout)); // the deadline passed: a timeout
///     }
///     let step = self.advance(now);
///     self.in_flight.track(step, now) // records sends, reports the earliest deadline
/// }
///
/// fn handle_response(&mut self, id: RequestId, result: Result<Response, TransportError>, now: Instant) {
///     if self.in_flight.answer(id) {
///         self.on_answer(id, result); // late, unknown and repeated answers never get here
///     }
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    /// Request id and deadline, in the order they were sent (a machine has a handful at most).
    requests: Vec<(RequestId, Instant)>,
}

impl InFlight {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Passes `step` (what the machine's `poll(now)` decided) through, keeping the contract:
    ///
    /// - `Send`: each request is recorded as in flight, due at `now + limits.timeout`;
    /// - `Wait(own)`: becomes `Wait` of the earlier of `own` (a timer the machine keeps itself) and
    ///   the earliest in-flight deadline, so it is `Wait(None)` only when nothing is in flight;
    /// - `Done`: the run is over and every request still in flight is forgotten.
    pub fn track<T>(&mut self, step: Step<T>, now: Instant) -> Step<T> {
        match step {
            Step::Send(requests) => {
                for outgoing in &requests {
                    self.requests.push((outgoing.id(), now.plus(outgoing.limits().timeout)));
                }
                Step::Send(requests)
            }
            Step::Wait(own) => {
                let deadline = match (own, self.deadline()) {
                    (Some(own), Some(request)) => Some(own.min(request)),
                    (own, request) => own.or(request),
                };
                Step::Wait(deadline)
            }
            Step::Done(outcome) => {
                self.requests.clear();
                Step::Done(outcome)
            }
        }
    }

    /// Whether an answer for `id` counts: true (and `id` is no longer in flight) if it was in
    /// flight; false for a request never sent, already answered, or already timed out.
    pub fn answer(&mut self, id: RequestId) -> bool {
        let before = self.requests.len();
        self.requests.retain(|&(request, _)| request != id);
        self.requests.len() != before
    }

    /// The requests whose deadline is at or before `now`, in the order they were sent; they are
    /// no longer in flight, and the machine must treat each as answered with
    /// [`TransportError::Timeout`].
    pub fn expire(&mut self, now: Instant) -> Vec<RequestId> {
        let mut expired = Vec::new();
        self.requests.retain(|&(id, deadline)| {
            let due = deadline <= now;
            if due {
                expired.push(id);
            }
            !due
        });
        expired
    }

    /// The earliest deadline of a request in flight, `None` when nothing is in flight.
    pub fn deadline(&self) -> Option<Instant> {
        self.requests.iter().map(|&(_, deadline)| deadline).min()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        self.requests.len()
    }
}

/// A machine that performs one request and maps its answer: the building block for token,
/// registration and refresh exchanges. The request is due `limits.timeout` after the first
/// `poll`; past that, the answer is [`TransportError::Timeout`].
pub struct OneShot<F> {
    outgoing: Option<Outgoing>,
    map: Option<F>,
    result: Option<Result<http::Response<Vec<u8>>, TransportError>>,
    in_flight: InFlight,
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
        let outgoing = Outgoing::new(RequestId(1), request, limits, Performer::Client, purpose)?;
        Ok(Self { outgoing: Some(outgoing), map: Some(map), result: None, in_flight: InFlight::new() })
    }
}

impl<T, F: FnOnce(Result<http::Response<Vec<u8>>, TransportError>) -> T> Machine for OneShot<F> {
    type Outcome = T;

    fn poll(&mut self, now: Instant) -> Step<T> {
        if !self.in_flight.expire(now).is_empty() {
            self.result = Some(Err(TransportError::Timeout));
        }
        let step = if let Some(outgoing) = self.outgoing.take() {
            Step::Send(vec![outgoing])
        } else {
            match (self.result.take(), self.map.take()) {
                (Some(result), Some(map)) => Step::Done(map(result)),
                (result, map) => {
                    self.result = result;
                    self.map = map;
                    Step::Wait(None)
                }
            }
        };
        self.in_flight.track(step, now)
    }

    fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<http::Response<Vec<u8>>, TransportError>,
        _now: Instant,
    ) {
        if self.in_flight.answer(id) {
            self.result = Some(result);
        }
    }
}

/// A machine run inside another: its request ids are mapped into the parent's id space so the
/// parent can forward answers without collisions.
///
/// Deadlines pass through unchanged: the inner machine keeps its own (its `Wait` is forwarded as
/// is), and the parent tracks the renumbered requests in its own [`InFlight`] like any other, so
/// a late answer is dropped by the parent before it reaches the child.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(millis: u64) -> Instant {
        Instant::from_millis(millis)
    }

    fn limits(timeout_ms: u64) -> Limits {
        Limits { timeout: Duration::from_millis(timeout_ms), ..Limits::METADATA }
    }

    fn outgoing(id: u64, timeout_ms: u64) -> Outgoing {
        let request = http::Request::get("https://example.com/x").body(Vec::new()).unwrap();
        Outgoing::new(RequestId(id), request, limits(timeout_ms), Performer::Client, "test").unwrap()
    }

    type Answer = Result<http::Response<Vec<u8>>, TransportError>;

    /// A `OneShot` whose outcome is the answer's status.
    fn one_shot(timeout_ms: u64) -> OneShot<impl FnOnce(Answer) -> Result<u16, TransportError>> {
        let request = http::Request::get("https://example.com/token").body(Vec::new()).unwrap();
        OneShot::new(request, limits(timeout_ms), "token", |result: Answer| {
            result.map(|response| response.status().as_u16())
        })
        .unwrap()
    }

    #[test]
    fn the_tracker_reports_the_earliest_deadline_and_expires_in_send_order() {
        let mut in_flight = InFlight::new();
        assert!(matches!(in_flight.track::<()>(Step::Wait(None), at(0)), Step::Wait(None)));
        let sent = in_flight.track::<()>(Step::Send(vec![outgoing(1, 300), outgoing(2, 100)]), at(50));
        assert!(matches!(sent, Step::Send(ref requests) if requests.len() == 2));
        assert_eq!((in_flight.len(), in_flight.deadline()), (2, Some(at(150))));
        // A machine's own timer wins when earlier; the request deadline when that is earlier.
        assert!(
            matches!(in_flight.track::<()>(Step::Wait(Some(at(120))), at(60)), Step::Wait(Some(t)) if t == at(120))
        );
        assert!(
            matches!(in_flight.track::<()>(Step::Wait(Some(at(900))), at(60)), Step::Wait(Some(t)) if t == at(150))
        );
        assert!(
            matches!(in_flight.track::<()>(Step::Wait(None), at(60)), Step::Wait(Some(t)) if t == at(150))
        );
        assert_eq!(in_flight.expire(at(149)), []);
        assert_eq!(in_flight.expire(at(350)), [RequestId(1), RequestId(2)]);
        assert!(in_flight.is_empty());
        assert!(!in_flight.answer(RequestId(2)), "an answer after the deadline no longer counts");
        assert!(matches!(in_flight.track::<()>(Step::Wait(None), at(350)), Step::Wait(None)));
    }

    #[test]
    fn the_tracker_counts_each_answer_once_and_forgets_everything_when_done() {
        let mut in_flight = InFlight::new();
        let _ = in_flight.track::<()>(Step::Send(vec![outgoing(1, 100), outgoing(2, 100)]), at(0));
        assert!(in_flight.answer(RequestId(1)));
        assert!(!in_flight.answer(RequestId(1)), "a repeated answer");
        assert!(!in_flight.answer(RequestId(7)), "an id never sent");
        assert_eq!(in_flight.deadline(), Some(at(100)));
        assert!(matches!(in_flight.track(Step::Done(()), at(10)), Step::Done(())));
        assert!(in_flight.is_empty() && in_flight.deadline().is_none());
    }

    #[test]
    fn a_request_in_flight_reports_its_deadline_and_times_out_unanswered() {
        let mut machine = one_shot(5_000);
        assert!(matches!(machine.poll(at(1_000)), Step::Send(_)));
        for now in [1_000, 3_000, 5_999] {
            match machine.poll(at(now)) {
                Step::Wait(Some(deadline)) => assert_eq!(deadline, at(6_000), "at {now}"),
                other => panic!("at {now}: {other:?}"),
            }
        }
        match machine.poll(at(6_000)) {
            Step::Done(outcome) => assert_eq!(outcome, Err(TransportError::Timeout)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_late_answer_is_ignored() {
        let mut machine = one_shot(100);
        let Step::Send(requests) = machine.poll(at(0)) else { panic!("a request first") };
        let id = requests[0].id();
        assert!(matches!(machine.poll(at(250)), Step::Done(Err(TransportError::Timeout))));
        machine.handle_response(id, Ok(http::Response::new(Vec::new())), at(300));
        assert!(matches!(machine.poll(at(300)), Step::Wait(None)), "no second outcome, nothing in flight");
    }

    #[test]
    fn an_answer_before_the_deadline_wins() {
        let mut machine = one_shot(100);
        let Step::Send(requests) = machine.poll(at(0)) else { panic!("a request first") };
        machine.handle_response(requests[0].id(), Ok(http::Response::new(Vec::new())), at(99));
        // Polled late, but the answer was already in: it counts.
        assert!(matches!(machine.poll(at(500)), Step::Done(Ok(200))));
    }

    #[test]
    fn an_answer_for_another_id_is_ignored() {
        let mut machine = one_shot(100);
        assert!(matches!(machine.poll(at(0)), Step::Send(_)));
        machine.handle_response(RequestId(99), Ok(http::Response::new(Vec::new())), at(10));
        assert!(matches!(machine.poll(at(10)), Step::Wait(Some(t)) if t == at(100)));
    }
}
