//! [`Clock`]: a runtime's monotonic time as core's [`Instant`].

use std::future::Future;

use mcp_oauth_core::machine::Instant;

use crate::runtime::{Runtime, later};

/// Converts a [`Runtime`]'s monotonic time into core's [`Instant`] (milliseconds since a base).
///
/// A machine or cache that keeps instants across several runs (a token cache, a session) must be
/// driven with the same clock each time. Cheap to copy when the runtime is.
#[derive(Clone, Copy, Debug)]
pub struct Clock<R> {
    runtime: R,
    base: std::time::Instant,
}

impl<R: Runtime + Default> Clock<R> {
    /// A clock on the default `R` whose epoch is now.
    pub fn new() -> Self {
        Self::with_runtime(R::default())
    }
}

impl<R: Runtime + Default> Default for Clock<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Runtime> Clock<R> {
    /// A clock on `runtime` whose epoch is now.
    pub fn with_runtime(runtime: R) -> Self {
        let base = runtime.now();
        Self { runtime, base }
    }

    /// A clock on `runtime` whose epoch is `base`.
    pub fn starting_at(runtime: R, base: std::time::Instant) -> Self {
        Self { runtime, base }
    }

    /// The runtime whose time this clock reads.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// The current time as a core instant.
    pub fn now(&self) -> Instant {
        self.instant_of(self.runtime.now())
    }

    /// A monotonic instant as a core instant (the epoch if it is earlier than the base).
    pub fn instant_of(&self, at: std::time::Instant) -> Instant {
        let millis = at.saturating_duration_since(self.base).as_millis();
        Instant::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// A core instant as a monotonic instant (far in the future if it does not fit).
    pub fn to_monotonic(&self, at: Instant) -> std::time::Instant {
        later(self.base, std::time::Duration::from_millis(at.as_millis()))
    }

    /// A future that completes when this clock reaches `at`.
    pub fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send + 'static {
        self.runtime.sleep_until(self.to_monotonic(at))
    }
}
