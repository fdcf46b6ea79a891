use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::persist::{Attempt, Counters, Persister, RetryPolicy};
use keel_core::Backoff;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "local-log")]
#[path = "logged.rs"]
mod logged;

/// An item with a key, for coalescing.
pub trait Keyed {
    /// The key type.
    type Key: Eq + Hash + Clone + Send + Sync + 'static;
    /// The key: two queued items with the same key coalesce (if enabled).
    fn key(&self) -> Self::Key;

    /// Roughly how many bytes the item holds, for
    /// [`WriteBehindConfig::max_bytes`] (0 by default: only the item count
    /// is bounded).
    fn weight(&self) -> usize {
        0
    }
}

/// Why a repository or dead-letter write failed, and whether trying again
/// may help ([`RepoError::transient`] or [`RepoError::permanent`]; a
/// `keel_store::StoreError` converts with `?`, classified).
pub type RepoError = keel_core::WriteError;

/// A boxed repository future.
pub type RepoFuture<'a> = Pin<Box<dyn Future<Output = Result<(), RepoError>> + Send + 'a>>;

/// Where items are persisted. `upsert_many` must be atomic and idempotent:
/// after a failure the same items are written again, possibly in smaller
/// batches.
pub trait Repository<T>: Send + Sync + 'static {
    /// Persists all of `items`, or none.
    fn upsert_many<'a>(&'a self, items: &'a [T]) -> RepoFuture<'a>;
}

/// An item that could not be persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter<T> {
    /// The item.
    pub item: T,
    /// The last error.
    pub error: String,
    /// How many writes were tried.
    pub attempts: u32,
    /// When it was given up.
    pub at: SystemTime,
}

/// Where items go when they cannot be persisted.
pub trait DeadLetters<T>: Send + Sync + 'static {
    /// Stores the letters.
    fn store<'a>(&'a self, letters: &'a [DeadLetter<T>]) -> RepoFuture<'a>;
}

/// What `enqueue` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullMode {
    /// Wait for room (backpressure).
    #[default]
    Wait,
    /// Answer [`EnqueueError::Full`] at once.
    Reject,
}

/// Queue settings.
#[derive(Debug, Clone)]
pub struct WriteBehindConfig {
    /// Items queued or being written at most (10 000).
    pub capacity: usize,
    /// Bytes ([`Keyed::weight`]) queued or being written at most, when set;
    /// `enqueue` waits for room like for `capacity`. One item larger than
    /// the bound is still taken when the queue is empty.
    pub max_bytes: Option<u64>,
    /// Items per repository call at most (500).
    pub batch_size: usize,
    /// Longest wait from the oldest queued item to its batch (1 s).
    pub flush_interval: Duration,
    /// Retries of an item the store refuses on its own before it is
    /// dead-lettered (5). Transient failures are never counted here.
    pub max_retries: u32,
    /// First retry delay, doubled each time (100 ms)...
    pub backoff_initial: Duration,
    /// ...up to this (10 s).
    pub backoff_max: Duration,
    /// Random spread of each delay, as a fraction (0.2 = ±20 %).
    pub jitter: f64,
    /// Replace a queued item by a newer one with the same key.
    pub coalesce: bool,
    /// Full queue behaviour of [`WriteBehind::enqueue`].
    pub full_mode: FullMode,
    /// Time [`WriteBehind::shutdown`] gives the drain (30 s).
    pub shutdown_timeout: Duration,
    /// Batches written at the same time (2): while one waits for its commit,
    /// the next is on its way. The repository's version guard keeps the
    /// result right whatever order they finish in.
    pub write_concurrency: usize,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_bytes: None,
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
            max_retries: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            jitter: 0.2,
            coalesce: false,
            full_mode: FullMode::Wait,
            shutdown_timeout: Duration::from_secs(30),
            write_concurrency: 2,
        }
    }
}

