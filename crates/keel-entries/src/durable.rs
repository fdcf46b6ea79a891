//! The entries' Redis Streams: one producer per partition, and the backlog
//! measured from the streams themselves.

use std::sync::Arc;
use std::time::Duration;

use keel_write_behind::{DurableConfig, DurableError, DurableProducer, StreamBacklog};

use crate::EntryLayout;

/// The entries' Redis Streams: one producer per partition of an
/// [`EntryLayout`], each with its own capacity (backpressure is per
/// partition).
#[derive(Clone, Debug)]
pub struct DurableEntries {
    layout: EntryLayout,
    producers: Arc<[DurableProducer]>,
    capacity: u64,
    redis: keel_store::RedisStore,
    /// Measured by a task of its own once [`Self::watch_backlog`] ran
    /// (zeros until then).
    backlog: StreamBacklog,
}

impl DurableEntries {
    /// Producers for every partition of `layout`, configured as `config`
    /// but each on its own partition's stream.
    pub fn new(redis: &keel_store::RedisStore, layout: EntryLayout, config: &DurableConfig) -> Self {
        let producers = (0..layout.partitions())
            .map(|p| DurableProducer::new(redis.clone(), DurableConfig { stream: layout.stream(p), ..config.clone() }))
            .collect();
        let capacity = config.capacity.saturating_mul(layout.partitions() as u64);
        Self { layout, producers, capacity, redis: redis.clone(), backlog: StreamBacklog::default() }
    }

    /// Measures the streams' backlog every `every` on `shutdown`'s tracker
    /// and exports it as the `name` queue's depth and oldest age: every
    /// process that produces or consumes shows how much waits, even while
    /// no consumer runs or all are stuck retrying.
    #[must_use]
    pub fn watch_backlog(
        mut self,
        every: Duration,
        shutdown: &keel_core::Shutdown,
        telemetry: &dyn keel_telemetry::MeterSource,
        name: &str,
    ) -> Self {
        self.backlog = StreamBacklog::watch(self.redis.clone(), self.layout.streams(), every, shutdown);
        self.backlog.instrument(telemetry, name);
        self
    }

    /// Closes every partition's producer (see [`DurableProducer::close`]):
    /// appends queued are answered, later ones fail.
    pub fn close(&self) {
        self.producers.iter().for_each(DurableProducer::close);
    }

    /// The backlog as last measured (see [`Self::watch_backlog`]).
    pub fn measured_backlog(&self) -> &StreamBacklog {
        &self.backlog
    }

    /// The capacity of every partition together.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The layout.
    pub fn layout(&self) -> &EntryLayout {
        &self.layout
    }

    /// The producer of the partition `key` belongs to.
    pub fn producer_for(&self, key: &str) -> &DurableProducer {
        &self.producers[self.layout.partition_of(key)]
    }

    /// Entries in every stream: the backlog still to persist.
    pub async fn backlog(&self) -> Result<u64, DurableError> {
        let lengths = futures_util::future::try_join_all(self.producers.iter().map(DurableProducer::backlog)).await?;
        Ok(lengths.iter().sum())
    }
}
