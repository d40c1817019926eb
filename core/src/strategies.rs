//! Proptest strategies for the policy inputs, for property tests in this workspace and downstream.
//!
//! Enabled by the `proptest` feature. Every strategy yields plain values (`String`, [`Origin`],
//! [`IpAddr`], `serde_json` objects) so a property can feed them to the core functions, to `eval`
//! lines, or to a gateway under test. Hosts come from two pools: a small vocabulary of labels, so
//! that an allowlist and a `redirect_uri` generated independently often name the same host, and
//! random labels for breadth. Attacker hosts ([`attacker_host`]) use a disjoint vocabulary and
//! documentation address ranges, so a property can assume they are allowed by nothing generated
//! here except by accident (which a property should still check with `prop_assume!`).
//!
//! ```
//! use mcp_oauth_core::redirect::{TrustedRedirectOrigins, validate_redirect_uri};
//! use mcp_oauth_core::strategies::{redirect_uri, trusted_redirect_origins_env};
//! use proptest::prelude::*;
//!
//! proptest!(|(uri in redirect_uri(), env in trusted_redirect_origins_env())| {
//!     let trusted = TrustedRedirectOrigins::parse(&env).unwrap(); // ok: doc example
//!     let verdict = validate_redirect_uri(&uri, None, &trusted);
//!     prop_assert!(verdict.uri().is_none_or(|url| url.fragment().is_none()));
//! });
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Value, json};

use crate::origin::{Origin, Scheme};
use crate::redirect::is_public_suffix;

/// Labels shared by generated allowlists, origins and `redirect_uri`s so that they often collide.
pub const HOST_LABELS: [&str; 12] =
    ["app", "api", "auth", "corp", "example", "gw", "login", "mcp", "sub", "x", "cb", "tenant"];

/// Top-level labels of the shared host vocabulary (never used by [`attacker_host`]).
pub const HOST_TLDS: [&str; 4] = ["com", "net", "org", "io"];

/// Labels and top-level labels of [`attacker_host`], disjoint from [`HOST_LABELS`] and [`HOST_TLDS`].
pub const ATTACKER_LABELS: [&str; 5] = ["evil", "attacker", "phish", "bad", "test"];

/// Text an attacker splices around an allowed host to make parsers disagree about the host.
pub const ATTACK_FRAGMENTS: [&str; 28] = [
    "@", "\\", "%2e", "%2E", "%40", "\t", "\u{3002}", "#", "?", ".", "/", ":", "%2f", "%5c", "\n", " ",
    "%00", "[", "]", ";", ",", "..", "%252e", "\u{ff0e}", "\u{ff20}", "//", "\\\\", "\u{0}",
];

/// A web scheme, `http` or `https`.
pub fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![Just(Scheme::Http), Just(Scheme::Https)]
}

/// A DNS label of lower-case letters and digits starting with a letter (canonical as written).
pub fn random_label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

/// A domain of 2–4 labels from [`HOST_LABELS`] ending in a [`HOST_TLDS`] label; collisions are common.
pub fn vocabulary_domain() -> impl Strategy<Value = String> {
    (proptest::collection::vec(select(&HOST_LABELS[..]), 1..=3), select(&HOST_TLDS[..])).prop_map(
        |(labels, tld)| {
            let mut domain = labels.join(".");
            domain.push('.');
            domain.push_str(tld);
            domain
        },
    )
}

/// A domain of 2–3 random labels ending in an alphabetic top-level label.
pub fn random_domain() -> impl Strategy<Value = String> {
    (proptest::collection::vec(random_label(), 1..=2), "[a-z]{2,4}")
        .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
}

/// A canonical lower-case domain name of at least two labels (never an IP, never loopback).
pub fn domain_host() -> impl Strategy<Value = String> {
    prop_oneof![3 => vocabulary_domain(), 1 => random_domain()]
        .prop_filter("localhost is loopback", |domain| domain != "localhost")
}

/// An IPv4 literal in dotted decimal (any address, loopback included).
pub fn ipv4_host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv4Addr>(),
        select(vec![
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(169, 254, 169, 254),
        ]),
    ]
    .prop_map(|ip| ip.to_string())
}

/// An IPv6 literal in brackets, serialised the way a URL parser prints it (`[2001:db8::1]`).
pub fn ipv6_host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv6Addr>(),
        select(vec![
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
        ]),
    ]
    .prop_map(|ip| url::Host::<String>::Ipv6(ip).to_string())
}

/// A loopback host as `is_loopback_host` knows it: `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn loopback_host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("[::1]".to_owned()),
        any::<(u8, u8, u8)>().prop_map(|(b, c, d)| format!("127.{b}.{c}.{d}")),
    ]
}

/// Any canonical host: a domain, an IPv4 or IPv6 literal, or a loopback host.
pub fn host() -> impl Strategy<Value = String> {
    prop_oneof![6 => domain_host(), 1 => ipv4_host(), 1 => ipv6_host(), 1 => loopback_host()]
}

/// A host no generated allowlist or origin names on purpose: attacker domains and documentation IPs.
pub fn attacker_host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (proptest::collection::vec(select(&ATTACKER_LABELS[..]), 1..=2), select(&ATTACKER_LABELS[..]))
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join("."))),
        1 => any::<u8>().prop_map(|last| format!("203.0.113.{last}")),
        1 => any::<u16>().prop_map(|last| url::Host::<String>::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, last)).to_string()),
    ]
}

