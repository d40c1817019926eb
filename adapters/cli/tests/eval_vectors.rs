//! Conformance vectors for the `mcp-oauth eval` JSON-lines contract (design §4 and §5).
//!
//! `tests/vectors/eval.jsonl` holds one eval input per line plus an `expect` field (and an optional
//! `note`). The whole file is piped through the binary; each answer must equal the library's answer
//! byte for byte and match `expect`:
//! - `expect` with an `"error"` key: the answer must have an `"error"` key (any message);
//! - otherwise every key of `expect` must be in the answer with an equal value, and the output fields
//!   that §5 lists as always present must be present.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/eval.jsonl");

/// Variables the vectors rely on being unset, or that could change an answer if the environment had
/// them: removed from the child and hidden from the library's lookup, so both see the same world.
const HIDDEN_VARIABLES: [&str; 3] =
    ["MCP_OAUTH_VECTOR_UNSET_X", "PROXY_BASE_URL", "MCP_TRUSTED_REDIRECT_ORIGINS"];

fn env_lookup(name: &str) -> Option<String> {
    if HIDDEN_VARIABLES.contains(&name) { None } else { std::env::var(name).ok() }
}

/// Pipes `input` into `mcp-oauth eval` and returns its stdout lines, asserting exit status 0.
fn run_eval(input: &str) -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-oauth"));
    command.arg("eval").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for name in HIDDEN_VARIABLES {
        command.env_remove(name);
    }
    let mut child = command.spawn().expect("spawn mcp-oauth eval");
    let mut stdin = child.stdin.take().expect("child stdin");
    let owned = input.to_owned();
    // Write from another thread so a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        stdin.write_all(owned.as_bytes()).expect("write to mcp-oauth eval");
    });
    let output = child.wait_with_output().expect("wait for mcp-oauth eval");
    writer.join().expect("stdin writer thread");
    assert!(
        output.status.success(),
        "mcp-oauth eval exited with {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("eval writes UTF-8");
    stdout.lines().map(str::to_owned).collect()
}

/// The output fields §5 lists for each check, which must always be present in a non-error answer.
fn always_present(
    check: &str,
    expect: &Map<String, Value>,
    actual: &Map<String, Value>,
) -> Vec<&'static str> {
    match check {
        "redirect_uri" => vec!["allowed", "reason"],
        "public_origin" => vec!["origin", "source"],
        "flow" => vec!["flow"],
        "delegate" => vec!["delegate", "reason"],
        "protected_resource_candidates" | "authorization_server_candidates" => vec!["candidates"],
        "entra_fallback" if expect.contains_key("metadata") => vec!["metadata"],
        "entra_fallback" => vec!["authorization_endpoint", "token_endpoint"],
        "www_authenticate" => vec!["resource_metadata", "scope", "challenge_error"],
        "mask" => vec!["masked"],
        "token_validation" if actual.get("valid") == Some(&Value::Bool(false)) => vec!["valid", "field"],
        "token_validation" => vec!["valid"],
        "token_ttl" => vec!["ttl_seconds"],
        "outbound_auth" => vec!["resolution", "forwards_authorization"],
        "fetch_target" => vec!["allowed", "reason"],
        _ => Vec::new(),
    }
}

