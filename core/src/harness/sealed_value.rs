//! Fuzz harness for sealed values (design §4.10): what a stranger sends as a `client_id`, a
//! `state`, a code or a token.

use crate::seal::{Purpose, SealingKeys, UnixTime};

fn keys() -> &'static SealingKeys {
    static KEYS: std::sync::OnceLock<SealingKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| SealingKeys::generate([42; 32]))
}

/// Input: any bytes, read as text. Invariants: opening them as any purpose at any server never
/// panics and never succeeds (nothing but the gateway's own key seals a value that opens), and a
/// value the gateway sealed with one purpose and server opens only as that purpose and server.
pub fn sealed_value(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let now = UnixTime::from_secs(1_800_000_000);
    for purpose in Purpose::ALL {
        for server in ["a", "b"] {
            assert!(
                keys().open(purpose, server, now, &text).is_err(),
                "arbitrary input opened as {purpose:?}"
            );
        }
    }
    // The input as a plaintext: sealed for one purpose and server, it opens there and nowhere else.
    let expires = (purpose_expires(Purpose::Code)).then(|| now.plus(std::time::Duration::from_secs(60)));
    let mut nonce = [0u8; 24];
    for (slot, byte) in nonce.iter_mut().zip(data.iter().chain(std::iter::repeat(&7))) {
        *slot = *byte;
    }
    let Ok(sealed) = keys().seal(Purpose::Code, "a", expires, data, nonce) else { return };
    assert_eq!(keys().open(Purpose::Code, "a", now, &sealed).ok().as_deref(), Some(data));
    for purpose in Purpose::ALL.into_iter().filter(|purpose| *purpose != Purpose::Code) {
        assert!(keys().open(purpose, "a", now, &sealed).is_err(), "a code opened as {purpose:?}");
    }
    assert!(keys().open(Purpose::Code, "b", now, &sealed).is_err(), "a code opened at another server");
}

fn purpose_expires(purpose: Purpose) -> bool {
    purpose != Purpose::Registration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_without_breaking_an_invariant() {
        for seed in [&b""[..], b"mcpgw_AAAA", b"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA", &[0xff; 64]] {
            sealed_value(seed);
        }
    }
}
