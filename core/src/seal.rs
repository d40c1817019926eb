//! Sealed values: state the gateway hands out instead of storing (design §4.8, §4.10).
//!
//! A registration (`client_id`), a consent request, the upstream `state`, a gateway code and the
//! gateway's access and refresh tokens are all *sealed*: encrypted and authenticated with
//! XChaCha20-Poly1305 under a 256-bit key only the gateway holds. Each sealed value binds its
//! [`Purpose`], the server it was issued for and its expiry, so a value sealed for one purpose or
//! one server never opens as another, and an expired value does not open at all.
//!
//! This module is sans-IO like the rest of core: the current time ([`UnixTime`]) and the nonce
//! bytes are arguments, never read here. Keys come from [`SealingKeys::parse`] (the configuration
//! loader feeds it `MCP_OAUTH_SEALING_KEYS` or `general_settings.sealing_keys`) or
//! [`SealingKeys::generate`] (random bytes the adapter drew). The first key seals and every key
//! opens, so keys rotate by putting a new key first and dropping the old one once the longest
//! lifetime sealed under it has passed.
//!
//! Wire form: `[mcpgw_]` + base64url without padding of
//! `version (1) ‖ key id (1) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`. The ciphertext holds the expiry
//! (8 bytes, big-endian Unix seconds; absent for a registration, which never expires) and the
//! plaintext. The associated data is a fixed label, the version, the key id, the purpose and the
//! server name, so none of them can be changed without the tag failing. The key id is one byte of
//! a hash of the key (not its position, which changes on rotation), so opening tries only the keys
//! that share that byte: almost always exactly one.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Reason;

/// The prefix of every gateway-issued token (access, refresh, code), recognised without opening.
pub const GATEWAY_TOKEN_PREFIX: &str = "mcpgw_";

/// The environment variable that holds the sealing keys; it wins over `general_settings.sealing_keys`.
pub const SEALING_KEYS_ENV: &str = "MCP_OAUTH_SEALING_KEYS";

/// Length of a sealing key in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// Length of the nonce [`SealingKeys::seal`] takes (XChaCha20's 192 bits: safe to draw at random).
pub const NONCE_LEN: usize = 24;

/// The longest sealed text [`SealingKeys::open`] reads; anything longer is refused before decoding.
pub const MAX_SEALED_LEN: usize = 4096;

/// The most keys a configuration may list: enough for any rotation, few enough to bound `open`.
pub const MAX_KEYS: usize = 16;

/// The longest a grant (and so a refresh token or a sealed upstream token) may live (design §4.8).
pub const MAX_GRANT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// How far an expiry may exceed its purpose's lifetime before [`SealingKeys::open`] calls it
/// implausible: room for replicas whose clocks disagree a little.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(300);

/// The wire format version; a value with another first byte does not open.
const FORMAT_VERSION: u8 = 1;

/// Poly1305's tag length.
const TAG_LEN: usize = 16;

/// Version, key id and nonce.
const HEADER_LEN: usize = 2 + NONCE_LEN;

/// Length of the expiry inside the ciphertext.
const EXPIRY_LEN: usize = 8;

/// Domain-separation labels: one configured key yields independent sub-keys for sealing, for the
/// key id and for identity fingerprints (each an HMAC-SHA-256 of its label under the key).
const SEAL_LABEL: &[u8] = b"mcp-oauth/seal/v1";
const KEY_ID_LABEL: &[u8] = b"mcp-oauth/key-id/v1";
const FINGERPRINT_LABEL: &[u8] = b"mcp-oauth/fingerprint/v1";

/// Base64url that accepts padding or none, as `MCP_OAUTH_SEALING_KEYS` may be written either way.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Wall-clock time in whole seconds since the Unix epoch.
///
/// Sealed values outlive a process and cross replicas, so their expiries are wall-clock time, not
/// the driver's monotonic [`Instant`](crate::machine::Instant). Core never reads the clock: the
/// adapter passes `now` in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(u64);

