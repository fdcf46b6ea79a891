use deadpool::managed::Timeouts;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncMigrationHarness, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::DbConfig;
use crate::StoreError;

/// An async SQLite connection (diesel's sync connection on a blocking thread).
pub type SqliteConnection = SyncConnectionWrapper<diesel::SqliteConnection>;
/// A deadpool pool of [`SqliteConnection`]s.
pub type SqlitePool = Pool<SqliteConnection>;
/// A connection borrowed from a [`SqlitePool`] (returned on drop).
pub type PooledSqliteConnection = diesel_async::pooled_connection::deadpool::Object<SqliteConnection>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

// WAL lets readers proceed during a write; busy_timeout turns writer contention
// into a short wait instead of an immediate "database is locked". FULL syncs
// the WAL at every commit: a write the entries queue persisted is then on
// disk before the local log's checkpoint lets its record go (with NORMAL a
// power loss could undo the last commits after the log had dropped them).
const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

pub(super) fn build_pool(path: &str, config: &DbConfig) -> Result<SqlitePool, StoreError> {
    let mut manager_config = ManagerConfig::<SqliteConnection>::default();
    manager_config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = SqliteConnection::establish(&url).await?;
            conn.batch_execute(PRAGMAS).await.map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<SqliteConnection>::new_with_config(path, manager_config);
    Pool::builder(manager)
        .max_size(config.max_connections.clamp(1, 8))
        .timeouts(Timeouts {
            wait: Some(config.acquire_timeout),
            create: Some(config.acquire_timeout),
            recycle: Some(config.acquire_timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|err| StoreError::Pool(err.to_string()))
}

pub(super) async fn ping(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut conn = pool.get().await.map_err(|err| StoreError::Pool(err.to_string()))?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

pub(super) async fn run_migrations(pool: &SqlitePool, path: &str) -> Result<usize, StoreError> {
    let conn = pool.get().await.map_err(|err| StoreError::Pool(err.to_string()))?;
    let lock_path = format!("{path}.migrate-lock");
    tokio::task::spawn_blocking(move || {
        // Processes sharing the file migrate one at a time: an exclusive
        // lock on a side file, released when it is closed (or the process dies).
        let in_memory = lock_path.starts_with(":memory:") || lock_path.contains("mode=memory");
        let lock = (!in_memory)
            .then(|| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .and_then(|file| file.lock().map(|()| file))
                    .map_err(|err| StoreError::Migration(format!("cannot lock {lock_path}: {err}")))
            })
            .transpose()?;
        let mut harness = AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|err| StoreError::Migration(err.to_string()));
        drop(lock);
        applied
    })
    .await
    .map_err(|err| StoreError::Migration(format!("migration task failed: {err}")))?
}
