//! Fuzz harness for the gateway as an authorization server (design §4.8): every endpoint that
//! reads a stranger's sealed value, form or cookie.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};

use crate::config::{GatewayConfig, load_yaml};
use crate::gateway::{Action, AuthzStep, Context, OAuthState, RequestHead, decide, decide_form};
use crate::grant::{StoreOp, StoreResult};
use crate::machine::Instant;
use crate::origin::Scheme;

const SECRETS: [&str; 2] = ["sk-fuzz-gateway-key", "fuzz-client-secret"];

fn fixture() -> Option<&'static GatewayConfig> {
    static FIXTURE: std::sync::OnceLock<Option<GatewayConfig>> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(load_fixture).as_ref()
}

fn load_fixture() -> Option<GatewayConfig> {
    let yaml = "
general_settings:
  master_key: sk-fuzz-gateway-key
  sealing_keys: [AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8]
mcp_servers:
  a:
    url: https://a.example/mcp
    auth_type: oauth2
    issuer: https://auth.example
    authorization_url: https://auth.example/authorize
    token_url: https://auth.example/token
    client_id: c
    client_secret: fuzz-client-secret
";
    let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "https://gw.example.com".to_owned());
    load_yaml(yaml, &env).ok().map(|loaded| loaded.config)
}

/// The store's answer: every read finds nothing, every mark is fresh, every lock is free.
fn store(op: &StoreOp) -> StoreResult {
    match op {
        StoreOp::GetGrant { .. } => StoreResult::Grant(None),
        StoreOp::PutGrant(_) => StoreResult::Stored,
        StoreOp::TakeOnce { .. } => StoreResult::Taken(true),
        StoreOp::AdvanceGeneration { .. } => StoreResult::Advanced(false),
        StoreOp::TryLock { .. } => StoreResult::Locked(true),
        StoreOp::Unlock { .. } => StoreResult::Unlocked,
    }
}

fn check(response: &Response<Vec<u8>>, token_route: bool) {
    let body = String::from_utf8_lossy(response.body());
    for secret in SECRETS {
        assert!(!body.contains(secret), "a secret in a response body");
    }
    if response.status().is_redirection() {
        assert!(response.headers().contains_key("location"), "a redirect without Location");
    }
    for cookie in response.headers().get_all("set-cookie") {
        assert!(cookie.to_str().unwrap_or_default().contains("HttpOnly"), "a cookie scripts can read");
    }
    // No sealed code, refresh token or client can be forged: the token endpoint never issues one.
    assert!(!(token_route && response.status().is_success()), "a token for forged input");
}

/// Input: line 1 `METHOD path?query`, then `Name: value` header lines, an empty line, and the
/// body. Invariants: nothing panics; no answer carries a configured secret; a 3xx has a
/// `Location`; every cookie is `HttpOnly`; the token endpoint never answers 200 to input that
/// holds no value the gateway sealed.
pub fn authz_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(config) = fixture() else { return };
    let (head_text, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head_text.lines();
    let Some((method, path)) = lines.next().and_then(|line| line.split_once(' ')) else { return };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("gw.example.com"));
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim()))
        {
            headers.append(name, value);
        }
    }
    let head = RequestHead {
        method: &method,
        path_and_query: path,
        headers: &headers,
        scheme: Scheme::Https,
        peer: None,
    };
    let mut oauth = OAuthState::default();
    let mut context = Context {
        config,
        oauth: Some(&mut oauth),
        now: Instant::ZERO,
        unix_now: crate::seal::UnixTime::from_secs(1_800_000_000),
        random: Some([5; 32]),
    };
    let token_route = path.split('?').next().is_some_and(|path| path.ends_with("/token"));
    let action = match decide(&head, &mut context) {
        Action::ReadForm(form) => decide_form(form, &head, body.as_bytes(), &mut context),
        other => other,
    };
    match action {
        Action::Respond(response) => check(&response, token_route),
        Action::Authz(mut machine) => {
            for _ in 0..16 {
                match machine.poll() {
                    AuthzStep::Store(op) => machine.handle_store(store(&op)),
                    AuthzStep::Send(_) => {
                        let answer = Response::new(Bytes::from_static(
                            br#"{"access_token":"up-token","token_type":"Bearer","refresh_token":"up-refresh"}"#,
                        ));
                        machine.handle_answer(Ok(answer));
                    }
                    AuthzStep::Respond(response) => return check(&response, token_route),
                }
            }
            panic!("an authorization-server machine did not finish");
        }
        Action::Forward(_) | Action::Aggregate(_) | Action::ReadForm(_) | Action::Probe(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_without_breaking_an_invariant() {
        for seed in [
            &b"POST /a/token\ncontent-type: application/x-www-form-urlencoded\n\ngrant_type=authorization_code&code=mcpgw_AAAA&client_id=x"[..],
            b"POST /a/register\n\n{\"redirect_uris\":[\"http://127.0.0.1/cb\"]}",
            b"GET /a/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb",
            b"POST /a/consent\ncookie: __Host-mcp_csrf=AAAAAAAAAAAAAAAAAAAAAA\n\nrequest=x&csrf=AAAAAAAAAAAAAAAAAAAAAA&decision=approve&gateway_key=sk-fuzz-gateway-key",
            b"GET /callback?state=a.AAAA&code=c",
            b"POST /a/revoke\n\ntoken=mcpgw_x",
        ] {
            authz_request(seed);
        }
    }
}
