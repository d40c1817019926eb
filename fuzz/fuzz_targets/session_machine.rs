//! cargo-fuzz target `session_machine`: see `mcp_oauth_core::harness::session_machine` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::session_machine(data));
