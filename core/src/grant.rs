//! The grant store's vocabulary as data (design §3, §4.8, §4.10): what a grant holds, the five
//! atomic store operations a machine asks for, and their answers.
//!
//! A grant is what the gateway keeps after a user approved a client at `/{s}/consent` and the
//! upstream issued tokens: whose it is ([`Identity`]), for which server and client, and the
//! upstream tokens, sealed ([`SealedUpstreamToken`]) so the store never holds one in clear text.
//! Core does no I/O, so there is no store trait here: a machine yields a [`StoreOp`] and is handed
//! back a [`StoreResult`], exactly like an HTTP request and its response. The adapters
//! (`mcp-oauth-runtime`'s `GrantStore`: memory, SQLite and Redis) implement the five
//! primitives and nothing else; every decision (grace window, reuse, expiry) stays in core.
//!
//! The store fails closed: [`StoreResult::Unavailable`] makes every single-use check and every
//! grant read fail (a 503 with the reason), never skipped. The `expect_*` accessors turn any
//! answer but the expected one into that failure.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use crate::Reason;
use crate::seal::{NONCE_LEN, OpenError, Purpose, SealError, SealingKeys, UnixTime};
use crate::secret::Secret;

/// Who approved a grant: the gateway key's name and a fingerprint of the key itself.
///
/// Every use of a grant checks that a configured key with this name still has this fingerprint,
/// so changing or removing a key ends its grants (design §4.8). The fingerprint is an HMAC of the
/// key under the sealing key: it reveals nothing about the key to whoever reads the store, and
/// cannot be checked without the sealing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's name: the `gateway_keys` map key, `key-{n}` for a list entry, `master`.
    pub name: String,
    /// HMAC-SHA-256 of the key under the sealing key's fingerprint sub-key.
    pub fingerprint: [u8; 32],
}

impl Identity {
    /// The identity of `gateway_key` named `name`, fingerprinted under the current sealing key.
    pub fn new(name: impl Into<String>, gateway_key: &Secret, keys: &SealingKeys) -> Self {
        Self { name: name.into(), fingerprint: fingerprint(gateway_key, keys) }
    }

    /// Whether `gateway_key`, configured under `name`, is still this identity's key: the names are
    /// equal and the fingerprint matches under any configured sealing key (so rotating the
    /// sealing key does not end every grant at once), compared in constant time.
    ///
    /// A grant rewritten after a rotation should take [`Identity::new`]'s fresh fingerprint, so the
    /// old sealing key can retire once its grants have been refreshed or have expired.
    pub fn is_held_by(&self, name: &str, gateway_key: &Secret, keys: &SealingKeys) -> bool {
        let mut matched = subtle::Choice::from(0);
        for key in keys.all() {
            matched |= key.fingerprint(fingerprint_input(gateway_key)).ct_eq(&self.fingerprint);
        }
        self.name == name && bool::from(matched)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The fingerprint is not secret, but it is a stable handle on a key: four bytes are
        // enough to tell identities apart in a log.
        let short: String = self.fingerprint[..4].iter().map(|byte| format!("{byte:02x}")).collect();
        write!(f, "Identity({}, {short}…)", self.name)
    }
}

/// The fingerprint of `gateway_key` under the current sealing key.
pub fn fingerprint(gateway_key: &Secret, keys: &SealingKeys) -> [u8; 32] {
    keys.current().fingerprint(fingerprint_input(gateway_key))
}

/// The bytes fingerprinted: the key as configured (the caller strips `Bearer ` and spaces).
fn fingerprint_input(gateway_key: &Secret) -> &[u8] {
    gateway_key.expose().as_bytes()
}

/// A grant's id: random bytes the caller drew, as base64url (a store key in every backend).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(String);

impl GrantId {
    /// A fresh id from 16 random bytes (128 bits: unguessable and collision-free).
    pub fn from_random(random: [u8; 16]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(random))
    }

    /// An id read back from a store or a sealed token.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upstream token sealed with [`Purpose::UpstreamToken`], bound to its grant's server and id,
/// so a store reader sees only ciphertext and a token cannot be moved to another grant.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedUpstreamToken(String);

