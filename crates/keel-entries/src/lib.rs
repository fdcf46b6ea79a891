//! Versioned JSON entries that are readable the moment they are written and
//! persisted behind the caller's back, losing nothing: the service Keel's
//! `/api/v1/entries` serves, for any Rust caller.
//!
//! - [`Entries::put`] checks the rules ([`check_key`], [`check_value`]: 1–256
//!   bytes of `[A-Za-z0-9_.:/-]`, at most 64 KiB of JSON, no U+0000), gives
//!   the write a version that only grows, and acknowledges it once it is
//!   both queued and cached; [`Entries::get`] reads the cache, then the
//!   database.
//! - [`Entries::start`] picks the persistence from the stores it is given:
//!   without Redis an in-process [`WriteBehind`](keel_write_behind::WriteBehind)
//!   queue (acknowledged after an fdatasync when a local log is given); with
//!   Redis (feature `redis`) one Redis Stream per partition, persisted by the
//!   processes that consume them. Callers see one facade either way:
//!   [`Entries::backlog`], [`Entries::metrics`], [`Entries::local_log`],
//!   [`Entries::close`].
//! - [`DbEntries`] (features `postgres`, `sqlite`) is the `entries` table:
//!   a write only replaces a lower version, so replays and out-of-order
//!   batches never go back in time.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_entries::{Entries, EntriesConfig, EntryError, EntryStores};
//! use keel_store::{Cache, Database, DbConfig};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir()?;
//! let telemetry = keel_telemetry::Telemetry::new("doc")?;
//! let database = Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await?;
//! database.run_migrations().await?;
//! let stores = EntryStores::new(database, Cache::memory());
//! let shutdown = keel_core::Shutdown::new();
//! let entries = Entries::start(EntriesConfig::new("doc", "instance-1"), stores, &shutdown, &telemetry).await?;
//!
//! let version = entries.put("users/42", json!({"plan": "pro"})).await?;
//! assert_eq!(entries.get("users/42").await?.map(|e| e.version), Some(version));
//! assert!(matches!(entries.put("no spaces", json!(1)).await, Err(EntryError::InvalidKey(_))));
//! let persisted = entries.close(std::time::Duration::from_secs(5)).await.map(|m| m.persisted);
//! assert_eq!(persisted, Some(1));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "redis")]
mod durable;
mod layout;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod repository;
mod rules;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod service;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod start;
mod write;

#[cfg(feature = "redis")]
pub use durable::DurableEntries;
/// The local write-ahead log [`EntryStores::with_local_log`] takes.
pub use keel_write_behind::{LocalLog, LocalLogConfig};
pub use layout::{EntryLayout, MAX_PARTITIONS};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use repository::{DbEntries, Entry};
pub use rules::{EntryError, MAX_ENTRY_KEY, MAX_ENTRY_VALUE, check_key, check_value};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use service::{Backlog, DEFAULT_ENQUEUE_TIMEOUT, Entries, EntrySink, StoredEntry};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use start::{DEFAULT_QUEUE_BYTES, EntriesConfig, EntryStores, StartError};
pub use write::EntryWrite;

/// The code in `docs/entries.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/entries.md")]
pub struct EntriesGuide;
