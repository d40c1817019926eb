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
        self.0.iter().any(|entry| {
            entry.port == port
                && if entry.wildcard {
                    is_domain(host)
                        && host.len() > entry.host.len() + 1
                        && host.ends_with(entry.host.as_str())
                        && host.as_bytes()[host.len() - entry.host.len() - 1] == b'.'
                } else {
                    host == entry.host
                }
        })
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
    if wildcard && (!is_domain(&host) || !host.contains('.')) {
        return Err(invalid(
            "a `*.` suffix must be a domain of at least two labels (`*.example.com`), never a TLD or an IP",
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
    if trusted.matches(&host, port) {
        return match scheme {
            Scheme::Https => Ok((uri, Allowed::TrustedOrigin)),
            Scheme::Http => Err(Rejected::NotHttps),
        };
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