impl SealedUpstreamToken {
    /// Seals `token` for the grant `grant` of `server`, to expire with the grant at `expires_at`.
    pub fn seal(
        keys: &SealingKeys,
        server: &str,
        grant: &GrantId,
        expires_at: UnixTime,
        token: &Secret,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Self, SealError> {
        let context = upstream_context(server, grant);
        keys.seal(Purpose::UpstreamToken, &context, Some(expires_at), token.expose().as_bytes(), nonce)
            .map(Self)
    }

    /// Opens the token of grant `grant` of `server`.
    pub fn open(
        &self,
        keys: &SealingKeys,
        server: &str,
        grant: &GrantId,
        now: UnixTime,
    ) -> Result<Secret, OpenError> {
        let plaintext = keys.open(Purpose::UpstreamToken, &upstream_context(server, grant), now, &self.0)?;
        String::from_utf8(plaintext).map(Secret::new).map_err(|_| OpenError::Malformed)
    }

    /// A sealed value read back from a store.
    pub fn from_stored(sealed: impl Into<String>) -> Self {
        Self(sealed.into())
    }

    /// The sealed text, to write to a store.
    pub fn as_stored(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedUpstreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedUpstreamToken({} chars)", self.0.len())
    }
}

/// What an upstream token is sealed to: the server and the grant. Server names never contain `/`
/// (config refuses them), so the pair is unambiguous.
fn upstream_context(server: &str, grant: &GrantId) -> String {
    format!("{server}/{}", grant.as_str())
}

/// One grant: a user's approval of one client at one server, and the upstream tokens it yielded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The grant's id; gateway tokens name it.
    pub id: GrantId,
    /// The server it is for.
    pub server: String,
    /// Whose it is.
    pub identity: Identity,
    /// The client: a digest of its `client_id` (a sealed registration can be long) or a CIMD URL.
    pub client: String,
    /// The upstream access token, sealed.
    pub upstream_access_token: SealedUpstreamToken,
    /// The upstream refresh token, sealed, when the upstream issued one.
    pub upstream_refresh_token: Option<SealedUpstreamToken>,
    /// When the upstream access token expires, when the upstream said.
    pub upstream_access_expires_at: Option<UnixTime>,
    /// When the grant ends: 30 days (or `grant_max_lifetime_days`) after the last refresh. A store
    /// forgets the grant then; revoking is a `PutGrant` with an expiry at or before now.
    pub expires_at: UnixTime,
    /// The refresh-token generation: a gateway refresh token names the generation it was issued
    /// at; [`StoreOp::AdvanceGeneration`] moves it on by one.
    pub generation: u64,
    /// When the generation last advanced (the 60 s grace for the preceding refresh token).
    pub rotated_at: UnixTime,
    /// The scope the upstream granted.
    pub scope: String,
    /// The gateway's client at the upstream when the gateway registered itself there (RFC 7591):
    /// its refreshes need the same client. `None` when the configured `client_id` is used.
    pub upstream_client: Option<UpstreamClient>,
}

/// A client the gateway registered for itself at an upstream authorization server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamClient {
    /// The `client_id` the upstream issued.
    pub client_id: String,
    /// Its secret, sealed to the grant, when the upstream issued one.
    pub client_secret: Option<SealedUpstreamToken>,
}

/// The prefix of a pointer record's `client`: the id of the grant it points at follows.
const POINTER_PREFIX: &str = "newest-grant:";

/// The `client` of a record that keeps the gateway's own upstream registration.
const REGISTRATION_CLIENT: &str = "gateway-upstream-registration";

/// How long a kept upstream registration is used before the gateway registers again: the longest
/// a sealed value may live, so a retired sealing key never strands a registration's secret.
pub const REGISTRATION_LIFETIME: Duration = crate::seal::MAX_GRANT_LIFETIME;

impl Grant {
    /// The id of the record that names `identity`'s newest grant at `server` (design §4.8: the
    /// aggregating routes use it). Kept with the five primitives: a grant-shaped record under a
    /// derived id, written after each new grant, read with `get_grant`.
    pub fn newest_pointer_id(server: &str, identity: &Identity) -> GrantId {
        let mut digest = [0u8; 12];
        digest.copy_from_slice(identity.fingerprint.get(..12).unwrap_or(&[0; 12]));
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        GrantId::new(format!("newest.{server}.{hex}"))
    }