/// An explicit port: `None` (the scheme default) most often, then 80, 443 and arbitrary ports.
pub fn port() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![
        5 => Just(None),
        1 => Just(Some(443)),
        1 => Just(Some(80)),
        1 => select(vec![8080_u16, 8443, 3000]).prop_map(Some),
        1 => (1_u16..=u16::MAX).prop_map(Some),
    ]
}

/// Writes `host[:port]`.
pub fn format_authority(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// A canonical `host[:port]`.
pub fn authority() -> impl Strategy<Value = String> {
    (host(), port()).prop_map(|(host, port)| format_authority(&host, port))
}

/// An origin (scheme, canonical host, port) such as a `PROXY_BASE_URL` names.
pub fn origin() -> impl Strategy<Value = Origin> {
    (scheme(), host(), port()).prop_map(|(scheme, host, port)| Origin::new(scheme, &host, port))
}

/// A path and optional query for a `redirect_uri` (possibly empty), made of unreserved characters.
pub fn redirect_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/".to_owned()),
        Just("/cb".to_owned()),
        Just("/oauth/callback".to_owned()),
        Just("/callback?client=cli".to_owned()),
        "(/[a-zA-Z0-9._~-]{0,8}){0,3}(\\?[a-z]{1,3}=[a-zA-Z0-9%]{0,6})?",
    ]
}

/// A canonical `redirect_uri` on `authority` with a random scheme and path.
pub fn redirect_uri_on(authority: String) -> impl Strategy<Value = String> {
    (scheme(), redirect_path())
        .prop_map(move |(scheme, path)| format!("{}://{authority}{path}", scheme.as_str()))
}

/// A canonical `redirect_uri`: `http(s)://host[:port]/path?query`, written as a URL parser prints it.
pub fn canonical_redirect_uri() -> impl Strategy<Value = String> {
    authority().prop_flat_map(redirect_uri_on)
}

/// One of [`ATTACK_FRAGMENTS`].
pub fn attack_fragment() -> impl Strategy<Value = String> {
    select(&ATTACK_FRAGMENTS[..]).prop_map(str::to_owned)
}

/// Each URI of `uris` with one random mangling (spliced text, case, userinfo, `#`, backslash, port, ...).
pub fn mangled(uris: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (uris, 0_u8..18, any::<Index>(), attack_fragment())
        .prop_map(|(uri, kind, index, fragment)| mangle(&uri, kind, index, &fragment))
}

fn mangle(uri: &str, kind: u8, index: Index, fragment: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("https", uri));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => (&authority[..at], Some(&authority[at + 1..])),
        _ => (authority, None),
    };
    let with_port = |host: &str| match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    match kind {
        0 => {
            let at = index.index(uri.len() + 1);
            let at = (0..=at).rev().find(|at| uri.is_char_boundary(*at)).unwrap_or(0);
            format!("{}{fragment}{}", &uri[..at], &uri[at..])
        }
        1 => format!("{scheme}://{authority}{fragment}{tail}"),
        2 => format!("{scheme}://{fragment}{authority}{tail}"),
        3 => format!("{scheme}://{}{tail}", authority.to_ascii_uppercase()),
        4 => {
            let userinfo = ["user@", "user:pw@", "@", ":@", "%40@"][index.index(5)];
            format!("{scheme}://{userinfo}{authority}{tail}")
        }
        5 => format!("{uri}#{}", ["", "frag", "@evil.test"][index.index(3)]),
        6 => format!("{scheme}://{authority}\\{}", tail.trim_start_matches('/')),
        7 => format!("{scheme}://{host}:0{}{tail}", port.unwrap_or("443")),
        8 => format!("{scheme}://{}{tail}", with_port(&format!("{host}."))),
        9 => format!("{}://{authority}{tail}", scheme.to_ascii_uppercase()),
        10 => format!("{scheme}:/{authority}{tail}"),
        11 => format!("{scheme}:///{authority}{tail}"),
        12 => {
            let encoded: String = host.bytes().map(|b| format!("%{b:02X}")).collect();
            format!("{scheme}://{}{tail}", with_port(&encoded))
        }
        13 => format!(
            "{scheme}://{}{tail}",
            with_port(&host.replace('.', ["\u{3002}", "%2e", ".."][index.index(3)]))
        ),
        14 => {
            let alternative =
                ["0x7f.0.0.1", "2130706433", "127.1", "0177.0.0.1", "127.0.0.1.", "[::ffff:7f00:1]"];
            format!("{scheme}://{}{tail}", with_port(alternative[index.index(alternative.len())]))
        }
        15 => format!("{uri}{}{}", if tail.is_empty() { "/" } else { "" }, "a".repeat(2048)),
        16 => [format!(" {uri}"), format!("{uri} "), format!("{uri}\n"), format!("\t{uri}")][index.index(4)]
            .clone(),
        _ => format!("{scheme}://{host}:{tail}"),
    }
}

/// A canonical `redirect_uri` with one mangling applied (which may or may not make it invalid).
pub fn mangled_redirect_uri() -> impl Strategy<Value = String> {
    mangled(canonical_redirect_uri())
}

/// Any `redirect_uri` string: canonical or mangled, on random hosts.
pub fn redirect_uri() -> impl Strategy<Value = String> {
    prop_oneof![canonical_redirect_uri(), mangled_redirect_uri()]
}

