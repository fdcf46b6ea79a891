//! `Settings<T>`: one typed document, cached in-process and kept in sync.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use keel_core::{SharedClock, SystemClock};
use keel_store::{Bus, Cache};
use keel_telemetry::{Meter, MeterSource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{SettingsStore, StoreError, StoredDocument};

mod follower;
mod read;
mod refill;
mod timed;
mod write;

#[cfg(test)]
use follower::announced_version;
use follower::{Invalidation, follow};
pub use timed::TIMED_REVERT_ACTOR;

/// What a settings document must be: serde both ways, a default, and a
/// JSON Schema (`#[derive(schemars::JsonSchema)]`), which the document
/// publishes and every JSON write is checked against.
pub trait Document:
    Serialize + DeserializeOwned + schemars::JsonSchema + Default + Clone + PartialEq + Send + Sync + 'static
{
}
impl<T: Serialize + DeserializeOwned + schemars::JsonSchema + Default + Clone + PartialEq + Send + Sync + 'static>
    Document for T
{
}

/// Naming, cache lifetime and the fallback poll.
#[derive(Debug, Clone)]
pub struct SettingsConfig {
    /// Prefix of the cache key (`<namespace>:settings:<name>`) and of the
    /// invalidation channel (`<namespace>.settings`), so deployments can
    /// share one Redis. Default `keel`.
    pub namespace: String,
    /// Lifetime of the shared cache entry (default 30 min).
    pub cache_ttl: Duration,
    /// Fallback poll when an invalidation was missed (default 5 min, ±10 %).
    pub poll_interval: Duration,
    /// Poll interval while the last refresh failed (default 5 s).
    pub retry_interval: Duration,
    /// The longest a timed value may last before it reverts
    /// ([`Settings::update_for`]; default 24 h).
    pub max_revert_after: Duration,
}

impl SettingsConfig {
    /// The bus channel carrying `{name, version}` invalidations.
    pub fn channel(&self) -> String {
        format!("{}.settings", self.namespace)
    }

    /// The cache key of document `name`.
    pub fn cache_key(&self, name: &str) -> String {
        format!("{}:settings:{name}", self.namespace)
    }
}

impl Default for SettingsConfig {
    fn default() -> Self {
        Self {
            namespace: "keel".into(),
            cache_ttl: Duration::from_secs(30 * 60),
            poll_interval: Duration::from_secs(5 * 60),
            retry_interval: Duration::from_secs(5),
            max_revert_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a [`Settings`] needs from its surroundings.
#[derive(Clone)]
pub struct SettingsDeps {
    /// The database of record.
    pub store: Arc<dyn SettingsStore>,
    /// The shared cache (Redis in a cluster, in-process otherwise).
    pub cache: Cache,
    /// The invalidation bus.
    pub bus: Bus,
    /// Where metrics go.
    pub meter: Meter,
    /// Wall clock for staleness.
    pub clock: SharedClock,
    /// Where the tasks that finish an update (cache, bus, repair) and the
    /// follower run: a process's [`Shutdown`](keel_core::Shutdown), so its
    /// drain waits for them (the follower and repairs stop when shutdown
    /// starts); plain runtime tasks when `None`.
    pub tasks: Option<keel_core::Shutdown>,
}

impl SettingsDeps {
    /// Dependencies with the system clock; metrics go to `meters`' meter.
    pub fn new(store: Arc<dyn SettingsStore>, cache: Cache, bus: Bus, meters: impl MeterSource) -> Self {
        Self { store, cache, bus, meter: meters.meter("keel-settings-sync"), clock: SystemClock::shared(), tasks: None }
    }
}

impl fmt::Debug for SettingsDeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettingsDeps")
            .field("cache", &self.cache.backend())
            .field("bus", &self.bus.backend())
            .finish_non_exhaustive()
    }
}

/// A document value with its version metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: Arc<T>,
    /// Version (0: never written; the value is `T::default()`).
    pub version: i64,
    /// When it was written.
    pub updated_at: Option<SystemTime>,
    /// Who wrote it.
    pub updated_by: String,
    /// When this version returns to the value before it (a timed value);
    /// `None` for a plain write.
    pub revert_at: Option<SystemTime>,
}

/// How fresh this process's copy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// The version held.
    pub version: i64,
    /// The last time the cache or database answered.
    pub last_success: Option<SystemTime>,
    /// Why the last refresh failed, if it did.
    pub last_error: Option<String>,
    /// How long a change could have gone unnoticed: since the first of the
    /// refreshes that failing in a row reached neither the database nor
    /// the shared cache (0 while either answers). It grows from zero, one
    /// second per second; failed refreshes are retried every
    /// `retry_interval`.
    pub staleness: Duration,
}

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The value is not a valid document.
    #[error("invalid settings {name:?}: {reason}")]
    Invalid {
        /// Document name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Someone else changed it first.
    #[error("settings {name:?} are at version {current}, not {expected}")]
    Conflict {
        /// Document name.
        name: String,
        /// What the caller expected.
        expected: i64,
        /// What is stored.
        current: i64,
    },
    /// A string or object key in the document holds U+0000, which no
    /// store keeps; `path` names the first (`monitoring.tags[2]`).
    #[error("{path} contains U+0000, which cannot be stored")]
    Nul {
        /// Document name.
        name: String,
        /// Where, from the document's name.
        path: String,
    },
    /// The JSON value breaks the document's schema: each violation with
    /// its JSON Pointer.
    #[error("invalid settings {name:?}: {}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Schema {
        /// Document name.
        name: String,
        /// Every violation found (the first 20).
        violations: Vec<crate::Violation>,
    },
    /// A revert named a version the audit trail does not have.
    #[error("settings {name:?} have no version {version}")]
    UnknownVersion {
        /// Document name.
        name: String,
        /// The version asked for.
        version: i64,
    },
    /// A timed value asked for a time outside 1 s to
    /// [`SettingsConfig::max_revert_after`].
    #[error("settings {name:?}: revert_after must be from 1s to {}, not {}", keel_core::HumanDuration::new(*.max), keel_core::HumanDuration::new(*.requested))]
    RevertAfter {
        /// Document name.
        name: String,
        /// What was asked for.
        requested: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// The database failed.
    #[error("cannot save settings {name:?}: {source}")]
    Store {
        /// Document name.
        name: String,
        /// The failure.
        source: StoreError,
    },
}

