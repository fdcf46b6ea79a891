//! Captured records in Redis lists `<namespace>:logs:<process>`, newest
//! first, capped with `LTRIM`.

use fred::prelude::*;
use keel_store::{RedisStore, StoreError};

use crate::LogRecord;
use crate::capture::{LogSink, SinkError, SinkFuture};

/// The Redis list sink and reader.
#[derive(Debug, Clone)]
pub struct RedisLogs {
    redis: RedisStore,
    namespace: String,
    cap: i64,
}

impl RedisLogs {
    /// Lists under `<namespace>:logs:`, each capped at `cap` records.
    pub fn new(redis: RedisStore, namespace: impl Into<String>, cap: usize) -> Self {
        Self { redis, namespace: namespace.into(), cap: i64::try_from(cap.max(1)).unwrap_or(i64::MAX) }
    }

    fn key(&self, process: &str) -> String {
        format!("{}:logs:{process}", self.namespace)
    }

    /// Up to `limit` records of `process` at `min_level` or more severe,
    /// newest first (reads at most the capped list).
    pub async fn recent(
        &self,
        process: &str,
        min_level: tracing::Level,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let raw: Vec<String> =
            self.redis.timed("LRANGE", self.redis.client().lrange(self.key(process), 0, self.cap - 1)).await?;
        Ok(raw
            .iter()
            .filter_map(|line| serde_json::from_str::<LogRecord>(line).ok())
            .filter(|r| r.tracing_level() <= min_level)
            .take(limit)
            .collect())
    }

    /// Deletes the list of `process`.
    pub async fn clear(&self, process: &str) -> Result<(), StoreError> {
        self.redis.delete(&self.key(process)).await
    }
}

impl LogSink for RedisLogs {
    fn push<'a>(&'a self, records: &'a [LogRecord]) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut by_process: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            for record in records {
                if let Ok(line) = serde_json::to_string(record) {
                    by_process.entry(record.process.as_str()).or_default().push(line);
                }
            }
            for (process, lines) in by_process {
                let key = self.key(process);
                let client = self.redis.client();
                // LPUSH of oldest..newest leaves the newest at the head.
                let pushed: Result<i64, _> = self.redis.timed("LPUSH", client.lpush(&key, lines)).await;
                pushed.map_err(|err| SinkError(err.to_string()))?;
                let trimmed: Result<(), _> = self.redis.timed("LTRIM", client.ltrim(&key, 0, self.cap - 1)).await;
                trimmed.map_err(|err| SinkError(err.to_string()))?;
            }
            Ok(())
        })
    }
}