/// `host[:port]`s that an allowlist entry covers or nearly covers (subdomains, the bare suffix, port 8443).
pub fn authorities_near_entry(entry: &str) -> Vec<String> {
    let (wildcard, rest) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let (host, port) = match rest.rfind(':') {
        Some(at) if !rest[at..].contains(']') => (&rest[..at], rest[at + 1..].parse::<u16>().ok()),
        _ => (rest, None),
    };
    let host = host.to_ascii_lowercase();
    let mut authorities = Vec::new();
    for port in [port, Some(8443)] {
        if wildcard {
            authorities.push(format_authority(&format!("app.{host}"), port));
            authorities.push(format_authority(&format!("a.b.{host}"), port));
        }
        authorities.push(format_authority(&host, port));
    }
    authorities
}

/// `redirect_uri`s aimed at one configuration's public origin and allowlist, random ones, and mangled ones.
pub fn redirect_uri_for(public_origin: Option<Origin>, trusted_env: &str) -> BoxedStrategy<String> {
    let mut authorities: Vec<String> = Vec::new();
    if let Some(origin) = &public_origin {
        authorities.push(format_authority(origin.host(), Some(origin.port())));
        authorities.push(origin.host().to_owned());
        authorities.push(format_authority(origin.host(), Some(8443)));
    }
    for entry in trusted_env.split(',').map(|entry| entry.trim_matches([' ', '\t'])).filter(|e| !e.is_empty())
    {
        authorities.extend(authorities_near_entry(entry));
    }
    let mut exact: Vec<String> = Vec::new();
    if let Some(origin) = &public_origin {
        exact.push(origin.to_string());
    }
    let aimed = if authorities.is_empty() {
        canonical_redirect_uri().boxed()
    } else {
        select(authorities).prop_flat_map(redirect_uri_on).boxed()
    };
    let on_origin = if exact.is_empty() {
        canonical_redirect_uri().boxed()
    } else {
        (select(exact), redirect_path()).prop_map(|(origin, path)| format!("{origin}{path}")).boxed()
    };
    prop_oneof![
        3 => aimed.clone(),
        2 => on_origin.clone(),
        1 => canonical_redirect_uri(),
        2 => mangled(aimed),
        1 => mangled(on_origin),
        1 => mangled_redirect_uri(),
    ]
    .boxed()
}

/// A domain that may follow `*.` in an allowlist: a [`domain_host`] that is not a public suffix.
pub fn wildcard_suffix() -> impl Strategy<Value = String> {
    domain_host().prop_filter("a public suffix is refused under `*.`", |suffix| !is_public_suffix(suffix))
}

/// Public suffixes of the ICANN and private sections of the Public Suffix List, none of which has
/// a wildcard or exception rule below it, so one more label (`acme…`) makes a registrable domain.
pub const PUBLIC_SUFFIXES: [&str; 11] = [
    "com",
    "org",
    "io",
    "co.uk",
    "com.au",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "blogspot.com",
    "pages.dev",
    "vercel.app",
];

/// One valid `MCP_TRUSTED_REDIRECT_ORIGINS` entry: `host`, `host:port` or `*.suffix[:port]`.
pub fn trusted_redirect_entry() -> impl Strategy<Value = String> {
    let entry_port =
        prop_oneof![3 => Just(None), 1 => Just(Some(443)), 1 => (1_u16..=u16::MAX).prop_map(Some)];
    prop_oneof![
        2 => (host(), entry_port.clone()).prop_map(|(host, port)| format_authority(&host, port)),
        1 => (wildcard_suffix(), entry_port).prop_map(|(suffix, port)| format!("*.{}", format_authority(&suffix, port))),
    ]
}

/// A valid `MCP_TRUSTED_REDIRECT_ORIGINS` value: 0–4 entries, commas with optional blanks and empty items.
pub fn trusted_redirect_origins_env() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (trusted_redirect_entry(), select(vec![",", ", ", " ,\t", ",,", "\t, "])),
        0..=4,
    )
    .prop_map(|entries| {
        let mut env = String::new();
        for (index, (entry, separator)) in entries.iter().enumerate() {
            if index > 0 {
                env.push_str(separator);
            }
            env.push_str(entry);
        }
        env
    })
}

/// A valid `mcp_trusted_proxy_ranges` item: a CIDR network address or a single IP, v4 or v6 (never
/// a /0, which trusts everyone and is refused).
pub fn trusted_proxy_range() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "10.0.0.0/8", "10.0.0.0/24", "192.168.0.0/16", "172.16.0.0/12", "127.0.0.1", "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1",
            "fd00::/8", "::1", "::ffff:10.0.0.5", "10.0.0.5", "2001:db8::/32",
        ])
        .prop_map(str::to_owned),
        1 => (any::<u32>(), 1_u32..=32).prop_map(|(address, prefix)| {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            format!("{}/{prefix}", Ipv4Addr::from(address & mask))
        }),
        1 => (any::<u128>(), 1_u32..=128).prop_map(|(address, prefix)| {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            format!("{}/{prefix}", Ipv6Addr::from(address & mask))
        }),
    ]
}

/// A valid `mcp_trusted_proxy_ranges` list of 0–3 items (empty trusts nobody).
pub fn trusted_proxy_ranges() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(trusted_proxy_range(), 0..=3)
}

