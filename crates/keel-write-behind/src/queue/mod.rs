use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

mod flusher;
mod instruments;
#[cfg(feature = "local-log")]
mod logged;
mod producer;
mod state;

use flusher::Flusher;
#[cfg(feature = "redis")]
pub(crate) use instruments::{export_backlog, export_metrics};
use state::Shared;

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
    /// The owner's [`Shutdown`](keel_core::Shutdown), whose tracker runs the
    /// queue's tasks (the flusher, a replay of the local log) so that a drain
    /// waits for them (none: the runtime runs them, and
    /// [`WriteBehind::shutdown`] is the only wait).
    pub tasks: Option<keel_core::Shutdown>,
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
            tasks: None,
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
