//! cargo-fuzz target `redirect_uri`: see `mcp_oauth_core::harness::redirect_uri` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::redirect_uri(data));
