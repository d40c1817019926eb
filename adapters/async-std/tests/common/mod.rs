//! Shared by the integration tests: the tokio adapter's mock upstream on a tokio runtime of its
//! own (background threads), so async-std tests can talk to it over 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use mcp_oauth_core::machine::{Limits, Outgoing, Performer, RequestId};
use mcp_oauth_tokio::mock::{MockConfig, MockHandle, MockUpstream, Switch};

/// The mock upstream served by a one-worker tokio runtime; dropping it stops both.
pub struct Upstream {
    mock: Option<MockUpstream>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    /// Starts the mock with `switches` set.
    pub fn start(switches: &[Switch]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mock = runtime.block_on(MockUpstream::start(MockConfig::default())).expect("mock starts");
        for switch in switches {
            mock.handle().set(*switch);
        }
        Self { mock: Some(mock), runtime: Some(runtime) }
    }

    fn mock(&self) -> &MockUpstream {
        self.mock.as_ref().expect("running")
    }

    /// `http://127.0.0.1:{port}`.
    pub fn origin(&self) -> String {
        self.mock().origin().to_owned()
    }

    /// `{origin}/mcp`.
    pub fn mcp_url(&self) -> String {
        self.mock().mcp_url()
    }

    /// The port the mock listens on.
    pub fn port(&self) -> u16 {
        self.mock().address().port()
    }

    /// Switches and counters.
    pub fn handle(&self) -> MockHandle {
        self.mock().handle()
    }

    /// The runtime the mock runs on (the tokio adapter is driven on it too).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("running")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let _entered = runtime.enter();
            drop(self.mock.take());
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The metadata limits with private addresses allowed (the mock is on loopback).
pub fn local_limits() -> Limits {
    Limits { allow_private_addresses: true, ..Limits::METADATA }
}

/// A bodiless client request.
pub fn outgoing(method: http::Method, url: &str, limits: Limits) -> Outgoing {
    Outgoing::unchecked(
        RequestId(1),
        http::Request::builder().method(method).uri(url).body(Vec::new()).expect("request"),
        limits,
        Performer::Client,
        "test",
    )
}
