//! Start-up discovery against the mock upstream on 127.0.0.1: endpoints a configuration leaves
//! empty are filled from RFC 9728 + RFC 8414 metadata, and a server that cannot be discovered is
//! reported and left as written. Every test is bounded and binds only loopback.

use std::time::Duration;

use mcp_oauth_core::config::load_yaml;
use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};
use mcp_oauth_tokio::startup::discover_endpoints;
use tokio::net::TcpListener;

#[tokio::test]
async fn fills_missing_endpoints_and_reports_what_it_cannot_discover() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mock = MockUpstream::start(MockConfig::default()).await.expect("mock starts");
        let closed = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let dead = format!("http://{}", closed.local_addr().expect("address"));
        drop(closed);
        let upstream = mock.origin();
        let yaml = format!(
            "mcp_servers:
  notes:
    url: {upstream}/mcp
    auth_type: oauth2
    client_id: mock-client
    client_secret: mock-secret
  pinned:
    url: {upstream}/mcp
    auth_type: oauth2
    authorization_url: {upstream}/custom-authorize
  gone:
    url: {dead}/mcp
    auth_type: oauth2
  m2m:
    url: {upstream}/mcp
    auth_type: oauth2
    oauth2_flow: client_credentials
    client_id: mock-client
    client_secret: mock-secret
    token_url: {upstream}/token
"
        );
        let mut config = load_yaml(&yaml, &|_| None).expect("config loads").config;
        let mut reports = discover_endpoints(&mut config, Duration::from_secs(5)).await.expect("client");
        reports.sort_by(|a, b| a.server.cmp(&b.server));
        let names: Vec<&str> = reports.iter().map(|report| report.server.as_str()).collect();
        assert_eq!(names, ["gone", "notes", "pinned"], "m2m names its token_url: nothing to discover");
        assert!(reports[0].outcome.is_err(), "{:?}", reports[0].outcome);
        assert_eq!(
            reports[1].outcome,
            Ok(vec!["issuer", "authorization_url", "token_url", "registration_url"]),
            "the discovered issuer is what /callback checks `iss` against"
        );
        assert_eq!(reports[2].outcome, Ok(vec!["issuer", "token_url", "registration_url"]));

        let notes = &config.servers["notes"].entry;
        assert_eq!(notes.authorization_url.as_deref(), Some(format!("{upstream}/authorize").as_str()));
        assert_eq!(notes.token_url.as_deref(), Some(format!("{upstream}/token").as_str()));
        let pinned = &config.servers["pinned"].entry;
        assert_eq!(
            pinned.authorization_url.as_deref(),
            Some(format!("{upstream}/custom-authorize").as_str())
        );
        assert!(config.servers["gone"].entry.token_url.is_none(), "a failed discovery changes nothing");
    })
    .await
    .expect("bounded");
}