impl UnixTime {
    /// The time `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// Seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// This time moved forward by `duration` (whole seconds, saturating).
    pub fn plus(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration.as_secs()))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_secs(self.0.saturating_sub(earlier.0))
    }
}

/// What a sealed value is for; a value sealed for one purpose never opens as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A dynamic client registration: the `client_id` is the registration. Never expires.
    Registration,
    /// The authorization request carried by the consent page. 10 minutes.
    ConsentRequest,
    /// The `state` sent to the upstream authorization server. 10 minutes.
    State,
    /// A gateway authorization code (`mcpgw_`). 60 seconds.
    Code,
    /// A gateway access token (`mcpgw_`). 1 hour.
    AccessToken,
    /// A gateway refresh token (`mcpgw_`). The grant's lifetime, given by the caller.
    RefreshToken,
    /// An upstream token held in the grant store. The grant's lifetime, given by the caller.
    UpstreamToken,
}

impl Purpose {
    /// Every purpose, for tests and exhaustive checks.
    pub const ALL: [Self; 7] = [
        Self::Registration,
        Self::ConsentRequest,
        Self::State,
        Self::Code,
        Self::AccessToken,
        Self::RefreshToken,
        Self::UpstreamToken,
    ];

    /// The stable byte that names the purpose in the associated data.
    const fn code(self) -> u8 {
        match self {
            Self::Registration => 1,
            Self::ConsentRequest => 2,
            Self::State => 3,
            Self::Code => 4,
            Self::AccessToken => 5,
            Self::RefreshToken => 6,
            Self::UpstreamToken => 7,
        }
    }

    /// The stable `snake_case` name, for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::ConsentRequest => "consent_request",
            Self::State => "state",
            Self::Code => "code",
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::UpstreamToken => "upstream_token",
        }
    }

    /// The longest a value of this purpose may live: `None` for a registration (no expiry); the
    /// grant ceiling ([`MAX_GRANT_LIFETIME`]) for refresh and upstream tokens, whose real expiry the
    /// caller gives.
    pub const fn max_lifetime(self) -> Option<Duration> {
        match self {
            Self::Registration => None,
            Self::ConsentRequest | Self::State => Some(Duration::from_secs(600)),
            Self::Code => Some(Duration::from_secs(60)),
            Self::AccessToken => Some(Duration::from_secs(3600)),
            Self::RefreshToken | Self::UpstreamToken => Some(MAX_GRANT_LIFETIME),
        }
    }

    /// Whether values of this purpose carry an expiry (every purpose but [`Purpose::Registration`]).
    pub const fn expires(self) -> bool {
        self.max_lifetime().is_some()
    }

    /// The expiry of a value sealed at `now` that lives its purpose's full lifetime. For refresh
    /// and upstream tokens pass the grant's expiry to [`SealingKeys::seal`] instead.
    pub fn expiry_from(self, now: UnixTime) -> Option<UnixTime> {
        self.max_lifetime().map(|lifetime| now.plus(lifetime))
    }

    /// Whether the sealed text carries [`GATEWAY_TOKEN_PREFIX`] (codes, access and refresh tokens).
    pub const fn is_gateway_token(self) -> bool {
        matches!(self, Self::Code | Self::AccessToken | Self::RefreshToken)
    }
}

/// Whether `text` is a gateway-issued token (code, access or refresh token), by its prefix alone.
///
/// This does not open it: a gateway token must never be forwarded upstream, valid or not.
pub fn is_gateway_token(text: &str) -> bool {
    text.starts_with(GATEWAY_TOKEN_PREFIX)
}

/// One 256-bit sealing key and the sub-keys derived from it. `Debug` shows only the key id.
#[derive(Clone)]
pub struct SealingKey {
    /// One byte of a hash of the key: picks the key when opening.
    id: u8,
    /// The XChaCha20-Poly1305 key.
    seal_key: [u8; KEY_LEN],
    /// The HMAC key for identity fingerprints.
    fingerprint_key: [u8; KEY_LEN],
}

