//! cargo-fuzz target `gateway_request`: see `mcp_oauth_core::harness::gateway_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::gateway_request(data));
