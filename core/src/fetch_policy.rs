//! Where the OAuth client may send requests (design §4.9 and §4.2 step 7, SSRF).
//!
//! Metadata documents name URLs the gateway then fetches, so a hostile MCP server could point the
//! gateway at its own cloud metadata service or an internal admin port. Requests go over `https`
//! to public addresses only, unless the configured MCP server itself lives on loopback or private
//! address space (a lab or an internal deployment), in which case `http` and loopback, private,
//! shared (CGNAT) and unique-local addresses are allowed too. Some ranges are refused in every
//! mode: link-local, cloud metadata, unspecified, multicast, broadcast, reserved, documentation,
//! benchmarking and the other special-purpose ranges of the IANA registries.
//!
//! Every address goes through **one table** ([`classify`]): IPv4 ranges in `V4_RANGES`, IPv6 ranges
//! in `V6_RANGES`, longest prefix wins. IPv6 forms that carry an IPv4 address (IPv4-mapped,
//! IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo) are classified by the IPv4 address inside,
//! so `64:ff9b::a9fe:a9fe` is the metadata address it translates to. Core checks the URL with
//! [`check_url`]; the adapter checks the whole resolution of a host name with
//! [`permits_addresses`] (refused when any address is) and connects to an address it checked.
//!
//! A configured client secret has one more rule ([`check_secret_destination`]): it goes only to a
//! configured `token_url`, or to an endpoint on the origin of a configured issuer or of the
//! configured MCP server itself; never to a host that discovery alone named.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use crate::Reason;

/// What a range of addresses is, which decides whether it may be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressClass {
    /// Globally routable unicast: always allowed.
    Public,
    /// Loopback (`127/8`, `::1`): only when the configured server is local.
    Loopback,
    /// RFC 1918 private space and deprecated IPv6 site-local: only when the server is local.
    Private,
    /// Carrier-grade NAT shared space `100.64/10`: only when the server is local.
    Shared,
    /// IPv6 unique-local `fc00::/7`: only when the server is local.
    UniqueLocal,
    /// `0.0.0.0/8` and `::`: never.
    Unspecified,
    /// Link-local `169.254/16`, `fe80::/10`: never.
    LinkLocal,
    /// A cloud instance metadata service: never.
    Metadata,
    /// Multicast: never.
    Multicast,
    /// The limited broadcast address: never.
    Broadcast,
    /// Reserved or unassigned (`240/4`, IPv6 outside the assigned blocks): never.
    Reserved,
    /// Documentation examples: never.
    Documentation,
    /// Benchmarking: never.
    Benchmarking,
    /// Another special-purpose range (protocol assignments, discard, anycast relays, AS112): never.
    SpecialPurpose,
}

impl AddressClass {
    /// Whether an address of this class may be fetched; `allow_private` is whether the configured
    /// server is itself on loopback or private space.
    pub fn permitted(self, allow_private: bool) -> bool {
        match self {
            Self::Public => true,
            Self::Loopback | Self::Private | Self::Shared | Self::UniqueLocal => allow_private,
            _ => false,
        }
    }

    /// Whether this class is loopback or private space (the ranges `allow_private` opens).
    pub fn is_local(self) -> bool {
        matches!(self, Self::Loopback | Self::Private | Self::Shared | Self::UniqueLocal)
    }

    /// The stable reason code of a refusal for this class (`"allowed"` for [`Self::Public`]).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Public => "allowed",
            Self::Loopback => "loopback_address",
            Self::Private => "private_address",
            Self::Shared => "shared_address",
            Self::UniqueLocal => "unique_local_address",
            Self::Unspecified => "unspecified_address",
            Self::LinkLocal => "link_local_address",
            Self::Metadata => "metadata_address",
            Self::Multicast => "multicast_address",
            Self::Broadcast => "broadcast_address",
            Self::Reserved => "reserved_address",
            Self::Documentation => "documentation_address",
            Self::Benchmarking => "benchmarking_address",
            Self::SpecialPurpose => "special_purpose_address",
        }
    }

    /// How bad an address of this class is as a target, to pick the reading of an ambiguous
    /// embedded form that names the worst: metadata, then link-local, then the other
    /// never-allowed classes, then local space, then public.
    fn severity(self) -> u8 {
        match self {
            Self::Public => 0,
            Self::Loopback | Self::Private | Self::Shared | Self::UniqueLocal => 1,
            Self::Metadata => 4,
            Self::LinkLocal => 3,
            _ => 2,
        }
    }
}

