//! Captured records in Redis lists `<namespace>:logs:<process>`, newest
//! first, capped with `LTRIM`; stats documents in keys
//! `<namespace>:stats:<process>:<instance>` with a TTL.

use fred::prelude::*;
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

    pub(crate) async fn publish(&self, document: &StatsDocument, ttl: std::time::Duration) -> Result<(), StoreError> {
        const SCRIPT: &str = r#"
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
            return 1
        "#;
        let json = serde_json::to_string(document)
            .map_err(|err| StoreError::Payload { backend: "redis", reason: err.to_string() })?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let expires = now_ms().saturating_add(ttl_ms);
        let keys = vec![self.key(&document.process, &document.instance), self.index()];
        let args: Vec<fred::types::Value> = vec![json.into(), ttl_ms.into(), expires.into()];
        let _: i64 = self.redis.timed("EVAL", self.redis.client().eval(SCRIPT, keys, args)).await?;
        Ok(())
    }

    pub(crate) async fn list(&self) -> Result<Vec<StatsDocument>, StoreError> {
        // Expired keys read as nil, so the index only needs pruning, not trust.
        const SCRIPT: &str = r#"
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
            local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
            if #keys == 0 then return {} end
            return redis.call('MGET', unpack(keys))
        "#;
        let args: Vec<fred::types::Value> = vec![now_ms().into()];
        let raw: Vec<Option<String>> =
            self.redis.timed("EVAL", self.redis.client().eval(SCRIPT, vec![self.index()], args)).await?;
        Ok(raw.iter().flatten().filter_map(|json| serde_json::from_str(json).ok()).collect())
    }

    pub(crate) async fn remove(&self, process: &str, instance: &str) -> Result<(), StoreError> {
        const SCRIPT: &str = r#"
            redis.call('DEL', KEYS[1])
            redis.call('ZREM', KEYS[2], KEYS[1])
            return 1
        "#;
        let keys = vec![self.key(process, instance), self.index()];
        let _: i64 = self.redis.timed("EVAL", self.redis.client().eval(SCRIPT, keys, Vec::<String>::new())).await?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    keel_core::unix_millis(std::time::SystemTime::now())
}