/// Why a queue could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteBehindError {
    /// Invalid configuration.
    #[error("invalid write-behind configuration: {0}")]
    Config(String),
    /// A resource the queue needs could not be set up (the local log's writer thread).
    #[error("cannot start the write-behind queue: {0}")]
    Start(String),
}

/// Why an item was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The queue is full (reject mode, or `try_enqueue`).
    #[error("the write-behind queue is full")]
    Full,
    /// The queue has shut down.
    #[error("the write-behind queue is closed")]
    Closed,
    /// The local log could not take the item (disk full, I/O error, an
    /// item that does not serialize): it was not acknowledged.
    #[error("{0}")]
    Log(String),
}

/// Counters; `enqueued = persisted + failed + queue_depth + in_flight` when
/// nothing is moving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Items accepted as new writes.
    pub enqueued: u64,
    /// Items that replaced a queued item with the same key (not in `enqueued`).
    pub coalesced: u64,
    /// Items persisted.
    pub persisted: u64,
    /// Items dead-lettered.
    pub failed: u64,
    /// Re-attempts of items after a failed write.
    pub retries: u64,
    /// Successful repository calls.
    pub batches: u64,
    /// Items waiting.
    pub queue_depth: u64,
    /// Items being written (or waiting for a retry).
    pub in_flight: u64,
    /// Age of the oldest item not yet persisted or dead-lettered: waiting,
    /// being written or waiting for a retry.
    pub oldest_age: Duration,
    /// Dead letters the sink itself failed to store (logged with the items).
    pub dead_letter_errors: u64,
    /// How long the repository has been failing without a success in
    /// between (zero while it works).
    pub failing_for: Duration,
    /// The configured capacity.
    pub capacity: u64,
    /// Bytes ([`Keyed::weight`]) queued or being written.
    pub bytes: u64,
}

impl Metrics {
    /// Two queues' figures as one (e.g. the partitions of a durable queue):
    /// counts and capacities add up, ages and failure spans take the longer.
    pub fn plus(&self, other: &Metrics) -> Metrics {
        Metrics {
            enqueued: self.enqueued + other.enqueued,
            coalesced: self.coalesced + other.coalesced,
            persisted: self.persisted + other.persisted,
            failed: self.failed + other.failed,
            retries: self.retries + other.retries,
            batches: self.batches + other.batches,
            queue_depth: self.queue_depth + other.queue_depth,
            in_flight: self.in_flight + other.in_flight,
            oldest_age: self.oldest_age.max(other.oldest_age),
            dead_letter_errors: self.dead_letter_errors + other.dead_letter_errors,
            failing_for: self.failing_for.max(other.failing_for),
            capacity: self.capacity + other.capacity,
            bytes: self.bytes + other.bytes,
        }
    }
}

struct Queued<T> {
    item: T,
    since: Instant,
    /// Its record in the local log, if the queue has one.
    position: Option<u64>,
}

/// The queue proper; with coalescing, `index` finds a key's slot.
struct Pending<T: Keyed> {
    items: VecDeque<Option<Queued<T>>>,
    /// Live items in `items` (the rest are holes left by coalescing).
    live: usize,
    index: HashMap<T::Key, usize>,
    /// Position of `items[0]` in the stream, so indices survive pops.
    offset: usize,
}

impl<T: Keyed> Pending<T> {
    fn new() -> Self {
        Self { items: VecDeque::new(), live: 0, index: HashMap::new(), offset: 0 }
    }

    fn oldest(&self) -> Option<Instant> {
        self.items.iter().flatten().next().map(|q| q.since)
    }

