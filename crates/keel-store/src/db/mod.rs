//! The relational database: PostgreSQL or embedded SQLite.

#[cfg(feature = "postgres")]
mod copy;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_telemetry::{MeterSource, names};
use opentelemetry::KeyValue;
use opentelemetry::metrics::ObservableGauge;

use crate::StoreError;
use crate::metrics::StoreMetrics;

#[cfg(feature = "postgres")]
pub use copy::CopyMerge;
#[cfg(feature = "postgres")]
pub use postgres::{PgConnection, PgPool};
#[cfg(feature = "sqlite")]
pub use sqlite::{PooledSqliteConnection, SqliteConnection, SqlitePool};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `postgres://…` or `sqlite://path`; `None` means the embedded SQLite
    /// file `keel.sqlite` under [`data_dir`](Self::data_dir).
    pub url: Option<String>,
    /// Where the embedded database lives; created if missing.
    pub data_dir: PathBuf,
    /// Maximum pooled connections. On PostgreSQL a quarter as many more
    /// (at least one) are opened for bulk writes ([`Database::copy_merge`]).
    pub max_connections: usize,
    /// How long a caller waits for a pooled connection (and for a new
    /// connection to be established) before getting an error.
    pub acquire_timeout: Duration,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("./data"),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Which database a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// Embedded SQLite.
    Sqlite,
}

impl Backend {
    /// `postgres` or `sqlite`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Occupancy of the connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections handed out.
    pub in_use: usize,
    /// Connections open and waiting to be used.
    pub idle: usize,
    /// Configured maximum.
    pub max: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

#[derive(Clone)]
enum Pool {
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
}

/// A pooled, instrumented database handle. Cloning shares the pool.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    #[cfg(feature = "postgres")]
    bulk: Option<copy::BulkPool>,
    url: Arc<str>,
    metrics: StoreMetrics,
    _gauges: Arc<Vec<ObservableGauge<i64>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("Database").field("backend", &self.backend()).finish_non_exhaustive()
    }
}

impl Database {
    /// Connects (lazily: the pool opens connections on demand) and verifies
    /// the database answers.
    pub async fn connect(config: &DbConfig, telemetry: &dyn MeterSource) -> Result<Self, StoreError> {
        let db = Self::open(config, telemetry)?;
        db.ping().await?;
        Ok(db)
    }

    /// Builds the pool without touching the network: a malformed URL is an
    /// error here ([`StoreError::InvalidUrl`]); whether the server answers
    /// is for [`ping`](Self::ping) to find out (and retry).
    pub fn open(config: &DbConfig, telemetry: &dyn MeterSource) -> Result<Self, StoreError> {
        let url = config.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        #[cfg(feature = "postgres")]
        let mut bulk = None;
        let (pool, url): (Pool, String) = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                #[cfg(feature = "postgres")]
                {
                    let parsed = url.parse::<tokio_postgres::Config>().map_err(|err| StoreError::InvalidUrl {
                        what: "database",
                        reason: format!("cannot parse the postgres url: {err}"),
                    })?;
                    bulk = Some(copy::build_bulk_pool(parsed, config)?);
                    (Pool::Postgres(postgres::build_pool(url, config)?), url.to_owned())
                }
                #[cfg(not(feature = "postgres"))]
                {
                    return Err(StoreError::InvalidUrl {
                        what: "database",
                        reason: "this build has no postgres support (enable the `postgres` feature)".into(),
                    });
                }
            }
            Some(url) if url.starts_with("sqlite:") => {
                sqlite_pool(url.trim_start_matches("sqlite://").trim_start_matches("sqlite:").into(), config)?
            }
            Some(other) => {
                let scheme = other.split(':').next().unwrap_or_default();
                return Err(StoreError::InvalidUrl {
                    what: "database",
                    reason: format!("unsupported scheme {scheme:?} (expected postgres:// or sqlite://)"),
                });
            }
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::Io {
                    context: format!("cannot create data directory {}", config.data_dir.display()),
                    source,
                })?;
                sqlite_pool(config.data_dir.join("keel.sqlite"), config)?
            }
        };
        let metrics = StoreMetrics::new(telemetry);
        let gauges = Arc::new(pool_gauges(telemetry, &pool));
        Ok(Self {
            pool,
            #[cfg(feature = "postgres")]
            bulk,
            url: url.into(),
            metrics,
            _gauges: gauges,
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The PostgreSQL pool, when this is PostgreSQL.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Some(pool),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, when this is embedded SQLite.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(pool) => Some(pool),
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => None,
        }
    }

    /// A pooled PostgreSQL connection; `Ok(None)` when this is SQLite.
    #[cfg(feature = "postgres")]
    pub async fn postgres_connection(&self) -> Result<Option<PgConnection>, StoreError> {
        match self.postgres() {
            Some(pool) => pool.get().await.map(Some).map_err(|err| StoreError::Pool(err.to_string())),
            None => Ok(None),
        }
    }

    /// A pooled SQLite connection; `Ok(None)` when this is PostgreSQL.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite_connection(&self) -> Result<Option<PooledSqliteConnection>, StoreError> {
        match self.sqlite() {
            Some(pool) => pool.get().await.map(Some).map_err(|err| StoreError::Pool(err.to_string())),
            None => Ok(None),
        }
    }

    /// Writes `items` on PostgreSQL through `plan`: binary `COPY` into the
    /// plan's staging table, then its merge statement, in one transaction
    /// (nothing of the batch is visible unless all of it merged). `row`
    /// gives each item's columns in the order of [`CopyMerge::types`].
    /// `Ok(false)` when this is SQLite: the caller writes another way.
    ///
    /// A failure is a [`StoreError::Postgres`], classified like every other
    /// store error ([`StoreError::kind`]). Dropping the future gives up on
    /// the answer, not on the batch: once the merge is sent its `COMMIT`
    /// goes with it, so the batch may still land (whole); a connection left
    /// mid-batch is closed, never handed out again.
    #[cfg(feature = "postgres")]
    pub async fn copy_merge<T, const N: usize>(
        &self,
        plan: &CopyMerge,
        items: &[T],
        row: impl Fn(&T) -> [&(dyn tokio_postgres::types::ToSql + Sync); N],
    ) -> Result<bool, StoreError> {
        match &self.bulk {
            Some(bulk) => copy::copy_merge(bulk, plan, items, row).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The connection URL (PostgreSQL) or file path (SQLite). May contain a
    /// password: do not log it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs every pending embedded migration for this backend. Idempotent:
    /// applied migrations are recorded and skipped. Returns how many ran.
    pub async fn run_migrations(&self) -> Result<usize, StoreError> {
        match &self.pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => postgres::run_migrations(pool).await,
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => sqlite::run_migrations(pool, &self.url).await,
        }
    }

    /// Round-trips `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => self.timed("ping", "", postgres::ping(pool)).await,
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => self.timed("ping", "", sqlite::ping(pool)).await,
        }
    }

    /// Current pool occupancy.
    pub fn pool_status(&self) -> PoolStatus {
        pool_status(&self.pool)
    }

    /// Runs `operation` on `table` and records its duration in
    /// `db_client_operation_duration_seconds`.
    pub async fn timed<T, E>(
        &self,
        operation: &'static str,
        table: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.metrics.time_db(self.backend().as_str(), operation, table, fut).await
    }
}

