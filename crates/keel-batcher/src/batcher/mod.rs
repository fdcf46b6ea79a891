use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

mod owner;

use owner::Owner;

/// A value that carries the time it describes; the newest wins.
pub trait Stamped {
    /// When the value was observed.
    fn stamp(&self) -> SystemTime;
}

/// Why a sink write failed, and whether trying again may help
/// ([`SinkError::transient`] or [`SinkError::permanent`]; a
/// `keel_store::StoreError` converts with `?`, classified).
pub type SinkError = keel_core::WriteError;

/// A boxed sink or listener future.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Where batches go. A write must be atomic (all of the batch or none) and
/// idempotent: a failed batch is written again.
pub trait BatchSink<K, V>: Send + Sync + 'static {
    /// Writes one batch (at most `max_batch_size` items, unique keys).
    fn write<'a>(&'a self, batch: &'a [(K, V)]) -> SinkFuture<'a>;
}

/// Told about the keys of every successful write (e.g. to notify watchers).
pub trait FlushListener<K>: Send + Sync + 'static {
    /// The keys just written.
    fn flushed<'a>(&'a self, keys: &'a [K]) -> SinkFuture<'a>;
}

/// Batcher settings.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Unique keys that trigger a flush, and the most written per sink call (500).
    pub max_batch_size: usize,
    /// Channel capacity as a multiple of `max_batch_size` (5).
    pub channel_multiplier: usize,
    /// Time between scheduled flushes (5 s).
    pub flush_interval: Duration,
    /// Time allowed for the final flush at shutdown (15 s).
    pub final_flush_timeout: Duration,
    /// Minimum time between two warnings about dropped items (10 s).
    pub drop_warning_interval: Duration,
    /// Unique keys held at most while the sink is unreachable (20 000):
    /// beyond it the owner stops taking items, the channel fills and new
    /// adds are dropped and counted (`full`), never accepted and lost.
    pub max_pending_keys: usize,
    /// Wait before the first retry, doubled each time (200 ms)...
    pub retry_backoff: Duration,
    /// ...up to this (10 s).
    pub max_retry_backoff: Duration,
    /// The owner's [`Shutdown`](keel_core::Shutdown), whose tracker runs the
    /// batcher's task so that a drain waits for its final flush (none: the
    /// runtime runs it, and [`Batcher::shutdown`] is the only wait).
    pub tasks: Option<keel_core::Shutdown>,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 500,
            channel_multiplier: 5,
            flush_interval: Duration::from_secs(5),
            final_flush_timeout: Duration::from_secs(15),
            drop_warning_interval: Duration::from_secs(10),
            max_pending_keys: 20_000,
            retry_backoff: Duration::from_millis(200),
            max_retry_backoff: Duration::from_secs(10),
            tasks: None,
        }
    }
}

impl BatcherConfig {
    fn validate(&self) -> Result<(), BatcherError> {
        let problem = if self.max_batch_size == 0 {
            "max_batch_size must be at least 1"
        } else if self.channel_multiplier == 0 {
            "channel_multiplier must be at least 1"
        } else if self.flush_interval.is_zero() || self.final_flush_timeout.is_zero() {
            "flush_interval and final_flush_timeout must be positive"
        } else if self.max_pending_keys < self.max_batch_size {
            "max_pending_keys must be at least max_batch_size"
        } else {
            return Ok(());
        };
        Err(BatcherError::Config(problem.into()))
    }
}

/// Why a batcher could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatcherError {
    /// Invalid configuration.
    #[error("invalid batcher configuration: {0}")]
    Config(String),
}

/// Why an item was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The channel is full; the item was dropped and counted.
    #[error("the batcher is at capacity; the item was dropped")]
    Full,
    /// The batcher has shut down.
    #[error("the batcher is closed")]
    Closed,
}

