use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moka::ops::compute::Op;
use tokio::time::Instant;

/// Bytes an entry costs beyond its key and value (map slot, expiry, `Arc`s).
const ENTRY_OVERHEAD: usize = 96;

/// An in-process cache bounded by bytes: moka's TinyLFU admission and LRU
/// eviction keep the weight (key + value + overhead) under `max_bytes`, and
/// a value larger than `max_bytes / 64` is not cached at all. Entries also
/// expire after their time-to-live (checked on read, on tokio's clock, so
/// paused-time tests see it).
#[derive(Clone)]
pub(crate) struct MemoryCache {
    entries: moka::sync::Cache<Arc<str>, (Bytes, Instant)>,
    largest: usize,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache").field("largest", &self.largest).finish_non_exhaustive()
    }
}

impl MemoryCache {
    pub(crate) fn new(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, (value, _): &(Bytes, Instant)| {
                u32::try_from(key.len() + value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .build();
        Self { entries, largest: usize::try_from(max_bytes / 64).unwrap_or(usize::MAX) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        match self.entries.get(key) {
            Some((value, expires)) if expires > Instant::now() => Some(value),
            Some(_) => {
                self.entries.invalidate(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn set(&self, key: &str, value: Bytes, ttl: Duration) {
        if value.len() > self.largest {
            // Too large to be worth the room: drop any older copy instead.
            self.entries.invalidate(key);
            return;
        }
        self.entries.insert(Arc::from(key), (value, Instant::now() + ttl));
    }

    pub(crate) fn set_if_newer(&self, key: &str, version: i64, value: Bytes, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut tagged = Vec::with_capacity(value.len() + 21);
        tagged.extend_from_slice(version.to_string().as_bytes());
        tagged.push(b':');
        tagged.extend_from_slice(&value);
        let fits = tagged.len() <= self.largest;
        let tagged = Bytes::from(tagged);
        let mut stored = false;
        // Compare and store in one step per key: atomic like the Redis script.
        self.entries.entry(Arc::from(key)).and_compute_with(|current| {
            let newer_held = current.is_some_and(|entry| {
                let (held, expires) = entry.value();
                *expires > now && super::split_version(held).is_some_and(|(v, _)| v >= version)
            });
            if newer_held {
                Op::Nop
            } else if fits {
                stored = true;
                Op::Put((tagged, now + ttl))
            } else {
                // Not cached, and an older copy must not be served.
                Op::Remove
            }
        });
        stored
    }

    pub(crate) fn delete(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// The cached weight in bytes (after pending evictions are applied).
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = MemoryCache::new(1 << 20);
        cache.set("a", Bytes::from_static(b"1"), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(cache.get("a").as_deref(), Some(&b"1"[..]));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn the_weight_stays_under_the_byte_bound_whatever_is_written() {
        let cache = MemoryCache::new(4 << 20);
        let value = Bytes::from(vec![b'x'; 60 * 1024]);
        for i in 0..2_000 {
            cache.set(&format!("k{i}"), value.clone(), Duration::from_secs(3600));
        }
        let weight = cache.weight();
        assert!(weight <= 4 << 20, "{weight} bytes cached");
        assert!(weight > 2 << 20, "the room is used: {weight}");
    }

    #[test]
    fn values_over_a_sixty_fourth_of_the_bound_are_not_cached_and_drop_older_copies() {
        let cache = MemoryCache::new(64 * 1024);
        assert!(cache.set_if_newer("k", 1, Bytes::from_static(b"small"), Duration::from_secs(60)));
        assert!(!cache.set_if_newer("k", 2, Bytes::from(vec![b'x'; 2_000]), Duration::from_secs(60)));
        assert_eq!(cache.get("k"), None, "the older copy is gone, not served");
        cache.set("big", Bytes::from(vec![b'x'; 2_000]), Duration::from_secs(60));
        assert_eq!(cache.get("big"), None);
    }

    #[test]
    fn set_if_newer_never_replaces_a_newer_version() {
        let cache = MemoryCache::new(1 << 20);
        assert!(cache.set_if_newer("k", 5, Bytes::from_static(b"five"), Duration::from_secs(60)));
        assert!(!cache.set_if_newer("k", 4, Bytes::from_static(b"four"), Duration::from_secs(60)));
        assert_eq!(cache.get("k").as_deref(), Some(&b"5:five"[..]));
    }
}
