//! `Settings<T>`: one typed document, cached in-process and kept in sync.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use keel_core::{SharedClock, SystemClock};
use keel_store::{Bus, Cache};
use keel_telemetry::{Meter, MeterSource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Source};
use crate::store::{Change, SettingsStore, StoreError, StoredDocument};

/// What a settings document must be.
pub trait Document: Serialize + DeserializeOwned + Default + Clone + PartialEq + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Clone + PartialEq + Send + Sync + 'static> Document for T {}

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
    /// Where the tasks that finish an update (cache, bus, repair) run: a
    /// process's [`Shutdown`](keel_core::Shutdown), so its drain waits for
    /// them; plain runtime tasks when `None`.
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
    /// Serialises refills; the counter tells a waiter someone else refilled.
    refill: tokio::sync::Mutex<()>,
    refills: AtomicU64,
    health: Mutex<Health>,
    validator: Option<Validator<T>>,
    metrics: Metrics,
    cancel: CancellationToken,
    /// A committed version whose cache write or announcement failed, kept
    /// until a repair gets both through (the repair task runs while set).
    unsettled: Mutex<Option<StoredDocument>>,
}

impl<T: Document> Drop for Inner<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
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
}

impl<T: Document> Settings<T> {
    /// Opens the document `name`: loads it (cache, then database) and starts
    /// following invalidations and the poll. Source failures do not fail the
    /// open: the value is `T::default()` until a refresh succeeds, and
    /// [`sync_state`](Self::sync_state) says so.
    pub async fn open(name: &str, deps: SettingsDeps, config: SettingsConfig) -> Result<Self, SettingsError> {
        Self::open_with(name, deps, config, None).await
    }

    /// [`open`](Self::open) with a validator that [`update`](Self::update)
    /// runs on every new value (its error answers 422 over HTTP).
    pub async fn open_validated(
        name: &str,
        deps: SettingsDeps,
        config: SettingsConfig,
        validator: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<Self, SettingsError> {
        Self::open_with(name, deps, config, Some(Arc::new(validator))).await
    }

    async fn open_with(
        name: &str,
        deps: SettingsDeps,
        config: SettingsConfig,
        validator: Option<Validator<T>>,
    ) -> Result<Self, SettingsError> {
        if !valid_name(name) {
            return Err(SettingsError::InvalidName(name.to_owned()));
        }
        if !valid_name(&config.namespace) {
            return Err(SettingsError::InvalidNamespace(config.namespace.clone()));
        }
        let initial =
            Versioned { value: Arc::new(T::default()), version: 0, updated_at: None, updated_by: String::new() };
        let (changes, _) = watch::channel(initial.value.clone());
        let subscription = deps.bus.subscribe(&config.channel()).await?;
        static IDS: AtomicU64 = AtomicU64::new(1);
        let inner = Arc::new_cyclic(|weak: &Weak<Inner<T>>| Inner {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            name: name.to_owned(),
            cache_key: config.cache_key(name),
            metrics: Metrics::new(&deps.meter, name, weak.clone()).with_cache_backend(deps.cache.backend()),
            deps,
            config,
            current: ArcSwap::from_pointee(initial),
            changes,
            refill: tokio::sync::Mutex::new(()),
            refills: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            validator,
            cancel: CancellationToken::new(),
            unsettled: Mutex::new(None),
        });
        let settings = Self { inner };
        let reconnects = settings.inner.deps.bus.reconnects();
        if !settings.inner.refill(0).await {
            // Filled from the shared cache, which a writer may have failed to
            // update during an outage: one cheap look at the database's version.
            settings.inner.catch_up().await;
        }
        tokio::spawn(follow(Arc::downgrade(&settings.inner), subscription, reconnects, settings.inner.cancel.clone()));
        Ok(settings)
    }

    /// The document's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current value, from memory: one atomic load and an `Arc` clone
    /// when this thread already holds the current version.
    pub fn get(&self) -> Arc<T> {
        self.inner.metrics.count_l1_read();
        let generation = self.inner.generation.load(Ordering::Acquire);
        let cached = READS.with(|reads| {
            let reads = reads.borrow();
            let (_, seen, value) = reads.iter().find(|(id, _, _)| *id == self.inner.id)?;
            if *seen != generation {
                return None;
            }
            value.clone().downcast::<T>().ok()
        });
        if let Some(value) = cached {
            return value;
        }
        let value = self.inner.current.load().value.clone();
        READS.with(|reads| {
            let mut reads = reads.borrow_mut();
            reads.retain(|(id, _, _)| *id != self.inner.id);
            // A thread reading many documents keeps only the most recent ones.
            if reads.len() >= READ_CACHE_SLOTS {
                reads.remove(0);
            }
            reads.push((self.inner.id, generation, value.clone()));
        });
        value
    }

    /// The current value with its version metadata, from memory.
    pub fn current(&self) -> Versioned<T> {
        Versioned::clone(&self.inner.current.load())
    }

    /// The version held (0: never written).
    pub fn version(&self) -> i64 {
        self.inner.current.load().version
    }

    /// A channel that sees every change of value (not of version alone).
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.inner.changes.subscribe()
    }

