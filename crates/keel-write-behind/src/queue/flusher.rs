//! The one task that writes: batches as they fill or age, several in
//! flight, each persisted (split, retried, dead-lettered) by the shared
//! `Persister`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use crate::persist::{Attempt, Persister, RetryPolicy};
use keel_core::Backoff;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

pub(super) struct Flusher<T: Keyed> {
    pub(super) shared: Arc<Shared<T>>,
    pub(super) repository: Arc<dyn Repository<T>>,
    pub(super) dead_letters: Arc<dyn DeadLetters<T>>,
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
    pub(super) async fn run(self) {
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
    pub(super) async fn drain(&self, config: &WriteBehindConfig, mut writes: tokio::task::JoinSet<()>) {
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

    pub(super) fn persister(&self) -> Persister<'_, T> {
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
    pub(super) async fn write(&self, batch: Vec<T>, positions: Vec<u64>, since: Option<Instant>) {
        self.shared.counters.in_flight.fetch_add(batch.len() as u64, Ordering::AcqRel);
        let entry = since.map(|t| (t, self.shared.batches_started.fetch_add(1, Ordering::Relaxed)));
        // Removed when the write ends, however it ends (an abandoned write
        // at shutdown is dropped).
        let _writing = entry.map(|entry| Writing::new(&self.shared.writing, entry));
        self.persister().write(batch, &|done| self.settle(done, &positions)).await;
    }

    /// `done` left the queue for good: free their room and retire their
    /// log records.
    pub(super) fn settle(&self, done: &[Attempt<T>], positions: &[u64]) {
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
pub(super) struct Writing<'a> {
    pub(super) set: &'a Mutex<BTreeSet<(Instant, u64)>>,
    pub(super) entry: (Instant, u64),
}

impl<'a> Writing<'a> {
    pub(super) fn new(set: &'a Mutex<BTreeSet<(Instant, u64)>>, entry: (Instant, u64)) -> Self {
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
