//! A write-behind queue that loses nothing, after StellaOps Provcache's
//! `WriteBehindQueue`, without its losses and miscounts.
//!
//! - [`WriteBehind::enqueue`] waits while the queue is at capacity
//!   (backpressure); [`WriteBehind::try_enqueue`] answers [`EnqueueError::Full`].
//!   Capacity covers items queued *and* being written, and a cancelled
//!   `enqueue` changes no counter.
//! - One flusher writes batches of up to `batch_size` through a
//!   [`Repository`], as soon as a batch is full or `flush_interval` after the
//!   oldest queued item.
//! - A batch that fails transiently ([`RepoError::transient`]: the store is
//!   unreachable or busy) waits and is tried again whole, with capped
//!   exponential backoff and jitter, for as long as the outage lasts: never
//!   an item's attempt, never a dead letter. A batch the store refuses
//!   ([`RepoError::permanent`]) is split in halves so one poison item cannot
//!   hold back the rest; an item refused on its own is retried, and after
//!   `max_retries` retries goes to the [`DeadLetters`] sink and is counted.
//!   An item is done only once persisted or its dead letter is stored.
//!   Never a silent drop.
//! - With coalescing on, a queued item is replaced by a newer one with the
//!   same [`Keyed::key`] (last write wins inside the queue).
//! - [`WriteBehind::shutdown`] drains everything within a timeout; leftovers
//!   go to the dead letters.
//! - [`WriteBehind::metrics`] keeps
//!   `enqueued = persisted + failed + queue_depth + in_flight` at quiescent
//!   points.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::{Arc, Mutex};
//! use keel_write_behind::{DeadLetter, DeadLetters, Keyed, Repository, RepoError, RepoFuture, WriteBehind, WriteBehindConfig};
//!
//! #[derive(Clone, Debug)]
//! struct Entry { key: String, value: u32 }
//! impl Keyed for Entry { type Key = String; fn key(&self) -> String { self.key.clone() } }
//!
//! #[derive(Default)]
//! struct Table(Mutex<Vec<Entry>>);
//! impl Repository<Entry> for Table {
//!     fn upsert_many<'a>(&'a self, items: &'a [Entry]) -> RepoFuture<'a> {
//!         self.0.lock().unwrap().extend_from_slice(items);
//!         Box::pin(async { Ok(()) })
//!     }
//! }
//! impl DeadLetters<Entry> for Table {
//!     fn store<'a>(&'a self, _letters: &'a [DeadLetter<Entry>]) -> RepoFuture<'a> {
//!         Box::pin(async { Ok(()) })
//!     }
//! }
//!
//! let table = Arc::new(Table::default());
//! let queue = WriteBehind::start(WriteBehindConfig::default(), table.clone(), table.clone()).unwrap();
//! queue.enqueue(Entry { key: "a".into(), value: 1 }).await.unwrap();
//! queue.shutdown().await;
//! assert_eq!(table.0.lock().unwrap().len(), 1);
//! assert_eq!(queue.metrics().persisted, 1);
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "redis")]
mod backlog;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod dead_letters;
#[cfg(feature = "redis")]
mod durable;
#[cfg(feature = "local-log")]
mod log;
mod persist;
mod queue;

#[cfg(feature = "redis")]
pub use backlog::{BACKLOG_INTERVAL, StreamBacklog};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use dead_letters::DbDeadLetters;
#[cfg(feature = "redis")]
pub use durable::{CLOCK_MARGIN, DurableConfig, DurableConsumer, DurableError, DurableProducer};
#[cfg(feature = "local-log")]
pub use log::{DirStorage, LocalLog, LocalLogConfig, LocalLogError, LocalLogStats, LogCore, Recovery, Storage};
pub use queue::{
    DeadLetter, DeadLetters, EnqueueError, FullMode, Keyed, Metrics, RepoError, RepoFuture, Repository, WriteBehind,
    WriteBehindConfig, WriteBehindError,
};

/// The code in `docs/write-behind.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/write-behind.md")]
pub struct WriteBehindGuide;
