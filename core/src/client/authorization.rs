//! The authorization-code request and its callback (RFC 6749 §4.1, RFC 7636, RFC 8707, RFC 9207).
//!
//! Building the authorization URL and judging the redirect that comes back are pure functions:
//! the random bytes for PKCE and `state` come from the caller. The callback is accepted only when
//! `state` matches and the RFC 9207 `iss` parameter is exactly right, so a code from a mixed-up
//! or malicious authorization server is never sent to the token endpoint.

use url::Url;

use crate::Reason;
use crate::metadata::AuthorizationServerMetadata;
use crate::pkce::{METHOD, Pkce, state_from_random};
use crate::secret::Secret;

/// The scope this crate never asks for unless the server lists it.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// What the authorization request needs besides the server's metadata.
#[derive(Clone, Debug)]
pub struct AuthorizationParams<'a> {
    /// The registered client ID.
    pub client_id: &'a str,
    /// Where the browser returns.
    pub redirect_uri: &'a Url,
    /// Scopes to request (before filtering `offline_access`).
    pub scopes: &'a [String],
    /// The RFC 8707 resource indicator, identical on the token request.
    pub resource: &'a str,
    /// The issuer the metadata was fetched for (for the `iss` check).
    pub issuer: &'a str,
    /// Proceed without `S256` in `code_challenge_methods_supported` (some providers omit the field).
    pub assume_s256: bool,
}

/// A pending authorization: the URL to open and what the callback must match.
#[derive(Clone, Debug)]
pub struct PendingAuthorization {
    /// The URL to send the browser to.
    pub url: Url,
    /// The `state` bound to this flow.
    pub state: Secret,
    /// The PKCE pair.
    pub pkce: Pkce,
    /// The redirect URI sent (repeated on the token request).
    pub redirect_uri: Url,
    /// The resource indicator sent (repeated on the token request).
    pub resource: String,
    /// The scopes actually requested.
    pub scopes: Vec<String>,
    /// The expected issuer.
    pub issuer: String,
    /// Whether the server promised an `iss` parameter.
    pub iss_required: bool,
}

/// The scopes to request: duplicates dropped, `offline_access` removed unless the server lists it,
/// and added when the server lists it and other scopes are requested (so a refresh token can be
/// issued; with no scopes at all the `scope` parameter stays omitted).
pub fn filter_scopes(scopes: &[String], metadata: &AuthorizationServerMetadata) -> Vec<String> {
    let offered = metadata.scopes_supported.as_deref().unwrap_or_default();
    let offline_offered = offered.iter().any(|s| s == OFFLINE_ACCESS);
    let mut out: Vec<String> = Vec::with_capacity(scopes.len() + 1);
    for scope in scopes {
        if scope == OFFLINE_ACCESS && !offline_offered {
            continue;
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    if offline_offered && !out.is_empty() && !out.iter().any(|s| s == OFFLINE_ACCESS) {
        out.push(OFFLINE_ACCESS.to_owned());
    }
    out
}

/// Builds the authorization URL from 48 random bytes (32 for the PKCE verifier, 16 for `state`).
pub fn authorization_request(
    metadata: &AuthorizationServerMetadata,
    params: &AuthorizationParams<'_>,
    random: [u8; 48],
) -> Result<PendingAuthorization, AuthorizationError> {
    let endpoint =
        metadata.authorization_endpoint.as_deref().ok_or(AuthorizationError::NoAuthorizationEndpoint)?;
    let mut url = Url::parse(endpoint).map_err(|_| AuthorizationError::InvalidEndpoint)?;
    if !matches!(url.scheme(), "https" | "http") || url.fragment().is_some() {
        return Err(AuthorizationError::InvalidEndpoint);
    }
    let s256_assumed = params.assume_s256 && metadata.code_challenge_methods_supported.is_none();
    if !metadata.supports_s256() && !s256_assumed {
        return Err(AuthorizationError::S256NotSupported);
    }
    let mut verifier = [0u8; 32];
    let mut state = [0u8; 16];
    verifier.copy_from_slice(&random[..32]);
    state.copy_from_slice(&random[32..]);
    let pkce = Pkce::from_random(verifier);
    let state = state_from_random(state);
    let scopes = filter_scopes(params.scopes, metadata);
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", params.client_id)
            .append_pair("redirect_uri", params.redirect_uri.as_str())
            .append_pair("state", &state)
            .append_pair("code_challenge", pkce.challenge())
            .append_pair("code_challenge_method", METHOD)
            .append_pair("resource", params.resource);
        if !scopes.is_empty() {
            query.append_pair("scope", &scopes.join(" "));
        }
    }
    Ok(PendingAuthorization {
        url,
        state: Secret::new(state),
        pkce,
        redirect_uri: params.redirect_uri.clone(),
        resource: params.resource.to_owned(),
        scopes,
        issuer: params.issuer.to_owned(),
        iss_required: metadata.authorization_response_iss_parameter_supported,
    })
}

/// Judges the redirect back from the authorization server; returns the code to exchange.
pub fn handle_callback(pending: &PendingAuthorization, callback: &Url) -> Result<Secret, CallbackError> {
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    let mut iss = None;
    for (name, value) in callback.query_pairs() {
        let slot = match name.as_ref() {
            "state" => &mut state,
            "code" => &mut code,
            "error" => &mut error,
            "error_description" => &mut description,
            "iss" => &mut iss,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(CallbackError::DuplicateParameter);
        }
    }
    match state {
        Some(state) if pending.state.constant_time_eq(&state) => {}
        _ => return Err(CallbackError::StateMismatch),
    }
    // RFC 9207: an advertised iss must be present and exact; a present one must always be exact.
    match (&iss, pending.iss_required) {
        (None, true) => return Err(CallbackError::MissingIssuer),
        (Some(iss), _) if iss != &pending.issuer => return Err(CallbackError::WrongIssuer),
        _ => {}
    }
    if let Some(error) = error {
        return Err(CallbackError::Denied { error, description });
    }
    code.filter(|code| !code.is_empty()).map(Secret::new).ok_or(CallbackError::MissingCode)
}

/// The authorization request cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// The metadata has no `authorization_endpoint`.
    #[error("the authorization server publishes no authorization_endpoint")]
    NoAuthorizationEndpoint,
    /// The endpoint is not an http(s) URL without fragment.
    #[error("the authorization_endpoint is not a valid http(s) URL")]
    InvalidEndpoint,
    /// `S256` is not in `code_challenge_methods_supported`.
    #[error("the authorization server does not advertise PKCE S256; refusing the interactive flow")]
    S256NotSupported,
}

