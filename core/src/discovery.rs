//! Upstream discovery rules: which metadata URLs to try, and which documents to believe.
//!
//! When the gateway acts as an OAuth client of an MCP server it finds the authorization server
//! through RFC 9728 protected-resource metadata and RFC 8414 / OpenID Connect discovery. The
//! candidate lists are fixed (design §4.2): a path issuer never falls back to the root document, since
//! that document may describe a different tenant on the same host. A fetched document is only used
//! when it names the server or issuer it was fetched for. These are pure functions; the discovery
//! state machine that fetches the candidates builds on them.

use url::Url;

use crate::www_authenticate::BearerChallenge;

/// The well-known suffix of RFC 9728 protected-resource metadata.
const PROTECTED_RESOURCE: &str = "/.well-known/oauth-protected-resource";
/// The well-known suffix of RFC 8414 authorization-server metadata.
const AUTHORIZATION_SERVER: &str = "/.well-known/oauth-authorization-server";
/// The well-known suffix of OpenID Connect discovery.
const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";

/// Why an issuer cannot be used to build metadata URLs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The issuer's scheme is neither `https` nor `http`.
    #[error("the issuer's scheme {scheme:?} is not http or https")]
    IssuerScheme {
        /// The scheme the issuer has.
        scheme: String,
    },
    /// The issuer has no host.
    #[error("the issuer has no host")]
    IssuerWithoutHost,
    /// The issuer carries a query, which RFC 8414 §2 forbids.
    #[error("the issuer has a query component")]
    IssuerQuery,
    /// The issuer carries a fragment, which RFC 8414 §2 forbids.
    #[error("the issuer has a fragment component")]
    IssuerFragment,
    /// The issuer carries a user name or password.
    #[error("the issuer has userinfo")]
    IssuerUserinfo,
}

impl crate::Reason for DiscoveryError {
    fn reason(&self) -> &'static str {
        match self {
            Self::IssuerScheme { .. } => "issuer_scheme",
            Self::IssuerWithoutHost => "issuer_without_host",
            Self::IssuerQuery => "issuer_query",
            Self::IssuerFragment => "issuer_fragment",
            Self::IssuerUserinfo => "issuer_userinfo",
        }
    }
}

/// `path` with one terminating `/` removed, or `None` when nothing is left but `/` or nothing.
fn significant_path(path: &str) -> Option<&str> {
    let path = path.strip_suffix('/').unwrap_or(path);
    (!path.is_empty() && path != "/").then_some(path)
}

/// `base`'s scheme, host and port with `path`, and no userinfo, query or fragment.
fn with_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_path(path);
    url.set_query(None);
    url.set_fragment(None);
    // Both only fail for URLs without a host, which keep no userinfo anyway.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// The protected-resource metadata URLs to try for an MCP server, in order.
///
/// The challenge's `resource_metadata` alone when the server sent one; otherwise the path-aware
/// well-known URL (when the server URL has a path) and then the root one.
pub fn protected_resource_candidates(server_url: &Url, challenge: Option<&BearerChallenge>) -> Vec<Url> {
    if let Some(url) = challenge.and_then(|c| c.resource_metadata.as_ref()) {
        return vec![url.clone()];
    }
    let mut candidates = Vec::with_capacity(2);
    if let Some(path) = significant_path(server_url.path()) {
        candidates.push(with_path(server_url, &format!("{PROTECTED_RESOURCE}{path}")));
    }
    candidates.push(with_path(server_url, PROTECTED_RESOURCE));
    candidates
}

