//! Captured records in Redis lists `<namespace>:logs:<process>`, newest
//! first, capped with `LTRIM`; stats documents in keys
//! `<namespace>:stats:<process>:<instance>` with a TTL.

use fred::prelude::*;
use fred::types::Expiration;
use keel_store::{RedisStore, StoreError};

use crate::capture::{LogSink, SinkError, SinkFuture};
use crate::{LogQuery, LogRecord, StatsDocument};

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

    /// The records of `process` that match `query`, newest first (reads at
    /// most the capped list).
    pub async fn recent(&self, process: &str, query: &LogQuery) -> Result<Vec<LogRecord>, StoreError> {
        let raw: Vec<String> =
            self.redis.timed("LRANGE", self.redis.client().lrange(self.key(process), 0, self.cap - 1)).await?;
        Ok(raw
            .iter()
            .filter_map(|line| serde_json::from_str::<LogRecord>(line).ok())
            .filter(|r| query.matches(r))
            .take(query.limit)
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

/// Stats documents in Redis: each under `<namespace>:stats:<process>:<instance>`
/// with a TTL, and indexed in the sorted set `<namespace>:stats-index` (scored
/// by expiry) so listing never scans the keyspace.
#[derive(Debug, Clone)]
pub struct RedisStats {
    redis: RedisStore,
    namespace: String,
}

impl RedisStats {
    /// Documents under `<namespace>:stats:`.
    pub fn new(redis: RedisStore, namespace: impl Into<String>) -> Self {
        Self { redis, namespace: namespace.into() }
    }

    fn key(&self, process: &str, instance: &str) -> String {
        format!("{}:stats:{process}:{instance}", self.namespace)
    }

    fn index(&self) -> String {
        format!("{}:stats-index", self.namespace)
    }

    // Each command touches one key, so the documents and their index may
    // live on different nodes of a Redis Cluster (a script over both would be
    // refused there as CROSSSLOT). A document without its index entry is
    // unlisted until the next publish; an index entry without its document
    // reads as nil and is skipped.
    pub(crate) async fn publish(&self, document: &StatsDocument, ttl: std::time::Duration) -> Result<(), StoreError> {
        let json = serde_json::to_string(document)
            .map_err(|err| StoreError::Payload { backend: "redis", reason: err.to_string() })?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let expires = now_ms().saturating_add(ttl_ms);
        let key = self.key(&document.process, &document.instance);
        let client = self.redis.client();
        let set = client.set::<(), _, _>(&key, json, Some(Expiration::PX(ttl_ms)), None, false);
        self.redis.timed("SET", set).await?;
        let add = client.zadd::<(), _, _>(self.index(), None, None, false, false, (expires as f64, key.as_str()));
        self.redis.timed("ZADD", add).await?;
        Ok(())
    }

    pub(crate) async fn list(&self) -> Result<Vec<StatsDocument>, StoreError> {
        let client = self.redis.client();
        let pruned = client.zremrangebyscore::<i64, _, _, _>(self.index(), f64::NEG_INFINITY, now_ms() as f64);
        self.redis.timed("ZREMRANGEBYSCORE", pruned).await?;
        let keys: Vec<String> =
            self.redis.timed("ZRANGE", client.zrange(self.index(), 0, -1, None, false, None, false)).await?;
        // One GET per live instance, concurrently: a cluster may hold them on
        // different nodes. Expired keys read as nil.
        let reads = keys.iter().map(|key| self.redis.timed("GET", client.get::<Option<String>, _>(key)));
        let raw = futures_util::future::try_join_all(reads).await?;
        Ok(raw.iter().flatten().filter_map(|json| serde_json::from_str(json).ok()).collect())
    }

    pub(crate) async fn remove(&self, process: &str, instance: &str) -> Result<(), StoreError> {
        let key = self.key(process, instance);
        self.redis.delete(&key).await?;
        self.redis.timed("ZREM", self.redis.client().zrem::<i64, _, _>(self.index(), key.as_str())).await?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    keel_core::unix_millis(std::time::SystemTime::now())
}
