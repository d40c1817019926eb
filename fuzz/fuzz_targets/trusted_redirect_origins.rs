//! cargo-fuzz target `trusted_redirect_origins`: see `mcp_oauth_core::harness::trusted_redirect_origins` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::trusted_redirect_origins(data));