    /// Up to `max` items, with the log positions of those that have one
    /// and when the oldest of them was queued.
    fn take(&mut self, max: usize) -> (Vec<T>, Vec<u64>, Option<Instant>) {
        let mut batch = Vec::with_capacity(max.min(self.live));
        let mut positions = Vec::new();
        let mut oldest = None;
        while batch.len() < max {
            let Some(slot) = self.items.pop_front() else { break };
            self.offset += 1;
            if let Some(queued) = slot {
                self.index.remove(&queued.item.key());
                self.live -= 1;
                oldest.get_or_insert(queued.since);
                if let Some(position) = queued.position {
                    positions.resize(batch.len(), u64::MAX);
                    positions.push(position);
                }
                batch.push(queued.item);
            }
        }
        (batch, positions, oldest)
    }
}

struct Shared<T: Keyed> {
    config: WriteBehindConfig,
    pending: Mutex<Pending<T>>,
    /// When the oldest item of each batch being written (or waiting for a
    /// retry) was queued, by batch: the age gauge covers them too, so an
    /// outage with few writes still shows its age.
    writing: Mutex<BTreeSet<(Instant, u64)>>,
    /// Numbers the batches in `writing`.
    batches_started: AtomicU64,
    /// One permit per free place: held by every queued or in-flight item.
    room: Semaphore,
    /// Weight of the items queued or in flight, against `max_bytes`.
    bytes: std::sync::atomic::AtomicU64,
    /// Signalled when weight is released.
    bytes_freed: Notify,
    wake: Notify,
    counters: Counters,
    closing: CancellationToken,
    /// A tighter bound than `shutdown_timeout` for the drain, when given.
    drain_limit: Mutex<Option<Duration>>,
    /// The local write-ahead log items are appended to before they are
    /// acknowledged, and how an item becomes a record.
    #[cfg(feature = "local-log")]
    log: Option<LogWith<T>>,
}

impl<T: Keyed> Shared<T> {
    /// Takes `weight` bytes of room if it fits (or the queue holds nothing).
    fn charge(&self, weight: u64) -> bool {
        let Some(max) = self.config.max_bytes else {
            self.bytes.fetch_add(weight, Ordering::AcqRel);
            return true;
        };
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + weight <= max).then_some(used + weight)
            })
            .is_ok()
    }

    fn release(&self, weight: u64) {
        self.bytes.fetch_sub(weight, Ordering::AcqRel);
        self.bytes_freed.notify_waiters();
    }

    fn pending(&self) -> MutexGuard<'_, Pending<T>> {
        // Each critical section leaves the queue consistent before anything
        // that can panic.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, item: T, position: Option<u64>) {
        let full_batch = {
            let mut pending = self.pending();
            if self.config.coalesce {
                let position = pending.offset + pending.items.len();
                pending.index.insert(item.key(), position);
            }
            pending.items.push_back(Some(Queued { item, since: Instant::now(), position }));
            pending.live += 1;
            self.counters.enqueued.fetch_add(1, Ordering::AcqRel);
            pending.live >= self.config.batch_size
        };
        if full_batch || self.pending().live == 1 {
            self.wake.notify_one();
        }
    }

    /// Waits for `weight` bytes of room (see [`charge`](Self::charge)).
    async fn charge_waiting(&self, weight: u64) -> Result<(), EnqueueError> {
        loop {
            let freed = self.bytes_freed.notified();
            if self.charge(weight) {
                return Ok(());
            }
            if self.closing.is_cancelled() {
                return Err(EnqueueError::Closed);
            }
            freed.await;
        }
    }

    /// Whether items are appended to a local log before they are acknowledged.
    fn logged(&self) -> bool {
        #[cfg(feature = "local-log")]
        return self.log.is_some();
        #[cfg(not(feature = "local-log"))]
        false
    }

    /// Records left the queue for good (persisted or dead-lettered).
    fn retire(&self, positions: &[u64]) {
        #[cfg(feature = "local-log")]
        if let Some((log, _)) = &self.log {
            log.done(positions);
        }
        #[cfg(not(feature = "local-log"))]
        let _ = positions;
    }
}

/// A local log and how an item becomes one of its records.
#[cfg(feature = "local-log")]
type LogWith<T> = (crate::LocalLog, fn(&T) -> Result<Vec<u8>, String>);

