//! Security invariants of the gateway's per-request decision (design §4.6–§4.8), as properties.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mcp_oauth_core::config::{GatewayConfig, load_yaml};
use mcp_oauth_core::gateway::{Action, Context, FlowStore, RequestHead, decide};
use mcp_oauth_core::machine::Instant;
use mcp_oauth_core::origin::Scheme;
use mcp_oauth_core::outbound::{OutboundCredential, is_gateway_key};
use mcp_oauth_core::secret::Secret;
use proptest::prelude::*;

const KEY: &str = "sk-gateway-key-0001";

fn config() -> GatewayConfig {
    let yaml = "
general_settings:
  master_key: sk-gateway-key-0001
mcp_servers:
  interactive:
    url: https://a.example/mcp
    auth_type: oauth2
    authorization_url: https://auth.example/authorize
    token_url: https://auth.example/token
    client_id: c
  delegated:
    url: https://b.example/mcp
    auth_type: oauth2
    authorization_url: https://auth.example/authorize
    delegate_auth_to_upstream: true
  m2m:
    url: https://c.example/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: m
    client_secret: m-secret-value-0001
    token_url: https://auth.example/token
  wiki:
    url: https://d.example/mcp
    auth_type: bearer_token
    authentication_token: wiki-token-0001
";
    let env = |name: &str| (name == "PROXY_BASE_URL").then(|| "https://gw.example.com".to_owned());
    load_yaml(yaml, &env).expect("the fixture loads").config
}

fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "x-mcp-gateway-key",
        "x-litellm-api-key",
        "authorization",
        "x-mcp-servers",
        "x-mcp-m2m-authorization",
        "x-forwarded-host",
        "x-mcp-debug",
        "cookie",
    ])
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(KEY.to_owned()),
        Just(format!("Bearer {KEY}")),
        Just("Bearer user-token".to_owned()),
        Just("sk-wrong".to_owned()),
        Just("delegated".to_owned()),
        Just("m2m, delegated".to_owned()),
        Just("wiki".to_owned()),
        Just(String::new()),
        "[ -~]{0,20}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["interactive", "delegated", "m2m", "wiki", "nope", ""])
            .prop_map(|s| format!("/{s}/mcp")),
        Just("/mcp".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A request is forwarded only when delegation applies or a valid gateway key is presented,
    /// and the gateway key itself never travels upstream.
    #[test]
    fn nothing_is_forwarded_without_a_key_or_delegation(
        path in path(),
        pairs in prop::collection::vec((header_name(), header_value()), 0..5),
    ) {
        let config = config();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("gw.example.com"));
        for (name, value) in &pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(HeaderName::from_static(name), value);
            }
        }
        let mut flows = FlowStore::default();
        let head = RequestHead { method: &Method::POST, path_and_query: &path, headers: &headers, scheme: Scheme::Https, peer: None };
        let mut context = Context { config: &config, flows: &mut flows, now: Instant::ZERO, random: Some([1; 16]) };
        if let Action::Forward(forward) = decide(&head, &mut context) {
            let keys = [Secret::new(KEY)];
            let presented = ["x-mcp-gateway-key", "x-litellm-api-key"].iter().any(|name| {
                headers.get_all(*name).iter().filter_map(|v| v.to_str().ok()).any(|v| is_gateway_key(v, &keys))
            });
            let via_authorization = forward.server == "wiki"
                && headers.get_all("authorization").iter().filter_map(|v| v.to_str().ok()).any(|v| is_gateway_key(v, &keys));
            prop_assert!(forward.delegated || presented || via_authorization, "forwarded without admission: {pairs:?}");
            if forward.delegated {
                prop_assert_eq!(forward.server.as_str(), "delegated");
                prop_assert!(!presented);
            }
            for (_, value) in forward.headers.iter() {
                let value = value.to_str().unwrap_or_default();
                prop_assert!(!is_gateway_key(value, &keys), "the gateway key went upstream");
            }
            if forward.credential == OutboundCredential::ForwardAuthorization {
                let inbound = headers.get("authorization").filter(|v| !is_gateway_key(v.to_str().unwrap_or_default(), &keys));
                prop_assert_eq!(forward.headers.get("authorization"), inbound);
            } else {
                prop_assert!(forward.headers.get("authorization").is_none(), "the caller's Authorization leaked");
            }
            prop_assert!(forward.headers.get("x-forwarded-host").is_none());
            prop_assert!(forward.headers.get("cookie").is_none());
        }
    }
}