impl Reason for AuthorizationError {
    fn reason(&self) -> &'static str {
        match self {
            Self::NoAuthorizationEndpoint => "no_authorization_endpoint",
            Self::InvalidEndpoint => "invalid_authorization_endpoint",
            Self::S256NotSupported => "s256_not_supported",
        }
    }
}

/// The redirect back is not a usable authorization response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// `state` is missing or differs.
    #[error("the callback's state does not match this flow")]
    StateMismatch,
    /// A parameter appears twice.
    #[error("the callback repeats a parameter")]
    DuplicateParameter,
    /// The server promised `iss` but sent none.
    #[error("the authorization server advertises the iss parameter but the callback has none")]
    MissingIssuer,
    /// `iss` is not the expected issuer.
    #[error("the callback's iss parameter names another authorization server")]
    WrongIssuer,
    /// The server answered with an OAuth error.
    #[error("the authorization server refused: {error}")]
    Denied {
        /// The OAuth error code.
        error: String,
        /// Its description, if any.
        description: Option<String>,
    },
    /// No `code`.
    #[error("the callback carries no authorization code")]
    MissingCode,
}

impl Reason for CallbackError {
    fn reason(&self) -> &'static str {
        match self {
            Self::StateMismatch => "state_mismatch",
            Self::DuplicateParameter => "duplicate_parameter",
            Self::MissingIssuer => "missing_iss",
            Self::WrongIssuer => "wrong_iss",
            // The server's own code where it is a registered one (RFC 6749 §4.1.2.1, RFC 8707,
            // OpenID Connect); anything else is reported as a refusal, never as access_denied.
            Self::Denied { error, .. } => match error.as_str() {
                "access_denied" => "access_denied",
                "invalid_request" => "invalid_request",
                "unauthorized_client" => "unauthorized_client",
                "unsupported_response_type" => "unsupported_response_type",
                "invalid_scope" => "invalid_scope",
                "server_error" => "server_error",
                "temporarily_unavailable" => "temporarily_unavailable",
                "invalid_target" => "invalid_target",
                "login_required" => "login_required",
                "consent_required" => "consent_required",
                "interaction_required" => "interaction_required",
                _ => "authorization_refused",
            },
            Self::MissingCode => "missing_code",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(iss: bool) -> AuthorizationServerMetadata {
        AuthorizationServerMetadata {
            issuer: "https://auth.example.com".into(),
            authorization_endpoint: Some("https://auth.example.com/authorize?tenant=1".into()),
            code_challenge_methods_supported: Some(vec!["S256".into()]),
            authorization_response_iss_parameter_supported: iss,
            scopes_supported: Some(vec!["mcp".into()]),
            ..AuthorizationServerMetadata::default()
        }
    }

    fn pending(iss: bool) -> PendingAuthorization {
        let redirect = Url::parse("http://127.0.0.1:33418/callback").unwrap();
        let scopes = vec!["mcp".to_owned(), "offline_access".to_owned(), "mcp".to_owned()];
        let params = AuthorizationParams {
            client_id: "client-1",
            redirect_uri: &redirect,
            scopes: &scopes,
            resource: "https://mcp.example.com/mcp",
            issuer: "https://auth.example.com",
            assume_s256: false,
        };
        authorization_request(&metadata(iss), &params, [9; 48]).unwrap()
    }

    fn callback(query: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:33418/callback?{query}")).unwrap()
    }

    #[test]
    fn the_url_carries_pkce_state_resource_and_filtered_scopes() {
        let pending = pending(false);
        let pairs: Vec<(String, String)> = pending.url.query_pairs().into_owned().collect();
        let get = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("tenant"), Some("1"));
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(get("code_challenge"), Some(pending.pkce.challenge()));
        assert_eq!(get("resource"), Some("https://mcp.example.com/mcp"));
        assert_eq!(get("scope"), Some("mcp"), "offline_access is dropped when not offered");
        assert_eq!(get("state"), Some(pending.state.expose()));
    }