/// Why a settings document could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The name is not usable as a cache key and URL segment.
    #[error("invalid settings name {0:?}: use 1-64 characters from [a-z0-9_.-]")]
    InvalidName(String),
    /// The namespace is not usable as a key and channel prefix.
    #[error("invalid settings namespace {0:?}: use 1-64 characters from [a-z0-9_.-]")]
    InvalidNamespace(String),
    /// The bus subscription failed.
    #[error("cannot subscribe to settings invalidations: {0}")]
    Bus(#[from] keel_store::StoreError),
    /// The document type's generated JSON Schema does not compile.
    #[error("the JSON Schema of the settings type does not compile: {0}")]
    Schema(String),
}

type Validator<T> = Arc<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

const READ_CACHE_SLOTS: usize = 16;

/// (document id, generation, value) of one recent read on this thread.
type CachedRead = (u64, u64, Arc<dyn std::any::Any + Send + Sync>);

thread_local! {
    /// Per thread: recent reads. Ids are never reused, so an entry can only
    /// be stale (and then reloaded), never wrong.
    static READS: std::cell::RefCell<Vec<CachedRead>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A typed settings document shared by every process of a cluster.
///
/// Reads ([`get`](Self::get)) come from an in-process copy and never touch
/// the network. Refills go to the shared cache, then the database, and
/// concurrent refills share one load. Writes ([`update`](Self::update)) are
/// optimistic-concurrency updates with an audit row; the writer replaces the
/// cache entry and publishes `{name, version}` so every process refreshes
/// within milliseconds; a jittered poll covers missed messages. Versions only
/// move forward. Cloning shares the document.
pub struct Settings<T: Document> {
    inner: Arc<Inner<T>>,
}

impl<T: Document> Clone for Settings<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T: Document> fmt::Debug for Settings<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings").field("name", &self.inner.name).field("version", &self.version()).finish()
    }
}

/// The shared state, as seen by the metrics callbacks.
pub(crate) type InnerHandle<T> = Inner<T>;

