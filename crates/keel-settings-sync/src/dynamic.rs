//! Type-erased access for HTTP handlers and operators.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::settings::{Document, Settings, SyncState, UpdateError};
use crate::store::Change;

/// A document as JSON, with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentView {
    /// Document name.
    pub name: String,
    /// Version (0: never written).
    pub version: i64,
    /// The value.
    pub value: serde_json::Value,
    /// When it was written.
    pub updated_at: Option<SystemTime>,
    /// Who wrote it.
    pub updated_by: String,
    /// When this version returns to the value before it (a timed value).
    pub revert_at: Option<SystemTime>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Settings`] of any type, driven with JSON.
pub trait DynSettings: Send + Sync {
    /// Document name.
    fn name(&self) -> &str;
    /// The current value as JSON.
    fn view(&self) -> DocumentView;
    /// The version [`view`](Self::view) would show, without building the
    /// view: to tell whether a copy rendered earlier is still current.
    fn version(&self) -> i64 {
        self.view().version
    }
    /// The document's JSON Schema ([`Settings::schema`]).
    fn schema(&self) -> Arc<serde_json::Value>;
    /// Every new version as it is installed ([`Settings::versions`]).
    fn versions(&self) -> tokio::sync::watch::Receiver<i64>;
    /// Decodes `value` as the document type and updates it; with
    /// `revert_after`, as a timed value ([`Settings::update_for`]).
    fn update_json<'a>(
        &'a self,
        value: serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
        revert_after: Option<std::time::Duration>,
    ) -> BoxFuture<'a, Result<DocumentView, UpdateError>>;
    /// Writes the value of `version` again as the next version
    /// ([`Settings::revert`]).
    fn revert<'a>(
        &'a self,
        version: i64,
        expected: Option<i64>,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<DocumentView, UpdateError>>;
    /// The newest `limit` changes (50 when `None`, at most 1000), newest first.
    fn history(&self, limit: Option<usize>) -> BoxFuture<'_, Result<Vec<Change>, crate::HistoryError>>;
    /// Freshness.
    fn sync_state(&self) -> SyncState;
}

impl<T: Document> DynSettings for Settings<T> {
    fn name(&self) -> &str {
        Settings::name(self)
    }

    fn version(&self) -> i64 {
        Settings::version(self)
    }

    fn versions(&self) -> tokio::sync::watch::Receiver<i64> {
        Settings::versions(self)
    }

    fn schema(&self) -> Arc<serde_json::Value> {
        Settings::schema(self)
    }

    fn view(&self) -> DocumentView {
        let current = self.current();
        DocumentView {
            name: self.name().to_owned(),
            version: current.version,
            value: serde_json::to_value(&*current.value).unwrap_or(serde_json::Value::Null),
            updated_at: current.updated_at,
            updated_by: current.updated_by,
            revert_at: current.revert_at,
        }
    }

    fn update_json<'a>(
        &'a self,
        value: serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
        revert_after: Option<std::time::Duration>,
    ) -> BoxFuture<'a, Result<DocumentView, UpdateError>> {
        Box::pin(async move {
            let typed = self.decode(value)?;
            match revert_after {
                Some(after) => self.update_for(typed, expected, actor, after).await?,
                None => self.update(typed, expected, actor).await?,
            };
            Ok(DynSettings::view(self))
        })
    }

    fn revert<'a>(
        &'a self,
        version: i64,
        expected: Option<i64>,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<DocumentView, UpdateError>> {
        Box::pin(async move {
            Settings::revert(self, version, expected, actor).await?;
            Ok(DynSettings::view(self))
        })
    }

    fn history(&self, limit: Option<usize>) -> BoxFuture<'_, Result<Vec<Change>, crate::HistoryError>> {
        Box::pin(Settings::history(self, limit))
    }

    fn sync_state(&self) -> SyncState {
        Settings::sync_state(self)
    }
}

/// Every settings document a process serves, by name.
#[derive(Clone, Default)]
pub struct SettingsRegistry {
    documents: BTreeMap<String, Arc<dyn DynSettings>>,
}

impl std::fmt::Debug for SettingsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.documents.keys()).finish()
    }
}

impl SettingsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a document (replacing one of the same name).
    pub fn register<T: Document>(&mut self, settings: Settings<T>) {
        self.documents.insert(settings.name().to_owned(), Arc::new(settings));
    }

    /// The document called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynSettings>> {
        self.documents.get(name)
    }

    /// Every document, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn DynSettings>> {
        self.documents.values()
    }
}