/// One row of the address table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    /// The range in CIDR notation, as written in the IANA registries.
    pub cidr: &'static str,
    /// What the range is.
    pub class: AddressClass,
}

/// A table row: network bits, prefix length, row.
type Row<T> = (T, u8, AddressRange);

const fn row<T>(network: T, prefix: u8, cidr: &'static str, class: AddressClass) -> Row<T> {
    (network, prefix, AddressRange { cidr, class })
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

/// The IPv4 table (IANA IPv4 Special-Purpose Address Registry, plus metadata addresses).
/// An address in no row is public.
const V4_RANGES: &[Row<u32>] = {
    use AddressClass::*;
    &[
        row(v4(0, 0, 0, 0), 8, "0.0.0.0/8", Unspecified),
        row(v4(10, 0, 0, 0), 8, "10.0.0.0/8", Private),
        row(v4(100, 64, 0, 0), 10, "100.64.0.0/10", Shared),
        // Alibaba Cloud's metadata service lives inside the shared space.
        row(v4(100, 100, 100, 200), 32, "100.100.100.200/32", Metadata),
        row(v4(127, 0, 0, 0), 8, "127.0.0.0/8", Loopback),
        row(v4(169, 254, 0, 0), 16, "169.254.0.0/16", LinkLocal),
        // AWS, GCP, Azure, OpenStack and others answer metadata queries here.
        row(v4(169, 254, 169, 254), 32, "169.254.169.254/32", Metadata),
        row(v4(172, 16, 0, 0), 12, "172.16.0.0/12", Private),
        // IETF protocol assignments: DS-Lite, PCP and TURN anycast, NAT64 discovery. No OAuth server.
        row(v4(192, 0, 0, 0), 24, "192.0.0.0/24", SpecialPurpose),
        row(v4(192, 0, 2, 0), 24, "192.0.2.0/24", Documentation),
        // AS112 DNS sinks (RFC 7535, RFC 7534): only DNS, and anyone may announce them.
        row(v4(192, 31, 196, 0), 24, "192.31.196.0/24", SpecialPurpose),
        // AMT relays (RFC 7450): multicast tunnelling anycast.
        row(v4(192, 52, 193, 0), 24, "192.52.193.0/24", SpecialPurpose),
        // Deprecated 6to4 relay anycast (RFC 7526): whoever is nearest answers.
        row(v4(192, 88, 99, 0), 24, "192.88.99.0/24", SpecialPurpose),
        row(v4(192, 168, 0, 0), 16, "192.168.0.0/16", Private),
        row(v4(192, 175, 48, 0), 24, "192.175.48.0/24", SpecialPurpose),
        row(v4(198, 18, 0, 0), 15, "198.18.0.0/15", Benchmarking),
        row(v4(198, 51, 100, 0), 24, "198.51.100.0/24", Documentation),
        row(v4(203, 0, 113, 0), 24, "203.0.113.0/24", Documentation),
        row(v4(224, 0, 0, 0), 4, "224.0.0.0/4", Multicast),
        row(v4(240, 0, 0, 0), 4, "240.0.0.0/4", Reserved),
        row(v4(255, 255, 255, 255), 32, "255.255.255.255/32", Broadcast),
    ]
};

const fn v6(s: [u16; 8]) -> u128 {
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]).to_bits()
}

/// The IPv6 table (IANA IPv6 Special-Purpose Address Registry and address-space registry, plus
/// metadata addresses). Only `2000::/3` is global unicast; the rest of the space is unassigned or
/// special. Ranges that embed an IPv4 address are in [`embedded_v4`], which runs first.
const V6_RANGES: &[Row<u128>] = {
    use AddressClass::*;
    &[
        row(0, 0, "::/0", Reserved),
        row(0, 128, "::/128", Unspecified),
        row(1, 128, "::1/128", Loopback),
        // Discard-only (RFC 6666) and the dummy prefix (RFC 9780): packets go nowhere useful.
        row(v6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64, "100::/64", SpecialPurpose),
        row(v6([0x100, 0, 0, 1, 0, 0, 0, 0]), 64, "100:0:0:1::/64", SpecialPurpose),
        row(v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3, "2000::/3", Public),
        // IETF protocol assignments (PCP/TURN anycast, AMT, AS112, ORCHID identifiers): no OAuth
        // server lives there. Teredo (2001::/32) is classified by its client address first.
        row(v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23, "2001::/23", SpecialPurpose),
        row(v6([0x2001, 2, 0, 0, 0, 0, 0, 0]), 48, "2001:2::/48", Benchmarking),
        row(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32, "2001:db8::/32", Documentation),
        row(v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20, "3fff::/20", Documentation),
        // SRv6 segment identifiers (RFC 9602): not hosts.
        row(v6([0x5f00, 0, 0, 0, 0, 0, 0, 0]), 16, "5f00::/16", SpecialPurpose),
        row(v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7, "fc00::/7", UniqueLocal),
        // AWS's IPv6 metadata service.
        row(v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]), 128, "fd00:ec2::254/128", Metadata),
        // Google Cloud's IPv6 metadata service.
        row(v6([0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254]), 128, "fd20:ce::254/128", Metadata),
        row(v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10, "fe80::/10", LinkLocal),
        // Deprecated site-local (RFC 3879): still private where it is used.
        row(v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]), 10, "fec0::/10", Private),
        row(v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, "ff00::/8", Multicast),
    ]
};

