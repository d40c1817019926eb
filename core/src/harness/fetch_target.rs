//! Fuzz harness for the fetch policy's address table and URL check (design §4.9).
//!
//! Every adapter connects only to addresses this table allows, so it must give one answer per
//! address whatever the spelling: an IPv6 form that carries an IPv4 address answers like that
//! IPv4 address, the relaxed mode never refuses what the strict mode allows, and a URL check
//! agrees with the address check of its IP-literal host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use crate::fetch_policy::{
    AddressClass, check_fetch_target, check_url, classify, permits_address, permits_addresses,
};

/// Runs the address table and the URL check on `data`; panics only when an invariant breaks.
///
/// Layout: byte 0 holds flags (bit 0: `allow_private`), bytes 1..17 are an IPv6 address and bytes
/// 1..5 also an IPv4 address, and the rest, as UTF-8, is a URL judged with both addresses as its
/// resolution. Short inputs are padded with zeros.
///
/// Invariants: classification never panics; the strict mode refuses everything the relaxed mode
/// refuses; a never-allowed class is refused in both modes and a public one in neither; the
/// IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of the IPv4 address answer like it; a
/// resolution is refused exactly when one of its addresses is; `https://{address}/` passes
/// [`check_url`] exactly when the address passes; an allowed fetch target is https (http only when
/// relaxed) without userinfo.
pub fn fetch_target(data: &[u8]) {
    let mut bytes = [0u8; 17];
    for (slot, byte) in bytes.iter_mut().zip(data) {
        *slot = *byte;
    }
    let allow_private = bytes[0] & 1 == 1;
    let mut v6_octets = [0u8; 16];
    v6_octets.copy_from_slice(&bytes[1..17]);
    let v6 = Ipv6Addr::from(v6_octets);
    let v4 = Ipv4Addr::new(bytes[1], bytes[2], bytes[3], bytes[4]);

    for address in [IpAddr::V4(v4), IpAddr::V6(v6)] {
        check_address(address);
    }

    let v4_verdict = |relaxed: bool| permits_address(IpAddr::V4(v4), relaxed).map_err(|e| e.to_string());
    let [a, b, c, d] = v4.octets();
    let (high, low) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
    let forms = [
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, high, low),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, high, low),
        Ipv6Addr::new(0x2002, high, low, 0, 0, 0, 0, 1),
    ];
    for form in forms {
        let embedded = classify(IpAddr::V6(form));
        assert_eq!(embedded.range, classify(IpAddr::V4(v4)).range, "{form} and {v4}");
        for relaxed in [false, true] {
            assert_eq!(
                permits_address(IpAddr::V6(form), relaxed).is_ok(),
                v4_verdict(relaxed).is_ok(),
                "{form} and {v4}"
            );
        }
    }
    // `::a.b.c.d` stands for the IPv4 address except for `::` and `::1`, which are themselves.
    if u32::from(v4) > 1 {
        let compatible = Ipv6Addr::new(0, 0, 0, 0, 0, 0, high, low);
        assert_eq!(classify(IpAddr::V6(compatible)).range, classify(IpAddr::V4(v4)).range, "{compatible}");
    }

    let pair = [IpAddr::V4(v4), IpAddr::V6(v6)];
    for relaxed in [false, true] {
        let each = pair.iter().all(|address| permits_address(*address, relaxed).is_ok());
        assert_eq!(permits_addresses(&pair, relaxed).is_ok(), each);
        assert!(permits_addresses(&[], relaxed).is_err());
    }

    let Ok(text) = std::str::from_utf8(&data[data.len().min(17)..]) else {
        return;
    };
    if let Ok(url) = Url::parse(text)
        && check_fetch_target(&url, &pair, allow_private).is_ok()
    {
        assert!(url.scheme() == "https" || (allow_private && url.scheme() == "http"), "{url}");
        assert!(url.username().is_empty() && url.password().is_none(), "{url}");
        assert!(check_url(&url, allow_private).is_ok(), "{url}");
        assert!(pair.iter().all(|address| permits_address(*address, allow_private).is_ok()));
    }
}

fn check_address(address: IpAddr) {
    let class = classify(address).range.class;
    let strict = permits_address(address, false);
    let relaxed = permits_address(address, true);
    assert!(strict.is_err() || relaxed.is_ok(), "{address}: strict allows what relaxed refuses");
    assert_eq!(strict.is_ok(), class == AddressClass::Public, "{address}: {class:?}");
    assert_eq!(relaxed.is_ok(), class == AddressClass::Public || class.is_local(), "{address}: {class:?}");
    let literal = match address {
        IpAddr::V4(v4) => format!("https://{v4}/"),
        IpAddr::V6(v6) => format!("https://[{v6}]/"),
    };
    if let Ok(url) = Url::parse(&literal) {
        for mode in [false, true] {
            assert_eq!(
                check_url(&url, mode).is_ok(),
                permits_address(address, mode).is_ok(),
                "{url} in mode {mode}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fetch_target;

    #[test]
    fn runs_on_tricky_inputs() {
        let metadata = [0u8, 169, 254, 169, 254, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        fetch_target(&metadata);
        fetch_target(b"");
        fetch_target(&[1]);
        fetch_target(&[1, 127, 0, 0, 1]);
        let mut nat64 = vec![1u8, 0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe];
        nat64.extend_from_slice(b"https://auth.example.com/token");
        fetch_target(&nat64);
        let mut public = vec![0u8, 93, 184, 216, 34, 0x26, 0x06, 0x47, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x11];
        public.extend_from_slice(b"https://auth.example.com/token");
        fetch_target(&public);
        let mut userinfo = vec![1u8; 17];
        userinfo.extend_from_slice(b"http://u:p@127.0.0.1/");
        fetch_target(&userinfo);
    }
}