/// The authorization-server metadata URLs to try for an issuer, in order (design §4.2 step 3).
///
/// A path issuer `https://h/p` gives the RFC 8414 and OpenID Connect path-inserted forms and then
/// the OpenID Connect path-appended form, never a root document.
pub fn authorization_server_candidates(issuer: &Url) -> Result<Vec<Url>, DiscoveryError> {
    if !matches!(issuer.scheme(), "https" | "http") {
        return Err(DiscoveryError::IssuerScheme { scheme: issuer.scheme().to_owned() });
    }
    if issuer.host_str().is_none_or(str::is_empty) {
        return Err(DiscoveryError::IssuerWithoutHost);
    }
    if !issuer.username().is_empty() || issuer.password().is_some() {
        return Err(DiscoveryError::IssuerUserinfo);
    }
    if issuer.query().is_some() {
        return Err(DiscoveryError::IssuerQuery);
    }
    if issuer.fragment().is_some() {
        return Err(DiscoveryError::IssuerFragment);
    }
    Ok(match significant_path(issuer.path()) {
        Some(path) => vec![
            with_path(issuer, &format!("{AUTHORIZATION_SERVER}{path}")),
            with_path(issuer, &format!("{OPENID_CONFIGURATION}{path}")),
            with_path(issuer, &format!("{path}{OPENID_CONFIGURATION}")),
        ],
        None => vec![with_path(issuer, AUTHORIZATION_SERVER), with_path(issuer, OPENID_CONFIGURATION)],
    })
}

/// Whether a metadata document's `issuer` is the issuer it was fetched for.
///
/// Exact string comparison with `expected`'s serialisation, except that one trailing `/` on
/// either side is ignored (a root issuer `https://h` serialises as `https://h/`).
pub fn issuer_matches(expected: &Url, document_issuer: &str) -> bool {
    let expected = expected.as_str();
    let expected = expected.strip_suffix('/').unwrap_or(expected);
    let document = document_issuer.strip_suffix('/').unwrap_or(document_issuer);
    !document.is_empty() && expected == document
}

/// Whether a protected-resource document's `resource` identifies the MCP server at `server_url`.
///
/// Same origin (scheme, host, port with the default removed) and the resource path equal to the
/// server's path or a prefix of it ending on a segment boundary; a resource with userinfo, a
/// query or a fragment never matches.
pub fn resource_matches(server_url: &Url, resource: &str) -> bool {
    let Ok(resource) = Url::parse(resource) else {
        return false;
    };
    if resource.query().is_some()
        || resource.fragment().is_some()
        || !resource.username().is_empty()
        || resource.password().is_some()
        || resource.cannot_be_a_base()
    {
        return false;
    }
    // `Url` lower-cases special-scheme hosts and drops default ports when it parses.
    let same_origin = resource.scheme() == server_url.scheme()
        && resource.host_str().is_some()
        && resource.host_str() == server_url.host_str()
        && resource.port_or_known_default() == server_url.port_or_known_default();
    if !same_origin {
        return false;
    }
    let prefix = resource.path();
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() {
        return true;
    }
    let path = server_url.path();
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// Authorization and token endpoints derived without metadata (the Microsoft Entra fallback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraEndpoints {
    /// `https://{host}/{tenant}/oauth2/v2.0/authorize`.
    pub authorization_endpoint: Url,
    /// `https://{host}/{tenant}/oauth2/v2.0/token`.
    pub token_endpoint: Url,
}

/// The Microsoft Entra login hosts of the public and sovereign clouds.
const ENTRA_HOSTS: [&str; 4] = [
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.partner.microsoftonline.cn",
    "login.chinacloudapi.cn",
];

/// Whether `url` is on a Microsoft Entra host (case-insensitive; any path): Entra refuses the
/// RFC 8707 `resource` parameter on its v2.0 endpoints.
pub fn is_entra_url(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .is_some_and(|host| ENTRA_HOSTS.iter().any(|known| known.eq_ignore_ascii_case(&host)))
}