    /// The pointer record naming this grant as its identity's newest at its server; it expires with
    /// the grant and holds no usable token (the sealed token is bound to the real grant's id).
    pub fn pointer(&self) -> Self {
        Self {
            id: Self::newest_pointer_id(&self.server, &self.identity),
            client: format!("{POINTER_PREFIX}{}", self.id.as_str()),
            upstream_refresh_token: None,
            upstream_client: None,
            ..self.clone()
        }
    }

    /// The grant a pointer record points at, if this is one.
    pub fn pointed(&self) -> Option<GrantId> {
        self.client.strip_prefix(POINTER_PREFIX).map(GrantId::new)
    }

    /// The id of the record keeping the client the gateway registered for itself at `server`'s
    /// upstream for the callback at `origin` (design §4.8: once per server and origin, shared by
    /// every replica through the store).
    pub fn registration_id(server: &str, origin: &str) -> GrantId {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(origin.as_bytes());
        let hex: String = digest.iter().take(12).map(|byte| format!("{byte:02x}")).collect();
        GrantId::new(format!("registration.{server}.{hex}"))
    }

    /// A record keeping the gateway's own registration `client` at `server`'s upstream, made for
    /// the callback at `origin`, until `expires_at`. It is grant-shaped so the store's five
    /// primitives keep it; it belongs to nobody and holds no token (its secret is sealed to the
    /// record's id, like an upstream token).
    pub fn upstream_registration(
        server: &str,
        origin: &str,
        client: UpstreamClient,
        now: UnixTime,
        expires_at: UnixTime,
    ) -> Self {
        Self {
            id: Self::registration_id(server, origin),
            server: server.to_owned(),
            identity: Identity { name: String::new(), fingerprint: [0; 32] },
            client: REGISTRATION_CLIENT.to_owned(),
            upstream_access_token: SealedUpstreamToken::from_stored(""),
            upstream_refresh_token: None,
            upstream_access_expires_at: None,
            expires_at,
            generation: 0,
            rotated_at: now,
            scope: String::new(),
            upstream_client: Some(client),
        }
    }

    /// The kept upstream registration, if this record is one.
    pub fn registration(&self) -> Option<&UpstreamClient> {
        (self.client == REGISTRATION_CLIENT).then_some(self.upstream_client.as_ref()).flatten()
    }

    /// Whether this record is a user's grant (not a pointer or a kept registration): what an
    /// operator lists and a gateway token may name.
    pub fn is_user_grant(&self) -> bool {
        self.pointed().is_none() && self.client != REGISTRATION_CLIENT
    }

    /// Seals every sealed field again under the current sealing key, to expire with the grant's
    /// (possibly moved) `expires_at`: what a lifetime extension needs (a sealed value carries its
    /// own expiry), and how a key rotation re-encrypts a grant lazily, on its next refresh.
    /// `nonce` is called once per field. Fails when a field no longer opens.
    pub fn reseal(
        &mut self,
        keys: &SealingKeys,
        now: UnixTime,
        mut nonce: impl FnMut() -> [u8; NONCE_LEN],
    ) -> Result<(), OpenError> {
        let (server, id, expires_at) = (self.server.clone(), self.id.clone(), self.expires_at);
        let mut again = |sealed: &SealedUpstreamToken| -> Result<SealedUpstreamToken, OpenError> {
            let clear = sealed.open(keys, &server, &id, now)?;
            SealedUpstreamToken::seal(keys, &server, &id, expires_at, &clear, nonce())
                .map_err(|_| OpenError::ImplausibleExpiry)
        };
        self.upstream_access_token = again(&self.upstream_access_token)?;
        if let Some(refresh) = &self.upstream_refresh_token {
            self.upstream_refresh_token = Some(again(refresh)?);
        }
        if let Some(secret) = self.upstream_client.as_mut().and_then(|client| client.client_secret.as_mut()) {
            *secret = again(secret)?;
        }
        Ok(())
    }

    /// Whether the grant has ended at `now`.
    pub fn is_expired(&self, now: UnixTime) -> bool {
        now >= self.expires_at
    }
}

/// A single-use mark's key (a code's or a state's id), kept until the sealed value expires.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OnceKey(pub String);

/// Who holds a grant's refresh lock: a random fencing value, so only the holder unlocks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockHolder(pub String);

