//! `redirect_uri` validation for the gateway's authorize endpoint (design §4.5).
//!
//! An authorization code sent to the wrong place is a stolen account, so the validator is strict
//! about the *text* before it looks at meaning: a URL parser forgives `\`, percent-encoded dots,
//! `0x7f.1` and upper case, and every such forgiveness is a way to make two components disagree
//! about the host. Only a `redirect_uri` written canonically is considered; it is then allowed when
//! it is loopback, same-origin with the gateway, or `https` on an origin the operator listed in
//! `MCP_TRUSTED_REDIRECT_ORIGINS`. An accepted URI is re-serialised from the parsed URL.

use std::fmt;
use std::net::Ipv4Addr;

use url::Url;

use crate::Reason;
use crate::origin::{HostCase, Origin, Scheme, parse_authority};

/// The longest `redirect_uri` accepted, in bytes.
pub const MAX_REDIRECT_URI_BYTES: usize = 2048;

/// One `MCP_TRUSTED_REDIRECT_ORIGINS` entry: an exact host or a `*.suffix`, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TrustedEntry {
    host: String,
    wildcard: bool,
    port: u16,
}

impl TrustedEntry {
    fn matches_host(&self, host: &str) -> bool {
        if self.wildcard {
            // Strictly deeper: at least one label, then a dot, then the suffix.
            host.len() > self.host.len() + 1
                && host.ends_with(self.host.as_str())
                && host.as_bytes().get(host.len() - self.host.len() - 1) == Some(&b'.')
                && is_domain(host)
        } else {
            host == self.host
        }
    }
}

/// The parsed `MCP_TRUSTED_REDIRECT_ORIGINS` allowlist of `https` redirect origins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedRedirectOrigins(Vec<TrustedEntry>);

impl TrustedRedirectOrigins {
    /// Parses the comma-separated list: `host`, `host:port` (no port means 443) or `*.suffix[:port]`
    /// (strictly deeper subdomains only). Blank items are skipped; any other malformed entry is an
    /// error, because a typo in an allowlist must stop start-up rather than silently allow less or more.
    pub fn parse(value: &str) -> Result<Self, TrustedOriginError> {
        let mut entries = Vec::new();
        for raw in value.split(',') {
            let entry = raw.trim_matches([' ', '\t']);
            if entry.is_empty() {
                continue;
            }
            entries.push(parse_entry(entry)?);
        }
        Ok(Self(entries))
    }

    /// Whether no entry is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether a canonical lower-case `host` on `port` matches an entry.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.0.iter().any(|entry| entry.port == port && entry.matches_host(host))
    }

    /// Whether `host` matches an entry on any port (to explain an `http` near miss).
    fn matches_host(&self, host: &str) -> bool {
        self.0.iter().any(|entry| entry.matches_host(host))
    }

    /// Appends the entries of `other`; used to build larger allowlists in tests and properties.
    pub fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for TrustedRedirectOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, entry) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            if entry.wildcard {
                f.write_str("*.")?;
            }
            f.write_str(&entry.host)?;
            if entry.port != 443 {
                write!(f, ":{}", entry.port)?;
            }
        }
        Ok(())
    }
}

fn parse_entry(entry: &str) -> Result<TrustedEntry, TrustedOriginError> {
    let invalid = |why: &'static str| TrustedOriginError { entry: entry.chars().take(128).collect(), why };
    if entry.contains("://") {
        return Err(invalid("write the host only, without a scheme (https is implied)"));
    }
    if entry.contains('/') {
        return Err(invalid("write the host only, without a path"));
    }
    let (wildcard, rest) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    if rest.contains('*') {
        return Err(invalid("a wildcard is allowed only as a leading `*.`"));
    }
    let (host, port) = parse_authority(rest, HostCase::Insensitive)
        .map_err(|_| invalid("not a canonical host or host:port"))?;
    if wildcard && !is_domain(&host) {
        return Err(invalid(
            "a `*.` suffix must be a domain name, never an IP literal; list the IP as an exact entry",
        ));
    }
    if wildcard && is_public_suffix(&host) {
        return Err(invalid(
            "the `*.` suffix is a public suffix (a TLD or a Public Suffix List entry such as `co.uk` or \
             `github.io`) under which anyone can register a host; list the exact hosts instead, or put \
             `*.` under a domain you own (`*.example.co.uk`, `*.yourname.github.io`)",
        ));
    }
    Ok(TrustedEntry { host, wildcard, port: port.unwrap_or(443) })
}

