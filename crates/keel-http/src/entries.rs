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
use keel_write_behind::{DbEntries, DurableProducer, EnqueueError, EntryWrite, WriteBehind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ApiError;

/// Longest key, in bytes.
pub const MAX_ENTRY_KEY: usize = 256;
/// Largest value, in bytes of JSON.
pub const MAX_ENTRY_VALUE: usize = 64 * 1024;
/// How long a written entry stays in the cache.
const CACHE_TTL: Duration = Duration::from_secs(3600);

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
        }
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

    async fn write(&self, key: String, value: Value, deleted: bool) -> Result<Response, ApiError> {
        let version = self.next_version();
        let updated_at_us = keel_core::unix_micros(SystemTime::now());
        let cached = serde_json::to_vec(&Cached { value: value.clone(), updated_at_us, deleted }).unwrap_or_default();
        if let Err(err) =
            self.cache.set_if_newer(&format!("{}{key}", self.prefix), version, Bytes::from(cached), CACHE_TTL).await
        {
            // Reads fall back to the database; the write still goes through.
            tracing::warn!(%err, "cannot cache an entry write");
        }
        let write = EntryWrite { key: key.clone(), value, version, updated_at_us, deleted };
        match &self.sink {
            EntrySink::Memory(queue) => queue.enqueue(write).await.map_err(|err| match err {
                EnqueueError::Full => ApiError::unavailable("the write queue is full"),
                EnqueueError::Closed => ApiError::unavailable("shutting down"),
            })?,
            EntrySink::Durable(producer) => {
                producer
                    .enqueue(&write)
                    .await
                    .map_err(|err| ApiError::unavailable(format!("cannot queue the write: {err}")))?;
            }
        }
        Ok((StatusCode::ACCEPTED, Json(json!({ "key": key, "version": version }))).into_response())
    }

    async fn read(&self, key: &str) -> Result<Option<(Value, i64, i64)>, ApiError> {
        let cache_key = format!("{}{key}", self.prefix);
        match self.cache.get_versioned(&cache_key).await {
            Ok(Some((version, bytes))) => {
                if let Ok(cached) = serde_json::from_slice::<Cached>(&bytes) {
                    return Ok((!cached.deleted).then_some((cached.value, version, cached.updated_at_us)));
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "entry cache unavailable; reading the database"),
        }
        let stored =
            self.store.get(key).await.map_err(|err| ApiError::unavailable(format!("cannot read the entry: {err}")))?;
        let Some(entry) = stored else { return Ok(None) };
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
        Err(ApiError::bad_request(format!("invalid key {key:?}: use 1-{MAX_ENTRY_KEY} bytes of [A-Za-z0-9_.:/-]")))
    }
}

async fn write(State(entries): State<Entries>, Path(key): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let key = valid_key(&key)?;
    if body.len() > MAX_ENTRY_VALUE {
        return Err(ApiError::payload_too_large(format!("{} bytes; values are at most {MAX_ENTRY_VALUE}", body.len())));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("the body is not JSON: {err}")))?;
    entries.write(key, value, false).await
}

async fn remove(State(entries): State<Entries>, Path(key): Path<String>) -> Result<Response, ApiError> {
    let key = valid_key(&key)?;
    entries.write(key, Value::Null, true).await
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
        None => Err(ApiError::not_found(format!("no entry {key:?}"))),
    }
}
