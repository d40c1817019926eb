//! cargo-fuzz target `aggregate`: see `mcp_oauth_core::harness::aggregate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::aggregate(data));