/// A DNS name as opposed to an IP literal (IPv4 hosts end in a numeric label; IPv6 is bracketed).
fn is_domain(host: &str) -> bool {
    !host.starts_with('[')
        && host
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.is_empty() && !last.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a canonical lower-case domain is itself a public suffix per the bundled Public Suffix
/// List, private section included (`com`, `co.uk`, `github.io`, `s3.amazonaws.com`): anyone can
/// register a host directly under it. A domain whose last label is in no rule counts as a public
/// suffix only when it is that single label (the list's implicit `*` rule).
pub fn is_public_suffix(host: &str) -> bool {
    psl::suffix_str(host) == Some(host)
}

/// Whether a canonical host is loopback: `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host == "[::1]" || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a `redirect_uri` was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// A loopback host (native apps and CLIs listen there).
    Loopback,
    /// The gateway's own public origin.
    SameOrigin,
    /// An `https` origin listed in `MCP_TRUSTED_REDIRECT_ORIGINS`.
    TrustedOrigin,
}

impl Reason for Allowed {
    fn reason(&self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::SameOrigin => "same_origin",
            Self::TrustedOrigin => "trusted_origin",
        }
    }
}

/// Why a `redirect_uri` was rejected; the message says what to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// Longer than [`MAX_REDIRECT_URI_BYTES`].
    #[error("redirect_uri is longer than 2048 bytes")]
    TooLong,
    /// Contains spaces, control characters or non-ASCII text.
    #[error("redirect_uri must be visible ASCII: percent-encode spaces and non-ASCII characters")]
    InvalidCharacters,
    /// Contains a backslash, which browsers and parsers read differently.
    #[error("redirect_uri contains a backslash, which browsers treat as a path separator")]
    Backslash,
    /// Not `http://` or `https://` (lower case).
    #[error("redirect_uri must start with http:// or https://")]
    UnsupportedScheme,
    /// Not a valid absolute URL.
    #[error("redirect_uri is not a valid absolute URL")]
    Unparseable,
    /// Has a `user@` part.
    #[error("redirect_uri must not contain userinfo (user@host)")]
    Userinfo,
    /// Has a `#fragment`.
    #[error("redirect_uri must not contain a fragment (#...)")]
    Fragment,
    /// Host or port not written the way a URL parser prints them.
    #[error(
        "redirect_uri host or port is not written canonically (lower case, no percent-encoding, plain decimal port)"
    )]
    NonCanonicalAuthority,
    /// Listed in `MCP_TRUSTED_REDIRECT_ORIGINS` but not `https`.
    #[error("redirect_uri matches a trusted origin but is not https")]
    NotHttps,
    /// Not loopback, not the gateway's origin, not trusted.
    #[error(
        "redirect_uri origin is not loopback, not the gateway's public origin and not in MCP_TRUSTED_REDIRECT_ORIGINS"
    )]
    UntrustedOrigin,
}

impl Reason for Rejected {
    fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::InvalidCharacters => "invalid_characters",
            Self::Backslash => "backslash",
            Self::UnsupportedScheme => "unsupported_scheme",
            Self::Unparseable => "unparseable",
            Self::Userinfo => "userinfo",
            Self::Fragment => "fragment",
            Self::NonCanonicalAuthority => "non_canonical_authority",
            Self::NotHttps => "not_https",
            Self::UntrustedOrigin => "untrusted_origin",
        }
    }
}

/// The verdict on one `redirect_uri`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectDecision {
    /// Send the code here: the re-serialised URL, never the raw input.
    Allowed {
        /// The parsed URL to redirect to.
        uri: Url,
        /// Which rule allowed it.
        because: Allowed,
    },
    /// Answer 400 `invalid_request`; never redirect.
    Rejected(Rejected),
}

impl RedirectDecision {
    /// Whether the code may be sent.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// The accepted URL, if any.
    pub fn uri(&self) -> Option<&Url> {
        match self {
            Self::Allowed { uri, .. } => Some(uri),
            Self::Rejected(_) => None,
        }
    }

    /// The OAuth error body for a rejection: `{"error":"invalid_request","error_description":...}`.
    pub fn error_body(&self) -> Option<serde_json::Value> {
        match self {
            Self::Allowed { .. } => None,
            Self::Rejected(why) => Some(serde_json::json!({
                "error": "invalid_request",
                "error_description": why.to_string(),
                "reason": why.reason(),
            })),
        }
    }
}

impl Reason for RedirectDecision {
    fn reason(&self) -> &'static str {
        match self {
            Self::Allowed { because, .. } => because.reason(),
            Self::Rejected(why) => why.reason(),
        }
    }
}