/// One exported figure: instrument name, description, and how to read it.
type Exported = (&'static str, &'static str, fn(&Metrics) -> u64);

/// The write-behind queue. Cloning shares it.
pub struct WriteBehind<T: Keyed> {
    shared: Arc<Shared<T>>,
    flusher: Arc<Mutex<Option<JoinHandle<()>>>>,
    instruments: Arc<Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>>,
}

impl<T: Keyed> Clone for WriteBehind<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), flusher: self.flusher.clone(), instruments: self.instruments.clone() }
    }
}

impl<T: Keyed> fmt::Debug for WriteBehind<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind").field("metrics", &self.metrics()).finish_non_exhaustive()
    }
}

impl<T: Keyed + Send + Sync + 'static> WriteBehind<T> {
    /// Exports [`metrics`](Self::metrics) as OpenTelemetry instruments
    /// labelled `queue = name`, read when scraped (nothing on the hot path),
    /// and the local log's figures when the queue has one.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource, name: &str) {
        // Weak: the meter provider outlives queues and must not keep them alive.
        let queue = Arc::downgrade(&self.shared);
        #[allow(unused_mut)]
        let mut handles = export_metrics(telemetry, name, move || queue.upgrade().map(|s| s.metrics()), true);
        #[cfg(feature = "local-log")]
        if let Some((log, _)) = &self.shared.log {
            handles.extend(log.instrument(telemetry));
        }
        self.instruments.lock().unwrap_or_else(PoisonError::into_inner).extend(handles);
    }
}

/// The OpenTelemetry instruments of a write-behind queue labelled
/// `queue = name`, each reading `read` when scraped (`None`: the queue is
/// gone, nothing is observed). `backlog`: whether the depth and age gauges
/// come from `read` too (a durable consumer leaves them to the
/// [`StreamBacklog`](crate::StreamBacklog), which measures the stream
/// itself). Keep the returned handles.
pub(crate) fn export_metrics(
    telemetry: &dyn keel_telemetry::MeterSource,
    name: &str,
    read: impl Fn() -> Option<Metrics> + Clone + Send + Sync + 'static,
    backlog: bool,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    use keel_telemetry::names;
    use opentelemetry::KeyValue;
    let meter = telemetry.meter("keel-write-behind");
    let label = [KeyValue::new("queue", name.to_owned())];
    let mut handles: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    let counters: [Exported; 5] = [
        (names::WRITE_BEHIND_ENQUEUED, "Items accepted", |m| m.enqueued),
        (names::WRITE_BEHIND_PERSISTED, "Items persisted", |m| m.persisted),
        (names::WRITE_BEHIND_FAILED, "Items dead-lettered", |m| m.failed),
        (names::WRITE_BEHIND_RETRIES, "Item re-attempts", |m| m.retries),
        (names::WRITE_BEHIND_BATCHES, "Successful repository writes", |m| m.batches),
    ];
    for (metric, description, field) in counters {
        let (read, label) = (read.clone(), label.clone());
        handles.push(Box::new(
            meter
                .u64_observable_counter(metric)
                .with_description(description)
                .with_callback(move |c| {
                    if let Some(m) = read() {
                        c.observe(field(&m), &label);
                    }
                })
                .build(),
        ));
    }
    let in_flight = read.clone();
    handles.push(Box::new(
        meter
            .u64_observable_gauge(names::WRITE_BEHIND_IN_FLIGHT)
            .with_description("Items being written")
            .with_callback(move |g| {
                if let Some(m) = in_flight() {
                    g.observe(m.in_flight, &label);
                }
            })
            .build(),
    ));
    if backlog {
        handles.extend(export_backlog(telemetry, name, read));
    }
    handles
}

