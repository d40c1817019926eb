//! Criterion benchmarks for the per-request decisions (filled in below).
fn main() {}
