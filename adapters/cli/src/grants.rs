//! `mcp-oauth grants list|revoke`: what an operator sees and ends in the configured grant store.
//!
//! Both read `general_settings.mcp_oauth_store` from the same configuration file `serve` uses and
//! open that store directly, so they work while the gateway runs (and on any replica). The memory
//! store lives inside the serving process, so these commands need `sqlite://` or `redis://`.
//! Nothing printed is a secret: upstream tokens stay sealed in the store and are never opened here.

use std::path::Path;
use std::process::ExitCode;

use mcp_oauth_core::config::{StoreSetting, load_yaml};
use mcp_oauth_core::grant::Grant;
use mcp_oauth_core::seal::UnixTime;
use mcp_oauth_runtime::grant_store::{DEFAULT_MAX_RECORDS, DynGrantStore, open_store, unix_now};
use mcp_oauth_tokio::TokioRuntime;

/// The most grants one command reads: a store's default bound. A store holding more is refused
/// rather than read in part (a revocation must not miss a grant it was asked to end).
const LIST_LIMIT: usize = DEFAULT_MAX_RECORDS;

/// Which grants a command concerns.
pub(crate) struct Filter {
    /// Only this grant id.
    pub(crate) grant: Option<String>,
    /// Only grants for this server.
    pub(crate) server: Option<String>,
    /// Only grants of this identity (gateway key name).
    pub(crate) identity: Option<String>,
}

impl Filter {
    fn admits(&self, grant: &Grant) -> bool {
        self.grant.as_deref().is_none_or(|id| grant.id.as_str() == id)
            && self.server.as_deref().is_none_or(|server| grant.server == server)
            && self.identity.as_deref().is_none_or(|name| grant.identity.name == name)
    }

    fn is_empty(&self) -> bool {
        self.grant.is_none() && self.server.is_none() && self.identity.is_none()
    }
}

/// Runs `mcp-oauth grants list`.
pub(crate) fn list(config: &Path, filter: &Filter, json: bool) -> ExitCode {
    with_store(config, |store| async move {
        let grants = match matching(&*store, filter).await {
            Ok(grants) => grants,
            Err(code) => return code,
        };
        let now = unix_now();
        if json {
            for grant in &grants {
                println!("{}", summary(grant, now));
            }
        } else {
            print_table(&grants, now);
        }
        ExitCode::SUCCESS
    })
}

/// Runs `mcp-oauth grants revoke`: ends every matching grant at once (its gateway tokens stop
/// working on their next use, on every replica sharing the store).
pub(crate) fn revoke(config: &Path, filter: &Filter) -> ExitCode {
    if filter.is_empty() {
        eprintln!("mcp-oauth grants revoke: name what to revoke with --grant, --server or --identity");
        return ExitCode::from(2);
    }
    with_store(config, |store| async move {
        let grants = match matching(&*store, filter).await {
            Ok(grants) => grants,
            Err(code) => return code,
        };
        let now = unix_now();
        let mut revoked = 0;
        for grant in grants {
            let id = grant.id.clone();
            // A grant written already ended is a revocation (every backend deletes it).
            let ended = Grant { expires_at: now, ..grant };
            match store
                .apply_boxed(mcp_oauth_core::grant::StoreOp::PutGrant(Box::new(ended)))
                .await
                .expect_stored()
            {
                Ok(()) => {
                    revoked += 1;
                    println!("revoked {id}");
                }
                Err(unavailable) => {
                    eprintln!(
                        "mcp-oauth grants revoke: {id} not revoked: the store answered {}",
                        unavailable.reason
                    );
                    return ExitCode::from(1);
                }
            }
        }
        if revoked == 0 {
            eprintln!("mcp-oauth grants revoke: no grant matches");
            return ExitCode::from(1);
        }
        ExitCode::SUCCESS
    })
}

async fn matching(store: &dyn DynGrantStore, filter: &Filter) -> Result<Vec<Grant>, ExitCode> {
    match store.list_boxed(LIST_LIMIT).await {
        Ok(grants) if grants.len() >= LIST_LIMIT => {
            eprintln!(
                "mcp-oauth grants: the store holds {LIST_LIMIT} grants or more, more than one command reads; nothing was done"
            );
            Err(ExitCode::from(1))
        }
        Ok(mut grants) => {
            grants.retain(|grant| filter.admits(grant));
            grants.sort_by(|a, b| {
                (&a.server, &a.identity.name, a.id.as_str()).cmp(&(
                    &b.server,
                    &b.identity.name,
                    b.id.as_str(),
                ))
            });
            Ok(grants)
        }
        Err(unavailable) => {
            eprintln!("mcp-oauth grants: the store cannot list grants ({})", unavailable.reason);
            Err(ExitCode::from(1))
        }
    }
}

/// Loads the configuration, opens its store and runs `work` with it on a tokio runtime.
fn with_store<F, Fut>(config: &Path, work: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<dyn DynGrantStore>) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let file = config.display().to_string();
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("mcp-oauth grants: cannot read {file}: {error}");
            return ExitCode::from(1);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let loaded = match load_yaml(&text, &env) {
        Ok(loaded) => loaded,
        Err(failed) => {
            crate::serve::print_diagnostics(&file, &failed.errors);
            eprintln!("mcp-oauth grants: {} error(s) in {file}", failed.errors.len());
            return ExitCode::from(1);
        }
    };
    let setting = loaded.config.settings.grants.store.clone();
    if setting == StoreSetting::Memory {
        eprintln!(
            "mcp-oauth grants: {file} uses the memory store, which lives inside the serving process; \
             set general_settings.mcp_oauth_store to sqlite://PATH or redis://HOST:PORT to manage grants"
        );
        return ExitCode::from(1);
    }
    let Some(runtime) = crate::runtime() else {
        return ExitCode::from(1);
    };
    runtime.block_on(async move {
        match open_store(&setting, DEFAULT_MAX_RECORDS, TokioRuntime).await {
            Ok(store) => work(store).await,
            Err(error) => {
                eprintln!("mcp-oauth grants: {error}");
                ExitCode::from(1)
            }
        }
    })
}

/// One grant as a JSON line: what it is, never a token.
fn summary(grant: &Grant, now: UnixTime) -> serde_json::Value {
    serde_json::json!({
        "grant": grant.id.as_str(),
        "server": grant.server,
        "identity": grant.identity.name,
        "client": grant.client,
        "scope": grant.scope,
        "generation": grant.generation,
        "expires_at": grant.expires_at.as_secs(),
        "expires_in_days": days_left(grant, now),
        "upstream_refreshable": grant.upstream_refresh_token.is_some(),
    })
}

/// Whole days until the grant ends, rounded up (a grant ending in 9.5 days shows 10).
fn days_left(grant: &Grant, now: UnixTime) -> u64 {
    grant.expires_at.as_secs().saturating_sub(now.as_secs()).div_ceil(86_400)
}

fn print_table(grants: &[Grant], now: UnixTime) {
    if grants.is_empty() {
        println!("no grants");
        return;
    }
    println!("{:<24} {:<16} {:<16} {:>5} {:>8}  SCOPE", "GRANT", "SERVER", "IDENTITY", "GEN", "EXPIRES");
    for grant in grants {
        let days = days_left(grant, now);
        println!(
            "{:<24} {:<16} {:<16} {:>5} {:>7}d  {}",
            grant.id.as_str(),
            grant.server,
            grant.identity.name,
            grant.generation,
            days,
            grant.scope
        );
    }
}