/// The depth and oldest-age gauges of a queue labelled `queue = name`
/// (see [`export_metrics`]).
pub(crate) fn export_backlog(
    telemetry: &dyn keel_telemetry::MeterSource,
    name: &str,
    read: impl Fn() -> Option<Metrics> + Clone + Send + Sync + 'static,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    use keel_telemetry::names;
    use opentelemetry::KeyValue;
    let meter = telemetry.meter("keel-write-behind");
    let label = [KeyValue::new("queue", name.to_owned())];
    let (depth, depth_label) = (read.clone(), label.clone());
    vec![
        Box::new(
            meter
                .u64_observable_gauge(names::WRITE_BEHIND_QUEUE_DEPTH)
                .with_description("Items waiting")
                .with_callback(move |g| {
                    if let Some(m) = depth() {
                        g.observe(m.queue_depth, &depth_label);
                    }
                })
                .build(),
        ),
        Box::new(
            meter
                .f64_observable_gauge(names::WRITE_BEHIND_OLDEST_AGE)
                .with_unit("s")
                .with_description("Age of the oldest item not yet persisted")
                .with_callback(move |g| {
                    if let Some(m) = read() {
                        g.observe(m.oldest_age.as_secs_f64(), &label);
                    }
                })
                .build(),
        ),
    ]
}

impl<T: Keyed> WriteBehind<T> {
    /// Counters and gauges now.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics()
    }
}

impl<T: Keyed> Shared<T> {
    fn metrics(&self) -> Metrics {
        let c = &self.counters;
        let (depth, queued) = {
            let pending = self.pending();
            (pending.live as u64, pending.oldest())
        };
        let writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner).first().map(|(t, _)| *t);
        let oldest = match (queued, writing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Metrics {
            enqueued: c.enqueued.load(Ordering::Acquire),
            coalesced: c.coalesced.load(Ordering::Acquire),
            persisted: c.persisted.load(Ordering::Acquire),
            failed: c.failed.load(Ordering::Acquire),
            retries: c.retries.load(Ordering::Acquire),
            batches: c.batches.load(Ordering::Acquire),
            queue_depth: depth,
            in_flight: c.in_flight.load(Ordering::Acquire),
            oldest_age: oldest.map_or(Duration::ZERO, |t| t.elapsed()),
            dead_letter_errors: c.dead_letter_errors.load(Ordering::Acquire),
            failing_for: c.failing_for(),
            capacity: self.config.capacity as u64,
            bytes: self.bytes.load(Ordering::Acquire),
        }
    }
}