/// A TCP peer address, biased towards private, loopback and IPv4-mapped IPv6 addresses.
pub fn peer_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => select(vec![
            "10.0.0.5", "10.1.2.3", "192.168.1.1", "172.16.0.1", "127.0.0.1", "8.8.8.8", "::1", "fd00::1",
            "::ffff:10.0.0.5", "::ffff:192.168.1.1", "2001:db8::1", "::",
        ])
        .prop_filter_map("a listed address", |ip| ip.parse::<IpAddr>().ok()),
        1 => any::<Ipv4Addr>().prop_map(IpAddr::V4),
        1 => any::<Ipv6Addr>().prop_map(IpAddr::V6),
    ]
}

/// One `X-Forwarded-Proto`, `-Host` or `-Port` header (name in random case) with a valid or hostile value.
pub fn forwarded_header() -> impl Strategy<Value = (String, String)> {
    let proto = select(vec!["http", "https", "HTTPS", "ftp", "http, https", "https,http", "", " https"])
        .prop_map(str::to_owned);
    let forwarded_host = prop_oneof![
        4 => authority(),
        1 => authority().prop_map(|authority| authority.to_ascii_uppercase()),
        1 => select(vec![
            "a.example.com,evil.test", "evil.test/x", "user@evil.test", "evil.test:0443", "[::1]:8080",
            "evil.test:", "", "evil.test.", "EVIL.test", "evil%2etest",
        ])
        .prop_map(str::to_owned),
    ];
    let forwarded_port = prop_oneof![
        3 => select(vec!["443", "80", "8443"]).prop_map(str::to_owned),
        1 => select(vec!["0", "0443", "65536", "abc", "", "443,80", "+443"]).prop_map(str::to_owned),
        1 => (1_u16..=u16::MAX).prop_map(|port| port.to_string()),
    ];
    prop_oneof![
        (select(vec!["x-forwarded-proto", "X-Forwarded-Proto"]), proto),
        (select(vec!["x-forwarded-host", "X-Forwarded-Host"]), forwarded_host),
        (select(vec!["x-forwarded-port", "X-FORWARDED-PORT"]), forwarded_port),
    ]
    .prop_map(|(name, value)| (name.to_owned(), value))
}

/// A well-formed forwarded set: `X-Forwarded-Host` (canonical) plus optional `-Proto` and agreeing `-Port`.
pub fn valid_forwarded_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    (host(), port(), proptest::option::of(scheme()), 0_u8..3).prop_map(|(host, port, proto, port_style)| {
        let mut headers = Vec::new();
        if let Some(proto) = proto {
            headers.push(("x-forwarded-proto".to_owned(), proto.as_str().to_owned()));
        }
        match (port, port_style) {
            (Some(port), 0) => {
                headers.push(("x-forwarded-host".to_owned(), format_authority(&host, Some(port))))
            }
            (Some(port), 1) => {
                headers.push(("x-forwarded-host".to_owned(), host));
                headers.push(("x-forwarded-port".to_owned(), port.to_string()));
            }
            (Some(port), _) => {
                headers.push(("x-forwarded-host".to_owned(), format_authority(&host, Some(port))));
                headers.push(("X-Forwarded-Port".to_owned(), port.to_string()));
            }
            (None, _) => headers.push(("x-forwarded-host".to_owned(), host)),
        }
        headers
    })
}

/// 0–4 `X-Forwarded-*` headers (repeats and hostile values included) or a well-formed set.
pub fn forwarded_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![3 => proptest::collection::vec(forwarded_header(), 0..=4), 1 => valid_forwarded_headers()]
}

/// 0–3 other headers a request may carry: RFC 7239 `Forwarded`, `X-Forwarded-For`, `X-Real-IP`, noise.
pub fn other_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let header = prop_oneof![
        authority().prop_map(|authority| (
            "forwarded".to_owned(),
            format!("for=1.2.3.4;host={authority};proto=https")
        )),
        peer_ip().prop_map(|ip| ("x-forwarded-for".to_owned(), ip.to_string())),
        peer_ip().prop_map(|ip| ("x-real-ip".to_owned(), ip.to_string())),
        authority().prop_map(|authority| ("x-original-host".to_owned(), authority)),
        Just(("accept".to_owned(), "application/json, text/event-stream".to_owned())),
    ];
    proptest::collection::vec(header, 0..=3)
}

/// Builds a `HeaderMap` from `(name, value)` pairs in order, skipping pairs `http` cannot represent.
pub fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value.as_bytes()))
        {
            map.append(name, value);
        }
    }
    map
}

/// A request's `Host` header: absent, canonical, upper-case or malformed.
pub fn request_host() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        6 => authority().prop_map(Some),
        1 => authority().prop_map(|authority| Some(authority.to_ascii_uppercase())),
        1 => select(vec!["a b", "evil.test:0", "evil.test:99999", "", "user@evil.test", "[::1"])
            .prop_map(|host| Some(host.to_owned())),
    ]
}

/// An `allowed_hosts` list as loaded (lower-case `host` or `host:port`), usually empty.
pub fn allowed_hosts() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(authority(), 1..=3)]
}

/// Server names from a small pool, so that paths, headers and server maps name the same servers.
pub fn server_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(vec!["alpha", "beta", "gamma", "delta"]),
        1 => select(vec!["Alpha", "unknown"]),
    ]
    .prop_map(str::to_owned)
}

