//! The pieces of the `mcp-oauth` command that more than one binary uses.
//!
//! `connect` and the conformance client run the same [`connect::run_session`]; only how they
//! build the [`SessionConfig`](mcp_oauth_core::client::session::SessionConfig) differs.
#![forbid(unsafe_code)]

pub mod connect;
