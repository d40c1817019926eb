//! Property tests of the policy core (design §4.3–§4.7), built on `mcp_oauth_core::strategies`.
//!
//! Every property runs at least 1,000 cases (more when `PROPTEST_CASES` asks for more). Where a
//! property compares against an expected verdict, that verdict is computed here from the design
//! text, not by calling the function under test.

use std::collections::BTreeSet;
use std::net::IpAddr;

use mcp_oauth_core::config::ServerEntry;
use mcp_oauth_core::delegate::{
    DelegationDecision, GATEWAY_KEY_HEADERS, SERVERS_HEADER, Target, decide_delegation,
};
use mcp_oauth_core::mask::{mask, mask_url};
use mcp_oauth_core::origin::{
    Origin, OriginSettings, RequestOrigin, Scheme, TrustedProxies, resolve_public_origin,
};
use mcp_oauth_core::redirect::{
    MAX_REDIRECT_URI_BYTES, RedirectDecision, TrustedRedirectOrigins, is_loopback_host, validate_redirect_uri,
};
use mcp_oauth_core::strategies as s;
use mcp_oauth_core::token::{m2m_cache_ttl, user_token_ttl};
use mcp_oauth_core::{Reason, config::ServerPolicy};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value};
use url::Url;

/// At least 1,000 cases; `PROPTEST_CASES` may raise it. No regression files are written.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig { cases: default.cases.max(1000), failure_persistence: None, ..default }
}

/// The parts of an accepted `redirect_uri` a property looks at.
#[derive(Debug)]
struct Accepted {
    scheme: String,
    host: String,
    port: u16,
    has_userinfo: bool,
    has_fragment: bool,
}

fn accepted(decision: &RedirectDecision) -> Option<Accepted> {
    let url = decision.uri()?;
    Some(Accepted {
        scheme: url.scheme().to_owned(),
        host: url.host_str().unwrap_or_default().to_owned(),
        port: url.port_or_known_default().unwrap_or_default(),
        has_userinfo: !url.username().is_empty() || url.password().is_some(),
        has_fragment: url.fragment().is_some(),
    })
}

/// Property 1's invariant: an accepted URI's shape and host are ones design §4.5 allows.
fn assert_allowed_shape(
    raw: &str,
    accepted: &Accepted,
    public_origin: Option<&Origin>,
    trusted: &TrustedRedirectOrigins,
) -> Result<(), TestCaseError> {
    prop_assert!(accepted.scheme == "http" || accepted.scheme == "https", "scheme of {raw:?}");
    prop_assert!(!accepted.has_userinfo, "userinfo in {raw:?}");
    prop_assert!(!accepted.has_fragment && !raw.contains('#'), "fragment in {raw:?}");
    prop_assert!(raw.len() <= MAX_REDIRECT_URI_BYTES, "length of {raw:?}");
    prop_assert!(raw.bytes().all(|b| b.is_ascii_graphic()) && !raw.contains('\\'), "characters of {raw:?}");
    prop_assert!(raw.starts_with("http://") || raw.starts_with("https://"), "prefix of {raw:?}");
    let scheme = if accepted.scheme == "https" { Scheme::Https } else { Scheme::Http };
    let loopback = is_loopback_host(&accepted.host);
    let same_origin = public_origin
        .is_some_and(|origin| *origin == Origin::new(scheme, &accepted.host, Some(accepted.port)));
    let trusted_https = scheme == Scheme::Https && trusted.matches(&accepted.host, accepted.port);
    prop_assert!(loopback || same_origin || trusted_https, "{raw:?} accepted as {accepted:?}");
    Ok(())
}

fn public_and_env() -> impl Strategy<Value = (Option<Origin>, String)> {
    (proptest::option::weighted(0.8, s::origin()), s::trusted_redirect_origins_env())
}

/// One case of property 2: an allowed authority A (public origin, allowlist entry or loopback), an
/// attacker host B, attack text C and a template that splices them into a `redirect_uri`.
#[derive(Clone, Debug)]
struct AttackCase {
    public: Option<Origin>,
    env: String,
    a_scheme: Scheme,
    a: String,
    b: String,
    b_port: Option<u16>,
    c: String,
    template: usize,
    keep_scheme: bool,
    scheme: Scheme,
}

/// Templates 0–15 put B in the authority or splice C into it; templates 16–19 keep A as the
/// authority and put C and B after it (path, query, a second path segment, an `@` in the path), so
/// that a good share of cases are URIs the validator may accept and the host assertions run.
const ATTACK_TEMPLATES: usize = 20;