    /// How fresh this copy is.
    pub fn sync_state(&self) -> SyncState {
        self.inner.sync_state()
    }

    /// Refreshes from the cache, then the database. Concurrent calls share
    /// one load. Failures keep the current value and are reported by
    /// [`sync_state`](Self::sync_state).
    pub async fn reload(&self) {
        self.inner.refill(0).await;
    }

    /// Compares the version held with the database's (one cheap query) and
    /// refills from the database when behind. Done at open and whenever the
    /// bus reconnects (invalidations may have been missed).
    pub async fn catch_up(&self) {
        self.inner.catch_up().await;
    }

    /// Writes `value` as the next version (with `expected`: only if the
    /// stored version is still that), records `actor` in the audit trail,
    /// replaces the cache entry and tells every process.
    ///
    /// The whole update runs on its own task: a caller that goes away (a
    /// client disconnect dropping the request) cannot cut it between the
    /// database commit and the cache and bus steps. When Redis cannot take
    /// those steps, they are retried until it can, so no replica keeps
    /// serving the older version.
    /// The change is recorded as made by [`actor`](crate::actor)`(actor)`.
    pub async fn update(&self, value: T, expected: Option<i64>, actor: &str) -> Result<Versioned<T>, UpdateError> {
        let (inner, actor) = (self.inner.clone(), crate::actor(actor).to_owned());
        let name = self.inner.name.clone();
        let tasks = self.inner.deps.tasks.clone();
        let task =
            keel_core::Shutdown::spawn_on(tasks.as_ref(), async move { inner.update(value, expected, &actor).await });
        task.await.unwrap_or_else(|err| {
            Err(UpdateError::Store {
                name,
                source: StoreError::Database(keel_store::StoreError::Pool(err.to_string())),
            })
        })
    }

    /// The newest `limit` changes ([`DEFAULT_HISTORY`](crate::DEFAULT_HISTORY)
    /// when `None`, at most [`MAX_HISTORY`](crate::MAX_HISTORY)), newest first.
    pub async fn history(&self, limit: Option<usize>) -> Result<Vec<Change>, crate::HistoryError> {
        let limit = crate::rules::history_limit(limit)?;
        Ok(self.inner.deps.store.history(&self.inner.name, limit).await?)
    }

    /// The JSON validator hook for a type-erased update (HTTP).
    pub(crate) fn decode(&self, value: serde_json::Value) -> Result<T, UpdateError> {
        serde_json::from_value(value)
            .map_err(|err| UpdateError::Invalid { name: self.inner.name.clone(), reason: err.to_string() })
    }
}

impl<T: Document> Inner<T> {
    async fn update(
        self: &Arc<Self>,
        value: T,
        expected: Option<i64>,
        actor: &str,
    ) -> Result<Versioned<T>, UpdateError> {
        let name = self.name.clone();
        let json = serde_json::to_value(&value)
            .map_err(|err| UpdateError::Invalid { name: name.clone(), reason: err.to_string() })?;
        if let Some(path) = keel_core::nul_path(&json, &name) {
            return Err(UpdateError::Nul { name, path });
        }
        if let Some(validate) = &self.validator {
            validate(&value).map_err(|reason| UpdateError::Invalid { name: name.clone(), reason })?;
        }
        let stored = match self.deps.store.save(&name, &json, expected, actor).await {
            Ok(stored) => stored,
            Err(StoreError::Conflict { expected, current }) => {
                return Err(UpdateError::Conflict { name, expected, current });
            }
            Err(source) => return Err(UpdateError::Store { name, source }),
        };
        self.apply(&stored, Source::Db);
        if !self.settle(&stored).await {
            self.unsettled_until_repaired(stored);
        }
        Ok(Versioned::clone(&self.current.load()))
    }

