//! cargo-fuzz target `event_stream`: see `mcp_oauth_core::harness::event_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_oauth_core::harness::event_stream(data));
