//! OAuth metadata documents as plain serde structs (RFC 9728, RFC 8414, OpenID Discovery).
//!
//! Only the fields the client acts on are typed; everything else is kept in `extra` so `discover`
//! can print the whole document. Parsing enforces the shape (`issuer` and endpoints are strings),
//! the checks that need context (resource and issuer identity) live in the discovery machine.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// RFC 9728 protected-resource metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedResourceMetadata {
    /// The protected resource's identifier; must identify the MCP server.
    pub resource: String,
    /// Issuer identifiers of the authorization servers, in preference order.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes the resource understands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
    /// How the resource accepts bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_methods_supported: Option<Vec<String>>,
    /// Everything else in the document.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// RFC 8414 authorization-server metadata (also read from OpenID configuration documents).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationServerMetadata {
    /// The issuer identifier; must equal the issuer the document was fetched for.
    pub issuer: String,
    /// Where the browser is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// Where codes and credentials are exchanged for tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// RFC 7591 dynamic client registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
    /// RFC 7009 token revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// Scopes the server issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
    /// Supported `response_type` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_types_supported: Option<Vec<String>>,
    /// Supported grant types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_types_supported: Option<Vec<String>>,
    /// PKCE methods; interactive flows require `S256` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// Client authentication methods at the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// RFC 9207: the authorization response carries `iss`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authorization_response_iss_parameter_supported: bool,
    /// The server accepts URL-formatted client IDs (client ID metadata documents).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_id_metadata_document_supported: bool,
    /// Everything else in the document.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AuthorizationServerMetadata {
    /// Whether PKCE `S256` is advertised.
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .as_ref()
            .is_some_and(|methods| methods.iter().any(|m| m == "S256"))
    }

    /// Whether a token endpoint auth method is advertised; per RFC 8414 an absent list means
    /// `client_secret_basic` only.
    pub fn supports_auth_method(&self, method: &str) -> bool {
        match &self.token_endpoint_auth_methods_supported {
            Some(methods) => methods.iter().any(|m| m == method),
            None => method == "client_secret_basic",
        }
    }
}

/// RFC 6749 §5.1 token response (plus RFC 8693 fields).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: crate::secret::Secret,
    /// Usually `Bearer`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// Seconds until expiry, when the server says.
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<i64>,
    /// A refresh token, when issued.
    #[serde(default)]
    pub refresh_token: Option<crate::secret::Secret>,
    /// Granted scopes, space-separated.
    #[serde(default)]
    pub scope: Option<String>,
    /// RFC 8693: the type of the issued token.
    #[serde(default)]
    pub issued_token_type: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "****"))
            .field("scope", &self.scope)
            .finish()
    }
}

/// `expires_in` as a number, or as a numeric string (some providers send `"3600"`).
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(Value::Number(number)) => number.as_i64().or_else(|| number.as_f64().map(|f| f as i64)),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    })
}

/// RFC 6749 §5.2 error response.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OAuthErrorResponse {
    /// The error code.
    pub error: String,
    /// A human description.
    #[serde(default)]
    pub error_description: Option<String>,
}
