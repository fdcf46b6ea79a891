//! Helpers for integration tests that talk to the real PostgreSQL and Redis.
//!
//! Server addresses come from `KEEL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `KEEL_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`); suites that also run on a Redis
//! Cluster take it from `KEEL_TEST_REDIS_CLUSTER_URL` (default: the six
//! local nodes of `cargo xtask services up --redis-cluster`, ports 7101-7106).
//! A server that cannot be reached makes the test fail with a message naming
//! the variable: tests never skip.
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

/// The Redis Cluster URL for tests.
pub fn redis_cluster_url() -> String {
    std::env::var("KEEL_TEST_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        "redis-cluster://127.0.0.1:7101?node=127.0.0.1:7102&node=127.0.0.1:7103&node=127.0.0.1:7104&node=127.0.0.1:7105&node=127.0.0.1:7106".into()
    })
}

/// Both Redis deployments a parameterized suite runs on: the standalone
/// server, then the cluster.
pub fn redis_urls() -> [String; 2] {
    [redis_url(), redis_cluster_url()]
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
    pub async fn connect(&self, telemetry: &dyn keel_telemetry::MeterSource) -> Database {
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
pub async fn redis(telemetry: &dyn keel_telemetry::MeterSource) -> RedisStore {
    redis_at(&redis_url(), telemetry).await
}

/// Connects to the Redis (standalone or cluster) at `url`, panicking with a
/// clear message if it is down.
pub async fn redis_at(url: &str, telemetry: &dyn keel_telemetry::MeterSource) -> RedisStore {
    RedisStore::connect(&RedisConfig::new(url), telemetry).await.unwrap_or_else(|err| {
        panic!(
            "Redis is required at {url} (set KEEL_TEST_REDIS_URL / KEEL_TEST_REDIS_CLUSTER_URL, or run `cargo xtask services up` and `cargo xtask services up --redis-cluster`): {err}"
        )
    })
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|err| panic!("cannot pick a free port: {err}"))
}

/// A private `redis-server` on a free port, for tests that stop Redis. It is
/// killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    url: String,
}

impl RedisServer {
    /// Starts one; panics with a clear message when `redis-server` is missing.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (e.g. one a process under test already points at).
    pub async fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("redis-server is required for this test (apt-get install redis-server): {err}")
            });
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server on {addr} did not start");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self { child: Some(child), url: format!("redis://{addr}") }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Freezes it with SIGSTOP: connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it with SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
            assert!(status.is_ok_and(|s| s.success()), "kill {signal} redis-server failed");
        }
    }

    /// Kills it (Redis is then down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
