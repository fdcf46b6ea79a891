//! The queue's shared state: the pending items (with the coalescing
//! index), the room they hold (items and bytes) and the batches in flight.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::persist::Counters;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

pub(super) struct Queued<T> {
    pub(super) item: T,
    pub(super) since: Instant,
    /// Its record in the local log, if the queue has one.
    pub(super) position: Option<u64>,
}

/// The queue proper; with coalescing, `index` finds a key's slot.
pub(super) struct Pending<T: Keyed> {
    pub(super) items: VecDeque<Option<Queued<T>>>,
    /// Live items in `items` (the rest are holes left by coalescing).
    pub(super) live: usize,
    pub(super) index: HashMap<T::Key, usize>,
    /// Position of `items[0]` in the stream, so indices survive pops.
    pub(super) offset: usize,
}

impl<T: Keyed> Pending<T> {
    pub(super) fn new() -> Self {
        Self { items: VecDeque::new(), live: 0, index: HashMap::new(), offset: 0 }
    }

    pub(super) fn oldest(&self) -> Option<Instant> {
        self.items.iter().flatten().next().map(|q| q.since)
    }

    /// Up to `max` items, with the log positions of those that have one
    /// and when the oldest of them was queued.
    pub(super) fn take(&mut self, max: usize) -> (Vec<T>, Vec<u64>, Option<Instant>) {
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

pub(super) struct Shared<T: Keyed> {
    pub(super) config: WriteBehindConfig,
    pub(super) pending: Mutex<Pending<T>>,
    /// When the oldest item of each batch being written (or waiting for a
    /// retry) was queued, by batch: the age gauge covers them too, so an
    /// outage with few writes still shows its age.
    pub(super) writing: Mutex<BTreeSet<(Instant, u64)>>,
    /// Numbers the batches in `writing`.
    pub(super) batches_started: AtomicU64,
    /// One permit per free place: held by every queued or in-flight item.
    pub(super) room: Semaphore,
    /// Weight of the items queued or in flight, against `max_bytes`.
    pub(super) bytes: std::sync::atomic::AtomicU64,
    /// Signalled when weight is released.
    pub(super) bytes_freed: Notify,
    pub(super) wake: Notify,
    pub(super) counters: Counters,
    pub(super) closing: CancellationToken,
    /// A tighter bound than `shutdown_timeout` for the drain, when given.
    pub(super) drain_limit: Mutex<Option<Duration>>,
    /// The local write-ahead log items are appended to before they are
    /// acknowledged, and how an item becomes a record.
    #[cfg(feature = "local-log")]
    pub(super) log: Option<LogWith<T>>,
}

impl<T: Keyed> Shared<T> {
    /// Takes `weight` bytes of room if it fits (or the queue holds nothing).
    pub(super) fn charge(&self, weight: u64) -> bool {
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

    pub(super) fn release(&self, weight: u64) {
        self.bytes.fetch_sub(weight, Ordering::AcqRel);
        self.bytes_freed.notify_waiters();
    }

    pub(super) fn pending(&self) -> MutexGuard<'_, Pending<T>> {
        // Each critical section leaves the queue consistent before anything
        // that can panic.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn push(&self, item: T, position: Option<u64>) {
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
    pub(super) async fn charge_waiting(&self, weight: u64) -> Result<(), EnqueueError> {
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
    pub(super) fn logged(&self) -> bool {
        #[cfg(feature = "local-log")]
        return self.log.is_some();
        #[cfg(not(feature = "local-log"))]
        false
    }

    /// Records left the queue for good (persisted or dead-lettered).
    pub(super) fn retire(&self, positions: &[u64]) {
        #[cfg(feature = "local-log")]
        if let Some((log, _)) = &self.log {
            log.done(positions);
        }
        #[cfg(not(feature = "local-log"))]
        let _ = positions;
    }
}

impl<T: Keyed> Shared<T> {
    pub(super) fn new(config: WriteBehindConfig, #[cfg(feature = "local-log")] log: Option<LogWith<T>>) -> Self {
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
