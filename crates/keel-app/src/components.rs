//! The reference services: agent metadata (a batcher) and entries (a
//! write-behind queue or partitioned Redis Streams).

use std::sync::Arc;
use std::time::Duration;

use keel_batcher::{AgentMetadata, Batcher, BatcherConfig, DbMetadataSink, MetadataNotifier};
use keel_entries::{DEFAULT_ENQUEUE_TIMEOUT, Entries, EntriesConfig, EntryStores};

use crate::config::ConfigError;
use crate::core::Core;
use crate::{Role, StartError};

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
    let config = BatcherConfig { tasks: Some(core.shutdown.clone()), ..BatcherConfig::default() };
    let batcher = Batcher::start_with("agent_metadata", config, sink.clone(), Some(Arc::new(notifier)))
        .map_err(|err| StartError::Config(ConfigError::Invalid { key: "batcher", reason: err.to_string() }))?;
    batcher.instrument(&core.telemetry);
    Ok(AgentMetadata::new(batcher, sink, &core.bus, &channel, &core.shutdown).await?)
}

/// The entries service: with Redis, writes go to Redis Streams, one per
/// partition (`api` produces, `worker` runs one consumer per partition and
/// persists); without, to an in-process write-behind queue drained by
/// `Services::close`.
pub(crate) async fn start_entries(core: &Core) -> Result<Entries, StartError> {
    let timeout = core.args.enqueue_timeout.or(core.file.write_behind.enqueue_timeout);
    let config = EntriesConfig {
        enqueue_timeout: timeout.map_or(DEFAULT_ENQUEUE_TIMEOUT, Duration::from),
        partitions: core.args.entries_partitions.map(usize::from),
        ack_replicas: core.args.ack_replicas,
        consume: core.role == Role::Worker,
        ..EntriesConfig::new(&core.args.namespace, &core.instance_id)
    };
    let stores = EntryStores::new(core.database.clone(), core.cache.clone())
        .with_redis(core.redis.clone())
        .with_local_log(core.local_log.clone());
    Entries::start(config, stores, &core.shutdown, &core.telemetry)
        .await
        .map_err(|err| StartError::WriteBehind(err.to_string()))
}
