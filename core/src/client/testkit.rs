//! A scripted, synchronous driver for testing machines without any I/O (compiled for tests only;
//! its `unwrap`s build fixed test responses and never see outside input).

use std::collections::VecDeque;

use http::{Response, StatusCode};

use crate::machine::{Instant, Machine, Step, TransportError};

/// One scripted answer: matched by method and exact URL, used once.
pub(crate) struct Exchange {
    pub(crate) method: &'static str,
    pub(crate) url: String,
    pub(crate) answer: Result<Response<Vec<u8>>, TransportError>,
}

/// Builds a JSON response.
pub(crate) fn json(status: u16, body: serde_json::Value) -> Result<Response<Vec<u8>>, TransportError> {
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap()) // ok: test-only
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .unwrap()) // ok: test-only
}

/// Builds a response with headers and a raw body.
pub(crate) fn raw(
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response<Vec<u8>>, TransportError> {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap()); // ok: test-only
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(body.as_bytes().to_vec()).unwrap()) // ok: test-only
}

/// Everything a scripted run saw.
pub(crate) struct Run<T> {
    pub(crate) outcome: T,
    /// `METHOD url` of every request, in the order sent.
    pub(crate) requests: Vec<String>,
    /// The requests themselves.
    pub(crate) sent: Vec<http::Request<Vec<u8>>>,
    /// How many requests were in flight at once, at most.
    pub(crate) max_in_flight: usize,
    /// When the outcome came.
    pub(crate) finished_at: Instant,
}

/// Runs `machine` against `script`; unscripted requests get 404. Answers arrive in send order.
pub(crate) fn run<M: Machine>(machine: &mut M, script: Vec<Exchange>) -> Run<M::Outcome> {
    let mut script: Vec<Option<Exchange>> = script.into_iter().map(Some).collect();
    run_with(machine, |request| {
        let method = request.method().to_string();
        let url = request.uri().to_string();
        script
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(|e| e.method == method && e.url == url))
            .and_then(Option::take)
            .map_or_else(|| raw(404, &[], "not found"), |exchange| exchange.answer)
    })
}

/// Runs `machine` against a responder function. Answers arrive in send order.
pub(crate) fn run_with<M: Machine>(
    machine: &mut M,
    respond: impl FnMut(&http::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, TransportError>,
) -> Run<M::Outcome> {
    run_from(machine, Instant::ZERO, respond)
}

/// [`run_with`] starting at `start` (for a machine a test already drove by hand).
pub(crate) fn run_from<M: Machine>(
    machine: &mut M,
    start: Instant,
    mut respond: impl FnMut(&http::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, TransportError>,
) -> Run<M::Outcome> {
    run_partly_answered(machine, start, |request| Some(respond(request)))
}

/// Runs `machine` against a responder that may never answer (`None`): time jumps to each
/// deadline the machine reports once the answered requests are fed back in send order.
///
/// Every `Wait` is checked against the drain contract: while any request is in flight (answered
/// but not yet fed back, or unanswered and not yet past its deadline) the machine must report a
/// deadline no later than the earliest such request's (`now + limits.timeout` at sending).
pub(crate) fn run_partly_answered<M: Machine>(
    machine: &mut M,
    start: Instant,
    mut respond: impl FnMut(&http::Request<Vec<u8>>) -> Option<Result<Response<Vec<u8>>, TransportError>>,
) -> Run<M::Outcome> {
    let mut requests = Vec::new();
    let mut sent = Vec::new();
    let mut queue = VecDeque::new();
    let mut silent: Vec<Instant> = Vec::new();
    let mut max_in_flight = 0;
    let mut now = start;
    for _ in 0..10_000 {
        match machine.poll(now) {
            Step::Send(outgoing) => {
                for out in outgoing {
                    let method = out.request().method().to_string();
                    let url = out.request().uri().to_string();
                    requests.push(format!("{method} {url}"));
                    let due = now.plus(out.limits().timeout);
                    let id = out.id();
                    match respond(out.request()) {
                        Some(answer) => queue.push_back((id, answer, due)),
                        None => silent.push(due),
                    }
                    sent.push(out.into_request());
                }
                max_in_flight = max_in_flight.max(queue.len() + silent.len());
            }
            Step::Wait(deadline) => {
                // This poll was at `now`: every silent request due by then has timed out.
                silent.retain(|&due| due > now);
                let in_flight = queue.iter().map(|&(_, _, due)| due).chain(silent.iter().copied());
                if let Some(earliest) = in_flight.min() {
                    assert!(
                        deadline.is_some_and(|deadline| deadline > now && deadline <= earliest),
                        "at {now:?}: Wait({deadline:?}) with {} request(s) in flight, the first due at {earliest:?}",
                        queue.len() + silent.len()
                    );
                }
                match queue.pop_front() {
                    Some((id, answer, _)) => machine.handle_response(id, answer, now),
                    None => match deadline {
                        Some(deadline) => now = deadline,
                        None => panic!("machine waits with nothing in flight and no deadline"),
                    },
                }
            }
            Step::Done(outcome) => {
                return Run { outcome, requests, sent, max_in_flight, finished_at: now };
            }
        }
    }
    panic!("machine did not finish");
}
