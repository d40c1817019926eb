//! Security invariants of the gateway's per-request decision (design §4.6–§4.8), as properties.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mcp_oauth_core::aggregate::{
    Answer, Endpoint, GatewaySessions, Owner, Plan, Request, Sessions, plan, plan_in, prefixed_name,
    route_tool,
};
use mcp_oauth_core::config::{GatewayConfig, load_yaml};
use mcp_oauth_core::gateway::{Action, Context, OAuthState, RequestHead, decide};
use mcp_oauth_core::machine::Instant;
use mcp_oauth_core::origin::Scheme;
use mcp_oauth_core::outbound::{OutboundCredential, is_gateway_key};
use mcp_oauth_core::secret::Secret;
use proptest::prelude::*;
use serde_json::{Value, json};

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
        // A gateway-issued token (forged or not): it must never be forwarded anywhere.
        Just("Bearer mcpgw_AAAAforged".to_owned()),
        Just("sk-wrong".to_owned()),
        Just("delegated".to_owned()),
        Just("m2m, delegated".to_owned()),
        Just("wiki".to_owned()),
        Just(String::new()),
        "[ -~]{0,20}",
    ]
}

/// Paths as an attacker writes them: every server name (encoded or not) between leading,
/// doubled and trailing slashes, dot segments and percent-encoded bytes, besides the plain routes.
fn path() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "interactive",
        "delegated",
        "m2m",
        "wiki",
        "nope",
        "",
        ".",
        "..",
        "%77iki",
        "wiki%2Fx",
        "m2m%2f",
        "%2e",
    ]);
    let lead = prop::sample::select(vec!["/", "//", "///", "/./", "/../", "/%2F", "/.//", ""]);
    let middle = prop::sample::select(vec!["/", "//", "/./", "%2F", "%2f", "/../"]);
    let tail = prop::sample::select(vec!["", "/", "?x=1", "/.", "//", "#f", "%2F"]);
    prop_oneof![
        prop::sample::select(vec!["interactive", "delegated", "m2m", "wiki", "nope", ""])
            .prop_map(|s| format!("/{s}/mcp")),
        (lead, name, middle, tail)
            .prop_map(|(lead, name, middle, tail)| format!("{lead}{name}{middle}mcp{tail}")),
        Just("/mcp".to_owned()),
        Just("//mcp".to_owned()),
        Just("/mcp-rest/tools/call".to_owned()),
    ]
}

/// The paths [`path`] makes that the router must read as `/{server}/mcp`: exactly one slash, a
/// plain name, one slash, `mcp`, and at most a query.
fn plain_server_path(path: &str) -> Option<&str> {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let name = path.strip_prefix('/')?.strip_suffix("/mcp")?;
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then_some(name)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A request is forwarded only when delegation applies or a valid gateway key is presented,
    /// and the gateway key itself never travels upstream.
    #[test]
    fn nothing_is_forwarded_without_a_key_or_delegation(
        path in path(),
        pairs in prop::collection::vec((header_name(), header_value()), 0..5),
        name_delegated in any::<bool>(),
    ) {
        let config = config();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("gw.example.com"));
        // Half the cases name the delegating server, the review's lever against admission.
        if name_delegated {
            headers.append("x-mcp-servers", HeaderValue::from_static("delegated"));
        }
        for (name, value) in &pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(HeaderName::from_static(name), value);
            }
        }
        let mut oauth = OAuthState::default();
        let head = RequestHead { method: &Method::POST, path_and_query: &path, headers: &headers, scheme: Scheme::Https, peer: None };
        let mut context = Context {
            config: &config,
            oauth: Some(&mut oauth),
            now: Instant::ZERO,
            unix_now: mcp_oauth_core::seal::UnixTime::from_secs(1_800_000_000),
            random: Some([1; 32]),
        };
        let forwards = match decide(&head, &mut context) {
            Action::Forward(forward) => vec![forward],
            Action::Aggregate(aggregate) => {
                prop_assert!(!aggregate.targets.is_empty());
                aggregate.targets
            }
            _ => Vec::new(),
        };
        let keys = [Secret::new(KEY)];
        let presented = ["x-mcp-gateway-key", "x-litellm-api-key"].iter().any(|name| {
            headers.get_all(*name).iter().filter_map(|v| v.to_str().ok()).any(|v| is_gateway_key(v, &keys))
        });
        let key_in_authorization =
            headers.get_all("authorization").iter().filter_map(|v| v.to_str().ok()).any(|v| is_gateway_key(v, &keys));
        // Admission is all or nothing: with the key only in Authorization, every target must be wiki.
        let only_wiki = forwards.iter().all(|forward| forward.server == "wiki");
        for forward in &forwards {
            // A single-server route reaches exactly the server its plain path names, or nothing.
            if !path.starts_with("/mcp") {
                prop_assert_eq!(Some(forward.server.as_str()), plain_server_path(&path), "{} reached {}", path, forward.server);
            }
            prop_assert!(
                forward.delegated || presented || (key_in_authorization && only_wiki),
                "forwarded without admission: {pairs:?}"
            );
            if forward.delegated {
                prop_assert_eq!(forward.server.as_str(), "delegated");
                prop_assert!(!presented);
                prop_assert!(!path.starts_with("/mcp-rest"), "the REST routes never delegate");
            }
            for (_, value) in forward.headers.iter() {
                let value = value.to_str().unwrap_or_default();
                prop_assert!(!is_gateway_key(value, &keys), "the gateway key went upstream");
                prop_assert!(!value.contains("mcpgw_"), "a gateway-issued token went upstream");
            }
            if forward.credential == OutboundCredential::ForwardAuthorization {
                let inbound = headers.get("authorization").filter(|v| {
                    let text = v.to_str().unwrap_or_default();
                    !is_gateway_key(text, &keys) && !text.contains("mcpgw_")
                });
                prop_assert_eq!(forward.headers.get("authorization"), inbound);
            } else {
                prop_assert!(forward.headers.get("authorization").is_none(), "the caller's Authorization leaked");
            }
            prop_assert!(forward.headers.get("x-forwarded-host").is_none());
            prop_assert!(forward.headers.get("cookie").is_none());
        }
    }

    /// Behind the aggregating endpoint every listed tool name calls exactly the tool it lists:
    /// routing it back gives the same server and the server's own tool name, whatever hyphens
    /// the server and tool names contain.
    #[test]
    fn every_listed_tool_name_routes_back_to_its_tool(
        servers in prop::collection::btree_set("[a-c]{1,2}(-[a-c]{1,2}){0,2}", 1..5),
        tools in prop::collection::vec(prop::collection::vec("[a-c]{1,2}(-[a-c]{1,2}){0,2}", 0..5), 5),
    ) {
        let servers: Vec<String> = servers.into_iter().collect();
        let owner = Owner::of(&HeaderMap::new());
        let request = Request { endpoint: Endpoint::Mcp, servers: &servers, delegated: false, cursor: None, session: None, owner };
        let Plan::Gather(gather) = plan(&request, br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#) else {
            return Err(TestCaseError::fail("a listing gathers"));
        };
        let answers = gather.calls().iter().map(|call| {
            let listed: Vec<_> = tools[call.target].iter().map(|name| json!({"name": name})).collect();
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": listed}}).to_string();
            let mut response = http::Response::new(body.into_bytes());
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            Answer::Upstream(response)
        }).collect();
        let response = gather.finish(answers);
        let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        for tool in body["result"]["tools"].as_array().into_iter().flatten() {
            let name = tool["name"].as_str().unwrap_or_default();
            let (target, upstream) = route_tool(name, &servers).map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(prefixed_name(&servers[target], &upstream), name);
            prop_assert!(tools[target].contains(&upstream), "`{}` calls `{}` on `{}`, which it does not list", name, upstream, servers[target]);
        }
        // And nothing routable is dropped: a tool whose prefixed name routes to its own server is listed.
        for (index, server) in servers.iter().enumerate() {
            for tool in &tools[index] {
                let name = prefixed_name(server, tool);
                if route_tool(&name, &servers).ok() == Some((index, tool.clone())) {
                    prop_assert!(body["result"]["tools"].as_array().into_iter().flatten().any(|listed| listed["name"] == name.as_str()));
                }
            }
        }
    }
}