/// The most specific row of `table` containing `address` (`bits` wide).
fn longest_match<T: Copy + Into<u128>>(table: &[Row<T>], address: u128, bits: u32) -> Option<AddressRange> {
    table
        .iter()
        .filter(|(network, prefix, _)| {
            let prefix = u32::from(*prefix);
            // Compare the top `prefix` bits; a zero prefix matches everything.
            prefix == 0 || (address ^ (*network).into()) >> (bits - prefix) == 0
        })
        .max_by_key(|(_, prefix, _)| *prefix)
        .map(|(_, _, range)| *range)
}

fn classify_v4(address: Ipv4Addr) -> AddressRange {
    longest_match(V4_RANGES, u128::from(u32::from(address)), 32)
        .unwrap_or(AddressRange { cidr: "0.0.0.0/0", class: AddressClass::Public })
}

/// The IPv6 forms that carry an IPv4 address, with the IPv4 addresses they lead to.
///
/// `64:ff9b:1::/48` (local-use NAT64, RFC 8215) may carry its IPv4 address at any RFC 6052 prefix
/// length, so both the `/96` and the `/48` layouts are returned and the worst one counts.
fn embedded_v4(address: Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let bits = u128::from(address);
    let segments = address.segments();
    let low32 = Ipv4Addr::from(bits as u32);
    let top = |prefix: u32| bits >> (128 - prefix);
    if top(96) == 0xffff {
        return vec![("::ffff:0:0/96 (IPv4-mapped)", low32)];
    }
    if top(96) == 0xffff_0000 {
        return vec![("::ffff:0:0:0/96 (IPv4-translated)", low32)];
    }
    // `::` and `::1` are themselves, not IPv4-compatible forms of 0.0.0.0 and 0.0.0.1.
    if top(96) == 0 && bits > 1 {
        return vec![("::/96 (IPv4-compatible)", low32)];
    }
    if top(96) == v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]) >> 32 {
        return vec![("64:ff9b::/96 (NAT64)", low32)];
    }
    if top(48) == v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]) >> 80 {
        // RFC 6052 /48: IPv4 bits 0-15 in address bits 48-63, bits 16-31 in bits 72-87 (after the
        // zero `u` octet).
        let octets = address.octets();
        let at_48 = Ipv4Addr::new(octets[6], octets[7], octets[9], octets[10]);
        return vec![
            ("64:ff9b:1::/48 (local-use NAT64)", low32),
            ("64:ff9b:1::/48 (local-use NAT64)", at_48),
        ];
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return vec![("2002::/16 (6to4)", Ipv4Addr::new(a, b, c, d))];
    }
    if top(32) == 0x2001_0000 {
        // Teredo (RFC 4380): the client's address is the last 32 bits, inverted.
        return vec![("2001::/32 (Teredo)", Ipv4Addr::from(!(bits as u32)))];
    }
    Vec::new()
}

/// How one address is classified: the range it falls in, and the IPv4 address it carries if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The range that decided (for an embedded form, the IPv4 range of the inner address).
    pub range: AddressRange,
    /// The IPv4 address an IPv6 form carries, and which form it was.
    pub embedded: Option<(&'static str, Ipv4Addr)>,
}

