//! cargo-fuzz target `fetch_target`: see `mcp_oauth_core::harness::fetch_target` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::fetch_target(data));