impl SealingKey {
    /// Derives the sub-keys of a configured key.
    fn new(material: &[u8; KEY_LEN]) -> Self {
        let id = derive(material, KEY_ID_LABEL)[0];
        Self {
            id,
            seal_key: derive(material, SEAL_LABEL),
            fingerprint_key: derive(material, FINGERPRINT_LABEL),
        }
    }

    /// The key id byte written into every value this key seals.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// HMAC-SHA-256 of `data` under this key's fingerprint sub-key (used for identities).
    pub fn fingerprint(&self, data: &[u8]) -> [u8; 32] {
        mac(&self.fingerprint_key, data)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&Key::from(self.seal_key))
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey(id={:#04x}, ****)", self.id)
    }
}

/// HMAC-SHA-256 of `data` under a 32-byte `key`.
///
/// HMAC pads a key shorter than the hash's 64-byte block with zeros (RFC 2104), so padding it here
/// gives the same MAC through the infallible fixed-size constructor.
fn mac(key: &[u8; KEY_LEN], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut hmac = <HmacSha256 as Mac>::new(&block.into());
    hmac.update(data);
    hmac.finalize().into_bytes().into()
}

/// A sub-key: HMAC-SHA-256 of `label` under the configured key (a PRF, so the sub-keys are
/// independent of each other and reveal nothing about the key).
fn derive(material: &[u8; KEY_LEN], label: &[u8]) -> [u8; KEY_LEN] {
    mac(material, label)
}

/// The keys the gateway seals and opens with: the first seals, all open. `Debug` prints no key.
#[derive(Clone)]
pub struct SealingKeys {
    /// The key that seals (and opens).
    current: SealingKey,
    /// Older keys that still open, newest first.
    older: Vec<SealingKey>,
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.all()).finish()
    }
}

/// A sealing key list that cannot be used; names the position of the bad key, never its bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Nothing but commas and spaces.
    #[error("no sealing key is given")]
    Empty,
    /// An entry that is not base64url.
    #[error("sealing key {position} is not base64url")]
    NotBase64 {
        /// The entry's position, from 1.
        position: usize,
    },
    /// An entry that does not decode to 32 bytes.
    #[error("sealing key {position} decodes to {length} bytes; each key must be exactly 32")]
    WrongLength {
        /// The entry's position, from 1.
        position: usize,
        /// Its decoded length.
        length: usize,
    },
    /// The same key twice.
    #[error("sealing key {position} repeats an earlier key")]
    Duplicate {
        /// The repeated entry's position, from 1.
        position: usize,
    },
    /// More than [`MAX_KEYS`] keys.
    #[error("{count} sealing keys are given; at most {MAX_KEYS} are accepted")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

impl KeyError {
    /// What to change, for the load diagnostic.
    pub fn fix(&self) -> &'static str {
        match self {
            Self::TooMany { .. } => "drop keys older than the longest lifetime sealed under them (30 days)",
            Self::Duplicate { .. } => "list each key once",
            _ => {
                "give comma-separated base64url keys of 32 bytes each; generate one with `openssl rand -base64 32 | tr '+/' '-_'`"
            }
        }
    }
}

impl Reason for KeyError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "no_sealing_key",
            Self::NotBase64 { .. } => "sealing_key_not_base64url",
            Self::WrongLength { .. } => "sealing_key_wrong_length",
            Self::Duplicate { .. } => "sealing_key_repeated",
            Self::TooMany { .. } => "too_many_sealing_keys",
        }
    }
}

