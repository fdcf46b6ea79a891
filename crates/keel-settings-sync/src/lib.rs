//! Typed settings cached across a cluster and changed in milliseconds.
//!
//! A [`Settings<T>`] holds one JSON document of type `T` (any
//! `Serialize + DeserializeOwned + Default + Clone + PartialEq`):
//!
//! - **Reads** ([`Settings::get`]) return an `Arc<T>` from an in-process copy
//!   (`ArcSwap`), never touching the network.
//! - **Refills** read the shared cache (`<namespace>:settings:<name>`, Redis in a
//!   cluster, TTL 30 min), then the database; concurrent refills share one
//!   load; a corrupt cache entry is treated as a miss and rewritten.
//! - **Writes** ([`Settings::update`]) are optimistic-concurrency updates with
//!   an audit row in one transaction; the writer replaces the cache entry and
//!   publishes `{name, version}` on the bus, so every process refreshes within
//!   milliseconds. A jittered poll (5 min) covers missed messages. Versions
//!   only move forward.
//! - **Failures**: cache down → database; database down → the last known value
//!   stays and [`Settings::sync_state`] reports staleness; never written →
//!   `T::default()`.
//! - [`Settings::subscribe`] fires only when the value actually changes.
//!   [`Settings::versions`] sees every new version.
//! - **Schema**: each document's JSON Schema (2020-12) is generated from `T`
//!   ([`Settings::schema`]); a JSON write is checked against it and refused
//!   with every violation's JSON Pointer ([`UpdateError::Schema`]).
//! - **Revert and timed values**: [`Settings::revert`] writes an earlier
//!   version again; [`Settings::update_for`] writes a value that returns to
//!   the one before after a while, once across the deployment.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use keel_settings_sync::{DbSettingsStore, Settings, SettingsConfig, SettingsDeps};
//! use keel_store::{Bus, Cache, Database, DbConfig};
//!
//! #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
//! #[derive(keel_settings_sync::schemars::JsonSchema)]
//! #[schemars(crate = "keel_settings_sync::schemars")] // no schemars dependency of your own
//! struct Flags { dark_mode: bool }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let telemetry = keel_telemetry::Telemetry::new("example").unwrap();
//! let db = Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
//! db.run_migrations().await.unwrap();
//! let deps = SettingsDeps::new(Arc::new(DbSettingsStore::new(db)), Cache::memory(), Bus::memory(&telemetry), telemetry);
//!
//! let flags: Settings<Flags> = Settings::open("flags", deps, SettingsConfig::default()).await.unwrap();
//! assert_eq!(*flags.get(), Flags::default());
//! flags.update(Flags { dark_mode: true }, Some(0), "ada").await.unwrap();
//! assert!(flags.get().dark_mode);
//! assert_eq!(flags.version(), 1);
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builtin;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod db;
mod dynamic;
mod metrics;
mod rules;
mod schema;
mod settings;
mod store;

pub use builtin::MonitoringSettings;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use db::DbSettingsStore;
pub use dynamic::{DocumentView, DynSettings, SettingsRegistry};
pub use rules::{DEFAULT_ACTOR, DEFAULT_HISTORY, HistoryError, MAX_ACTOR, MAX_HISTORY, actor};
pub use schema::Violation;
/// The JSON Schema generator documents derive (`#[derive(schemars::JsonSchema)]`).
pub use schemars;
pub use settings::{
    Document, Settings, SettingsConfig, SettingsDeps, SettingsError, SyncState, TIMED_REVERT_ACTOR, UpdateError,
    Versioned,
};
pub use store::{Change, SettingsStore, StoreError, StoreFuture, StoredDocument};

/// The code in `docs/settings-sync.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/settings-sync.md")]
pub struct SettingsSyncGuide;
