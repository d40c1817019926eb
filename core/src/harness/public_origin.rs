//! Fuzz harness for resolving the gateway's public origin (design §4.4).
//!
//! Every header of a request is attacker-chosen, so `X-Forwarded-*` may change the origin only
//! when forwarding is enabled and the TCP peer is a trusted proxy, and `PROXY_BASE_URL` pins the
//! origin whatever the request says. This harness checks those rules on arbitrary requests.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::origin::{
    Origin, OriginSettings, OriginSource, PublicOrigin, RequestOrigin, Scheme, TrustedProxies,
    resolve_public_origin,
};

/// Runs [`resolve_public_origin`] on the request described by `data`; panics only when an
/// invariant breaks.
///
/// `data` is UTF-8 (other input is ignored), one item per `\n`-separated line:
///
/// 1. settings `proxy_base_url|use_x_forwarded_for|ranges[|allowed_hosts]`: an origin or empty,
///    `0`/`1` (empty means `0`), comma-separated trusted proxy ranges, and optionally
///    comma-separated allowed hosts; settings that do not parse make the input ignored;
/// 2. the TCP peer's IP address (empty: unknown);
/// 3. `scheme host`: the listener's scheme and the `Host` header (nothing after the scheme: no
///    `Host`);
/// 4. and on: `Name: value` request headers (a line that is not a valid header makes the input
///    ignored).
///
/// Invariants: with `PROXY_BASE_URL` set the result is exactly that origin with source
/// `ProxyBaseUrl`; with forwarding off, or an unknown or untrusted peer, the origin, source and
/// error equal those of the same request with every `X-Forwarded-*` header removed; the RFC 7239
/// `Forwarded` header never changes anything; a forwarded origin needs forwarding on, a trusted
/// peer and at most one of each `X-Forwarded-Proto/Host/Port`; a reason for ignoring forwarded
/// headers comes only with source `Request`; the origin's `Display` re-parses with
/// [`Origin::parse`] to an equal origin.
pub fn public_origin(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(input) = Input::parse(text) else {
        return;
    };
    let request =
        |headers| RequestOrigin { scheme: input.scheme, host: input.host, peer: input.peer, headers };
    let result = resolve_public_origin(&input.settings, &request(&input.headers));

    if let Some(pinned) = &input.settings.proxy_base_url {
        let expected = PublicOrigin {
            origin: pinned.clone(),
            source: OriginSource::ProxyBaseUrl,
            forwarded_ignored: None,
        };
        assert_eq!(result, Ok(expected), "PROXY_BASE_URL did not win");
    }

    let trusted_peer = input.peer.is_some_and(|peer| input.settings.trusted_proxies.contains(peer));
    let stripped = without(&input.headers, |name| name.starts_with("x-forwarded-"));
    if !input.settings.use_x_forwarded_for || !trusted_peer {
        let plain = resolve_public_origin(&input.settings, &request(&stripped));
        assert_eq!(summary(&result), summary(&plain), "untrusted X-Forwarded-* changed the result");
    }

    let no_rfc7239 = without(&input.headers, |name| name == "forwarded");
    let plain = resolve_public_origin(&input.settings, &request(&no_rfc7239));
    assert_eq!(result, plain, "the RFC 7239 Forwarded header changed the result");

    let Ok(resolved) = result else {
        return;
    };
    if resolved.source == OriginSource::Forwarded {
        assert!(
            input.settings.use_x_forwarded_for && trusted_peer,
            "forwarded origin from an untrusted request"
        );
        for name in ["x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"] {
            assert!(input.headers.get_all(name).iter().count() <= 1, "repeated {name} was used");
        }
    }
    if resolved.forwarded_ignored.is_some() {
        assert_eq!(resolved.source, OriginSource::Request, "ignored forwarded headers but used {resolved:?}");
    }
    let written = resolved.origin.to_string();
    assert_eq!(
        Origin::parse(&written).as_ref(),
        Ok(&resolved.origin),
        "origin {written:?} does not re-parse"
    );
}

/// The decoded harness input.
struct Input<'a> {
    settings: OriginSettings,
    peer: Option<IpAddr>,
    scheme: Scheme,
    host: Option<&'a str>,
    headers: HeaderMap,
}

impl<'a> Input<'a> {
    /// Decodes the line format described on [`public_origin`]; `None` when any line is invalid.
    fn parse(text: &'a str) -> Option<Self> {
        let mut lines = text.split('\n');
        let mut fields = lines.next().unwrap_or_default().split('|');
        let proxy_base_url = match fields.next().unwrap_or_default() {
            "" => None,
            value => Some(Origin::parse(value).ok()?),
        };
        let use_x_forwarded_for = match fields.next().unwrap_or_default() {
            "" | "0" => false,
            "1" => true,
            _ => return None,
        };
        let ranges: Vec<&str> =
            fields.next().unwrap_or_default().split(',').filter(|range| !range.is_empty()).collect();
        let trusted_proxies = TrustedProxies::parse(&ranges).ok()?;
        let allowed_hosts: Vec<String> = fields
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .collect();
        if fields.next().is_some() {
            return None;
        }
        let peer = match lines.next().unwrap_or_default() {
            "" => None,
            value => Some(value.parse().ok()?),
        };
        let request_line = lines.next().unwrap_or_default();
        let (scheme, host) = match request_line.split_once(' ') {
            Some((scheme, host)) => (scheme, Some(host)),
            None => (request_line, None),
        };
        let scheme = Scheme::parse(scheme)?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':')?;
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(value.trim_start_matches([' ', '\t']).as_bytes()).ok()?;
            headers.append(name, value);
        }
        let settings = OriginSettings {
            proxy_base_url,
            use_x_forwarded_for,
            trusted_proxies,
            allowed_hosts,
            listen: None,
        };
        Some(Self { settings, peer, scheme, host, headers })
    }
}

/// A copy of `headers` without the ones whose (lower-case) name `drop` selects.
fn without(headers: &HeaderMap, drop: impl Fn(&str) -> bool) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        if !drop(name.as_str()) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// The origin and source, or the error: a result without the note on ignored forwarded headers.
fn summary<E: Clone>(result: &Result<PublicOrigin, E>) -> Result<(Origin, OriginSource), E> {
    result.as_ref().map(|resolved| (resolved.origin.clone(), resolved.source)).map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::public_origin;

    #[test]
    fn runs_on_tricky_inputs() {
        for input in [
            "",
            "|1|10.0.0.0/8\n10.0.0.1\nhttp internal:4000\nX-Forwarded-Proto: https\nX-Forwarded-Host: llm.example.com",
            "|1|10.0.0.0/8\n203.0.113.9\nhttp internal:4000\nX-Forwarded-Host: evil.com",
            "|0|10.0.0.0/8\n10.0.0.1\nhttp internal:4000\nX-Forwarded-Host: evil.com",
            "https://llm.example.com/|1|10.0.0.0/8\n10.0.0.1\nhttp internal\nX-Forwarded-Host: evil.com",
            "|1|10.0.0.0/8\n::ffff:10.0.0.1\nhttps GW.example.com:443\nX-Forwarded-Host: a.example.com\nX-Forwarded-Host: b.example.com",
            "|1|10.0.0.0/8\n10.0.0.1\nhttp\nX-Forwarded-Port: 8443",
            "|1|0.0.0.0/0|gw.example.com\n\nhttps evil.com\nForwarded: host=evil.com",
            "|1|10.0.0.1/8\n10.0.0.1\nhttp h",
            "nonsense\n\nhttp h",
        ] {
            public_origin(input.as_bytes());
        }
    }
}
