//! One stored form of a [`Grant`], shared by the durable grant-store backends (SQLite, Redis), so
//! a record written by one version or replica reads the same in every other. Pure data: it lives
//! in core so it is fuzzed with the other parsers (harness `grant_record`).
//!
//! The form is a small JSON object with a format version `v`. Sealed values are written as their
//! sealed text (the store never sees an upstream token or secret in clear), the identity's
//! fingerprint as lowercase hex, times as whole seconds since the epoch. Decoding is strict: an
//! unknown version, a missing field or a malformed fingerprint is an error, so a backend answers
//! `Unavailable` (fail closed) instead of inventing a grant.

use crate::grant::{Grant, GrantId, Identity, SealedUpstreamToken, UpstreamClient};
use crate::seal::UnixTime;
use serde::{Deserialize, Serialize};

/// The record format this code writes and reads.
pub const RECORD_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    v: u32,
    id: String,
    server: String,
    identity: String,
    fingerprint: String,
    client: String,
    access: String,
    refresh: Option<String>,
    access_expires_at: Option<u64>,
    expires_at: u64,
    generation: u64,
    rotated_at: u64,
    scope: String,
    upstream_client: Option<StoredClient>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredClient {
    client_id: String,
    client_secret: Option<String>,
}

/// A stored record that does not decode as a grant of this format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not JSON of the expected shape.
    #[error("the stored grant record is malformed")]
    Malformed,
    /// Written by a newer (or unknown) record format.
    #[error("the stored grant record has an unknown format version")]
    UnknownVersion,
}

/// The stored text of `grant`.
pub fn encode(grant: &Grant) -> String {
    let stored = Stored {
        v: RECORD_VERSION,
        id: grant.id.as_str().to_owned(),
        server: grant.server.clone(),
        identity: grant.identity.name.clone(),
        fingerprint: grant.identity.fingerprint.iter().map(|byte| format!("{byte:02x}")).collect(),
        client: grant.client.clone(),
        access: grant.upstream_access_token.as_stored().to_owned(),
        refresh: grant.upstream_refresh_token.as_ref().map(|token| token.as_stored().to_owned()),
        access_expires_at: grant.upstream_access_expires_at.map(UnixTime::as_secs),
        expires_at: grant.expires_at.as_secs(),
        generation: grant.generation,
        rotated_at: grant.rotated_at.as_secs(),
        scope: grant.scope.clone(),
        upstream_client: grant.upstream_client.as_ref().map(|client| StoredClient {
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.as_ref().map(|secret| secret.as_stored().to_owned()),
        }),
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// The grant a stored text holds.
pub fn decode(text: &str) -> Result<Grant, RecordError> {
    let version: serde_json::Value = serde_json::from_str(text).map_err(|_| RecordError::Malformed)?;
    if version.get("v").and_then(serde_json::Value::as_u64) != Some(u64::from(RECORD_VERSION)) {
        return Err(RecordError::UnknownVersion);
    }
    let stored: Stored = serde_json::from_value(version).map_err(|_| RecordError::Malformed)?;
    let fingerprint = parse_fingerprint(&stored.fingerprint).ok_or(RecordError::Malformed)?;
    Ok(Grant {
        id: GrantId::new(stored.id),
        server: stored.server,
        identity: Identity { name: stored.identity, fingerprint },
        client: stored.client,
        upstream_access_token: SealedUpstreamToken::from_stored(stored.access),
        upstream_refresh_token: stored.refresh.map(SealedUpstreamToken::from_stored),
        upstream_access_expires_at: stored.access_expires_at.map(UnixTime::from_secs),
        expires_at: UnixTime::from_secs(stored.expires_at),
        generation: stored.generation,
        rotated_at: UnixTime::from_secs(stored.rotated_at),
        scope: stored.scope,
        upstream_client: stored.upstream_client.map(|client| UpstreamClient {
            client_id: client.client_id,
            client_secret: client.client_secret.map(SealedUpstreamToken::from_stored),
        }),
    })
}

fn parse_fingerprint(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut fingerprint = [0u8; 32];
    for (index, byte) in fingerprint.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(fingerprint)
}

#[cfg(test)]
mod tests {
    use crate::seal::SealingKeys;
    use crate::secret::Secret;

    use super::*;

    fn grant() -> Grant {
        let keys = SealingKeys::generate([3; 32]);
        let id = GrantId::from_random([9; 16]);
        let expires_at = UnixTime::from_secs(1_900_000_000);
        let seal = |text: &str| {
            SealedUpstreamToken::seal(&keys, "notes", &id, expires_at, &Secret::new(text), [1; 24]).unwrap()
        };
        Grant {
            id: id.clone(),
            server: "notes".into(),
            identity: Identity::new("alice", &Secret::new("sk-alice"), &keys),
            client: "client-digest".into(),
            upstream_access_token: seal("at"),
            upstream_refresh_token: Some(seal("rt")),
            upstream_access_expires_at: Some(UnixTime::from_secs(1_800_000_000)),
            expires_at,
            generation: 7,
            rotated_at: UnixTime::from_secs(1_799_999_000),
            scope: "notes:read".into(),
            upstream_client: Some(UpstreamClient {
                client_id: "gw-1".into(),
                client_secret: Some(seal("cs")),
            }),
        }
    }

    #[test]
    fn a_grant_round_trips_and_its_secrets_stay_sealed() {
        let grant = grant();
        let text = encode(&grant);
        assert_eq!(decode(&text), Ok(grant));
        for clear in ["\"at\"", "\"rt\"", "\"cs\"", "sk-alice"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
    }

    #[test]
    fn unknown_versions_and_malformed_records_are_refused() {
        let text = encode(&grant());
        assert_eq!(decode(&text.replace("\"v\":1", "\"v\":2")), Err(RecordError::UnknownVersion));
        assert_eq!(decode("{}"), Err(RecordError::UnknownVersion));
        assert_eq!(decode("not json"), Err(RecordError::Malformed));
        let short = text.replacen("\"fingerprint\":\"", "\"fingerprint\":\"zz", 1);
        assert_eq!(decode(&short), Err(RecordError::Malformed));
        let extra = text.replacen("{", "{\"surprise\":1,", 1);
        assert_eq!(decode(&extra), Err(RecordError::Malformed));
    }
}
