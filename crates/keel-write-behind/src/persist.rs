//! Writing a batch through a repository, shared by the in-memory flusher and
//! the durable consumer.
//!
//! A transient failure (the store is unreachable or busy) keeps the whole
//! batch and tries it again with capped exponential backoff for as long as
//! it lasts; it is never an item's attempt. A permanent failure (the data is
//! refused) splits the batch to isolate the poison items; only an item that
//! fails permanently on its own is retried, up to `max_retries`, and then
//! dead-lettered. An item counts as done only once it is persisted or its
//! dead letter is stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{DeadLetter, DeadLetters, RepoError, Repository};

/// Counters both queue kinds keep.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) persisted: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) dead_letter_errors: AtomicU64,
    /// When the repository became unreachable; cleared by any answer from it.
    pub(crate) failing_since: Mutex<Option<Instant>>,
}

impl Counters {
    pub(crate) fn failing_for(&self) -> Duration {
        self.failing_since.lock().unwrap_or_else(PoisonError::into_inner).map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Records whether the repository answered (`reachable`) or not.
    fn reachable(&self, reachable: bool) {
        let mut since = self.failing_since.lock().unwrap_or_else(PoisonError::into_inner);
        match (reachable, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }
}

/// Retry timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) backoff: keel_core::Backoff,
}

/// Told about items as they are persisted or dead-lettered.
pub(crate) type Done<'a, T> = dyn Fn(&[Attempt<T>]) + Sync + 'a;

/// An item being written, with its position in the batch and how many times
/// it failed permanently on its own.
pub(crate) struct Attempt<T> {
    pub(crate) item: T,
    pub(crate) index: usize,
    pub(crate) attempts: u32,
}

pub(crate) struct Persister<'a, T> {
    pub(crate) repository: &'a dyn Repository<T>,
    pub(crate) dead_letters: &'a dyn DeadLetters<T>,
    pub(crate) policy: RetryPolicy,
    pub(crate) counters: &'a Counters,
    /// When cancelled, waiting stops and unfinished items are handed back
    /// (durable mode: they stay pending in the stream). `None`: never.
    pub(crate) stop: Option<&'a CancellationToken>,
}

impl<T: Clone + Send + Sync + 'static> Persister<'_, T> {
    /// Writes `batch`, calling `done(items)` as items are persisted or
    /// dead-lettered. Returns the positions (in `batch`) of the items left
    /// unfinished because `stop` was cancelled; empty otherwise.
    pub(crate) async fn write(&self, batch: Vec<T>, done: &Done<'_, T>) -> Vec<usize> {
        let mut work: Vec<Vec<Attempt<T>>> =
            vec![batch.into_iter().enumerate().map(|(index, item)| Attempt { item, index, attempts: 0 }).collect()];
        let mut unreachable = 0u32;
        // Refused items whose dead letters could not be stored yet: tried
        // again once the rest of the batch is done, so they hold nothing up.
        let mut unstored: Vec<(Attempt<T>, RepoError)> = Vec::new();
        while let Some(mut part) = work.pop() {
            if self.stopped() {
                work.push(part);
                let left = work.iter().flatten().chain(unstored.iter().map(|(a, _)| a));
                return left.map(|a| a.index).collect();
            }
            let items: Vec<T> = part.iter().map(|a| a.item.clone()).collect();
            let result = self.repository.upsert_many(&items).await;
            self.counters.reachable(!matches!(&result, Err(err) if err.kind.is_transient()));
            match result {
                Ok(()) => {
                    unreachable = 0;
                    let n = part.len();
                    self.counters.batches.fetch_add(1, Ordering::AcqRel);
                    self.counters.persisted.fetch_add(n as u64, Ordering::AcqRel);
                    done(&part);
                }
                Err(err) if err.kind.is_transient() => {
                    // The store is away: the same batch waits for it, as
                    // long as it takes. Nobody's attempt, never a dead letter.
                    unreachable += 1;
                    let delay = self.policy.backoff.delay(unreachable);
                    tracing::warn!(%err, items = part.len(), retry_in = ?delay, "repository unreachable; the batch waits");
                    self.pause(delay).await;
                    work.push(part);
                }
                Err(err) if part.len() > 1 => {
                    // Split to isolate poison: each half is tried on its own.
                    tracing::warn!(%err, items = part.len(), "batch refused; splitting it to find the refused items");
                    let second = part.split_off(part.len() / 2);
                    work.push(second);
                    work.push(part);
                }
                Err(err) => {
                    part[0].attempts += 1;
                    if part[0].attempts > self.policy.max_retries {
                        if !self.dead_letter(part.as_slice(), &err, done).await {
                            unstored.extend(part.into_iter().map(|a| (a, err.clone())));
                        }
                    } else {
                        self.counters.retries.fetch_add(1, Ordering::AcqRel);
                        self.pause(self.policy.backoff.delay(part[0].attempts)).await;
                        work.push(part);
                    }
                }
            }
        }
        let mut failures = 0;
        while !unstored.is_empty() {
            failures += 1;
            self.pause(self.policy.backoff.delay(failures)).await;
            if self.stopped() {
                return unstored.iter().map(|(a, _)| a.index).collect();
            }
            let mut still = Vec::new();
            for (attempt, err) in unstored {
                if !self.dead_letter(std::slice::from_ref(&attempt), &err, done).await {
                    still.push((attempt, err));
                }
            }
            unstored = still;
        }
        Vec::new()
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(CancellationToken::is_cancelled)
    }

    /// Sleeps `delay`, or less when `stop` is cancelled.
    async fn pause(&self, delay: Duration) {
        match self.stop {
            Some(stop) => {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
            None => tokio::time::sleep(delay).await,
        }
    }

    /// Stores `part` as dead letters and counts them. Returns `false`
    /// (nothing counted, the items are not done) when the sink fails.
    pub(crate) async fn dead_letter(&self, part: &[Attempt<T>], error: &RepoError, done: &Done<'_, T>) -> bool {
        let now = SystemTime::now();
        let n = part.len();
        let letters: Vec<DeadLetter<T>> = part
            .iter()
            .map(|a| DeadLetter { item: a.item.clone(), error: error.message.clone(), attempts: a.attempts, at: now })
            .collect();
        match self.dead_letters.store(&letters).await {
            Ok(()) => {
                tracing::warn!(items = n, error = %error.message, "items dead-lettered");
                self.counters.failed.fetch_add(n as u64, Ordering::AcqRel);
                done(part);
                true
            }
            Err(err) => {
                self.counters.dead_letter_errors.fetch_add(n as u64, Ordering::AcqRel);
                tracing::error!(%err, items = n, "cannot store dead letters; the items stay queued and are tried again");
                false
            }
        }
    }
}
