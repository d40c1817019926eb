//! The gateway's public origin (design §4.4).
//!
//! Redirect validation, resource metadata and `WWW-Authenticate` challenges all depend on knowing
//! the origin browsers and MCP clients use to reach the gateway. Three sources exist, in order:
//! `PROXY_BASE_URL`, the `X-Forwarded-*` headers (only from a trusted proxy), and the request's own
//! scheme and `Host`. An attacker controls every header of a request it sends, so forwarded headers
//! count only when the TCP peer is inside `mcp_trusted_proxy_ranges` and `use_x_forwarded_for` is on,
//! and any doubt about them (a repeated header, a list, a non-canonical host) discards the whole set.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::Reason;

/// A web scheme the gateway can be reached over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

impl Scheme {
    /// Parses `http` or `https`, ASCII case-insensitively (schemes are case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if value.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }

    /// The port a URL of this scheme uses when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A web origin compared as (scheme, lower-case host, port with the scheme default applied).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl Origin {
    /// Builds an origin from parts already known to be canonical; `port` `None` means the default.
    pub fn new(scheme: Scheme, host: &str, port: Option<u16>) -> Self {
        Self { scheme, host: host.to_ascii_lowercase(), port: port.unwrap_or(scheme.default_port()) }
    }

    /// Parses a bare origin such as `PROXY_BASE_URL`: `http(s)://host[:port]` with at most one
    /// trailing slash; a path, query, fragment, userinfo or another scheme is an error, because an
    /// operator who wrote one meant something this value cannot express.
    pub fn parse(value: &str) -> Result<Self, OriginError> {
        let invalid = |why: &'static str| OriginError::InvalidOrigin { value: value.to_owned(), why };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "it contains spaces, control or non-ASCII characters (write IDN hosts in punycode)",
            ));
        }
        let (scheme, rest) =
            value.split_once("://").ok_or_else(|| invalid("it has no http:// or https:// scheme"))?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| invalid("its scheme is not http or https"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(invalid("it contains userinfo (user@)"));
        }
        if let Some(position) = authority.find(['/', '?', '#', '\\']) {
            let why = match authority.as_bytes().get(position) {
                Some(b'?') => "it has a query",
                Some(b'#') => "it has a fragment",
                Some(b'\\') => "it contains a backslash",
                _ => "it has a path; the public origin is scheme, host and port only",
            };
            return Err(invalid(why));
        }
        let (host, port) = parse_authority(authority, HostCase::Insensitive)
            .map_err(|_| invalid("its host[:port] is not canonical"))?;
        Ok(Self::new(scheme, &host, port))
    }

    /// The origin of an absolute `http(s)` URL, or `None` for other schemes and host-less URLs.
    pub fn from_url(url: &url::Url) -> Option<Self> {
        let scheme = Scheme::parse(url.scheme())?;
        let host = url.host_str()?;
        Some(Self::new(scheme, host, url.port()))
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The lower-case host; IPv6 literals keep their brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, with the scheme default filled in.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Origin {
    /// Whether the host is loopback (`localhost`, `127.0.0.0/8`, `[::1]`): such an origin may use
    /// plain http (OAuth 2.1 §1.5), since nothing leaves the machine.
    pub fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl FromStr for Origin {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Whether an authority's host must already be lower-case to count as canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCase {
    /// Upper-case letters make the authority non-canonical (`redirect_uri`, forwarded headers).
    Strict,
    /// Upper-case letters are folded (the `Host` header, configured origins).
    Insensitive,
}

/// Parses `host[:port]` written canonically: the host is what a URL parser would print for it
/// (no percent-encoding, no `0x7f.1`-style IPv4, compressed IPv6, no empty labels), and the port
/// is 1–65535 in decimal without leading zeros. Returns the host (lower-case) and the port.
pub fn parse_authority(raw: &str, case: HostCase) -> Result<(String, Option<u16>), OriginError> {
    let invalid = |why: &'static str| OriginError::NonCanonicalAuthority {
        value: raw.chars().take(128).collect(),
        why,
    };
    if raw.is_empty() || raw.len() > 261 {
        return Err(invalid("empty or longer than 261 bytes"));
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']' | b'_'))
    {
        return Err(invalid("characters outside letters, digits, '-', '.', '_', ':' and brackets"));
    }
    let (host, port) = if raw.starts_with('[') {
        let end = raw.find(']').ok_or_else(|| invalid("unclosed IPv6 bracket"))?;
        let (host, rest) = raw.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(invalid("text after the IPv6 literal")),
            },
        }
    } else {
        match raw.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => {
            Some(parse_port(port).ok_or_else(|| invalid("port is not 1-65535 without leading zeros"))?)
        }
    };
    let folded;
    let host = match case {
        HostCase::Strict => host,
        HostCase::Insensitive => {
            folded = host.to_ascii_lowercase();
            folded.as_str()
        }
    };
    if host.is_empty() {
        return Err(invalid("empty host"));
    }
    if !host.starts_with('[') && (host.contains('[') || host.contains(']') || host.contains(':')) {
        return Err(invalid("misplaced ':' or bracket"));
    }
    let parsed = url::Host::parse(host).map_err(|_| invalid("not a valid host"))?;
    if parsed.to_string() != host {
        return Err(invalid("the host is not written the way a URL parser prints it"));
    }
    if let url::Host::Domain(domain) = &parsed
        && domain.split('.').any(str::is_empty)
    {
        return Err(invalid("empty label (leading, trailing or doubled dot)"));
    }
    Ok((host.to_owned(), port))
}

