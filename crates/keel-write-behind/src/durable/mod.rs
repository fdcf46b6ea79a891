//! Durable mode: the queue is a Redis Stream read by a consumer group, so a
//! consumer killed at any moment loses nothing.
//!
//! Producers `XADD` (waiting while the stream is longer than the capacity).
//! Consumers claim entries another consumer left pending longer than the
//! visibility timeout (`XAUTOCLAIM`, looked for four times per timeout, not
//! on every poll), then read new ones (`XREADGROUP`),
//! persist them through the repository (idempotent: a version guard makes a
//! replay harmless), and only then `XACK` and `XDEL` them.

use std::time::Duration;

use keel_store::StoreError;

mod consumer;
mod producer;

pub use consumer::DurableConsumer;
pub use producer::{CLOCK_MARGIN, DurableProducer};

/// How long a measured backlog is trusted.
const BACKLOG_FRESH: Duration = Duration::from_millis(100);

/// Durable-mode settings.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// The stream key.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// This consumer's name (stable per process, e.g. the instance id).
    pub consumer: String,
    /// Stream length above which producers wait (10 000).
    pub capacity: u64,
    /// Entries per read and per repository call (500).
    pub batch_size: usize,
    /// Entries pending this long on a silent consumer are claimed (30 s).
    pub visibility_timeout: Duration,
    /// Pause between polls when there is nothing to read, and between
    /// capacity checks of a waiting producer (50 ms).
    pub idle_poll: Duration,
    /// Retries of an item the store refuses on its own before it is
    /// dead-lettered (5). Transient failures are never counted here.
    pub max_retries: u32,
    /// First retry delay, doubled each time (100 ms)...
    pub backoff_initial: Duration,
    /// ...up to this (10 s).
    pub backoff_max: Duration,
    /// Random spread of each delay (0.2 = ±20 %).
    pub jitter: f64,
    /// Replicas an append must reach (`WAIT`) before
    /// [`DurableProducer::enqueue_cached`] succeeds (0: the master's answer
    /// is enough, and a failover can lose the last appends it took). The
    /// appends sent in one script call share one `WAIT`.
    pub ack_replicas: u32,
    /// The owner's [`Shutdown`](keel_core::Shutdown), whose tracker runs the
    /// producer's append task so that a drain waits for it (none: the
    /// runtime runs it). The task ends at [`DurableProducer::close`], or when
    /// the last producer is dropped.
    pub tasks: Option<keel_core::Shutdown>,
}

impl DurableConfig {
    /// Defaults for `stream`, `group` and `consumer`.
    pub fn new(stream: impl Into<String>, group: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            capacity: 10_000,
            batch_size: 500,
            visibility_timeout: Duration::from_secs(30),
            idle_poll: Duration::from_millis(50),
            max_retries: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            jitter: 0.2,
            ack_replicas: 0,
            tasks: None,
        }
    }
}

/// Why a durable operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// The stream is at capacity (`try_enqueue`).
    #[error("the durable queue is full")]
    Full,
    /// The item cannot be serialized.
    #[error("cannot serialize the item: {0}")]
    Encode(String),
    /// Redis answered something unexpected.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The append reached fewer replicas than `ack_replicas` in time (it is
    /// in the stream, and may yet be persisted).
    #[error("the write reached {acked} of the {wanted} replicas it needs")]
    NotReplicated {
        /// Replicas that acknowledged it.
        acked: u32,
        /// `ack_replicas`.
        wanted: u32,
    },
    /// Redis ran the append after its deadline (the caller's timeout, less
    /// the clock margin of [`DurableProducer::enqueue_cached`]) and refused
    /// it: nothing was appended or cached.
    #[error("redis ran the append after its deadline; it was refused and nothing changed")]
    Late,
}
