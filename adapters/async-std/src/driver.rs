//! The one generic driver loop: runs any core [`Machine`] on async-std.
//!
//! [`drive`] polls the machine with the current time, starts every requested exchange at once
//! (they run concurrently inside the driver's task, in a
//! [`FuturesUnordered`]), feeds each answer back as soon as it arrives, sleeps until the machine's
//! deadline when it asks to wait, and returns the outcome. It makes no OAuth decision: what to
//! send, what an answer means and when to give up are the machine's. It behaves as the tokio
//! adapter's driver does, step for step.
//!
//! Time reaches core as an [`Instant`] from a [`Clock`]: milliseconds since a base
//! [`std::time::Instant`]. A machine that keeps instants across several runs must be driven with
//! the same clock each time ([`drive_with_clock`]).

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::Response;
use mcp_oauth_core::machine::{Instant, Machine, Outgoing, Step, TransportError};

/// Performs the requests a machine asks for; implemented by [`crate::user_agent::Io`].
///
/// An implementation enforces the request's [`Limits`](mcp_oauth_core::machine::Limits) (the
/// driver adds no timeout of its own) and routes it by its
/// [`Performer`](mcp_oauth_core::machine::Performer).
pub trait Perform {
    /// Performs one request and returns its response, or why there is none.
    fn perform(
        &self,
        outgoing: Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send;
}

/// Converts the monotonic clock into core's [`Instant`] (milliseconds since `base`).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: std::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self { base: std::time::Instant::now() }
    }

    /// A clock whose epoch is `base`.
    pub fn starting_at(base: std::time::Instant) -> Self {
        Self { base }
    }

    /// The current time as a core instant.
    pub fn now(&self) -> Instant {
        self.instant_of(std::time::Instant::now())
    }

    /// A monotonic instant as a core instant (the epoch if it is earlier than the base).
    pub fn instant_of(&self, at: std::time::Instant) -> Instant {
        let millis = at.saturating_duration_since(self.base).as_millis();
        Instant::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// How long from now until `at` (zero if it has passed).
    pub fn until(&self, at: Instant) -> Duration {
        at.saturating_since(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The driver could not reach an outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The machine asked to wait with no deadline while no request was in flight: nothing could
    /// ever wake it (a bug in the machine).
    #[error("the machine is waiting for nothing: no request in flight and no deadline")]
    Stalled,
}

/// Runs `machine` to its outcome with a fresh [`Clock`]; see the module docs.
pub async fn drive<M: Machine>(machine: &mut M, io: &impl Perform) -> Result<M::Outcome, DriveError> {
    drive_with_clock(machine, io, &Clock::new()).await
}

/// Runs `machine` to its outcome, reading time from `clock`.
///
/// Requests are started when the machine asks for them and run concurrently; answers are fed
/// back in the order they arrive. Requests still in flight when the machine is done are dropped
/// (cancelled).
pub async fn drive_with_clock<M: Machine>(
    machine: &mut M,
    io: &impl Perform,
    clock: &Clock,
) -> Result<M::Outcome, DriveError> {
    let mut in_flight = FuturesUnordered::new();
    loop {
        match machine.poll(clock.now()) {
            Step::Done(outcome) => return Ok(outcome),
            Step::Send(requests) => {
                for outgoing in requests {
                    let id = outgoing.id();
                    tracing::trace!(%id, purpose = outgoing.purpose(), "send");
                    let answer = io.perform(outgoing);
                    in_flight.push(async move { (id, answer.await) });
                }
            }
            Step::Wait(deadline) => {
                let answer = match (deadline, in_flight.is_empty()) {
                    (None, true) => return Err(DriveError::Stalled),
                    (None, false) => in_flight.next().await,
                    (Some(deadline), true) => {
                        async_std::task::sleep(clock.until(deadline)).await;
                        None
                    }
                    // `timeout` polls the answers first, then the deadline; `next` is cancel-safe.
                    (Some(deadline), false) => {
                        async_std::future::timeout(clock.until(deadline), in_flight.next())
                            .await
                            .ok()
                            .flatten()
                    }
                };
                if let Some((id, result)) = answer {
                    tracing::trace!(%id, ok = result.is_ok(), "answer");
                    machine.handle_response(id, result, clock.now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use mcp_oauth_core::machine::{Limits, Performer, RequestId};

    use super::*;

    /// Answers every request with its path as the status-200 body, after a delay of `?ms=N`.
    struct Echo {
        seen: Mutex<Vec<String>>,
    }

    impl Perform for Echo {
        async fn perform(&self, outgoing: Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
            let uri = outgoing.request().uri().clone();
            if let Ok(mut seen) = self.seen.lock() {
                seen.push(uri.path().to_owned());
            }
            let delay = uri.query().and_then(|q| q.strip_prefix("ms=")).and_then(|ms| ms.parse().ok());
            async_std::task::sleep(Duration::from_millis(delay.unwrap_or(0))).await;
            Ok(Response::new(uri.path().as_bytes().to_vec()))
        }
    }

    fn get(id: u64, target: &str) -> Outgoing {
        Outgoing::unchecked(
            RequestId(id),
            http::Request::get(target).body(Vec::new()).unwrap(),
            Limits::METADATA,
            Performer::Client,
            "test",
        )
    }

    /// Sends two requests at once, then waits for a deadline after both answers.
    struct Parallel {
        sent: bool,
        answers: Vec<String>,
        deadline: Option<Instant>,
    }

    impl Machine for Parallel {
        type Outcome = (Vec<String>, u64);

        fn poll(&mut self, now: Instant) -> Step<Self::Outcome> {
            if !self.sent {
                self.sent = true;
                return Step::Send(vec![get(1, "http://a.test/slow?ms=150"), get(2, "http://a.test/fast")]);
            }
            if self.answers.len() < 2 {
                return Step::Wait(None);
            }
            let deadline = *self.deadline.get_or_insert(now.plus(Duration::from_millis(100)));
            if now < deadline {
                return Step::Wait(Some(deadline));
            }
            Step::Done((std::mem::take(&mut self.answers), now.as_millis()))
        }

        fn handle_response(
            &mut self,
            _id: RequestId,
            result: Result<Response<Vec<u8>>, TransportError>,
            _now: Instant,
        ) {
            if let Ok(response) = result {
                self.answers.push(String::from_utf8_lossy(response.body()).into_owned());
            }
        }
    }

    #[async_std::test]
    async fn requests_run_concurrently_and_deadlines_are_honoured() {
        let io = Echo { seen: Mutex::new(Vec::new()) };
        let mut machine = Parallel { sent: false, answers: Vec::new(), deadline: None };
        let (answers, finished_at) = drive(&mut machine, &io).await.unwrap();
        assert_eq!(answers, ["/fast", "/slow"], "the fast answer comes back first");
        assert!((250..2_000).contains(&finished_at), "150 ms in flight, then 100 ms waiting: {finished_at}");
    }

    /// Waits for a deadline while a slow request is in flight: the deadline wakes the driver first.
    struct DeadlineFirst {
        polls: Vec<u64>,
        answered: bool,
    }

    impl Machine for DeadlineFirst {
        type Outcome = Vec<u64>;

        fn poll(&mut self, now: Instant) -> Step<Self::Outcome> {
            self.polls.push(now.as_millis());
            match self.polls.len() {
                1 => Step::Send(vec![get(1, "http://a.test/slow?ms=300")]),
                _ if self.answered => Step::Done(std::mem::take(&mut self.polls)),
                _ => Step::Wait(Some(Instant::from_millis(50))),
            }
        }

        fn handle_response(
            &mut self,
            _: RequestId,
            _: Result<Response<Vec<u8>>, TransportError>,
            _: Instant,
        ) {
            self.answered = true;
        }
    }

    #[async_std::test]
    async fn a_deadline_wakes_the_driver_while_a_request_is_in_flight() {
        let io = Echo { seen: Mutex::new(Vec::new()) };
        let polls = drive(&mut DeadlineFirst { polls: Vec::new(), answered: false }, &io).await.unwrap();
        assert!(polls.iter().any(|&at| (50..300).contains(&at)), "woken at the deadline: {polls:?}");
        assert!(polls.last().is_some_and(|&at| at >= 300), "then by the answer: {polls:?}");
    }

    struct Stuck;

    impl Machine for Stuck {
        type Outcome = ();

        fn poll(&mut self, _now: Instant) -> Step<()> {
            Step::Wait(None)
        }

        fn handle_response(
            &mut self,
            _: RequestId,
            _: Result<Response<Vec<u8>>, TransportError>,
            _: Instant,
        ) {
        }
    }

    #[async_std::test]
    async fn waiting_for_nothing_is_an_error_not_a_hang() {
        let io = Echo { seen: Mutex::new(Vec::new()) };
        assert_eq!(drive(&mut Stuck, &io).await, Err(DriveError::Stalled));
    }

    #[test]
    fn clock_converts() {
        let base = std::time::Instant::now();
        let clock = Clock::starting_at(base);
        assert_eq!(clock.instant_of(base + Duration::from_millis(1234)), Instant::from_millis(1234));
        if let Some(earlier) = base.checked_sub(Duration::from_millis(5)) {
            assert_eq!(clock.instant_of(earlier), Instant::ZERO);
        }
        assert_eq!(clock.until(Instant::ZERO), Duration::ZERO);
    }
}