#[cfg(feature = "sqlite")]
fn sqlite_pool(path: PathBuf, config: &DbConfig) -> Result<(Pool, String), StoreError> {
    let text = path.to_string_lossy().into_owned();
    Ok((Pool::Sqlite(sqlite::build_pool(&text, config)?), text))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_pool(_path: PathBuf, _config: &DbConfig) -> Result<(Pool, String), StoreError> {
    Err(StoreError::InvalidUrl {
        what: "database",
        reason: "this build has no embedded sqlite support (enable the `sqlite` feature or set a postgres:// url)"
            .into(),
    })
}

fn pool_status(pool: &Pool) -> PoolStatus {
    let status = match pool {
        #[cfg(feature = "postgres")]
        Pool::Postgres(pool) => pool.status(),
        #[cfg(feature = "sqlite")]
        Pool::Sqlite(pool) => pool.status(),
    };
    PoolStatus {
        in_use: status.size.saturating_sub(status.available),
        idle: status.available,
        max: status.max_size,
        waiting: status.waiting,
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn pool_gauges(telemetry: &dyn MeterSource, pool: &Pool) -> Vec<ObservableGauge<i64>> {
    let meter = telemetry.meter("keel-store");
    let name = match pool {
        #[cfg(feature = "postgres")]
        Pool::Postgres(_) => "postgres",
        #[cfg(feature = "sqlite")]
        Pool::Sqlite(_) => "sqlite",
    };
    let (p1, p2, p3) = (pool.clone(), pool.clone(), pool.clone());
    vec![
        meter
            .i64_observable_gauge(names::DB_CONNECTION_COUNT)
            .with_description("Open connections in the pool, by state")
            .with_callback(move |obs| {
                let s = pool_status(&p1);
                obs.observe(
                    to_i64(s.in_use),
                    &[
                        KeyValue::new("db.client.connection.pool.name", name),
                        KeyValue::new("db.client.connection.state", "used"),
                    ],
                );
                obs.observe(
                    to_i64(s.idle),
                    &[
                        KeyValue::new("db.client.connection.pool.name", name),
                        KeyValue::new("db.client.connection.state", "idle"),
                    ],
                );
            })
            .build(),
        meter
            .i64_observable_gauge(names::DB_CONNECTION_MAX)
            .with_description("Maximum connections the pool may open")
            .with_callback(move |obs| {
                obs.observe(to_i64(pool_status(&p2).max), &[KeyValue::new("db.client.connection.pool.name", name)]);
            })
            .build(),
        meter
            .i64_observable_gauge(names::DB_CONNECTION_PENDING)
            .with_description("Callers waiting for a pooled connection")
            .with_callback(move |obs| {
                obs.observe(to_i64(pool_status(&p3).waiting), &[KeyValue::new("db.client.connection.pool.name", name)]);
            })
            .build(),
    ]
}
