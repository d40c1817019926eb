//! Fuzz harness for `redirect_uri` validation (design §4.5).
//!
//! An authorization code sent to the wrong host is a stolen account, so every URI the validator
//! accepts must be one whose host a browser will also see as loopback, the gateway itself or an
//! allowlisted origin. This harness checks that on arbitrary text, and checks that the classic
//! parser-confusion characters inserted around the host never turn a refusal into an acceptance
//! for a host that is not itself acceptable.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::origin::{Origin, Scheme};
use crate::redirect::{
    Allowed, MAX_REDIRECT_URI_BYTES, RedirectDecision, TrustedRedirectOrigins, is_loopback_host,
    validate_redirect_uri,
};

/// Text inserted right before and right after the host of a refused URI.
const CONFUSABLES: [&str; 9] = ["@", "\\", "%2e", "%40", "\t", "\u{3002}", "#", "?", "."];

/// Runs [`validate_redirect_uri`] on `data` and panics only when an invariant breaks.
///
/// `data` is UTF-8 (other input is ignored) of up to three `\n`-separated lines:
///
/// 1. the `redirect_uri`;
/// 2. the gateway's public origin for [`Origin::parse`] (empty: none; unparsable: input ignored);
/// 3. the `MCP_TRUSTED_REDIRECT_ORIGINS` value (unparsable: input ignored).
///
/// Invariants for an accepted URI: the raw text is at most 2048 bytes of visible ASCII without `\`
/// and starts with `http://` or `https://`; the returned URL has that scheme, no username, no
/// password and no fragment; the raw authority is exactly the URL's `host` or `host:port`; the
/// host is loopback (`localhost`, `127.0.0.0/8`, `[::1]`) when the reason is `loopback`, equals
/// the public origin (scheme, host and port) for `same_origin`, and is `https` and matched by the
/// allowlist for `trusted_origin`; validating the re-serialised URL again accepts it with the same
/// reason and the same URL (when the re-serialisation still fits in 2048 bytes).
///
/// For a refused URI, each of `@`, `\`, `%2e`, `%40`, tab, `。`, `#`, `?` and `.` is inserted
/// right before and right after the host; every variant the validator accepts must satisfy the
/// invariants above, i.e. its own parsed host must be acceptable.
pub fn redirect_uri(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or_default();
    let public_origin = match lines.next().unwrap_or_default() {
        "" => None,
        value => match Origin::parse(value) {
            Ok(origin) => Some(origin),
            Err(_) => return,
        },
    };
    let Ok(trusted) = TrustedRedirectOrigins::parse(lines.next().unwrap_or_default()) else {
        return;
    };
    let decision = validate_redirect_uri(raw, public_origin.as_ref(), &trusted);
    check_decision(raw, &decision, public_origin.as_ref(), &trusted);
    if decision.is_allowed() {
        return;
    }
    let Some((host_start, host_end)) = host_span(raw) else {
        return;
    };
    for insert in CONFUSABLES {
        for at in [host_start, host_end] {
            let mutated = format!("{}{insert}{}", &raw[..at], &raw[at..]);
            let verdict = validate_redirect_uri(&mutated, public_origin.as_ref(), &trusted);
            check_decision(&mutated, &verdict, public_origin.as_ref(), &trusted);
        }
    }
}

/// The byte range of the host in a raw `http(s)://` URI: after the scheme, up to the port, path,
/// query or fragment.
fn host_span(raw: &str) -> Option<(usize, usize)> {
    let start = if raw.starts_with("https://") {
        "https://".len()
    } else if raw.starts_with("http://") {
        "http://".len()
    } else {
        return None;
    };
    let rest = &raw[start..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_len = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |end| end + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    Some((start, start + host_len))
}

/// Whether a canonical host is loopback, computed without [`is_loopback_host`].
fn is_loopback_oracle(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return ip.octets()[0] == 127;
    }
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .is_some_and(|ip| ip == Ipv6Addr::LOCALHOST)
}

