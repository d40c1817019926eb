//! Fuzz harnesses: one function per parser or security check, taking raw bytes.
//!
//! Each harness decodes its input, runs the check and asserts the check's invariants (a property
//! violated panics; anything else returns quietly). The `fuzz/` crate calls these from cargo-fuzz
//! targets and `tests/` replays every committed corpus file through them on stable Rust, so a
//! crash found once stays fixed.

pub mod www_authenticate;
