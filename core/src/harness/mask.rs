//! Fuzz harness for secret masking (design §4.7).
//!
//! Masked values end up in debug headers and logs, so the mask must reveal at most the last four
//! characters of a long secret, never its length, and never the secret itself.

use url::Url;

use crate::mask::{MIN_CHARS_TO_SHOW_TAIL, STARS, looks_like_credential, mask as mask_value, mask_url};

/// Runs [`crate::mask::mask`] (and [`mask_url`] when the input is a URL) on `data`; panics only when an
/// invariant breaks.
///
/// `data` is the whole credential as UTF-8 (other input is ignored), for example
/// `Bearer abcdefghijklmnop`. The expected scheme word and secret are computed independently: after
/// trimming spaces and tabs, a first word `Bearer` or `Basic` (any case) followed by a space or tab,
/// or alone, is the scheme; the rest, without leading spaces and tabs, is the secret.
///
/// Invariants of [`crate::mask::mask`]: the output is the scheme word as written, then exactly `****`, then
/// either nothing or the secret's last four characters; the tail is shown exactly when the secret
/// has at least 12 characters; the output is at most scheme + 4 + 16 bytes long; the output never
/// contains a secret of 7 or more characters that has no `*` in it. (A secret may contain `*` and
/// then can coincide with the output, e.g. `Bearer Bearer****wxyz`, so that case is not a leak.)
///
/// Invariants of [`mask_url`], when `data` parses as a URL: the output parses again with the same
/// scheme, host, port and path (an opaque path may lose trailing spaces with its fragment), except
/// that every path segment that [`looks_like_credential`] is `****` plus its last four characters
/// when it has 12 or more, and no output segment looks like a credential; its username is empty or
/// `****`, its password absent or `****`, every query value is `****`, it has no fragment, and
/// masking it again changes nothing.
pub fn mask(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let (scheme, secret) = expected_split(value);
    let masked = mask_value(value);
    let prefix = format!("{scheme}{STARS}");
    let tail = masked
        .strip_prefix(prefix.as_str())
        .unwrap_or_else(|| panic!("{masked:?} does not start with {prefix:?} for {value:?}"));
    let chars = secret.chars().count();
    let expected_tail = if chars >= MIN_CHARS_TO_SHOW_TAIL {
        secret.char_indices().rev().nth(3).map_or(secret, |(index, _)| &secret[index..])
    } else {
        ""
    };
    assert_eq!(tail, expected_tail, "tail of {masked:?} for a secret of {chars} characters");
    assert!(masked.len() <= scheme.len() + STARS.len() + 16, "{masked:?} is too long");
    if chars >= 7 && !secret.contains('*') {
        assert!(!masked.contains(secret), "{masked:?} contains the secret");
    }

    if let Ok(url) = Url::parse(value) {
        check_mask_url(&url);
    }
}

/// One path segment before and after [`mask_url`]: kept as written unless it looks like a
/// credential, else exactly `****` plus, for 12 characters or more, its last four characters.
fn check_path_segment(was: &str, now: &str, masked: &str) {
    assert!(!looks_like_credential(now), "{now:?} in {masked} still looks like a credential");
    if !looks_like_credential(was) {
        assert_eq!(now, was, "ordinary segment changed in {masked}");
        return;
    }
    let tail = now.strip_prefix(STARS).unwrap_or_else(|| panic!("{now:?} in {masked} lacks the stars"));
    assert!(!tail.contains('*') || was.contains('*'), "{now:?} has more stars");
    let chars = was.chars().count();
    if chars >= MIN_CHARS_TO_SHOW_TAIL {
        let expected = was.char_indices().rev().nth(3).map_or(was, |(index, _)| &was[index..]);
        assert_eq!(tail, expected, "tail of {now:?} for {was:?}");
    } else {
        assert_eq!(tail, "", "{now:?} shows part of the short {was:?}");
    }
}

/// The scheme word and the secret of a credential, per design §4.7.
fn expected_split(value: &str) -> (&str, &str) {
    let value = value.trim_matches([' ', '\t']);
    let (word, rest) = match value.find([' ', '\t']) {
        Some(at) => (&value[..at], value[at + 1..].trim_start_matches([' ', '\t'])),
        None => (value, ""),
    };
    if ["bearer", "basic"].iter().any(|scheme| word.eq_ignore_ascii_case(scheme)) {
        (word, rest)
    } else {
        ("", value)
    }
}

/// Asserts the invariants of [`mask_url`] on one URL.
fn check_mask_url(url: &Url) {
    let masked = mask_url(url);
    let again = Url::parse(&masked).unwrap_or_else(|error| panic!("mask_url({url}) = {masked:?}: {error}"));
    assert_eq!(again.scheme(), url.scheme(), "{masked}");
    assert_eq!(again.host_str(), url.host_str(), "{masked}");
    assert_eq!(again.port(), url.port(), "{masked}");
    // Dropping the fragment of an opaque-path URL (`s:x #f`) strips trailing spaces of the path
    // (URL Standard), so compare opaque paths without them.
    let path = |url: &Url| -> String {
        if url.cannot_be_a_base() {
            url.path().trim_end_matches(' ').to_owned()
        } else {
            url.path().to_owned()
        }
    };
    match (url.path_segments(), again.path_segments()) {
        (Some(before), Some(after)) => {
            let before: Vec<&str> = before.collect();
            let after: Vec<&str> = after.collect();
            if before.iter().any(|segment| looks_like_credential(segment)) {
                assert_eq!(after.len(), before.len(), "segments of {masked}");
                for (was, now) in before.iter().zip(&after) {
                    check_path_segment(was, now, &masked);
                }
            } else {
                assert_eq!(again.path(), url.path(), "{masked}");
            }
        }
        _ => assert_eq!(path(&again), path(url), "{masked}"),
    }
    assert_eq!(mask_url(&again), masked, "masking {masked} again changed it");
    assert!(again.username().is_empty() || again.username() == STARS, "username in {masked}");
    assert!(again.password().is_none_or(|password| password == STARS), "password in {masked}");
    assert!(again.fragment().is_none(), "fragment in {masked}");
    for (name, value) in again.query_pairs() {
        assert_eq!(value, STARS, "query value of {name:?} in {masked}");
    }
}

#[cfg(test)]
mod tests {
    use super::{expected_split, mask};

    #[test]
    fn runs_on_tricky_inputs() {
        for input in [
            "",
            "Bearer",
            "Bearer abcdefghijklmnopqrstuvwxyzef01",
            "basic\t\tdXNlcjpwYXNzd29yZA==",
            "  Bearer short  ",
            "Bearer Bearer****wxyz",
            "ééééééééééééabcé",
            "Token abcdefghijklmnop",
            "https://user:pass@mcp.example.com/mcp?api_key=secret&x=1#frag",
            "https://h/?&=x&a%26b=c",
            "s:\x0f/cr&h13,>\0\0\0mjkp         #",
            "https://mcp.zapier.com/api/mcp/s/PATHSECRET-9f8e7d6c5b4a/mcp",
            "https://h/sk-1/a1b2c3d4/%2e%2e/x%2Fab12cd34/..",
            "s://h/ghp_abcdefghijklmnop?x#y",
            "s:/eyJabc/./",
            "file:///C:/abcdefghijklmnopqrstuvwxyz",
        ] {
            mask(input.as_bytes());
        }
    }

    #[test]
    fn splits_like_the_design() {
        assert_eq!(expected_split(" Bearer  x y "), ("Bearer", "x y"));
        assert_eq!(expected_split("basic"), ("basic", ""));
        assert_eq!(expected_split("Bearerx"), ("", "Bearerx"));
    }
}
