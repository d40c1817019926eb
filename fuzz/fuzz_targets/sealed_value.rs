//! cargo-fuzz target `sealed_value`: see `mcp_oauth_core::harness::sealed_value`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::sealed_value(data));