/// Decides whether the authorize endpoint may send a code to `redirect_uri` (design §4.5).
pub fn validate_redirect_uri(
    redirect_uri: &str,
    public_origin: Option<&Origin>,
    trusted: &TrustedRedirectOrigins,
) -> RedirectDecision {
    match check(redirect_uri, public_origin, trusted) {
        Ok((uri, because)) => RedirectDecision::Allowed { uri, because },
        Err(why) => RedirectDecision::Rejected(why),
    }
}

fn check(
    raw: &str,
    public_origin: Option<&Origin>,
    trusted: &TrustedRedirectOrigins,
) -> Result<(Url, Allowed), Rejected> {
    if raw.len() > MAX_REDIRECT_URI_BYTES {
        return Err(Rejected::TooLong);
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejected::InvalidCharacters);
    }
    if raw.contains('\\') {
        return Err(Rejected::Backslash);
    }
    let (scheme, rest) = if let Some(rest) = raw.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = raw.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Rejected::UnsupportedScheme);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(Rejected::Userinfo);
    }
    let uri = Url::parse(raw).map_err(|_| Rejected::Unparseable)?;
    if !uri.username().is_empty() || uri.password().is_some() {
        return Err(Rejected::Userinfo);
    }
    if uri.fragment().is_some() || raw.contains('#') {
        return Err(Rejected::Fragment);
    }
    let (host, port) =
        parse_authority(authority, HostCase::Strict).map_err(|_| Rejected::NonCanonicalAuthority)?;
    let port = port.unwrap_or(scheme.default_port());
    if uri.host_str() != Some(host.as_str()) || uri.port_or_known_default() != Some(port) {
        return Err(Rejected::NonCanonicalAuthority);
    }
    if is_loopback_host(&host) {
        return Ok((uri, Allowed::Loopback));
    }
    if public_origin.is_some_and(|origin| *origin == Origin::new(scheme, &host, Some(port))) {
        return Ok((uri, Allowed::SameOrigin));
    }
    match scheme {
        Scheme::Https if trusted.matches(&host, port) => return Ok((uri, Allowed::TrustedOrigin)),
        Scheme::Http if trusted.matches_host(&host) => return Err(Rejected::NotHttps),
        _ => {}
    }
    Err(Rejected::UntrustedOrigin)
}

/// A malformed `MCP_TRUSTED_REDIRECT_ORIGINS` entry; start-up fails with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("MCP_TRUSTED_REDIRECT_ORIGINS entry `{entry}` is invalid: {why}")]
pub struct TrustedOriginError {
    /// The entry as written (first 128 characters).
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Reason for TrustedOriginError {
    fn reason(&self) -> &'static str {
        "invalid_trusted_redirect_origin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(uri: &str, trusted: &str) -> RedirectDecision {
        let origin = Origin::parse("https://gw.example.com").unwrap();
        validate_redirect_uri(uri, Some(&origin), &TrustedRedirectOrigins::parse(trusted).unwrap())
    }