/// An `authorization_url`/`issuer` value; several spellings name the same authorization server.
pub fn authorization_server_url() -> impl Strategy<Value = String> {
    select(vec![
        "https://auth.example.com",
        "https://auth.example.com/",
        "https://AUTH.example.com",
        "https://auth.example.com:443/",
        "HTTPS://auth.example.com",
        "https://auth.example.com/tenant",
        "https://auth.example.com/tenant/",
        "https://auth.example.com:8443",
        "http://auth.example.com",
        "https://other.example.com",
    ])
    .prop_map(str::to_owned)
}

/// A field value or its absence: `None` means the key is left out of the entry.
fn field(values: Vec<(u32, Value)>) -> impl Strategy<Value = Option<Value>> {
    let weighted: Vec<(u32, BoxedStrategy<Option<Value>>)> =
        values.into_iter().map(|(weight, value)| (weight, Just(Some(value)).boxed())).collect();
    let mut arms = weighted;
    arms.push((2, Just(None).boxed()));
    proptest::strategy::Union::new_weighted(arms)
}

/// A well-formed interactive `auth_type: oauth2` entry with `delegate_auth_to_upstream: true`.
pub fn delegating_server_entry() -> impl Strategy<Value = Value> {
    let flow = field(vec![(1, json!("authorization_code"))]);
    let credentials = proptest::option::of(Just((json!("client-id"), json!("client-secret"))));
    let server_url = || proptest::option::weighted(0.7, authorization_server_url());
    (flow, credentials, server_url(), server_url()).prop_map(
        |(flow, credentials, authorization_url, issuer)| {
            let mut object = Map::new();
            object.insert("url".to_owned(), json!("https://mcp.example.com/mcp"));
            object.insert("auth_type".to_owned(), json!("oauth2"));
            if let Some(flow) = flow {
                object.insert("oauth2_flow".to_owned(), flow);
            }
            if let Some((client_id, client_secret)) = credentials {
                object.insert("client_id".to_owned(), client_id);
                object.insert("client_secret".to_owned(), client_secret);
            }
            if let Some(url) = authorization_url {
                object.insert("authorization_url".to_owned(), Value::String(url));
            }
            if let Some(url) = issuer {
                object.insert("issuer".to_owned(), Value::String(url));
            }
            object.insert("delegate_auth_to_upstream".to_owned(), json!(true));
            Value::Object(object)
        },
    )
}

/// One `mcp_servers` entry (LiteLLM shape, JSON object): mostly [`delegating_server_entry`], else noisy.
pub fn server_entry() -> impl Strategy<Value = Value> {
    prop_oneof![2 => delegating_server_entry(), 1 => noisy_server_entry()]
}

/// An `mcp_servers` entry with every field drawn independently: wrong types, blanks, unknown values.
pub fn noisy_server_entry() -> impl Strategy<Value = Value> {
    let url = field(vec![(4, json!("https://mcp.example.com/mcp")), (1, json!("http://127.0.0.1:9000/mcp"))]);
    let auth_type = field(vec![
        (12, json!("oauth2")),
        (1, json!("none")),
        (1, json!("api_key")),
        (1, json!("oauth2_token_exchange")),
        (1, json!("OAuth2")),
        (1, json!("")),
        (1, Value::Null),
    ]);
    let oauth2_flow = field(vec![
        (4, json!("authorization_code")),
        (1, json!("client_credentials")),
        (1, json!("implicit")),
        (1, json!(" ")),
        (1, Value::Null),
    ]);
    let credential = |name: &str| {
        field(vec![
            (3, json!(name)),
            (1, json!("")),
            (1, json!("  ")),
            (1, json!(format!("os.environ/UNSET_{}", name.to_ascii_uppercase()))),
            (1, json!(5)),
        ])
    };
    let token_url = field(vec![(2, json!("https://auth.example.com/token")), (1, json!(""))]);
    let server_url = || {
        prop_oneof![
            4 => authorization_server_url().prop_map(|url| Some(Value::String(url))),
            1 => Just(Some(json!(""))),
            3 => Just(None),
        ]
    };
    let delegate = field(vec![
        (12, json!(true)),
        (2, json!(false)),
        (1, json!("true")),
        (1, json!(1)),
        (1, Value::Null),
    ]);
    let public = field(vec![(1, json!(true)), (1, json!(false))]);
    (
        (url, auth_type, oauth2_flow, credential("client-id"), credential("client-secret")),
        (token_url, server_url(), server_url(), delegate, public),
    )
        .prop_map(
            |(
                (url, auth_type, oauth2_flow, client_id, client_secret),
                (token_url, authorization_url, issuer, delegate, public),
            )| {
                let mut object = Map::new();
                for (key, value) in [
                    ("url", url),
                    ("auth_type", auth_type),
                    ("oauth2_flow", oauth2_flow),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                    ("token_url", token_url),
                    ("authorization_url", authorization_url),
                    ("issuer", issuer),
                    ("delegate_auth_to_upstream", delegate),
                    ("available_on_public_internet", public),
                ] {
                    if let Some(value) = value {
                        object.insert(key.to_owned(), value);
                    }
                }
                Value::Object(object)
            },
        )
}