fn attack_case() -> impl Strategy<Value = AttackCase> {
    let a = public_and_env().prop_flat_map(|(public, env)| {
        let mut allowed: Vec<(Scheme, String)> = Vec::new();
        if let Some(origin) = &public {
            let port = (origin.port() != origin.scheme().default_port()).then_some(origin.port());
            allowed.push((origin.scheme(), s::format_authority(origin.host(), port)));
        }
        for entry in env.split(',').map(|e| e.trim_matches([' ', '\t'])).filter(|e| !e.is_empty()) {
            let authority = s::authorities_near_entry(entry).remove(0);
            allowed.push((Scheme::Https, authority));
        }
        if allowed.is_empty() {
            allowed.push((Scheme::Http, "localhost:8080".to_owned()));
        }
        (Just(public), Just(env), select(allowed))
    });
    let template = prop_oneof![16 => 0_usize..16, 16 => 16..ATTACK_TEMPLATES];
    (
        a,
        s::attacker_host(),
        s::port(),
        s::attack_fragment(),
        template,
        proptest::bool::weighted(0.9),
        s::scheme(),
    )
        .prop_map(|((public, env, (a_scheme, a)), b, b_port, c, template, keep_scheme, scheme)| {
            AttackCase { public, env, a_scheme, a, b, b_port, c, template, keep_scheme, scheme }
        })
}

impl AttackCase {
    /// Whether B is refused on its own, on every port this case can produce (else the case is void).
    fn attacker_is_refused(&self, trusted: &TrustedRedirectOrigins) -> bool {
        [443, 80, self.b_port.unwrap_or(443)].into_iter().all(|port| {
            !trusted.matches(&self.b, port)
                && self.public.as_ref().is_none_or(|origin| origin.host() != self.b)
        }) && !is_loopback_host(&self.b)
    }

    /// The `redirect_uri`, A's host and B's host.
    fn uri(&self) -> (String, String, String) {
        let a = self.a.as_str();
        let a_host = match a.rfind(':') {
            Some(at) if !a[at..].contains(']') => &a[..at],
            _ => a,
        };
        let a_port = a.strip_prefix(a_host).unwrap_or_default();
        let s = if self.keep_scheme { self.a_scheme.as_str() } else { self.scheme.as_str() };
        let c = self.c.as_str();
        let b = s::format_authority(&self.b, self.b_port);
        let uri = match self.template {
            0 => format!("{s}://{a}{c}{b}/cb"),
            1 => format!("{s}://{b}{c}{a}/cb"),
            2 => format!("{s}://{b}/{c}{a}"),
            3 => format!("{s}://{a}{c}{b}"),
            4 => format!("{s}://{b}{c}{a}"),
            5 => format!("{s}://{a}{c}@{b}/cb"),
            6 => format!("{s}://{b}{c}@{a}/cb"),
            7 => format!("{s}://{a}/{c}/{b}"),
            8 => format!("{s}://{b}?{c}{a}"),
            9 => format!("{s}://{b}#{c}{a}"),
            10 => format!("{s}://{b}{c}.{a}/cb"),
            11 => format!("{s}://{a_host}{c}{b}{a_port}/cb"),
            12 => format!("{s}://{c}{a}@{b}/cb"),
            13 => format!("{s}://{a}{c}{b}{c}/cb"),
            14 => format!("{s}:{c}//{a}/cb"),
            15 => format!("{s}://{b}{c}{a}{c}/cb"),
            16 => format!("{s}://{a}/cb{c}{b}"),
            17 => format!("{s}://{a}/cb?next={c}{b}"),
            18 => format!("{s}://{a}/{b}/{c}"),
            _ => format!("{s}://{a}/@{b}{c}/cb"),
        };
        (uri, a_host.to_owned(), self.b.clone())
    }
}

