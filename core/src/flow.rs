//! OAuth flow selection per server (design §4.1).
//!
//! The flow decides whose identity reaches the upstream: `client_credentials` gives every caller
//! one shared app identity, the interactive flow gives each user their own. An explicit
//! `oauth2_flow` always wins; inference exists only for LiteLLM compatibility, and the loader warns
//! when it infers `client_credentials`.

use crate::Reason;

/// `auth_type`: how the gateway authenticates to one upstream server (LiteLLM's `MCPAuth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthType {
    /// No credential.
    None,
    /// A static API key.
    ApiKey,
    /// A static bearer token.
    BearerToken,
    /// HTTP Basic with a static credential.
    Basic,
    /// A static `Authorization` header value.
    Authorization,
    /// A static token with the `token` scheme.
    Token,
    /// OAuth 2.0 (interactive or client credentials).
    OAuth2,
    /// RFC 8693 token exchange (on behalf of the caller).
    OAuth2TokenExchange,
    /// AWS SigV4 request signing (accepted for compatibility; not performed by this gateway).
    AwsSigV4,
    /// Identity assertion JWT authorization grant (accepted for compatibility).
    OAuth2IdJag,
    /// Forward the caller's credentials untouched (accepted for compatibility).
    TruePassthrough,
    /// Delegate OAuth to the upstream (accepted for compatibility).
    OAuthDelegate,
}

impl AuthType {
    /// Every value LiteLLM accepts, as written in YAML.
    pub const ALL: [(&'static str, AuthType); 12] = [
        ("none", Self::None),
        ("api_key", Self::ApiKey),
        ("bearer_token", Self::BearerToken),
        ("basic", Self::Basic),
        ("authorization", Self::Authorization),
        ("token", Self::Token),
        ("oauth2", Self::OAuth2),
        ("oauth2_token_exchange", Self::OAuth2TokenExchange),
        ("aws_sigv4", Self::AwsSigV4),
        ("oauth2_id_jag", Self::OAuth2IdJag),
        ("true_passthrough", Self::TruePassthrough),
        ("oauth_delegate", Self::OAuthDelegate),
    ];

    /// Parses the YAML spelling.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().find(|(name, _)| *name == value).map(|(_, auth)| *auth)
    }

    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, auth)| *auth == self).map_or("none", |(name, _)| name)
    }
}

/// What flow selection reads of one server's configuration: its own small input, so the policy
/// does not depend on the LiteLLM configuration model (which builds it with
/// `ServerEntry::flow_input`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowInput<'a> {
    /// `auth_type`.
    pub auth_type: Option<AuthType>,
    /// `oauth2_flow`.
    pub oauth2_flow: Option<OAuth2Flow>,
    /// `authorization_url`.
    pub authorization_url: Option<&'a str>,
    /// `token_url`.
    pub token_url: Option<&'a str>,
    /// `client_id`.
    pub client_id: Option<&'a str>,
    /// `client_secret`, exposed only to test that it is present.
    pub client_secret: Option<&'a str>,
}

/// The value of `oauth2_flow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuth2Flow {
    /// Machine-to-machine: the gateway fetches a token with its own client credentials.
    ClientCredentials,
    /// Interactive: authorization code with PKCE, per user.
    AuthorizationCode,
}

/// The flow a server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// OAuth 2.0 client credentials (M2M).
    ClientCredentials,
    /// OAuth 2.0 authorization code + PKCE (interactive).
    AuthorizationCode,
    /// RFC 8693 token exchange on behalf of the caller.
    TokenExchange,
    /// No OAuth flow (static credentials or none).
    None,
}

impl Flow {
    /// The stable name used by `eval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::TokenExchange => "token_exchange",
            Self::None => "none",
        }
    }

    /// Whether a browser takes part (the gateway's authorize/token/register endpoints serve it).
    pub fn is_interactive(self) -> bool {
        self == Self::AuthorizationCode
    }
}

/// The selected flow and whether it was inferred rather than configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSelection {
    /// The flow.
    pub flow: Flow,
    /// `true` when `oauth2_flow` was absent and the flow was guessed from other fields.
    pub inferred: bool,
}

fn present(value: Option<&str>) -> bool {
    value.is_some_and(|value| !value.trim().is_empty())
}

/// Selects the flow for one server entry (design §4.1).
pub fn select_flow(entry: &FlowInput<'_>) -> Result<FlowSelection, FlowError> {
    let has_client_id = present(entry.client_id);
    let has_client_secret = present(entry.client_secret);
    match entry.oauth2_flow {
        Some(OAuth2Flow::ClientCredentials) => {
            if !(has_client_id && has_client_secret) {
                return Err(FlowError::ClientCredentialsWithoutCredentials {
                    missing: match (has_client_id, has_client_secret) {
                        (false, false) => "client_id and client_secret",
                        (false, true) => "client_id",
                        _ => "client_secret",
                    },
                });
            }
            return Ok(FlowSelection { flow: Flow::ClientCredentials, inferred: false });
        }
        Some(OAuth2Flow::AuthorizationCode) => {
            return Ok(FlowSelection { flow: Flow::AuthorizationCode, inferred: false });
        }
        None => {}
    }
    let flow = match entry.auth_type {
        Some(AuthType::OAuth2) => {
            if present(entry.authorization_url) {
                Flow::AuthorizationCode
            } else if present(entry.token_url) && has_client_id && has_client_secret {
                Flow::ClientCredentials
            } else {
                Flow::AuthorizationCode
            }
        }
        Some(AuthType::OAuth2TokenExchange) => Flow::TokenExchange,
        _ => Flow::None,
    };
    Ok(FlowSelection { flow, inferred: matches!(flow, Flow::ClientCredentials | Flow::AuthorizationCode) })
}

