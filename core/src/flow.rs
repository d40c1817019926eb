//! OAuth flow selection per server (design §4.1).
//!
//! The flow decides whose identity reaches the upstream: `client_credentials` gives every caller
//! one shared app identity, the interactive flow gives each user their own. An explicit
//! `oauth2_flow` always wins; inference exists only for LiteLLM compatibility, and the loader warns
//! when it infers `client_credentials`.

use crate::Reason;
use crate::config::{AuthType, ServerEntry};

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
pub fn select_flow(entry: &ServerEntry) -> Result<FlowSelection, FlowError> {
    let has_client_id = present(entry.client_id.as_deref());
    let has_client_secret =
        entry.client_secret.as_ref().is_some_and(|secret| !secret.expose().trim().is_empty());
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
            if present(entry.authorization_url.as_deref()) {
                Flow::AuthorizationCode
            } else if present(entry.token_url.as_deref()) && has_client_id && has_client_secret {
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
