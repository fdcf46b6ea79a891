//! The entries service: writes visible at once through the cache, persisted
//! behind by a write-behind queue (in-process) or a Redis Stream (cluster).
//!
//! The rules live here, not in any HTTP handler: key syntax, value size and
//! bytes (`rules`), versions that only grow, one atomic unit of queue + cache
//! per write, cache read-through from the database, and "absent" refused
//! when it cannot be told from "not persisted yet".

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use keel_store::Cache;
use opentelemetry::metrics::ObservableCounter;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "redis")]
use keel_write_behind::{DurableConsumer, DurableError};

#[cfg(feature = "redis")]
use crate::DurableEntries;
use keel_write_behind::{EnqueueError, LocalLog, Metrics, WriteBehind};

use crate::rules::{check_key, check_value, parse_value};
use crate::{DbEntries, EntryError, EntryLayout, EntryWrite};

/// How long a written entry stays in the cache.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// How long a write waits for room in a full queue by default.
pub const DEFAULT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where writes go after the cache.
#[derive(Clone, Debug)]
pub enum EntrySink {
    /// An in-process queue (embedded mode, or PostgreSQL without Redis).
    Memory(WriteBehind<EntryWrite>),
    /// Redis Streams, one per partition, consumed by the workers (cluster
    /// mode).
    #[cfg(feature = "redis")]
    Durable(DurableEntries),
}

/// What waits to be persisted, from [`Entries::backlog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Writes acknowledged and not persisted yet (queued and in flight, or
    /// in the streams).
    pub held: u64,
    /// How many may be held before writes wait for room.
    pub capacity: u64,
    /// The figures of whoever persists in this process, if any.
    pub persisting: Option<Metrics>,
}

/// An entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// The JSON value.
    pub value: Value,
    /// Its version (microseconds since the epoch, strictly increasing per writer).
    pub version: i64,
    /// When it was written.
    pub updated_at: SystemTime,
}

/// The entries service; cloning shares it.
#[derive(Clone, Debug)]
pub struct Entries {
    /// One allocation: each write's task holds it for one reference count.
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    cache: Cache,
    layout: EntryLayout,
    sink: EntrySink,
    store: DbEntries,
    last_version: Arc<AtomicI64>,
    #[cfg(feature = "redis")]
    consumers: Arc<[Arc<DurableConsumer<EntryWrite>>]>,
    enqueue_timeout: Duration,
    acknowledged: Arc<AtomicU64>,
    exported: Arc<OnceLock<ObservableCounter<u64>>>,
    tasks: Option<keel_core::Shutdown>,
}

/// An entry as cached: written from a borrowed value, read as an owned one.
#[derive(Serialize, Deserialize)]
struct Cached<V = Value> {
    value: V,
    updated_at_us: i64,
    deleted: bool,
}

