//! The sans-IO rule, checked: `core/src` reads no clock, environment, file or socket, draws no
//! random bytes, spawns no thread and names no runtime or HTTP stack (docs/architecture.md).
//!
//! Every `.rs` file under `core/src` is scanned with its comments blanked out (line, block and doc
//! comments; string literals are kept and a `//` inside one is not a comment), so a doc comment
//! may name `tokio::` but code may not.

use std::path::{Path, PathBuf};

/// What core must not contain outside comments.
const FORBIDDEN: &[&str] = &[
    "Instant::now(",
    "SystemTime::now(",
    "std::env::var",
    "use std::env",
    "std::fs::",
    "use std::fs",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
    "thread_rng",
    "OsRng",
    "getrandom::",
    "std::thread::spawn",
    "use std::thread",
    "tokio::",
    "async_std::",
    "hyper::",
    "surf::",
];

/// `source` with every comment replaced by spaces (newlines kept, so line numbers still match).
fn strip_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('#') | Some('"')) && starts_token(&chars, i) {
            // A raw string: r"..." or r#"..."#, copied as it is.
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(&chars[i..j.min(chars.len())]);
            i = j;
        } else if c == '"' {
            // A string: copied as it is, escapes included.
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\\' {
                    if let Some(&escaped) = chars.get(i + 1) {
                        out.push(escaped);
                    }
                    i += 2;
                    continue;
                }
                i += 1;
                if chars[i - 1] == '"' {
                    break;
                }
            }
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('"', '\'', '/'); a lifetime has no closing quote.
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&k| chars[k] == '\'').map_or(chars.len(), |k| k + 1)
            } else {
                i + 3
            };
            out.extend(&chars[i..end.min(chars.len())]);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Whether the `r` at `i` starts a raw string (`r"`, `br"`) rather than ending an identifier.
fn starts_token(chars: &[char], i: usize) -> bool {
    let before = |back: usize| i.checked_sub(back).and_then(|k| chars.get(k));
    !is_ident(before(1)) || (before(1) == Some(&'b') && !is_ident(before(2)))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read core/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// `file:line: pattern` for every forbidden pattern in code.
fn violations(name: &str, source: &str) -> Vec<String> {
    let code = strip_comments(source);
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        for pattern in FORBIDDEN {
            if line.contains(pattern) {
                found.push(format!("{name}:{}: {pattern}", number + 1));
            }
        }
    }
    found
}

#[test]
fn core_src_reads_no_clock_environment_file_socket_or_randomness() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "core/src was found and scanned ({} files)", files.len());
    let mut found = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read a source file");
        let name = file.strip_prefix(&src).unwrap_or(file).display().to_string();
        found.extend(violations(&name, &source));
    }
    assert!(
        found.is_empty(),
        "core must stay sans-IO (time, randomness, the environment and I/O come in as arguments):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_ignores_comments_and_finds_code() {
    let source = "//! uses tokio::spawn\n/* std::fs:: /* nested */ OsRng */\nlet a = 1; // Instant::now()\n";
    assert!(violations("a.rs", source).is_empty());
    let source = "let url = \"https://example.com\"; let now = std::time::Instant::now();\n";
    assert_eq!(violations("b.rs", source), ["b.rs:1: Instant::now("]);
    let source = "let q = '\"'; let s = r#\"// not a comment\"#; let e = std::env::var(\"X\");\n";
    assert_eq!(violations("c.rs", source), ["c.rs:1: std::env::var"]);
    let source = "let b = br\"\\\"; let c = b\"//\"; let r = OsRng;\n";
    assert_eq!(violations("e.rs", source), ["e.rs:1: OsRng"]);
    let source = "fn f<'a>(x: &'a str) {}\n/*\n*/ let t = tokio::spawn(f);\n";
    assert_eq!(violations("d.rs", source), ["d.rs:3: tokio::"]);
}