/// Classifies one address through the table: the single place that knows the ranges.
pub fn classify(address: IpAddr) -> Classification {
    match address {
        IpAddr::V4(v4) => Classification { range: classify_v4(v4), embedded: None },
        IpAddr::V6(v6) => {
            let inner = embedded_v4(v6)
                .into_iter()
                .map(|(form, inner)| (classify_v4(inner), form, inner))
                // On a tie the first (most common) reading wins.
                .rev()
                .max_by_key(|(range, _, _)| range.class.severity());
            match inner {
                Some((range, form, inner)) => Classification { range, embedded: Some((form, inner)) },
                None => Classification {
                    range: longest_match(V6_RANGES, u128::from(v6), 128)
                        .unwrap_or(AddressRange { cidr: "::/0", class: AddressClass::Reserved }),
                    embedded: None,
                },
            }
        }
    }
}

/// Whether the configured server is local (loopback or private), which relaxes the policy.
pub fn is_local_server(server_url: &Url) -> bool {
    match server_url.host() {
        Some(url::Host::Domain(domain)) => is_local_host_name(domain),
        Some(url::Host::Ipv4(ip)) => classify(IpAddr::V4(ip)).range.class.is_local(),
        Some(url::Host::Ipv6(ip)) => classify(IpAddr::V6(ip)).range.class.is_local(),
        None => false,
    }
}

/// `localhost` and names under it (RFC 6761), with or without the trailing dot.
fn is_local_host_name(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    domain == "localhost" || domain.ends_with(".localhost")
}

/// Whether a resolved address may be connected to; `allow_private` comes from the request's limits.
pub fn permits_address(ip: IpAddr, allow_private: bool) -> Result<(), FetchPolicyError> {
    let Classification { range, embedded } = classify(ip);
    if range.class.permitted(allow_private) {
        return Ok(());
    }
    Err(FetchPolicyError::Address { address: ip, class: range.class, range: range.cidr, embedded })
}

/// Whether a whole resolution may be connected to: refused when it is empty or when **any**
/// address is refused (an attacker's DNS answer mixing a public and a metadata address must not
/// win by ordering). Adapters call this once per resolution and connect only to these addresses.
pub fn permits_addresses(addresses: &[IpAddr], allow_private: bool) -> Result<(), FetchPolicyError> {
    if addresses.is_empty() {
        return Err(FetchPolicyError::NoAddresses);
    }
    addresses.iter().try_for_each(|address| permits_address(*address, allow_private))
}

/// Checks a URL before a request is emitted: scheme, userinfo and the host (an IP literal goes
/// through the address table, a name under `localhost` needs a local server).
pub fn check_url(url: &Url, allow_private: bool) -> Result<(), FetchPolicyError> {
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(FetchPolicyError::Scheme { url: url.to_string() }),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchPolicyError::Userinfo);
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => permits_address(IpAddr::V4(ip), allow_private),
        Some(url::Host::Ipv6(ip)) => permits_address(IpAddr::V6(ip), allow_private),
        Some(url::Host::Domain(domain)) if !allow_private && is_local_host_name(domain) => {
            Err(FetchPolicyError::Host { host: domain.to_owned() })
        }
        Some(url::Host::Domain(_)) => Ok(()),
        None => Err(FetchPolicyError::Host { host: String::new() }),
    }
}

/// The whole decision for one fetch: the URL ([`check_url`]) and then the addresses its host
/// resolved to ([`permits_addresses`]). An IP-literal host needs no resolution; when `resolved`
/// is empty it stands for itself.
pub fn check_fetch_target(
    url: &Url,
    resolved: &[IpAddr],
    allow_private: bool,
) -> Result<(), FetchPolicyError> {
    check_url(url, allow_private)?;
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match literal {
        Some(_) if resolved.is_empty() => Ok(()),
        _ => permits_addresses(resolved, allow_private),
    }
}

/// The endpoints configuration pins for a configured client secret (design §4.2 step 7).
#[derive(Clone, Copy, Debug)]
pub struct SecretPins<'a> {
    /// The MCP server URL the operator configured.
    pub server_url: &'a Url,
    /// The configured `token_url`, if any.
    pub token_url: Option<&'a Url>,
    /// The configured `issuer`, if any.
    pub issuer: Option<&'a Url>,
}

/// Whether a configured client secret may be sent to `endpoint`: the configured `token_url`
/// itself, or an endpoint on the origin of the configured issuer or of the configured MCP server.
/// An endpoint that discovery alone named on another origin is refused.
pub fn check_secret_destination(endpoint: &Url, pins: &SecretPins<'_>) -> Result<(), FetchPolicyError> {
    let same_origin = |pinned: &Url| pinned.origin() == endpoint.origin();
    let pinned = pins.token_url.is_some_and(|token_url| token_url == endpoint)
        || pins.issuer.is_some_and(same_origin)
        || same_origin(pins.server_url);
    if pinned {
        Ok(())
    } else {
        Err(FetchPolicyError::UnpinnedSecretDestination { endpoint: endpoint.origin().ascii_serialization() })
    }
}