/// An `mcp_servers` map: each of `alpha`, `beta`, `gamma`, `delta` present with probability 0.85.
pub fn server_map() -> impl Strategy<Value = Map<String, Value>> {
    let entry = || proptest::option::weighted(0.85, server_entry());
    (entry(), entry(), entry(), entry()).prop_map(|(alpha, beta, gamma, delta)| {
        [("alpha", alpha), ("beta", beta), ("gamma", gamma), ("delta", delta)]
            .into_iter()
            .filter_map(|(name, entry)| Some((name.to_owned(), entry?)))
            .collect()
    })
}

/// A request path and the server it names by design §4.6 (`/{server}/mcp`), if any.
pub fn request_path() -> impl Strategy<Value = (String, Option<String>)> {
    (server_name(), server_name(), 0_u8..16).prop_map(|(name, other, kind)| match kind {
        0..=2 | 12..=15 => (format!("/{name}/mcp"), Some(name)),
        // A trailing slash makes the path ambiguous: the router reads no server from it.
        3 => (format!("/{name}/mcp/"), None),
        4 => (format!("/{name}/mcp?session=1"), Some(name)),
        5 => ("/mcp".to_owned(), None),
        6 => (format!("/{name}/{other}/mcp"), None),
        7 => (format!("/{name}/mcp/tools"), None),
        8 => (format!("/{name}"), None),
        9 => ("//mcp".to_owned(), None),
        10 => (String::new(), None),
        _ => (format!("/{name}/MCP"), None),
    })
}

/// 0–2 `x-mcp-servers` header values: comma-separated names, blanks, empty items, rarely non-ASCII bytes.
pub fn servers_header_values() -> impl Strategy<Value = Vec<String>> {
    let value = prop_oneof![
        24 => proptest::collection::vec((server_name(), select(vec![",", ", ", " , ", ",,", ",\t"])), 0..=3)
            .prop_map(|names| {
                let mut value = String::new();
                for (name, separator) in names {
                    value.push_str(&name);
                    value.push_str(separator);
                }
                value
            }),
        1 => server_name().prop_map(|name| format!("{name},caf\u{e9}")),
    ];
    proptest::collection::vec(value, 0..=2)
}

/// A gateway-key header (`x-mcp-gateway-key` or its alias, any case) with a key, or none.
pub fn gateway_key_header() -> impl Strategy<Value = Option<(String, String)>> {
    prop_oneof![
        4 => Just(None),
        1 => select(vec!["x-mcp-gateway-key", "X-LiteLLM-API-Key", "x-litellm-api-key"])
            .prop_map(|name| Some((name.to_owned(), "sk-gateway-key-1234".to_owned()))),
    ]
}

/// A character of a secret: mostly visible ASCII, sometimes any character except blank or tab.
pub fn secret_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => (b'!'..=b'~').prop_map(char::from),
        1 => any::<char>().prop_filter("not a separator", |c| *c != ' ' && *c != '\t'),
    ]
}

/// A secret of `len` characters without blanks or tabs (which would split a scheme word).
pub fn secret_with_len(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(secret_char(), len)
        .prop_map(String::from_iter)
        .prop_filter("a bare `Bearer` or `Basic` reads as a scheme word", |secret| {
            !secret.eq_ignore_ascii_case("bearer") && !secret.eq_ignore_ascii_case("basic")
        })
}

/// A secret of 0–64 characters without blanks or tabs.
pub fn secret() -> impl Strategy<Value = String> {
    secret_with_len(0..=64)
}

/// A credential's leading scheme word with its separator (`Bearer `, `basic\t`, ...) or nothing.
pub fn scheme_word() -> impl Strategy<Value = String> {
    select(vec!["", "Bearer ", "bearer ", "BEARER\t", "Basic ", "basic  ", "Basic\t "])
        .prop_map(str::to_owned)
}

/// An ordinary URL path segment that must stay visible when a URL is masked: words, names,
/// version tags and dates.
pub fn ordinary_path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["mcp", "api", "sse", "v1", "v2", "s", "zap", "servers", "github-mcp-server",
            "google-drive-v2", "2025-03-26", "messages", "tools", "brave_search", "sk-", ""])
            .prop_map(str::to_owned),
        1 => "[a-z]{1,12}(-[a-z]{1,8}){0,2}".prop_filter("a token prefix makes a credential", |segment: &String| {
            !crate::mask::CREDENTIAL_PREFIXES.iter().any(|prefix| segment.starts_with(prefix))
        }),
    ]
}

/// A credential as services put it in a URL path: a known token prefix, a random mix of letters
/// and digits, a UUID, or a long random run (design §4.7; [`crate::mask::looks_like_credential`]).
pub fn path_secret() -> impl Strategy<Value = String> {
    prop_oneof![
        (select(&crate::mask::CREDENTIAL_PREFIXES[..]), "[A-Za-z0-9_-]{1,40}")
            .prop_map(|(prefix, rest)| format!("{prefix}{rest}")),
        "[A-Za-z0-9]{0,6}[0-9][A-Za-z]{0,3}[A-Za-z0-9]{3,40}[A-Za-z][A-Za-z0-9]{0,6}"
            .prop_filter("a run of 8 with a digit and a letter", |s| s.len() >= 8),
        "[A-Z]{4,10}-[0-9a-f]{5}[0-9][a-f][0-9a-f]{5}",
        "[0-9a-f]{3}[0-9][a-f][0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[A-Za-z]{24,48}",
    ]
}