/// The Entra v2.0 endpoints for an issuer `https://{entra host}/{tenant}/v2.0`, else `None`.
///
/// The raw string is checked, not a parsed URL, because parsing would normalise away
/// percent-encoding and dot segments: the path must be exactly `/{tenant}/v2.0` (one trailing `/`
/// tolerated), the tenant ASCII alphanumerics, `-`, `.` and `_` and not a dot segment, the port
/// absent or 443, and no userinfo, query or fragment.
pub fn entra_fallback(issuer: &str) -> Option<EntraEndpoints> {
    if !issuer.bytes().all(|b| b.is_ascii_graphic()) || issuer.contains(['\\', '?', '#', '@']) {
        return None;
    }
    let scheme = issuer.get(..8)?;
    if !scheme.eq_ignore_ascii_case("https://") {
        return None;
    }
    let rest = issuer.get(8..)?;
    let (authority, path) = rest.split_at(rest.find('/')?);
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if port.is_some_and(|p| p != "443") {
        return None;
    }
    let host = ENTRA_HOSTS.into_iter().find(|known| known.eq_ignore_ascii_case(host))?;
    let path = path.strip_prefix('/')?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let (tenant, version) = path.split_once('/')?;
    let tenant_ok = !tenant.is_empty()
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && tenant.bytes().any(|b| b != b'.');
    if !tenant_ok || version != "v2.0" {
        return None;
    }
    let endpoint = |leaf: &str| Url::parse(&format!("https://{host}/{tenant}/oauth2/v2.0/{leaf}")).ok();
    Some(EntraEndpoints {
        authorization_endpoint: endpoint("authorize")?,
        token_endpoint: endpoint("token")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Reason;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn strings(urls: &[Url]) -> Vec<&str> {
        urls.iter().map(Url::as_str).collect()
    }

    fn as_candidates(issuer: &str) -> Vec<String> {
        authorization_server_candidates(&url(issuer)).unwrap().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn prm_from_challenge_only() {
        let challenge = BearerChallenge {
            resource_metadata: Some(url("https://other.example/prm")),
            ..BearerChallenge::default()
        };
        let got = protected_resource_candidates(&url("https://mcp.example.com/mcp"), Some(&challenge));
        assert_eq!(strings(&got), ["https://other.example/prm"]);
    }

    #[test]
    fn prm_well_known_with_path() {
        let without = BearerChallenge::default();
        for challenge in [None, Some(&without)] {
            let got =
                protected_resource_candidates(&url("https://mcp.example.com/v1/mcp?x=1#frag"), challenge);
            assert_eq!(
                strings(&got),
                [
                    "https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp",
                    "https://mcp.example.com/.well-known/oauth-protected-resource",
                ]
            );
        }
    }

    #[test]
    fn prm_trailing_slash_and_root() {
        let got = protected_resource_candidates(&url("https://h.example/mcp/"), None);
        assert_eq!(
            strings(&got),
            [
                "https://h.example/.well-known/oauth-protected-resource/mcp",
                "https://h.example/.well-known/oauth-protected-resource",
            ]
        );
        for root in ["https://h.example", "https://h.example/", "https://h.example/?q=1"] {
            let got = protected_resource_candidates(&url(root), None);
            assert_eq!(strings(&got), ["https://h.example/.well-known/oauth-protected-resource"], "{root}");
        }
    }

    #[test]
    fn prm_ports_and_userinfo() {
        let got = protected_resource_candidates(&url("http://u:p@127.0.0.1:8080/mcp"), None);
        assert_eq!(
            strings(&got),
            [
                "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp",
                "http://127.0.0.1:8080/.well-known/oauth-protected-resource",
            ]
        );
        let got = protected_resource_candidates(&url("https://H.Example:443/mcp"), None);
        assert_eq!(got[0].as_str(), "https://h.example/.well-known/oauth-protected-resource/mcp");
    }

    #[test]
    fn as_path_issuer_never_root() {
        let expected = [
            "https://h.example/.well-known/oauth-authorization-server/tenant/x",
            "https://h.example/.well-known/openid-configuration/tenant/x",
            "https://h.example/tenant/x/.well-known/openid-configuration",
        ];
        assert_eq!(as_candidates("https://h.example/tenant/x"), expected);
        assert_eq!(as_candidates("https://h.example/tenant/x/"), expected);
        for c in as_candidates("https://h.example/p") {
            assert!(
                c != "https://h.example/.well-known/oauth-authorization-server"
                    && c != "https://h.example/.well-known/openid-configuration",
                "{c}"
            );
        }
    }

    #[test]
    fn as_root_issuer() {
        let expected = [
            "https://h.example/.well-known/oauth-authorization-server",
            "https://h.example/.well-known/openid-configuration",
        ];
        assert_eq!(as_candidates("https://h.example"), expected);
        assert_eq!(as_candidates("https://h.example/"), expected);
        assert_eq!(
            as_candidates("http://localhost:9000"),
            [
                "http://localhost:9000/.well-known/oauth-authorization-server",
                "http://localhost:9000/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn as_issuer_errors() {
        let reason = |s: &str| authorization_server_candidates(&url(s)).unwrap_err().reason();
        assert_eq!(reason("https://h.example/p?x=1"), "issuer_query");
        assert_eq!(reason("https://h.example/p?"), "issuer_query");
        assert_eq!(reason("https://h.example/p#f"), "issuer_fragment");
        assert_eq!(reason("https://h.example/#"), "issuer_fragment");
        assert_eq!(reason("https://u@h.example/p"), "issuer_userinfo");
        assert_eq!(reason("https://:pw@h.example/p"), "issuer_userinfo");
        assert_eq!(reason("ftp://h.example/p"), "issuer_scheme");
        assert_eq!(reason("urn:example:issuer"), "issuer_scheme");
        assert_eq!(reason("file:///issuer"), "issuer_scheme");
    }

    #[test]
    fn issuer_match_rules() {
        let root = url("https://as.example");
        assert!(issuer_matches(&root, "https://as.example"));
        assert!(issuer_matches(&root, "https://as.example/"));
        assert!(!issuer_matches(&root, "https://as.example//"));
        assert!(!issuer_matches(&root, "https://AS.example"));
        assert!(!issuer_matches(&root, "https://as.example:443"));
        assert!(!issuer_matches(&root, "https://evil.example"));
        assert!(!issuer_matches(&root, ""));
        let path = url("https://as.example/Tenant");
        assert!(issuer_matches(&path, "https://as.example/Tenant"));
        assert!(issuer_matches(&path, "https://as.example/Tenant/"));
        assert!(!issuer_matches(&path, "https://as.example/tenant"));
        assert!(!issuer_matches(&path, "https://as.example/Tenant/x"));
        assert!(!issuer_matches(&path, "https://as.example"));
        let slash = url("https://as.example/t/");
        assert!(issuer_matches(&slash, "https://as.example/t"));
        assert!(issuer_matches(&slash, "https://as.example/t/"));
    }

    #[test]
    fn resource_match_rules() {
        let server = url("https://mcp.example.com/mcp");
        assert!(resource_matches(&server, "https://mcp.example.com/mcp"));
        assert!(resource_matches(&server, "https://mcp.example.com/mcp/"));
        assert!(resource_matches(&server, "https://MCP.example.com:443/mcp"));
        assert!(resource_matches(&server, "https://mcp.example.com/"));
        assert!(resource_matches(&server, "https://mcp.example.com"));
        assert!(!resource_matches(&server, "https://mcp.example.com/mcpx"));
        assert!(!resource_matches(&server, "https://mcp.example.com/mcp/x"));
        assert!(!resource_matches(&server, "https://mcp.example.com/MCP"));
        assert!(!resource_matches(&server, "http://mcp.example.com/mcp"));
        assert!(!resource_matches(&server, "https://mcp.example.com:8443/mcp"));
        assert!(!resource_matches(&server, "https://other.example.com/mcp"));
        assert!(!resource_matches(&server, "https://mcp.example.com/mcp?x=1"));
        assert!(!resource_matches(&server, "https://mcp.example.com/mcp#f"));
        assert!(!resource_matches(&server, "https://u@mcp.example.com/mcp"));
        assert!(!resource_matches(&server, "/mcp"));
        assert!(!resource_matches(&server, "not a url"));
        let deep = url("https://mcp.example.com/mcp/x?session=1");
        assert!(resource_matches(&deep, "https://mcp.example.com/mcp"));
        assert!(resource_matches(&deep, "https://mcp.example.com/mcp/x"));
        assert!(!resource_matches(&deep, "https://mcp.example.com/mc"));
        let ported = url("http://127.0.0.1:8080/mcp");
        assert!(resource_matches(&ported, "http://127.0.0.1:8080/mcp"));
        assert!(!resource_matches(&ported, "http://127.0.0.1/mcp"));
        let default = url("https://mcp.example.com:443/");
        assert!(resource_matches(&default, "https://mcp.example.com"));
    }

    fn entra(issuer: &str) -> Option<(String, String)> {
        entra_fallback(issuer).map(|e| (e.authorization_endpoint.to_string(), e.token_endpoint.to_string()))
    }

    #[test]
    fn entra_accepted() {
        let expect = |host: &str, tenant: &str| {
            Some((
                format!("https://{host}/{tenant}/oauth2/v2.0/authorize"),
                format!("https://{host}/{tenant}/oauth2/v2.0/token"),
            ))
        };
        let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        assert_eq!(
            entra(&format!("https://login.microsoftonline.com/{tenant}/v2.0")),
            expect("login.microsoftonline.com", tenant)
        );
        assert_eq!(
            entra(&format!("https://login.microsoftonline.com/{tenant}/v2.0/")),
            expect("login.microsoftonline.com", tenant)
        );
        assert_eq!(
            entra("HTTPS://Login.MicrosoftOnline.COM:443/contoso.onmicrosoft.com/v2.0"),
            expect("login.microsoftonline.com", "contoso.onmicrosoft.com")
        );
        assert_eq!(
            entra("https://login.microsoftonline.us/common/v2.0"),
            expect("login.microsoftonline.us", "common")
        );
        assert_eq!(
            entra("https://login.partner.microsoftonline.cn/my_tenant/v2.0"),
            expect("login.partner.microsoftonline.cn", "my_tenant")
        );
        assert_eq!(
            entra("https://login.chinacloudapi.cn/organizations/v2.0"),
            expect("login.chinacloudapi.cn", "organizations")
        );
    }

    #[test]
    fn entra_rejected() {
        for issuer in [
            "http://login.microsoftonline.com/t/v2.0",
            "https://login.microsoftonline.com.evil.com/t/v2.0",
            "https://evil.com/login.microsoftonline.com/t/v2.0",
            "https://login.microsoftonline.com/t/v2.0/extra",
            "https://login.microsoftonline.com/t/%2e%2e/v2.0",
            "https://login.microsoftonline.com/%74/v2.0",
            "https://login.microsoftonline.com/t/v2%2e0",
            "https://login.microsoftonline.com/../v2.0",
            "https://login.microsoftonline.com/./v2.0",
            "https://login.microsoftonline.com/x/../t/v2.0",
            "https://login.microsoftonline.com/t/v2.0//",
            "https://login.microsoftonline.com//v2.0",
            "https://login.microsoftonline.com/t/V2.0",
            "https://login.microsoftonline.com/t/v1.0",
            "https://login.microsoftonline.com/t",
            "https://login.microsoftonline.com/v2.0",
            "https://login.microsoftonline.com",
            "https://login.microsoftonline.com/",
            "https://login.microsoftonline.com:8443/t/v2.0",
            "https://login.microsoftonline.com:0443/t/v2.0",
            "https://login.microsoftonline.com:/t/v2.0",
            "https://login.microsoftonline.com./t/v2.0",
            "https://user@login.microsoftonline.com/t/v2.0",
            "https://evil.com@login.microsoftonline.com/t/v2.0",
            "https://login.microsoftonline.com/t/v2.0?x=1",
            "https://login.microsoftonline.com/t/v2.0#f",
            "https://login.microsoftonline.com\\@evil.com/t/v2.0",
            "https://login.microsoftonline.com/t\\v2.0",
            " https://login.microsoftonline.com/t/v2.0",
            "https://login.microsoftonline.com/t/v2.0 ",
            "https://login.microsoftonline.com/t+x/v2.0",
            "https://login.microsoftonline.com/tén/v2.0",
            "https://login.windows.net/t/v2.0",
            "https:/login.microsoftonline.com/t/v2.0",
            "login.microsoftonline.com/t/v2.0",
            "",
            "https",
        ] {
            assert_eq!(entra(issuer), None, "{issuer}");
        }
    }

    #[test]
    fn reasons_are_snake_case() {
        for e in [
            DiscoveryError::IssuerScheme { scheme: "ftp".into() },
            DiscoveryError::IssuerWithoutHost,
            DiscoveryError::IssuerQuery,
            DiscoveryError::IssuerFragment,
            DiscoveryError::IssuerUserinfo,
        ] {
            assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!e.to_string().is_empty());
        }
    }
}
