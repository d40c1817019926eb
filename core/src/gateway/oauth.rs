//! What the browser-facing OAuth endpoints share: the per-peer budgets, the bounds on an
//! authorization request, and small readers for queries and forms. The endpoints themselves are
//! the authorization-server facade in `authz.rs` (design §4.8).

use std::collections::HashMap;

use super::*;

/// The longest `state` a client may send to `/{server}/authorize`, in bytes.
pub const MAX_CLIENT_STATE: usize = 512;

/// The longest value of any `/{server}/authorize` parameter, in bytes.
pub const MAX_AUTHORIZE_PARAMETER: usize = 2048;

/// What the gateway keeps for strangers' OAuth traffic: the per-peer budgets of the OAuth routes.
/// Nothing about a flow is kept here: every flow travels sealed (design §4.10). A server locks it
/// only for routes where [`Route::is_oauth`] holds.
#[derive(Debug)]
pub struct OAuthState {
    /// What each peer may still ask of the OAuth routes.
    pub budget: PeerBudget,
    /// Wrong gateway keys at the consent page, per peer (429 past it).
    pub consent_failures: PeerBudget,
    /// The clients the gateway registered for itself upstream, per server and origin: a
    /// per-process cache of the registrations the grant store keeps (design §4.8), read before
    /// the store.
    upstream_clients: HashMap<(String, String), UpstreamClientInfo>,
    /// Client ID Metadata Documents fetched, by URL (design §4.8).
    pub client_documents: ClientDocuments,
}

/// The most upstream registrations kept (servers × pinned origins is small).
const MAX_UPSTREAM_CLIENTS: usize = 256;

impl Default for OAuthState {
    fn default() -> Self {
        Self {
            budget: PeerBudget::new(BudgetConfig::OAUTH_ENDPOINTS),
            consent_failures: PeerBudget::new(BudgetConfig::CONSENT_FAILURES),
            upstream_clients: HashMap::new(),
            client_documents: ClientDocuments::default(),
        }
    }
}

impl OAuthState {
    /// Keeps the client the gateway registered for itself at `server`'s upstream, under `origin`.
    pub fn remember_upstream_client(&mut self, server: String, origin: &Origin, client: UpstreamClientInfo) {
        if self.upstream_clients.len() >= MAX_UPSTREAM_CLIENTS {
            self.upstream_clients.clear();
        }
        self.upstream_clients.insert((server, origin.to_string()), client);
    }

    /// Caches a Client ID Metadata Document an authorization fetched, from `now` for its lifetime.
    pub fn remember_client_document(&mut self, document: ClientDocument, now: Instant) {
        let until = now.plus(document.lifetime);
        self.client_documents.insert(document.url, document.client, until);
    }

    /// The client the gateway registered at `server`'s upstream under `origin`, if any.
    pub fn upstream_client(&self, server: &str, origin: &Origin) -> Option<UpstreamClientInfo> {
        self.upstream_clients.get(&(server.to_owned(), origin.to_string())).cloned()
    }
}

pub(super) fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    let query = path_and_query.split_once('?').map(|(_, query)| query).unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The single value of a query parameter; a repeated parameter is ambiguous and refused.
pub(super) fn single(pairs: &[(String, String)], name: &str) -> Result<Option<String>, String> {
    let mut values = pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(format!("parameter `{name}` is repeated"));
    }
    Ok(first)
}

/// The most parameters an authorization request may carry.
pub(super) const MAX_AUTHORIZE_PARAMETERS: usize = 32;

/// Refuses an authorization request whose parameters are too many or too long: a stranger must
/// not make the gateway hold more than a few KiB per flow.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
pub(super) fn check_authorize_sizes(pairs: &[(String, String)]) -> Result<(), Response<Vec<u8>>> {
    let refuse = |why: String| Err(error_response(StatusCode::BAD_REQUEST, "invalid_request", &why));
    if pairs.len() > MAX_AUTHORIZE_PARAMETERS {
        return refuse(format!("more than {MAX_AUTHORIZE_PARAMETERS} parameters"));
    }
    for (name, value) in pairs {
        if name.len() > MAX_AUTHORIZE_PARAMETER || value.len() > MAX_AUTHORIZE_PARAMETER {
            return refuse(format!("a parameter is longer than {MAX_AUTHORIZE_PARAMETER} bytes"));
        }
        if name == "state" && value.len() > MAX_CLIENT_STATE {
            return refuse(format!("state is longer than {MAX_CLIENT_STATE} bytes"));
        }
    }
    Ok(())
}

pub(super) fn redirect(location: &Url) -> Response<Vec<u8>> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location.as_str()) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The body of a form request, parsed; a repeated field is refused.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    for (index, (name, _)) in pairs.iter().enumerate() {
        if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(format!("form field `{name}` is repeated"));
        }
    }
    Ok(pairs)
}