/// Parses a port in canonical decimal: 1–65535, no sign, no leading zero.
pub fn parse_port(value: &str) -> Option<u16> {
    if value.is_empty()
        || value.len() > 5
        || value.starts_with('0')
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    value.parse::<u16>().ok().filter(|port| *port != 0)
}

/// The CIDR ranges whose peers may set `X-Forwarded-*` (`mcp_trusted_proxy_ranges`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDR ranges (`10.0.0.0/8`, `fd00::/8`) or single addresses; a range with host bits
    /// set (`10.0.0.1/8`) is refused because it is ambiguous about what the operator meant.
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<Self, OriginError> {
        let mut parsed = Vec::with_capacity(ranges.len());
        for range in ranges {
            let range = range.as_ref().trim();
            let network = if range.contains('/') {
                let network = IpNet::from_str(range).map_err(|_| OriginError::InvalidProxyRange {
                    range: range.to_owned(),
                    why: "not CIDR notation such as 10.0.0.0/8",
                })?;
                if network.prefix_len() == 0 {
                    return Err(OriginError::InvalidProxyRange {
                        range: range.to_owned(),
                        why: "a /0 range trusts every address on the internet to set X-Forwarded-*; name your proxies' ranges",
                    });
                }
                if network.trunc() != network {
                    return Err(OriginError::InvalidProxyRange {
                        range: range.to_owned(),
                        why: "host bits are set; write the network address (for example 10.0.0.0/8)",
                    });
                }
                network
            } else {
                let address = IpAddr::from_str(range).map_err(|_| OriginError::InvalidProxyRange {
                    range: range.to_owned(),
                    why: "not an IP address or CIDR range",
                })?;
                IpNet::from(address.to_canonical())
            };
            parsed.push(network);
        }
        Ok(Self(parsed))
    }

    /// Whether `peer` (after mapping `::ffff:a.b.c.d` to IPv4) lies inside a trusted range.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|network| network.contains(&peer))
    }

    /// Whether no range is configured (then nobody is trusted).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The settings that decide the public origin; built once at start-up.
#[derive(Clone, Debug, Default)]
pub struct OriginSettings {
    /// `PROXY_BASE_URL`, already validated; wins over everything else.
    pub proxy_base_url: Option<Origin>,
    /// `general_settings.use_x_forwarded_for`.
    pub use_x_forwarded_for: bool,
    /// `general_settings.mcp_trusted_proxy_ranges`.
    pub trusted_proxies: TrustedProxies,
    /// Optional `Host` allowlist (lower-case `host[:port]`), used only when the request is the source.
    pub allowed_hosts: Vec<String>,
    /// The gateway's own loopback listen address as an origin (`http://127.0.0.1:4000`): it pins
    /// the origin in place of the request's `Host` (design §4.4); set by
    /// [`OriginSettings::pin_listen_address`].
    pub listen: Option<Origin>,
}

impl OriginSettings {
    /// Records the address the gateway listens on. A loopback address pins the public origin to
    /// `http://{address}` in place of the request's `Host` (sources 1 and 2 keep precedence);
    /// any other address pins nothing. Returns whether it pinned.
    pub fn pin_listen_address(&mut self, address: std::net::SocketAddr) -> bool {
        let ip = address.ip().to_canonical();
        if !ip.is_loopback() {
            self.listen = None;
            return false;
        }
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        self.listen = Some(Origin::new(Scheme::Http, &host, Some(address.port())));
        true
    }

