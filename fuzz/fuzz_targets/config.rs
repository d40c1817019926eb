//! cargo-fuzz target `config`: see `mcp_oauth_core::harness::config` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::config(data));
