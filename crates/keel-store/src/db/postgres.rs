use deadpool::managed::Timeouts;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::DbConfig;
use crate::StoreError;

/// A deadpool pool of async PostgreSQL connections.
pub type PgPool = Pool<AsyncPgConnection>;
/// A connection borrowed from a [`PgPool`] (returned on drop).
pub type PgConnection = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

pub(super) fn build_pool(url: &str, config: &DbConfig) -> Result<PgPool, StoreError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    Pool::builder(manager)
        .max_size(config.max_connections)
        .timeouts(Timeouts {
            wait: Some(config.acquire_timeout),
            create: Some(config.acquire_timeout),
            recycle: Some(config.acquire_timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|err| StoreError::Pool(err.to_string()))
}

pub(super) async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.get().await.map_err(|err| StoreError::Pool(err.to_string()))?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// Key of the session advisory lock that serializes migrations across
/// processes ("keel" + "migr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b65_656c_6d69_6772;

pub(super) async fn run_migrations(pool: &PgPool) -> Result<usize, StoreError> {
    // Replicas starting at once on an empty database would race to create
    // the same tables: the first to take the lock migrates, the others wait
    // and then find nothing left to do. A session lock is released by the
    // server if this process dies holding it.
    let mut lock = pool.get().await.map_err(|err| StoreError::Pool(err.to_string()))?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).execute(&mut lock).await?;
    let conn = pool.get().await.map_err(|err| StoreError::Pool(err.to_string()));
    let applied = match conn {
        // The harness drives the async connection from a blocking thread:
        // diesel's migration runner is synchronous.
        Ok(conn) => tokio::task::spawn_blocking(move || {
            let mut harness = AsyncMigrationHarness::new(conn);
            harness
                .run_pending_migrations(MIGRATIONS)
                .map(|applied| applied.len())
                .map_err(|err| StoreError::Migration(err.to_string()))
        })
        .await
        .map_err(|err| StoreError::Migration(format!("migration task failed: {err}")))
        .and_then(|applied| applied),
        Err(err) => Err(err),
    };
    let unlocked = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).execute(&mut lock).await;
    if unlocked.is_err() {
        // Dropping the connection from the pool ends its session, and with
        // it the lock.
        let _ = deadpool::managed::Object::take(lock);
    }
    applied
}
