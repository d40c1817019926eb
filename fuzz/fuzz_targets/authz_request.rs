//! cargo-fuzz target `authz_request`: see `mcp_oauth_core::harness::authz_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::authz_request(data));
