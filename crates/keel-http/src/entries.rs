//! The entries service: writes visible at once through the cache, persisted
//! behind by a write-behind queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use bytes::Bytes;
use keel_store::Cache;
use keel_write_behind::{DbEntries, DurableError, DurableProducer, EnqueueError, EntryWrite, WriteBehind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ApiError;
use crate::text::refuse_nul;

/// Longest key, in bytes.
pub const MAX_ENTRY_KEY: usize = 256;
/// Largest value, in bytes of JSON.
pub const MAX_ENTRY_VALUE: usize = 64 * 1024;
/// How long a written entry stays in the cache.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// How long a write waits for room in a full queue by default.
pub const DEFAULT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where writes go after the cache.
#[derive(Clone, Debug)]
pub enum EntrySink {
    /// An in-process queue (embedded mode, or PostgreSQL without Redis).
    Memory(WriteBehind<EntryWrite>),
    /// A Redis Stream consumed by the workers (cluster mode).
    Durable(DurableProducer),
}

/// The entries endpoints' state; cloning shares it.
#[derive(Clone, Debug)]
pub struct Entries {
    cache: Cache,
    prefix: Arc<str>,
    sink: EntrySink,
    store: DbEntries,
    last_version: Arc<AtomicI64>,
    consumer: Option<Arc<keel_write_behind::DurableConsumer<EntryWrite>>>,
    enqueue_timeout: Duration,
    acknowledged: Arc<std::sync::atomic::AtomicU64>,
    exported: Arc<std::sync::OnceLock<opentelemetry::metrics::ObservableCounter<u64>>>,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    value: Value,
    updated_at_us: i64,
    deleted: bool,
}

impl Entries {
    /// Entries cached under `<namespace>:entries:<key>`, written to `sink`,
    /// read back from `store` on a cache miss.
    pub fn new(cache: Cache, namespace: &str, sink: EntrySink, store: DbEntries) -> Self {
        Self {
            cache,
            prefix: format!("{namespace}:entries:").into(),
            sink,
            store,
            last_version: Arc::default(),
            consumer: None,
            enqueue_timeout: DEFAULT_ENQUEUE_TIMEOUT,
            acknowledged: Arc::default(),
            exported: Arc::default(),
        }
    }

    /// Exports [`acknowledged`](Self::acknowledged) as
    /// `keel_entries_acknowledged_total`: summed over every api, it equals
    /// persisted + dead-lettered + pending once writes stop.
    pub fn instrument(&self, telemetry: &keel_telemetry::Telemetry) {
        let acknowledged = Arc::downgrade(&self.acknowledged);
        let counter = telemetry
            .meter("keel-http")
            .u64_observable_counter(keel_telemetry::names::ENTRIES_ACKNOWLEDGED)
            .with_description("Entry writes answered 202")
            .with_callback(move |c| {
                if let Some(n) = acknowledged.upgrade() {
                    c.observe(n.load(Ordering::Acquire), &[]);
                }
            })
            .build();
        let _ = self.exported.set(counter);
    }

    /// How long a write waits for room in a full queue before it is
    /// answered 503 with `Retry-After` (default 2 s).
    pub fn with_enqueue_timeout(mut self, timeout: Duration) -> Self {
        self.enqueue_timeout = timeout;
        self
    }

    /// Writes answered 202 by this process.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// Records the stream consumer this process runs (the worker), so health
    /// can watch its repository.
    pub fn with_consumer(mut self, consumer: Arc<keel_write_behind::DurableConsumer<EntryWrite>>) -> Self {
        self.consumer = Some(consumer);
        self
    }

    /// The stream consumer this process runs, if any.
    pub fn consumer(&self) -> Option<&Arc<keel_write_behind::DurableConsumer<EntryWrite>>> {
        self.consumer.as_ref()
    }

    /// The write sink.
    pub fn sink(&self) -> &EntrySink {
        &self.sink
    }

    /// Microseconds since the epoch, strictly increasing in this process: a
    /// later write always carries a higher version (last writer wins across
    /// processes, by clock).
    fn next_version(&self) -> i64 {
        let now = keel_core::unix_micros(SystemTime::now());
        let mut last = self.last_version.load(Ordering::Acquire);
        loop {
            let next = now.max(last + 1);
            match self.last_version.compare_exchange(last, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Queues the write and makes it visible through the cache, as one
    /// unit: in cluster mode one Redis script does both; in-process, the
    /// queue takes it first and the cache follows. Run to completion by
    /// [`write`] whatever happens to the request.
    async fn write(&self, key: String, value: Value, deleted: bool) -> Result<Response, ApiError> {
        let version = self.next_version();
        let updated_at_us = keel_core::unix_micros(SystemTime::now());
        let cache_key = format!("{}{key}", self.prefix);
        let cached = serde_json::to_string(&Cached { value: value.clone(), updated_at_us, deleted })
            .map_err(|err| ApiError::internal(format!("cannot encode the entry: {err}")))?;
        let write = EntryWrite { key: key.clone(), value, version, updated_at_us, deleted };
        match &self.sink {
            EntrySink::Memory(queue) => {
                match tokio::time::timeout(self.enqueue_timeout, queue.enqueue(write)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(EnqueueError::Closed)) => return Err(ApiError::unavailable("shutting down")),
                    Ok(Err(EnqueueError::Full)) | Err(_) => return Err(queue_full(self.enqueue_timeout)),
                }
                if let Err(err) = self.cache.set_if_newer(&cache_key, version, Bytes::from(cached), CACHE_TTL).await {
                    // Queued already: reads fall back to the database.
                    tracing::warn!(%err, "cannot cache an entry write");
                }
            }
            EntrySink::Durable(producer) => {
                // Redis unreachable answers within the enqueue timeout too (a
                // script already sent may still land: the write is then
                // stored although it was refused, never the other way round).
                let queued =
                    producer.enqueue_cached(&write, &cache_key, version, &cached, CACHE_TTL, self.enqueue_timeout);
                match tokio::time::timeout(self.enqueue_timeout + Duration::from_millis(100), queued).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(DurableError::Full)) => return Err(queue_full(self.enqueue_timeout)),
                    Ok(Err(other)) => {
                        return Err(
                            ApiError::unavailable(format!("cannot queue the write: {other}")).with_retry_after(1)
                        );
                    }
                    Err(_) => {
                        return Err(ApiError::unavailable("redis did not answer within the enqueue timeout")
                            .with_retry_after(1));
                    }
                }
            }
        }
        self.acknowledged.fetch_add(1, Ordering::AcqRel);
        Ok((StatusCode::ACCEPTED, Json(json!({ "key": key, "version": version }))).into_response())
    }

    async fn read(&self, key: &str) -> Result<Option<(Value, i64, i64)>, ApiError> {
        let cache_key = format!("{}{key}", self.prefix);
        let mut cache_down = false;
        match self.cache.get_versioned(&cache_key).await {
            Ok(Some((version, bytes))) => {
                if let Ok(cached) = serde_json::from_slice::<Cached>(&bytes) {
                    return Ok((!cached.deleted).then_some((cached.value, version, cached.updated_at_us)));
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, "entry cache unavailable; reading the database");
                cache_down = true;
            }
        }
        let stored =
            self.store.get(key).await.map_err(|err| ApiError::unavailable(format!("cannot read the entry: {err}")))?;
        let Some(entry) = stored else {
            // Without the cache, a write acknowledged but not yet persisted
            // is invisible: "absent" cannot be told from "not written yet".
            return if cache_down {
                Err(ApiError::unavailable("the entry cache is unreachable and the entry is not in the database yet")
                    .with_retry_after(1))
            } else {
                Ok(None)
            };
        };
        let updated_at_us = keel_core::unix_micros(entry.updated_at);
        let cached = Cached { value: entry.value.clone(), updated_at_us, deleted: entry.deleted };
        if let Ok(bytes) = serde_json::to_vec(&cached) {
            let _ = self.cache.set_if_newer(&cache_key, entry.version, Bytes::from(bytes), CACHE_TTL).await;
        }
        Ok((!entry.deleted).then_some((entry.value, entry.version, updated_at_us)))
    }
}

/// `PUT|GET|DELETE /api/v1/entries/{key}` (keys may contain `/`).
pub fn entries_router(entries: Entries) -> Router {
    Router::new().route("/api/v1/entries/{*key}", put(write).get(read).delete(remove)).with_state(entries)
}

fn valid_key(key: &str) -> Result<String, ApiError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_ENTRY_KEY
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid key {}: use 1-{MAX_ENTRY_KEY} bytes of [A-Za-z0-9_.:/-]",
            crate::text::shown(key)
        )))
    }
}