/// The verdict of design §4.6 a [`delegation_request`] is aimed at, one per reason code of
/// `crate::delegate`, with delegation itself split into one target and several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DelegationAim {
    /// A gateway-key header is present (`gateway_key_present`).
    GatewayKey,
    /// An `x-mcp-servers` value is not visible ASCII (`malformed_servers_header`).
    MalformedHeader,
    /// Neither the path nor the header names a server (`no_targets`).
    NoTargets,
    /// One target is not configured (`unknown_server`).
    UnknownServer,
    /// One target's entry does not load (`invalid_server_config`).
    InvalidServer,
    /// One target is not `auth_type: oauth2` (`not_oauth2`).
    NotOAuth2,
    /// One target uses a non-interactive flow (`not_interactive`).
    NotInteractive,
    /// One target has `delegate_auth_to_upstream` false or absent (`delegation_disabled`).
    DelegationDisabled,
    /// Several delegating targets, one naming no authorization server (`authorization_server_unknown`).
    AuthorizationServerUnknown,
    /// Several delegating targets naming different authorization servers (`mixed_authorization_servers`).
    MixedAuthorizationServers,
    /// One delegating target (`all_targets_delegate`).
    DelegateOne,
    /// Several delegating targets sharing one authorization server (`all_targets_delegate`).
    DelegateSeveral,
}

impl DelegationAim {
    /// Every aim, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::GatewayKey,
        Self::MalformedHeader,
        Self::NoTargets,
        Self::UnknownServer,
        Self::InvalidServer,
        Self::NotOAuth2,
        Self::NotInteractive,
        Self::DelegationDisabled,
        Self::AuthorizationServerUnknown,
        Self::MixedAuthorizationServers,
        Self::DelegateOne,
        Self::DelegateSeveral,
    ];
}

/// One generated request for the delegation decision, with the servers it may name.
#[derive(Clone, Debug)]
pub struct DelegationRequest {
    /// What the request was aimed at (a property must not trust it: it is only a generation hint).
    pub aim: DelegationAim,
    /// The `mcp_servers` map.
    pub servers: Map<String, Value>,
    /// The request path.
    pub path: String,
    /// The server the path names by design §4.6 (`/{server}/mcp`), if any.
    pub path_target: Option<String>,
    /// The `x-mcp-servers` header values, in order.
    pub servers_headers: Vec<String>,
    /// A gateway-key header, if any.
    pub gateway_key: Option<(String, String)>,
}

/// Spellings of `https://auth.example.com` (equal after origin normalisation), and two others.
const SAME_AUTHORIZATION_SERVER: [&str; 5] = [
    "https://auth.example.com",
    "https://auth.example.com/",
    "https://AUTH.example.com",
    "https://auth.example.com:443/",
    "HTTPS://auth.example.com",
];

/// A delegating entry naming `server` (as `authorization_url`, `issuer` or both), or no server.
fn delegating_entry(server: Option<&str>, how: u8) -> Value {
    let mut object = Map::new();
    object.insert("url".to_owned(), json!("https://mcp.example.com/mcp"));
    object.insert("auth_type".to_owned(), json!("oauth2"));
    if how & 1 == 1 {
        object.insert("oauth2_flow".to_owned(), json!("authorization_code"));
    }
    if let Some(server) = server {
        match how % 3 {
            0 => object.insert("authorization_url".to_owned(), json!(server)),
            1 => object.insert("issuer".to_owned(), json!(server)),
            _ => {
                object.insert("issuer".to_owned(), json!(server));
                object.insert("authorization_url".to_owned(), json!(server))
            }
        };
    }
    object.insert("delegate_auth_to_upstream".to_owned(), json!(true));
    Value::Object(object)
}

/// An entry that loads but fails one of the per-target rules of design §4.6, for `aim`.
fn failing_entry(aim: DelegationAim, how: u8) -> Option<Value> {
    let mut entry = delegating_entry(Some(SAME_AUTHORIZATION_SERVER[usize::from(how) % 5]), how);
    let object = entry.as_object_mut()?;
    match aim {
        DelegationAim::UnknownServer => return None,
        DelegationAim::InvalidServer => {
            let (key, value) = [
                ("auth_type", json!("OAuth2")),
                ("delegate_auth_to_upstream", json!("true")),
                ("oauth2_flow", json!("implicit")),
                ("auth_type", json!("")),
            ][usize::from(how) % 4]
                .clone();
            object.insert(key.to_owned(), value);
        }
        DelegationAim::NotOAuth2 => {
            let auth_type = ["none", "oauth2_token_exchange", "none"][usize::from(how) % 3];
            object.insert("auth_type".to_owned(), json!(auth_type));
            object.remove("oauth2_flow");
        }
        DelegationAim::NotInteractive => {
            object.insert("oauth2_flow".to_owned(), json!("client_credentials"));
            object.insert("client_id".to_owned(), json!("client-id"));
            object.insert("client_secret".to_owned(), json!("client-secret"));
            object.insert("token_url".to_owned(), json!("https://auth.example.com/token"));
        }
        DelegationAim::DelegationDisabled => {
            if how & 2 == 2 {
                object.insert("delegate_auth_to_upstream".to_owned(), json!(false));
            } else {
                object.remove("delegate_auth_to_upstream");
            }
        }
        _ => {}
    }
    Some(entry)
}

