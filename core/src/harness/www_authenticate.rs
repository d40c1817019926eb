//! Fuzz harness for the `WWW-Authenticate` parser.
//!
//! The parser reads headers an untrusted MCP server chose, so it must never panic and must give
//! one meaning to every header it accepts. This harness checks that on arbitrary bytes: cargo-fuzz
//! calls it from `fuzz/`, and downstream projects can call it from their own fuzzers.

use crate::www_authenticate::{format_challenges, parse_bearer, parse_challenges};

/// Whether `s` is a non-empty RFC 9110 token (`1*tchar`).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Runs the `WWW-Authenticate` parsers on `data` and panics only when an invariant breaks.
///
/// `data` is read as UTF-8 (invalid input is ignored). Invariants: parsing never panics; every
/// accepted challenge has a token scheme, lower-case token parameter names without duplicates and
/// never both a token68 and parameters; writing the challenges back with
/// [`format_challenges`] and parsing again gives the same challenges; [`parse_bearer`], fed the
/// input both as one field line and split on `\n` into several, never yields an empty scope element
/// or one containing a space, and its `resource_metadata` is an http(s) URL without a fragment.
pub fn www_authenticate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(challenges) = parse_challenges(text) {
        assert!(!challenges.is_empty(), "accepted a header without challenges");
        for challenge in &challenges {
            assert!(is_token(&challenge.scheme), "scheme {:?}", challenge.scheme);
            assert!(
                challenge.token68.is_none() || challenge.params.is_empty(),
                "token68 and params together: {challenge:?}"
            );
            for (i, (name, _)) in challenge.params.iter().enumerate() {
                assert!(is_token(name), "parameter name {name:?}");
                assert_eq!(*name, name.to_ascii_lowercase(), "name not lower-cased");
                assert!(
                    challenge.params[..i].iter().all(|(n, _)| n != name),
                    "duplicate parameter {name:?} accepted"
                );
            }
        }
        let written = format_challenges(&challenges);
        assert_eq!(parse_challenges(&written).as_ref(), Ok(&challenges), "round trip through {written:?}");
    }
    for lines in [vec![text], text.split('\n').collect()] {
        if let Ok(Some(bearer)) = parse_bearer(lines) {
            for scope in bearer.scope.iter().flatten() {
                assert!(!scope.is_empty() && !scope.contains(' '), "scope element {scope:?}");
            }
            if let Some(url) = &bearer.resource_metadata {
                assert!(matches!(url.scheme(), "http" | "https"), "{url}");
                assert!(url.fragment().is_none(), "{url}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::www_authenticate;

    #[test]
    fn runs_on_tricky_inputs() {
        for input in [
            &b""[..],
            b"Bearer",
            b"Bearer realm=\"a\\\"b, c\", error=x, Basic realm=\"b\"",
            b"Negotiate abc==, Bearer x=\"y\"",
            b", ,Bearer,, scope=\"  a b \",",
            b"Bearer realm=\"unterminated",
            b"Bearer a=\"1\"\nBearer b=\"2\"",
            b"Bearer resource_metadata=\"https://h/prm\", scope=\"\"",
            b"Bearer scope=\"x\"\nscope=\"y\"",
            b"\xff\xfe Bearer",
            b"Bearer r\xc3\xa9alm=x",
            b"=,=\\\"",
        ] {
            www_authenticate(input);
        }
    }
}
