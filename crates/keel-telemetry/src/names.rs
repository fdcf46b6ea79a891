//! Every metric name Keel exports, as OpenTelemetry instrument names.
//!
//! The Prometheus exporter turns dots into underscores and appends the unit
//! (`_seconds`) and `_total` for counters, so
//! [`HTTP_SERVER_REQUEST_DURATION`] is scraped as
//! `http_server_request_duration_seconds`. Dashboards and alert rules use the
//! scraped form; `cargo xtask deploy-check` cross-checks them.

/// HTTP server request duration histogram (seconds), by route, method, status.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
/// HTTP requests currently being served, by method.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";
/// Handler panics turned into 500 responses.
pub const HTTP_SERVER_PANICS: &str = "http.server.panics";

/// Database operation duration histogram (seconds), by operation and table.
pub const DB_OPERATION_DURATION: &str = "db.client.operation.duration";
/// Connections in the pool, by state (`used` or `idle`).
pub const DB_CONNECTION_COUNT: &str = "db.client.connection.count";
/// The configured maximum size of the pool.
pub const DB_CONNECTION_MAX: &str = "db.client.connection.max";
/// Callers waiting for a pooled connection.
pub const DB_CONNECTION_PENDING: &str = "db.client.connection.pending_requests";

/// Redis command duration histogram (seconds), by command name (never keys).
pub const REDIS_COMMAND_DURATION: &str = "redis.client.command.duration";
/// Bus messages published, by backend.
pub const BUS_PUBLISHED: &str = "keel.bus.published";
/// Bus messages a slow subscriber missed, by backend.
pub const BUS_LAGGED: &str = "keel.bus.lagged";
/// Bus reconnections after the connection was lost, by backend.
pub const BUS_RECONNECTS: &str = "keel.bus.reconnects";

/// Seconds since the process started.
pub const PROCESS_UPTIME: &str = "process.uptime";
/// Resident memory of the process (bytes).
pub const PROCESS_MEMORY_USAGE: &str = "process.memory.usage";
/// CPU time used by the process (seconds).
pub const PROCESS_CPU_TIME: &str = "process.cpu.time";

/// Bucket bounds for HTTP durations, from the OpenTelemetry HTTP semantic
/// conventions.
pub const HTTP_DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// Bucket bounds for database and Redis call durations: these are usually
/// sub-millisecond on a healthy network, so the low end is finer.
pub const CLIENT_DURATION_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Health status per component: 2 OK, 1 WARN, 0 KO.
pub const HEALTH_STATUS: &str = "keel.health.status";
/// Health check duration histogram (seconds), by component.
pub const HEALTH_CHECK_DURATION: &str = "keel.health.check.duration";
/// Health status transitions, by component, from and to.
pub const HEALTH_TRANSITIONS: &str = "keel.health.transitions";

/// Settings reads, by document and source (`l1`, `redis`/`memory`, `db`).
pub const SETTINGS_READS: &str = "keel.settings.reads";
/// Settings loads from the database, by document.
pub const SETTINGS_DB_LOADS: &str = "keel.settings.db_loads";
/// Version-only database queries (`SELECT version`), by document.
pub const SETTINGS_VERSION_CHECKS: &str = "keel.settings.version_checks";
/// Settings invalidations published, by document.
pub const SETTINGS_INVALIDATIONS_SENT: &str = "keel.settings.invalidations.sent";
/// Settings invalidations received, by document.
pub const SETTINGS_INVALIDATIONS_RECEIVED: &str = "keel.settings.invalidations.received";
/// Settings sync errors, by document and stage (`cache`, `database`, `decode`, `publish`).
pub const SETTINGS_SYNC_ERRORS: &str = "keel.settings.sync_errors";
/// Settings version held, by document.
pub const SETTINGS_VERSION: &str = "keel.settings.version";
/// Seconds since the settings were last confirmed while refreshes fail, by document.
pub const SETTINGS_STALENESS: &str = "keel.settings.staleness";