/// One atomic grant-store operation: a machine's request to the store (design §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Read a grant; an expired grant reads as absent. Answered by [`StoreResult::Grant`].
    GetGrant {
        /// The grant.
        id: GrantId,
    },
    /// Write a grant, replacing any with the same id (last writer wins: rewrite a live grant only
    /// while holding its lock). Answered by [`StoreResult::Stored`].
    PutGrant(Box<Grant>),
    /// Mark `key` used, kept until `until`: `true` the first time only, `false` ever after (and
    /// `false` when `until` has already passed: nothing is left to guard, so refuse). Answered by
    /// [`StoreResult::Taken`].
    TakeOnce {
        /// The mark.
        key: OnceKey,
        /// When the mark may be forgotten: the sealed value's own expiry.
        until: UnixTime,
    },
    /// Compare-and-swap the grant's generation: if it is `expected`, make it `expected + 1` and
    /// its rotation time `now`, and answer `true`; otherwise (or no live grant) `false`. Answered
    /// by [`StoreResult::Advanced`].
    AdvanceGeneration {
        /// The grant.
        grant: GrantId,
        /// The generation the caller saw.
        expected: u64,
        /// The rotation time to record.
        now: UnixTime,
    },
    /// Take the grant's refresh lock for `ttl`, unless another holder has it: `true` if taken.
    /// Not re-entrant (the same holder asking again gets `false`). Answered by
    /// [`StoreResult::Locked`].
    TryLock {
        /// The grant.
        grant: GrantId,
        /// The fencing value.
        holder: LockHolder,
        /// How long the lock lasts without an unlock (≥ 2 × the token request deadline).
        ttl: Duration,
    },
    /// Release the lock if `holder` holds it; otherwise nothing. Answered by
    /// [`StoreResult::Unlocked`].
    Unlock {
        /// The grant.
        grant: GrantId,
        /// The fencing value given to [`StoreOp::TryLock`].
        holder: LockHolder,
    },
}

/// The store's answer to one [`StoreOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreResult {
    /// The grant read, or `None` (unknown or expired).
    Grant(Option<Box<Grant>>),
    /// The grant was written.
    Stored,
    /// Whether the mark was taken now (the first time).
    Taken(bool),
    /// Whether the generation advanced.
    Advanced(bool),
    /// Whether the lock was taken.
    Locked(bool),
    /// The lock is released (or was not held by this holder).
    Unlocked,
    /// The store could not answer (unreachable, timed out, full): the operation fails closed.
    Unavailable {
        /// A stable `snake_case` code: `store_full`, `store_unreachable`, `store_timeout`, …
        reason: &'static str,
    },
}

/// The store could not answer, or answered the wrong kind: the request fails closed with a 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the grant store is unavailable ({reason})")]
pub struct StoreUnavailable {
    /// The store's reason code, or `store_wrong_answer`.
    pub reason: &'static str,
}

impl StoreUnavailable {
    /// The HTTP status a request that needed the store answers with.
    pub const STATUS: http::StatusCode = http::StatusCode::SERVICE_UNAVAILABLE;
}

impl Reason for StoreUnavailable {
    fn reason(&self) -> &'static str {
        self.reason
    }
}

/// The reason an answer of the wrong kind fails with (an adapter bug, still failing closed).
const WRONG_ANSWER: StoreUnavailable = StoreUnavailable { reason: "store_wrong_answer" };

impl StoreResult {
    fn failure(&self) -> StoreUnavailable {
        match self {
            Self::Unavailable { reason } => StoreUnavailable { reason },
            _ => WRONG_ANSWER,
        }
    }

    /// The answer to [`StoreOp::GetGrant`]; anything else fails closed.
    pub fn expect_grant(self) -> Result<Option<Grant>, StoreUnavailable> {
        match self {
            Self::Grant(grant) => Ok(grant.map(|grant| *grant)),
            other => Err(other.failure()),
        }
    }

    /// The answer to [`StoreOp::PutGrant`]; anything else fails closed.
    pub fn expect_stored(self) -> Result<(), StoreUnavailable> {
        match self {
            Self::Stored => Ok(()),
            other => Err(other.failure()),
        }
    }

    /// The answer to [`StoreOp::TakeOnce`]; anything else fails closed.
    pub fn expect_taken(self) -> Result<bool, StoreUnavailable> {
        match self {
            Self::Taken(taken) => Ok(taken),
            other => Err(other.failure()),
        }
    }

