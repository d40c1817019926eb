//! Token endpoint requests (RFC 6749 §4.1.3, §4.4, §6; RFC 8693) and their answers.
//!
//! Every grant goes through one builder so client authentication is chosen in one place:
//! `client_secret_basic`, `client_secret_post` or `none`, following what the server advertises
//! (or the configuration, or LiteLLM's `client_secret_post` default when no metadata is known).
//! The RFC 8707 `resource` is repeated exactly as sent on the authorization request.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Method, Request, Response, header};
use url::Url;
use url::form_urlencoded::{Serializer, byte_serialize};

use crate::Reason;
use crate::metadata::{AuthorizationServerMetadata, OAuthErrorResponse, TokenResponse};
use crate::secret::Secret;

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The default RFC 8693 subject token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenEndpointAuth {
    /// HTTP Basic with the form-encoded client ID and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the body.
    ClientSecretPost,
    /// A public client: `client_id` in the body, no secret.
    None,
}

impl TokenEndpointAuth {
    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::None => "none",
        }
    }
}

/// Chooses client authentication: a public client uses `none`; a configured method wins; with
/// metadata, Basic if advertised (or the list is absent, RFC 8414's default), else Post; without
/// metadata, Post.
pub fn choose_token_endpoint_auth(
    metadata: Option<&AuthorizationServerMetadata>,
    has_secret: bool,
    configured: Option<TokenEndpointAuth>,
) -> TokenEndpointAuth {
    if !has_secret {
        return TokenEndpointAuth::None;
    }
    match (configured, metadata) {
        (Some(method), _) => method,
        (None, Some(metadata)) if metadata.supports_auth_method("client_secret_basic") => {
            TokenEndpointAuth::ClientSecretBasic
        }
        (None, Some(_)) | (None, None) => TokenEndpointAuth::ClientSecretPost,
    }
}

/// The client as the token endpoint knows it.
#[derive(Clone, Debug)]
pub struct Client<'a> {
    /// The client ID.
    pub client_id: &'a str,
    /// The client secret, for confidential clients.
    pub client_secret: Option<&'a Secret>,
    /// How to authenticate.
    pub auth: TokenEndpointAuth,
}

/// The grant being requested.
#[derive(Clone, Debug)]
pub enum Grant<'a> {
    /// Exchange an authorization code (with its PKCE verifier and redirect URI).
    AuthorizationCode {
        /// The code from the callback.
        code: &'a Secret,
        /// The PKCE verifier.
        verifier: &'a Secret,
        /// The redirect URI used on the authorization request.
        redirect_uri: &'a Url,
    },
    /// Refresh an access token.
    RefreshToken {
        /// The refresh token.
        refresh_token: &'a Secret,
    },
    /// Machine-to-machine client credentials.
    ClientCredentials,
    /// Not a grant: an RFC 7009 revocation of `token`, sent to the revocation endpoint with the
    /// same client authentication as a token request.
    Revocation {
        /// The token to revoke.
        token: &'a Secret,
        /// `refresh_token` or `access_token`.
        token_type_hint: &'a str,
    },
    /// RFC 8693 token exchange for the caller's token.
    TokenExchange {
        /// The caller's token.
        subject_token: &'a Secret,
        /// Its type (default: access token).
        subject_token_type: &'a str,
        /// The target audience, if configured.
        audience: Option<&'a str>,
    },
}

