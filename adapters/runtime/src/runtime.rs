//! The [`Runtime`] trait: what the shared layer needs from an executor.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

/// The executor's clock, timer and task spawning; quinn's `Runtime` is the model.
///
/// Implemented by each adapter on a zero-sized type (`TokioRuntime`, `AsyncStdRuntime`). Time is
/// [`std::time::Instant`]: a runtime with a virtual clock (tokio's paused time) converts its own
/// instants, so tests that pause time keep working through the shared code.
pub trait Runtime: Clone + fmt::Debug + Send + Sync + 'static {
    /// The current monotonic time, as this runtime's timers see it.
    fn now(&self) -> Instant;

    /// A future that completes once [`Runtime::now`] has reached `deadline` (at once if it has).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;

    /// Runs `task` in the background; it is detached (nothing waits for it).
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Runs `work` on a thread where blocking is allowed (a SQLite call, a file read) and
    /// resolves to its result, or to a [`BlockingError`] when it panicked or was cancelled.
    fn spawn_blocking<T, F>(
        &self,
        work: F,
    ) -> impl Future<Output = Result<T, BlockingError>> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// A future that completes after `duration` (far in the future if that does not fit).
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.sleep_until(later(self.now(), duration))
    }
}

/// `now + duration`, or thirty years from now when that does not fit, or `now` at the very end of
/// time (never a panic).
pub(crate) fn later(now: Instant, duration: Duration) -> Instant {
    let far = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(duration.min(far)).or_else(|| now.checked_add(far)).unwrap_or(now)
}

/// A task given to [`Runtime::spawn_blocking`] did not finish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the blocking task did not finish: {message}")]
pub struct BlockingError {
    message: String,
}

impl BlockingError {
    /// A failure described by `message` (a panic, a cancelled task).
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// [`timeout`] ran out before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the deadline passed")]
pub struct Elapsed;

/// Runs `future` for at most `duration` on `runtime`'s timer; the future is polled first, so an
/// answer that is ready at the deadline wins. The future is dropped (cancelled) on timeout.
pub async fn timeout<R: Runtime, F: Future>(
    runtime: &R,
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let future = pin!(future);
    let sleep = pin!(runtime.sleep(duration));
    match select(future, sleep).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(((), _)) => Err(Elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_never_overflows() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::from_millis(5)), now + Duration::from_millis(5));
        assert!(later(now, Duration::MAX) > now);
    }
}