/// Checks one answer against its vector's `expect`; returns why it does not match, if it does not.
fn mismatch(input: &Map<String, Value>, actual: &Value) -> Option<String> {
    let Some(Value::Object(expect)) = input.get("expect") else {
        return Some("the vector has no `expect` object".to_owned());
    };
    let Value::Object(actual) = actual else {
        return Some("the answer is not a JSON object".to_owned());
    };
    if expect.contains_key("error") {
        return (!actual.contains_key("error")).then(|| "expected an `error` key".to_owned());
    }
    let mut problems = Vec::new();
    for (key, value) in expect {
        match actual.get(key) {
            None => problems.push(format!("missing `{key}`")),
            Some(got) if got != value => problems.push(format!("`{key}` is {got}, expected {value}")),
            Some(_) => {}
        }
    }
    let check = input.get("check").and_then(Value::as_str).unwrap_or_default();
    for key in always_present(check, expect, actual) {
        if !actual.contains_key(key) && !expect.contains_key(key) {
            problems.push(format!("always-present field `{key}` is missing"));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[test]
fn vectors_match_the_spec() {
    let text = std::fs::read_to_string(VECTORS).expect("read tests/vectors/eval.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "no vectors");
    for (index, line) in lines.iter().enumerate() {
        assert!(!line.trim().is_empty(), "line {}: blank lines are not allowed", index + 1);
        assert!(!line.starts_with("//"), "line {}: comment lines are not allowed", index + 1);
    }

    let answers = run_eval(&text);
    assert_eq!(answers.len(), lines.len(), "mcp-oauth eval must answer exactly one line per input line");

    let mut failures = Vec::new();
    for (index, (line, answer)) in lines.iter().zip(&answers).enumerate() {
        let number = index + 1;
        let library = mcp_oauth_core::eval::evaluate_line(line, &env_lookup);
        if *answer != library {
            failures.push(format!(
                "line {number}: binary and library differ\n  input:   {line}\n  binary:  {answer}\n  library: {library}"
            ));
            continue;
        }
        let input: Map<String, Value> = match serde_json::from_str(line) {
            Ok(input) => input,
            Err(error) => {
                failures.push(format!("line {number}: the vector is not a JSON object: {error}"));
                continue;
            }
        };
        let actual: Value = match serde_json::from_str(answer) {
            Ok(actual) => actual,
            Err(error) => {
                failures.push(format!("line {number}: the answer is not JSON ({error}): {answer}"));
                continue;
            }
        };
        if let Some(problem) = mismatch(&input, &actual) {
            let expect = input.get("expect").map(Value::to_string).unwrap_or_default();
            let mut shown = input.clone();
            shown.remove("expect");
            let shown = Value::Object(shown);
            failures.push(format!(
                "line {number}: {problem}\n  input:    {shown}\n  expected: {expect}\n  actual:   {answer}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_lines_get_an_error_and_the_stream_goes_on() {
    let valid_before = r#"{"check":"mask","value":"0123456789abcdef"}"#;
    let valid_middle = r#"{"check":"token_ttl","kind":"m2m","expires_in":3600}"#;
    let valid_after =
        r#"{"check":"entra_fallback","issuer":"https://login.microsoftonline.com/contoso/v2.0"}"#;
    let lines = [
        valid_before,
        "this is not JSON",
        r#"["check","mask"]"#,
        valid_middle,
        "{}",
        r#"{"check":"no_such_check"}"#,
        "",
        r#"{"check":"mask","value":"0123456789abcdef""#,
        valid_after,
    ];
    let input = lines.join("\n") + "\n";
    let answers = run_eval(&input);
    assert_eq!(answers.len(), lines.len(), "one answer per line, blank and malformed ones included");

    let parsed: Vec<Value> = answers
        .iter()
        .map(|answer| {
            serde_json::from_str(answer).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {answer}"))
        })
        .collect();
    for (index, line) in lines.iter().enumerate() {
        let is_valid = [valid_before, valid_middle, valid_after].contains(line);
        let has_error = parsed[index].get("error").is_some();
        assert_eq!(has_error, !is_valid, "line {}: {line:?} answered {}", index + 1, answers[index]);
        assert_eq!(answers[index], mcp_oauth_core::eval::evaluate_line(line, &env_lookup));
    }
    assert_eq!(parsed[0]["masked"], "****cdef");
    assert_eq!(parsed[3]["ttl_seconds"], 3540);
    assert_eq!(
        parsed[8]["authorization_endpoint"],
        "https://login.microsoftonline.com/contoso/oauth2/v2.0/authorize"
    );
    assert_eq!(parsed[8]["token_endpoint"], "https://login.microsoftonline.com/contoso/oauth2/v2.0/token");
}
