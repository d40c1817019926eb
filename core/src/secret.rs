//! A redacting wrapper for credentials.
//!
//! Client secrets, static tokens and gateway keys are wrapped in [`Secret`] the moment they are
//! parsed, so that no `Debug` derive, log line or error message can print them by accident. The
//! only way to the text is [`Secret::expose`], which is easy to grep for in review.

use std::fmt;

use subtle::ConstantTimeEq;

/// A credential whose `Debug` and `Display` print `Secret(****)`, never the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself; every call site is a place where a secret leaves the wrapper.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the credential is the empty string (an unset value in LiteLLM configs).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with `candidate` in time that depends only on the lengths, not on where the
    /// bytes first differ, so a remote caller cannot find a gateway key byte by byte.
    pub fn constant_time_eq(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_value() {
        let secret = Secret::new("sk-live-1234567890abcdef");
        assert_eq!(format!("{secret:?}"), "Secret(****)");
        assert_eq!(format!("{secret}"), "****");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(Secret(****))");
        assert_eq!(secret.expose(), "sk-live-1234567890abcdef");
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        let secret = Secret::new("sk-1234");
        assert!(secret.constant_time_eq("sk-1234"));
        assert!(!secret.constant_time_eq("sk-123"));
        assert!(!secret.constant_time_eq("sk-12345"));
        assert!(!secret.constant_time_eq(""));
    }
}
