//! `mcp-oauth check config` prints each server's upstream URL masked with the same function as the
//! gateway's `x-mcp-debug-outbound-url` header (design §4.7, issue 9 item 6).

use std::process::Command;

use mcp_oauth_core::mask::mask_url;
use url::Url;

#[test]
fn check_config_masks_a_secret_in_the_upstream_path_and_query() {
    let upstream = "https://mcp.zapier.com/zap/PATHSECRET-9f8e7d6c5b4a/mcp?api_key=querysecret123";
    let directory = std::env::temp_dir().join(format!("mcp-oauth-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temporary directory");
    let file = directory.join("config.yaml");
    std::fs::write(&file, format!("mcp_servers:\n  zap:\n    url: {upstream}\n    auth_type: none\n"))
        .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_mcp-oauth"))
        .args(["check", "config"])
        .arg(&file)
        .env_remove("PROXY_BASE_URL")
        .env_remove("MCP_TRUSTED_REDIRECT_ORIGINS")
        .output()
        .expect("run mcp-oauth");
    let _ = std::fs::remove_dir_all(&directory);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let masked = mask_url(&Url::parse(upstream).expect("upstream URL"));
    assert_eq!(masked, "https://mcp.zapier.com/zap/****5b4a/mcp?api_key=****");
    assert!(stdout.contains(&format!("server zap: {masked} ")), "{stdout}");
    assert!(!stdout.contains("PATHSECRET") && !stdout.contains("querysecret"), "{stdout}");
}
