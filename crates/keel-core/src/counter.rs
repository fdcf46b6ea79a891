//! A counter for hot paths: one slot per thread that adds to it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with one slot per thread. Each slot has a single writer, so an
/// increment is a relaxed load and store (no locked instruction, no cache
/// line shared with another thread) and exact; a reader sums the slots.
/// Made for figures read when scraped and written on hot paths.
///
/// ```
/// let reads = std::sync::Arc::new(keel_core::PerThreadCounter::default());
/// let other = reads.clone();
/// std::thread::spawn(move || { other.add_one(); other.add_one(); }).join().unwrap();
/// reads.add_one();
/// assert_eq!(reads.sum(), 3);
/// ```
#[derive(Debug, Default)]
pub struct PerThreadCounter(thread_local::ThreadLocal<AtomicU64>);

impl PerThreadCounter {
    /// Adds one; answers the count of the calling thread's slot before it
    /// (a slot is handed to a later thread once its own thread exited, and
    /// keeps its count: the sum stays exact).
    pub fn add_one(&self) -> u64 {
        let slot = self.0.get_or_default();
        let previous = slot.load(Ordering::Relaxed);
        slot.store(previous + 1, Ordering::Relaxed);
        previous
    }

    /// Every thread's count, added up.
    pub fn sum(&self) -> u64 {
        self.0.iter().map(|slot| slot.load(Ordering::Relaxed)).sum()
    }
}
