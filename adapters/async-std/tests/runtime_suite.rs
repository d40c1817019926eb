//! The shared driver and token-cache suite of `mcp-oauth-runtime`, run on async-std
//! ([`AsyncStdRuntime`]). Every test is bounded by 30 s.

use mcp_oauth_async_std::AsyncStdRuntime;

mcp_oauth_runtime::runtime_test_suite!(async_std::task::block_on, AsyncStdRuntime);
