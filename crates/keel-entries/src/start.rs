//! [`Entries::start`]: the service with its persistence chosen by what it
//! runs on — an in-process queue (behind the local write-ahead log when one
//! is given) without Redis, partitioned Redis Streams with it — so the code
//! that composes a process never needs to know which.

use std::sync::Arc;
use std::time::Duration;

use keel_core::Shutdown;
use keel_store::{Cache, Database};
use keel_telemetry::MeterSource;
use keel_write_behind::{DbDeadLetters, LocalLog, WriteBehind, WriteBehindConfig};

use crate::service::{DEFAULT_ENQUEUE_TIMEOUT, EntrySink};
use crate::{DbEntries, Entries};

/// What the in-process queue may hold by default: 16 MiB (10 000 writes of
/// 64 KiB would be 640 MiB).
pub const DEFAULT_QUEUE_BYTES: u64 = 16 << 20;

/// The queue name in metrics and in the dead-letter table.
const QUEUE: &str = "entries";

/// How [`Entries::start`] runs the service.
#[derive(Debug, Clone)]
pub struct EntriesConfig {
    /// Prefix of the service's Redis keys and streams.
    pub namespace: String,
    /// How long a write waits for room before [`EntryError::Full`](crate::EntryError::Full) (2 s).
    pub enqueue_timeout: Duration,
    /// The in-process queue (without Redis): the defaults, bounded by
    /// [`DEFAULT_QUEUE_BYTES`] too.
    pub queue: WriteBehindConfig,
    /// Streams (with Redis): how many partitions (`None`: 16 on a Redis
    /// Cluster, 1 otherwise).
    pub partitions: Option<usize>,
    /// Replicas a stream append must reach before it is acknowledged (0).
    pub ack_replicas: u32,
    /// This process's name in the streams' consumer group.
    pub instance: String,
    /// Whether this process persists the streams (a worker: one consumer
    /// per partition) or only appends to them.
    pub consume: bool,
}

impl EntriesConfig {
    /// The defaults under `namespace`, for the process named `instance`.
    pub fn new(namespace: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            enqueue_timeout: DEFAULT_ENQUEUE_TIMEOUT,
            queue: WriteBehindConfig { max_bytes: Some(DEFAULT_QUEUE_BYTES), ..WriteBehindConfig::default() },
            partitions: None,
            ack_replicas: 0,
            instance: instance.into(),
            consume: false,
        }
    }
}

/// The stores [`Entries::start`] runs on.
#[derive(Debug, Clone)]
pub struct EntryStores {
    database: Database,
    cache: Cache,
    #[cfg(feature = "redis")]
    redis: Option<keel_store::RedisStore>,
    local_log: Option<LocalLog>,
}

impl EntryStores {
    /// Entries persisted to `database` (migrated), visible at once through
    /// `cache`, queued in process.
    pub fn new(database: Database, cache: Cache) -> Self {
        Self {
            database,
            cache,
            #[cfg(feature = "redis")]
            redis: None,
            local_log: None,
        }
    }

    /// Writes go to Redis Streams on `redis` instead of the in-process queue.
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn with_redis(mut self, redis: Option<keel_store::RedisStore>) -> Self {
        self.redis = redis;
        self
    }

    /// The in-process queue acknowledges a write once it is on `log`
    /// (fdatasync'd), and replays the log at start.
    #[must_use]
    pub fn with_local_log(mut self, log: Option<LocalLog>) -> Self {
        self.local_log = log;
        self
    }
}

/// Why the service could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The in-process queue refused its configuration or its log.
    #[error("cannot start the entries queue: {0}")]
    Queue(String),
    /// A stream consumer could not join its group.
    #[error("cannot start an entries stream consumer: {0}")]
    Consumer(String),
}

