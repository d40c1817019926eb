//! The OAuth client of an MCP server, as sans-IO state machines.
//!
//! [`discovery::Discovery`] finds out how a server wants to be authorized. The machines here
//! follow [`crate::machine`]: the driver feeds responses in and drains requests out.

pub mod authorization;
pub mod discovery;
pub mod mcp;
pub mod registration;
pub mod session;
mod stage;
#[cfg(test)]
pub(crate) mod testkit;
pub mod token;