impl Entries {
    /// Entries cached under their [`EntryLayout::cache_key`] (the layout of
    /// a durable sink; one partition under `namespace` otherwise), written to
    /// `sink`, read back from `store` on a cache miss.
    pub fn new(cache: Cache, namespace: &str, sink: EntrySink, store: DbEntries) -> Self {
        let layout = match &sink {
            #[cfg(feature = "redis")]
            EntrySink::Durable(durable) => durable.layout().clone(),
            EntrySink::Memory(_) => EntryLayout::new(namespace, 1),
        };
        let inner = Inner {
            cache,
            layout,
            sink,
            store,
            last_version: Arc::default(),
            #[cfg(feature = "redis")]
            consumers: Arc::new([]),
            enqueue_timeout: DEFAULT_ENQUEUE_TIMEOUT,
            acknowledged: Arc::default(),
            exported: Arc::default(),
            tasks: None,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Runs each write's task on `shutdown`'s tracker, so a drain waits for
    /// the writes already accepted.
    pub fn with_tasks(mut self, shutdown: keel_core::Shutdown) -> Self {
        Arc::make_mut(&mut self.inner).tasks = Some(shutdown);
        self
    }

    /// Exports [`acknowledged`](Self::acknowledged) as
    /// `keel_entries_acknowledged_total`: summed over every api, it equals
    /// persisted + dead-lettered + pending once writes stop.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource) {
        let acknowledged = Arc::downgrade(&self.inner.acknowledged);
        let counter = telemetry
            .meter("keel-entries")
            .u64_observable_counter(keel_telemetry::names::ENTRIES_ACKNOWLEDGED)
            .with_description("Entry writes answered 202")
            .with_callback(move |c| {
                if let Some(n) = acknowledged.upgrade() {
                    c.observe(n.load(Ordering::Acquire), &[]);
                }
            })
            .build();
        let _ = self.inner.exported.set(counter);
    }

    /// How long a write waits for room in a full queue before it is refused
    /// with [`EntryError::Full`] (default 2 s).
    pub fn with_enqueue_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).enqueue_timeout = timeout;
        self
    }

    /// Writes acknowledged by this process.
    pub fn acknowledged(&self) -> u64 {
        self.inner.acknowledged.load(Ordering::Acquire)
    }

    /// Records the stream consumers this process runs (a worker: one per
    /// partition), so [`Self::backlog`] and [`Self::metrics`] report them.
    #[cfg(feature = "redis")]
    pub(crate) fn with_consumers(mut self, consumers: Vec<Arc<DurableConsumer<EntryWrite>>>) -> Self {
        Arc::make_mut(&mut self.inner).consumers = consumers.into();
        self
    }

    /// The figures of whoever persists in this process: the in-process
    /// queue, or the stream consumers (a worker), their queue depth the
    /// streams' backlog as last measured; `None` for a process that only
    /// appends to the streams.
    pub fn metrics(&self) -> Option<Metrics> {
        match &self.inner.sink {
            EntrySink::Memory(queue) => Some(queue.metrics()),
            #[cfg(feature = "redis")]
            EntrySink::Durable(durable) => {
                let consumers = self.inner.consumers.iter().map(|c| c.metrics()).reduce(|a, b| a.plus(&b))?;
                Some(durable.measured_backlog().apply(consumers))
            }
        }
    }

    /// What waits to be persisted against what may wait, measured now, with
    /// the figures of whoever persists here ([`Self::metrics`]).
    pub async fn backlog(&self) -> Result<Backlog, EntryError> {
        match &self.inner.sink {
            EntrySink::Memory(queue) => {
                let m = queue.metrics();
                Ok(Backlog { held: m.queue_depth + m.in_flight, capacity: m.capacity, persisting: Some(m) })
            }
            #[cfg(feature = "redis")]
            EntrySink::Durable(durable) => {
                let held = durable
                    .backlog()
                    .await
                    .map_err(|err| unavailable(format!("cannot read the stream backlog: {err}"), true))?;
                let persisting = self.inner.consumers.iter().map(|c| c.metrics()).reduce(|a, b| a.plus(&b));
                Ok(Backlog { held, capacity: durable.capacity(), persisting })
            }
        }
    }

    /// The local write-ahead log behind the in-process queue, if any.
    pub fn local_log(&self) -> Option<&LocalLog> {
        match &self.inner.sink {
            EntrySink::Memory(queue) => queue.local_log(),
            #[cfg(feature = "redis")]
            EntrySink::Durable(_) => None,
        }
    }

    /// Persists what this process holds within `within` (the in-process
    /// queue: what is left stays in its local log, or goes to the dead
    /// letters without one) and answers the figures after; with streams, the
    /// producers stop taking appends (what is queued is answered) and the
    /// consumers stop with the `Shutdown` they run on, what they leave staying
    /// in the stream. `None` when this process holds nothing.
    pub async fn close(&self, within: Duration) -> Option<Metrics> {
        match &self.inner.sink {
            EntrySink::Memory(queue) => {
                queue.shutdown_within(within).await;
                Some(queue.metrics())
            }
            #[cfg(feature = "redis")]
            EntrySink::Durable(streams) => {
                streams.close();
                None
            }
        }
    }

    /// Writes `value` under `key` and returns its version. The write runs
    /// on its own task: a caller that goes away mid-call leaves either
    /// nothing or the whole write (queued and cached), never half of it, and
    /// a write that lands is counted in [`acknowledged`](Self::acknowledged)
    /// whether or not its caller waited for the answer.
    ///
    /// The key must pass [`check_key`](crate::check_key) and the value
    /// [`check_value`](crate::check_value).
    pub async fn put(&self, key: &str, value: Value) -> Result<i64, EntryError> {
        check_key(key)?;
        check_value(&value)?;
        self.detached(key, value, false).await
    }

    /// [`Self::put`] of a value still in its JSON text (a request body): its
    /// size is the text's, checked before it is parsed.
    pub async fn put_json(&self, key: &str, json: &[u8]) -> Result<i64, EntryError> {
        check_key(key)?;
        let value = parse_value(json)?;
        self.detached(key, value, false).await
    }

    /// Deletes `key` (a tombstone that is written like a value).
    pub async fn delete(&self, key: &str) -> Result<i64, EntryError> {
        check_key(key)?;
        self.detached(key, Value::Null, true).await
    }

    async fn detached(&self, key: &str, value: Value, deleted: bool) -> Result<i64, EntryError> {
        let (this, key) = (self.inner.clone(), key.to_owned());
        // Boxed, so spawning moves a pointer rather than the whole write.
        let write = Box::pin(async move { this.write(key, value, deleted).await });
        keel_core::Shutdown::spawn_on(self.inner.tasks.as_ref(), write)
            .await
            .unwrap_or_else(|err| Err(EntryError::Internal(format!("the write task failed: {err}"))))
    }

    /// The entry under `key`: from the cache, else from the database (and
    /// then cached). Without the cache, an entry not in the database yet is
    /// [`EntryError::Unavailable`], not absent: it may be acknowledged and
    /// still queued.
    pub async fn get(&self, key: &str) -> Result<Option<StoredEntry>, EntryError> {
        check_key(key)?;
        let cache_key = self.inner.layout.cache_key(key);
        let mut cache_down = false;
        match self.inner.cache.get_versioned(&cache_key).await {
            Ok(Some((version, bytes))) => {
                if let Ok(cached) = serde_json::from_slice::<Cached>(&bytes) {
                    return Ok((!cached.deleted).then(|| StoredEntry {
                        value: cached.value,
                        version,
                        updated_at: keel_core::from_unix_micros(cached.updated_at_us),
                    }));
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, "entry cache unavailable; reading the database");
                cache_down = true;
            }
        }
        let stored = self
            .inner
            .store
            .get(key)
            .await
            .map_err(|err| unavailable(format!("cannot read the entry: {err}"), false))?;
        let Some(entry) = stored else {
            let recovering = matches!(&self.inner.sink, EntrySink::Memory(queue) if queue.recovering());
            return if recovering {
                Err(unavailable("recovering the local log; the entry may not be persisted yet", true))
            } else if cache_down {
                Err(unavailable("the entry cache is unreachable and the entry is not in the database yet", true))
            } else {
                Ok(None)
            };
        };
        let updated_at_us = keel_core::unix_micros(entry.updated_at);
        let cached = Cached { value: &entry.value, updated_at_us, deleted: entry.deleted };
        if let Ok(bytes) = serde_json::to_vec(&cached) {
            let _ = self.inner.cache.set_if_newer(&cache_key, entry.version, Bytes::from(bytes), CACHE_TTL).await;
        }
        Ok((!entry.deleted).then_some(StoredEntry {
            value: entry.value,
            version: entry.version,
            updated_at: keel_core::from_unix_micros(updated_at_us),
        }))
    }
}

