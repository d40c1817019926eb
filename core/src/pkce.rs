//! PKCE (RFC 7636, `S256` only) and `state` values from caller-supplied random bytes.
//!
//! Core draws no randomness: the driver passes 32 fresh random bytes and gets back a verifier of
//! 43 unreserved characters and its `S256` challenge. The plain method is never offered.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The only challenge method this crate sends.
pub const METHOD: &str = "S256";

/// A PKCE pair: the verifier stays with the client, the challenge goes in the authorization URL.
#[derive(Clone, Debug)]
pub struct Pkce {
    verifier: Secret,
    challenge: String,
}

impl Pkce {
    /// Derives a verifier from 32 random bytes (256 bits, RFC 7636 §7.1) and its `S256` challenge.
    pub fn from_random(random: [u8; 32]) -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(random);
        let challenge = challenge_for(&verifier);
        Self { verifier: Secret::new(verifier), challenge }
    }

    /// The `code_verifier` sent to the token endpoint.
    pub fn verifier(&self) -> &Secret {
        &self.verifier
    }

    /// The `code_challenge` sent to the authorization endpoint.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

/// `BASE64URL(SHA256(verifier))` without padding (RFC 7636 §4.2).
pub fn challenge_for(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An opaque `state` value from 16 random bytes.
pub fn state_from_random(random: [u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(random)
}

/// Whether a verifier is well-formed: 43–128 characters of `[A-Za-z0-9-._~]`.
pub fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            challenge_for("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifier_from_random_bytes_is_valid_and_distinct() {
        let a = Pkce::from_random([7; 32]);
        let b = Pkce::from_random([8; 32]);
        assert!(is_valid_verifier(a.verifier().expose()));
        assert_eq!(a.verifier().expose().len(), 43);
        assert_ne!(a.challenge(), b.challenge());
        assert_eq!(a.challenge(), challenge_for(a.verifier().expose()));
        assert!(!format!("{a:?}").contains(a.verifier().expose()));
        assert_eq!(state_from_random([1; 16]).len(), 22);
        assert!(!is_valid_verifier("short"));
    }
}
