//! Timed values: a version written with `revert_after` returns to the value
//! before it, once across the deployment. Every process that installs such
//! a version arms a timer; when it fires, the process writes the earlier
//! value conditionally on the version still being the timed one, so the
//! first process there wins, the others see a conflict, and any later
//! write (which carries no timer of its own, or its own) cancels it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

/// Who a timed revert is recorded as in the audit trail.
pub const TIMED_REVERT_ACTOR: &str = "keel (timed revert)";

/// The first retry after a failed timed revert; doubled up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl<T: Document> Inner<T> {
    /// Arms the timer of `version` (when it is a timed value), replacing
    /// the timer of the version before.
    ///
    /// Only a timer still waiting is called off: once its revert has
    /// started, it runs to the end, because the revert's own new version
    /// comes through here too, and cutting it between the commit and the
    /// cache write and announcement would leave the other processes behind.
    pub(super) fn time(&self, version: i64, revert_at: Option<SystemTime>) {
        let mut timer = lock(&self.timer);
        if let Some(previous) = timer.take() {
            previous.cancel();
        }
        let Some(at) = revert_at else { return };
        let delay = at.duration_since(self.deps.clock.now()).unwrap_or(Duration::ZERO);
        let (this, cancel) = (self.this.clone(), self.cancel.clone());
        let waiting = cancel.child_token();
        let called_off = waiting.clone();
        keel_core::Shutdown::spawn_on(self.deps.tasks.as_ref(), async move {
            tokio::select! {
                () = called_off.cancelled() => {}
                () = tokio::time::sleep(delay) => revert_when_due(this, version, cancel).await,
            }
        });
        *timer = Some(waiting);
    }

    /// One attempt at the timed revert of `version`: `None` when it is
    /// settled (done here, done elsewhere, overtaken or impossible), the
    /// reason to try again otherwise.
    async fn timed_revert(self: &Arc<Self>, version: i64) -> Option<String> {
        if self.current.load().version > version {
            return None;
        }
        let name = &self.name;
        let before = if version > 1 {
            match self.deps.store.value_at(name, version - 1).await {
                Ok(Some(value)) => match serde_json::from_value::<T>(value) {
                    Ok(value) => value,
                    Err(err) => {
                        tracing::error!(settings = %name, version, %err, "the value before a timed value no longer decodes: not reverted");
                        return None;
                    }
                },
                Ok(None) => {
                    tracing::error!(settings = %name, version, "the audit trail lacks the value before a timed value: not reverted");
                    return None;
                }
                Err(err) => return Some(err.to_string()),
            }
        } else {
            // The first write was timed: before it, the document was never
            // written.
            T::default()
        };
        let kind = if version > 1 { Kind::Revert(version - 1) } else { Kind::Plain };
        match self.update(before, Some(version), TIMED_REVERT_ACTOR, kind).await {
            Ok(reverted) => {
                tracing::info!(settings = %name, from = version, to = reverted.version, "timed value reverted");
                None
            }
            // Another process reverted it first, or a later write replaced it.
            Err(UpdateError::Conflict { .. }) => None,
            Err(UpdateError::Store { source, .. }) => Some(source.to_string()),
            Err(err) => {
                tracing::error!(settings = %name, version, %err, "a timed value cannot be reverted");
                None
            }
        }
    }
}

/// Reverts `version` of the document behind `this`, retrying while the
/// store fails, until it is settled, the document is dropped or shutdown
/// starts.
async fn revert_when_due<T: Document>(this: std::sync::Weak<Inner<T>>, version: i64, cancel: CancellationToken) {
    let mut wait = RETRY_FIRST;
    loop {
        let Some(inner) = this.upgrade() else { return };
        let Some(reason) = inner.timed_revert(version).await else { return };
        tracing::warn!(settings = %inner.name, version, %reason, retry_in = ?wait, "cannot revert a timed value yet");
        drop(inner);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}
