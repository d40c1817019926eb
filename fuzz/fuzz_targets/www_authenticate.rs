//! cargo-fuzz target `www_authenticate`: see `mcp_oauth_core::harness::www_authenticate` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::www_authenticate(data));