/// A destination the fetch policy refuses; [`Reason::reason`] names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchPolicyError {
    /// Not https (http only for local servers). Reason `scheme_not_allowed`.
    #[error("`{url}` is not https; only a server on loopback or private address space may use http")]
    Scheme {
        /// The refused URL.
        url: String,
    },
    /// The URL carries credentials. Reason `userinfo`.
    #[error("URLs with userinfo are never fetched")]
    Userinfo,
    /// A host name that is local when the server is not, or no host. Reason `local_host_name`.
    #[error("host `{host}` is local (or missing) but the configured server is not local")]
    Host {
        /// The refused host.
        host: String,
    },
    /// A request whose target is not an absolute http(s) URL. Reason `invalid_url`.
    #[error("request target `{target}` is not an absolute URL")]
    InvalidUrl {
        /// The refused target.
        target: String,
    },
    /// An address in a refused range. Reason: the class's code ([`AddressClass::reason`]).
    #[error("address {address} refused: in {range}{}", embedded_note(*.embedded))]
    Address {
        /// The refused address.
        address: IpAddr,
        /// What the range is.
        class: AddressClass,
        /// The range, in CIDR notation.
        range: &'static str,
        /// For an IPv6 form carrying an IPv4 address: the form and the inner address.
        embedded: Option<(&'static str, Ipv4Addr)>,
    },
    /// The host name resolved to no address. Reason `no_addresses`.
    #[error("the host name resolved to no address")]
    NoAddresses,
    /// A configured client secret would go to an endpoint configuration did not pin.
    /// Reason `unpinned_secret_destination`.
    #[error(
        "the client secret is not sent to {endpoint}: only to the configured token_url or the origin of the configured issuer or server"
    )]
    UnpinnedSecretDestination {
        /// The refused endpoint's origin.
        endpoint: String,
    },
}

