//! Storage for Keel services, chosen at run time by configuration:
//!
//! - [`Database`]: PostgreSQL (diesel-async + deadpool) when a `postgres://`
//!   URL is given, otherwise an embedded SQLite file (bundled libsqlite3)
//!   through diesel-async's sync connection wrapper. Embedded migrations, one
//!   folder per backend, run at start-up and are idempotent. On PostgreSQL,
//!   [`Database::copy_merge`] writes a big batch with binary `COPY` into a
//!   staging table and merges it with one guarded statement, in one
//!   transaction.
//! - [`Cache`]: Redis (fred) when a `redis://` URL is given, otherwise an
//!   in-process map with per-entry expiry.
//! - [`Bus`]: publish/subscribe of byte payloads on named channels over Redis
//!   pub/sub, PostgreSQL `LISTEN/NOTIFY`, or in-process. Redis and Postgres
//!   subscribers reconnect and re-subscribe on their own.
//!
//! Every backend is a cargo feature (`postgres`, `sqlite`, `redis`); the
//! in-process cache and bus are always available. Database operations and
//! Redis commands are timed into histograms (by operation and table, or by
//! command name; never by key), and pool occupancy is exported as gauges.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_store::StoreError> {
//! use bytes::Bytes;
//! use keel_store::{Bus, Cache};
//! use std::time::Duration;
//!
//! let telemetry = keel_telemetry::Telemetry::new("example").unwrap();
//! let cache = Cache::memory();
//! cache.set("greeting", Bytes::from_static(b"hello"), Duration::from_secs(60)).await?;
//! assert_eq!(cache.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//!
//! let bus = Bus::memory(&telemetry);
//! let mut sub = bus.subscribe("events").await?;
//! bus.publish("events", Bytes::from_static(b"ping")).await?;
//! assert_eq!(sub.recv().await.as_deref(), Some(&b"ping"[..]));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "redis")]
mod append;
mod bus;
mod cache;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod db;
mod error;
mod metrics;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "redis")]
pub use append::{Appended, CachedAppend};
pub use bus::{Bus, BusBackend, Subscription};
pub use cache::Cache;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use db::{Backend, Database, DbConfig, PoolStatus};
#[cfg(feature = "postgres")]
pub use db::{CopyMerge, PgConnection, PgPool};
#[cfg(feature = "sqlite")]
pub use db::{PooledSqliteConnection, SqliteConnection, SqlitePool};
pub use error::StoreError;
pub use keel_core::FailureKind;
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore, Script};

/// The code in `docs/store.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/store.md")]
pub struct StoreGuide;
