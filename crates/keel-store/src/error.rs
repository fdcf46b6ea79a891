use keel_core::FailureKind;

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
    /// A bulk write (binary `COPY` and its merge) failed.
    #[cfg(feature = "postgres")]
    #[error("database bulk write failed: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
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

impl From<StoreError> for keel_core::WriteError {
    fn from(err: StoreError) -> Self {
        Self { kind: err.kind(), message: err.to_string() }
    }
}

impl StoreError {
    /// Whether trying the same operation again may succeed
    /// ([`FailureKind::Transient`]: the store is unreachable or busy) or
    /// whether the store refused the data ([`FailureKind::Permanent`]).
    ///
    /// The one place where database and Redis errors are classified; queues
    /// and batchers retry or isolate by it.
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::Connect { .. } | StoreError::Pool(_) | StoreError::BusClosed | StoreError::Io { .. } => {
                FailureKind::Transient
            }
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            StoreError::Query(err) => query_kind(err),
            #[cfg(feature = "postgres")]
            StoreError::Postgres(err) => postgres_kind(err),
            #[cfg(feature = "redis")]
            StoreError::Redis(err) => redis_kind(err),
            StoreError::InvalidUrl { .. }
            | StoreError::Migration(_)
            | StoreError::InvalidChannel(_)
            | StoreError::Payload { .. } => FailureKind::Permanent,
        }
    }
}

/// Messages of errors that carry no specific kind but say the server, not
/// the data, is the problem (PostgreSQL SQLSTATE classes 08, 40, 53 — disk
/// full included —, 57, 58, and SQLite's busy, locked, full-disk and I/O
/// answers). A full disk is the store's problem, never the data's: the
/// batch waits for room instead of being dead-lettered.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const TRANSIENT_MESSAGES: [&str; 18] = [
    "database or disk is full",
    "could not extend file",
    "disk full",
    "disk i/o error",
    "terminating connection",
    "connection",
    "the database system is",
    "deadlock detected",
    "could not serialize",
    "canceling statement",
    "too many clients",
    "remaining connection slots",
    "server closed",
    "database is locked",
    "database table is locked",
    "out of memory",
    "no space left",
    "could not write",
];

#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn query_kind(err: &diesel::result::Error) -> FailureKind {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    match err {
        E::DatabaseError(kind, info) => match kind {
            K::UnableToSendCommand | K::SerializationFailure | K::ReadOnlyTransaction | K::ClosedConnection => {
                FailureKind::Transient
            }
            K::UniqueViolation
            | K::ForeignKeyViolation
            | K::RestrictViolation
            | K::NotNullViolation
            | K::CheckViolation
            | K::ExclusionViolation => FailureKind::Permanent,
            _ => {
                let message = info.message().to_ascii_lowercase();
                if TRANSIENT_MESSAGES.iter().any(|m| message.contains(m)) {
                    FailureKind::Transient
                } else {
                    FailureKind::Permanent
                }
            }
        },
        E::BrokenTransactionManager | E::RollbackErrorOnCommit { .. } | E::AlreadyInTransaction => {
            FailureKind::Transient
        }
        _ => FailureKind::Permanent,
    }
}

/// SQLSTATE classes that say the server, not the data, is the problem:
/// connection exception, transaction rollback, insufficient resources (a
/// full disk included), operator intervention, system error.
#[cfg(feature = "postgres")]
const TRANSIENT_CLASSES: [&str; 5] = ["08", "40", "53", "57", "58"];

#[cfg(feature = "postgres")]
fn postgres_kind(err: &tokio_postgres::Error) -> FailureKind {
    if let Some(db) = err.as_db_error() {
        return if TRANSIENT_CLASSES.iter().any(|class| db.code().code().starts_with(class)) {
            FailureKind::Transient
        } else {
            FailureKind::Permanent
        };
    }
    // Without a server answer: the row could not be encoded (the data), or
    // the connection failed (the server).
    let text = err.to_string();
    if text.starts_with("error serializing") || text.starts_with("expected ") || text.starts_with("invalid column") {
        FailureKind::Permanent
    } else {
        FailureKind::Transient
    }
}

/// The server's own message when there is one ("db error" says nothing).
#[cfg(feature = "postgres")]
fn postgres_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(err) {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

#[cfg(feature = "redis")]
fn redis_kind(err: &fred::error::Error) -> FailureKind {
    use fred::error::ErrorKind as K;
    match err.kind() {
        K::InvalidArgument | K::InvalidCommand | K::Parse | K::Config | K::Url | K::NotFound => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

#[cfg(all(test, any(feature = "postgres", feature = "sqlite")))]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn query(message: &str) -> StoreError {
        StoreError::Query(Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned())))
    }

    #[test]
    fn a_full_disk_is_transient_and_a_refused_value_is_not() {
        for full in [
            "database or disk is full",
            "could not extend file base/16384/16397: No space left on device",
            "disk I/O error",
        ] {
            assert_eq!(query(full).kind(), FailureKind::Transient, "{full}");
        }
        assert_eq!(query("invalid input syntax for type json").kind(), FailureKind::Permanent);
    }
}