    /// Whether the origin is pinned: it cannot follow a `Host` header an attacker chose. True with
    /// `PROXY_BASE_URL`, trusted forwarding, an `allowed_hosts` list or a loopback listen address.
    pub fn is_pinned(&self) -> bool {
        self.proxy_base_url.is_some()
            || (self.use_x_forwarded_for && !self.trusted_proxies.is_empty())
            || !self.allowed_hosts.is_empty()
            || self.listen.is_some()
    }
}

/// The parts of an inbound request the origin depends on.
#[derive(Clone, Copy, Debug)]
pub struct RequestOrigin<'a> {
    /// The scheme the gateway's listener speaks.
    pub scheme: Scheme,
    /// The `Host` header (or the HTTP/2 `:authority`), if any.
    pub host: Option<&'a str>,
    /// The TCP peer's address; `None` when unknown, which trusts nothing.
    pub peer: Option<IpAddr>,
    /// All request headers.
    pub headers: &'a HeaderMap,
}

/// Where a resolved public origin came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginSource {
    /// The `PROXY_BASE_URL` setting.
    ProxyBaseUrl,
    /// `X-Forwarded-*` headers from a trusted proxy.
    Forwarded,
    /// The request's own scheme and `Host`.
    Request,
    /// The gateway's loopback listen address ([`OriginSettings::listen`]).
    Listen,
}

impl OriginSource {
    /// The stable code used by `eval` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProxyBaseUrl => "proxy_base_url",
            Self::Forwarded => "forwarded",
            Self::Request => "request",
            Self::Listen => "listen",
        }
    }
}

/// The resolved public origin and, when forwarded headers were present but not used, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicOrigin {
    /// The origin.
    pub origin: Origin,
    /// Which source supplied it.
    pub source: OriginSource,
    /// Why `X-Forwarded-*` headers that were present did not count, for debugging.
    pub forwarded_ignored: Option<ForwardedIgnored>,
}

/// Why a request's `X-Forwarded-*` headers were not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedIgnored {
    /// `use_x_forwarded_for` is off.
    Disabled,
    /// The TCP peer is unknown or outside `mcp_trusted_proxy_ranges`.
    UntrustedPeer,
    /// A header occurred more than once, held a list, or held an invalid value.
    Malformed,
}

impl Reason for ForwardedIgnored {
    fn reason(&self) -> &'static str {
        match self {
            Self::Disabled => "forwarded_disabled",
            Self::UntrustedPeer => "untrusted_peer",
            Self::Malformed => "forwarded_malformed",
        }
    }
}

const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PORT: &str = "x-forwarded-port";

/// Resolves the gateway's public origin for one request (design §4.4).
pub fn resolve_public_origin(
    settings: &OriginSettings,
    request: &RequestOrigin<'_>,
) -> Result<PublicOrigin, OriginError> {
    // Two `Host` headers are two answers to one question: refuse rather than pick one.
    if request.headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Err(OriginError::DuplicateHost);
    }
    if let Some(origin) = &settings.proxy_base_url {
        return Ok(PublicOrigin {
            origin: origin.clone(),
            source: OriginSource::ProxyBaseUrl,
            forwarded_ignored: None,
        });
    }
    let forwarded_present = [X_FORWARDED_PROTO, X_FORWARDED_HOST, X_FORWARDED_PORT]
        .iter()
        .any(|name| request.headers.contains_key(*name));
    let mut forwarded_ignored = None;
    if forwarded_present {
        let trusted = request.peer.is_some_and(|peer| settings.trusted_proxies.contains(peer));
        if !settings.use_x_forwarded_for {
            forwarded_ignored = Some(ForwardedIgnored::Disabled);
        } else if !trusted {
            forwarded_ignored = Some(ForwardedIgnored::UntrustedPeer);
        } else {
            match forwarded_origin(request) {
                Some(origin) => {
                    return Ok(PublicOrigin {
                        origin,
                        source: OriginSource::Forwarded,
                        forwarded_ignored: None,
                    });
                }
                None => forwarded_ignored = Some(ForwardedIgnored::Malformed),
            }
        }
    }
    if let Some(listen) = &settings.listen {
        return Ok(PublicOrigin { origin: listen.clone(), source: OriginSource::Listen, forwarded_ignored });
    }
    let raw_host = request.host.ok_or(OriginError::MissingHost)?;
    let (host, port) = parse_authority(raw_host, HostCase::Insensitive)?;
    if !settings.allowed_hosts.is_empty() {
        let authority = match port {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        if !settings.allowed_hosts.iter().any(|allowed| allowed == &authority || allowed == &host) {
            return Err(OriginError::HostNotAllowed { host: authority });
        }
    }
    Ok(PublicOrigin {
        origin: Origin::new(request.scheme, &host, port),
        source: OriginSource::Request,
        forwarded_ignored,
    })
}

