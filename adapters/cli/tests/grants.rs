//! `mcp-oauth grants list|revoke` against a SQLite store written the way the gateway writes it,
//! and `mcp-oauth serve` refusing a store it cannot reach (issue 12).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcp_oauth_core::grant::{Grant, GrantId, Identity, SealedUpstreamToken, UpstreamClient};
use mcp_oauth_core::seal::SealingKeys;
use mcp_oauth_core::secret::Secret;
use mcp_oauth_runtime::grant_store::sqlite::SqliteGrantStore;
use mcp_oauth_runtime::grant_store::{GrantStore, unix_now};
use mcp_oauth_tokio::TokioRuntime;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let directory = std::env::temp_dir().join(format!("mcp-oauth-grants-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("scratch directory");
        Self(directory)
    }

    fn config(&self, store: &str) -> PathBuf {
        let file = self.0.join("config.yaml");
        let yaml = format!(
            "general_settings:\n  master_key: sk-master-0001\n  sealing_keys: [{KEY}]\n  mcp_oauth_store: {store}\nmcp_servers:\n  notes:\n    url: http://127.0.0.1:9/mcp\n"
        );
        std::fs::write(&file, yaml).expect("write config");
        file
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn grant(n: u8, server: &str, identity: &str) -> Grant {
    let keys = SealingKeys::parse(KEY).expect("key");
    let id = GrantId::from_random([n; 16]);
    let expires_at = unix_now().plus(Duration::from_secs(10 * 86_400));
    let token = SealedUpstreamToken::seal(
        &keys,
        server,
        &id,
        expires_at,
        &Secret::new("upstream-token-xyz"),
        [n; 24],
    )
    .expect("seals");
    Grant {
        id,
        server: server.into(),
        identity: Identity::new(identity, &Secret::new("sk-master-0001"), &keys),
        client: "client".into(),
        upstream_access_token: token,
        upstream_refresh_token: None,
        upstream_access_expires_at: None,
        expires_at,
        generation: u64::from(n),
        rotated_at: unix_now(),
        scope: "notes.read".into(),
        upstream_client: None,
    }
}

fn seed(database: &Path) -> Vec<Grant> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let store = SqliteGrantStore::open(database, 1000, TokioRuntime).expect("opens");
    let grants = vec![grant(1, "notes", "alice"), grant(2, "notes", "bob"), grant(3, "wiki", "alice")];
    runtime.block_on(async {
        for grant in &grants {
            store.put_grant(grant.clone()).await.expect("stored");
        }
        // What the gateway also keeps: a pointer and its own upstream registration, never listed.
        store.put_grant(grants[0].pointer()).await.expect("stored");
        let registration = Grant::upstream_registration(
            "notes",
            "https://gw.example",
            UpstreamClient { client_id: "gw".into(), client_secret: None },
            unix_now(),
            unix_now().plus(Duration::from_secs(3600)),
        );
        store.put_grant(registration).await.expect("stored");
    });
    grants
}

fn mcp_oauth(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mcp-oauth"))
        .args(args)
        .env_remove("MCP_OAUTH_SEALING_KEYS")
        .env_remove("PROXY_BASE_URL")
        .output()
        .expect("run mcp-oauth");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn grants_list_shows_user_grants_and_revoke_ends_them() {
    let scratch = Scratch::new("list");
    let database = scratch.0.join("grants.db");
    let grants = seed(&database);
    let config = scratch.config(&format!("sqlite://{}", database.display()));
    let config = config.to_str().expect("utf-8 path");

    let (code, table, _) = mcp_oauth(&["grants", "list", "--config", config]);
    assert_eq!(code, 0);
    for grant in &grants {
        assert!(table.contains(grant.id.as_str()), "{table}");
    }
    assert_eq!(table.lines().count(), 4, "a header and three grants: {table}");
    assert!(!table.contains("upstream-token") && !table.contains("sk-master"), "{table}");

    let (code, json, _) = mcp_oauth(&[
        "grants",
        "list",
        "--config",
        config,
        "--identity",
        "alice",
        "--server",
        "notes",
        "--json",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> =
        json.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 1, "{json}");
    assert_eq!(lines[0]["grant"], grants[0].id.as_str());
    assert_eq!(lines[0]["generation"], 1);
    assert_eq!(lines[0]["expires_in_days"], 10);

    let (code, _, stderr) = mcp_oauth(&["grants", "revoke", "--config", config]);
    assert_eq!(code, 2, "revoking needs a filter: {stderr}");
    let (code, revoked, _) = mcp_oauth(&["grants", "revoke", "--config", config, "--identity", "alice"]);
    assert_eq!(code, 0);
    assert_eq!(revoked.lines().count(), 2, "{revoked}");
    let (_, table, _) = mcp_oauth(&["grants", "list", "--config", config]);
    assert!(table.contains(grants[1].id.as_str()) && !table.contains(grants[0].id.as_str()), "{table}");
    let (code, _, stderr) = mcp_oauth(&["grants", "revoke", "--config", config, "--identity", "alice"]);
    assert_eq!(code, 1, "nothing left to revoke: {stderr}");
}

#[test]
fn grants_refuse_the_memory_store_and_serve_refuses_an_unreachable_store() {
    let scratch = Scratch::new("refuse");
    let memory = scratch.config("memory");
    let (code, _, stderr) = mcp_oauth(&["grants", "list", "--config", memory.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("memory store"), "{stderr}");

    // A port nothing listens on: bind one, then let it go.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let unreachable = scratch.config(&format!("redis://:hunter2-secret@127.0.0.1:{port}/0"));
    let (code, _, stderr) =
        mcp_oauth(&["serve", "--config", unreachable.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("grant store") && stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password is never printed: {stderr}");
}