impl Entries {
    /// Starts the service on `stores`: its tasks run on `shutdown`'s
    /// tracker, its instruments on `telemetry` (`keel_write_behind_*` with
    /// `queue="entries"`, `keel_entries_acknowledged_total`). Drain it with
    /// [`Entries::close`] once writes have stopped.
    pub async fn start(
        config: EntriesConfig,
        stores: EntryStores,
        shutdown: &Shutdown,
        telemetry: &dyn MeterSource,
    ) -> Result<Self, StartError> {
        let store = DbEntries::new(stores.database.clone());
        let dead_letters = Arc::new(DbDeadLetters::new(stores.database.clone(), QUEUE));
        #[cfg(feature = "redis")]
        if let Some(redis) = &stores.redis {
            return streams::start(&config, stores.cache, redis, store, dead_letters, shutdown, telemetry).await;
        }
        let repository = Arc::new(store.clone());
        let queue_config = WriteBehindConfig { tasks: Some(shutdown.clone()), ..config.queue.clone() };
        let queue = match stores.local_log {
            Some(log) => WriteBehind::start_logged(queue_config, repository, dead_letters, log),
            None => WriteBehind::start(queue_config, repository, dead_letters),
        }
        .map_err(|err| StartError::Queue(err.to_string()))?;
        queue.instrument(telemetry, QUEUE);
        let entries = Entries::new(stores.cache, &config.namespace, EntrySink::Memory(queue), store)
            .with_enqueue_timeout(config.enqueue_timeout)
            .with_tasks(shutdown.clone());
        entries.instrument(telemetry);
        Ok(entries)
    }
}

#[cfg(feature = "redis")]
mod streams {
    use keel_write_behind::{BACKLOG_INTERVAL, DurableConfig, DurableConsumer, DurableProducer};

    use super::*;
    use crate::{DurableEntries, EntryLayout};

    /// Appends go to one stream per partition; a consuming process runs one
    /// consumer per partition (and one for a stream an earlier release left).
    pub(super) async fn start(
        config: &EntriesConfig,
        cache: Cache,
        redis: &keel_store::RedisStore,
        store: DbEntries,
        dead_letters: Arc<DbDeadLetters>,
        shutdown: &Shutdown,
        telemetry: &dyn MeterSource,
    ) -> Result<Entries, StartError> {
        let default = if redis.is_cluster() { 16 } else { 1 };
        let partitions = config.partitions.unwrap_or(default);
        let layout = EntryLayout::new(&config.namespace, partitions);
        let durable = DurableConfig {
            ack_replicas: config.ack_replicas,
            tasks: Some(shutdown.clone()),
            ..DurableConfig::new(layout.stream(0), "keel-entries", &config.instance)
        };
        let mut consumers = Vec::new();
        if config.consume {
            let mut streams = layout.streams();
            // Releases before partitions wrote to one stream of another
            // name: what an upgrade finds there is persisted too.
            let legacy = format!("{}:entries:stream", config.namespace);
            let left = DurableProducer::new(redis.clone(), DurableConfig::new(&legacy, "", "")).backlog().await;
            if left.is_ok_and(|n| n > 0) {
                tracing::warn!(stream = legacy, "draining the entries stream of an earlier release");
                streams.push(legacy);
            }
            for stream in streams {
                let config = DurableConfig { stream, ..durable.clone() };
                let consumer =
                    DurableConsumer::new(redis.clone(), config, Arc::new(store.clone()), dead_letters.clone())
                        .await
                        .map_err(|err| StartError::Consumer(err.to_string()))?;
                let (stop, running) = (shutdown.token(), Arc::new(consumer));
                let task = running.clone();
                shutdown.spawn(async move { task.run(stop).await });
                consumers.push(running);
            }
            DurableConsumer::instrument_all(&consumers, telemetry, QUEUE);
            tracing::info!(consumer = config.instance, partitions, "consuming the entries streams");
        }
        let sink =
            DurableEntries::new(redis, layout, &durable).watch_backlog(BACKLOG_INTERVAL, shutdown, telemetry, QUEUE);
        let entries = Entries::new(cache, &config.namespace, EntrySink::Durable(sink), store)
            .with_enqueue_timeout(config.enqueue_timeout)
            .with_tasks(shutdown.clone())
            .with_consumers(consumers);
        entries.instrument(telemetry);
        Ok(entries)
    }
}
