//! Updating a document: the checked, audited save, then the cache entry and
//! the announcement, repaired in the background until both went through.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::Source;
use crate::store::{StoreError, StoredDocument};

use super::*;

impl<T: Document> Inner<T> {
    /// `kind`: a plain write, a revert or a timed value.
    pub(super) async fn update(
        self: &Arc<Self>,
        value: T,
        expected: Option<i64>,
        actor: &str,
        kind: Kind,
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
        let saved = match kind {
            Kind::Plain => self.deps.store.save(&name, &json, expected, actor).await,
            Kind::Revert(version) => self.deps.store.save_reverted(&name, &json, expected, actor, version).await,
            Kind::Timed(at) => self.deps.store.save_timed(&name, &json, expected, actor, at).await,
        };
        let stored = match saved {
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
    pub(super) async fn settle(&self, stored: &StoredDocument) -> bool {
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
    pub(super) fn unsettled_until_repaired(self: &Arc<Self>, stored: StoredDocument) {
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
}