pub(crate) struct Inner<T: Document> {
    /// Process-unique id of this document handle, for the per-thread cache.
    id: u64,
    /// Bumped (after `current` is replaced) on every new version.
    generation: AtomicU64,
    name: String,
    cache_key: String,
    deps: SettingsDeps,
    config: SettingsConfig,
    current: ArcSwap<Versioned<T>>,
    changes: watch::Sender<Arc<T>>,
    /// Every new version, as it is installed.
    versions: watch::Sender<i64>,
    /// Serialises refills; the counter tells a waiter someone else refilled.
    refill: tokio::sync::Mutex<()>,
    refills: AtomicU64,
    health: Mutex<Health>,
    validator: Option<Validator<T>>,
    /// The type's JSON Schema, checked before a JSON value is decoded.
    shape: crate::schema::Shape,
    metrics: Metrics,
    cancel: CancellationToken,
    /// A committed version whose cache write or announcement failed, kept
    /// until a repair gets both through (the repair task runs while set).
    unsettled: Mutex<Option<StoredDocument>>,
    /// Calls off the timer of the timed value held while it still waits
    /// (replaced with each version).
    timer: Mutex<Option<CancellationToken>>,
    /// This document's own handle, for the tasks it starts.
    this: std::sync::Weak<Inner<T>>,
}

impl<T: Document> Drop for Inner<T> {
    fn drop(&mut self) {
        // Cancels the timers too: theirs are child tokens.
        self.cancel.cancel();
    }
}

/// How a write came about, as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A plain write.
    Plain,
    /// A revert to the value of this version.
    Revert(i64),
    /// A timed value, returning to the value before at this time
    /// (milliseconds since the Unix epoch).
    Timed(i64),
}

#[derive(Debug, Default)]
struct Health {
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    /// Since when a change could have gone unnoticed: the first refresh
    /// that neither the database nor the shared cache could answer. Until
    /// then the bus announced every change, and a shared cache that
    /// answered holds every committed version (updates write it, retrying
    /// until it takes them).
    unconfirmed_since: Option<SystemTime>,
}

/// A refresh that could not read the database.
struct Failed {
    reason: String,
    /// The shared cache showed nothing newer was written (see
    /// [`Health::unconfirmed_since`]).
    cache_confirmed: bool,
}

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    // Plain data with no invariants spanning fields: safe after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// The shared-cache entry.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    version: i64,
    value: serde_json::Value,
    updated_at_ms: i64,
    updated_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revert_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(valid_name("monitoring") && valid_name("feature-flags.v2"));
        assert!(!valid_name("") && !valid_name("Caps") && !valid_name("a/b") && !valid_name(&"x".repeat(65)));
    }

    #[test]
    fn invalidations_are_filtered_by_name() {
        assert_eq!(announced_version(br#"{"name":"a","version":3}"#, "a"), Some(3));
        assert_eq!(announced_version(br#"{"name":"b","version":3}"#, "a"), None);
        assert_eq!(announced_version(b"garbage", "a"), None);
    }
}

#[cfg(test)]
mod read_cache_tests {
    use super::*;
    use keel_store::{Database, DbConfig};

    #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    struct Doc {
        n: u64,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_thread_sees_each_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
        let db = Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry)
            .await
            .unwrap();
        db.run_migrations().await.unwrap();
        let deps = SettingsDeps::new(
            Arc::new(crate::DbSettingsStore::new(db)),
            Cache::memory(),
            Bus::memory(&telemetry),
            telemetry,
        );
        let a: Settings<Doc> = Settings::open("a", deps.clone(), SettingsConfig::default()).await.unwrap();
        let b: Settings<Doc> = Settings::open("b", deps, SettingsConfig::default()).await.unwrap();
        for n in 1..=20 {
            a.update(Doc { n }, None, "t").await.unwrap();
            assert_eq!(a.get().n, n, "the writer's thread");
            assert_eq!(b.get().n, 0, "documents do not share cache slots");
            let reader = a.clone();
            let seen = std::thread::spawn(move || (reader.get().n, reader.get().n)).join().unwrap();
            assert_eq!(seen, (n, n), "a fresh thread");
        }
    }
}
