//! Two `mcp-oauth serve` processes sharing a `redis-server` act as one gateway (issue 12): the
//! gateway suite's replica scenario with real processes, so nothing but the store is shared.

use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_sharing_redis_act_as_one() {
    mcp_oauth_tokio::gateway_suite::two_gateway_processes_sharing_redis_act_as_one(
        &|config, listen, origin| {
            Command::new(env!("CARGO_BIN_EXE_mcp-oauth"))
                .args(["serve", "--config"])
                .arg(config)
                .args(["--listen", &listen.to_string()])
                .env("PROXY_BASE_URL", origin)
                .env_remove("MCP_OAUTH_SEALING_KEYS")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mcp-oauth serve starts")
        },
    )
    .await;
}