proptest! {
    #![proptest_config(config())]

    /// Property 1: accepted ⇒ http(s), no userinfo, no fragment, loopback / same origin / trusted https.
    #[test]
    fn accepted_redirect_uri_is_loopback_same_origin_or_trusted_https(
        (public, env, uri) in public_and_env().prop_flat_map(|(public, env)| {
            let uris = s::redirect_uri_for(public.clone(), &env);
            (Just(public), Just(env), uris)
        })
    ) {
        let trusted = TrustedRedirectOrigins::parse(&env).unwrap();
        let decision = validate_redirect_uri(&uri, public.as_ref(), &trusted);
        if let Some(accepted) = accepted(&decision) {
            assert_allowed_shape(&uri, &accepted, public.as_ref(), &trusted)?;
        } else {
            prop_assert!(decision.error_body().is_some());
        }
    }

    /// Property 2: splicing attack text between an allowed host A and an attacker host B never
    /// yields an accepted URI whose host is B (or anything but A, loopback, or a subdomain of A).
    #[test]
    fn attack_text_around_an_allowed_host_never_admits_another_host(case in attack_case()) {
        let trusted = TrustedRedirectOrigins::parse(&case.env).unwrap();
        prop_assume!(case.attacker_is_refused(&trusted));
        let (uri, a_host, b_host) = case.uri();
        let decision = validate_redirect_uri(&uri, case.public.as_ref(), &trusted);
        if let Some(accepted) = accepted(&decision) {
            prop_assert_ne!(&accepted.host, &b_host, "{:?} accepted for the attacker host", uri);
            prop_assert!(
                accepted.host == a_host
                    || is_loopback_host(&accepted.host)
                    || accepted.host.ends_with(&format!(".{a_host}")),
                "{:?} accepted with host {:?}, expected {:?}", uri, accepted.host, a_host
            );
            assert_allowed_shape(&uri, &accepted, case.public.as_ref(), &trusted)?;
        }
    }

    /// Property 3: adding allowlist entries never turns an acceptance into a rejection.
    #[test]
    fn adding_allowlist_entries_is_monotone(
        (public, l1, l2, uri) in (public_and_env(), s::trusted_redirect_origins_env())
            .prop_flat_map(|((public, l1), l2)| {
                let uris = s::redirect_uri_for(public.clone(), &format!("{l1},{l2}"));
                (Just(public), Just(l1), Just(l2), uris)
            })
    ) {
        let first = TrustedRedirectOrigins::parse(&l1).unwrap();
        let union = TrustedRedirectOrigins::parse(&format!("{l1},{l2}")).unwrap();
        prop_assert_eq!(union.len(), first.len() + TrustedRedirectOrigins::parse(&l2).unwrap().len());
        let under_first = validate_redirect_uri(&uri, public.as_ref(), &first);
        let under_union = validate_redirect_uri(&uri, public.as_ref(), &union);
        if under_first.is_allowed() {
            prop_assert!(
                under_union.is_allowed(),
                "{:?} allowed under {:?} ({}) but {} under {:?}",
                uri, l1, under_first.reason(), under_union.reason(), format!("{l1},{l2}")
            );
            prop_assert_eq!(under_first.uri(), under_union.uri());
        }
    }

    /// Property 4: X-Forwarded-* (and RFC 7239 Forwarded) change the origin only for a trusted peer
    /// with `use_x_forwarded_for` on.
    #[test]
    fn forwarded_headers_count_only_from_trusted_peers(
        proxy_base_url in proptest::option::weighted(0.15, s::origin()),
        use_x_forwarded_for in proptest::bool::weighted(0.7),
        ranges in s::trusted_proxy_ranges(),
        allowed_hosts in s::allowed_hosts(),
        request_scheme in s::scheme(),
        request_host in s::request_host(),
        peer in proptest::option::weighted(0.9, s::peer_ip()),
        forwarded in s::forwarded_headers(),
        other in s::other_headers(),
    ) {
        let settings = OriginSettings {
            proxy_base_url: proxy_base_url.clone(),
            use_x_forwarded_for,
            trusted_proxies: TrustedProxies::parse(&ranges).unwrap(),
            allowed_hosts,
            listen: None,
        };
        let all: Vec<(String, String)> = other.iter().chain(&forwarded).cloned().collect();
        let without_forwarded: Vec<(String, String)> = all
            .iter()
            .filter(|(name, _)| {
                let name = name.to_ascii_lowercase();
                !name.starts_with("x-forwarded-") && name != "forwarded"
            })
            .cloned()
            .collect();
        let without_rfc7239: Vec<(String, String)> =
            all.iter().filter(|(name, _)| !name.eq_ignore_ascii_case("forwarded")).cloned().collect();
        let resolve = |pairs: &[(String, String)]| {
            let headers = s::header_map(pairs);
            let request = RequestOrigin {
                scheme: request_scheme,
                host: request_host.as_deref(),
                peer,
                headers: &headers,
            };
            resolve_public_origin(&settings, &request)
        };
        let outcome = |pairs: &[(String, String)]| {
            resolve(pairs).map(|resolved| resolved.origin).map_err(|error| error.reason())
        };
        let trusted = use_x_forwarded_for && peer.is_some_and(|peer| in_ranges(&ranges, peer));
        let with_all = outcome(&all);
        prop_assert_eq!(&with_all, &outcome(&without_rfc7239), "RFC 7239 Forwarded changed the origin");
        if !trusted || proxy_base_url.is_some() {
            prop_assert_eq!(&with_all, &outcome(&without_forwarded), "untrusted forwarded headers counted");
        }
        if let Ok(resolved) = resolve(&all) {
            if resolved.source == mcp_oauth_core::origin::OriginSource::Forwarded {
                prop_assert!(trusted && proxy_base_url.is_none());
            }
            if let Some(origin) = &proxy_base_url {
                prop_assert_eq!(&resolved.origin, origin);
            }
        }
    }

    /// Design §4.4 step 2: a trusted proxy's well-formed `X-Forwarded-*` set decides the origin.
    #[test]
    fn trusted_well_formed_forwarded_headers_decide_the_origin(
        forwarded in s::valid_forwarded_headers(),
        peer in s::peer_ip(),
        request_scheme in s::scheme(),
        request_host in s::request_host(),
    ) {
        let settings = OriginSettings {
            use_x_forwarded_for: true,
            trusted_proxies: TrustedProxies::parse(&["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]).unwrap(),
            ..OriginSettings::default()
        };
        let value = |name: &str| {
            forwarded.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        };
        let scheme = match value("x-forwarded-proto") {
            Some("https") => Scheme::Https,
            Some(_) => Scheme::Http,
            None => request_scheme,
        };
        let authority = value("x-forwarded-host").unwrap_or_default();
        let (host, host_port) = match authority.rfind(':') {
            Some(at) if !authority[at..].contains(']') => (&authority[..at], authority[at + 1..].parse().ok()),
            _ => (authority, None),
        };
        let port = host_port.or_else(|| value("x-forwarded-port").and_then(|port| port.parse().ok()));
        let headers = s::header_map(&forwarded);
        let request = RequestOrigin {
            scheme: request_scheme,
            host: request_host.as_deref(),
            peer: Some(peer),
            headers: &headers,
        };
        let resolved = resolve_public_origin(&settings, &request);
        prop_assert_eq!(
            resolved.map(|resolved| (resolved.origin, resolved.source)),
            Ok((Origin::new(scheme, host, port), mcp_oauth_core::origin::OriginSource::Forwarded)),
            "{:?}", forwarded
        );
    }

    /// Property 5: the delegation verdict equals the one computed from design §4.6, on
    /// independently drawn inputs (breadth).
    #[test]
    fn delegation_is_granted_only_when_every_target_qualifies(
        servers in s::server_map(),
        (path, path_target) in s::request_path(),
        servers_headers in s::servers_header_values(),
        gateway_key in s::gateway_key_header(),
        noise in s::other_headers(),
    ) {
        check_delegation(&servers, &path, path_target, &servers_headers, gateway_key, noise)?;
    }

    /// Property 5, aimed: the same check on requests aimed at each verdict of design §4.6 in turn,
    /// so several targets, each refusal reason and delegation all come up often.
    #[test]
    fn aimed_delegation_is_granted_only_when_every_target_qualifies(
        request in s::delegation_request(),
        noise in s::other_headers(),
    ) {
        check_delegation(
            &request.servers, &request.path, request.path_target, &request.servers_headers, request.gateway_key, noise,
        )?;
    }

    /// Property 6: a mask shows at most the last 4 characters, and only of secrets of 12 or more.
    #[test]
    fn masking_reveals_at_most_the_last_four_characters(
        word in s::scheme_word(),
        secret in s::secret(),
    ) {
        let masked = mask(&format!("{word}{secret}"));
        let scheme = word.trim_matches([' ', '\t']);
        let rest = masked.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("****"));
        prop_assert!(rest.is_some(), "{:?} masked as {:?}", secret, masked);
        let shown = rest.unwrap_or_default();
        let length = secret.chars().count();
        if length >= 12 {
            let tail: String = secret.chars().skip(length - 4).collect();
            prop_assert_eq!(shown, tail.as_str());
        } else {
            prop_assert_eq!(shown, "");
        }
    }

    /// Property 6: long secrets with one tail mask alike; short secrets mask alike.
    #[test]
    fn mask_does_not_depend_on_the_secret_length(
        word in s::scheme_word(),
        tail in s::secret_with_len(4..=4),
        first in s::secret_with_len(8..=48),
        second in s::secret_with_len(8..=48),
        short_a in s::secret_with_len(0..=11),
        short_b in s::secret_with_len(0..=11),
    ) {
        let long_a = mask(&format!("{word}{first}{tail}"));
        let long_b = mask(&format!("{word}{second}{tail}"));
        prop_assert_eq!(&long_a, &long_b);
        prop_assert_eq!(long_a.len(), word.trim_matches([' ', '\t']).len() + 4 + tail.len());
        let short_a = mask(&format!("{word}{short_a}"));
        prop_assert_eq!(&short_a, &mask(&format!("{word}{short_b}")));
        prop_assert_eq!(short_a.matches('*').count(), 4);
    }

    /// Property 7: a cache TTL never exceeds `expires_in`; the M2M TTL is `expires_in − 60` past 70 s.
    #[test]
    fn cache_ttl_never_exceeds_expires_in(
        expires_in in prop_oneof![any::<i64>(), -100_i64..4000],
        storage in proptest::option::of(prop_oneof![any::<u64>(), 0_u64..5000]),
    ) {
        let ceiling = u64::try_from(expires_in).unwrap_or(0);
        let m2m = m2m_cache_ttl(Some(expires_in));
        let user = user_token_ttl(Some(expires_in), storage);
        prop_assert!(m2m <= ceiling, "m2m {m2m} > expires_in {expires_in}");
        prop_assert!(user <= ceiling, "user {user} > expires_in {expires_in}");
        let expected = ceiling.saturating_sub(60).max(10).min(ceiling);
        prop_assert_eq!(m2m, expected);
        if expires_in > 70 {
            prop_assert_eq!(m2m, ceiling - 60);
        }
        if let Some(storage) = storage {
            prop_assert!(user <= storage);
        }
    }

    /// `Origin::parse(o.to_string()) == o`.
    #[test]
    fn origin_display_round_trips(origin in s::origin()) {
        prop_assert_eq!(Origin::parse(&origin.to_string()), Ok(origin));
    }

    /// `TrustedRedirectOrigins` parses its own `Display`.
    #[test]
    fn trusted_redirect_origins_display_round_trips(env in s::trusted_redirect_origins_env()) {
        let parsed = TrustedRedirectOrigins::parse(&env).unwrap();
        let shown = parsed.to_string();
        prop_assert_eq!(TrustedRedirectOrigins::parse(&shown), Ok(parsed), "{:?} shown as {:?}", env, shown);
    }

    /// A canonical loopback `redirect_uri` is accepted on any port, over http and https.
    #[test]
    fn canonical_loopback_redirect_uri_is_accepted(
        uri in (s::loopback_host(), s::port()).prop_flat_map(|(host, port)| {
            s::redirect_uri_on(s::format_authority(&host, port))
        }),
    ) {
        let decision = validate_redirect_uri(&uri, None, &TrustedRedirectOrigins::default());
        prop_assert_eq!(decision.reason(), "loopback", "{:?}", uri);
    }

    /// `*.suffix` matches strictly deeper subdomains on its port, never the suffix itself.
    #[test]
    fn wildcard_entries_match_strict_subdomains_only(
        suffix in s::wildcard_suffix(),
        labels in proptest::collection::vec(s::random_label(), 1..=3),
        port in s::port(),
    ) {
        let entry_port = port.unwrap_or(443);
        let trusted = TrustedRedirectOrigins::parse(&format!("*.{}", s::format_authority(&suffix, port))).unwrap();
        let deeper = format!("{}.{suffix}", labels.join("."));
        prop_assert!(trusted.matches(&deeper, entry_port));
        prop_assert!(!trusted.matches(&suffix, entry_port));
        let glued = format!("{}{suffix}", labels[0]);
        prop_assert!(!trusted.matches(&glued, entry_port));
        let other_port = if entry_port == 1 { 2 } else { entry_port - 1 };
        prop_assert!(!trusted.matches(&deeper, other_port));
    }

    /// Property: no credential-looking path segment survives `mask_url` (design §4.7): a secret
    /// placed anywhere in the path shows at most its last four characters after a fixed `****`,
    /// ordinary segments stay as written, and query values and userinfo stay masked.
    #[test]
    fn url_masking_leaves_no_path_secret(
        before in proptest::collection::vec(s::ordinary_path_segment(), 0..=3),
        secret in s::path_secret(),
        after in proptest::collection::vec(s::ordinary_path_segment(), 0..=2),
        second in proptest::option::of(s::path_secret()),
        query in proptest::option::of(s::path_secret()),
    ) {
        let mut segments: Vec<String> = before.clone();
        segments.push(secret.clone());
        segments.extend(after.iter().cloned());
        segments.extend(second.iter().cloned());
        let mut raw = format!("https://mcp.example.com/{}", segments.join("/"));
        if let Some(value) = &query {
            raw.push_str(&format!("?token={value}"));
        }
        let url = Url::parse(&raw).unwrap();
        let masked = mask_url(&url);
        let again = Url::parse(&masked).unwrap();
        let shown: Vec<&str> = again.path_segments().unwrap().collect();
        prop_assert_eq!(shown.len(), segments.len(), "{}", masked);
        for (written, shown) in segments.iter().zip(&shown) {
            let is_secret = *written == secret || second.as_ref() == Some(written);
            if is_secret {
                let tail = shown.strip_prefix("****");
                prop_assert!(tail.is_some(), "{:?} shown as {:?}", written, shown);
                let expected = if written.chars().count() >= 12 { &written[written.len() - 4..] } else { "" };
                prop_assert_eq!(tail.unwrap_or_default(), expected);
            } else {
                prop_assert_eq!(shown, written);
            }
        }
        for value in [Some(&secret), second.as_ref(), query.as_ref()].into_iter().flatten().filter(|v| v.len() >= 8) {
            prop_assert!(!masked.contains(value.as_str()), "{:?} survives in {}", value, masked);
        }
    }

    /// `*.` over a public suffix (any case, any port, alone or in a list) is refused at start-up,
    /// and one registrable label below it is accepted.
    #[test]
    fn wildcards_on_public_suffixes_are_refused(
        suffix in select(&s::PUBLIC_SUFFIXES[..]),
        label in s::random_label(),
        port in s::port(),
        upper in any::<bool>(),
        others in s::trusted_redirect_origins_env(),
    ) {
        let entry = format!("*.{}", s::format_authority(suffix, port));
        let entry = if upper { entry.to_ascii_uppercase() } else { entry };
        let error = TrustedRedirectOrigins::parse(&format!("{others},{entry}")).unwrap_err();
        prop_assert!(error.why.contains("public suffix"), "{}", error);
        let owned = format!("*.{}", s::format_authority(&format!("acme{label}.{suffix}"), port));
        prop_assert!(TrustedRedirectOrigins::parse(&owned).is_ok(), "{} refused", owned);
    }
}

/// Each server entry's policy, `None` for an entry that does not load.
fn server_policies(servers: &Map<String, Value>) -> Vec<(&String, Option<ServerPolicy>)> {
    servers
        .iter()
        .map(|(name, entry)| {
            let policy = entry
                .as_object()
                .and_then(|object| ServerEntry::from_json(name, object, &|_| None).ok()?.policy().ok());
            (name, policy)
        })
        .collect()
}

/// `decide_delegation` for a request to `path` with `headers` against `policies` (an entry that
/// does not load is `Target::Invalid`): the one lookup the delegation properties share.
fn delegation_for(
    policies: &[(&String, Option<ServerPolicy>)],
    path: &str,
    headers: &http::HeaderMap,
) -> DelegationDecision {
    decide_delegation(mcp_oauth_core::route::mcp_path_server(path), headers, |name| {
        match policies.iter().find(|(known, _)| known.as_str() == name) {
            None => Target::Unknown,
            Some((_, None)) => Target::Invalid,
            Some((_, Some(policy))) => Target::Known(policy),
        }
    })
}

/// Property 5's check: `decide_delegation` agrees with the verdict computed from design §4.6.
fn check_delegation(
    servers: &Map<String, Value>,
    path: &str,
    path_target: Option<String>,
    servers_headers: &[String],
    gateway_key: Option<(String, String)>,
    noise: Vec<(String, String)>,
) -> Result<(), TestCaseError> {
    let mut pairs: Vec<(String, String)> = noise;
    pairs.extend(servers_headers.iter().map(|value| (SERVERS_HEADER.to_owned(), value.clone())));
    pairs.extend(gateway_key.clone());
    let headers = s::header_map(&pairs);
    let policies = server_policies(servers);
    let decision = delegation_for(&policies, path, &headers);

    // The verdict from the design, computed from the raw inputs.
    let mut targets: BTreeSet<String> = path_target.into_iter().collect();
    let mut header_is_text = true;
    for value in servers_headers {
        header_is_text &= value.is_ascii();
        targets.extend(value.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned));
    }
    let models: Vec<Option<ModelPolicy>> =
        targets.iter().map(|name| servers.get(name).and_then(model_policy)).collect();
    let every_target_delegates =
        models.iter().all(|model| model.as_ref().is_some_and(|m| m.oauth2 && m.interactive && m.delegate));
    let shared_authorization_server = targets.len() <= 1 || {
        let named: Vec<Option<&str>> =
            models.iter().map(|model| model.as_ref().and_then(|m| m.authorization_server)).collect();
        named.iter().all(|server| server.is_some() && *server == named[0])
    };
    let expected = gateway_key.is_none()
        && header_is_text
        && !targets.is_empty()
        && every_target_delegates
        && shared_authorization_server;
    prop_assert_eq!(
        decision.delegates(),
        expected,
        "path {:?}, headers {:?}, servers {}, reason {}",
        path,
        pairs,
        Value::Object(servers.clone()),
        decision.reason()
    );
    if decision.delegates() {
        prop_assert!(!targets.is_empty());
        prop_assert!(GATEWAY_KEY_HEADERS.iter().all(|name| !headers.contains_key(*name)));
        for name in &targets {
            let policy =
                policies.iter().find(|(known, _)| known.as_str() == name).and_then(|(_, p)| p.as_ref());
            prop_assert!(
                policy.is_some_and(|p| p.auth_type == mcp_oauth_core::config::AuthType::OAuth2
                    && p.flow.is_interactive()
                    && p.delegate_auth_to_upstream),
                "target {name} does not qualify"
            );
        }
    }
    Ok(())
}

