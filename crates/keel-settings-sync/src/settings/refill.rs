//! Filling a document from the shared cache, then the database, versions
//! only going forward; and applying what was read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::Source;
use crate::store::StoredDocument;

use super::*;

impl<T: Document> Inner<T> {
    /// Refills from the database when it holds a newer version than this copy.
    pub(super) async fn catch_up(&self) {
        self.metrics.version_check();
        match self.deps.store.version(&self.name).await {
            Ok(stored) if stored > self.current.load().version => {
                tracing::info!(settings = %self.name, held = self.current.load().version, stored, "settings copy is behind the database; refilling");
                self.refill(stored).await;
            }
            Ok(_) => {}
            Err(err) => {
                self.metrics.sync_error("database");
                tracing::debug!(settings = %self.name, %err, "cannot compare the settings version with the database");
            }
        }
    }

    pub(crate) fn version(&self) -> i64 {
        self.current.load().version
    }

    pub(crate) fn staleness(&self) -> Duration {
        self.sync_state().staleness
    }

    pub(super) fn sync_state(&self) -> SyncState {
        let health = lock(&self.health);
        let staleness = health
            .unconfirmed_since
            .map_or(Duration::ZERO, |since| self.deps.clock.now().duration_since(since).unwrap_or_default());
        SyncState {
            version: self.current.load().version,
            last_success: health.last_success,
            last_error: health.last_error.clone(),
            staleness,
        }
    }

    /// Refills unless a refill that started after the caller asked already
    /// finished. `at_least`: the version an invalidation announced (0: any).
    /// Returns whether the database was read (not only the cache).
    pub(super) async fn refill(&self, at_least: i64) -> bool {
        let seen = self.refills.load(Ordering::Acquire);
        let _guard = self.refill.lock().await;
        if self.refills.load(Ordering::Acquire) != seen && self.current.load().version >= at_least {
            return false;
        }
        let result = self.load(at_least).await;
        let read_db = !matches!(result, Ok(Source::Cache));
        self.refills.fetch_add(1, Ordering::AcqRel);
        let mut health = lock(&self.health);
        match result {
            Ok(_) => {
                health.last_success = Some(self.deps.clock.now());
                health.last_error = None;
                health.unconfirmed_since = None;
            }
            Err(Failed { reason, cache_confirmed }) => {
                if health.last_error.is_none() {
                    tracing::warn!(settings = %self.name, %reason, "settings refresh failed; keeping the last known value");
                }
                health.last_error = Some(reason);
                if cache_confirmed {
                    health.unconfirmed_since = None;
                } else if health.unconfirmed_since.is_none() {
                    health.unconfirmed_since = Some(self.deps.clock.now());
                }
            }
        }
        read_db
    }

    /// Where the value came from: the cache, or the database.
    pub(super) async fn load(&self, at_least: i64) -> Result<Source, Failed> {
        // Whether a shared cache answered without a newer version than the
        // one held while nothing newer was announced: then no change was
        // missed even if the database cannot be read.
        let mut cache_confirmed = false;
        let shared = self.deps.cache.is_shared();
        match self.deps.cache.get_versioned(&self.cache_key).await {
            Ok(Some((_, bytes))) => match serde_json::from_slice::<CacheEntry>(&bytes) {
                Ok(entry) if entry.version >= at_least.max(1) => {
                    let stored = StoredDocument {
                        name: self.name.clone(),
                        value: entry.value,
                        version: entry.version,
                        updated_at_ms: entry.updated_at_ms,
                        updated_by: entry.updated_by,
                        revert_at_ms: entry.revert_at_ms,
                    };
                    if self.apply(&stored, Source::Cache) {
                        return Ok(Source::Cache);
                    }
                    // A cached value T cannot decode is as good as corrupt.
                }
                Ok(entry) => {
                    // Older than announced: the database knows better.
                    let held = self.current.load().version;
                    cache_confirmed = shared && entry.version <= held && at_least <= held;
                }
                Err(err) => {
                    self.metrics.sync_error("decode");
                    tracing::warn!(settings = %self.name, %err, "corrupt cached settings; reloading from the database");
                }
            },
            Ok(None) => cache_confirmed = shared && at_least <= self.current.load().version,
            Err(err) => {
                self.metrics.sync_error("cache");
                tracing::debug!(settings = %self.name, %err, "settings cache unavailable; reading the database");
            }
        }
        self.metrics.db_load();
        match self.deps.store.load(&self.name).await {
            Ok(Some(stored)) => {
                if self.apply(&stored, Source::Db) {
                    self.write_cache(&stored).await;
                    Ok(Source::Db)
                } else {
                    let reason = format!("stored settings {:?} do not match the document type", self.name);
                    Err(Failed { reason, cache_confirmed: false })
                }
            }
            Ok(None) => Ok(Source::Db),
            Err(err) => {
                self.metrics.sync_error("database");
                Err(Failed { reason: err.to_string(), cache_confirmed })
            }
        }
    }

    /// Sets the cache entry unless it already holds this version or a newer
    /// one (one script on Redis): a slow writer never regresses it. Returns
    /// whether Redis answered.
    pub(super) async fn write_cache(&self, stored: &StoredDocument) -> bool {
        let entry = CacheEntry {
            version: stored.version,
            value: stored.value.clone(),
            updated_at_ms: stored.updated_at_ms,
            updated_by: stored.updated_by.clone(),
            revert_at_ms: stored.revert_at_ms,
        };
        let Ok(bytes) = serde_json::to_vec(&entry) else { return true };
        match self
            .deps
            .cache
            .set_if_newer(&self.cache_key, stored.version, Bytes::from(bytes), self.config.cache_ttl)
            .await
        {
            Ok(_) => true,
            Err(err) => {
                self.metrics.sync_error("cache");
                tracing::debug!(settings = %self.name, %err, "cannot write the settings cache");
                false
            }
        }
    }

    /// Installs `stored` if it is newer. Returns false only when its value
    /// does not decode as `T`.
    pub(super) fn apply(&self, stored: &StoredDocument, source: Source) -> bool {
        self.metrics.read(source);
        let current = self.current.load();
        if stored.version <= current.version {
            return true;
        }
        let value: T = match serde_json::from_value(stored.value.clone()) {
            Ok(value) => value,
            Err(err) => {
                self.metrics.sync_error("decode");
                tracing::warn!(settings = %self.name, version = stored.version, %err, "stored settings do not decode");
                return false;
            }
        };
        let changed = *current.value != value;
        let value = Arc::new(value);
        let next = Versioned {
            value: value.clone(),
            version: stored.version,
            updated_at: Some(keel_core::from_unix_millis(stored.updated_at_ms)),
            updated_by: stored.updated_by.clone(),
            revert_at: stored.revert_at_ms.map(keel_core::from_unix_millis),
        };
        // Versions only move forward, even against a concurrent apply.
        let previous =
            self.current.rcu(|now| if now.version < next.version { Arc::new(next.clone()) } else { now.clone() });
        if previous.version >= stored.version {
            return true;
        }
        // Published after the swap: a reader that sees the new generation
        // will load the new value.
        self.generation.fetch_add(1, Ordering::Release);
        self.time(stored.version, next.revert_at);
        // Never backwards, even when two applies finish out of order.
        self.versions.send_if_modified(|seen| {
            let newer = *seen < stored.version;
            if newer {
                *seen = stored.version;
            }
            newer
        });
        if changed {
            tracing::info!(settings = %self.name, version = stored.version, by = %stored.updated_by, "settings changed");
            self.changes.send_replace(value);
        }
        true
    }
}
