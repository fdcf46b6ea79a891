/// Errors from Keel's storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The configured URL is not one this build understands.
    #[error("invalid {what} url: {reason}")]
    InvalidUrl {
        /// Which URL (`database` or `redis`).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A connection could not be established.
    #[error("cannot connect to {backend}: {reason}")]
    Connect {
        /// The backend that refused.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// No pooled connection could be had.
    #[error("database pool: {0}")]
    Pool(String),
    /// A query failed.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Migrations could not be applied.
    #[error("migrations failed: {0}")]
    Migration(String),
    /// A Redis command failed.
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A bus channel name is not usable on every backend.
    #[error("invalid channel name {0:?}: use 1-63 characters from [A-Za-z0-9_.:-]")]
    InvalidChannel(String),
    /// A payload cannot travel on this bus.
    #[error("payload rejected by the {backend} bus: {reason}")]
    Payload {
        /// The bus backend.
        backend: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The bus has shut down.
    #[error("the bus is closed")]
    BusClosed,
    /// A local file operation failed (e.g. creating the data directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
