//! Fuzz harness for loading a LiteLLM-style `config.yaml` (design §4.1, §6).
//!
//! The loader reads a file an operator wrote, possibly copied from somewhere hostile, and its
//! diagnostics are printed to terminals and CI logs. It must never panic, every diagnostic must say
//! something, and no diagnostic may repeat a credential written in the file.

use serde_json::Value;

use crate::config::{ConfigErrors, Diagnostic, ENV_PREFIX, EnvLookup, load, load_yaml, parse_yaml};

/// The keys whose string values are credentials (including LiteLLM's `auth_value` alias).
const SECRET_KEYS: [&str; 4] = ["client_secret", "authentication_token", "auth_value", "master_key"];

/// The key whose list items (or, in its map form, values) are credentials.
const SECRET_LIST_KEY: &str = "gateway_keys";

/// Secrets shorter than this are not searched for: short words occur in messages by chance.
const MIN_SECRET_CHARS: usize = 8;

/// What every environment variable holds in the second run.
const FIXED_ENV_VALUE: &str = "https://llm.example.com";

/// What secrets are replaced with to show that diagnostics do not depend on them.
const REPLACEMENT: &str = "replacement-credential-0000";

/// Loads `data` with [`load_yaml`]; panics only when an invariant breaks.
///
/// `data` is the configuration file as UTF-8 (other input is ignored). It is loaded twice: with an
/// environment where no variable is set, and with one where every variable holds
/// `https://llm.example.com`.
///
/// Invariants: loading never panics; every diagnostic (error or warning) has a non-empty code and
/// a non-empty message; [`load_yaml`] reports the same diagnostics as [`load`] on the
/// [`parse_yaml`] document, apart from their locations; and no diagnostic leaks a credential. A
/// credential is the string value of a `client_secret`, `authentication_token`, `auth_value` or
/// `master_key` key, or an item (or map value) of `gateway_keys`, anywhere in the document, when it is not an
/// `os.environ/` reference. Every such credential is replaced by another value; the diagnostics
/// must not change, and a diagnostic that contained a credential of 8 or more characters must
/// still contain that text (it came from elsewhere, such as a server name equal to it).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let unset = |_: &str| -> Option<String> { None };
    let fixed = |_: &str| Some(FIXED_ENV_VALUE.to_owned());
    let document = parse_yaml(text);
    let lookups: [EnvLookup<'_>; 2] = [&unset, &fixed];
    for env in lookups {
        let loaded = load_yaml(text, env);
        let diagnostics = all_diagnostics(&loaded);
        for diagnostic in &diagnostics {
            assert!(!diagnostic.code.is_empty(), "diagnostic without a code: {diagnostic:?}");
            assert!(!diagnostic.message.trim().is_empty(), "diagnostic without a message: {diagnostic:?}");
        }
        let Ok(document) = &document else {
            assert!(loaded.is_err(), "load_yaml accepted text parse_yaml refused");
            continue;
        };
        let from_document = all_diagnostics(&load(document, env));
        assert_eq!(
            without_locations(&diagnostics),
            without_locations(&from_document),
            "load_yaml and load disagree"
        );

        let mut secrets = Vec::new();
        let mut replaced = document.clone();
        replace_secrets(&mut replaced, &mut secrets);
        if secrets.is_empty() {
            continue;
        }
        let independent = without_locations(&all_diagnostics(&load(&replaced, env)));
        for secret in secrets.iter().filter(|secret| secret.chars().count() >= MIN_SECRET_CHARS) {
            for (index, diagnostic) in from_document.iter().enumerate() {
                for text in [Some(&diagnostic.message), diagnostic.fix.as_ref()].into_iter().flatten() {
                    if !text.contains(secret.as_str()) {
                        continue;
                    }
                    let explained = independent.get(index).is_some_and(|other| {
                        other.message.contains(secret.as_str())
                            || other.fix.as_ref().is_some_and(|fix| fix.contains(secret.as_str()))
                    });
                    assert!(explained, "diagnostic {:?} leaks the credential {secret:?}", diagnostic.code);
                }
            }
        }
        assert_eq!(
            without_locations(&from_document),
            independent,
            "diagnostics depend on the value of a credential"
        );
    }
}