/// A request for the delegation decision aimed at one [`DelegationAim`], chosen uniformly except
/// that [`DelegationAim::DelegateSeveral`] counts twice, so each verdict of design §4.6 comes up in
/// about one case in thirteen and delegation to several targets in two: the targets (1–3 of `alpha`,
/// `beta`, `gamma`, `delta`) are named by the path, the header or both, in any order, with
/// duplicates, blanks and a second header value; servers that are not targets get noisy entries.
pub fn delegation_request() -> impl Strategy<Value = DelegationRequest> {
    let names = Just(vec!["alpha", "beta", "gamma", "delta"]).prop_shuffle();
    let bystanders = proptest::collection::vec(proptest::option::weighted(0.7, noisy_server_entry()), 4);
    // Delegation to several targets counts twice: it is the case token passthrough hides behind.
    let mut aims = DelegationAim::ALL.to_vec();
    aims.push(DelegationAim::DelegateSeveral);
    (
        select(aims),
        names,
        bystanders,
        (1_usize..=3, any::<u8>(), any::<u8>(), any::<u8>(), 0_usize..3),
        (0_u8..6, select(vec![",", ", ", " , ", ",,", ",\t"]), any::<bool>(), gateway_key_header()),
    )
        .prop_map(|(aim, names, bystanders, (count, how, seed, position, failing), shape)| {
            let (path_kind, separator, split, key) = shape;
            build_delegation_request(
                aim,
                &names,
                bystanders,
                (count, how, seed, position, failing),
                (path_kind, separator, split, key),
            )
        })
}

#[allow(clippy::type_complexity)]
fn build_delegation_request(
    aim: DelegationAim,
    names: &[&str],
    bystanders: Vec<Option<Value>>,
    (count, how, seed, position, failing): (usize, u8, u8, u8, usize),
    (path_kind, separator, split, key): (u8, &str, bool, Option<(String, String)>),
) -> DelegationRequest {
    use DelegationAim as A;
    let several =
        matches!(aim, A::AuthorizationServerUnknown | A::MixedAuthorizationServers | A::DelegateSeveral);
    let count = match aim {
        A::NoTargets => 0,
        A::DelegateOne => 1,
        _ if several => count.clamp(2, 3),
        _ => count,
    };
    let targets: Vec<&str> = names.iter().copied().take(count).collect();
    let mut servers: Map<String, Value> = Map::new();
    for (name, entry) in names.iter().zip(bystanders) {
        if let Some(entry) = entry {
            servers.insert((*name).to_owned(), entry);
        }
    }
    let failing = failing % count.max(1);
    for (index, name) in targets.iter().enumerate() {
        let spelling = SAME_AUTHORIZATION_SERVER[(usize::from(seed) + index) % 5];
        let entry = match aim {
            A::UnknownServer
            | A::InvalidServer
            | A::NotOAuth2
            | A::NotInteractive
            | A::DelegationDisabled
                if index == failing =>
            {
                failing_entry(aim, how.wrapping_add(u8::try_from(index).unwrap_or(0)))
            }
            A::AuthorizationServerUnknown if index == failing => Some(delegating_entry(None, how)),
            A::MixedAuthorizationServers if index == failing => Some(delegating_entry(
                Some(
                    [
                        "https://other.example.com",
                        "https://auth.example.com/tenant",
                        "https://auth.example.com:8443",
                    ][usize::from(seed) % 3],
                ),
                how,
            )),
            _ => Some(delegating_entry(Some(spelling), how.rotate_left(u32::try_from(index).unwrap_or(0)))),
        };
        match entry {
            Some(entry) => servers.insert((*name).to_owned(), entry),
            None => servers.remove(*name),
        };
    }
    // The first target goes in the path in most shapes; the rest, and sometimes all, in the header.
    let (path, path_target, in_header): (String, Option<String>, Vec<&str>) =
        match (targets.first(), path_kind) {
            (Some(first), 0..=2) => {
                let path =
                    // (A trailing slash would make the path ambiguous: the router names no server then.)
                    [format!("/{first}/mcp"), format!("/{first}/mcp?"), format!("/{first}/mcp?session=1")]
                        [usize::from(path_kind)]
                    .clone();
                let mut rest: Vec<&str> = targets[1..].to_vec();
                if position & 1 == 1 {
                    rest.push(first);
                }
                (path, Some((*first).to_owned()), rest)
            }
            _ => {
                let path =
                    ["/mcp", "", "/mcp/", "/x/y/mcp", "/mcp-rest/tools/list", "/mcp"][usize::from(path_kind)];
                (path.to_owned(), None, targets.clone())
            }
        };
    let mut values: Vec<String> = Vec::new();
    if !in_header.is_empty() || position & 2 == 2 {
        let cut = if split { usize::from(position) % (in_header.len() + 1) } else { in_header.len() };
        for part in [&in_header[..cut], &in_header[cut..]] {
            if part.is_empty() && !values.is_empty() {
                continue;
            }
            let mut value = part.join(separator);
            if position & 4 == 4 {
                value.push_str(separator);
            }
            values.push(value);
        }
    }
    if aim == A::MalformedHeader {
        let at = usize::from(position) % (values.len() + 1);
        values.insert(at, format!("{},caf\u{e9}", names[3]));
    }
    let gateway_key = match aim {
        A::GatewayKey => {
            Some(key.unwrap_or_else(|| ("x-mcp-gateway-key".to_owned(), "sk-gateway-key-1234".to_owned())))
        }
        _ => None,
    };
    DelegationRequest { aim, servers, path, path_target, servers_headers: values, gateway_key }
}
