//! The one task that owns the batch: it takes queued items into the dedup
//! map (newest wins), decides when to flush, writes through the sink,
//! merges a failed batch back and retries, and keeps the accounting.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Reason};

use super::*;

pub(super) struct Entry<V> {
    pub(super) value: V,
    pub(super) arrival: u64,
}

pub(super) struct Owner<K, V> {
    pub(super) rx: mpsc::Receiver<(K, V)>,
    /// Hashed with a randomly seeded `foldhash` (keys come from clients):
    /// a fraction of SipHash's cost per key.
    pub(super) map: HashMap<K, Entry<V>, foldhash::fast::RandomState>,
    pub(super) arrivals: u64,
    pub(super) sink: Arc<dyn BatchSink<K, V>>,
    pub(super) listener: Option<Arc<dyn FlushListener<K>>>,
    pub(super) config: Arc<BatcherConfig>,
    pub(super) counters: Arc<Counters>,
    pub(super) metrics: Arc<Metrics>,
    /// Consecutive failed flushes, for the backoff.
    pub(super) failures: u32,
    pub(super) final_limit: Arc<Mutex<Option<Duration>>>,
}

impl<K, V> Owner<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Stamped + Clone + Send + Sync + 'static,
{
    pub(super) async fn run(mut self, cancel: CancellationToken) {
        /// Items taken from the channel per wake-up, at most.
        const RECEIVE: usize = 256;
        let mut deadline = Instant::now() + self.config.flush_interval;
        // While a failed batch waits for its retry, capacity does not force
        // flushes: the retry deadline governs.
        let mut retry_at: Option<Instant> = None;
        // One timer and one cancellation wait for the whole loop, moved when
        // the deadline moves: not made again for every item received.
        let cancelled = cancel.cancelled();
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(cancelled, timer);
        let mut received = Vec::with_capacity(RECEIVE);
        loop {
            let wake = retry_at.map_or(deadline, |r| r.min(deadline));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            // At the key bound (the sink is away) the channel is left to
            // fill, so further adds are refused rather than lost.
            let room = self.config.max_pending_keys.saturating_sub(self.map.len()).min(RECEIVE);
            tokio::select! {
                biased;
                () = &mut cancelled => break,
                count = self.rx.recv_many(&mut received, room), if room > 0 => {
                    if count == 0 {
                        break;
                    }
                    for (key, value) in received.drain(..) {
                        self.insert(key, value);
                    }
                    if retry_at.is_none() && self.map.len() >= self.config.max_batch_size {
                        retry_at = self.flush(Reason::Capacity).await;
                        deadline = Instant::now() + self.config.flush_interval;
                    }
                    // Let the tasks that are ready run first (the requests
                    // adding items): their adds then gather in the channel
                    // without waking this task one by one, and the next
                    // receive takes them together.
                    tokio::task::yield_now().await;
                }
                () = &mut timer => {
                    let reason = if retry_at.is_some_and(|r| r <= Instant::now()) { Reason::Retry } else { Reason::Interval };
                    retry_at = self.flush(reason).await;
                    deadline = Instant::now() + self.config.flush_interval;
                }
            }
        }
        self.finish().await;
    }

