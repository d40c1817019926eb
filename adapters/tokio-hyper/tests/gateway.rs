//! The gateway's end-to-end suite ([`mcp_oauth_tokio::gateway_suite`]) with the gateway on tokio.

mcp_oauth_tokio::gateway_suite!(mcp_oauth_tokio::gateway_suite::TokioHost);
