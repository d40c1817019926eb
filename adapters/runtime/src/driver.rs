//! The one generic driver loop: runs any core [`Machine`] on any [`Runtime`].
//!
//! [`drive`] polls the machine with the current time, starts every requested exchange at once
//! (they run concurrently inside the caller's task, in a [`FuturesUnordered`]), feeds each answer
//! back as soon as it arrives, sleeps until the machine's deadline when it asks to wait, and
//! returns the outcome. It makes no OAuth decision: what to send, what an answer means and when to
//! give up are the machine's, request timeouts included.
//!
//! The drain contract ([`mcp_oauth_core::machine`]), as the loop relies on it:
//!
//! - after every input (`handle_response`, or the deadline passing) the machine is polled again;
//!   `Send` is followed by another poll at once;
//! - `Wait(Some(deadline))` wakes on the first answer or at the deadline, whichever comes first
//!   (answers first when both are ready). The machine owns its requests' deadlines: polled at one,
//!   it treats the unanswered request as timed out itself, so no timeout needs wrapping around
//!   `drive`, and an exchange that never completes cannot hang it;
//! - `Wait(None)` means the machine has nothing in flight and no timer: nothing can wake it, so the
//!   run ends with [`DriveError::Stalled`] instead of hanging, even if exchanges the machine has
//!   given up on are still running here (their answers would be ignored).

use std::future::Future;
use std::pin::pin;

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use futures_util::stream::FuturesUnordered;
use http::Response;
use mcp_oauth_core::machine::{Machine, Outgoing, Step, TransportError};

use crate::clock::Clock;
use crate::runtime::Runtime;

/// Performs the requests a machine asks for; implemented by [`Io`](crate::io::Io).
///
/// An implementation enforces the request's [`Limits`](mcp_oauth_core::machine::Limits) and
/// routes it by its [`Performer`](mcp_oauth_core::machine::Performer). Enforcing the timeout here
/// frees the connection early; the run's progress does not depend on it, since the machine times
/// the request out at its deadline. Wrap it to record or script requests.
pub trait Perform {
    /// Performs one request and returns its response, or why there is none.
    fn perform(
        &self,
        outgoing: Outgoing,
    ) -> impl Future<Output = Result<Response<Vec<u8>>, TransportError>> + Send;
}

/// The driver could not reach an outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The machine asked to wait with no deadline, which under the contract means it has no
    /// request in flight and no timer: nothing could ever wake it (a bug in the machine).
    #[error("the machine is waiting for nothing: no request in flight and no deadline")]
    Stalled,
}

/// Runs `machine` to its outcome, reading time from `clock` and sleeping on its runtime.
///
/// Requests are started when the machine asks for them and run concurrently; answers are fed
/// back in the order they arrive. Requests still in flight when the machine is done, or stalls,
/// are dropped (cancelled). The run is bounded by the machine's deadlines, not by anything here.
pub async fn drive<R: Runtime, M: Machine>(
    machine: &mut M,
    io: &impl Perform,
    clock: &Clock<R>,
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
                    // Nothing the machine waits for: exchanges still running were given up on.
                    (None, _) => return Err(DriveError::Stalled),
                    (Some(deadline), true) => {
                        clock.sleep_until(deadline).await;
                        None
                    }
                    // `select` polls the answers first, then the deadline; `next` is cancel-safe.
                    (Some(deadline), false) => {
                        match select(in_flight.next(), pin!(clock.sleep_until(deadline))).await {
                            Either::Left((answer, _)) => answer,
                            Either::Right(((), _)) => None,
                        }
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
