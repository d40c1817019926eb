//! Fuzz harnesses for the OAuth client machines ([`Discovery`] and [`Session`]) against an
//! adversarial network (design §4.2 step 7, §4.9).
//!
//! The fuzzer's bytes script every answer the machine gets, in turn: a transport failure, raw
//! status, headers and body, or a template (a challenge, resource or authorization-server
//! metadata, a token or registration answer, a browser redirect, an MCP result) filled with URLs
//! picked from a list of hostile ones. Whatever the answers, the machine must never emit a request
//! to a target the fetch policy refuses, never fetch resource metadata from another origin, never
//! send a configured client secret to an endpoint configuration did not pin, never panic, and
//! finish.

use base64::Engine;
use http::Response;
use serde_json::{Value, json};
use url::Url;

use crate::client::discovery::{ConfiguredEndpoints, Discovery, DiscoveryConfig};
use crate::client::session::{GrantKind, Operation, Session, SessionConfig};
use crate::fetch_policy::{check_url, is_local_server};
use crate::machine::{Instant, Machine, Outgoing, Step, TransportError};
use crate::secret::Secret;

/// The configured client secret; it must reach pinned endpoints only.
const SECRET: &str = "fuzz-secret-5f3a9c";
/// The configured client ID.
const CLIENT_ID: &str = "fuzz-client";
/// The most polls a machine may take before it must be done.
const MAX_POLLS: usize = 400;

/// URLs a hostile server may name; the last choice takes a URL from the fuzzer's bytes.
const URLS: &[&str] = &[
    "https://mcp.example.com/prm",
    "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
    "https://mcp.example.com/mcp",
    "https://mcp.example.com/token",
    "https://auth.example.com",
    "https://auth.example.com/tenant",
    "https://auth.example.com/token",
    "https://auth.example.com/register",
    "https://auth.example.com/authorize",
    "http://auth.example.com/register",
    "http://auth.example.com/token",
    "https://evil.example/token",
    "https://evil.example/prm",
    "https://169.254.169.254/latest/meta-data",
    "https://100.100.100.200/",
    "https://[fd20:ce::254]/",
    "https://[64:ff9b::a9fe:a9fe]/token",
    "https://[2002:a9fe:a9fe::1]/",
    "https://[::ffff:10.0.0.1]/register",
    "http://127.0.0.1:8080/token",
    "https://localhost/token",
    "https://user:pw@auth.example.com/token",
    "https://10.0.0.1/register",
    "https://login.microsoftonline.com/contoso/v2.0",
    "file:///etc/passwd",
    "javascript:alert(1)",
];

/// Reads the fuzzer's bytes; past the end every read is zero.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.data.split_first() else { return 0 };
        self.data = rest;
        *first
    }

    fn exhausted(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `max` bytes, length first.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let length = usize::from(self.byte()).min(max).min(self.data.len());
        let (taken, rest) = self.data.split_at(length);
        self.data = rest;
        taken.to_vec()
    }

    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }

    fn url(&mut self) -> String {
        let choice = usize::from(self.byte());
        match URLS.get(choice % (URLS.len() + 1)) {
            Some(url) => (*url).to_owned(),
            None => self.text(96),
        }
    }
}

/// What the harness checks every request against.
struct Rules {
    server_url: Url,
    allow_private: bool,
    token_url: Option<Url>,
    issuer: Option<Url>,
}

impl Rules {
    fn check(&self, outgoing: &Outgoing) {
        let target = outgoing.request().uri().to_string();
        let url = Url::parse(&target).unwrap_or_else(|error| panic!("sent a non-URL `{target}`: {error}"));
        assert_eq!(outgoing.limits().allow_private_addresses, self.allow_private, "{url}: limits");
        assert!(check_url(&url, self.allow_private).is_ok(), "sent to a refused target {url}");
        if outgoing.purpose() == "protected_resource_metadata" {
            assert_eq!(url.origin(), self.server_url.origin(), "resource metadata fetched from {url}");
        }
        if carries_secret(outgoing.request()) {
            let pinned = self.token_url.as_ref() == Some(&url)
                || self.issuer.as_ref().is_some_and(|issuer| issuer.origin() == url.origin())
                || self.server_url.origin() == url.origin();
            assert!(pinned, "the configured client secret went to {url}");
        }
    }
}

fn carries_secret(request: &http::Request<Vec<u8>>) -> bool {
    if String::from_utf8_lossy(request.body()).contains(SECRET) || request.uri().to_string().contains(SECRET)
    {
        return true;
    }
    request.headers().get_all(http::header::AUTHORIZATION).iter().any(|value| {
        let text = value.to_str().unwrap_or_default();
        let decoded = text
            .strip_prefix("Basic ")
            .and_then(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok())
            .unwrap_or_default();
        text.contains(SECRET) || String::from_utf8_lossy(&decoded).contains(SECRET)
    })
}

