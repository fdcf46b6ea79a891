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

pub(super) async fn run_migrations(pool: &PgPool) -> Result<usize, StoreError> {
    let conn = pool.get().await.map_err(|err| StoreError::Pool(err.to_string()))?;
    // The harness drives the async connection from a blocking thread: diesel's
    // migration runner is synchronous.
    tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|err| StoreError::Migration(err.to_string()))
    })
    .await
    .map_err(|err| StoreError::Migration(format!("migration task failed: {err}")))?
}
