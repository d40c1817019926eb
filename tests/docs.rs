//! The documents stay in step with the tree: every `docs/*.md` is compiled as a doctest (lib.rs),
//! and README.md names exactly the fuzz targets of `fuzz/fuzz_targets/`.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root")
}

/// File names in `dir` ending in `extension`, without it.
fn stems(dir: &str, extension: &str) -> BTreeSet<String> {
    std::fs::read_dir(root().join(dir))
        .expect("read the directory")
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(extension).map(str::to_owned))
        .collect()
}

#[test]
fn every_docs_file_is_compiled_as_a_doctest() {
    let lib = include_str!("lib.rs");
    let missing: Vec<String> = stems("docs", ".md")
        .into_iter()
        .filter(|stem| !lib.contains(&format!("include_str!(\"../docs/{stem}.md\")")))
        .collect();
    assert!(missing.is_empty(), "add docs/{missing:?}.md to tests/lib.rs so its Rust blocks are doctests");
    assert!(lib.contains("include_str!(\"../README.md\")"));
}

#[test]
fn the_readme_lists_exactly_the_fuzz_targets() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme.find("\nTargets: ").expect("README.md has a 'Targets:' paragraph under Fuzzing");
    let paragraph = readme[start..].split("\n\n").next().expect("the paragraph");
    let listed: BTreeSet<String> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .take_while(|name| !name.contains('/'))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, stems("fuzz/fuzz_targets", ".rs"), "README.md's fuzz target list");
}