async fn write(State(entries): State<Entries>, Path(key): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let key = valid_key(&key)?;
    if body.len() > MAX_ENTRY_VALUE {
        return Err(ApiError::payload_too_large(format!("{} bytes; values are at most {MAX_ENTRY_VALUE}", body.len())));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("the body is not JSON: {err}")))?;
    refuse_nul(&value, "value")?;
    detached_write(entries, key, value, false).await
}

async fn remove(State(entries): State<Entries>, Path(key): Path<String>) -> Result<Response, ApiError> {
    let key = valid_key(&key)?;
    detached_write(entries, key, Value::Null, true).await
}

/// Runs the write on its own task: a client that goes away mid-request
/// cancels the handler, never a write half done (cached but not queued).
async fn detached_write(entries: Entries, key: String, value: Value, deleted: bool) -> Result<Response, ApiError> {
    tokio::spawn(async move { entries.write(key, value, deleted).await })
        .await
        .unwrap_or_else(|err| Err(ApiError::internal(format!("the write task failed: {err}"))))
}

/// 503 with `Retry-After`: the queue stayed full for the whole timeout.
fn queue_full(waited: Duration) -> ApiError {
    ApiError::unavailable(format!("the write queue is full (waited {}ms); retry later", waited.as_millis()))
        .with_retry_after(1)
}

async fn read(State(entries): State<Entries>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    let key = valid_key(&key)?;
    match entries.read(&key).await? {
        Some((value, version, updated_at_us)) => {
            let at = keel_core::from_unix_micros(updated_at_us);
            Ok(Json(json!({
                "key": key,
                "value": value,
                "version": version,
                "updated_at": humantime::format_rfc3339_micros(at).to_string(),
            })))
        }
        None => Err(ApiError::not_found(format!("no entry {}", crate::text::shown(&key)))),
    }
}