    pub(super) fn insert(&mut self, key: K, value: V) {
        self.counters.received.fetch_add(1, Ordering::AcqRel);
        self.arrivals += 1;
        let arrival = self.arrivals;
        match self.map.get_mut(&key) {
            Some(existing) => {
                // One of the two is superseded either way.
                self.counters.deduplicated.fetch_add(1, Ordering::AcqRel);
                if value.stamp() >= existing.value.stamp() {
                    *existing = Entry { value, arrival };
                }
            }
            None => {
                self.map.insert(key, Entry { value, arrival });
                self.counters.held.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Writes the map in batches: all of it, or for a capacity flush only
    /// whole batches of the oldest arrivals (the rest waits for the next
    /// capacity flush or the interval, as it would had the keys arrived one
    /// by one). Returns when to retry, if the sink was unreachable: then
    /// what was not written is back in the map.
    pub(super) async fn flush(&mut self, reason: Reason) -> Option<Instant> {
        if self.map.is_empty() {
            return None;
        }
        let mut entries: Vec<(K, Entry<V>)> = self.map.drain().collect();
        // Oldest arrivals first, so a capacity flush writes what waited longest.
        entries.sort_by_key(|(_, e)| e.arrival);
        if reason == Reason::Capacity {
            let whole = entries.len() - entries.len() % self.config.max_batch_size;
            self.map.extend(entries.split_off(whole));
        }
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(self.config.max_batch_size));
            let chunk = std::mem::replace(&mut entries, rest);
            if !self.write(chunk, reason).await {
                // The sink is away: keep everything for the retry rather
                // than waiting on it once per chunk.
                self.merge_back(std::mem::take(&mut entries));
                self.failures += 1;
                let backoff =
                    keel_core::Backoff::new(self.config.retry_backoff, self.config.max_retry_backoff).with_jitter(0.0);
                return Some(Instant::now() + backoff.delay(self.failures));
            }
        }
        self.failures = 0;
        None
    }

    /// Writes one batch. A refused batch is split until the refused items
    /// are alone, and those are dropped (`rejected`). Returns `false` when
    /// the sink is unreachable: what was not written is merged back.
    pub(super) async fn write(&mut self, chunk: Vec<(K, Entry<V>)>, reason: Reason) -> bool {
        let mut work = vec![chunk];
        while let Some(part) = work.pop() {
            let batch: Vec<(K, V)> = part.iter().map(|(k, e)| (k.clone(), e.value.clone())).collect();
            let started = Instant::now();
            let result = self.sink.write(&batch).await;
            self.metrics.flush(reason, batch.len(), started.elapsed(), result.is_ok());
            match result {
                Ok(()) => self.written(batch).await,
                Err(err) if err.kind.is_transient() => {
                    tracing::warn!(%err, items = batch.len(), "sink unreachable; the batch is kept and retried");
                    self.merge_back(part);
                    for part in work {
                        self.merge_back(part);
                    }
                    return false;
                }
                Err(err) if part.len() > 1 => {
                    tracing::warn!(%err, items = part.len(), "batch refused; splitting it to find the refused items");
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    work.push(second);
                    work.push(first);
                }
                Err(err) => {
                    tracing::error!(%err, "the sink refused an item; dropping it");
                    self.counters.dropped_rejected.fetch_add(1, Ordering::AcqRel);
                    self.counters.held.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        true
    }

    pub(super) async fn written(&mut self, batch: Vec<(K, V)>) {
        let n = batch.len() as u64;
        self.counters.flushed.fetch_add(n, Ordering::AcqRel);
        self.counters.held.fetch_sub(n, Ordering::AcqRel);
        self.counters.batches.fetch_add(1, Ordering::AcqRel);
        if let Some(listener) = &self.listener {
            let keys: Vec<K> = batch.into_iter().map(|(k, _)| k).collect();
            if let Err(err) = listener.flushed(&keys).await {
                self.metrics.publish_error();
                tracing::warn!(%err, "batch written but the change notification failed");
            }
        }
    }

    pub(super) fn merge_back(&mut self, chunk: Vec<(K, Entry<V>)>) {
        for (key, entry) in chunk {
            match self.map.get(&key) {
                // A newer value arrived meanwhile: it wins, the failed one is superseded.
                Some(newer) if newer.value.stamp() >= entry.value.stamp() => {
                    self.counters.deduplicated.fetch_add(1, Ordering::AcqRel);
                    self.counters.held.fetch_sub(1, Ordering::AcqRel);
                }
                Some(_) => {
                    // The failed value is newer: it replaces the one in the map.
                    self.counters.deduplicated.fetch_add(1, Ordering::AcqRel);
                    self.counters.held.fetch_sub(1, Ordering::AcqRel);
                    self.map.insert(key, entry);
                }
                None => {
                    self.map.insert(key, entry);
                }
            }
        }
    }

    /// Drains the channel into the map and writes everything once, within
    /// the final flush timeout; what remains is counted as dropped.
    pub(super) async fn finish(mut self) {
        self.rx.close();
        while let Ok((key, value)) = self.rx.try_recv() {
            self.insert(key, value);
        }
        let limit = self.final_limit.lock().unwrap_or_else(PoisonError::into_inner).take();
        let timeout = limit.map_or(self.config.final_flush_timeout, |l| l.min(self.config.final_flush_timeout));
        let flushed = tokio::time::timeout(timeout, self.flush(Reason::Shutdown)).await;
        if flushed.is_err() {
            tracing::error!(?timeout, "final batch flush timed out");
        }
        // Whatever is still held (the map, or the batch whose write was
        // abandoned) is lost: count it.
        let left = self.counters.held.swap(0, Ordering::AcqRel);
        if left > 0 {
            tracing::error!(items = left, "batcher stopped with unwritten items");
            self.counters.dropped_shutdown.fetch_add(left, Ordering::AcqRel);
        }
    }
}