    /// The answer to [`StoreOp::AdvanceGeneration`]; anything else fails closed.
    pub fn expect_advanced(self) -> Result<bool, StoreUnavailable> {
        match self {
            Self::Advanced(advanced) => Ok(advanced),
            other => Err(other.failure()),
        }
    }

    /// The answer to [`StoreOp::TryLock`]; anything else fails closed.
    pub fn expect_locked(self) -> Result<bool, StoreUnavailable> {
        match self {
            Self::Locked(locked) => Ok(locked),
            other => Err(other.failure()),
        }
    }

    /// The answer to [`StoreOp::Unlock`]; anything else fails closed.
    pub fn expect_unlocked(self) -> Result<(), StoreUnavailable> {
        match self {
            Self::Unlocked => Ok(()),
            other => Err(other.failure()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

    fn keys(byte: u8) -> SealingKeys {
        SealingKeys::generate([byte; 32])
    }

    #[test]
    fn an_identity_holds_while_its_key_and_name_stay() {
        let key = Secret::new("sk-alice-0001");
        let identity = Identity::new("alice", &key, &keys(1));
        assert!(identity.is_held_by("alice", &key, &keys(1)));
        assert!(!identity.is_held_by("bob", &key, &keys(1)), "another name");
        assert!(!identity.is_held_by("alice", &Secret::new("sk-alice-0002"), &keys(1)), "a changed key");
        assert!(!identity.is_held_by("alice", &key, &keys(2)), "another sealing key");
        assert_ne!(identity.fingerprint, Identity::new("alice", &key, &keys(2)).fingerprint);
        // After a rotation (new key first, old one second) the grant's identity still holds.
        let rotated = SealingKeys::parse(&format!(
            "{},{}",
            URL_SAFE_NO_PAD.encode([2u8; 32]),
            URL_SAFE_NO_PAD.encode([1u8; 32])
        ))
        .unwrap();
        assert!(identity.is_held_by("alice", &key, &rotated));
        let debug = format!("{identity:?}");
        assert!(debug.starts_with("Identity(alice, ") && !debug.contains("sk-alice"), "{debug}");
    }

    #[test]
    fn upstream_tokens_are_stored_sealed_and_bound_to_their_grant() {
        let keys = keys(1);
        let grant = GrantId::from_random([3; 16]);
        let token = Secret::new("upstream-access-token-123");
        let expires = NOW.plus(Duration::from_secs(86_400));
        let sealed = SealedUpstreamToken::seal(&keys, "github", &grant, expires, &token, [5; 24]).unwrap();
        assert!(!sealed.as_stored().contains("upstream-access"));
        assert!(!format!("{sealed:?}").contains(sealed.as_stored()));
        let reread = SealedUpstreamToken::from_stored(sealed.as_stored());
        assert_eq!(reread.open(&keys, "github", &grant, NOW).unwrap(), token);
        let other = GrantId::from_random([4; 16]);
        assert_eq!(reread.open(&keys, "github", &other, NOW), Err(OpenError::DoesNotAuthenticate));
        assert_eq!(reread.open(&keys, "gitlab", &grant, NOW), Err(OpenError::DoesNotAuthenticate));
        assert_eq!(reread.open(&keys, "github", &grant, expires), Err(OpenError::Expired));
    }

    #[test]
    fn answers_of_the_wrong_kind_fail_closed() {
        assert_eq!(StoreResult::Taken(true).expect_taken(), Ok(true));
        assert_eq!(StoreResult::Grant(None).expect_grant(), Ok(None));
        let full = StoreResult::Unavailable { reason: "store_full" };
        assert_eq!(full.clone().expect_taken().unwrap_err().reason(), "store_full");
        assert_eq!(full.expect_grant().unwrap_err().reason(), "store_full");
        assert_eq!(StoreResult::Stored.expect_taken().unwrap_err().reason(), "store_wrong_answer");
        assert_eq!(StoreResult::Locked(true).expect_advanced().unwrap_err().reason(), "store_wrong_answer");
        assert_eq!(StoreResult::Unlocked.expect_stored().unwrap_err(), WRONG_ANSWER);
        assert_eq!(StoreResult::Stored.expect_unlocked().unwrap_err(), WRONG_ANSWER);
        assert_eq!(StoreResult::Stored.expect_locked().unwrap_err(), WRONG_ANSWER);
        assert_eq!(StoreUnavailable::STATUS, 503);
    }
}