/// A server's flow cannot be determined from its configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// `oauth2_flow: client_credentials` without the credentials it needs.
    #[error("oauth2_flow is client_credentials but {missing} is not set")]
    ClientCredentialsWithoutCredentials {
        /// Which credential is missing.
        missing: &'static str,
    },
}

impl FlowError {
    /// The configuration field to change.
    pub fn field(&self) -> &'static str {
        match self {
            Self::ClientCredentialsWithoutCredentials { .. } => "oauth2_flow",
        }
    }

    /// What to change.
    pub fn fix(&self) -> String {
        match self {
            Self::ClientCredentialsWithoutCredentials { missing } => {
                format!("set {missing} (os.environ/NAME works), or use oauth2_flow: authorization_code")
            }
        }
    }
}

impl Reason for FlowError {
    fn reason(&self) -> &'static str {
        match self {
            Self::ClientCredentialsWithoutCredentials { .. } => "client_credentials_without_credentials",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::ServerEntry;

    fn select(entry: Value) -> Result<FlowSelection, FlowError> {
        let object = entry.as_object().cloned().unwrap_or_default();
        let env = |name: &str| (name == "CLIENT_SECRET").then(|| "from-env".to_owned());
        let entry = ServerEntry::from_json("s", &object, &env).expect("entry loads");
        select_flow(&entry.flow_input())
    }

    fn flow(entry: Value) -> &'static str {
        select(entry).unwrap().flow.as_str()
    }

    #[test]
    fn explicit_oauth2_flow_wins() {
        let full = json!({"auth_type": "oauth2", "authorization_url": "https://a/authorize", "token_url": "https://a/token", "client_id": "id", "client_secret": "s"});
        let mut explicit = full.clone();
        explicit["oauth2_flow"] = json!("client_credentials");
        assert_eq!(flow(explicit), "client_credentials");
        let mut interactive = full;
        interactive["authorization_url"] = Value::Null;
        interactive["oauth2_flow"] = json!("authorization_code");
        let selection = select(interactive).unwrap();
        assert_eq!((selection.flow, selection.inferred), (Flow::AuthorizationCode, false));
    }

    #[test]
    fn inference_for_oauth2() {
        assert_eq!(
            flow(
                json!({"auth_type": "oauth2", "authorization_url": "https://a/authorize", "token_url": "https://a/token", "client_id": "id", "client_secret": "s"})
            ),
            "authorization_code"
        );
        let inferred = select(json!({"auth_type": "oauth2", "token_url": "https://a/token", "client_id": "id", "client_secret": "s"})).unwrap();
        assert_eq!((inferred.flow, inferred.inferred), (Flow::ClientCredentials, true));
        assert_eq!(
            flow(json!({"auth_type": "oauth2", "token_url": "https://a/token", "client_id": "id"})),
            "authorization_code"
        );
        assert_eq!(
            flow(
                json!({"auth_type": "oauth2", "token_url": "https://a/token", "client_id": "id", "client_secret": ""})
            ),
            "authorization_code"
        );
        assert_eq!(flow(json!({"auth_type": "oauth2"})), "authorization_code");
    }

    #[test]
    fn other_auth_types() {
        assert_eq!(flow(json!({"auth_type": "oauth2_token_exchange"})), "token_exchange");
        assert_eq!(flow(json!({"auth_type": "bearer_token", "authentication_token": "t"})), "none");
        assert_eq!(flow(json!({})), "none");
        assert_eq!(
            flow(json!({"auth_type": "none", "oauth2_flow": "authorization_code"})),
            "authorization_code"
        );
    }

    #[test]
    fn client_credentials_needs_both_credentials() {
        for entry in [
            json!({"auth_type": "oauth2", "oauth2_flow": "client_credentials"}),
            json!({"auth_type": "oauth2", "oauth2_flow": "client_credentials", "client_id": "id"}),
            json!({"auth_type": "oauth2", "oauth2_flow": "client_credentials", "client_secret": "s"}),
        ] {
            let error = select(entry).unwrap_err();
            assert_eq!(error.reason(), "client_credentials_without_credentials");
        }
        assert_eq!(
            flow(
                json!({"auth_type": "oauth2", "oauth2_flow": "client_credentials", "client_id": "id", "client_secret": "os.environ/CLIENT_SECRET"})
            ),
            "client_credentials"
        );
    }

    #[test]
    fn unknown_values_and_missing_variables_fail_at_load() {
        let env = |_: &str| None;
        for entry in [
            json!({"auth_type": "oauth2", "oauth2_flow": "implicit"}),
            json!({"auth_type": "oauth3"}),
            json!({"auth_type": "oauth2", "client_secret": "os.environ/NOPE"}),
            json!({"auth_type": "oauth2", "delegate_auth_to_upstream": "true"}),
        ] {
            let object = entry.as_object().cloned().unwrap();
            let errors = ServerEntry::from_json("s", &object, &env).unwrap_err();
            assert!(!errors.is_empty(), "{entry}");
        }
        let object = json!({"client_secret": "os.environ/NOPE"}).as_object().cloned().unwrap();
        let errors = ServerEntry::from_json("s", &object, &env).unwrap_err();
        assert!(errors[0].message.contains("NOPE"));
        assert_eq!(errors[0].field.as_deref(), Some("client_secret"));
    }
}