impl Inner {
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
    /// queue takes it first and the cache follows.
    async fn write(&self, key: String, value: Value, deleted: bool) -> Result<i64, EntryError> {
        let version = self.next_version();
        let updated_at_us = keel_core::unix_micros(SystemTime::now());
        let cache_key = self.layout.cache_key(&key);
        let cached = serde_json::to_string(&Cached { value: &value, updated_at_us, deleted })
            .map_err(|err| EntryError::Internal(format!("cannot encode the entry: {err}")))?;
        let write = EntryWrite { key, value, version, updated_at_us, deleted };
        match &self.sink {
            EntrySink::Memory(queue) => {
                // Only the wait for room is bounded: a write that got room is
                // answered by its append (fsync'd with a local log), so one
                // answered 503 is never written later.
                match queue.enqueue_within(write, self.enqueue_timeout).await {
                    Ok(()) => {}
                    Err(EnqueueError::Closed) => return Err(EntryError::ShuttingDown),
                    Err(EnqueueError::Full) => return Err(EntryError::Full(self.enqueue_timeout)),
                    Err(EnqueueError::Log(message)) => return Err(unavailable(message, true)),
                }
                if let Err(err) = self.cache.set_if_newer(&cache_key, version, Bytes::from(cached), CACHE_TTL).await {
                    // Queued already: reads fall back to the database.
                    tracing::warn!(%err, "cannot cache an entry write");
                }
            }
            #[cfg(feature = "redis")]
            EntrySink::Durable(durable) => {
                let producer = durable.producer_for(&write.key);
                // Redis unreachable answers within the enqueue timeout too; a
                // script already sent that Redis runs after the timeout (less
                // the clock margin) is refused by Redis itself, so a 503 is
                // not stored later (see `enqueue_cached` for the margin).
                let queued =
                    producer.enqueue_cached(&write, &cache_key, version, &cached, CACHE_TTL, self.enqueue_timeout);
                match tokio::time::timeout(self.enqueue_timeout + Duration::from_millis(100), queued).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(DurableError::Full)) => return Err(EntryError::Full(self.enqueue_timeout)),
                    Ok(Err(other)) => {
                        return Err(unavailable(format!("cannot queue the write: {other}"), true));
                    }
                    Err(_) => return Err(unavailable("redis did not answer within the enqueue timeout", true)),
                }
            }
        }
        self.acknowledged.fetch_add(1, Ordering::AcqRel);
        Ok(version)
    }
}

fn unavailable(message: impl Into<String>, retry: bool) -> EntryError {
    EntryError::Unavailable { message: message.into(), retry }
}