/// The single value of a header, or `Err` when it repeats, holds a list or is not visible ASCII.
fn single_value<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let value = first.to_str().map_err(|_| ())?;
    if value.is_empty() || value.contains(',') || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(());
    }
    Ok(Some(value))
}

/// The origin the trusted forwarded set describes, or `None` if any member is doubtful.
fn forwarded_origin(request: &RequestOrigin<'_>) -> Option<Origin> {
    let proto = single_value(request.headers, X_FORWARDED_PROTO).ok()?;
    let host = single_value(request.headers, X_FORWARDED_HOST).ok()?;
    let port = single_value(request.headers, X_FORWARDED_PORT).ok()?;
    let scheme = match proto {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(_) => return None,
        None => request.scheme,
    };
    let port = match port {
        Some(port) => Some(parse_port(port)?),
        None => None,
    };
    let (host, host_port) = match host {
        Some(host) => parse_authority(host, HostCase::Strict).ok()?,
        // Without X-Forwarded-Host the request's Host names the hop from the proxy: its host is
        // the public one, but its port is the gateway's listener, not what the client dialled; the
        // port then comes from X-Forwarded-Port or the forwarded scheme's default.
        None => (parse_authority(request.host?, HostCase::Insensitive).ok()?.0, None),
    };
    // The host's own port and X-Forwarded-Port must tell the same story.
    let port = match (host_port, port) {
        (Some(a), Some(b)) if a != b => return None,
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    Some(Origin::new(scheme, &host, port))
}

/// Why an origin, authority or proxy range was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// A configured origin (`PROXY_BASE_URL`) is not a bare `http(s)://host[:port]`.
    #[error("`{value}` is not a bare origin: {why}; write it as https://host[:port]")]
    InvalidOrigin {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `host[:port]` is not written canonically.
    #[error("`{value}` is not a canonical host[:port]: {why}")]
    NonCanonicalAuthority {
        /// The value as given (first 128 characters).
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `mcp_trusted_proxy_ranges` entry is not a CIDR range.
    #[error("trusted proxy range `{range}` is invalid: {why}")]
    InvalidProxyRange {
        /// The entry as given.
        range: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The request carries no `Host` and no other source names an origin.
    #[error("the request has no Host header and no PROXY_BASE_URL is configured")]
    MissingHost,
    /// The request carries more than one `Host` header.
    #[error("the request carries more than one Host header")]
    DuplicateHost,
    /// The request's `Host` is not in `allowed_hosts`.
    #[error("Host `{host}` is not in allowed_hosts")]
    HostNotAllowed {
        /// The refused host.
        host: String,
    },
}

impl Reason for OriginError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidOrigin { .. } => "invalid_origin",
            Self::NonCanonicalAuthority { .. } => "non_canonical_authority",
            Self::InvalidProxyRange { .. } => "invalid_proxy_range",
            Self::MissingHost => "missing_host",
            Self::DuplicateHost => "duplicate_host",
            Self::HostNotAllowed { .. } => "host_not_allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn trusting(ranges: &[&str]) -> OriginSettings {
        OriginSettings {
            use_x_forwarded_for: true,
            trusted_proxies: TrustedProxies::parse(ranges).unwrap(),
            ..OriginSettings::default()
        }
    }

    fn resolve(settings: &OriginSettings, peer: &str, host: &str, pairs: &[(&str, &str)]) -> PublicOrigin {
        let headers = headers(pairs);
        let request = RequestOrigin {
            scheme: Scheme::Http,
            host: Some(host),
            peer: Some(peer.parse().unwrap()),
            headers: &headers,
        };
        resolve_public_origin(settings, &request).unwrap()
    }

    #[test]
    fn origin_parse_normalises_and_refuses_anything_but_an_origin() {
        assert_eq!(
            Origin::parse("https://GW.Example.com:443/").unwrap().to_string(),
            "https://gw.example.com"
        );
        assert_eq!(
            Origin::parse("http://gw.example.com:8080").unwrap().to_string(),
            "http://gw.example.com:8080"
        );
        assert_eq!(Origin::parse("http://[::1]:80").unwrap().to_string(), "http://[::1]");
        for bad in [
            "https://gw.example.com/path",
            "https://gw.example.com//",
            "https://gw.example.com?x=1",
            "https://gw.example.com/?",
            "https://gw.example.com#f",
            "https://user@gw.example.com",
            "ftp://gw.example.com",
            "gw.example.com",
            " https://gw.example.com",
            "https://gw.example.com:0",
            "https://gw.example.com:0443",
            "https://gw%2eexample.com",
            "https://",
            "",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorities_must_be_canonical() {
        assert_eq!(
            parse_authority("gw.example.com:8443", HostCase::Strict).unwrap(),
            ("gw.example.com".into(), Some(8443))
        );
        assert_eq!(parse_authority("[::1]:8080", HostCase::Strict).unwrap(), ("[::1]".into(), Some(8080)));
        assert_eq!(parse_authority("GW.example.com", HostCase::Insensitive).unwrap().0, "gw.example.com");
        for bad in [
            "GW.example.com",
            "gw.example.com:080",
            "gw.example.com:",
            "gw.example.com:65536",
            "0x7f.0.0.1",
            "127.1",
            "2130706433",
            "[0:0:0:0:0:0:0:1]",
            "a..b",
            "gw.example.com.",
            "gw.example.com:80:80",
            "evil.com@gw.example.com",
            "gw%2eexample.com",
            "",
        ] {
            assert!(parse_authority(bad, HostCase::Strict).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_ranges_refuse_host_bits_and_match_mapped_ipv4() {
        assert!(TrustedProxies::parse(&["10.0.0.1/8"]).is_err());
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["not-an-ip"]).is_err());
        let ranges = TrustedProxies::parse(&["10.0.0.0/8", "192.168.1.7"]).unwrap();
        assert!(ranges.contains("10.1.2.3".parse().unwrap()));
        assert!(ranges.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(ranges.contains("192.168.1.7".parse().unwrap()));
        assert!(!ranges.contains("192.168.1.8".parse().unwrap()));
        assert!(!TrustedProxies::default().contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn proxy_base_url_wins() {
        let settings = OriginSettings {
            proxy_base_url: Some(Origin::parse("https://llm.example.com").unwrap()),
            ..trusting(&["10.0.0.0/8"])
        };
        let resolved = resolve(&settings, "10.0.0.1", "internal:4000", &[("x-forwarded-host", "evil.com")]);
        assert_eq!(resolved.origin.to_string(), "https://llm.example.com");
        assert_eq!(resolved.source, OriginSource::ProxyBaseUrl);
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let forwarded = [("x-forwarded-proto", "https"), ("x-forwarded-host", "llm.example.com")];
        let trusted = resolve(&trusting(&["10.0.0.0/8"]), "10.0.0.1", "internal:4000", &forwarded);
        assert_eq!(trusted.origin.to_string(), "https://llm.example.com");
        assert_eq!(trusted.source, OriginSource::Forwarded);

        let untrusted = resolve(&trusting(&["10.0.0.0/8"]), "203.0.113.9", "internal:4000", &forwarded);
        assert_eq!(untrusted.origin.to_string(), "http://internal:4000");
        assert_eq!(untrusted.forwarded_ignored, Some(ForwardedIgnored::UntrustedPeer));

        let disabled = OriginSettings { use_x_forwarded_for: false, ..trusting(&["10.0.0.0/8"]) };
        let off = resolve(&disabled, "10.0.0.1", "internal:4000", &forwarded);
        assert_eq!(off.source, OriginSource::Request);
        assert_eq!(off.forwarded_ignored, Some(ForwardedIgnored::Disabled));

        let nobody = resolve(&trusting(&[]), "10.0.0.1", "internal:4000", &forwarded);
        assert_eq!(nobody.source, OriginSource::Request);
    }

    #[test]
    fn any_doubt_discards_the_whole_forwarded_set() {
        let settings = trusting(&["10.0.0.0/8"]);
        for pairs in [
            vec![
                ("x-forwarded-proto", "https"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.example.com"),
            ],
            vec![("x-forwarded-proto", "https, http"), ("x-forwarded-host", "a.example.com")],
            vec![("x-forwarded-proto", "ftp"), ("x-forwarded-host", "a.example.com")],
            vec![("x-forwarded-host", "a.example.com, b.example.com")],
            vec![("x-forwarded-host", "A.example.com")],
            vec![("x-forwarded-host", "a.example.com:8443"), ("x-forwarded-port", "9443")],
            vec![("x-forwarded-host", "a.example.com"), ("x-forwarded-port", "0443")],
            vec![("x-forwarded-host", "a.example.com"), ("x-forwarded-port", "70000")],
            vec![("x-forwarded-host", "evil.com@a.example.com")],
            vec![("x-forwarded-host", "")],
        ] {
            let resolved = resolve(&settings, "10.0.0.1", "internal:4000", &pairs);
            assert_eq!(resolved.source, OriginSource::Request, "{pairs:?}");
            assert_eq!(resolved.forwarded_ignored, Some(ForwardedIgnored::Malformed), "{pairs:?}");
        }
    }

    #[test]
    fn forwarded_port_and_host_port_combine() {
        let settings = trusting(&["10.0.0.0/8"]);
        let with_port = resolve(
            &settings,
            "10.0.0.1",
            "internal",
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.example.com"),
                ("x-forwarded-port", "8443"),
            ],
        );
        assert_eq!(with_port.origin.to_string(), "https://a.example.com:8443");
        let agreeing = resolve(
            &settings,
            "10.0.0.1",
            "internal",
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.example.com:443"),
                ("x-forwarded-port", "443"),
            ],
        );
        assert_eq!(agreeing.origin.to_string(), "https://a.example.com");
    }

    #[test]
    fn rfc7239_forwarded_is_ignored() {
        let resolved = resolve(
            &trusting(&["10.0.0.0/8"]),
            "10.0.0.1",
            "internal:4000",
            &[("forwarded", "host=evil.com;proto=https")],
        );
        assert_eq!(resolved.origin.to_string(), "http://internal:4000");
        assert_eq!(resolved.forwarded_ignored, None);
    }

    #[test]
    fn request_host_must_be_valid_and_allowed() {
        let headers = HeaderMap::new();
        let request = |host| RequestOrigin { scheme: Scheme::Https, host, peer: None, headers: &headers };
        let settings = OriginSettings::default();
        assert_eq!(resolve_public_origin(&settings, &request(None)).unwrap_err(), OriginError::MissingHost);
        assert!(resolve_public_origin(&settings, &request(Some("evil.com/path"))).is_err());
        let resolved = resolve_public_origin(&settings, &request(Some("GW.example.com:443"))).unwrap();
        assert_eq!(resolved.origin.to_string(), "https://gw.example.com");
        let pinned =
            OriginSettings { allowed_hosts: vec!["gw.example.com".into()], ..OriginSettings::default() };
        assert!(resolve_public_origin(&pinned, &request(Some("gw.example.com"))).is_ok());
        assert!(matches!(
            resolve_public_origin(&pinned, &request(Some("evil.com"))),
            Err(OriginError::HostNotAllowed { .. })
        ));
    }

    #[test]
    fn two_host_headers_are_refused() {
        let headers = headers(&[("host", "gw.example.com"), ("host", "evil.example")]);
        let request = RequestOrigin {
            scheme: Scheme::Https,
            host: Some("gw.example.com"),
            peer: None,
            headers: &headers,
        };
        assert_eq!(
            resolve_public_origin(&OriginSettings::default(), &request),
            Err(OriginError::DuplicateHost)
        );
        assert_eq!(OriginError::DuplicateHost.reason(), "duplicate_host");
    }

    #[test]
    fn only_a_forwarded_scheme_takes_its_default_port() {
        // The proxy terminates TLS on 443 and forwards to the gateway's :4000 with the internal Host.
        let settings = trusting(&["10.0.0.0/8"]);
        let resolved =
            resolve(&settings, "10.0.0.1", "gw.example.com:4000", &[("x-forwarded-proto", "https")]);
        assert_eq!(resolved.origin.to_string(), "https://gw.example.com");
        let with_port = resolve(
            &settings,
            "10.0.0.1",
            "gw.example.com:4000",
            &[("x-forwarded-proto", "https"), ("x-forwarded-port", "8443")],
        );
        assert_eq!(with_port.origin.to_string(), "https://gw.example.com:8443");
    }

    #[test]
    fn a_slash_zero_trusts_everyone_and_is_refused() {
        for range in ["0.0.0.0/0", "::/0"] {
            assert!(
                matches!(TrustedProxies::parse(&[range]), Err(OriginError::InvalidProxyRange { .. })),
                "{range}"
            );
        }
        assert!(TrustedProxies::parse(&["0.0.0.0/1", "::/1"]).is_ok());
    }

    #[test]
    fn a_loopback_listen_address_pins_the_origin_in_place_of_host() {
        let mut settings = OriginSettings::default();
        assert!(!settings.is_pinned());
        assert!(!settings.pin_listen_address("0.0.0.0:4000".parse().unwrap()));
        assert!(!settings.is_pinned());
        assert!(settings.pin_listen_address("127.0.0.1:4000".parse().unwrap()));
        assert!(settings.is_pinned());
        let resolved = resolve(&settings, "127.0.0.1", "evil.example", &[]);
        assert_eq!(
            (resolved.origin.to_string(), resolved.source),
            ("http://127.0.0.1:4000".into(), OriginSource::Listen)
        );
        assert_eq!(OriginSource::Listen.as_str(), "listen");
        assert!(resolved.origin.is_loopback());
        assert!(settings.pin_listen_address("[::1]:4000".parse().unwrap()));
        assert_eq!(resolve(&settings, "::1", "evil.example", &[]).origin.to_string(), "http://[::1]:4000");
        // PROXY_BASE_URL keeps precedence.
        settings.proxy_base_url = Some(Origin::parse("https://gw.example.com").unwrap());
        assert_eq!(resolve(&settings, "127.0.0.1", "evil.example", &[]).source, OriginSource::ProxyBaseUrl);
        for (value, pinned) in [
            (OriginSettings { allowed_hosts: vec!["gw".into()], ..OriginSettings::default() }, true),
            (trusting(&["10.0.0.0/8"]), true),
            (OriginSettings { use_x_forwarded_for: true, ..OriginSettings::default() }, false),
            (
                OriginSettings {
                    trusted_proxies: TrustedProxies::parse(&["10.0.0.0/8"]).unwrap(),
                    ..OriginSettings::default()
                },
                false,
            ),
        ] {
            assert_eq!(value.is_pinned(), pinned, "{value:?}");
        }
        assert!(!Origin::parse("https://gw.example.com").unwrap().is_loopback());
        assert!(Origin::parse("http://localhost:4000").unwrap().is_loopback());
    }

    /// The `why` of a refused authority, or `None` when it parses.
    fn authority_why(raw: &str, case: HostCase) -> Option<&'static str> {
        match parse_authority(raw, case) {
            Ok(_) => None,
            Err(OriginError::NonCanonicalAuthority { why, .. }) => Some(why),
            Err(other) => panic!("{raw}: unexpected {other:?}"),
        }
    }

    #[test]
    fn origin_parse_says_which_part_is_not_an_origin() {
        let why = |value: &str| match Origin::parse(value) {
            Err(OriginError::InvalidOrigin { why, .. }) => why,
            other => panic!("{value}: {other:?}"),
        };
        assert_eq!(why("https://gw.example.com?x=1"), "it has a query");
        assert_eq!(why("https://gw.example.com#top"), "it has a fragment");
        assert_eq!(why("https://gw.example.com\\x"), "it contains a backslash");
        assert!(why("https://gw.example.com/x").starts_with("it has a path"));
        assert_eq!(why("https://u@gw.example.com"), "it contains userinfo (user@)");
    }

    #[test]
    fn origin_exposes_lower_case_host_and_effective_port() {
        let origin = Origin::parse("https://GW.Example.com:8443").unwrap();
        assert_eq!((origin.scheme(), origin.host(), origin.port()), (Scheme::Https, "gw.example.com", 8443));
        let default = Origin::parse("http://[::1]").unwrap();
        assert_eq!((default.host(), default.port()), ("[::1]", 80));
        assert_eq!(Origin::parse("https://gw.example.com").unwrap().port(), 443);
    }

    #[test]
    fn authority_length_limit_is_261_bytes() {
        // Four 63-byte labels and a 5-byte one: 261 bytes in all, the most a host[:port] may take.
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{label}.bcdef");
        assert_eq!(longest.len(), 261);
        assert_eq!(authority_why(&longest, HostCase::Strict), None);
        assert_eq!(
            authority_why(&format!("{longest}g"), HostCase::Strict),
            Some("empty or longer than 261 bytes")
        );
        assert_eq!(authority_why("", HostCase::Strict), Some("empty or longer than 261 bytes"));
    }

    #[test]
    fn bracketed_ipv6_authorities_with_and_without_a_port() {
        assert_eq!(parse_authority("[::1]", HostCase::Strict).unwrap(), ("[::1]".to_owned(), None));
        assert_eq!(
            parse_authority("[::1]:8443", HostCase::Strict).unwrap(),
            ("[::1]".to_owned(), Some(8443))
        );
        assert_eq!(authority_why("[::1]x", HostCase::Strict), Some("text after the IPv6 literal"));
        assert_eq!(authority_why("[::1", HostCase::Strict), Some("unclosed IPv6 bracket"));
    }

    #[test]
    fn brackets_and_colons_outside_an_ipv6_literal_are_misplaced() {
        for raw in ["a]b.example.com", "a[b.example.com", "a]b:443", "x[y:1"] {
            assert_eq!(authority_why(raw, HostCase::Strict), Some("misplaced ':' or bracket"), "{raw}");
        }
        assert_eq!(
            authority_why("a.example.com:1:2", HostCase::Strict),
            Some("port is not 1-65535 without leading zeros")
        );
    }

    #[test]
    fn trusted_proxies_emptiness() {
        assert!(TrustedProxies::default().is_empty());
        assert!(TrustedProxies::parse::<&str>(&[]).unwrap().is_empty());
        assert!(!TrustedProxies::parse(&["10.0.0.0/8"]).unwrap().is_empty());
    }

    #[test]
    fn origin_sources_and_ignored_reasons_have_stable_codes() {
        assert_eq!(OriginSource::ProxyBaseUrl.as_str(), "proxy_base_url");
        assert_eq!(OriginSource::Forwarded.as_str(), "forwarded");
        assert_eq!(OriginSource::Request.as_str(), "request");
        assert_eq!(ForwardedIgnored::Disabled.reason(), "forwarded_disabled");
        assert_eq!(ForwardedIgnored::UntrustedPeer.reason(), "untrusted_peer");
        assert_eq!(ForwardedIgnored::Malformed.reason(), "forwarded_malformed");
    }

    #[test]
    fn allowed_hosts_match_the_host_alone_or_with_its_port() {
        let headers = HeaderMap::new();
        let request =
            |host| RequestOrigin { scheme: Scheme::Https, host: Some(host), peer: None, headers: &headers };
        let bare =
            OriginSettings { allowed_hosts: vec!["gw.example.com".into()], ..OriginSettings::default() };
        let resolved = resolve_public_origin(&bare, &request("gw.example.com:8443")).unwrap();
        assert_eq!(resolved.origin.to_string(), "https://gw.example.com:8443");
        let with_port =
            OriginSettings { allowed_hosts: vec!["gw.example.com:8443".into()], ..OriginSettings::default() };
        assert!(resolve_public_origin(&with_port, &request("gw.example.com:8443")).is_ok());
        assert_eq!(
            resolve_public_origin(&with_port, &request("gw.example.com:9443")).unwrap_err().reason(),
            "host_not_allowed"
        );
    }

    #[test]
    fn single_value_refuses_empty_lists_and_invisible_characters() {
        let value = |raw: &str| {
            single_value(&headers(&[("x-forwarded-host", raw)]), "x-forwarded-host")
                .map(|v| v.map(str::to_owned))
        };
        assert_eq!(value("gw.example.com"), Ok(Some("gw.example.com".to_owned())));
        assert_eq!(value(""), Err(()));
        assert_eq!(value("a.example.com,b.example.com"), Err(()));
        assert_eq!(value("gw.example.com\t"), Err(()));
        assert_eq!(value("gw example.com"), Err(()));
        assert_eq!(single_value(&HeaderMap::new(), "x-forwarded-host"), Ok(None));
        let twice = headers(&[("x-forwarded-host", "a.example.com"), ("x-forwarded-host", "a.example.com")]);
        assert_eq!(single_value(&twice, "x-forwarded-host"), Err(()));
    }
}