/// Whether `peer` (canonical) lies in one of `ranges`, computed without `ipnet`.
fn in_ranges(ranges: &[String], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    ranges.iter().any(|range| {
        let (address, prefix) = match range.split_once('/') {
            Some((address, prefix)) => {
                let Ok(address) = address.parse::<IpAddr>() else { return false };
                let Ok(prefix) = prefix.parse::<u32>() else { return false };
                (address, prefix)
            }
            None => {
                let Ok(address) = range.parse::<IpAddr>() else { return false };
                let address = address.to_canonical();
                (address, if address.is_ipv4() { 32 } else { 128 })
            }
        };
        match (address, peer) {
            (IpAddr::V4(network), IpAddr::V4(peer)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(network) & mask == u32::from(peer) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(peer)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(network) & mask == u128::from(peer) & mask
            }
            _ => false,
        }
    })
}

/// What design §4.1 and §4.6 say about one server entry, read from its JSON.
struct ModelPolicy {
    oauth2: bool,
    interactive: bool,
    delegate: bool,
    authorization_server: Option<&'static str>,
}

/// A string field: `Ok(None)` when absent, null or blank; `Err` when it cannot load.
fn text_field<'v>(object: &'v Map<String, Value>, key: &str) -> Result<Option<&'v str>, ()> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.starts_with("os.environ/") => Err(()),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(()),
    }
}