/// Counters, with `offered = flushed + deduplicated + dropped + pending`
/// whenever no flush is in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Items passed to `add` while open.
    pub offered: u64,
    /// Items written by the sink.
    pub flushed: u64,
    /// Items superseded by a newer value for the same key (or older ones ignored).
    pub deduplicated: u64,
    /// Items dropped because the channel was full.
    pub dropped_full: u64,
    /// Items the sink refused (a permanent failure of the item on its own).
    pub dropped_rejected: u64,
    /// Items dropped because the final flush failed or timed out.
    pub dropped_shutdown: u64,
    /// Items waiting: in the channel or in the map (or being written).
    pub pending: u64,
    /// Successful sink writes.
    pub batches: u64,
}

impl BatcherStats {
    /// Every kind of drop.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_rejected + self.dropped_shutdown
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Items the owner took from the channel (owner-only writes).
    pub(crate) received: AtomicU64,
    pub(crate) flushed: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    /// Written by producers, one slot each.
    pub(crate) dropped_full: keel_core::PerThreadCounter,
    pub(crate) dropped_rejected: AtomicU64,
    pub(crate) dropped_shutdown: AtomicU64,
    /// Items the owner holds (map and batch being written). Written only by
    /// the owner task, so producers never contend on it.
    pub(crate) held: AtomicU64,
    pub(crate) batches: AtomicU64,
}

/// The deduplicating batcher. Cloning shares it.
pub struct Batcher<K, V> {
    tx: mpsc::Sender<(K, V)>,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    last_warning: Arc<Mutex<Option<Instant>>>,
    config: Arc<BatcherConfig>,
    cancel: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// A tighter bound than `final_flush_timeout`, given at shutdown.
    final_limit: Arc<Mutex<Option<Duration>>>,
}

impl<K, V> Clone for Batcher<K, V> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
            metrics: self.metrics.clone(),
            last_warning: self.last_warning.clone(),
            config: self.config.clone(),
            cancel: self.cancel.clone(),
            task: self.task.clone(),
            final_limit: self.final_limit.clone(),
        }
    }
}

impl<K, V> fmt::Debug for Batcher<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl<K, V> Batcher<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Stamped + Clone + Send + Sync + 'static,
{
    /// Starts a batcher writing to `sink`. `name` labels its metrics.
    pub fn start(name: &str, config: BatcherConfig, sink: Arc<dyn BatchSink<K, V>>) -> Result<Self, BatcherError> {
        Self::start_with(name, config, sink, None)
    }

    /// [`start`](Self::start) with a listener told about every successful
    /// write.
    pub fn start_with(
        name: &str,
        config: BatcherConfig,
        sink: Arc<dyn BatchSink<K, V>>,
        listener: Option<Arc<dyn FlushListener<K>>>,
    ) -> Result<Self, BatcherError> {
        config.validate()?;
        let capacity = config.max_batch_size.saturating_mul(config.channel_multiplier);
        let (tx, rx) = mpsc::channel(capacity);
        let counters = Arc::new(Counters::default());
        let metrics = Arc::new(Metrics::new(name, tx.downgrade(), counters.clone(), config.max_batch_size));
        let cancel = CancellationToken::new();
        let config = Arc::new(config);
        let final_limit = Arc::new(Mutex::new(None));
        let owner = Owner {
            final_limit: final_limit.clone(),
            rx,
            map: HashMap::default(),
            arrivals: 0,
            sink,
            listener,
            config: config.clone(),
            counters: counters.clone(),
            metrics: metrics.clone(),
            failures: 0,
        };
        let task = keel_core::Shutdown::spawn_on(config.tasks.as_ref(), owner.run(cancel.clone()));
        Ok(Self {
            tx,
            counters,
            metrics,
            last_warning: Arc::new(Mutex::new(None)),
            config,
            cancel,
            task: Arc::new(Mutex::new(Some(task))),
            final_limit,
        })
    }