    fn reason(uri: &str, trusted: &str) -> &'static str {
        verdict(uri, trusted).reason()
    }

    #[test]
    fn loopback_is_allowed_on_any_port_and_scheme() {
        for uri in [
            "http://localhost/cb",
            "http://localhost:33418/callback",
            "https://localhost:1/",
            "http://127.0.0.1:8080/cb",
            "http://127.255.0.9/cb",
            "http://[::1]:9000/cb",
        ] {
            assert_eq!(reason(uri, ""), "loopback", "{uri}");
        }
        assert_eq!(reason("http://localhost.evil.com/cb", ""), "untrusted_origin");
        assert_eq!(reason("http://128.0.0.1/cb", ""), "untrusted_origin");
    }

    #[test]
    fn same_origin_compares_normalised_origins() {
        assert_eq!(reason("https://gw.example.com/callback", ""), "same_origin");
        assert_eq!(reason("https://gw.example.com:443/callback?x=1", ""), "same_origin");
        assert_eq!(reason("http://gw.example.com/callback", ""), "untrusted_origin");
        assert_eq!(reason("https://gw.example.com:8443/callback", ""), "untrusted_origin");
        let no_origin =
            validate_redirect_uri("https://gw.example.com/cb", None, &TrustedRedirectOrigins::default());
        assert_eq!(no_origin.reason(), "untrusted_origin");
    }

    #[test]
    fn allowlist_entries_match_exactly_and_wildcards_only_deeper() {
        assert_eq!(reason("https://app.example.org/cb", "app.example.org"), "trusted_origin");
        assert_eq!(reason("https://app.example.org:443/cb", "app.example.org"), "trusted_origin");
        assert_eq!(reason("https://app.example.org:8443/cb", "app.example.org"), "untrusted_origin");
        assert_eq!(reason("https://app.example.org:8443/cb", "app.example.org:8443"), "trusted_origin");
        assert_eq!(reason("https://a.corp.example.org/cb", "*.corp.example.org"), "trusted_origin");
        assert_eq!(reason("https://a.b.corp.example.org/cb", "*.corp.example.org"), "trusted_origin");
        assert_eq!(reason("https://corp.example.org/cb", "*.corp.example.org"), "untrusted_origin");
        assert_eq!(reason("https://evilcorp.example.org/cb", "*.corp.example.org"), "untrusted_origin");
        assert_eq!(reason("http://app.example.org/cb", "app.example.org"), "not_https");
        assert_eq!(
            reason("https://app.example.org/cb", " app.example.org , ,other.example.org"),
            "trusted_origin"
        );
    }

    #[test]
    fn textual_tricks_are_rejected_before_meaning() {
        let cases = [
            ("https://gw.example.com\\@evil.com/cb", "backslash"),
            ("https://gw.example.com@evil.com/cb", "userinfo"),
            ("https://user:pw@gw.example.com/cb", "userinfo"),
            ("https://gw.example.com/cb#frag", "fragment"),
            ("https://gw.example.com/cb#", "fragment"),
            ("https://GW.example.com/cb", "non_canonical_authority"),
            ("https://gw%2eexample.com/cb", "non_canonical_authority"),
            ("http://0x7f.0.0.1/cb", "non_canonical_authority"),
            ("http://127.1/cb", "non_canonical_authority"),
            ("http://2130706433/cb", "non_canonical_authority"),
            ("https://gw.example.com:0443/cb", "non_canonical_authority"),
            ("https://gw.example.com:/cb", "non_canonical_authority"),
            ("http://localhost:0/cb", "non_canonical_authority"),
            ("https://gw.example.com\t/cb", "invalid_characters"),
            ("https://gw。example.com/cb", "invalid_characters"),
            ("https://gw.example.com/ cb", "invalid_characters"),
            ("HTTPS://gw.example.com/cb", "unsupported_scheme"),
            ("javascript:alert(1)//https://gw.example.com", "unsupported_scheme"),
            ("//gw.example.com/cb", "unsupported_scheme"),
            ("https:///cb", "non_canonical_authority"),
            ("https://[::1/cb", "unparseable"),
        ];
        for (uri, expected) in cases {
            assert_eq!(reason(uri, "*.example.com"), expected, "{uri}");
        }
        let long = format!("https://gw.example.com/{}", "a".repeat(2048));
        assert_eq!(reason(&long, ""), "too_long");
    }

    #[test]
    fn accepted_uri_is_reserialised_not_echoed() {
        let decision = verdict("https://gw.example.com/a/../cb?x=%41", "");
        assert_eq!(decision.uri().map(Url::as_str), Some("https://gw.example.com/cb?x=%41"));
        assert!(decision.error_body().is_none());
        let rejected = verdict("https://evil.com/cb", "");
        let body = rejected.error_body().unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["reason"], "untrusted_origin");
    }

    #[test]
    fn malformed_allowlist_entries_fail_with_the_entry_named() {
        for bad in [
            "https://app.example.org",
            "app.example.org/cb",
            "*",
            "*.com",
            "*.10.0.0.1",
            "a.*.example.org",
            "app.example.org:0",
            "app.example.org:08443",
            "app example.org",
            "app.example.org:",
        ] {
            let error = TrustedRedirectOrigins::parse(bad).unwrap_err();
            assert!(error.to_string().contains("MCP_TRUSTED_REDIRECT_ORIGINS"), "{bad}");
        }
        let parsed =
            TrustedRedirectOrigins::parse("A.Example.org, *.corp.example.org:8443,10.0.0.5:9443").unwrap();
        assert_eq!(parsed.to_string(), "a.example.org,*.corp.example.org:8443,10.0.0.5:9443");
        assert!(TrustedRedirectOrigins::parse("").unwrap().is_empty());
    }

    #[test]
    fn wildcards_on_public_suffixes_are_refused_with_a_fix() {
        for bad in [
            "*.com",
            "*.co.uk",
            "*.CO.UK",
            "*.github.io",
            "*.github.io:8443",
            "*.s3.amazonaws.com",
            "*.blogspot.com",
            "*.localhost",
            "*.internal",
            "*.herokuapp.com",
            "*.com.au",
            "*.pages.dev",
            "app.example.org, *.co.uk",
        ] {
            let error = TrustedRedirectOrigins::parse(bad).unwrap_err();
            assert!(error.why.contains("public suffix"), "{bad}: {error}");
            assert!(error.why.contains("exact hosts"), "{bad}: the message names the fix");
            assert_eq!(error.reason(), "invalid_trusted_redirect_origin");
        }
        // One label under a public suffix is an ordinary registrable domain.
        for good in ["*.example.co.uk", "*.yourname.github.io", "*.corp.example.com", "*.a.b.example.com"] {
            assert_eq!(TrustedRedirectOrigins::parse(good).map(|list| list.len()), Ok(1), "{good}");
        }
        // Exact hosts that happen to be public suffixes are not wildcards and stay allowed.
        assert!(TrustedRedirectOrigins::parse("github.io").is_ok());
    }

    #[test]
    fn ip_literals_under_a_wildcard_stay_refused() {
        for bad in ["*.10.0.0.1", "*.[::1]", "*.127.0.0.1:8443", "*.[2001:db8::1]"] {
            let error = TrustedRedirectOrigins::parse(bad).unwrap_err();
            assert!(error.why.contains("never an IP literal"), "{bad}: {error}");
        }
    }

    #[test]
    fn public_suffix_lookup_follows_the_list() {
        // Hosts are canonical, so IDN suffixes arrive in punycode (`公司.cn` is `xn--55qx5d.cn`).
        for suffix in ["com", "uk", "co.uk", "github.io", "s3.amazonaws.com", "zzzunknown", "xn--55qx5d.cn"] {
            assert!(is_public_suffix(suffix), "{suffix}");
        }
        for domain in
            ["example.com", "example.co.uk", "me.github.io", "corp.zzzunknown", "localhost.localdomain"]
        {
            assert!(!is_public_suffix(domain), "{domain}");
        }
    }

    #[test]
    fn wildcard_needs_a_whole_label_before_the_suffix() {
        let trusted = TrustedRedirectOrigins::parse("*.corp.example.org").unwrap();
        assert!(trusted.matches("a.corp.example.org", 443));
        // One byte longer than the suffix is only the dot: no label, no match.
        assert!(!trusted.matches(".corp.example.org", 443));
        assert!(!trusted.matches("corp.example.org", 443));
        assert!(!trusted.matches("acorp.example.org", 443));
        assert!(!trusted.matches("a.corp.example.org", 8443));
        assert!(!trusted.matches("a.corp.example.org.10", 443));
    }

    #[test]
    fn allowlist_size_and_union() {
        let mut first = TrustedRedirectOrigins::parse("a.example.org").unwrap();
        assert!(!first.is_empty());
        assert_eq!(first.len(), 1);
        assert!(TrustedRedirectOrigins::default().is_empty());
        first.extend(TrustedRedirectOrigins::parse("*.corp.example.org:8443, b.example.org").unwrap());
        assert_eq!(first.len(), 3);
        assert_eq!(first.to_string(), "a.example.org,*.corp.example.org:8443,b.example.org");
        assert!(first.matches("x.corp.example.org", 8443));
        assert!(first.matches("a.example.org", 443));
    }

    #[test]
    fn every_verdict_has_its_reason_code_and_message() {
        let origin = Origin::parse("https://gw.example.com").unwrap();
        let trusted = TrustedRedirectOrigins::parse("app.example.org").unwrap();
        for (uri, reason) in [
            ("http://localhost/cb", "loopback"),
            ("https://gw.example.com/cb", "same_origin"),
            ("https://app.example.org/cb", "trusted_origin"),
            ("http://app.example.org/cb", "not_https"),
            ("https://evil.example/cb", "untrusted_origin"),
            ("https://[::1/cb", "unparseable"),
            ("ftp://app.example.org/cb", "unsupported_scheme"),
        ] {
            let decision = validate_redirect_uri(uri, Some(&origin), &trusted);
            assert_eq!(decision.reason(), reason, "{uri}");
            if let RedirectDecision::Rejected(why) = &decision {
                assert!(!decision.is_allowed());
                assert_eq!(why.reason(), reason);
                assert!(why.to_string().starts_with("redirect_uri"), "{why}");
                let body = decision.error_body().unwrap();
                assert_eq!(body["reason"], reason);
                assert_eq!(body["error_description"], why.to_string());
            } else {
                assert!(decision.is_allowed());
            }
        }
    }

    #[test]
    fn the_length_limit_is_inclusive() {
        let prefix = "https://gw.example.com/";
        let longest = format!("{prefix}{}", "a".repeat(MAX_REDIRECT_URI_BYTES - prefix.len()));
        assert_eq!(longest.len(), MAX_REDIRECT_URI_BYTES);
        assert_eq!(reason(&longest, ""), "same_origin");
        assert_eq!(reason(&format!("{longest}a"), ""), "too_long");
    }
}