impl<T> WriteBehind<T>
where
    T: Keyed + Clone + Send + Sync + 'static,
{
    fn validate(config: &WriteBehindConfig) -> Result<(), WriteBehindError> {
        let problem = if config.capacity == 0 || config.batch_size == 0 || config.write_concurrency == 0 {
            Some("capacity, batch_size and write_concurrency must be at least 1")
        } else if config.flush_interval.is_zero() || config.shutdown_timeout.is_zero() {
            Some("flush_interval and shutdown_timeout must be positive")
        } else if !(0.0..1.0).contains(&config.jitter) {
            Some("jitter must be in [0, 1)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(WriteBehindError::Config(problem.into()));
        }
        Ok(())
    }

    /// Starts the queue and its flusher.
    pub fn start(
        config: WriteBehindConfig,
        repository: Arc<dyn Repository<T>>,
        dead_letters: Arc<dyn DeadLetters<T>>,
    ) -> Result<Self, WriteBehindError> {
        Self::validate(&config)?;
        let shared = Arc::new(Shared::new(
            config,
            #[cfg(feature = "local-log")]
            None,
        ));
        Ok(Self::run(shared, repository, dead_letters))
    }

    fn run(shared: Arc<Shared<T>>, repository: Arc<dyn Repository<T>>, dead_letters: Arc<dyn DeadLetters<T>>) -> Self {
        let flusher = Flusher { shared: shared.clone(), repository, dead_letters };
        let task = tokio::spawn(flusher.run());
        Self { shared, flusher: Arc::new(Mutex::new(Some(task))), instruments: Arc::default() }
    }

    /// Queues `item`, waiting at most `limit` for room; [`EnqueueError::Full`]
    /// once it has waited that long. Only the wait for room is bounded: once
    /// there is room the item is taken (with a local log: appended and
    /// synced), so an item answered `Full` is never written later.
    pub async fn enqueue_within(&self, item: T, limit: Duration) -> Result<(), EnqueueError> {
        self.enqueue_inner(item, Some(limit)).await
    }

    /// Queues `item`, waiting for room in `Wait` mode. Cancelling the wait
    /// changes nothing. With a local log, `Ok` means the item's record is
    /// durable.
    pub async fn enqueue(&self, item: T) -> Result<(), EnqueueError> {
        self.enqueue_inner(item, None).await
    }

    async fn enqueue_inner(&self, item: T, limit: Option<Duration>) -> Result<(), EnqueueError> {
        #[cfg(feature = "local-log")]
        if let Some((log, encode)) = &self.shared.log {
            return self.enqueue_logged(item, log, *encode, limit).await;
        }
        let queued = self.enqueue_memory(item);
        match limit {
            None => queued.await,
            Some(limit) => tokio::time::timeout(limit, queued).await.unwrap_or(Err(EnqueueError::Full)),
        }
    }
}

impl<T: Keyed> Shared<T> {
    fn new(config: WriteBehindConfig, #[cfg(feature = "local-log")] log: Option<LogWith<T>>) -> Self {
        Shared {
            room: Semaphore::new(config.capacity),
            bytes: std::sync::atomic::AtomicU64::new(0),
            bytes_freed: Notify::new(),
            config,
            pending: Mutex::new(Pending::new()),
            writing: Mutex::new(BTreeSet::new()),
            batches_started: AtomicU64::new(0),
            wake: Notify::new(),
            counters: Counters::default(),
            closing: CancellationToken::new(),
            drain_limit: Mutex::new(None),
            #[cfg(feature = "local-log")]
            log,
        }
    }
}

impl<T> WriteBehind<T>
where
    T: Keyed + Clone + Send + Sync + 'static,
{
    async fn enqueue_memory(&self, item: T) -> Result<(), EnqueueError> {
        if self.shared.config.full_mode == FullMode::Reject {
            return self.try_enqueue(item);
        }
        if let Some(replaced) = self.coalesce(&item) {
            return replaced;
        }
        let permit = self.shared.room.acquire().await.map_err(|_| EnqueueError::Closed)?;
        // Cancelled while waiting for byte room: the item permit is dropped
        // and nothing was counted.
        self.shared.charge_waiting(item.weight() as u64).await?;
        permit.forget();
        self.shared.push(item, None);
        Ok(())
    }

    /// Queues `item` if there is room now. With a local log this cannot
    /// wait for the sync and answers [`EnqueueError::Log`]: use `enqueue`.
    pub fn try_enqueue(&self, item: T) -> Result<(), EnqueueError> {
        if self.shared.logged() {
            return Err(EnqueueError::Log("try_enqueue cannot wait for the local log's sync; use enqueue".into()));
        }
        if let Some(replaced) = self.coalesce(&item) {
            return replaced;
        }
        match self.shared.room.try_acquire() {
            Ok(permit) => {
                if !self.shared.charge(item.weight() as u64) {
                    return Err(EnqueueError::Full);
                }
                permit.forget();
                self.shared.push(item, None);
                Ok(())
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(EnqueueError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => Err(EnqueueError::Closed),
        }
    }

    /// With coalescing, replaces a queued item with the same key (no room
    /// needed). `None`: nothing to replace.
    fn coalesce(&self, item: &T) -> Option<Result<(), EnqueueError>> {
        if self.shared.closing.is_cancelled() {
            return Some(Err(EnqueueError::Closed));
        }
        if !self.shared.config.coalesce {
            return None;
        }
        let mut pending = self.shared.pending();
        let position = *pending.index.get(&item.key())?;
        let offset = pending.offset;
        let slot = pending.items.get_mut(position - offset)?;
        if let Some(queued) = slot {
            // The replacement's weight is charged without waiting: the queue
            // holds one item for the key either way.
            let (old, new) = (queued.item.weight() as u64, item.weight() as u64);
            self.shared.bytes.fetch_add(new, Ordering::AcqRel);
            self.shared.release(old);
            queued.item = item.clone();
            self.shared.counters.coalesced.fetch_add(1, Ordering::AcqRel);
            return Some(Ok(()));
        }
        None
    }

    /// Stops accepting items, writes everything still queued within
    /// `shutdown_timeout`, and dead-letters what is left. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.shared.config.shutdown_timeout).await;
    }

    /// [`shutdown`](Self::shutdown) with at most `limit` for the drain (the
    /// smaller of it and `shutdown_timeout`): what is left of a process's
    /// shutdown budget.
    pub async fn shutdown_within(&self, limit: Duration) {
        *self.shared.drain_limit.lock().unwrap_or_else(PoisonError::into_inner) = Some(limit);
        self.shared.closing.cancel();
        self.shared.room.close();
        self.shared.bytes_freed.notify_waiters();
        self.shared.wake.notify_one();
        let task = self.flusher.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

struct Flusher<T: Keyed> {
    shared: Arc<Shared<T>>,
    repository: Arc<dyn Repository<T>>,
    dead_letters: Arc<dyn DeadLetters<T>>,
}

impl<T: Keyed> Clone for Flusher<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            repository: self.repository.clone(),
            dead_letters: self.dead_letters.clone(),
        }
    }
}

impl<T> Flusher<T>
where
    T: Keyed + Clone + Send + Sync + 'static,
{
    async fn run(self) {
        let config = self.shared.config.clone();
        let mut writes = tokio::task::JoinSet::new();
        loop {
            // Wait for a full batch, the interval after the oldest item, or
            // shutdown.
            let (live, oldest) = {
                let pending = self.shared.pending();
                (pending.live, pending.oldest())
            };
            if self.shared.closing.is_cancelled() {
                break;
            }
            if live < config.batch_size {
                let wake = self.shared.wake.notified();
                let deadline = oldest.map(|t| t + config.flush_interval);
                tokio::select! {
                    () = wake => continue,
                    () = self.shared.closing.cancelled() => break,
                    () = sleep_until_opt(deadline) => {}
                }
            }
            let (batch, positions, since) = self.shared.pending().take(config.batch_size);
            if !batch.is_empty() {
                while writes.len() >= config.write_concurrency {
                    writes.join_next().await;
                }
                let flusher = self.clone();
                writes.spawn(async move { flusher.write(batch, positions, since).await });
            }
        }
        self.drain(&config, writes).await;
    }

    /// Writes everything left within the shutdown timeout, then dead-letters
    /// what remains.
    async fn drain(&self, config: &WriteBehindConfig, mut writes: tokio::task::JoinSet<()>) {
        let limit = self.shared.drain_limit.lock().unwrap_or_else(PoisonError::into_inner).take();
        let budget = limit.map_or(config.shutdown_timeout, |l| l.min(config.shutdown_timeout));
        let drained = tokio::time::timeout(budget, async {
            while writes.join_next().await.is_some() {}
            loop {
                let (batch, positions, since) = self.shared.pending().take(config.batch_size);
                if batch.is_empty() {
                    break;
                }
                self.write(batch, positions, since).await;
            }
        })
        .await;
        // Abandon whatever write is still running (its items stay counted in
        // flight until counted as failed below).
        writes.abort_all();
        // With a local log an abandoned write's items are still in the log
        // (replayed at the next start): not failed, and they stay counted.
        if drained.is_err() && !self.shared.logged() {
            // The abandoned write's items are still counted in flight.
            let stranded = self.shared.counters.in_flight.swap(0, Ordering::AcqRel);
            if stranded > 0 {
                tracing::error!(
                    items = stranded,
                    "write-behind shutdown timed out during a write; those items may or may not be persisted"
                );
                self.shared.counters.failed.fetch_add(stranded, Ordering::AcqRel);
            }
        }
        #[cfg(feature = "local-log")]
        if let Some((log, _)) = &self.shared.log {
            // What is left stays in the log, replayed at the next start:
            // acknowledged writes are never dead-lettered for a shutdown.
            let left = self.shared.pending().live;
            if left > 0 {
                tracing::warn!(
                    items = left,
                    "write-behind stopped with items left in the local log for the next start"
                );
            }
            log.close().await;
            return;
        }
        let (left, _, _) = self.shared.pending().take(usize::MAX);
        if !left.is_empty() {
            let n = left.len();
            let letters: Vec<Attempt<T>> =
                left.into_iter().enumerate().map(|(index, item)| Attempt { item, index, attempts: 0 }).collect();
            self.shared.counters.in_flight.fetch_add(n as u64, Ordering::AcqRel);
            // One try: the process is stopping and cannot wait for the store.
            let stopping = CancellationToken::new();
            stopping.cancel();
            let persister = Persister { stop: Some(&stopping), ..self.persister() };
            let reason = RepoError::transient("not written before the shutdown timeout");
            if !persister.dead_letter(&letters, &reason, &|done| self.settle(done, &[])).await {
                tracing::error!(items = n, "write-behind stopped with items neither written nor dead-lettered");
                self.shared.counters.failed.fetch_add(n as u64, Ordering::AcqRel);
                self.settle(&letters, &[]);
            }
        }
    }

    fn persister(&self) -> Persister<'_, T> {
        let config = &self.shared.config;
        Persister {
            repository: &*self.repository,
            dead_letters: &*self.dead_letters,
            policy: RetryPolicy {
                max_retries: config.max_retries,
                backoff: Backoff::new(config.backoff_initial, config.backoff_max).with_jitter(config.jitter),
            },
            counters: &self.shared.counters,
            stop: None,
        }
    }

    /// `positions[i]`: the log record of `batch[i]` (empty without a log);
    /// `since`: when the batch's oldest item was queued.
    async fn write(&self, batch: Vec<T>, positions: Vec<u64>, since: Option<Instant>) {
        self.shared.counters.in_flight.fetch_add(batch.len() as u64, Ordering::AcqRel);
        let entry = since.map(|t| (t, self.shared.batches_started.fetch_add(1, Ordering::Relaxed)));
        // Removed when the write ends, however it ends (an abandoned write
        // at shutdown is dropped).
        let _writing = entry.map(|entry| Writing::new(&self.shared.writing, entry));
        self.persister().write(batch, &|done| self.settle(done, &positions)).await;
    }

    /// `done` left the queue for good: free their room and retire their
    /// log records.
    fn settle(&self, done: &[Attempt<T>], positions: &[u64]) {
        if !positions.is_empty() {
            let retired: Vec<u64> = done.iter().filter_map(|a| positions.get(a.index).copied()).collect();
            self.shared.retire(&retired);
        }
        let n = done.len();
        self.shared.release(done.iter().map(|a| a.item.weight() as u64).sum());
        self.shared.counters.in_flight.fetch_sub(n as u64, Ordering::AcqRel);
        self.shared.room.add_permits(n);
    }
}

/// A batch's place in [`Shared::writing`], left when dropped.
struct Writing<'a> {
    set: &'a Mutex<BTreeSet<(Instant, u64)>>,
    entry: (Instant, u64),
}

impl<'a> Writing<'a> {
    fn new(set: &'a Mutex<BTreeSet<(Instant, u64)>>, entry: (Instant, u64)) -> Self {
        set.lock().unwrap_or_else(PoisonError::into_inner).insert(entry);
        Self { set, entry }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.entry);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