    /// Queues `value` under `key` without waiting. A full channel drops the
    /// item (counted, returned as [`AddError::Full`]); after shutdown the
    /// answer is [`AddError::Closed`].
    pub fn add(&self, key: K, value: V) -> Result<(), AddError> {
        // A queued item is counted by the owner when it takes it, and in the
        // queue depth until then: the happy path touches no shared counter.
        match self.tx.try_send((key, value)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.counters.dropped_full.add_one();
                // Under overload every add drops: look at the clock only for
                // each thread's first drop and every 1024th after it.
                if dropped.is_multiple_of(1024) {
                    self.warn_dropped();
                }
                Err(AddError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AddError::Closed),
        }
    }

    /// Queues every item of `items` without waiting, as [`add`](Self::add)
    /// does one by one, taking the channel's room for all of them at once
    /// when there is enough. Returns how many were taken; the others were
    /// dropped (counted) because the channel was full. After shutdown the
    /// answer is [`AddError::Closed`] and nothing is taken.
    pub fn add_all(&self, items: Vec<(K, V)>) -> Result<usize, AddError> {
        if items.is_empty() {
            return Ok(0);
        }
        match self.tx.try_reserve_many(items.len()) {
            Ok(permits) => {
                let taken = items.len();
                for (permit, item) in permits.zip(items) {
                    permit.send(item);
                }
                Ok(taken)
            }
            Err(mpsc::error::TrySendError::Closed(())) => Err(AddError::Closed),
            // Not room for all: each is taken or dropped on its own.
            Err(mpsc::error::TrySendError::Full(())) => {
                let mut taken = 0;
                for (key, value) in items {
                    match self.add(key, value) {
                        Ok(()) => taken += 1,
                        Err(AddError::Full) => {}
                        Err(AddError::Closed) => return Err(AddError::Closed),
                    }
                }
                Ok(taken)
            }
        }
    }

    fn warn_dropped(&self) {
        let now = Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= self.config.drop_warning_interval) {
            *last = Some(now);
            tracing::warn!(
                dropped_total = self.counters.dropped_full.sum(),
                "batcher channel at capacity: dropping items"
            );
        }
    }
}

impl<K, V> Batcher<K, V> {
    /// Exports the batcher's figures as OpenTelemetry instruments labelled
    /// `batcher = name` (batch sizes and durations, items written and
    /// dropped by reason, errors, the channel's depth). Once; later calls do
    /// nothing.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource) {
        self.metrics.instrument(telemetry);
    }

    /// Current counters.
    pub fn stats(&self) -> BatcherStats {
        let c = &self.counters;
        let queued = (self.tx.max_capacity() - self.tx.capacity()) as u64;
        let dropped_full = c.dropped_full.sum();
        BatcherStats {
            offered: c.received.load(Ordering::Acquire) + queued + dropped_full,
            flushed: c.flushed.load(Ordering::Acquire),
            deduplicated: c.deduplicated.load(Ordering::Acquire),
            dropped_full,
            dropped_rejected: c.dropped_rejected.load(Ordering::Acquire),
            dropped_shutdown: c.dropped_shutdown.load(Ordering::Acquire),
            // Measured, not derived: what the channel and the owner really hold.
            pending: c.held.load(Ordering::Acquire) + queued,
            batches: c.batches.load(Ordering::Acquire),
        }
    }

    /// Items in the channel, not yet taken by the owner task.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The channel's capacity.
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Stops accepting items, drains the channel into the map and writes it
    /// (within `final_flush_timeout`). Items that could not be written are
    /// counted as dropped. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.config.final_flush_timeout).await;
    }

    /// [`shutdown`](Self::shutdown) with at most `limit` for the final flush
    /// (the smaller of it and `final_flush_timeout`): what is left of a
    /// process's shutdown budget.
    pub async fn shutdown_within(&self, limit: Duration) {
        *self.final_limit.lock().unwrap_or_else(PoisonError::into_inner) = Some(limit);
        self.cancel.cancel();
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
