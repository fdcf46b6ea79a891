//! Writing a batch through a repository: split to isolate poison items, retry
//! single items with backoff, dead-letter what cannot be written. Shared by
//! the in-memory flusher and the durable consumer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::{DeadLetter, DeadLetters, Repository};

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
    /// When the repository started failing; cleared by any success.
    pub(crate) failing_since: Mutex<Option<Instant>>,
}

impl Counters {
    pub(crate) fn failing_for(&self) -> Duration {
        self.failing_since.lock().unwrap_or_else(PoisonError::into_inner).map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// Retry timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) jitter: f64,
}

impl RetryPolicy {
    fn backoff(&self, attempts: u32) -> Duration {
        let base =
            self.backoff_initial.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(self.backoff_max);
        let spread = if self.jitter > 0.0 { 1.0 - self.jitter + fastrand::f64() * 2.0 * self.jitter } else { 1.0 };
        base.mul_f64(spread)
    }
}

/// An item being written, with how many writes it has seen.
pub(crate) struct Attempt<T> {
    pub(crate) item: T,
    pub(crate) attempts: u32,
}

pub(crate) struct Persister<'a, T> {
    pub(crate) repository: &'a dyn Repository<T>,
    pub(crate) dead_letters: &'a dyn DeadLetters<T>,
    pub(crate) policy: RetryPolicy,
    pub(crate) counters: &'a Counters,
}

impl<T: Clone + Send + Sync + 'static> Persister<'_, T> {
    /// Writes `batch`, calling `done(n)` as items are persisted or
    /// dead-lettered. Returns when every item is one or the other.
    pub(crate) async fn write(&self, batch: Vec<T>, done: &(dyn Fn(usize) + Sync)) {
        let mut work: Vec<Vec<Attempt<T>>> =
            vec![batch.into_iter().map(|item| Attempt { item, attempts: 0 }).collect()];
        while let Some(mut part) = work.pop() {
            let items: Vec<T> = part.iter().map(|a| a.item.clone()).collect();
            for attempt in &mut part {
                attempt.attempts += 1;
                if attempt.attempts > 1 {
                    self.counters.retries.fetch_add(1, Ordering::AcqRel);
                }
            }
            let result = self.repository.upsert_many(&items).await;
            {
                let mut since = self.counters.failing_since.lock().unwrap_or_else(PoisonError::into_inner);
                match (&result, *since) {
                    (Ok(()), _) => *since = None,
                    (Err(_), None) => *since = Some(Instant::now()),
                    (Err(_), Some(_)) => {}
                }
            }
            match result {
                Ok(()) => {
                    let n = part.len();
                    self.counters.batches.fetch_add(1, Ordering::AcqRel);
                    self.counters.persisted.fetch_add(n as u64, Ordering::AcqRel);
                    done(n);
                }
                Err(err) if part.len() > 1 => {
                    // Split to isolate poison: each half is retried on its own.
                    tracing::warn!(%err, items = part.len(), "batch failed; splitting it");
                    let second = part.split_off(part.len() / 2);
                    work.push(second);
                    work.push(part);
                }
                Err(err) => {
                    let attempts = part[0].attempts;
                    if attempts > self.policy.max_retries {
                        self.dead_letter(part, &err.0, done).await;
                    } else {
                        tokio::time::sleep(self.policy.backoff(attempts)).await;
                        work.push(part);
                    }
                }
            }
        }
    }

    /// Gives up on `part`, storing it as dead letters (and counting it).
    pub(crate) async fn dead_letter(&self, part: Vec<Attempt<T>>, error: &str, done: &(dyn Fn(usize) + Sync)) {
        let now = SystemTime::now();
        let n = part.len();
        let letters: Vec<DeadLetter<T>> = part
            .into_iter()
            .map(|a| DeadLetter { item: a.item, error: error.to_owned(), attempts: a.attempts, at: now })
            .collect();
        if let Err(err) = self.dead_letters.store(&letters).await {
            self.counters.dead_letter_errors.fetch_add(n as u64, Ordering::AcqRel);
            tracing::error!(%err, items = n, "cannot store dead letters; the items are lost and counted as failed");
        }
        tracing::warn!(items = n, error, "items dead-lettered");
        self.counters.failed.fetch_add(n as u64, Ordering::AcqRel);
        done(n);
    }
}
