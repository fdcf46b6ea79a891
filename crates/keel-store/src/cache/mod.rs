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

#[derive(Clone, Debug)]
enum Inner {
    Memory(MemoryCache),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl Cache {
    /// An in-process cache (embedded mode, tests).
    pub fn memory() -> Self {
        Self { inner: Inner::Memory(MemoryCache::default()) }
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
