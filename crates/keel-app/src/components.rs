//! The reference services: agent metadata (a batcher) and entries (a
//! write-behind queue or partitioned Redis Streams).

use std::sync::Arc;
use std::time::Duration;

use keel_batcher::{AgentMetadata, Batcher, BatcherConfig, DbMetadataSink, MetadataNotifier};
use keel_write_behind::{
    BACKLOG_INTERVAL, DEFAULT_ENQUEUE_TIMEOUT, DbDeadLetters, DbEntries, DurableConfig, DurableConsumer,
    DurableEntries, DurableProducer, Entries, EntryLayout, EntrySink, WriteBehind, WriteBehindConfig,
};

use crate::config::ConfigError;
use crate::core::Core;
use crate::{Role, StartError};

/// What the in-process entries queue may hold: 16 MiB.
const ENTRIES_QUEUE_BYTES: u64 = 16 << 20;

/// The agent-metadata batcher writing to the database, announcing changes on
/// Redis (cluster), PostgreSQL NOTIFY (no Redis) or in-process (embedded),
/// flushed by `Services::close` within the shutdown budget.
pub(crate) async fn start_metadata(core: &Core) -> Result<AgentMetadata, StartError> {
    let channel = MetadataNotifier::channel(&core.args.namespace);
    let notifier = if core.redis.is_none() && core.database.backend() == keel_store::Backend::Postgres {
        MetadataNotifier::postgres(core.database.clone(), channel.clone())
    } else {
        MetadataNotifier::bus(core.bus.clone(), channel.clone())
    };
    let sink = Arc::new(DbMetadataSink::new(core.database.clone()));
    let batcher = Batcher::start_with(
        "agent_metadata",
        BatcherConfig::default(),
        sink.clone(),
        Some(Arc::new(notifier)),
        Some(&core.meter()),
    )
    .map_err(|err| StartError::Config(ConfigError::Invalid { key: "batcher", reason: err.to_string() }))?;
    Ok(AgentMetadata::new(batcher, sink, &core.bus, &channel, &core.shutdown).await?)
}

/// The entries service: with Redis, writes go to Redis Streams, one per
/// partition (`api` produces, `worker` runs one consumer per partition and
/// persists); without, to an in-process write-behind queue drained by
/// `Services::close`.
pub(crate) async fn start_entries(core: &Core) -> Result<Entries, StartError> {
    let store = DbEntries::new(core.database.clone());
    let mut consumers = Vec::new();
    let sink = match &core.redis {
        Some(redis) => {
            let default = if redis.is_cluster() { 16 } else { 1 };
            let partitions = core.args.entries_partitions.map_or(default, usize::from);
            let layout = EntryLayout::new(&core.args.namespace, partitions);
            let config = DurableConfig {
                ack_replicas: core.args.ack_replicas,
                ..DurableConfig::new(layout.stream(0), "keel-entries", &core.instance_id)
            };
            if core.role == Role::Worker {
                let mut started = Vec::with_capacity(partitions + 1);
                let mut streams = layout.streams();
                // Releases before partitions wrote to one stream of another
                // name: what an upgrade finds there is persisted too.
                let legacy = format!("{}:entries:stream", core.args.namespace);
                let left = DurableProducer::new(redis.clone(), DurableConfig::new(&legacy, "", "")).backlog().await;
                if left.is_ok_and(|n| n > 0) {
                    tracing::warn!(stream = legacy, "draining the entries stream of an earlier release");
                    streams.push(legacy);
                }
                for stream in streams {
                    let config = DurableConfig { stream, ..config.clone() };
                    started.push(start_consumer(core, redis, config, &store).await?);
                }
                DurableConsumer::instrument_all(&started, &core.meter(), "entries");
                tracing::info!(consumer = core.instance_id, partitions, "consuming the entries streams");
                consumers = started;
            }
            let durable = DurableEntries::new(redis, layout, &config).watch_backlog(
                BACKLOG_INTERVAL,
                &core.shutdown,
                &core.meter(),
                "entries",
            );
            EntrySink::Durable(durable)
        }
        None => {
            // Bounded by bytes too: 10 000 writes of 64 KiB would be 640 MiB.
            let config = WriteBehindConfig { max_bytes: Some(ENTRIES_QUEUE_BYTES), ..WriteBehindConfig::default() };
            let (repository, dead_letters) = (Arc::new(store.clone()), dead_letters(core));
            let queue = match &core.local_log {
                Some(log) => WriteBehind::start_logged(config, repository, dead_letters, log.clone()),
                None => WriteBehind::start(config, repository, dead_letters),
            }
            .map_err(|err| StartError::WriteBehind(err.to_string()))?;
            queue.instrument(&core.meter(), "entries");
            EntrySink::Memory(queue)
        }
    };
    let timeout = core.args.enqueue_timeout.or(core.file.write_behind.enqueue_timeout);
    let entries = Entries::new(core.cache.clone(), &core.args.namespace, sink, store)
        .with_enqueue_timeout(timeout.map_or(DEFAULT_ENQUEUE_TIMEOUT, Duration::from))
        .with_tasks(core.shutdown.clone());
    entries.instrument(&core.meter());
    Ok(entries.with_consumers(consumers))
}

fn dead_letters(core: &Core) -> Arc<DbDeadLetters> {
    Arc::new(DbDeadLetters::new(core.database.clone(), "entries"))
}

/// The worker's stream consumer, running until shutdown.
async fn start_consumer(
    core: &Core,
    redis: &keel_store::RedisStore,
    config: DurableConfig,
    store: &DbEntries,
) -> Result<Arc<DurableConsumer<keel_write_behind::EntryWrite>>, StartError> {
    let running = Arc::new(
        DurableConsumer::new(redis.clone(), config, Arc::new(store.clone()), dead_letters(core))
            .await
            .map_err(|err| StartError::WriteBehind(err.to_string()))?,
    );
    let (stop, task) = (core.shutdown.token(), running.clone());
    core.shutdown.spawn(async move { task.run(stop).await });
    Ok(running)
}
