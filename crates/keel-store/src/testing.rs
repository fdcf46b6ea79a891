//! Helpers for integration tests that talk to the real PostgreSQL and Redis.
//!
//! Server addresses come from `KEEL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `KEEL_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`). A server that cannot be reached makes
//! the test fail with a message naming the variable: tests never skip.
//!
//! Each test gets its own database ([`TempDatabase`]) or key prefix
//! ([`unique_prefix`]), so tests run in parallel without seeing each other.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

use crate::{Database, DbConfig, RedisConfig, RedisStore};

/// The administrative PostgreSQL URL used to create test databases.
pub fn postgres_admin_url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The Redis URL for tests.
pub fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A short unique string for database names, channels and key prefixes.
pub fn unique_prefix(label: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("keel_test_{label}_{}", &id[..12])
}

/// A freshly created, uniquely named PostgreSQL database.
#[derive(Debug)]
pub struct TempDatabase {
    name: String,
    url: String,
}

impl TempDatabase {
    /// Creates the database. Panics with a clear message when PostgreSQL is
    /// unreachable: a test that needs it must not pass without it.
    pub async fn create(label: &str) -> Self {
        let admin = postgres_admin_url();
        let name = unique_prefix(label);
        let mut conn = AsyncPgConnection::establish(&admin)
            .await
            .unwrap_or_else(|err| panic!("PostgreSQL is required at {admin} (set KEEL_TEST_POSTGRES_URL, or run `cargo xtask services up`): {err}"));
        conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|err| panic!("cannot create test database {name}: {err}"));
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Self { name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`DbConfig`] pointing at this database.
    pub fn config(&self) -> DbConfig {
        DbConfig { url: Some(self.url.clone()), ..DbConfig::default() }
    }

    /// Connects a [`Database`] to it.
    pub async fn connect(&self, telemetry: &keel_telemetry::Telemetry) -> Database {
        Database::connect(&self.config(), telemetry)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", self.name))
    }

    /// Drops the database, terminating any session still connected.
    pub async fn drop_database(self) {
        if let Ok(mut conn) = AsyncPgConnection::establish(&postgres_admin_url()).await {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)).await;
        }
    }
}

/// Connects to the test Redis, panicking with a clear message if it is down.
pub async fn redis(telemetry: &keel_telemetry::Telemetry) -> RedisStore {
    let url = redis_url();
    RedisStore::connect(&RedisConfig::new(&url), telemetry).await.unwrap_or_else(|err| {
        panic!("Redis is required at {url} (set KEEL_TEST_REDIS_URL, or run `cargo xtask services up`): {err}")
    })
}
