//! The shared layer on async-std: [`AsyncStdRuntime`], and the driver, clock and token cache of
//! [`mcp_oauth_runtime`] bound to it.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use mcp_oauth_core::machine::Machine;
use mcp_oauth_runtime::{BlockingError, DriveError, Perform, Runtime};

/// async-std as a [`Runtime`]: the monotonic clock, `task::sleep`, `task::spawn` and
/// `task::spawn_blocking`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdRuntime;

impl Runtime for AsyncStdRuntime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        async_std::task::sleep(deadline.saturating_duration_since(Instant::now()))
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        drop(async_std::task::spawn(task));
    }

    fn spawn_blocking<T, F>(&self, work: F) -> impl Future<Output = Result<T, BlockingError>> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = async_std::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(work)));
        async move { task.await.map_err(|_panic| BlockingError::new("the blocking task panicked")) }
    }
}

/// The monotonic clock as core's [`Instant`](mcp_oauth_core::machine::Instant): a
/// [`mcp_oauth_runtime::Clock`] on [`AsyncStdRuntime`].
pub type Clock = mcp_oauth_runtime::Clock<AsyncStdRuntime>;

/// The single-flight token cache ([`mcp_oauth_runtime::token_cache`]) on async-std.
pub type SharedTokenCache<K> = mcp_oauth_runtime::token_cache::SharedTokenCache<K, AsyncStdRuntime>;

/// The driver's I/O with this crate's [`HttpClient`](crate::HttpClient).
pub type Io = mcp_oauth_runtime::Io<crate::HttpClient>;

/// Runs `machine` to its outcome with a fresh [`Clock`] ([`mcp_oauth_runtime::drive`] on
/// async-std).
pub async fn drive<M: Machine>(machine: &mut M, io: &impl Perform) -> Result<M::Outcome, DriveError> {
    mcp_oauth_runtime::drive(machine, io, &Clock::new()).await
}