/// A value [`SealingKeys::seal`] refuses to seal: a caller's mistake, never outside input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The sealed text would be longer than [`MAX_SEALED_LEN`], so it could never be opened.
    #[error("the sealed {purpose} would be {length} characters, over the {MAX_SEALED_LEN} limit")]
    TooLong {
        /// The purpose's name.
        purpose: &'static str,
        /// The sealed length it would have.
        length: usize,
    },
    /// An expiry for a registration, or none for a purpose that expires.
    #[error("a sealed {purpose} {}", if *.expected { "needs an expiry" } else { "takes no expiry" })]
    Expiry {
        /// The purpose's name.
        purpose: &'static str,
        /// Whether the purpose needs an expiry.
        expected: bool,
    },
}

impl Reason for SealError {
    fn reason(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "sealed_too_long",
            Self::Expiry { .. } => "sealed_expiry_mismatch",
        }
    }
}

/// Why a sealed value did not open. Deliberately coarse: a wrong purpose, a wrong server and a
/// tampered byte look the same (the tag fails); only the public header (length, format, key id)
/// is told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Longer than [`MAX_SEALED_LEN`]; not decoded.
    #[error("the sealed value is too long")]
    TooLong,
    /// Not base64url, too short, or an unknown format version.
    #[error("the sealed value is malformed")]
    Malformed,
    /// No configured key has the value's key id (sealed under a key that has since been removed).
    #[error("the sealed value names a key that is not configured")]
    UnknownKey,
    /// Sealed for another purpose or server, altered, or under another key with the same id.
    #[error("the sealed value does not authenticate")]
    DoesNotAuthenticate,
    /// Its expiry has passed.
    #[error("the sealed value has expired")]
    Expired,
    /// It authenticates but claims to live longer than its purpose allows: a sealing bug, refused.
    #[error("the sealed value's expiry is beyond its purpose's lifetime")]
    ImplausibleExpiry,
}

impl Reason for OpenError {
    fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "sealed_too_long",
            Self::Malformed => "sealed_malformed",
            Self::UnknownKey => "sealed_unknown_key",
            Self::DoesNotAuthenticate => "sealed_does_not_authenticate",
            Self::Expired => "sealed_expired",
            Self::ImplausibleExpiry => "sealed_implausible_expiry",
        }
    }
}

