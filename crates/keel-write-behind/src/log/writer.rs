//! The writer thread: group commits as submissions come (one fdatasync for
//! all of them), checkpoints as records complete, a last checkpoint at
//! close.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::*;

impl Shared {
    /// The checkpoint the log could make now.
    pub(super) fn candidate(&self) -> u64 {
        let outstanding = self.outstanding.lock().unwrap_or_else(PoisonError::into_inner);
        outstanding.positions.first().copied().unwrap_or(outstanding.head)
    }

    /// The writer thread: group commits as submissions come, checkpoints
    /// every `checkpoint_interval` while records complete and at once when a
    /// segment can be freed, a last checkpoint at close.
    pub(super) fn write_loop(shared: &std::sync::Weak<Self>) {
        let mut last_checkpoint = std::time::Instant::now();
        // Strong only for one round: a log nobody holds any more is let go
        // (its lock with it).
        while let Some(this) = shared.upgrade() {
            if this.round(&mut last_checkpoint) {
                this.checkpoint();
                // Let go of the log before saying so: once `close` returns,
                // the writer holds no reference, and the last handle dropped
                // by the caller releases the directory's lock at once.
                let stopped = this.stopped.clone();
                drop(this);
                stopped.cancel();
                return;
            }
        }
    }

    /// One round of the writer; `true` once closing and nothing is left.
    pub(super) fn round(&self, last_checkpoint: &mut std::time::Instant) -> bool {
        let batch = {
            let mut queue = self.submissions.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.is_empty() && !self.closing.is_cancelled() && !self.checkpoint_due(*last_checkpoint) {
                queue = self
                    .wake
                    .wait_timeout(queue, self.config.checkpoint_interval)
                    .map_or_else(|poisoned| poisoned.into_inner().0, |(queue, _)| queue);
            }
            std::mem::take(&mut *queue)
        };
        if batch.is_empty() {
            if self.closing.is_cancelled() {
                return true;
            }
        } else {
            self.commit(batch);
        }
        if self.checkpoint_due(*last_checkpoint) {
            self.checkpoint();
            *last_checkpoint = std::time::Instant::now();
        }
        false
    }

    /// A segment can be freed, or records were done and the interval passed.
    pub(super) fn checkpoint_due(&self, last: std::time::Instant) -> bool {
        let candidate = self.candidate();
        candidate >= self.next_release.load(Ordering::Acquire)
            || (last.elapsed() >= self.config.checkpoint_interval && candidate > self.durable.load(Ordering::Acquire))
    }

    /// One group commit.
    pub(super) fn commit(&self, batch: Vec<Submission>) {
        let (payloads, answers): (Vec<Vec<u8>>, Vec<Answer>) = batch.into_iter().map(|s| (s.payload, s.answer)).unzip();
        let started = std::time::Instant::now();
        let (result, head, bytes, segments, next_release) = {
            let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
            let result = core.append(&payloads);
            (result, core.head(), core.bytes(), core.segments(), core.next_release())
        };
        if let Some(histogram) = self.sync_duration.get() {
            histogram.record(started.elapsed().as_secs_f64(), &[]);
        }
        match result {
            Ok(positions) => {
                {
                    let mut outstanding = self.outstanding.lock().unwrap_or_else(PoisonError::into_inner);
                    outstanding.positions.extend(positions.iter().copied());
                    outstanding.head = head;
                }
                self.disk.store(bytes, Ordering::Release);
                self.segments.store(segments as u64, Ordering::Release);
                self.next_release.store(next_release.unwrap_or(u64::MAX), Ordering::Release);
                self.syncs.fetch_add(1, Ordering::AcqRel);
                self.appends.fetch_add(positions.len() as u64, Ordering::AcqRel);
                *self.failing.lock().unwrap_or_else(PoisonError::into_inner) = None;
                for (answer, position) in answers.into_iter().zip(positions) {
                    answer(Ok(position));
                }
            }
            Err(err) => {
                let message = format!("cannot write the local log: {err}");
                tracing::error!(records = answers.len(), "{message}");
                self.append_errors.fetch_add(answers.len() as u64, Ordering::AcqRel);
                *self.failing.lock().unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
                for answer in answers {
                    answer(Err(message.clone()));
                }
            }
        }
    }

    /// Makes the candidate checkpoint durable and frees the segments before it.
    pub(super) fn checkpoint(&self) {
        let position = self.candidate();
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        if position <= core.durable_checkpoint() {
            return;
        }
        match core.checkpoint(position) {
            Ok(freed) => {
                self.durable.store(core.durable_checkpoint(), Ordering::Release);
                self.disk.store(core.bytes(), Ordering::Release);
                self.segments.store(core.segments() as u64, Ordering::Release);
                self.next_release.store(core.next_release().unwrap_or(u64::MAX), Ordering::Release);
                if freed > 0 {
                    self.room.notify_waiters();
                }
            }
            Err(err) => tracing::warn!(%err, "cannot write the local log's checkpoint; segments are kept"),
        }
    }
}
