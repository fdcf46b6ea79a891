//! A deduplicating write batcher, after coder's metadata batcher, without its
//! losses.
//!
//! - [`Batcher::add`] never blocks: items go into a bounded channel
//!   (`channel_multiplier × max_batch_size`, default 5 × 500); when it is full
//!   the item is dropped, counted, and a warning is logged at most every 10 s.
//! - One task owns a map keyed by `K`. For a repeated key the value with the
//!   newest [`Stamped::stamp`] wins; on a tie, the later arrival. Capacity
//!   counts unique keys.
//! - Flushes happen at capacity (which also restarts the interval), every
//!   `flush_interval` (5 s), and at shutdown, when the channel is drained into
//!   the map first and the final flush gets `final_flush_timeout` (15 s). An
//!   empty flush does nothing.
//! - A write that fails transiently (the sink is unreachable) is merged back
//!   into the map (newer values keep winning) and retried with exponential
//!   backoff for as long as it takes; meanwhile the owner holds at most
//!   `max_pending_keys` and then lets the channel fill, so further adds are
//!   refused, never accepted and lost. A write the sink refuses (a permanent
//!   [`SinkError`]) is split until the refused items are alone; only those
//!   are dropped, counted as rejected. Nothing is dropped silently:
//!   `offered = flushed + deduplicated + dropped + pending` ([`BatcherStats`]).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::{Arc, Mutex};
//! use std::time::{Duration, SystemTime};
//! use keel_batcher::{BatchSink, Batcher, BatcherConfig, SinkFuture, Stamped};
//!
//! #[derive(Clone)]
//! struct Reading { value: f64, at: SystemTime }
//! impl Stamped for Reading { fn stamp(&self) -> SystemTime { self.at } }
//!
//! #[derive(Default)]
//! struct Rows(Mutex<Vec<(String, f64)>>);
//! impl BatchSink<String, Reading> for Rows {
//!     fn write<'a>(&'a self, batch: &'a [(String, Reading)]) -> SinkFuture<'a> {
//!         self.0.lock().unwrap().extend(batch.iter().map(|(k, r)| (k.clone(), r.value)));
//!         Box::pin(async { Ok(()) })
//!     }
//! }
//!
//! let rows = Arc::new(Rows::default());
//! let batcher = Batcher::start("example", BatcherConfig::default(), rows.clone()).unwrap();
//! let now = SystemTime::now();
//! batcher.add("cpu".to_string(), Reading { value: 0.5, at: now }).unwrap();
//! batcher.add("cpu".to_string(), Reading { value: 0.7, at: now + Duration::from_secs(1) }).unwrap();
//! batcher.shutdown().await;
//! assert_eq!(*rows.0.lock().unwrap(), vec![("cpu".to_string(), 0.7)]);
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod agents;
mod batcher;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod chunks;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod metadata;
mod metrics;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use agents::{
    Accepted, AgentMetadata, MAX_CLOCK_SKEW, MAX_KEY_LEN, MAX_KEYS, MAX_VALUE_LEN, MetadataError, Submitted,
};
pub use batcher::{
    AddError, BatchSink, Batcher, BatcherConfig, BatcherError, BatcherStats, FlushListener, SinkError, SinkFuture,
    Stamped,
};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use metadata::{ChangedAgents, DbMetadataSink, MetadataKey, MetadataNotifier, MetadataRow, MetadataValue};

/// The code in `docs/batcher.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/batcher.md")]
pub struct BatcherGuide;