impl SealingKeys {
    /// Parses comma-separated base64url keys (padding optional, surrounding spaces ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Self::parse_list(text.split(','))
    }

    /// Parses keys given one per item (a YAML list); blank items are skipped but keep their
    /// position, so an error names the entry as the operator counts it.
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        let mut materials: Vec<[u8; KEY_LEN]> = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let position = index + 1;
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let bytes = KEY_BASE64.decode(item).map_err(|_| KeyError::NotBase64 { position })?;
            let material: [u8; KEY_LEN] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::WrongLength { position, length: bytes.len() })?;
            if materials.contains(&material) {
                return Err(KeyError::Duplicate { position });
            }
            keys.push(SealingKey::new(&material));
            materials.push(material);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany { count: keys.len() });
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or(KeyError::Empty)?;
        Ok(Self { current, older: keys.collect() })
    }

    /// One key from 32 random bytes the adapter drew: the "no keys and the memory store" case,
    /// where sealed values and grants die with the process.
    pub fn generate(random: [u8; KEY_LEN]) -> Self {
        Self { current: SealingKey::new(&random), older: Vec::new() }
    }

    /// The key that seals.
    pub fn current(&self) -> &SealingKey {
        &self.current
    }

    /// Every key, the sealing key first.
    pub fn all(&self) -> impl Iterator<Item = &SealingKey> {
        std::iter::once(&self.current).chain(&self.older)
    }

    /// Seals `plaintext` for `purpose` at `server`, expiring at `expires_at` (`None` only for a
    /// registration). `nonce` must be fresh random bytes: 192 bits make collisions negligible.
    pub fn seal(
        &self,
        purpose: Purpose,
        server: &str,
        expires_at: Option<UnixTime>,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, SealError> {
        if expires_at.is_some() != purpose.expires() {
            return Err(SealError::Expiry { purpose: purpose.name(), expected: purpose.expires() });
        }
        let prefix = if purpose.is_gateway_token() { GATEWAY_TOKEN_PREFIX } else { "" };
        let body_len = expires_at.map_or(0, |_| EXPIRY_LEN) + plaintext.len();
        let raw_len = HEADER_LEN + body_len + TAG_LEN;
        let length = prefix.len() + (4 * raw_len).div_ceil(3);
        if length > MAX_SEALED_LEN {
            return Err(SealError::TooLong { purpose: purpose.name(), length });
        }
        let key = self.current();
        let mut body = Vec::with_capacity(body_len);
        if let Some(expiry) = expires_at {
            body.extend_from_slice(&expiry.as_secs().to_be_bytes());
        }
        body.extend_from_slice(plaintext);
        let aad = associated_data(key.id, purpose, server);
        let mut raw = Vec::with_capacity(raw_len);
        raw.extend_from_slice(&[FORMAT_VERSION, key.id]);
        raw.extend_from_slice(&nonce);
        // XChaCha20-Poly1305 fails only on messages near 256 GiB, far beyond MAX_SEALED_LEN.
        let sealed = key
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: &body, aad: &aad })
            .map_err(|_| SealError::TooLong { purpose: purpose.name(), length })?;
        raw.extend_from_slice(&sealed);
        Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw)))
    }

    /// Opens a value sealed for `purpose` at `server`, refusing it once `now` reaches its expiry.
    pub fn open(
        &self,
        purpose: Purpose,
        server: &str,
        now: UnixTime,
        sealed: &str,
    ) -> Result<Vec<u8>, OpenError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(OpenError::TooLong);
        }
        // The prefix is part of the purpose: a registration with `mcpgw_` in front, or a token
        // without it, was not sealed for this purpose.
        let encoded = if purpose.is_gateway_token() {
            sealed.strip_prefix(GATEWAY_TOKEN_PREFIX).ok_or(OpenError::DoesNotAuthenticate)?
        } else if is_gateway_token(sealed) {
            return Err(OpenError::DoesNotAuthenticate);
        } else {
            sealed
        };
        let raw = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| OpenError::Malformed)?;
        let Some((&[version, key_id], rest)) = raw.split_first_chunk::<2>() else {
            return Err(OpenError::Malformed);
        };
        let Some((nonce, ciphertext)) = rest.split_first_chunk::<NONCE_LEN>() else {
            return Err(OpenError::Malformed);
        };
        if version != FORMAT_VERSION || ciphertext.len() < TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let aad = associated_data(key_id, purpose, server);
        let nonce = XNonce::from(*nonce);
        let mut candidates = self.all().filter(|key| key.id == key_id).peekable();
        if candidates.peek().is_none() {
            return Err(OpenError::UnknownKey);
        }
        let mut body = candidates
            .find_map(|key| key.cipher().decrypt(&nonce, Payload { msg: ciphertext, aad: &aad }).ok())
            .ok_or(OpenError::DoesNotAuthenticate)?;
        let Some(lifetime) = purpose.max_lifetime() else {
            return Ok(body);
        };
        let Some((expiry, _)) = body.split_first_chunk::<EXPIRY_LEN>() else {
            return Err(OpenError::Malformed);
        };
        let expires_at = UnixTime::from_secs(u64::from_be_bytes(*expiry));
        if now >= expires_at {
            return Err(OpenError::Expired);
        }
        if expires_at > now.plus(lifetime + CLOCK_SKEW_ALLOWANCE) {
            return Err(OpenError::ImplausibleExpiry);
        }
        body.drain(..EXPIRY_LEN);
        Ok(body)
    }
}