/// An enumerated field: like [`text_field`], but a blank value is an unknown value, hence an error.
fn enum_field<'v>(object: &'v Map<String, Value>, key: &str) -> Result<Option<&'v str>, ()> {
    match object.get(key) {
        Some(Value::String(text)) if text.trim().is_empty() => Err(()),
        _ => text_field(object, key),
    }
}

/// The authorization server each generated spelling names, after origin normalisation.
fn authorization_server_identity(url: &str) -> &'static str {
    match url {
        "https://auth.example.com"
        | "https://auth.example.com/"
        | "https://AUTH.example.com"
        | "https://auth.example.com:443/"
        | "HTTPS://auth.example.com" => "https://auth.example.com",
        "https://auth.example.com/tenant" | "https://auth.example.com/tenant/" => {
            "https://auth.example.com/tenant"
        }
        "https://auth.example.com:8443" => "https://auth.example.com:8443",
        "http://auth.example.com" => "http://auth.example.com",
        "https://other.example.com" => "https://other.example.com",
        other => panic!("the strategy produced an unexpected authorization server {other}"),
    }
}

/// The `auth_type` spellings LiteLLM accepts.
const AUTH_TYPES: [&str; 12] = [
    "none",
    "api_key",
    "bearer_token",
    "basic",
    "authorization",
    "token",
    "oauth2",
    "oauth2_token_exchange",
    "aws_sigv4",
    "oauth2_id_jag",
    "true_passthrough",
    "oauth_delegate",
];