/// Every error and warning of a load, errors first.
fn all_diagnostics<T>(result: &Result<T, ConfigErrors>) -> Vec<Diagnostic> {
    match result {
        Ok(_) => Vec::new(),
        Err(errors) => errors.errors.iter().chain(&errors.warnings).cloned().collect(),
    }
}

/// The diagnostics with their locations cleared, for comparing [`load_yaml`] with [`load`].
fn without_locations(diagnostics: &[Diagnostic]) -> Vec<Diagnostic> {
    diagnostics.iter().cloned().map(|diagnostic| Diagnostic { location: None, ..diagnostic }).collect()
}

/// Whether a string value is a credential written inline (not blank, not an `os.environ/` name).
fn is_inline_secret(value: &str) -> bool {
    !value.trim().is_empty() && !value.starts_with(ENV_PREFIX)
}

/// Replaces every inline credential in `value` by [`REPLACEMENT`], collecting the originals.
fn replace_secrets(value: &mut Value, found: &mut Vec<String>) {
    match value {
        Value::Object(entries) => {
            for (key, child) in entries.iter_mut() {
                match child {
                    Value::String(text) if SECRET_KEYS.contains(&key.as_str()) && is_inline_secret(text) => {
                        found.push(std::mem::replace(text, REPLACEMENT.to_owned()));
                    }
                    Value::Object(named) if key == SECRET_LIST_KEY => {
                        for item in named.values_mut() {
                            match item {
                                Value::String(text) if is_inline_secret(text.trim()) => {
                                    found.push(std::mem::replace(text, REPLACEMENT.to_owned()));
                                }
                                other => replace_secrets(other, found),
                            }
                        }
                    }
                    Value::Array(items) if key == SECRET_LIST_KEY => {
                        for item in items.iter_mut() {
                            match item {
                                // List items are trimmed before `os.environ/` is recognised.
                                Value::String(text) if is_inline_secret(text.trim()) => {
                                    found.push(std::mem::replace(text, REPLACEMENT.to_owned()));
                                }
                                other => replace_secrets(other, found),
                            }
                        }
                    }
                    other => replace_secrets(other, found),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| replace_secrets(item, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{REPLACEMENT, config, replace_secrets};

    #[test]
    fn runs_on_tricky_inputs() {
        for input in [
            "",
            "- a list",
            "mcp_servers: 3",
            "general_settings:\n  master_key: sk-master-000123\nmcp_servers:\n  gh:\n    url: https://h/mcp\n    auth_type: oauth2\n    client_id: id\n    client_secret: s3cr3t-value-42\n    token_url: https://h/token\n",
            "mcp_servers:\n  s3cr3t-value-42:\n    url: ftp://x\n    client_secret: s3cr3t-value-42\n",
            "mcp_servers:\n  x:\n    oauth2_flow: os.environ/FLOW\n    client_secret: os.environ/SECRET\n",
            "a: &a [*a]",
            "mcp_servers: {x: {url: 'https://h', auth_value: [1, 2], gateway_keys: [k]}}",
            "general_settings:\n  gateway_keys: [\"  \", key-material-0001, os.environ/K]\n  mcp_trusted_proxy_ranges: [10.0.0.1/8]\n",
            "general_settings:\n  gateway_keys: {alice: key-material-0002, master: key-material-0003, 'a b': x, n: [1]}\n",
            "general_settings:\n  sealing_keys: [\"\", os.environ/SK, AQID]\n  mcp_oauth_store: redis://:pw@h:1/x\n",
        ] {
            config(input.as_bytes());
        }
    }

    #[test]
    fn replaces_inline_credentials_only() {
        let mut document = json!({
            "general_settings": {"master_key": "mk-0001", "gateway_keys": ["g1", " os.environ/G", " "]},
            "other": {"gateway_keys": {"alice": "g2", "bob": "os.environ/B"}},
            "mcp_servers": {"a": {"client_secret": "os.environ/S", "auth_value": "t", "client_id": "c"}},
        });
        let mut found = Vec::new();
        replace_secrets(&mut document, &mut found);
        assert_eq!(found, ["mk-0001", "g1", "g2", "t"]);
        assert_eq!(document["other"]["gateway_keys"]["bob"], "os.environ/B");
        assert_eq!(document["general_settings"]["gateway_keys"][0], REPLACEMENT);
        assert_eq!(document["mcp_servers"]["a"]["client_secret"], "os.environ/S");
        assert_eq!(document["mcp_servers"]["a"]["client_id"], "c");
    }
}