/// The associated data: a label, the format version, the key id, the purpose and the server. The
/// server is the only variable-length field and comes last, so the encoding is unambiguous.
fn associated_data(key_id: u8, purpose: Purpose, server: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEAL_LABEL.len() + 3 + server.len());
    aad.extend_from_slice(SEAL_LABEL);
    aad.extend_from_slice(&[FORMAT_VERSION, key_id, purpose.code()]);
    aad.extend_from_slice(server.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

    fn key(byte: u8) -> String {
        URL_SAFE_NO_PAD.encode([byte; KEY_LEN])
    }

    fn keys(bytes: &[u8]) -> SealingKeys {
        SealingKeys::parse(&bytes.iter().map(|&b| key(b)).collect::<Vec<_>>().join(",")).unwrap()
    }

    fn seal(keys: &SealingKeys, purpose: Purpose, server: &str, plaintext: &[u8]) -> String {
        keys.seal(purpose, server, purpose.expiry_from(NOW), plaintext, [7; NONCE_LEN]).unwrap()
    }

    #[test]
    fn round_trips_every_purpose() {
        let keys = keys(&[1]);
        for purpose in Purpose::ALL {
            let sealed = seal(&keys, purpose, "github", b"hello");
            assert_eq!(is_gateway_token(&sealed), purpose.is_gateway_token(), "{purpose:?}");
            assert_eq!(keys.open(purpose, "github", NOW, &sealed).unwrap(), b"hello", "{purpose:?}");
        }
        let empty = seal(&keys, Purpose::Code, "s", b"");
        assert_eq!(keys.open(Purpose::Code, "s", NOW, &empty).unwrap(), b"");
    }

    #[test]
    fn every_mismatch_is_refused() {
        let keys = keys(&[1]);
        for purpose in Purpose::ALL {
            let sealed = seal(&keys, purpose, "github", b"payload");
            for other in Purpose::ALL.into_iter().filter(|other| *other != purpose) {
                assert_eq!(
                    keys.open(other, "github", NOW, &sealed),
                    Err(OpenError::DoesNotAuthenticate),
                    "{purpose:?} opened as {other:?}"
                );
            }
            for server in ["gitlab", "githu", "github2", "", "GITHUB"] {
                assert_eq!(keys.open(purpose, server, NOW, &sealed), Err(OpenError::DoesNotAuthenticate));
            }
        }
    }

    #[test]
    fn expired_values_do_not_open() {
        let keys = keys(&[1]);
        let sealed = seal(&keys, Purpose::Code, "s", b"x");
        assert!(keys.open(Purpose::Code, "s", NOW.plus(Duration::from_secs(59)), &sealed).is_ok());
        assert_eq!(
            keys.open(Purpose::Code, "s", NOW.plus(Duration::from_secs(60)), &sealed),
            Err(OpenError::Expired)
        );
        let registration = seal(&keys, Purpose::Registration, "s", b"r");
        assert!(keys.open(Purpose::Registration, "s", UnixTime::from_secs(u64::MAX), &registration).is_ok());
        // A code sealed to live a day is a bug: it does not open, even before it expires.
        let long = keys
            .seal(Purpose::Code, "s", Some(NOW.plus(Duration::from_secs(86_400))), b"x", [1; 24])
            .unwrap();
        assert_eq!(keys.open(Purpose::Code, "s", NOW, &long), Err(OpenError::ImplausibleExpiry));
        let grant_end = NOW.plus(MAX_GRANT_LIFETIME);
        let refresh = keys.seal(Purpose::RefreshToken, "s", Some(grant_end), b"r", [1; 24]).unwrap();
        assert!(keys.open(Purpose::RefreshToken, "s", NOW, &refresh).is_ok());
    }

    #[test]
    fn seal_refuses_a_wrong_expiry_or_an_unopenable_length() {
        let keys = keys(&[1]);
        let err = keys.seal(Purpose::Registration, "s", Some(NOW), b"", [0; 24]).unwrap_err();
        assert_eq!(err.reason(), "sealed_expiry_mismatch");
        assert!(keys.seal(Purpose::Code, "s", None, b"", [0; 24]).is_err());
        let mut fits = 0;
        for len in 2_900..3_200 {
            match keys.seal(Purpose::State, "s", Purpose::State.expiry_from(NOW), &vec![0; len], [0; 24]) {
                Ok(sealed) => {
                    assert!(sealed.len() <= MAX_SEALED_LEN);
                    assert!(keys.open(Purpose::State, "s", NOW, &sealed).is_ok());
                    fits = len;
                }
                Err(error) => assert_eq!(error.reason(), "sealed_too_long"),
            }
        }
        let at_limit =
            keys.seal(Purpose::State, "s", Purpose::State.expiry_from(NOW), &vec![0; fits], [0; 24]).unwrap();
        assert!(at_limit.len() > MAX_SEALED_LEN - 4, "the predicted length matches: {}", at_limit.len());
    }

    #[test]
    fn tampered_truncated_or_foreign_values_are_refused() {
        let keys = keys(&[1]);
        let sealed = seal(&keys, Purpose::AccessToken, "s", b"the grant id");
        let bytes = sealed.as_bytes();
        for index in 0..bytes.len() {
            for replacement in [b'A', b'-', b'_', b'z', b'=', b'.'] {
                if bytes[index] == replacement {
                    continue;
                }
                let mut tampered = bytes.to_vec();
                tampered[index] = replacement;
                let tampered = String::from_utf8(tampered).unwrap();
                assert!(keys.open(Purpose::AccessToken, "s", NOW, &tampered).is_err(), "{index}");
            }
        }
        for cut in 0..sealed.len() {
            assert!(keys.open(Purpose::AccessToken, "s", NOW, &sealed[..cut]).is_err(), "{cut}");
        }
        assert!(keys.open(Purpose::AccessToken, "s", NOW, &format!("{sealed}AAAA")).is_err());
        let other = keys_with_same_id_as(&keys);
        assert_eq!(other.open(Purpose::AccessToken, "s", NOW, &sealed), Err(OpenError::DoesNotAuthenticate));
        let unknown = self::keys(&[2]);
        assert_ne!(unknown.current().id(), keys.current().id());
        assert_eq!(unknown.open(Purpose::AccessToken, "s", NOW, &sealed), Err(OpenError::UnknownKey));
        assert_eq!(
            keys.open(Purpose::State, "s", NOW, &"A".repeat(MAX_SEALED_LEN + 1)),
            Err(OpenError::TooLong)
        );
        assert_eq!(keys.open(Purpose::State, "s", NOW, "not base64!"), Err(OpenError::Malformed));
        assert_eq!(keys.open(Purpose::State, "s", NOW, ""), Err(OpenError::Malformed));
    }

    /// Another key whose id byte collides with `keys`' sealing key.
    fn keys_with_same_id_as(keys: &SealingKeys) -> SealingKeys {
        let id = keys.current().id();
        (1..=u16::MAX)
            .map(|n| {
                let mut material = [0xee; KEY_LEN];
                material[..2].copy_from_slice(&n.to_be_bytes());
                SealingKeys::generate(material)
            })
            .find(|other| other.current().id() == id)
            .expect("a colliding id among 65,535 keys")
    }

    #[test]
    fn keys_rotate_the_first_seals_all_open() {
        let old = keys(&[1]);
        let sealed = seal(&old, Purpose::RefreshToken, "s", b"grant");
        let rotated = keys(&[2, 1]);
        assert_eq!(rotated.open(Purpose::RefreshToken, "s", NOW, &sealed).unwrap(), b"grant");
        let fresh = seal(&rotated, Purpose::RefreshToken, "s", b"grant");
        assert_eq!(fresh.as_bytes()[..], *seal(&keys(&[2]), Purpose::RefreshToken, "s", b"grant").as_bytes());
        assert_eq!(old.open(Purpose::RefreshToken, "s", NOW, &fresh), Err(OpenError::UnknownKey));
        // Two keys with the same id byte: both are tried.
        let colliding = keys_with_same_id_as(&old);
        let both = SealingKeys { current: colliding.current.clone(), older: vec![old.current.clone()] };
        assert_eq!(both.open(Purpose::RefreshToken, "s", NOW, &sealed).unwrap(), b"grant");
    }

    #[test]
    fn a_typical_state_stays_under_one_kibibyte() {
        let keys = keys(&[1]);
        let sealed = keys
            .seal(Purpose::State, "github", Purpose::State.expiry_from(NOW), &[0x5a; 300], [9; 24])
            .unwrap();
        assert!(sealed.len() < 1024, "{}", sealed.len());
        assert_eq!(sealed.len(), (2 + 24 + 8 + 300 + 16usize).div_ceil(3) * 4 - 1);
    }

    #[test]
    fn key_lists_parse_strictly_and_never_echo_key_material() {
        let padded = base64::engine::general_purpose::URL_SAFE.encode([3; 32]);
        assert!(padded.ends_with('='));
        let parsed = SealingKeys::parse(&format!(" {},{padded} ,", key(1))).unwrap();
        assert_eq!(parsed.all().count(), 2);
        assert!(SealingKeys::parse_list([key(1).as_str(), "", padded.as_str()]).is_ok());
        let standard = base64::engine::general_purpose::STANDARD.encode([0xfb; 32]);
        let cases = [
            ("", KeyError::Empty),
            (" , ", KeyError::Empty),
            (&standard[..], KeyError::NotBase64 { position: 1 }),
            (
                &format!("{},{}", key(1), URL_SAFE_NO_PAD.encode([1; 31])),
                KeyError::WrongLength { position: 2, length: 31 },
            ),
            (&format!("{},{}", key(1), key(1)), KeyError::Duplicate { position: 2 }),
        ];
        for (text, expected) in cases {
            let error = SealingKeys::parse(text).unwrap_err();
            assert_eq!(error, expected, "{text}");
            let rendered = format!("{error} {error:?} {}", error.fix());
            assert!(!rendered.contains(&key(1)) && !rendered.contains(&standard[..8]), "{rendered}");
        }
        let many: Vec<String> = (0..=MAX_KEYS as u8).map(key).collect();
        assert_eq!(
            SealingKeys::parse(&many.join(",")).unwrap_err(),
            KeyError::TooMany { count: MAX_KEYS + 1 }
        );
        let debug = format!("{parsed:?}");
        assert!(!debug.contains(&key(1)) && !debug.contains("[1, 1"), "{debug}");
        assert!(debug.contains("****"));
    }

    #[test]
    fn a_generated_key_seals_and_opens() {
        let keys = SealingKeys::generate([42; 32]);
        let sealed = seal(&keys, Purpose::Registration, "s", b"client");
        assert_eq!(keys.open(Purpose::Registration, "s", NOW, &sealed).unwrap(), b"client");
        assert!(!format!("{keys:?}").contains("42, 42"));
    }

    proptest! {
        #[test]
        fn open_inverts_seal_and_any_byte_flip_fails(
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
            server in "[a-z0-9_.-]{1,20}",
            purpose in proptest::sample::select(Purpose::ALL.to_vec()),
            nonce in any::<[u8; NONCE_LEN]>(),
            flip_at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let keys = keys(&[1, 2]);
            let sealed = keys.seal(purpose, &server, purpose.expiry_from(NOW), &plaintext, nonce).unwrap();
            prop_assert_eq!(keys.open(purpose, &server, NOW, &sealed).unwrap(), plaintext);
            let mut bytes = sealed.into_bytes();
            let index = flip_at.index(bytes.len());
            bytes[index] ^= flip;
            // A flip that leaves UTF-8 is still a refusal; the check is on the text the caller got.
            if let Ok(tampered) = String::from_utf8(bytes) {
                prop_assert!(keys.open(purpose, &server, NOW, &tampered).is_err());
            }
        }
    }
}