fn response(
    status: u16,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Response<Vec<u8>>, TransportError> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(body).map_err(|error| TransportError::Connect(error.to_string()))
}

fn json_response(status: u16, document: &Value) -> Result<Response<Vec<u8>>, TransportError> {
    response(status, &[("content-type", "application/json".to_owned())], document.to_string().into_bytes())
}

/// The issuer a well-known metadata URL was built from (the inverse of design §4.2 step 3).
fn issuer_of(url: &Url) -> String {
    let origin = url.origin().ascii_serialization();
    let path = url.path();
    for prefix in ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return format!("{origin}{rest}");
        }
    }
    let trimmed = path.strip_suffix("/.well-known/openid-configuration").unwrap_or(path);
    format!("{origin}{trimmed}")
}

/// Answers one request from the script.
fn answer(script: &mut Script<'_>, outgoing: &Outgoing) -> Result<Response<Vec<u8>>, TransportError> {
    if script.exhausted() {
        return Err(TransportError::Connect("script exhausted".to_owned()));
    }
    let request = outgoing.request();
    let url = Url::parse(&request.uri().to_string()).ok();
    match script.byte() % 13 {
        0 => Err(TransportError::Timeout),
        1 => {
            let status = 100 + u16::from_be_bytes([script.byte(), script.byte()]) % 500;
            let names = ["www-authenticate", "location", "content-type", "mcp-session-id", "set-cookie"];
            let mut headers = Vec::new();
            for _ in 0..script.byte() % 4 {
                let name = names[usize::from(script.byte()) % names.len()];
                headers.push((name, script.text(128)));
            }
            let body = script.bytes(255);
            response(status, &headers, body).or_else(|_| response(500, &[], Vec::new()))
        }
        2 => {
            let header =
                format!(r#"Bearer resource_metadata="{}", scope="{}""#, script.url(), script.text(32));
            let status = if script.byte().is_multiple_of(2) { 401 } else { 403 };
            response(status, &[("www-authenticate", header)], Vec::new())
                .or_else(|_| response(401, &[("www-authenticate", "Bearer".to_owned())], Vec::new()))
        }
        3 => {
            let resource = if script.byte().is_multiple_of(4) {
                script.url()
            } else {
                "https://mcp.example.com/mcp".into()
            };
            json_response(200, &json!({"resource": resource, "authorization_servers": [script.url()]}))
        }
        4 => {
            let issuer = url.as_ref().map(issuer_of).unwrap_or_default();
            let mut document = json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "registration_endpoint": format!("{issuer}/register"),
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "none"],
            });
            for field in ["authorization_endpoint", "token_endpoint", "registration_endpoint"] {
                if script.byte().is_multiple_of(3) {
                    document[field] = Value::String(script.url());
                }
            }
            json_response(200, &document)
        }
        5 => json_response(
            200,
            &json!({"access_token": script.text(16), "token_type": "Bearer", "expires_in": script.byte(), "refresh_token": script.text(16)}),
        ),
        6 => {
            let method =
                ["none", "client_secret_post", "client_secret_basic"][usize::from(script.byte()) % 3];
            json_response(
                201,
                &json!({"client_id": script.text(16), "client_secret": script.text(16), "token_endpoint_auth_method": method}),
            )
        }
        7 => {
            // The user agent comes back to the redirect URI with a code, the state and maybe `iss`.
            let query: std::collections::HashMap<String, String> =
                url.as_ref().map(|url| url.query_pairs().into_owned().collect()).unwrap_or_default();
            let redirect = query.get("redirect_uri").map_or("http://127.0.0.1:1/cb", String::as_str);
            let Ok(mut location) = Url::parse(redirect).or_else(|_| Url::parse("http://127.0.0.1:1/cb"))
            else {
                return response(400, &[], Vec::new());
            };
            location.query_pairs_mut().append_pair("code", "fuzz-code");
            if let Some(state) = query.get("state") {
                location.query_pairs_mut().append_pair("state", state);
            }
            if script.byte().is_multiple_of(2) {
                location.query_pairs_mut().append_pair("iss", &script.url());
            }
            response(302, &[("location", location.to_string())], Vec::new())
        }
        8 => {
            let id =
                serde_json::from_slice::<Value>(request.body()).ok().and_then(|body| body.get("id").cloned());
            let result = json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "fuzz"}, "tools": []});
            let headers =
                [("content-type", "application/json".to_owned()), ("mcp-session-id", script.text(16))];
            let body = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string().into_bytes();
            response(200, &headers, body).or_else(|_| response(200, &headers[..1], Vec::new()))
        }
        9 => {
            let header = format!(r#"Bearer error="insufficient_scope", scope="{}""#, script.text(24));
            response(403, &[("www-authenticate", header)], Vec::new())
                .or_else(|_| response(403, &[], Vec::new()))
        }
        10 => response(404, &[], Vec::new()),
        11 => response(202, &[], Vec::new()),
        _ => Err(TransportError::Blocked("refused by the adapter".to_owned())),
    }
}