/// Asserts the invariants of an accepted decision; a refusal has none beyond not panicking.
fn check_decision(
    raw: &str,
    decision: &RedirectDecision,
    public_origin: Option<&Origin>,
    trusted: &TrustedRedirectOrigins,
) {
    let RedirectDecision::Allowed { uri, because } = decision else {
        return;
    };
    assert!(raw.len() <= MAX_REDIRECT_URI_BYTES, "accepted {} bytes", raw.len());
    assert!(raw.bytes().all(|b| b.is_ascii_graphic()), "accepted invisible or non-ASCII text: {raw:?}");
    assert!(!raw.contains('\\'), "accepted a backslash: {raw:?}");
    let (scheme, rest) = if let Some(rest) = raw.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = raw.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        panic!("accepted a URI without http:// or https://: {raw:?}");
    };
    assert_eq!(uri.scheme(), scheme.as_str(), "scheme changed for {raw:?}");
    assert!(uri.username().is_empty() && uri.password().is_none(), "userinfo in {uri} from {raw:?}");
    assert!(uri.fragment().is_none() && !raw.contains('#'), "fragment in {uri} from {raw:?}");
    let host = uri.host_str().unwrap_or_else(|| panic!("accepted a host-less URI: {raw:?}"));
    let port = uri.port_or_known_default().unwrap_or_else(|| panic!("no port for {raw:?}"));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    assert!(
        authority == host || authority == format!("{host}:{port}"),
        "raw authority {authority:?} is not what the parser saw ({host}:{port}) in {raw:?}"
    );
    let expected = match because {
        Allowed::Loopback => is_loopback_oracle(host) && is_loopback_host(host),
        Allowed::SameOrigin => {
            public_origin.is_some_and(|origin| *origin == Origin::new(scheme, host, Some(port)))
        }
        Allowed::TrustedOrigin => scheme == Scheme::Https && trusted.matches(host, port),
    };
    assert!(expected, "{raw:?} accepted as {because:?} but host {host:?} port {port} is not");

    let again = validate_redirect_uri(uri.as_str(), public_origin, trusted);
    if uri.as_str().len() <= MAX_REDIRECT_URI_BYTES {
        assert_eq!(again, *decision, "re-validating the accepted {uri} from {raw:?}");
    } else {
        assert!(!again.is_allowed(), "an over-long re-serialisation {uri} was accepted");
    }
}

#[cfg(test)]
mod tests {
    use super::{host_span, redirect_uri};

    #[test]
    fn runs_on_tricky_inputs() {
        for input in [
            "",
            "https://app.corp.example.com/cb\nhttps://gw.example.com\n*.corp.example.com",
            "http://localhost:33418/callback\n\n",
            "https://gw.example.com/cb\nhttps://gw.example.com\n",
            "https://gw.example.com\\@evil.com/cb\nhttps://gw.example.com\n",
            "https://evil.com/cb\nhttps://gw.example.com\napp.example.org:8443",
            "http://[::1]:9000/cb",
            "https://corp.example.com/cb\n\n*.corp.example.com",
            "http://127.0.0.1./cb",
            "https://gw.example.com:443/a/../cb?x=%41\nhttps://gw.example.com:443/",
            "https://evil.com\nnot an origin",
            "https://evil.com\n\n*",
        ] {
            redirect_uri(input.as_bytes());
        }
        redirect_uri(b"\xff\xfe");
    }

    #[test]
    fn host_span_finds_the_host() {
        fn span(raw: &str) -> Option<&str> {
            host_span(raw).map(|(start, end)| &raw[start..end])
        }
        assert_eq!(span("https://h.example:8443/x"), Some("h.example"));
        assert_eq!(span("http://[::1]:80?x"), Some("[::1]"));
        assert_eq!(span("http://h#f"), Some("h"));
        assert_eq!(span("ftp://h"), None);
    }
}