    #[test]
    fn offline_access_only_when_offered() {
        let mut offered = metadata(false);
        offered.scopes_supported = Some(vec!["mcp".into(), OFFLINE_ACCESS.into()]);
        assert_eq!(filter_scopes(&["mcp".into()], &offered), ["mcp", OFFLINE_ACCESS]);
        assert!(filter_scopes(&[], &offered).is_empty());
        assert_eq!(filter_scopes(&["mcp".into(), OFFLINE_ACCESS.into()], &metadata(false)), ["mcp"]);
    }

    #[test]
    fn s256_is_required_unless_the_escape_hatch_applies() {
        let mut without = metadata(false);
        without.code_challenge_methods_supported = Some(vec!["plain".into()]);
        let redirect = Url::parse("http://localhost/cb").unwrap();
        let mut params = AuthorizationParams {
            client_id: "c",
            redirect_uri: &redirect,
            scopes: &[],
            resource: "r",
            issuer: "i",
            assume_s256: true,
        };
        assert_eq!(
            authorization_request(&without, &params, [0; 48]).unwrap_err(),
            AuthorizationError::S256NotSupported
        );
        without.code_challenge_methods_supported = None;
        assert!(authorization_request(&without, &params, [0; 48]).is_ok());
        params.assume_s256 = false;
        assert_eq!(
            authorization_request(&without, &params, [0; 48]).unwrap_err(),
            AuthorizationError::S256NotSupported
        );
    }

    #[test]
    fn callbacks_need_the_right_state_and_iss() {
        let plain = pending(false);
        let state = plain.state.expose().to_owned();
        assert_eq!(
            handle_callback(&plain, &callback(&format!("code=abc&state={state}"))).unwrap().expose(),
            "abc"
        );
        assert_eq!(
            handle_callback(&plain, &callback("code=abc&state=other")).unwrap_err(),
            CallbackError::StateMismatch
        );
        assert_eq!(
            handle_callback(
                &plain,
                &callback(&format!("code=abc&state={state}&iss=https://evil.example.com"))
            )
            .unwrap_err(),
            CallbackError::WrongIssuer
        );
        assert_eq!(
            handle_callback(&plain, &callback(&format!("error=access_denied&state={state}")))
                .unwrap_err()
                .reason(),
            "access_denied"
        );
        assert_eq!(
            handle_callback(&plain, &callback(&format!("error=invalid_target&state={state}")))
                .unwrap_err()
                .reason(),
            "invalid_target",
            "an upstream invalid_target is reported as itself"
        );
        assert_eq!(
            handle_callback(&plain, &callback(&format!("error=made_up&state={state}"))).unwrap_err().reason(),
            "authorization_refused"
        );
        assert_eq!(
            handle_callback(&plain, &callback(&format!("code=a&code=b&state={state}"))).unwrap_err(),
            CallbackError::DuplicateParameter
        );

        let strict = pending(true);
        let state = strict.state.expose().to_owned();
        assert_eq!(
            handle_callback(&strict, &callback(&format!("code=abc&state={state}"))).unwrap_err(),
            CallbackError::MissingIssuer
        );
        let ok = callback(&format!("code=abc&state={state}&iss=https%3A%2F%2Fauth.example.com"));
        assert!(handle_callback(&strict, &ok).is_ok());
        let slash = callback(&format!("code=abc&state={state}&iss=https%3A%2F%2Fauth.example.com%2F"));
        assert_eq!(handle_callback(&strict, &slash).unwrap_err(), CallbackError::WrongIssuer);
    }
}
