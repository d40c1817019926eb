//! Token-response validation and cache lifetimes (design §4.3).
//!
//! `token_validation` lets an operator insist that a token was issued for the right tenant or team
//! before the gateway stores or returns it; the rules compare text forms so YAML numbers and JSON
//! strings meet, and a failure names the field but never echoes the token. The TTL functions keep a
//! cached token strictly inside its real lifetime.

use serde_json::{Map, Value};

use crate::Reason;

/// Seconds assumed when a client-credentials response carries no `expires_in`.
pub const DEFAULT_M2M_EXPIRES_IN: u64 = 3600;
/// Seconds subtracted from `expires_in` so a cached token is refreshed before it expires.
pub const EXPIRY_BUFFER_SECONDS: u64 = 60;
/// The shortest M2M cache lifetime, so a flood of short-lived tokens does not hammer the issuer.
pub const MIN_M2M_TTL_SECONDS: u64 = 10;
/// Seconds a per-user token is kept when neither `expires_in` nor `token_storage_ttl_seconds` says.
pub const DEFAULT_USER_TTL_SECONDS: u64 = 43_200;

/// How long to cache a client-credentials token: `min(max(expires_in − 60, 10), expires_in)`;
/// no `expires_in` means 3600, and a non-positive one means "do not cache".
pub fn m2m_cache_ttl(expires_in: Option<i64>) -> u64 {
    let expires_in = match expires_in {
        None => DEFAULT_M2M_EXPIRES_IN,
        Some(value) => u64::try_from(value).unwrap_or(0),
    };
    expires_in.saturating_sub(EXPIRY_BUFFER_SECONDS).max(MIN_M2M_TTL_SECONDS).min(expires_in)
}

/// How long to keep a per-user token: `min(token_storage_ttl_seconds, expires_in − 60)`, never past
/// the real expiry; either side may be absent, and with both absent 12 hours.
pub fn user_token_ttl(expires_in: Option<i64>, token_storage_ttl_seconds: Option<u64>) -> u64 {
    let by_expiry =
        expires_in.map(|value| u64::try_from(value).unwrap_or(0).saturating_sub(EXPIRY_BUFFER_SECONDS));
    match (token_storage_ttl_seconds, by_expiry) {
        (Some(storage), Some(expiry)) => storage.min(expiry),
        (Some(storage), None) => storage,
        (None, Some(expiry)) => expiry,
        (None, None) => DEFAULT_USER_TTL_SECONDS,
    }
}

/// The text a rule compares: strings as-is, numbers in decimal, booleans `true`/`false`.
/// `null`, arrays and objects have none, so they never satisfy a rule.
pub fn text_form(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Finds `path` in a token response: a literal top-level key wins, else a walk on `.`.
pub fn lookup<'v>(response: &'v Value, path: &str) -> Option<&'v Value> {
    let object = response.as_object()?;
    if let Some(value) = object.get(path) {
        return Some(value);
    }
    let mut current = response;
    for segment in path.split('.') {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// Checks every `token_validation` rule against a token response, in rule order.
pub fn validate_token_response(
    rules: &Map<String, Value>,
    response: &Value,
) -> Result<(), TokenValidationError> {
    for (path, expected) in rules {
        let actual = lookup(response, path).filter(|value| !value.is_null());
        let Some(actual) = actual else {
            return Err(TokenValidationError::Missing { field: path.clone() });
        };
        let matches = match (text_form(actual), text_form(expected)) {
            (Some(actual), Some(expected)) => actual == expected,
            _ => false,
        };
        if !matches {
            return Err(TokenValidationError::Mismatch { field: path.clone() });
        }
    }
    Ok(())
}

/// A token response failed `token_validation`; answered as 403 `token_validation_failed`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenValidationError {
    /// The field the rule names is absent or null.
    #[error("token_validation failed: the token response has no field `{field}`")]
    Missing {
        /// The rule's path.
        field: String,
    },
    /// The field exists but holds another value (the value is not repeated here).
    #[error("token_validation failed: field `{field}` does not have the required value")]
    Mismatch {
        /// The rule's path.
        field: String,
    },
}

impl TokenValidationError {
    /// The rule's path that failed.
    pub fn field(&self) -> &str {
        match self {
            Self::Missing { field } | Self::Mismatch { field } => field,
        }
    }

    /// The HTTP status the gateway answers with.
    pub fn status(&self) -> u16 {
        403
    }
}

impl Reason for TokenValidationError {
    fn reason(&self) -> &'static str {
        "token_validation_failed"
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn m2m_ttl_follows_the_formula() {
        assert_eq!(m2m_cache_ttl(None), 3540);
        assert_eq!(m2m_cache_ttl(Some(3600)), 3540);
        assert_eq!(m2m_cache_ttl(Some(100)), 40);
        assert_eq!(m2m_cache_ttl(Some(70)), 10);
        assert_eq!(m2m_cache_ttl(Some(30)), 10);
        assert_eq!(m2m_cache_ttl(Some(5)), 5);
        assert_eq!(m2m_cache_ttl(Some(0)), 0);
        assert_eq!(m2m_cache_ttl(Some(-5)), 0);
    }

    #[test]
    fn user_ttl_never_passes_expiry() {
        assert_eq!(user_token_ttl(Some(3600), Some(600)), 600);
        assert_eq!(user_token_ttl(Some(3600), Some(86_400)), 3540);
        assert_eq!(user_token_ttl(Some(3600), None), 3540);
        assert_eq!(user_token_ttl(None, Some(600)), 600);
        assert_eq!(user_token_ttl(None, None), 43_200);
        assert_eq!(user_token_ttl(Some(30), Some(600)), 0);
    }

    #[test]
    fn literal_key_wins_over_dotted_walk() {
        let response = json!({"team.enterprise_id": "literal", "team": {"enterprise_id": "nested"}});
        assert!(validate_token_response(&rules(json!({"team.enterprise_id": "literal"})), &response).is_ok());
        assert!(validate_token_response(&rules(json!({"team.enterprise_id": "nested"})), &response).is_err());
    }

    #[test]
    fn dotted_walk_and_text_forms() {
        let response = json!({"team": {"enterprise_id": "E1", "size": 42, "paid": true}, "ratio": 1.5});
        let ok =
            rules(json!({"team.enterprise_id": "E1", "team.size": "42", "team.paid": "true", "ratio": 1.5}));
        assert!(validate_token_response(&ok, &response).is_ok());
        let numeric = rules(json!({"team.size": 42}));
        assert!(validate_token_response(&numeric, &response).is_ok());
    }

    #[test]
    fn comparison_is_case_sensitive_and_names_the_first_failing_field() {
        let response = json!({"team": {"enterprise_id": "E1"}});
        let error =
            validate_token_response(&rules(json!({"team.enterprise_id": "e1"})), &response).unwrap_err();
        assert_eq!(error, TokenValidationError::Mismatch { field: "team.enterprise_id".into() });
        let error = validate_token_response(&rules(json!({"a": "1", "b": "2"})), &response).unwrap_err();
        assert_eq!(error.field(), "a");
        assert!(!error.to_string().contains("E1"));
    }

    #[test]
    fn absent_null_and_structured_values_fail() {
        let response = json!({"n": null, "o": {"x": 1}, "a": [1]});
        for path in ["missing", "n", "o", "a", "o.y", "o.x.z"] {
            let result = validate_token_response(&rules(json!({path: "1"})), &response);
            assert!(result.is_err(), "{path}");
        }
        assert!(validate_token_response(&rules(json!({"x": "1"})), &json!("not an object")).is_err());
        assert!(validate_token_response(&Map::new(), &response).is_ok());
    }
}