/// The policy of one entry, or `None` when it does not load (a target that cannot resolve).
fn model_policy(entry: &Value) -> Option<ModelPolicy> {
    let object = entry.as_object()?;
    let auth_type = enum_field(object, "auth_type").ok()?;
    if auth_type.is_some_and(|value| !AUTH_TYPES.contains(&value)) {
        return None;
    }
    let flow = enum_field(object, "oauth2_flow").ok()?;
    if flow.is_some_and(|value| value != "authorization_code" && value != "client_credentials") {
        return None;
    }
    let client_id = text_field(object, "client_id").ok()?.is_some();
    let client_secret = text_field(object, "client_secret").ok()?.is_some();
    let token_url = text_field(object, "token_url").ok()?.is_some();
    let authorization_url = text_field(object, "authorization_url").ok()?;
    let issuer = text_field(object, "issuer").ok()?;
    text_field(object, "url").ok()?;
    let delegate = match object.get("delegate_auth_to_upstream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return None,
    };
    if !matches!(object.get("available_on_public_internet"), None | Some(Value::Null | Value::Bool(_))) {
        return None;
    }
    let oauth2 = auth_type == Some("oauth2");
    let interactive = match flow {
        Some("client_credentials") if !(client_id && client_secret) => return None,
        Some("client_credentials") => false,
        Some(_) => true,
        None if oauth2 => authorization_url.is_some() || !(token_url && client_id && client_secret),
        None => false,
    };
    Some(ModelPolicy {
        oauth2,
        interactive,
        delegate,
        authorization_server: authorization_url.or(issuer).map(authorization_server_identity),
    })
}

