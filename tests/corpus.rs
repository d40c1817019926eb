//! Replays every committed fuzz corpus file through its harness on stable Rust.
//!
//! `fuzz/corpus/<target>/` holds the seeds and every crash ever found for the cargo-fuzz target of
//! that name; `mcp_oauth_core::harness::TARGETS` maps the names to harness functions. A plain
//! `cargo test` therefore re-checks each input against the current code without nightly Rust or
//! libFuzzer, and a panic here names the file that triggered it.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use mcp_oauth_core::harness::TARGETS;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz").join("corpus")
}

fn files_in(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_its_harness() {
    let root = corpus_root();
    let mut failures = Vec::new();
    for (name, harness) in TARGETS {
        let files = files_in(&root.join(name));
        assert!(!files.is_empty(), "fuzz/corpus/{name}/ has no seed files");
        for file in files {
            let data =
                fs::read(&file).unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
            if panic::catch_unwind(|| harness(&data)).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "harness invariants failed for: {failures:#?}");
}

#[test]
fn every_corpus_directory_names_a_target() {
    for entry in fs::read_dir(corpus_root()).expect("fuzz/corpus exists") {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(target, _)| *target == name),
            "fuzz/corpus/{name} does not name a target in mcp_oauth_core::harness::TARGETS"
        );
    }
}