/// Drives `machine`, answering from `script` and checking every request against `rules`.
fn drive<M: Machine>(machine: &mut M, script: &mut Script<'_>, rules: &Rules) {
    let now = Instant::ZERO;
    let mut queue = std::collections::VecDeque::new();
    for _ in 0..MAX_POLLS {
        match machine.poll(now) {
            Step::Send(requests) => {
                for outgoing in requests {
                    rules.check(&outgoing);
                    let result = answer(script, &outgoing);
                    queue.push_back((outgoing.id(), result));
                }
            }
            Step::Wait(_) => match queue.pop_front() {
                Some((id, result)) => machine.handle_response(id, result, now),
                None => panic!("the machine waits with nothing in flight"),
            },
            Step::Done(_) => return,
        }
    }
    panic!("the machine did not finish within {MAX_POLLS} polls");
}

/// The configuration byte: which server, grant and pins.
struct Setup {
    server_url: Url,
    token_url: Option<Url>,
    issuer: Option<Url>,
    parallel: bool,
}

fn setup(flags: u8) -> Setup {
    let server = if flags & 0x20 == 0 { "https://mcp.example.com/mcp" } else { "http://127.0.0.1:8080/mcp" };
    let parse = |url: &str| Url::parse(url).ok();
    Setup {
        server_url: Url::parse(server).unwrap_or_else(|_| unreachable!("a valid URL")),
        token_url: (flags & 0x04 != 0).then(|| parse("https://auth.example.com/token")).flatten(),
        issuer: (flags & 0x08 != 0).then(|| parse("https://auth.example.com")).flatten(),
        parallel: flags & 0x10 != 0,
    }
}

impl Setup {
    fn rules(&self) -> Rules {
        Rules {
            server_url: self.server_url.clone(),
            allow_private: is_local_server(&self.server_url),
            token_url: self.token_url.clone(),
            issuer: self.issuer.clone(),
        }
    }

    fn configured(&self) -> ConfiguredEndpoints {
        ConfiguredEndpoints {
            issuer: self.issuer.clone(),
            token_endpoint: self.token_url.clone(),
            ..ConfiguredEndpoints::default()
        }
    }
}

/// Runs [`Discovery`] against answers scripted by `data`; panics only when an invariant breaks.
///
/// Byte 0 configures the run (bit 2: a configured `token_url`; bit 3: a configured issuer; bit 4:
/// parallel probing; bit 5: a server on loopback instead of `https://mcp.example.com/mcp`); the
/// rest scripts the answers (see the module docs). Invariants: every request passes the fetch
/// policy for the server, resource metadata is fetched only from the server's origin, no panic,
/// and the machine finishes.
pub fn discovery_machine(data: &[u8]) {
    let mut script = Script { data };
    let setup = setup(script.byte());
    let mut config = DiscoveryConfig::new(setup.server_url.clone());
    config.parallel = setup.parallel;
    config.configured = setup.configured();
    drive(&mut Discovery::new(config), &mut script, &setup.rules());
}