fn embedded_note(embedded: Option<(&'static str, Ipv4Addr)>) -> String {
    embedded.map(|(form, inner)| format!(" (as {inner}, carried by {form})")).unwrap_or_default()
}

impl Reason for FetchPolicyError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Scheme { .. } => "scheme_not_allowed",
            Self::Userinfo => "userinfo",
            Self::Host { .. } => "local_host_name",
            Self::InvalidUrl { .. } => "invalid_url",
            Self::Address { class, .. } => class.reason(),
            Self::NoAddresses => "no_addresses",
            Self::UnpinnedSecretDestination { .. } => "unpinned_secret_destination",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(value: &str) -> Url {
        Url::parse(value).unwrap()
    }

    fn ip(value: &str) -> IpAddr {
        value.parse().unwrap()
    }

    /// The reason `permits_address` gives, or `"allowed"`.
    fn verdict(address: &str, allow_private: bool) -> &'static str {
        permits_address(ip(address), allow_private).err().map_or("allowed", |error| error.reason())
    }

    #[test]
    fn public_servers_fetch_https_to_public_addresses_only() {
        assert!(check_url(&url("https://auth.example.com/.well-known/x"), false).is_ok());
        assert!(check_url(&url("http://auth.example.com/"), false).is_err());
        assert!(check_url(&url("https://127.0.0.1/"), false).is_err());
        assert!(check_url(&url("https://10.1.1.1/"), false).is_err());
        assert!(check_url(&url("https://localhost/"), false).is_err());
        assert!(check_url(&url("https://u:p@auth.example.com/"), false).is_err());
        assert!(permits_address(ip("93.184.216.34"), false).is_ok());
        assert!(permits_address(ip("::ffff:10.0.0.1"), false).is_err());
    }

    #[test]
    fn local_servers_may_use_http_and_private_space_but_never_metadata() {
        assert!(is_local_server(&url("http://127.0.0.1:8080/mcp")));
        assert!(is_local_server(&url("http://localhost:3000/mcp")));
        assert!(is_local_server(&url("http://10.2.3.4/mcp")));
        assert!(is_local_server(&url("http://[::1]/mcp")));
        assert!(is_local_server(&url("http://[fd12::1]/mcp")));
        assert!(is_local_server(&url("http://100.64.1.1/mcp")));
        assert!(!is_local_server(&url("https://mcp.example.com/mcp")));
        assert!(!is_local_server(&url("https://93.184.216.34/mcp")));
        assert!(!is_local_server(&url("https://[2606:4700::1]/mcp")));
        assert!(!is_local_server(&url("http://169.254.169.254/")));
        assert!(check_url(&url("http://127.0.0.1:9000/token"), true).is_ok());
        assert!(check_url(&url("http://169.254.169.254/latest/meta-data"), true).is_err());
        assert!(check_url(&url("http://[fe80::1]/"), true).is_err());
        assert!(check_url(&url("http://[fd00:ec2::254]/"), true).is_err());
        assert!(check_url(&url("http://0.0.0.0/"), true).is_err());
        assert!(check_url(&url("file:///etc/passwd"), true).is_err());
    }

    #[test]
    fn never_allowed_ranges_are_refused_in_both_modes() {
        for (address, reason) in [
            ("0.0.0.0", "unspecified_address"),
            ("0.1.2.3", "unspecified_address"),
            ("::", "unspecified_address"),
            ("169.254.0.1", "link_local_address"),
            ("169.254.255.255", "link_local_address"),
            ("fe80::1", "link_local_address"),
            ("febf:ffff::1", "link_local_address"),
            ("169.254.169.254", "metadata_address"),
            ("100.100.100.200", "metadata_address"),
            ("fd00:ec2::254", "metadata_address"),
            ("fd20:ce::254", "metadata_address"),
            ("224.0.0.1", "multicast_address"),
            ("239.255.255.255", "multicast_address"),
            ("ff02::1", "multicast_address"),
            ("255.255.255.255", "broadcast_address"),
            ("240.0.0.1", "reserved_address"),
            ("255.255.255.254", "reserved_address"),
            ("4000::1", "reserved_address"),
            ("::1:0:0:0:1", "reserved_address"),
            ("192.0.2.1", "documentation_address"),
            ("198.51.100.7", "documentation_address"),
            ("203.0.113.255", "documentation_address"),
            ("2001:db8::1", "documentation_address"),
            ("3fff:fff::1", "documentation_address"),
            ("198.18.0.1", "benchmarking_address"),
            ("198.19.255.255", "benchmarking_address"),
            ("2001:2::1", "benchmarking_address"),
            ("192.0.0.9", "special_purpose_address"),
            ("192.88.99.1", "special_purpose_address"),
            ("192.31.196.1", "special_purpose_address"),
            ("192.52.193.1", "special_purpose_address"),
            ("192.175.48.1", "special_purpose_address"),
            ("100::1", "special_purpose_address"),
            ("100:0:0:1::1", "special_purpose_address"),
            ("2001:1::1", "special_purpose_address"),
            ("2001:20::1", "special_purpose_address"),
            ("5f00::1", "special_purpose_address"),
        ] {
            assert_eq!(verdict(address, false), reason, "{address} for a public server");
            assert_eq!(verdict(address, true), reason, "{address} for a local server");
        }
    }

    #[test]
    fn local_ranges_need_a_local_server() {
        for (address, reason) in [
            ("127.0.0.1", "loopback_address"),
            ("127.255.255.254", "loopback_address"),
            ("::1", "loopback_address"),
            ("10.0.0.1", "private_address"),
            ("172.16.0.1", "private_address"),
            ("172.31.255.255", "private_address"),
            ("192.168.1.1", "private_address"),
            ("fec0::1", "private_address"),
            ("100.64.0.1", "shared_address"),
            ("100.127.255.255", "shared_address"),
            ("fc00::1", "unique_local_address"),
            ("fdff::1", "unique_local_address"),
        ] {
            assert_eq!(verdict(address, false), reason, "{address} for a public server");
            assert_eq!(verdict(address, true), "allowed", "{address} for a local server");
        }
    }

    #[test]
    fn range_boundaries_are_exact() {
        for address in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "3ffe::1",
            "3fff:1000::1",
            "2620:0:2d0:200::7",
        ] {
            assert_eq!(verdict(address, false), "allowed", "{address}");
        }
        assert_eq!(verdict("fbff:ffff::1", true), "reserved_address");
        assert_eq!(verdict("fe00::1", true), "reserved_address");
        assert_eq!(verdict("fec0::1", true), "allowed");
    }

    #[test]
    fn embedded_ipv4_is_classified_by_the_inner_address() {
        for form in [
            "::ffff:169.254.169.254",
            "::ffff:0:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:a9fe:a9:fe00::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:5601:5601",
        ] {
            assert_eq!(verdict(form, true), "metadata_address", "{form}");
            let error = permits_address(ip(form), false).unwrap_err();
            assert!(error.to_string().contains("169.254.169.254"), "{error}");
        }
        assert_eq!(verdict("::ffff:100.100.100.200", true), "metadata_address");
        assert_eq!(verdict("64:ff9b::7f00:1", false), "loopback_address");
        assert_eq!(verdict("64:ff9b::7f00:1", true), "allowed");
        assert_eq!(verdict("2002:0a00:0001::", false), "private_address");
        assert_eq!(verdict("::ffff:0.0.0.0", true), "unspecified_address");
        assert_eq!(verdict("::0.0.0.2", true), "unspecified_address");
        assert_eq!(verdict("::ffff:224.0.0.1", true), "multicast_address");
        assert_eq!(verdict("::ffff:255.255.255.255", true), "broadcast_address");
        // Public inner addresses stay public.
        assert_eq!(verdict("::ffff:93.184.216.34", false), "allowed");
        assert_eq!(verdict("64:ff9b::5db8:d822", false), "allowed");
        assert_eq!(verdict("2002:5db8:d822::1", false), "allowed");
        // A Teredo client address is the last 32 bits inverted: a2 47 27 dd is 93.184.216.34.
        assert_eq!(verdict("2001:0:4136:e378:8000:63bf:a247:27dd", false), "allowed");
        assert_eq!(verdict("2001:0:4136:e378:8000:63bf:f5ff:fffe", false), "private_address");
        assert_eq!(
            classify(ip("2002:a9fe:a9fe::1")).embedded,
            Some(("2002::/16 (6to4)", Ipv4Addr::new(169, 254, 169, 254)))
        );
        assert_eq!(classify(ip("2606:4700::1")).embedded, None);
        assert_eq!(classify(ip("::1")).embedded, None);
        assert_eq!(classify(ip("::")).embedded, None);
    }

    #[test]
    fn an_ambiguous_local_use_nat64_address_is_judged_by_its_worst_reading() {
        // 64:ff9b:1::/48 may carry IPv4 in the /96 layout (last 32 bits) or the /48 layout.
        // /96 reads 93.184.216.34 (public), /48 reads 10.0.0.1 (private): private counts.
        assert_eq!(verdict("64:ff9b:1:a00:0:100:5db8:d822", false), "private_address");
        assert_eq!(verdict("64:ff9b:1:a00:0:100:5db8:d822", true), "allowed");
        // /96 reads 10.0.0.1 (private), /48 reads 0.0.0.0 (never): never counts.
        assert_eq!(verdict("64:ff9b:1::a00:1", true), "unspecified_address");
        // /96 reads 240.0.0.1 (reserved), /48 reads 169.254.1.1: link-local outranks reserved.
        assert_eq!(verdict("64:ff9b:1:a9fe:1:100:f000:1", true), "link_local_address");
        // Both public: allowed.
        assert_eq!(verdict("64:ff9b:1:5db8:d8:2200:5db8:d822", false), "allowed");
    }

    #[test]
    fn a_refusal_names_the_range_and_the_embedded_address() {
        let error = permits_address(ip("2002:a00:1::1"), false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "address 2002:a00:1::1 refused: in 10.0.0.0/8 (as 10.0.0.1, carried by 2002::/16 (6to4))"
        );
        let error = permits_address(ip("10.0.0.1"), false).unwrap_err();
        assert_eq!(error.to_string(), "address 10.0.0.1 refused: in 10.0.0.0/8");
    }

    #[test]
    fn a_resolution_is_refused_when_any_address_is() {
        assert_eq!(permits_addresses(&[], true), Err(FetchPolicyError::NoAddresses));
        assert_eq!(permits_addresses(&[], false).unwrap_err().reason(), "no_addresses");
        assert!(permits_addresses(&[ip("93.184.216.34"), ip("2606:4700::1")], false).is_ok());
        let mixed = [ip("93.184.216.34"), ip("169.254.169.254")];
        assert_eq!(permits_addresses(&mixed, true).unwrap_err().reason(), "metadata_address");
        let mixed = [ip("10.0.0.1"), ip("93.184.216.34")];
        assert_eq!(permits_addresses(&mixed, false).unwrap_err().reason(), "private_address");
        assert!(permits_addresses(&mixed, true).is_ok());
    }

    #[test]
    fn urls_are_refused_with_specific_reasons() {
        let reason = |value: &str, allow_private: bool| {
            check_url(&url(value), allow_private).err().map_or("allowed", |error| error.reason())
        };
        assert_eq!(reason("http://auth.example.com/", false), "scheme_not_allowed");
        assert_eq!(reason("ftp://auth.example.com/", true), "scheme_not_allowed");
        assert_eq!(reason("https://user@auth.example.com/", false), "userinfo");
        assert_eq!(reason("https://:pw@auth.example.com/", true), "userinfo");
        assert_eq!(reason("https://LOCALHOST./", false), "local_host_name");
        assert_eq!(reason("https://a.localhost/", false), "local_host_name");
        assert_eq!(reason("https://a.localhost/", true), "allowed");
        assert_eq!(reason("https://localhost.example.com/", false), "allowed");
        assert_eq!(reason("https://[64:ff9b::a9fe:a9fe]/", true), "metadata_address");
        assert_eq!(reason("http://100.100.100.200/", true), "metadata_address");
        assert_eq!(reason("https://[::1]/", false), "loopback_address");
        assert_eq!(reason("http://[::1]:8080/", true), "allowed");
        assert!(check_url(&url("unix:/run/x.sock"), true).is_err());
    }

    #[test]
    fn classes_answer_permitted_and_local_consistently() {
        use AddressClass::*;
        let all = [
            Public,
            Loopback,
            Private,
            Shared,
            UniqueLocal,
            Unspecified,
            LinkLocal,
            Metadata,
            Multicast,
            Broadcast,
            Reserved,
            Documentation,
            Benchmarking,
            SpecialPurpose,
        ];
        for class in all {
            assert_eq!(class.permitted(true), class == Public || class.is_local(), "{class:?}");
            assert_eq!(class.permitted(false), class == Public, "{class:?}");
            assert_eq!(class.reason() == "allowed", class == Public, "{class:?}");
        }
        let mut reasons: Vec<_> = all.iter().map(|class| class.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len(), "reason codes are distinct");
    }

    #[test]
    fn a_fetch_target_is_its_url_and_every_resolved_address() {
        let target = |value: &str, resolved: &[&str], allow_private: bool| {
            let resolved: Vec<IpAddr> = resolved.iter().map(|address| ip(address)).collect();
            check_fetch_target(&url(value), &resolved, allow_private).err().map_or("allowed", |e| e.reason())
        };
        assert_eq!(target("https://auth.example.com/", &["93.184.216.34"], false), "allowed");
        assert_eq!(target("https://auth.example.com/", &[], false), "no_addresses");
        assert_eq!(target("http://auth.example.com/", &["93.184.216.34"], false), "scheme_not_allowed");
        assert_eq!(
            target("https://auth.example.com/", &["93.184.216.34", "fd20:ce::254"], true),
            "metadata_address"
        );
        assert_eq!(target("https://93.184.216.34/", &[], false), "allowed");
        assert_eq!(target("https://93.184.216.34/", &["10.0.0.1"], false), "private_address");
        assert_eq!(target("https://[::1]/", &[], false), "loopback_address");
        assert_eq!(target("http://[::1]/", &[], true), "allowed");
    }

    #[test]
    fn secrets_go_only_to_pinned_endpoints() {
        let server = url("https://mcp.example.com/mcp");
        let token_url = url("https://login.example.net/oauth/token");
        let issuer = url("https://auth.example.org/tenant");
        let pins = SecretPins { server_url: &server, token_url: Some(&token_url), issuer: Some(&issuer) };
        assert!(check_secret_destination(&token_url, &pins).is_ok());
        assert!(check_secret_destination(&url("https://auth.example.org/other/token"), &pins).is_ok());
        assert!(check_secret_destination(&url("https://mcp.example.com/token"), &pins).is_ok());
        let error = check_secret_destination(&url("https://evil.example.com/token"), &pins).unwrap_err();
        assert_eq!(error.reason(), "unpinned_secret_destination");
        assert!(check_secret_destination(&url("https://login.example.net/other"), &pins).is_err());
        assert!(check_secret_destination(&url("http://auth.example.org/token"), &pins).is_err());
        assert!(check_secret_destination(&url("https://auth.example.org:8443/token"), &pins).is_err());
        let bare = SecretPins { server_url: &server, token_url: None, issuer: None };
        assert!(check_secret_destination(&url("https://auth.example.org/token"), &bare).is_err());
        assert!(check_secret_destination(&url("https://mcp.example.com/oauth/token"), &bare).is_ok());
    }
}