/// Builds the token request: form body, client authentication, `scope` and `resource`.
pub fn token_request(
    endpoint: &Url,
    client: &Client<'_>,
    grant: &Grant<'_>,
    scopes: &[String],
    resource: Option<&str>,
) -> Result<Request<Vec<u8>>, http::Error> {
    let mut form = Serializer::new(String::new());
    match grant {
        Grant::AuthorizationCode { code, verifier, redirect_uri } => {
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code.expose())
                .append_pair("redirect_uri", redirect_uri.as_str())
                .append_pair("code_verifier", verifier.expose());
        }
        Grant::RefreshToken { refresh_token } => {
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh_token.expose());
        }
        Grant::ClientCredentials => {
            form.append_pair("grant_type", "client_credentials");
        }
        Grant::Revocation { token, token_type_hint } => {
            form.append_pair("token", token.expose()).append_pair("token_type_hint", token_type_hint);
        }
        Grant::TokenExchange { subject_token, subject_token_type, audience } => {
            form.append_pair("grant_type", TOKEN_EXCHANGE_GRANT)
                .append_pair("subject_token", subject_token.expose())
                .append_pair("subject_token_type", subject_token_type)
                .append_pair("requested_token_type", ACCESS_TOKEN_TYPE);
            if let Some(audience) = audience {
                form.append_pair("audience", audience);
            }
        }
    }
    if !scopes.is_empty() {
        form.append_pair("scope", &scopes.join(" "));
    }
    if let Some(resource) = resource {
        form.append_pair("resource", resource);
    }
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(endpoint.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    match (client.auth, client.client_secret) {
        (TokenEndpointAuth::ClientSecretBasic, Some(secret)) => {
            // RFC 6749 §2.3.1: both parts are form-encoded before Base64.
            let user: String = byte_serialize(client.client_id.as_bytes()).collect();
            let password: String = byte_serialize(secret.expose().as_bytes()).collect();
            let credentials = STANDARD.encode(format!("{user}:{password}"));
            builder = builder.header(header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        (TokenEndpointAuth::ClientSecretPost, Some(secret)) => {
            form.append_pair("client_id", client.client_id).append_pair("client_secret", secret.expose());
        }
        _ => {
            form.append_pair("client_id", client.client_id);
        }
    }
    builder.body(form.finish().into_bytes())
}

/// Reads a token endpoint answer: a token on 200, a typed OAuth error otherwise.
pub fn parse_token_response<B: AsRef<[u8]>>(response: &Response<B>) -> Result<TokenResponse, TokenError> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        let token: TokenResponse = serde_json::from_slice(response.body().as_ref())
            .map_err(|error| TokenError::InvalidResponse(error.to_string()))?;
        if token.access_token.is_empty() {
            return Err(TokenError::InvalidResponse("empty access_token".to_owned()));
        }
        if let Some(kind) = &token.token_type
            && !kind.eq_ignore_ascii_case("bearer")
            && !kind.eq_ignore_ascii_case("n_a")
        {
            return Err(TokenError::UnsupportedTokenType(kind.chars().take(32).collect()));
        }
        return Ok(token);
    }
    match serde_json::from_slice::<OAuthErrorResponse>(response.body().as_ref()) {
        Ok(error) => {
            Err(TokenError::Refused { status, error: error.error, description: error.error_description })
        }
        Err(_) => Err(TokenError::Status(status)),
    }
}

/// The token endpoint did not issue a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// An OAuth error response.
    #[error("the token endpoint refused ({status}): {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The OAuth error code.
        error: String,
        /// Its description.
        description: Option<String>,
    },
    /// A non-success status without an OAuth error body.
    #[error("the token endpoint answered HTTP {0}")]
    Status(u16),
    /// A 200 whose body is not a token response.
    #[error("the token response is invalid: {0}")]
    InvalidResponse(String),
    /// A token type other than Bearer.
    #[error("the token type `{0}` is not supported (only Bearer)")]
    UnsupportedTokenType(String),
}

