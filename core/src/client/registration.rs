//! Getting a client ID at an authorization server (MCP authorization, RFC 7591).
//!
//! In order of preference: pre-registered credentials from the configuration; a client ID
//! metadata document (its HTTPS URL *is* the client ID) when the server advertises
//! `client_id_metadata_document_supported`; RFC 7591 dynamic registration. A registration belongs
//! to the issuer that issued it and is never offered to another authorization server.

use std::collections::HashMap;

use http::{Method, Request, Response, header};
use serde::Deserialize;
use url::Url;

use crate::Reason;
use crate::metadata::AuthorizationServerMetadata;
use crate::secret::Secret;

/// A client identity at one authorization server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The issuer this registration belongs to.
    pub issuer: String,
    /// The client ID.
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Secret>,
    /// The token endpoint auth method the server assigned, if it said.
    pub token_endpoint_auth_method: Option<String>,
    /// How it was obtained.
    pub source: RegistrationSource,
}

/// How a client identity was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationSource {
    /// Configured `client_id` (and secret).
    PreRegistered,
    /// A client ID metadata document URL.
    MetadataDocument,
    /// RFC 7591 dynamic registration.
    Dynamic,
}

/// Registrations by issuer; looking one up for another issuer finds nothing.
#[derive(Clone, Debug, Default)]
pub struct RegistrationStore(HashMap<String, Registration>);

impl RegistrationStore {
    /// The registration for `issuer`, if any.
    pub fn get(&self, issuer: &str) -> Option<&Registration> {
        self.0.get(issuer).filter(|registration| registration.issuer == issuer)
    }

    /// Keeps a registration under its own issuer.
    pub fn insert(&mut self, registration: Registration) {
        self.0.insert(registration.issuer.clone(), registration);
    }
}

/// What the client knows about itself before talking to the server.
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity {
    /// A pre-registered client ID.
    pub client_id: Option<String>,
    /// Its secret.
    pub client_secret: Option<Secret>,
    /// The HTTPS URL of this client's metadata document, if it publishes one.
    pub metadata_document_url: Option<Url>,
    /// `client_name` for dynamic registration.
    pub client_name: String,
}

/// The next registration step.
#[derive(Debug)]
pub enum RegistrationPlan {
    /// Use this identity as it is.
    Ready(Registration),
    /// Send this dynamic registration request and read the answer with [`parse_registration_response`].
    Register(Request<Vec<u8>>),
}

/// Decides how to get a client ID at `issuer` (see the module docs for the order).
pub fn plan_registration(
    issuer: &str,
    metadata: &AuthorizationServerMetadata,
    identity: &ClientIdentity,
    redirect_uris: &[Url],
    scopes: &[String],
    store: &RegistrationStore,
) -> Result<RegistrationPlan, RegistrationError> {
    if let Some(client_id) = &identity.client_id {
        return Ok(RegistrationPlan::Ready(Registration {
            issuer: issuer.to_owned(),
            client_id: client_id.clone(),
            client_secret: identity.client_secret.clone(),
            token_endpoint_auth_method: None,
            source: RegistrationSource::PreRegistered,
        }));
    }
    if let Some(existing) = store.get(issuer) {
        return Ok(RegistrationPlan::Ready(existing.clone()));
    }
    if metadata.client_id_metadata_document_supported
        && let Some(url) = &identity.metadata_document_url
    {
        return Ok(RegistrationPlan::Ready(Registration {
            issuer: issuer.to_owned(),
            client_id: url.to_string(),
            client_secret: None,
            token_endpoint_auth_method: Some("none".to_owned()),
            source: RegistrationSource::MetadataDocument,
        }));
    }
    let endpoint =
        metadata.registration_endpoint.as_deref().ok_or(RegistrationError::NoRegistrationEndpoint)?;
    let loopback = redirect_uris.iter().all(|uri| {
        matches!(uri.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
            || !matches!(uri.scheme(), "http" | "https")
    });
    let mut body = serde_json::json!({
        "client_name": identity.client_name,
        "redirect_uris": redirect_uris.iter().map(Url::as_str).collect::<Vec<_>>(),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": if loopback { "native" } else { "web" },
    });
    if !scopes.is_empty() {
        body["scope"] = serde_json::Value::String(scopes.join(" "));
    }
    Request::builder()
        .method(Method::POST)
        .uri(endpoint)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body.to_string().into_bytes())
        .map(RegistrationPlan::Register)
        .map_err(|_| RegistrationError::InvalidEndpoint)
}

#[derive(Deserialize)]
struct RegistrationResponse {
    client_id: String,
    #[serde(default)]
    client_secret: Option<Secret>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
}