/// The aimed strategies reach every verdict often enough for the properties above to mean something.
#[test]
fn strategies_reach_acceptance_and_rejection() {
    let mut runner = TestRunner::deterministic();
    let strategy = public_and_env().prop_flat_map(|(public, env)| {
        let uris = s::redirect_uri_for(public.clone(), &env);
        (Just(public), Just(env), uris)
    });
    let (mut allowed, mut trusted_origin, mut rejected) = (0, 0, 0);
    for _ in 0..1000 {
        let (public, env, uri) = strategy.new_tree(&mut runner).unwrap().current();
        let trusted = TrustedRedirectOrigins::parse(&env).unwrap();
        let decision = validate_redirect_uri(&uri, public.as_ref(), &trusted);
        match decision.reason() {
            "trusted_origin" => trusted_origin += 1,
            _ if decision.is_allowed() => allowed += 1,
            _ => rejected += 1,
        }
    }
    assert!(
        allowed >= 100 && trusted_origin >= 25 && rejected >= 100,
        "{allowed} {trusted_origin} {rejected}"
    );

    let mut delegated = 0;
    let cases = (s::server_map(), s::request_path(), s::servers_header_values());
    for _ in 0..1000 {
        let (servers, (path, _), values) = cases.new_tree(&mut runner).unwrap().current();
        let pairs: Vec<(String, String)> =
            values.into_iter().map(|value| (SERVERS_HEADER.to_owned(), value)).collect();
        let decision = delegation_for(&server_policies(&servers), &path, &s::header_map(&pairs));
        delegated += usize::from(decision.delegates());
    }
    assert!(delegated >= 50, "only {delegated} of 1000 delegation cases delegate");
}

/// `decide_delegation`'s reason code and the number of distinct targets for one request.
fn delegation_verdict(
    servers: &Map<String, Value>,
    path: &str,
    servers_headers: &[String],
    gateway_key: Option<(String, String)>,
) -> (&'static str, usize) {
    let mut pairs: Vec<(String, String)> =
        servers_headers.iter().map(|value| (SERVERS_HEADER.to_owned(), value.clone())).collect();
    pairs.extend(gateway_key);
    let headers = s::header_map(&pairs);
    let decision = delegation_for(&server_policies(servers), path, &headers);
    let targets =
        mcp_oauth_core::delegate::target_servers(mcp_oauth_core::route::mcp_path_server(path), &headers)
            .map_or(0, |targets| targets.len());
    (decision.reason(), targets)
}

