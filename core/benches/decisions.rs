//! Criterion benchmarks for the per-request decisions, over mixed accepted and rejected inputs.
//!
//! Run with `cargo bench -p mcp-oauth-core --bench decisions`; figures live in docs/benchmarks.md.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use mcp_oauth_core::config::{ServerEntry, ServerPolicy};
use mcp_oauth_core::delegate::{Target, decide_delegation};
use mcp_oauth_core::mask::mask;
use mcp_oauth_core::origin::{
    Origin, OriginSettings, RequestOrigin, Scheme, TrustedProxies, resolve_public_origin,
};
use mcp_oauth_core::redirect::{TrustedRedirectOrigins, validate_redirect_uri};
use serde_json::json;

const REDIRECT_URIS: [&str; 8] = [
    "http://localhost:33418/callback",
    "https://gw.example.com/oauth/callback",
    "https://app.corp.example.com/cb",
    "https://evil.example.net/cb",
    "https://gw.example.com\\@evil.com/cb",
    "https://GW.example.com/cb",
    "https://user@gw.example.com/cb",
    "http://127.0.0.1:8080/cb?state=xyz",
];

fn redirect_uri(c: &mut Criterion) {
    let origin = Origin::parse("https://gw.example.com").expect("valid origin");
    let trusted =
        TrustedRedirectOrigins::parse("*.corp.example.com,partner.example.org:8443").expect("valid");
    c.bench_function("redirect_uri/mixed_8", |b| {
        b.iter(|| {
            for uri in REDIRECT_URIS {
                black_box(validate_redirect_uri(black_box(uri), Some(&origin), &trusted));
            }
        });
    });
}

fn public_origin(c: &mut Criterion) {
    let settings = OriginSettings {
        use_x_forwarded_for: true,
        trusted_proxies: TrustedProxies::parse(&["10.0.0.0/8", "192.168.0.0/16"]).expect("valid"),
        ..OriginSettings::default()
    };
    let mut forwarded = HeaderMap::new();
    forwarded.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    forwarded.insert("x-forwarded-host", HeaderValue::from_static("llm.example.com"));
    let mut duplicated = forwarded.clone();
    duplicated.append("x-forwarded-host", HeaderValue::from_static("evil.example.com"));
    let cases = [
        ("10.1.2.3", &forwarded),
        ("203.0.113.7", &forwarded),
        ("10.1.2.3", &duplicated),
        ("192.168.4.4", &HeaderMap::new()),
    ];
    let cases: Vec<_> = cases.iter().map(|(peer, headers)| (peer.parse().expect("ip"), *headers)).collect();
    c.bench_function("public_origin/mixed_4", |b| {
        b.iter(|| {
            for (peer, headers) in &cases {
                let request = RequestOrigin {
                    scheme: Scheme::Http,
                    host: Some("gateway:4000"),
                    peer: Some(*peer),
                    headers,
                };
                black_box(resolve_public_origin(&settings, black_box(&request)).ok());
            }
        });
    });
}

fn delegate(c: &mut Criterion) {
    let entry = |value: serde_json::Value| -> ServerPolicy {
        ServerEntry::from_json("s", value.as_object().expect("object"), &|_| None)
            .expect("loads")
            .policy()
            .expect("policy")
    };
    let github = entry(
        json!({"auth_type": "oauth2", "authorization_url": "https://auth.example.com/authorize", "delegate_auth_to_upstream": true}),
    );
    let jira = entry(
        json!({"auth_type": "oauth2", "authorization_url": "https://auth.example.com/authorize", "delegate_auth_to_upstream": true}),
    );
    let m2m = entry(
        json!({"auth_type": "oauth2", "oauth2_flow": "client_credentials", "client_id": "i", "client_secret": "s"}),
    );
    let servers = [("github", &github), ("jira", &jira), ("m2m", &m2m)];
    let lookup = |name: &str| {
        servers.iter().find(|(known, _)| *known == name).map_or(Target::Unknown, |(_, p)| Target::Known(p))
    };
    let mut several = HeaderMap::new();
    several.insert("x-mcp-servers", HeaderValue::from_static("jira, github"));
    let mut keyed = HeaderMap::new();
    keyed.insert("x-mcp-gateway-key", HeaderValue::from_static("sk-1"));
    let cases = [
        ("/github/mcp", HeaderMap::new()),
        ("/mcp", several),
        ("/m2m/mcp", HeaderMap::new()),
        ("/github/mcp", keyed),
        ("/unknown/mcp", HeaderMap::new()),
    ];
    c.bench_function("delegate/mixed_5", |b| {
        b.iter(|| {
            for (path, headers) in &cases {
                black_box(decide_delegation(
                    mcp_oauth_core::route::mcp_path_server(black_box(path)),
                    headers,
                    lookup,
                ));
            }
        });
    });
}

fn masking(c: &mut Criterion) {
    let values = [
        "Bearer eyJhbGciOiJSUzI1NiJ9.payload.signature-ef01",
        "Bearer short",
        "sk-1234567890abcdef",
        "Basic dXNlcjpwYXNz",
    ];
    c.bench_function("mask/mixed_4", |b| {
        b.iter(|| {
            for value in values {
                black_box(mask(black_box(value)));
            }
        });
    });
}

criterion_group!(benches, redirect_uri, public_origin, delegate, masking);
criterion_main!(benches);
