//! Where captured logs and stats documents live: Redis (cluster) or this
//! process (embedded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::capture::{LogSink, SinkError};
use crate::{LogRecord, MemoryLogs, StatsDocument};
#[cfg(feature = "redis")]
use crate::{RedisLogs, RedisStats};

/// What [`LogStore::recent`] returns.
#[derive(Debug, Clone, Copy)]
pub struct LogQuery {
    /// The least severe level returned (`INFO` returns INFO, WARN, ERROR).
    pub min_level: tracing::Level,
    /// At most this many records.
    pub limit: usize,
    /// Only records at or after this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
}

/// The most records one [`LogQuery`] asks for.
pub const MAX_LOG_LIMIT: usize = 1000;
/// How many records a query asks for when it does not say.
pub const DEFAULT_LOG_LIMIT: usize = 100;

/// A limit that is not a number from 1 to [`MAX_LOG_LIMIT`] (the text,
/// quoted and clipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit {0}: expected a number from 1 to {MAX_LOG_LIMIT}")]
pub struct LimitError(pub String);

impl LogQuery {
    /// The limit written in `text`: [`DEFAULT_LOG_LIMIT`] when there is
    /// none, otherwise a number from 1 to [`MAX_LOG_LIMIT`].
    ///
    /// ```
    /// use keel_monitoring::LogQuery;
    ///
    /// assert_eq!(LogQuery::limit_from(None), Ok(100));
    /// assert_eq!(LogQuery::limit_from(Some(" 5 ")), Ok(5));
    /// assert!(LogQuery::limit_from(Some("1001")).is_err());
    /// assert!(LogQuery::limit_from(Some("many")).is_err());
    /// ```
    pub fn limit_from(text: Option<&str>) -> Result<usize, LimitError> {
        let Some(text) = text else { return Ok(DEFAULT_LOG_LIMIT) };
        text.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LOG_LIMIT).contains(n))
            .ok_or_else(|| LimitError(keel_core::shown(text)))
    }

    /// Whether `record` passes the level and time filters.
    pub fn matches(&self, record: &LogRecord) -> bool {
        // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
        record.tracing_level() <= self.min_level && self.since_ms.is_none_or(|since| record.time_ms >= since)
    }
}

/// The captured-log store of a process: a Redis list per process shared by
/// the cluster, or the in-process ring. Cloning shares it.
#[derive(Debug, Clone)]
pub enum LogStore {
    /// The in-process ring (embedded mode).
    Memory(Arc<MemoryLogs>),
    /// Redis lists (cluster mode).
    #[cfg(feature = "redis")]
    Redis(RedisLogs),
}

impl LogStore {
    /// The sink that [`Capture::drain`](crate::Capture::drain) writes to.
    pub fn sink(&self) -> Arc<dyn LogSink> {
        match self {
            LogStore::Memory(logs) => logs.clone(),
            #[cfg(feature = "redis")]
            LogStore::Redis(logs) => Arc::new(logs.clone()),
        }
    }

    /// Records of `process` that match `query`, newest first.
    pub async fn recent(&self, process: &str, query: &LogQuery) -> Result<Vec<LogRecord>, SinkError> {
        match self {
            LogStore::Memory(logs) => Ok(logs.recent(process, query)),
            #[cfg(feature = "redis")]
            LogStore::Redis(logs) => logs.recent(process, query).await.map_err(|err| SinkError(err.to_string())),
        }
    }

    /// Forgets the records of `process`.
    pub async fn clear(&self, process: &str) -> Result<(), SinkError> {
        match self {
            LogStore::Memory(logs) => {
                logs.clear(process);
                Ok(())
            }
            #[cfg(feature = "redis")]
            LogStore::Redis(logs) => logs.clear(process).await.map_err(|err| SinkError(err.to_string())),
        }
    }
}

/// Where stats documents are published, each with a time to live: Redis
/// keys `<namespace>:stats:<process>:<instance>` shared by the cluster, or
/// this process. Cloning shares it.
#[derive(Debug, Clone)]
pub enum StatsStore {
    /// This process only (embedded mode).
    Memory(Arc<MemoryStats>),
    /// Redis keys with a TTL (cluster mode).
    #[cfg(feature = "redis")]
    Redis(RedisStats),
}

impl StatsStore {
    /// An empty in-process store.
    pub fn memory() -> Self {
        StatsStore::Memory(Arc::default())
    }

    /// Stores `document`, replacing its instance's previous one, until `ttl`
    /// passes without a newer one.
    pub async fn publish(&self, document: &StatsDocument, ttl: Duration) -> Result<(), SinkError> {
        match self {
            StatsStore::Memory(stats) => {
                stats.publish(document, ttl);
                Ok(())
            }
            #[cfg(feature = "redis")]
            StatsStore::Redis(stats) => stats.publish(document, ttl).await.map_err(|err| SinkError(err.to_string())),
        }
    }

    /// Every live document, sorted by process then instance.
    pub async fn list(&self) -> Result<Vec<StatsDocument>, SinkError> {
        let mut documents = match self {
            StatsStore::Memory(stats) => stats.list(),
            #[cfg(feature = "redis")]
            StatsStore::Redis(stats) => stats.list().await.map_err(|err| SinkError(err.to_string()))?,
        };
        documents.sort_by(|a, b| (&a.process, &a.instance).cmp(&(&b.process, &b.instance)));
        Ok(documents)
    }

    /// Removes the document of `process` / `instance`.
    pub async fn remove(&self, process: &str, instance: &str) -> Result<(), SinkError> {
        match self {
            StatsStore::Memory(stats) => {
                stats.remove(process, instance);
                Ok(())
            }
            #[cfg(feature = "redis")]
            StatsStore::Redis(stats) => stats.remove(process, instance).await.map_err(|err| SinkError(err.to_string())),
        }
    }
}

/// In-process stats documents with expiry (on tokio's clock, so paused-time
/// tests can drive it).
#[derive(Debug, Default)]
pub struct MemoryStats {
    documents: Mutex<HashMap<(String, String), (Instant, StatsDocument)>>,
}

impl MemoryStats {
    fn documents(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Instant, StatsDocument)>> {
        // Each operation leaves the map consistent.
        self.documents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, document: &StatsDocument, ttl: Duration) {
        let key = (document.process.clone(), document.instance.clone());
        self.documents().insert(key, (Instant::now() + ttl, document.clone()));
    }

    fn list(&self) -> Vec<StatsDocument> {
        let now = Instant::now();
        let mut documents = self.documents();
        documents.retain(|_, (expires, _)| *expires > now);
        documents.values().map(|(_, document)| document.clone()).collect()
    }

    fn remove(&self, process: &str, instance: &str) {
        self.documents().remove(&(process.to_owned(), instance.to_owned()));
    }
}
