//! Opening the store `general_settings.mcp_oauth_store` names, once, at start-up (design §4.10).
//!
//! `mcp-oauth serve` and `mcp-oauth grants` call [`open_store`]: it connects, checks the store
//! answers a read, and hands back the store behind [`DynGrantStore`]. A store that cannot be opened
//! or does not answer is an error with the reason, so the gateway refuses to start instead of
//! serving with single-use checks that would all fail.

use std::sync::Arc;

use mcp_oauth_core::config::StoreSetting;
use mcp_oauth_core::gateway::StoreProbe;

use super::{DynGrantStore, MemoryGrantStore};
use crate::Runtime;

/// Records a store holds at most (grants, single-use marks and locks together).
pub const DEFAULT_MAX_RECORDS: usize = 100_000;

/// Why the configured grant store could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreOpenError {
    /// This build was made without the backend (cargo feature `sqlite` or `redis`).
    #[error("this build of mcp-oauth has no {backend} grant store; build with the `{backend}` feature")]
    NotBuilt {
        /// `sqlite` or `redis`.
        backend: &'static str,
    },
    /// The backend refused to open or connect; the message says where and why (never a password).
    #[error("cannot open the grant store: {0}")]
    Open(String),
    /// The store opened but does not answer a read.
    #[error("the grant store does not answer ({reason}); check that it is running and reachable")]
    NotAnswering {
        /// The store's reason code.
        reason: &'static str,
    },
    /// The runtime could not run the blocking open.
    #[error("the grant store could not be opened on a blocking thread: {0}")]
    Blocking(String),
}

/// Opens the grant store `setting` names, holding at most `max_records` records, and checks that
/// it answers a read.
pub async fn open_store<R: Runtime>(
    setting: &StoreSetting,
    max_records: usize,
    runtime: R,
) -> Result<Arc<dyn DynGrantStore>, StoreOpenError> {
    let store: Arc<dyn DynGrantStore> = match setting {
        StoreSetting::Memory => return Ok(Arc::new(MemoryGrantStore::new(max_records))),
        StoreSetting::Sqlite { path } => open_sqlite(path, max_records, runtime).await?,
        StoreSetting::Redis(redis) => open_redis(redis, max_records, runtime).await?,
    };
    let answer = store.apply_boxed(StoreProbe.op()).await;
    StoreProbe.verdict(&answer).map(|()| store).map_err(|reason| StoreOpenError::NotAnswering { reason })
}

#[cfg(feature = "sqlite")]
async fn open_sqlite<R: Runtime>(
    path: &str,
    max_records: usize,
    runtime: R,
) -> Result<Arc<dyn DynGrantStore>, StoreOpenError> {
    let path = std::path::PathBuf::from(path);
    let store_runtime = runtime.clone();
    let opened = runtime
        .spawn_blocking(move || super::sqlite::SqliteGrantStore::open(&path, max_records, store_runtime))
        .await
        .map_err(|error| StoreOpenError::Blocking(error.to_string()))?;
    let store = opened.map_err(|error| StoreOpenError::Open(error.to_string()))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite<R: Runtime>(
    _path: &str,
    _max_records: usize,
    _runtime: R,
) -> Result<Arc<dyn DynGrantStore>, StoreOpenError> {
    Err(StoreOpenError::NotBuilt { backend: "sqlite" })
}

#[cfg(feature = "redis")]
async fn open_redis<R: Runtime>(
    setting: &mcp_oauth_core::config::RedisSetting,
    max_records: usize,
    runtime: R,
) -> Result<Arc<dyn DynGrantStore>, StoreOpenError> {
    let setting = setting.clone();
    let store_runtime = runtime.clone();
    let connected = runtime
        .spawn_blocking(move || super::redis::RedisGrantStore::connect(&setting, max_records, store_runtime))
        .await
        .map_err(|error| StoreOpenError::Blocking(error.to_string()))?;
    let store = connected.map_err(|error| StoreOpenError::Open(error.to_string()))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis<R: Runtime>(
    _setting: &mcp_oauth_core::config::RedisSetting,
    _max_records: usize,
    _runtime: R,
) -> Result<Arc<dyn DynGrantStore>, StoreOpenError> {
    Err(StoreOpenError::NotBuilt { backend: "redis" })
}
