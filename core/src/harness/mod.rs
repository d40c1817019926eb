//! Fuzz harnesses: one function per parser or security check, taking raw bytes.
//!
//! Each harness decodes its input, runs the check and asserts the check's invariants (a property
//! violated panics; anything else returns quietly). The `fuzz/` crate calls these from cargo-fuzz
//! targets and `tests/` replays every committed corpus file through them on stable Rust, so a
//! crash found once stays fixed.

pub mod aggregate;
pub mod authz_request;
pub mod client_machines;
pub mod config;
pub mod event_stream;
pub mod fetch_target;
pub mod gateway_request;
pub mod grant_record;
pub mod mask;
pub mod public_origin;
pub mod redirect_uri;
pub mod sealed_value;
pub mod trusted_redirect_origins;
pub mod www_authenticate;

pub use aggregate::aggregate;
pub use authz_request::authz_request;
pub use client_machines::{discovery_machine, session_machine};
pub use config::config;
pub use event_stream::event_stream;
pub use fetch_target::fetch_target;
pub use gateway_request::gateway_request;
pub use grant_record::grant_record;
pub use mask::mask;
pub use public_origin::public_origin;
pub use redirect_uri::redirect_uri;
pub use sealed_value::sealed_value;
pub use trusted_redirect_origins::trusted_redirect_origins;
pub use www_authenticate::www_authenticate;

/// A fuzz harness: takes arbitrary bytes, panics only when an invariant is violated.
pub type Harness = fn(&[u8]);

/// Every harness by its cargo-fuzz target name; `fuzz/corpus/<name>/` holds its seeds.
///
/// The `fuzz/` crate has one target per entry and the corpus replay test iterates this list, so
/// the two cannot drift apart.
pub const TARGETS: &[(&str, Harness)] = &[
    ("redirect_uri", redirect_uri),
    ("public_origin", public_origin),
    ("www_authenticate", www_authenticate),
    ("mask", mask),
    ("trusted_redirect_origins", trusted_redirect_origins),
    ("config", config),
    ("gateway_request", gateway_request),
    ("aggregate", aggregate),
    ("fetch_target", fetch_target),
    ("discovery_machine", discovery_machine),
    ("session_machine", session_machine),
    ("authz_request", authz_request),
    ("sealed_value", sealed_value),
    ("grant_record", grant_record),
    ("event_stream", event_stream),
];

#[cfg(test)]
mod tests {
    use super::TARGETS;

    #[test]
    fn target_names_are_unique() {
        for (index, (name, _)) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..index].iter().all(|(other, _)| other != name), "{name} listed twice");
        }
    }
}