impl Reason for TokenError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "token_refused",
            Self::Status(_) => "token_endpoint_status",
            Self::InvalidResponse(_) => "invalid_token_response",
            Self::UnsupportedTokenType(_) => "unsupported_token_type",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(request: &Request<Vec<u8>>) -> Vec<(String, String)> {
        url::form_urlencoded::parse(request.body()).into_owned().collect()
    }

    #[test]
    fn auth_method_follows_configuration_then_metadata() {
        let mut metadata = AuthorizationServerMetadata::default();
        assert_eq!(
            choose_token_endpoint_auth(Some(&metadata), true, None),
            TokenEndpointAuth::ClientSecretBasic
        );
        metadata.token_endpoint_auth_methods_supported = Some(vec!["client_secret_post".into()]);
        assert_eq!(
            choose_token_endpoint_auth(Some(&metadata), true, None),
            TokenEndpointAuth::ClientSecretPost
        );
        assert_eq!(choose_token_endpoint_auth(None, true, None), TokenEndpointAuth::ClientSecretPost);
        assert_eq!(
            choose_token_endpoint_auth(None, true, Some(TokenEndpointAuth::ClientSecretBasic)),
            TokenEndpointAuth::ClientSecretBasic
        );
        assert_eq!(choose_token_endpoint_auth(Some(&metadata), false, None), TokenEndpointAuth::None);
    }

    #[test]
    fn client_credentials_post_and_basic() {
        let endpoint = Url::parse("https://auth.example.com/token").unwrap();
        let secret = Secret::new("s3cr:t&");
        let scopes = vec!["a".to_owned(), "b".to_owned()];
        let post = Client {
            client_id: "id",
            client_secret: Some(&secret),
            auth: TokenEndpointAuth::ClientSecretPost,
        };
        let request = token_request(&endpoint, &post, &Grant::ClientCredentials, &scopes, None).unwrap();
        let pairs = form(&request);
        assert!(pairs.contains(&("grant_type".into(), "client_credentials".into())));
        assert!(pairs.contains(&("scope".into(), "a b".into())));
        assert!(pairs.contains(&("client_secret".into(), "s3cr:t&".into())));
        assert!(request.headers().get("authorization").is_none());

        let basic = Client { auth: TokenEndpointAuth::ClientSecretBasic, ..post };
        let request =
            token_request(&endpoint, &basic, &Grant::ClientCredentials, &[], Some("https://mcp/x")).unwrap();
        let header = request.headers()["authorization"].to_str().unwrap();
        let decoded = STANDARD.decode(header.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, b"id:s3cr%3At%26");
        assert!(!form(&request).iter().any(|(name, _)| name == "client_secret"));
        assert!(form(&request).contains(&("resource".into(), "https://mcp/x".into())));
    }

    #[test]
    fn token_exchange_and_code_grants() {
        let endpoint = Url::parse("https://auth.example.com/token").unwrap();
        let public = Client { client_id: "cli", client_secret: None, auth: TokenEndpointAuth::None };
        let subject = Secret::new("caller-token");
        let grant = Grant::TokenExchange {
            subject_token: &subject,
            subject_token_type: ACCESS_TOKEN_TYPE,
            audience: Some("api"),
        };
        let pairs = form(&token_request(&endpoint, &public, &grant, &[], None).unwrap());
        assert!(pairs.contains(&("grant_type".into(), TOKEN_EXCHANGE_GRANT.into())));
        assert!(pairs.contains(&("audience".into(), "api".into())));
        assert!(pairs.contains(&("client_id".into(), "cli".into())));
        let code = Secret::new("code-1");
        let verifier = Secret::new("v".repeat(43));
        let redirect = Url::parse("http://127.0.0.1:1/cb").unwrap();
        let grant = Grant::AuthorizationCode { code: &code, verifier: &verifier, redirect_uri: &redirect };
        let pairs = form(&token_request(&endpoint, &public, &grant, &[], Some("https://mcp/")).unwrap());
        assert!(pairs.contains(&("code_verifier".into(), "v".repeat(43))));
        assert!(pairs.contains(&("redirect_uri".into(), "http://127.0.0.1:1/cb".into())));
    }

    #[test]
    fn token_responses_are_typed() {
        let ok = Response::builder()
            .status(200)
            .body(br#"{"access_token":"at","token_type":"bearer","expires_in":"3600"}"#.to_vec())
            .unwrap();
        let token = parse_token_response(&ok).unwrap();
        assert_eq!(token.expires_in, Some(3600));
        assert!(!format!("{token:?}").contains("\"at\""));
        let refused =
            Response::builder().status(400).body(br#"{"error":"invalid_client"}"#.to_vec()).unwrap();
        assert_eq!(parse_token_response(&refused).unwrap_err().reason(), "token_refused");
        let broken = Response::builder().status(200).body(b"<html>".to_vec()).unwrap();
        assert_eq!(parse_token_response(&broken).unwrap_err().reason(), "invalid_token_response");
        let mac = Response::builder()
            .status(200)
            .body(br#"{"access_token":"a","token_type":"mac"}"#.to_vec())
            .unwrap();
        assert_eq!(parse_token_response(&mac).unwrap_err().reason(), "unsupported_token_type");
        let server = Response::builder().status(500).body(b"oops".to_vec()).unwrap();
        assert_eq!(parse_token_response(&server).unwrap_err(), TokenError::Status(500));
    }
}
