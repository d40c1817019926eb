//! cargo-fuzz target `public_origin`: see `mcp_oauth_core::harness::public_origin` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::public_origin(data));