/// Every reason code of `decide_delegation`.
const DELEGATION_REASONS: [&str; 11] = [
    "gateway_key_present",
    "malformed_servers_header",
    "no_targets",
    "unknown_server",
    "invalid_server_config",
    "not_oauth2",
    "not_interactive",
    "delegation_disabled",
    "authorization_server_unknown",
    "mixed_authorization_servers",
    "all_targets_delegate",
];

/// Cases per branch-frequency measurement: 2,000 in an ordinary run, `MEASURE_CASES` to record
/// figures (`MEASURE_CASES=10000 cargo test -p mcp-oauth-tests --test properties reach -- --nocapture`).
fn measured_cases() -> usize {
    std::env::var("MEASURE_CASES").ok().and_then(|value| value.parse().ok()).unwrap_or(2000).max(100)
}

/// Per cent of `part` in `whole`, one decimal.
fn percent(part: usize, whole: usize) -> f64 {
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

/// Branch frequencies of the delegation strategies over [`measured_cases`] generated cases each: the reason
/// code of every verdict, several targets, and delegation to several targets. The aimed strategy
/// ([`s::delegation_request`]) must reach each reason in at least 6 % of cases (eleven exclusive
/// reasons cannot all reach 10 %: they share 100 %) and every two-way branch (delegates or not, one
/// target or several, several targets that delegate or not) in at least 10 %. Run with `--nocapture` to see
/// the figures, including those of the breadth strategy of property 5.
#[test]
fn delegation_strategies_reach_every_branch() {
    let cases = measured_cases();
    let mut runner = TestRunner::deterministic();
    let mut count = |aimed: bool| -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        let aimed_strategy = s::delegation_request();
        let breadth =
            (s::server_map(), s::request_path(), s::servers_header_values(), s::gateway_key_header());
        for _ in 0..cases {
            let (servers, path, values, key) = if aimed {
                let request = aimed_strategy.new_tree(&mut runner).unwrap().current();
                (request.servers, request.path, request.servers_headers, request.gateway_key)
            } else {
                let (servers, (path, _), values, key) = breadth.new_tree(&mut runner).unwrap().current();
                (servers, path, values, key)
            };
            let (reason, targets) = delegation_verdict(&servers, &path, &values, key);
            *counts.entry(reason).or_insert(0) += 1;
            if targets > 1 {
                *counts.entry("(several targets)").or_insert(0) += 1;
                if reason == "all_targets_delegate" {
                    *counts.entry("(several targets delegate)").or_insert(0) += 1;
                }
            }
        }
        counts
    };
    let breadth = count(false);
    let aimed = count(true);
    for reason in DELEGATION_REASONS.iter().chain(&["(several targets)", "(several targets delegate)"]) {
        let (b, a) = (breadth.get(reason).copied().unwrap_or(0), aimed.get(reason).copied().unwrap_or(0));
        println!("{reason:<30} breadth {:>5.1} %   aimed {:>5.1} %", percent(b, cases), percent(a, cases));
    }
    for reason in DELEGATION_REASONS {
        let hits = aimed.get(reason).copied().unwrap_or(0);
        assert!(hits * 100 >= cases * 6, "{reason}: {hits} of {cases}");
    }
    let delegates = aimed.get("all_targets_delegate").copied().unwrap_or(0);
    assert!(delegates * 100 >= cases * 10 && (cases - delegates) * 100 >= cases * 10, "{delegates}");
    let several = aimed.get("(several targets)").copied().unwrap_or(0);
    assert!(several * 100 >= cases * 10 && (cases - several) * 100 >= cases * 10, "{several}");
    let several_delegate = aimed.get("(several targets delegate)").copied().unwrap_or(0);
    assert!(several_delegate * 100 >= cases * 10, "{several_delegate}");
}

/// Branch frequencies of property 2 over [`measured_cases`] generated cases: void (the attacker host happens to
/// be allowed), rejected, and accepted (the host assertions run); each must be at least 10 % except
/// void. Run with `--nocapture` to see the figures, split by the original templates 0–15 and the
/// templates 16–19 that keep the allowed host as the authority.
#[test]
fn redirect_attack_strategy_reaches_the_assertions() {
    let cases = measured_cases();
    let mut runner = TestRunner::deterministic();
    let strategy = attack_case();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..cases {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let trusted = TrustedRedirectOrigins::parse(&case.env).unwrap();
        let family = if case.template < 16 { "templates 0-15" } else { "templates 16-19" };
        let outcome = if !case.attacker_is_refused(&trusted) {
            "void"
        } else {
            let (uri, _, _) = case.uri();
            if validate_redirect_uri(&uri, case.public.as_ref(), &trusted).is_allowed() {
                "accepted"
            } else {
                "rejected"
            }
        };
        *counts.entry((outcome, family)).or_insert(0) += 1;
        *counts.entry((outcome, "all")).or_insert(0) += 1;
    }
    for ((outcome, family), hits) in &counts {
        println!("{outcome:<9} {family:<16} {:>5.1} %", percent(*hits, cases));
    }
    for outcome in ["accepted", "rejected"] {
        let hits = counts.get(&(outcome, "all")).copied().unwrap_or(0);
        assert!(hits * 100 >= cases * 10, "{outcome}: {hits} of {cases}");
    }
}