    /// Replaces the cache entry and announces the version. Returns whether
    /// both went through.
    async fn settle(&self, stored: &StoredDocument) -> bool {
        let cached = self.write_cache(stored).await;
        let message = Invalidation { name: std::borrow::Cow::Borrowed(&self.name), version: stored.version };
        let message = serde_json::to_vec(&message).unwrap_or_default();
        let announced = match self.deps.bus.publish(&self.config.channel(), Bytes::from(message)).await {
            Ok(()) => {
                self.metrics.invalidation_sent();
                true
            }
            Err(err) => {
                self.metrics.sync_error("publish");
                tracing::warn!(settings = %self.name, %err, "cannot publish settings invalidation; retrying until it can");
                false
            }
        };
        cached && announced
    }

    /// Keeps `stored` to settle later and starts the repair task unless one
    /// runs: it retries the cache write and the announcement (backoff up to
    /// 2 s) until both go through, so replicas converge soon after Redis is
    /// back rather than at the next poll.
    fn unsettled_until_repaired(self: &Arc<Self>, stored: StoredDocument) {
        let running = {
            let mut unsettled = lock(&self.unsettled);
            let running = unsettled.is_some();
            if unsettled.as_ref().is_none_or(|u| u.version < stored.version) {
                *unsettled = Some(stored);
            }
            running
        };
        if running {
            return;
        }
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        let tasks = self.deps.tasks.clone();
        let stopping = tasks.clone();
        keel_core::Shutdown::spawn_on(tasks.as_ref(), async move {
            let backoff = keel_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let stopping = async move {
                match stopping {
                    Some(shutdown) => shutdown.triggered().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(stopping);
            for attempt in 1.. {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = &mut stopping => return,
                    () = tokio::time::sleep(backoff.delay(attempt)) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let Some(stored) = lock(&inner.unsettled).clone() else { return };
                if inner.settle(&stored).await {
                    let mut unsettled = lock(&inner.unsettled);
                    if unsettled.as_ref().is_some_and(|u| u.version <= stored.version) {
                        *unsettled = None;
                        tracing::info!(settings = %inner.name, version = stored.version, "settings cache and announcement caught up");
                        return;
                    }
                }
            }
        });
    }

    /// Refills from the database when it holds a newer version than this copy.
    async fn catch_up(&self) {
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

    fn sync_state(&self) -> SyncState {
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
    async fn refill(&self, at_least: i64) -> bool {
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
    async fn load(&self, at_least: i64) -> Result<Source, Failed> {
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
    async fn write_cache(&self, stored: &StoredDocument) -> bool {
        let entry = CacheEntry {
            version: stored.version,
            value: stored.value.clone(),
            updated_at_ms: stored.updated_at_ms,
            updated_by: stored.updated_by.clone(),
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
    fn apply(&self, stored: &StoredDocument, source: Source) -> bool {
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
        if changed {
            tracing::info!(settings = %self.name, version = stored.version, by = %stored.updated_by, "settings changed");
            self.changes.send_replace(value);
        }
        true
    }
}

async fn follow<T: Document>(
    weak: Weak<Inner<T>>,
    mut subscription: keel_store::Subscription,
    mut reconnects: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let mut bus_open = true;
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            let base = if lock(&inner.health).last_error.is_some() {
                inner.config.retry_interval
            } else {
                inner.config.poll_interval
            };
            // ±10 % so a fleet started together does not poll together.
            base.mul_f64(0.9 + fastrand::f64() * 0.2)
        };
        let announced = tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => 0,
            changed = reconnects.changed(), if bus_open => {
                if changed.is_err() {
                    // The bus is gone; the poll still runs.
                    bus_open = false;
                    continue;
                }
                // Invalidations sent while the bus was away were missed.
                let Some(inner) = weak.upgrade() else { return };
                inner.catch_up().await;
                continue;
            }
            message = subscription.recv() => match message {
                None => return,
                Some(payload) => {
                    let Some(inner) = weak.upgrade() else { return };
                    let Some(version) = announced_version(&payload, &inner.name) else { continue };
                    inner.metrics.invalidation_received();
                    if version <= inner.current.load().version {
                        continue;
                    }
                    version
                }
            },
        };
        let Some(inner) = weak.upgrade() else { return };
        inner.refill(announced).await;
    }
}

/// The message on the invalidation channel: which document, which version.
#[derive(serde::Serialize, serde::Deserialize)]
struct Invalidation<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    version: i64,
}

fn announced_version(payload: &[u8], name: &str) -> Option<i64> {
    let message: Invalidation<'_> = serde_json::from_slice(payload).ok()?;
    (message.name == name).then_some(message.version)
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

    #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
