//! Fuzz harness for the `MCP_TRUSTED_REDIRECT_ORIGINS` allowlist (design §4.5).
//!
//! The allowlist decides which foreign origins may receive authorization codes, so what the
//! operator wrote and what the gateway enforces must agree exactly: printing a parsed list and
//! parsing it again changes nothing, and a `*.suffix` entry matches strictly deeper subdomains only.

use crate::origin::{HostCase, parse_authority};
use crate::redirect::TrustedRedirectOrigins;

/// Parses `data` with [`TrustedRedirectOrigins::parse`]; panics only when an invariant breaks.
///
/// `data` is the whole environment value as UTF-8 (other input is ignored), for example
/// `app.example.org, *.corp.example.org:8443`.
///
/// Invariants when it parses: the `Display` form parses again to an equal list (and prints the
/// same); the upper-cased input parses to the same list; every printed entry parses alone, and an
/// exact entry matches its own host on its own port; a wildcard entry `*.suffix[:port]` never
/// matches `suffix` itself, nor `xsuffix` (a label that merely ends with the suffix), nor any host
/// on another port, but does match `a.suffix` on its port; the whole list matches a host exactly
/// when one of its entries does.
pub fn trusted_redirect_origins(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = TrustedRedirectOrigins::parse(text) else {
        return;
    };
    let written = parsed.to_string();
    let again = TrustedRedirectOrigins::parse(&written)
        .unwrap_or_else(|error| panic!("{written:?} printed from {text:?} does not parse: {error}"));
    assert_eq!(again, parsed, "round trip through {written:?}");
    assert_eq!(again.to_string(), written, "printing is not stable");
    assert_eq!(
        TrustedRedirectOrigins::parse(&text.to_ascii_uppercase()).as_ref(),
        Ok(&parsed),
        "upper case changed the meaning of {text:?}"
    );
    if written.is_empty() {
        assert!(parsed.is_empty(), "non-empty list printed as nothing");
        return;
    }
    let items: Vec<&str> = written.split(',').collect();
    assert_eq!(items.len(), parsed.len(), "{written:?} has the wrong number of entries");
    for item in items {
        let single = TrustedRedirectOrigins::parse(item)
            .unwrap_or_else(|error| panic!("printed entry {item:?} does not parse: {error}"));
        let (wildcard, authority) = match item.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let (host, port) = parse_authority(authority, HostCase::Strict)
            .unwrap_or_else(|error| panic!("printed entry {item:?} is not canonical: {error}"));
        let port = port.unwrap_or(443);
        let other_port = port.wrapping_add(1).max(1);
        let deeper = format!("a.{host}");
        let glued = format!("x{host}");
        if wildcard {
            assert!(!single.matches(&host, port), "{item:?} matches its own suffix");
            assert!(!single.matches(&glued, port), "{item:?} matches {glued:?}");
            assert!(single.matches(&deeper, port), "{item:?} does not match {deeper:?}");
            assert!(!single.matches(&deeper, other_port), "{item:?} matches port {other_port}");
        } else {
            assert!(single.matches(&host, port), "{item:?} does not match itself");
            assert!(!single.matches(&host, other_port), "{item:?} matches port {other_port}");
            assert!(!single.matches(&deeper, port), "exact {item:?} matches {deeper:?}");
        }
        for (candidate, on) in [(&host, port), (&deeper, port), (&glued, port), (&host, other_port)] {
            if single.matches(candidate, on) {
                assert!(parsed.matches(candidate, on), "{written:?} lost {item:?} for {candidate:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trusted_redirect_origins;

    #[test]
    fn runs_on_tricky_inputs() {
        for input in [
            "",
            " , ,",
            "app.example.org",
            "A.Example.org, *.corp.example.org:8443,10.0.0.5:9443",
            "*.corp.example.org,corp.example.org",
            "[::1]:8443,*.xn--bcher-kva.example",
            "*.com",
            "*.10.0.0.1",
            "https://app.example.org",
            "app.example.org:65535,\tb.example.org:1",
            "*.a.b.c.d.example.org:443",
        ] {
            trusted_redirect_origins(input.as_bytes());
        }
    }
}