proptest! {
    /// A gateway session (design §4.11) is used, ended or listed in only with the very credentials
    /// that opened it: any other set of gateway-key and `Authorization` values, and any other id,
    /// gets the 404 of an unknown session, whatever the method.
    #[test]
    fn a_gateway_session_answers_only_its_owner(
        opener in prop::collection::vec(("(x-mcp-gateway-key|x-litellm-api-key|authorization)", "[a-z0-9 ]{0,12}"), 0..3),
        caller in prop::collection::vec(("(x-mcp-gateway-key|x-litellm-api-key|authorization)", "[a-z0-9 ]{0,12}"), 0..3),
        forged in proptest::option::of("[A-Za-z0-9_-]{0,43}"),
        random in any::<[u8; 32]>(),
        method in prop::sample::select(vec!["tools/list", "resources/read", "tools/call", "ping"]),
        delete in any::<bool>(),
    ) {
        let headers = |pairs: &[(String, String)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                    headers.append(name, value);
                }
            }
            headers
        };
        let (opener_headers, caller_headers) = (headers(&opener), headers(&caller));
        let same = Owner::of(&opener_headers) == Owner::of(&caller_headers);
        let servers = vec!["a".to_owned()];
        let mut table = GatewaySessions::default();
        let (id, _) = table.open(random, Owner::of(&opener_headers), Vec::new(), Instant::ZERO);
        let presented = forged.clone().unwrap_or_else(|| id.clone());
        let request = Request {
            endpoint: if delete { Endpoint::McpEnd } else { Endpoint::Mcp },
            servers: &servers,
            delegated: false,
            cursor: None,
            session: Some(&presented),
            owner: Owner::of(&caller_headers),
        };
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"name":"a-x","uri":"u://x"}}}}"#);
        let sessions = Sessions { table: &mut table, now: Instant::ZERO, random: &mut || None };
        let planned = plan_in(&request, body.as_bytes(), sessions);
        let refused = matches!(&planned, Plan::Respond(response) if response.status() == http::StatusCode::NOT_FOUND);
        let own = same && presented == id;
        prop_assert_eq!(refused, !own, "owner match {}, id match {}", same, presented == id);
        if own && delete {
            prop_assert!(table.find(&id, Owner::of(&opener_headers), Instant::ZERO).is_none(), "DELETE ended it");
        } else {
            prop_assert!(table.find(&id, Owner::of(&opener_headers), Instant::ZERO).is_some(), "someone else ended it");
        }
    }
}
