//! Log capture and process stats for operators.
//!
//! [`CaptureLayer`] is a `tracing` layer that, while capture is enabled,
//! hands each event to a bounded, preallocated buffer without ever waiting:
//! when the buffer is full the event is dropped and counted. The drain turns
//! buffered events into [`LogRecord`]s (time, level, target, message,
//! fields, process, instance), off the logging thread.
//! While capture is off the layer costs one relaxed atomic load per event.
//! Secrets registered with the [`Redactor`] never appear in a record.
//! [`Capture::drain`] feeds captured records to a [`LogSink`] in batches;
//! [`LogStore`] keeps them in Redis lists (`RedisLogs`, feature `redis`) or
//! the in-process ring [`MemoryLogs`] (embedded mode).
//!
//! [`HttpStats`] counts requests, errors and latency percentiles per route;
//! a [`Collector`] turns them, CPU, memory, the tokio runtime and any named
//! sections into a [`StatsDocument`] that [`Collector::run`] publishes to a
//! [`StatsStore`] every interval with a time to live of three intervals.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use keel_monitoring::{Capture, CaptureConfig, LogQuery, MemoryLogs, Redactor};
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! let (capture, records) = Capture::new(CaptureConfig::new("api", "api-1"), Redactor::new(["s3cret"]));
//! let subscriber = tracing_subscriber::registry().with(capture.layer());
//! let logs = Arc::new(MemoryLogs::new(100));
//! let drain = tokio::spawn(Capture::drain(records, logs.clone(), 10, std::time::Duration::from_millis(10)));
//! tracing::subscriber::with_default(subscriber, || tracing::warn!(token = "s3cret", "login failed"));
//! drop(capture); // closes the channel: the drain flushes and ends
//! drain.await.unwrap();
//! let query = LogQuery { min_level: tracing::Level::INFO, limit: 10, since_ms: None };
//! let recent = logs.recent("api", &query);
//! assert_eq!(recent[0].message, "login failed");
//! assert_eq!(recent[0].fields["token"], "[redacted]");
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod capture;
mod collector;
mod http;
#[cfg(feature = "hub")]
mod hub;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis;
mod store;

pub use capture::{Capture, CaptureConfig, CaptureLayer, LogSink, Records, SinkError, SinkFuture};
pub use collector::{Collector, RouteWindows, Section, StatsDocument, TokioStats};
pub use http::{HttpSnapshot, HttpStats, RouteStats, RouteSummary};
#[cfg(feature = "hub")]
pub use hub::{MonitoringEvent, MonitoringEvents, MonitoringHub, PROCESSES};
pub use memory::MemoryLogs;
pub use record::{LogRecord, REDACTED, Redactor};
#[cfg(feature = "redis")]
pub use redis::{RedisLogs, RedisStats};
pub use store::{DEFAULT_LOG_LIMIT, LimitError, LogQuery, LogStore, MAX_LOG_LIMIT, MemoryStats, StatsStore};

/// The code in `docs/monitoring.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/monitoring.md")]
pub struct MonitoringGuide;