/// Items per flushed batch (histogram), by batcher.
pub const BATCHER_BATCH_SIZE: &str = "keel.batcher.batch.size";
/// Batch size over capacity (histogram, 0..1), by batcher.
pub const BATCHER_BATCH_UTILIZATION: &str = "keel.batcher.batch.utilization";
/// Flush duration histogram (seconds), by batcher and reason.
pub const BATCHER_FLUSH_DURATION: &str = "keel.batcher.flush.duration";
/// Batches written, by batcher and reason (`capacity`, `interval`, `shutdown`, `retry`).
pub const BATCHER_BATCHES: &str = "keel.batcher.batches";
/// Items written, by batcher.
pub const BATCHER_FLUSHED: &str = "keel.batcher.flushed";
/// Items dropped, by batcher and reason (`full`, `attempts`, `shutdown`).
pub const BATCHER_DROPPED: &str = "keel.batcher.dropped";
/// Failed sink writes, by batcher.
pub const BATCHER_FLUSH_ERRORS: &str = "keel.batcher.flush.errors";
/// Failed change notifications, by batcher.
pub const BATCHER_PUBLISH_ERRORS: &str = "keel.batcher.publish.errors";
/// Items waiting in the channel, by batcher.
pub const BATCHER_QUEUE_DEPTH: &str = "keel.batcher.queue.depth";

/// Connections closed at once for being over `--max-connections`.
pub const HTTP_CONNECTIONS_REFUSED: &str = "keel.http.connections.refused";
/// Server-Sent Event streams open.
pub const HTTP_STREAMS_OPEN: &str = "keel.http.streams.open";
/// Server-Sent Event streams refused (503), by reason (`process`, `client`).
pub const HTTP_STREAMS_REFUSED: &str = "keel.http.streams.refused";
/// Entry writes answered 202 by this process.
pub const ENTRIES_ACKNOWLEDGED: &str = "keel.entries.acknowledged";
/// Items accepted by a write-behind queue, by queue.
pub const WRITE_BEHIND_ENQUEUED: &str = "keel.write_behind.enqueued";
/// Items persisted, by queue.
pub const WRITE_BEHIND_PERSISTED: &str = "keel.write_behind.persisted";
/// Items dead-lettered, by queue.
pub const WRITE_BEHIND_FAILED: &str = "keel.write_behind.failed";
/// Item re-attempts after a failed write, by queue.
pub const WRITE_BEHIND_RETRIES: &str = "keel.write_behind.retries";
/// Successful repository writes, by queue.
pub const WRITE_BEHIND_BATCHES: &str = "keel.write_behind.batches";
/// Items waiting, by queue.
pub const WRITE_BEHIND_QUEUE_DEPTH: &str = "keel.write_behind.queue.depth";
/// Items being written or waiting for a retry, by queue.
pub const WRITE_BEHIND_IN_FLIGHT: &str = "keel.write_behind.in_flight";
/// Age of the oldest waiting item (seconds), by queue.
pub const WRITE_BEHIND_OLDEST_AGE: &str = "keel.write_behind.oldest_age";
/// Bytes in the local write-ahead log's segments.
pub const LOCAL_LOG_BYTES: &str = "keel.local_log.bytes";
/// The local log's bound (`--local-log-max-bytes`).
pub const LOCAL_LOG_MAX_BYTES: &str = "keel.local_log.max_bytes";
/// Segment files of the local log.
pub const LOCAL_LOG_SEGMENTS: &str = "keel.local_log.segments";
/// Records appended to the local log and synced (each one a 202).
pub const LOCAL_LOG_APPENDS: &str = "keel.local_log.appends";
/// Group commits (one `fdatasync` each) of the local log.
pub const LOCAL_LOG_SYNCS: &str = "keel.local_log.syncs";
/// Local log appends that failed (ENOSPC, EIO): answered 503, never 202.
pub const LOCAL_LOG_APPEND_ERRORS: &str = "keel.local_log.append_errors";
/// Duration of one local log group commit (write + `fdatasync`), seconds.
pub const LOCAL_LOG_SYNC_DURATION: &str = "keel.local_log.sync.duration";
/// Records replayed from the local log at start.
pub const LOCAL_LOG_REPLAYED: &str = "keel.local_log.replayed_records";
/// Records of the local log that failed their CRC (or could not be
/// decoded), kept as files beside the log.
pub const LOCAL_LOG_CORRUPT: &str = "keel.local_log.corrupt_records";
