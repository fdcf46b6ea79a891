//! Where the entries service keeps things in Redis: which stream (partition)
//! an entry key goes to, and the cache key of that entry.
//!
//! An entry's cache key and its partition's stream share a hash tag
//! (`{p<n>}`), so the one script that writes both stays in one slot of a
//! Redis Cluster, and the partitions spread over its shards. One key always
//! maps to one partition (a stable FNV-1a hash, the same in every process and
//! release), so per-key order is kept.

/// The Redis key layout of the entries service.
///
/// ```
/// use keel_entries::EntryLayout;
///
/// let layout = EntryLayout::new("keel", 16);
/// let p = layout.partition_of("users/42");
/// assert_eq!(p, layout.partition_of("users/42"), "stable");
/// assert_eq!(layout.stream(p), format!("keel:entries-stream:{{p{p}}}"));
/// assert_eq!(layout.cache_key("users/42"), format!("keel:entries:{{p{p}}}:users/42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLayout {
    namespace: String,
    partitions: usize,
}

/// The most partitions a layout takes.
pub const MAX_PARTITIONS: usize = 1024;

impl EntryLayout {
    /// `partitions` streams (clamped to 1..=[`MAX_PARTITIONS`]) under
    /// `namespace`.
    pub fn new(namespace: impl Into<String>, partitions: usize) -> Self {
        Self { namespace: namespace.into(), partitions: partitions.clamp(1, MAX_PARTITIONS) }
    }

    /// How many partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The partition of an entry key.
    pub fn partition_of(&self, key: &str) -> usize {
        let hash =
            key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        // `partitions` ≤ MAX_PARTITIONS: the remainder fits any usize.
        usize::try_from(hash % self.partitions as u64).unwrap_or(0)
    }

    /// The stream of `partition`.
    pub fn stream(&self, partition: usize) -> String {
        format!("{}:entries-stream:{{p{partition}}}", self.namespace)
    }

    /// Every stream, in partition order.
    pub fn streams(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.stream(p)).collect()
    }

    /// The cache key of an entry, in its partition's slot.
    pub fn cache_key(&self, key: &str) -> String {
        format!("{}:entries:{{p{}}}:{key}", self.namespace, self.partition_of(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_every_partition_and_never_meet_a_stream() {
        let layout = EntryLayout::new("keel", 16);
        let mut seen = [0usize; 16];
        for i in 0..16_000 {
            seen[layout.partition_of(&format!("users/{i}"))] += 1;
        }
        assert!(seen.iter().all(|n| (700..=1300).contains(n)), "{seen:?}");
        // An entry named like a stream is still a cache key of its own.
        for p in 0..16 {
            assert_ne!(layout.cache_key("stream"), layout.stream(p));
        }
        assert_eq!(EntryLayout::new("k", 0).partitions(), 1);
        assert_eq!(EntryLayout::new("k", 1).partition_of("anything"), 0);
        // Fixed values: a release must not move keys between partitions.
        assert_eq!(layout.partition_of("a"), 0xaf63_dc4c_8601_ec8c_u64 as usize % 16);
    }
}
