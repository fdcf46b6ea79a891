//! The public face of a document: opening it, reading it from memory (one
//! atomic load and a per-thread slot), watching it, and its freshness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Change, StoreError};

use super::*;

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

    pub(super) async fn open_with(
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
        let initial = Versioned {
            value: Arc::new(T::default()),
            version: 0,
            updated_at: None,
            updated_by: String::new(),
            revert_at: None,
        };
        let (changes, _) = watch::channel(initial.value.clone());
        let (versions, _) = watch::channel(0);
        let shape = crate::schema::Shape::of::<T>().map_err(SettingsError::Schema)?;
        let subscription = deps.bus.subscribe(&config.channel()).await?;
        // Under a `Shutdown`, following stops when shutdown starts, so the
        // tracker's drain does not wait for a document that lives on.
        let cancel = deps.tasks.as_ref().map_or_else(CancellationToken::new, |shutdown| shutdown.token().child_token());
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
            versions,
            refill: tokio::sync::Mutex::new(()),
            refills: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            validator,
            shape,
            cancel,
            unsettled: Mutex::new(None),
            timer: Mutex::new(None),
            this: weak.clone(),
        });
        let settings = Self { inner };
        let reconnects = settings.inner.deps.bus.reconnects();
        if !settings.inner.refill(0).await {
            // Filled from the shared cache, which a writer may have failed to
            // update during an outage: one cheap look at the database's version.
            settings.inner.catch_up().await;
        }
        let follower = follow(Arc::downgrade(&settings.inner), subscription, reconnects, settings.inner.cancel.clone());
        keel_core::Shutdown::spawn_on(settings.inner.deps.tasks.as_ref(), follower);
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

    /// A channel that sees every new version (0 until first written), even
    /// one whose value equals the last: what a client following the
    /// document's versions (`GET /api/v1/settings/{name}/stream`) waits on.
    /// Versions come in order; a slow receiver sees the newest, not each.
    pub fn versions(&self) -> watch::Receiver<i64> {
        self.inner.versions.subscribe()
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
        self.save(value, expected, actor, Kind::Plain).await
    }

    /// [`update`](Self::update) with a timed value: after `revert_after`
    /// (1 s to [`SettingsConfig::max_revert_after`], else
    /// [`UpdateError::RevertAfter`]) the document returns to the value it
    /// had before, as a new version by
    /// [`TIMED_REVERT_ACTOR`](crate::TIMED_REVERT_ACTOR). It happens once
    /// across the deployment: every process holding the version keeps the
    /// timer, and the revert is conditional on the version still being
    /// this one, so the first process to get there wins and a later write
    /// cancels it. A process that starts after the time reverts at once.
    pub async fn update_for(
        &self,
        value: T,
        expected: Option<i64>,
        actor: &str,
        revert_after: Duration,
    ) -> Result<Versioned<T>, UpdateError> {
        let max = self.inner.config.max_revert_after;
        if revert_after < Duration::from_secs(1) || revert_after > max {
            return Err(UpdateError::RevertAfter { name: self.inner.name.clone(), requested: revert_after, max });
        }
        let at = keel_core::unix_millis(self.inner.deps.clock.now() + revert_after);
        self.save(value, expected, actor, Kind::Timed(at)).await
    }

    /// Writes the value version `version` had as the next version (checked
    /// again, as any update is), with `expected` and `actor` as in
    /// [`update`](Self::update); the audit trail records it as reverted
    /// from `version`. [`UpdateError::UnknownVersion`] when the audit trail
    /// has no such version.
    pub async fn revert(&self, version: i64, expected: Option<i64>, actor: &str) -> Result<Versioned<T>, UpdateError> {
        let name = &self.inner.name;
        let value = match self.inner.deps.store.value_at(name, version).await {
            Ok(Some(value)) => value,
            Ok(None) => return Err(UpdateError::UnknownVersion { name: name.clone(), version }),
            Err(source) => return Err(UpdateError::Store { name: name.clone(), source }),
        };
        let reverted = match self.decode(value) {
            Ok(value) => self.save(value, expected, actor, Kind::Revert(version)).await,
            Err(err) => Err(err),
        };
        reverted.map_err(|err| match err {
            UpdateError::Invalid { name, reason } => {
                UpdateError::Invalid { name, reason: format!("version {version} is no longer valid: {reason}") }
            }
            other => other,
        })
    }

    /// [`update`](Self::update) and [`revert`](Self::revert), on a task of
    /// their own.
    async fn save(
        &self,
        value: T,
        expected: Option<i64>,
        actor: &str,
        kind: Kind,
    ) -> Result<Versioned<T>, UpdateError> {
        let (inner, actor) = (self.inner.clone(), crate::actor(actor).to_owned());
        let name = self.inner.name.clone();
        let tasks = self.inner.deps.tasks.clone();
        let task =
            keel_core::Shutdown::spawn_on(
                tasks.as_ref(),
                async move { inner.update(value, expected, &actor, kind).await },
            );
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

    /// The document's JSON Schema (2020-12), generated from `T`: what a
    /// JSON write ([`DynSettings::update_json`](crate::DynSettings)) is
    /// checked against.
    pub fn schema(&self) -> Arc<serde_json::Value> {
        self.inner.shape.schema().clone()
    }

    /// A JSON value as `T`: checked against the schema (every violation
    /// with its JSON Pointer), then decoded.
    pub(crate) fn decode(&self, value: serde_json::Value) -> Result<T, UpdateError> {
        let violations = self.inner.shape.check(&value);
        if !violations.is_empty() {
            return Err(UpdateError::Schema { name: self.inner.name.clone(), violations });
        }
        serde_json::from_value(value)
            .map_err(|err| UpdateError::Invalid { name: self.inner.name.clone(), reason: err.to_string() })
    }
}
