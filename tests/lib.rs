//! Shared helpers for the cross-crate tests.

/// The Markdown documents, one module each, so that `cargo test` compiles (and, unless a block says
/// `no_run` or `ignore`, runs) every Rust code block in README.md and docs/*.md as a doctest.
/// `tests/docs.rs` checks that every file of `docs/` is listed here.
mod documents {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../docs/architecture.md")]
    mod architecture {}
    #[doc = include_str!("../docs/async-std.md")]
    mod async_std {}
    #[doc = include_str!("../docs/benchmarks.md")]
    mod benchmarks {}
    #[doc = include_str!("../docs/client.md")]
    mod client {}
    #[doc = include_str!("../docs/configuration.md")]
    mod configuration {}
    #[doc = include_str!("../docs/conformance.md")]
    mod conformance {}
    #[doc = include_str!("../docs/e2e.md")]
    mod e2e {}
    #[doc = include_str!("../docs/eval.md")]
    mod eval {}
    #[doc = include_str!("../docs/fuzzing.md")]
    mod fuzzing {}
    #[doc = include_str!("../docs/gateway.md")]
    mod gateway {}
    #[doc = include_str!("../docs/operations.md")]
    mod operations {}
    #[doc = include_str!("../docs/security.md")]
    mod security {}
}