/// Reads an RFC 7591 answer (200 or 201 with a `client_id`) into a registration for `issuer`.
pub fn parse_registration_response(
    issuer: &str,
    response: &Response<Vec<u8>>,
) -> Result<Registration, RegistrationError> {
    if !response.status().is_success() {
        return Err(RegistrationError::Status(response.status().as_u16()));
    }
    let parsed: RegistrationResponse = serde_json::from_slice(response.body())
        .map_err(|error| RegistrationError::InvalidResponse(error.to_string()))?;
    if parsed.client_id.is_empty() {
        return Err(RegistrationError::InvalidResponse("empty client_id".to_owned()));
    }
    Ok(Registration {
        issuer: issuer.to_owned(),
        client_id: parsed.client_id,
        client_secret: parsed.client_secret.filter(|secret| !secret.is_empty()),
        token_endpoint_auth_method: parsed.token_endpoint_auth_method,
        source: RegistrationSource::Dynamic,
    })
}

/// No client ID could be obtained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// Nothing configured, no metadata document support, no registration endpoint.
    #[error(
        "no client_id is configured and the authorization server offers no registration endpoint; set client_id"
    )]
    NoRegistrationEndpoint,
    /// The registration endpoint is not a valid URL.
    #[error("the registration_endpoint is not a valid URL")]
    InvalidEndpoint,
    /// The server refused the registration.
    #[error("dynamic client registration failed with HTTP {0}")]
    Status(u16),
    /// The answer is not a registration.
    #[error("the registration response is invalid: {0}")]
    InvalidResponse(String),
}

impl Reason for RegistrationError {
    fn reason(&self) -> &'static str {
        match self {
            Self::NoRegistrationEndpoint => "no_registration_endpoint",
            Self::InvalidEndpoint => "invalid_registration_endpoint",
            Self::Status(_) => "registration_failed",
            Self::InvalidResponse(_) => "invalid_registration_response",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> AuthorizationServerMetadata {
        AuthorizationServerMetadata {
            issuer: "https://auth.example.com".into(),
            registration_endpoint: Some("https://auth.example.com/register".into()),
            ..AuthorizationServerMetadata::default()
        }
    }

    fn redirect() -> Vec<Url> {
        vec![Url::parse("http://127.0.0.1:33418/callback").unwrap()]
    }

    #[test]
    fn preference_order() {
        let store = RegistrationStore::default();
        let configured = ClientIdentity { client_id: Some("pre".into()), ..ClientIdentity::default() };
        let plan =
            plan_registration("https://auth.example.com", &metadata(), &configured, &redirect(), &[], &store)
                .unwrap();
        assert!(matches!(
            plan,
            RegistrationPlan::Ready(Registration { source: RegistrationSource::PreRegistered, .. })
        ));

        let mut cimd = metadata();
        cimd.client_id_metadata_document_supported = true;
        let identity = ClientIdentity {
            metadata_document_url: Some(Url::parse("https://client.example.com/meta.json").unwrap()),
            ..ClientIdentity::default()
        };
        let plan = plan_registration("https://auth.example.com", &cimd, &identity, &redirect(), &[], &store)
            .unwrap();
        let RegistrationPlan::Ready(registration) = plan else { panic!("expected a ready registration") };
        assert_eq!(registration.client_id, "https://client.example.com/meta.json");

        let plan = plan_registration(
            "https://auth.example.com",
            &metadata(),
            &identity,
            &redirect(),
            &["mcp".into()],
            &store,
        )
        .unwrap();
        let RegistrationPlan::Register(request) = plan else { panic!("expected dynamic registration") };
        let body: serde_json::Value = serde_json::from_slice(request.body()).unwrap();
        assert_eq!(body["grant_types"], serde_json::json!(["authorization_code", "refresh_token"]));
        assert_eq!(body["application_type"], "native");
        assert_eq!(body["redirect_uris"][0], "http://127.0.0.1:33418/callback");
        assert_eq!(body["scope"], "mcp");
    }

    #[test]
    fn registrations_stay_with_their_issuer() {
        let mut store = RegistrationStore::default();
        let response = Response::builder()
            .status(201)
            .body(br#"{"client_id":"dyn-1","client_secret":"s"}"#.to_vec())
            .unwrap();
        store.insert(parse_registration_response("https://a.example.com", &response).unwrap());
        assert!(store.get("https://a.example.com").is_some());
        assert!(store.get("https://b.example.com").is_none());
        let mut other = metadata();
        other.registration_endpoint = None;
        let error = plan_registration(
            "https://b.example.com",
            &other,
            &ClientIdentity::default(),
            &redirect(),
            &[],
            &store,
        )
        .unwrap_err();
        assert_eq!(error, RegistrationError::NoRegistrationEndpoint);
    }

    #[test]
    fn bad_answers_are_typed() {
        let refused = Response::builder().status(400).body(Vec::new()).unwrap();
        assert_eq!(parse_registration_response("i", &refused).unwrap_err(), RegistrationError::Status(400));
        let junk = Response::builder().status(201).body(b"{}".to_vec()).unwrap();
        assert_eq!(
            parse_registration_response("i", &junk).unwrap_err().reason(),
            "invalid_registration_response"
        );
    }
}
