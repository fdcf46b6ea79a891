//! A key/value cache with per-entry expiry: Redis or in-process.

mod memory;

use std::time::Duration;

use bytes::Bytes;

use crate::StoreError;
#[cfg(feature = "redis")]
use crate::redis::RedisStore;
use memory::MemoryCache;

/// A byte cache with per-entry time-to-live. Cloning shares the cache.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Inner,
}

/// `"<version>:<value>"` → `(version, value)`.
fn split_version(raw: &Bytes) -> Option<(i64, Bytes)> {
    let colon = raw.iter().position(|b| *b == b':')?;
    let version = std::str::from_utf8(&raw[..colon]).ok()?.parse().ok()?;
    Some((version, raw.slice(colon + 1..)))
}

#[derive(Clone, Debug)]
enum Inner {
    Memory(MemoryCache),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl Cache {
    /// An in-process cache of at most [`Cache::DEFAULT_MEMORY_BYTES`] (embedded
    /// mode, tests).
    pub fn memory() -> Self {
        Self::memory_bounded(Self::DEFAULT_MEMORY_BYTES)
    }

    /// The default bound of an in-process cache: 64 MiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;

    /// An in-process cache holding at most `max_bytes` (keys, values and
    /// per-entry overhead), evicting the least valuable entries beyond it
    /// (TinyLFU); a value over `max_bytes / 64` is not cached.
    pub fn memory_bounded(max_bytes: u64) -> Self {
        Self { inner: Inner::Memory(MemoryCache::new(max_bytes)) }
    }

    /// A cache on Redis.
    #[cfg(feature = "redis")]
    pub fn redis(store: RedisStore) -> Self {
        Self { inner: Inner::Redis(store) }
    }

    /// `redis` or `memory`.
    pub fn backend(&self) -> &'static str {
        match self.inner {
            Inner::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Inner::Redis(_) => "redis",
        }
    }

    /// Whether other processes see this cache's entries (Redis), so an
    /// answer from it speaks for the whole deployment.
    pub fn is_shared(&self) -> bool {
        !matches!(self.inner, Inner::Memory(_))
    }

    /// The value under `key`, unless absent or expired.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match &self.inner {
            Inner::Memory(m) => Ok(m.get(key)),
            #[cfg(feature = "redis")]
            Inner::Redis(r) => r.get(key).await,
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Inner::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Stores `value` under `key` tagged with `version`, unless the entry
    /// there already has a version at least as high; atomically, on every
    /// backend. Read it back with [`get_versioned`](Self::get_versioned).
    /// Returns whether it was stored.
    pub async fn set_if_newer(&self, key: &str, version: i64, value: Bytes, ttl: Duration) -> Result<bool, StoreError> {
        match &self.inner {
            Inner::Memory(m) => Ok(m.set_if_newer(key, version, value, ttl)),
            #[cfg(feature = "redis")]
            Inner::Redis(r) => r.set_if_newer(key, version, value, ttl).await,
        }
    }

    /// The `(version, value)` stored by [`set_if_newer`](Self::set_if_newer).
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(i64, Bytes)>, StoreError> {
        Ok(self.get(key).await?.and_then(|raw| split_version(&raw)))
    }

    /// Removes `key`; absent keys are not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Inner::Redis(r) => r.delete(key).await,
        }
    }
}