/// Runs a whole [`Session`] against answers scripted by `data`; panics only when an invariant
/// breaks.
///
/// Byte 0 configures the run as for [`discovery_machine`], plus bit 0 (client credentials instead
/// of the interactive grant) and bit 1 (a pre-registered client with a secret). Invariants: those
/// of [`discovery_machine`] for every request of the session, and the configured client secret
/// reaches only the configured `token_url` or the origin of the configured issuer or server.
pub fn session_machine(data: &[u8]) {
    let mut script = Script { data };
    let flags = script.byte();
    let setup = setup(flags);
    let redirect_uri = Url::parse("http://127.0.0.1:33418/callback").unwrap_or_else(|_| unreachable!());
    let mut config =
        SessionConfig::new(setup.server_url.clone(), redirect_uri, vec![[7; 48], [8; 48], [9; 48]]);
    config.grant =
        if flags & 0x01 != 0 { GrantKind::ClientCredentials } else { GrantKind::AuthorizationCode };
    if flags & 0x02 != 0 || config.grant == GrantKind::ClientCredentials {
        config.identity.client_id = Some(CLIENT_ID.to_owned());
        config.identity.client_secret = Some(Secret::new(SECRET));
    }
    config.parallel_discovery = setup.parallel;
    config.configured = setup.configured();
    config.operations = vec![Operation::ListTools];
    drive(&mut Session::new(config), &mut script, &setup.rules());
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn url(choice: &str) -> u8 {
        u8::try_from(URLS.iter().position(|url| *url == choice).unwrap()).unwrap()
    }

    /// Answer scripts in the harness's format, by template.
    fn challenge(prm: &str) -> Vec<u8> {
        vec![2, url(prm), 0, 0]
    }
    fn prm(issuer: &str) -> Vec<u8> {
        vec![3, 1, url(issuer)]
    }
    /// AS metadata echoing its issuer; `Some` overrides authorization, token, registration.
    fn metadata(overrides: [Option<&str>; 3]) -> Vec<u8> {
        let mut out = vec![4];
        for field in overrides {
            match field {
                Some(choice) => out.extend([0, url(choice)]),
                None => out.push(1),
            }
        }
        out
    }
    fn token() -> Vec<u8> {
        vec![5, 2, b'a', b't', 60, 2, b'r', b't']
    }
    fn registration() -> Vec<u8> {
        vec![6, 0, 2, b'i', b'd', 0]
    }
    fn redirect() -> Vec<u8> {
        vec![7, 1]
    }
    fn mcp() -> Vec<u8> {
        vec![8, 0]
    }

    /// Seeds: one configuration byte, then the answers in order.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let script = |flags: u8, answers: Vec<Vec<u8>>| {
            let mut out = vec![flags];
            out.extend(answers.into_iter().flatten());
            out
        };
        let first = || vec![mcp(), vec![11]];
        vec![
            ("empty", vec![]),
            ("no_auth_needed", script(0, vec![mcp(), vec![11], mcp()])),
            ("cross_origin_resource_metadata", script(0, vec![challenge("https://evil.example/prm")])),
            (
                "metadata_address_resource_metadata",
                script(32, vec![challenge("https://169.254.169.254/latest/meta-data")]),
            ),
            (
                "clear_text_registration",
                script(
                    0,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://auth.example.com"),
                        metadata([None, None, Some("http://auth.example.com/register")]),
                        registration(),
                        redirect(),
                        token(),
                    ],
                ),
            ),
            (
                "interactive_happy_path",
                script(
                    0,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://auth.example.com"),
                        metadata([None, None, None]),
                        registration(),
                        redirect(),
                        token(),
                        mcp(),
                        vec![11],
                        mcp(),
                    ],
                ),
            ),
            (
                "m2m_hostile_token_endpoint",
                script(
                    1,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://auth.example.com"),
                        metadata([None, Some("https://evil.example/token"), None]),
                        token(),
                        mcp(),
                    ],
                ),
            ),
            (
                "m2m_configured_token_url",
                script(
                    5,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://auth.example.com"),
                        metadata([None, Some("https://evil.example/token"), None]),
                        token(),
                        mcp(),
                        vec![11],
                        mcp(),
                    ],
                ),
            ),
            (
                "preregistered_hostile_token_endpoint",
                script(
                    2,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://auth.example.com"),
                        metadata([None, Some("https://[64:ff9b::a9fe:a9fe]/token"), None]),
                        redirect(),
                        token(),
                    ],
                ),
            ),
            (
                "configured_issuer_parallel",
                script(
                    24,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://evil.example/token"),
                        metadata([None, None, None]),
                        vec![10],
                        registration(),
                        redirect(),
                        token(),
                        mcp(),
                    ],
                ),
            ),
            (
                "refresh_after_expiry",
                script(
                    2,
                    vec![
                        challenge("https://mcp.example.com/prm"),
                        prm("https://auth.example.com"),
                        metadata([None, None, None]),
                        redirect(),
                        token(),
                        vec![2, 0, 0, 0],
                        token(),
                        first().concat(),
                    ],
                ),
            ),
        ]
    }

    #[test]
    fn seeds_hold_the_invariants() {
        for (_, seed) in seeds() {
            discovery_machine(&seed);
            session_machine(&seed);
        }
    }

    #[test]
    fn every_byte_prefix_of_the_seeds_holds_the_invariants() {
        for (_, seed) in seeds() {
            for end in 0..seed.len() {
                discovery_machine(&seed[..end]);
                session_machine(&seed[..end]);
            }
        }
    }

    /// The addresses named in [`URLS`].
    fn hostile_addresses() -> Vec<IpAddr> {
        URLS.iter()
            .filter_map(|url| Url::parse(url).ok())
            .filter_map(|url| match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_hostile_list_names_refused_addresses() {
        use crate::fetch_policy::permits_address;
        assert!(hostile_addresses().iter().all(|address| permits_address(*address, false).is_err()));
    }
}
