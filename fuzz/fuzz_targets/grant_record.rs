//! cargo-fuzz target `grant_record`: see `mcp_oauth_core::harness::grant_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::grant_record(data));
