//! Where the OAuth client may send requests (design §4.2 step 7, SSRF).
//!
//! Metadata documents name URLs the gateway then fetches, so a hostile MCP server could point the
//! gateway at its own cloud metadata service or an internal admin port. Requests go over `https`
//! to public addresses only, unless the configured MCP server itself lives on loopback or private
//! address space (a lab or an internal deployment), in which case `http` and private addresses are
//! allowed too. Link-local and cloud metadata addresses are refused always. Core checks the URL;
//! the adapter checks every address the host name resolves to with [`permits_address`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use crate::Reason;

/// Whether the configured server is local (loopback or private), which relaxes the policy.
pub fn is_local_server(server_url: &Url) -> bool {
    match server_url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost" || domain.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => is_loopback_or_private(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_loopback_or_private(IpAddr::V6(ip)),
        None => false,
    }
}

fn is_loopback_or_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || is_shared_v4(v4),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn is_shared_v4(ip: Ipv4Addr) -> bool {
    // 100.64.0.0/10, carrier-grade NAT space used inside clusters.
    ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64
}

fn is_never_allowed(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local address (cloud metadata lives here)"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("unspecified, broadcast or multicast address")
        }
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("0.0.0.0/8 address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local address"),
        IpAddr::V6(v6) if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
            Some("cloud metadata address")
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => {
            Some("unspecified or multicast address")
        }
        _ => None,
    }
}

/// Whether a resolved address may be connected to; `allow_private` comes from the request's limits.
pub fn permits_address(ip: IpAddr, allow_private: bool) -> Result<(), FetchPolicyError> {
    if let Some(why) = is_never_allowed(ip) {
        return Err(FetchPolicyError::Address { address: ip, why });
    }
    if !allow_private && is_loopback_or_private(ip) {
        return Err(FetchPolicyError::Address { address: ip, why: "loopback or private address" });
    }
    Ok(())
}

/// Checks a URL before a request is emitted: scheme, userinfo and IP-literal hosts.
pub fn check_url(url: &Url, allow_private: bool) -> Result<(), FetchPolicyError> {
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(FetchPolicyError::Scheme { url: url.to_string() }),
        _ => return Err(FetchPolicyError::Scheme { url: url.to_string() }),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchPolicyError::Userinfo);
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => permits_address(IpAddr::V4(ip), allow_private),
        Some(url::Host::Ipv6(ip)) => permits_address(IpAddr::V6(ip), allow_private),
        Some(url::Host::Domain(domain)) => {
            if !allow_private && (domain == "localhost" || domain.ends_with(".localhost")) {
                return Err(FetchPolicyError::Host { host: domain.to_owned() });
            }
            Ok(())
        }
        None => Err(FetchPolicyError::Host { host: String::new() }),
    }
}

/// A destination the fetch policy refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchPolicyError {
    /// Not https (http only for local servers).
    #[error("`{url}` is not https; only a server on loopback or private address space may use http")]
    Scheme {
        /// The refused URL.
        url: String,
    },
    /// The URL carries credentials.
    #[error("URLs with userinfo are never fetched")]
    Userinfo,
    /// A host name that is local when the server is not.
    #[error("host `{host}` is local but the configured server is not")]
    Host {
        /// The refused host.
        host: String,
    },
    /// An address in a refused range.
    #[error("address {address} refused: {why}")]
    Address {
        /// The refused address.
        address: IpAddr,
        /// Which range it is in.
        why: &'static str,
    },
}

impl Reason for FetchPolicyError {
    fn reason(&self) -> &'static str {
        "blocked_by_fetch_policy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(value: &str) -> Url {
        Url::parse(value).unwrap()
    }

    #[test]
    fn public_servers_fetch_https_to_public_addresses_only() {
        assert!(check_url(&url("https://auth.example.com/.well-known/x"), false).is_ok());
        assert!(check_url(&url("http://auth.example.com/"), false).is_err());
        assert!(check_url(&url("https://127.0.0.1/"), false).is_err());
        assert!(check_url(&url("https://10.1.1.1/"), false).is_err());
        assert!(check_url(&url("https://localhost/"), false).is_err());
        assert!(check_url(&url("https://u:p@auth.example.com/"), false).is_err());
        assert!(permits_address("93.184.216.34".parse().unwrap(), false).is_ok());
        assert!(permits_address("::ffff:10.0.0.1".parse().unwrap(), false).is_err());
    }

    #[test]
    fn local_servers_may_use_http_and_private_space_but_never_metadata() {
        assert!(is_local_server(&url("http://127.0.0.1:8080/mcp")));
        assert!(is_local_server(&url("http://localhost:3000/mcp")));
        assert!(is_local_server(&url("http://10.2.3.4/mcp")));
        assert!(!is_local_server(&url("https://mcp.example.com/mcp")));
        assert!(check_url(&url("http://127.0.0.1:9000/token"), true).is_ok());
        assert!(check_url(&url("http://169.254.169.254/latest/meta-data"), true).is_err());
        assert!(check_url(&url("http://[fe80::1]/"), true).is_err());
        assert!(check_url(&url("http://[fd00:ec2::254]/"), true).is_err());
        assert!(check_url(&url("http://0.0.0.0/"), true).is_err());
        assert!(check_url(&url("file:///etc/passwd"), true).is_err());
    }
}
