//! The caller's side: starting the queue, taking items (waiting for room,
//! coalescing) and shutting it down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::*;

impl<T> WriteBehind<T>
where
    T: Keyed + Clone + Send + Sync + 'static,
{
    pub(super) fn validate(config: &WriteBehindConfig) -> Result<(), WriteBehindError> {
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

    pub(super) fn run(
        shared: Arc<Shared<T>>,
        repository: Arc<dyn Repository<T>>,
        dead_letters: Arc<dyn DeadLetters<T>>,
    ) -> Self {
        let flusher = Flusher { shared: shared.clone(), repository, dead_letters };
        let task = keel_core::Shutdown::spawn_on(shared.config.tasks.as_ref(), flusher.run());
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

    pub(super) async fn enqueue_inner(&self, item: T, limit: Option<Duration>) -> Result<(), EnqueueError> {
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

impl<T> WriteBehind<T>
where
    T: Keyed + Clone + Send + Sync + 'static,
{
    pub(super) async fn enqueue_memory(&self, item: T) -> Result<(), EnqueueError> {
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
    pub(super) fn coalesce(&self, item: &T) -> Option<Result<(), EnqueueError>> {
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
