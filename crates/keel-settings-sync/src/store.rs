//! Where settings documents are kept for good.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A boxed future returned by [`SettingsStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDocument {
    /// Document name.
    pub name: String,
    /// The JSON value.
    pub value: serde_json::Value,
    /// Version, starting at 1 and bumped by every write.
    pub version: i64,
    /// Milliseconds since the Unix epoch of the last write.
    pub updated_at_ms: i64,
    /// Who wrote it last.
    pub updated_by: String,
    /// When this version returns to the value before it (a timed value,
    /// [`Settings::update_for`](crate::Settings::update_for)), in
    /// milliseconds since the Unix epoch; `None` for a plain write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_at_ms: Option<i64>,
}

impl StoredDocument {
    /// `updated_at_ms` as a time.
    pub fn updated_at(&self) -> SystemTime {
        keel_core::from_unix_millis(self.updated_at_ms)
    }
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The version this change produced.
    pub version: i64,
    /// Who made it.
    pub actor: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The value before (`null` for the first write).
    pub old: serde_json::Value,
    /// The value after.
    pub new: serde_json::Value,
    /// The version whose value this change restored, when it was a revert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_from: Option<i64>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The expected version did not match.
    #[error("version conflict: expected {expected}, current is {current}")]
    Conflict {
        /// What the caller expected.
        expected: i64,
        /// What is stored (0: absent).
        current: i64,
    },
    /// The database failed or is unreachable.
    #[error(transparent)]
    Database(#[from] keel_store::StoreError),
    /// A stored value is not valid JSON.
    #[error("stored settings {name:?} are not valid JSON: {reason}")]
    Corrupt {
        /// Document name.
        name: String,
        /// Parser message.
        reason: String,
    },
    /// The store cannot do what was asked (a store written for an older
    /// Keel keeps no timed values).
    #[error("this settings store cannot {0}")]
    Unsupported(&'static str),
}

/// The database of record for settings documents.
pub trait SettingsStore: Send + Sync + 'static {
    /// The document, or `None` if never written.
    fn load<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Result<Option<StoredDocument>, StoreError>>;

    /// Writes `value` as the next version and appends an audit row, in one
    /// transaction. With `expected`, fails with [`StoreError::Conflict`]
    /// unless the stored version equals it (0: not yet written).
    fn save<'a>(
        &'a self,
        name: &'a str,
        value: &'a serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
    ) -> StoreFuture<'a, Result<StoredDocument, StoreError>>;

    /// The stored version (0: never written): a cheap check of whether a
    /// copy is behind. The default loads the whole document.
    fn version<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move { Ok(self.load(name).await?.map_or(0, |stored| stored.version)) })
    }

    /// The newest `limit` changes, newest first.
    fn history<'a>(&'a self, name: &'a str, limit: usize) -> StoreFuture<'a, Result<Vec<Change>, StoreError>>;

    /// The value `name` had at `version` (`None`: no such version in the
    /// audit trail). The default looks through the newest
    /// [`MAX_HISTORY`](crate::MAX_HISTORY) changes.
    fn value_at<'a>(
        &'a self,
        name: &'a str,
        version: i64,
    ) -> StoreFuture<'a, Result<Option<serde_json::Value>, StoreError>> {
        Box::pin(async move {
            let changes = self.history(name, crate::MAX_HISTORY).await?;
            Ok(changes.into_iter().find(|c| c.version == version).map(|c| c.new))
        })
    }

    /// [`save`](Self::save) of a value that restores version
    /// `reverted_from`, recorded as such in the audit trail. The default
    /// saves it as a plain change.
    fn save_reverted<'a>(
        &'a self,
        name: &'a str,
        value: &'a serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
        reverted_from: i64,
    ) -> StoreFuture<'a, Result<StoredDocument, StoreError>> {
        let _ = reverted_from;
        self.save(name, value, expected, actor)
    }

    /// [`save`](Self::save) of a timed value: the stored document carries
    /// `revert_at_ms` until the next write replaces it. The default refuses
    /// ([`StoreError::Unsupported`]): a timer the store forgets would never
    /// fire.
    fn save_timed<'a>(
        &'a self,
        name: &'a str,
        value: &'a serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
        revert_at_ms: i64,
    ) -> StoreFuture<'a, Result<StoredDocument, StoreError>> {
        let _ = (name, value, expected, actor, revert_at_ms);
        Box::pin(async { Err(StoreError::Unsupported("keep timed values")) })
    }
}
