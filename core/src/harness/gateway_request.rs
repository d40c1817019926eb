//! Fuzz harness for the gateway's per-request decision.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{GatewayConfig, load_yaml};
use crate::gateway::{Action, Context, Forward, OAuthState, RequestHead, decide};
use crate::machine::Instant;
use crate::origin::Scheme;
use crate::outbound::{OutboundCredential, is_gateway_key};
use crate::secret::Secret;

const KEY: &str = "sk-fuzz-gateway-key";

fn fixture() -> Option<&'static GatewayConfig> {
    static FIXTURE: std::sync::OnceLock<Option<GatewayConfig>> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(load_fixture).as_ref()
}

fn load_fixture() -> Option<GatewayConfig> {
    let yaml = "
general_settings:
  master_key: sk-fuzz-gateway-key
mcp_servers:
  a:
    url: https://a.example/mcp
    auth_type: oauth2
    authorization_url: https://auth.example/authorize
    token_url: https://auth.example/token
    client_id: c
    client_secret: fuzz-client-secret
  d:
    url: https://d.example/mcp
    auth_type: oauth2
    authorization_url: https://auth.example/authorize
    delegate_auth_to_upstream: true
  m:
    url: https://m.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: m
    client_secret: fuzz-m2m-secret
    token_url: https://auth.example/token
";
    let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "https://gw.example.com".to_owned());
    load_yaml(yaml, &env).ok().map(|loaded| loaded.config)
}

/// Input: line 1 `METHOD path?query`, then `Name: value` header lines (invalid ones skipped).
/// Invariants: `decide` never panics; a forward needs delegation or a valid gateway key and
/// never carries the key or the caller's `Authorization` (unless passthrough) upstream; no
/// response body contains a configured secret; a 3xx always has a `Location`.
pub fn gateway_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(config) = fixture() else { return };
    let mut lines = text.lines();
    let Some((method, path)) = lines.next().and_then(|line| line.split_once(' ')) else { return };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim()))
        {
            headers.append(name, value);
        }
    }
    let mut oauth = OAuthState::default();
    let head = RequestHead {
        method: &method,
        path_and_query: path,
        headers: &headers,
        scheme: Scheme::Https,
        peer: None,
    };
    let mut context = Context {
        config,
        oauth: Some(&mut oauth),
        now: Instant::ZERO,
        unix_now: crate::seal::UnixTime::from_secs(1_800_000_000),
        random: Some([3; 32]),
    };
    let keys = [Secret::new(KEY)];
    let admitted = ["x-mcp-gateway-key", "x-litellm-api-key"].iter().any(|name| {
        headers.get_all(*name).iter().filter_map(|v| v.to_str().ok()).any(|v| is_gateway_key(v, &keys))
    });
    let check = |forward: &Forward| {
        assert!(forward.delegated || admitted, "forwarded without admission");
        for (_, value) in &forward.headers {
            assert!(!is_gateway_key(value.to_str().unwrap_or_default(), &keys), "the key went upstream");
        }
        if forward.credential != OutboundCredential::ForwardAuthorization {
            assert!(forward.headers.get("authorization").is_none(), "Authorization leaked upstream");
        }
    };
    match decide(&head, &mut context) {
        Action::Forward(forward) => check(&forward),
        Action::Aggregate(aggregate) => {
            assert!(!aggregate.targets.is_empty(), "an aggregate without targets");
            aggregate.targets.iter().for_each(check);
        }
        Action::Respond(response) => {
            let body = String::from_utf8_lossy(response.body());
            for secret in ["fuzz-client-secret", "fuzz-m2m-secret", KEY] {
                assert!(!body.contains(secret), "a secret in a response body");
            }
            if response.status().is_redirection() {
                assert!(response.headers().contains_key("location"), "a redirect without Location");
            }
        }
        Action::ReadForm(_) | Action::Authz(_) | Action::Probe(_) => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_requests() {
        super::gateway_request(b"POST /m/mcp\nx-mcp-gateway-key: sk-fuzz-gateway-key\nx-mcp-debug: true");
        super::gateway_request(b"POST /d/mcp\nauthorization: Bearer user");
        super::gateway_request(b"GET /a/authorize?redirect_uri=https%3A%2F%2Fevil.example%2F&code_challenge=x&code_challenge_method=S256");
        super::gateway_request(b"GET /a/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb&code_challenge=x&code_challenge_method=S256");
        super::gateway_request(b"POST /mcp\nx-mcp-servers: a, m\nx-mcp-gateway-key: sk-fuzz-gateway-key");
        super::gateway_request(b"GET /mcp-rest/tools/list?server_id=m\nauthorization: sk-fuzz-gateway-key");
        super::gateway_request(b"\xff");
    }
}
