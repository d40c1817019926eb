//! The gateway's end-to-end suite ([`mcp_oauth_tokio::gateway_suite`]) with the gateway on
//! async-std: its accept loop, timers, executor and upstream client are async-std's; the test
//! client and the mock upstream run on tokio, talking to it over loopback.

use std::sync::Arc;

use mcp_oauth_async_std::AsyncStdRuntime;
use mcp_oauth_async_std::server::{ServerOptions, gateway_state, serve};
use mcp_oauth_core::config::{GatewayConfig, StoreSetting};
use mcp_oauth_runtime::grant_store::{DEFAULT_MAX_RECORDS, DynGrantStore, open_store};
use mcp_oauth_tokio::gateway_suite::{GatewayHost, OpenedStore};
use tokio::sync::oneshot;

/// The gateway on async-std.
struct AsyncStdHost;

impl GatewayHost for AsyncStdHost {
    const POOLED: bool = false;

    fn check(config: GatewayConfig, options: ServerOptions) -> Result<(), String> {
        gateway_state(config, options).map(drop).map_err(|error| error.to_string())
    }

    fn open_store(setting: StoreSetting) -> OpenedStore {
        Box::pin(async move {
            open_store(&setting, DEFAULT_MAX_RECORDS, AsyncStdRuntime)
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn start(
        config: GatewayConfig,
        options: ServerOptions,
        store: Arc<dyn DynGrantStore>,
        listener: std::net::TcpListener,
        stop: oneshot::Receiver<()>,
        done: oneshot::Sender<()>,
    ) -> Box<dyn Fn() -> u64 + Send + Sync> {
        let state = Arc::new(gateway_state(config, options).expect("state").with_grant_store(store));
        let listener = async_std::net::TcpListener::from(listener);
        let serving = Arc::clone(&state);
        async_std::task::spawn(async move {
            serve(listener, serving, async {
                let _ = stop.await;
            })
            .await;
            let _ = done.send(());
        });
        Box::new(move || state.tokens().fetches())
    }
}

mcp_oauth_tokio::gateway_suite!(AsyncStdHost);
