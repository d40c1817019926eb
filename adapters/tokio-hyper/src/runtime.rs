//! The shared layer on tokio: [`TokioRuntime`], and the driver, clock and token cache of
//! [`mcp_oauth_runtime`] bound to it.
//!
//! Time is tokio's ([`tokio::time::Instant`] as a `std` instant), so tests that pause tokio's
//! clock (`#[tokio::test(start_paused = true)]`) pause the driver and the cache too.

use std::future::Future;
use std::time::Instant;

use mcp_oauth_core::machine::Machine;
use mcp_oauth_runtime::{BlockingError, DriveError, Perform, Runtime};

/// tokio as a [`Runtime`]: its clock and timer, `tokio::spawn` and `spawn_blocking`. Needs a
/// tokio runtime with the time driver enabled.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        drop(tokio::spawn(task));
    }

    fn spawn_blocking<T, F>(&self, work: F) -> impl Future<Output = Result<T, BlockingError>> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // Outside a tokio runtime this is an error the caller fails closed on, not a panic.
        let task = tokio::runtime::Handle::try_current().map(|handle| handle.spawn_blocking(work));
        async move {
            match task {
                Ok(task) => task.await.map_err(|error| BlockingError::new(error.to_string())),
                Err(outside) => Err(BlockingError::new(outside.to_string())),
            }
        }
    }
}

/// Tokio's time as core's [`Instant`](mcp_oauth_core::machine::Instant): a
/// [`mcp_oauth_runtime::Clock`] on [`TokioRuntime`].
pub type Clock = mcp_oauth_runtime::Clock<TokioRuntime>;

/// The single-flight token cache ([`mcp_oauth_runtime::token_cache`]) on tokio's clock.
pub type SharedTokenCache<K> = mcp_oauth_runtime::token_cache::SharedTokenCache<K, TokioRuntime>;

/// The driver's I/O with this crate's [`HttpClient`](crate::HttpClient).
pub type Io = mcp_oauth_runtime::Io<crate::HttpClient>;

/// Runs `machine` to its outcome with a fresh [`Clock`] ([`mcp_oauth_runtime::drive`] on tokio).
pub async fn drive<M: Machine>(machine: &mut M, io: &impl Perform) -> Result<M::Outcome, DriveError> {
    mcp_oauth_runtime::drive(machine, io, &Clock::new()).await
}

#[cfg(test)]
mod tests {
    use mcp_oauth_runtime::Runtime as _;

    use super::TokioRuntime;

    #[test]
    fn blocking_work_asked_for_outside_a_runtime_is_an_error_not_a_panic() {
        let task = TokioRuntime.spawn_blocking(|| 7);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        assert!(runtime.block_on(task).is_err());
        assert_eq!(runtime.block_on(async { TokioRuntime.spawn_blocking(|| 7).await }), Ok(7));
    }
}
