//! Start-up shared by the binaries: configuration, logging, storage.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use keel_core::Shutdown;
use keel_health_status::{CheckKind, ComponentSpec, Health, HealthOptions, Mandatory, Mode, Report, SharedCheck};
use keel_settings_sync::{
    DbSettingsStore, MonitoringSettings, Settings, SettingsConfig, SettingsDeps, SettingsError, SettingsRegistry,
};
use keel_store::{Bus, Cache, Database, DbConfig, RedisConfig, RedisStore, StoreError};
use keel_telemetry::{LogFormat, LogHandle, Telemetry};

use crate::cli::{CommonArgs, ConfigError, EXIT_CONFIG, EXIT_SOFTWARE, EXIT_UNAVAILABLE, FileConfig};
use crate::entries::DEFAULT_ENQUEUE_TIMEOUT;
use crate::startup::Startup;
use crate::{
    AdminToken, AgentMetadata, ConnectionLimits, DrainConfig, Entries, EntrySink, MiddlewareConfig, MonitoringService,
};
use keel_batcher::{Batcher, BatcherConfig, DbMetadataSink, MetadataNotifier};
use keel_monitoring::{
    Capture, CaptureConfig, Collector, HttpStats, LogStore, MemoryLogs, Records, Redactor, RedisLogs, RedisStats,
    StatsStore,
};
use keel_write_behind::{
    DbDeadLetters, DbEntries, DurableConfig, DurableConsumer, DurableProducer, WriteBehind, WriteBehindConfig,
};

/// Embedded (one process, SQLite, in-process cache) or cluster (PostgreSQL
/// and/or Redis shared by replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// No `DATABASE_URL` and no `REDIS_URL`.
    Embedded,
    /// At least one of them is set.
    Cluster,
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunMode::Embedded => "embedded",
            RunMode::Cluster => "cluster",
        })
    }
}

/// What a process is for: it decides what the process starts and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The public API (and, embedded, the worker's duties in-process).
    Api,
    /// The durable consumers, settings follower, stats collector; serves only
    /// `/livez`, `/readyz`, `/status` and `/metrics`.
    Worker,
}

impl Role {
    /// `worker` is the worker; anything else serves the API.
    pub fn of(process: &str) -> Self {
        if process == "worker" { Role::Worker } else { Role::Api }
    }
}

/// Why start-up failed; each maps to a distinct exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A required service is unreachable (exit 69).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Logging could not be set up (exit 70).
    #[error(transparent)]
    Logging(#[from] keel_telemetry::LoggingError),
    /// A store stayed unreachable for the whole `--startup-timeout` (exit 69).
    #[error("{what} unreachable for {waited:?} (--startup-timeout): {reason}")]
    Unavailable {
        /// What was waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
        /// The last error.
        reason: String,
    },
    /// SIGINT/SIGTERM arrived while waiting for the stores (exit 0).
    #[error("stopped before the stores were reachable")]
    Stopped,
    /// Telemetry could not be set up (exit 70).
    #[error(transparent)]
    Telemetry(#[from] keel_telemetry::TelemetryError),
    /// The write-behind queue could not start (exit 69).
    #[error("cannot start the entries queue: {0}")]
    WriteBehind(String),
    /// A settings document could not be opened (exit 69).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// An operating-system facility (signal handlers, a thread) could not be
    /// set up (exit 70).
    #[error("cannot {what}: {source}")]
    Os {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl StartError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            StartError::Stopped => 0,
            StartError::Config(_) => EXIT_CONFIG,
            StartError::Store(StoreError::InvalidUrl { .. }) => EXIT_CONFIG,
            StartError::Store(_)
            | StartError::Unavailable { .. }
            | StartError::Settings(_)
            | StartError::WriteBehind(_) => EXIT_UNAVAILABLE,
            StartError::Logging(_) | StartError::Telemetry(_) | StartError::Os { .. } => EXIT_SOFTWARE,
        })
    }
}

/// Everything a binary composes its routers and tasks from.
#[derive(Clone)]
pub struct Services {
    /// The binary's name (`api`, `worker`).
    pub process: &'static str,
    /// This process's identifier.
    pub instance_id: String,
    /// Embedded or cluster.
    pub mode: RunMode,
    /// The parsed `--config` file (defaults when absent).
    pub file: FileConfig,
    /// Metrics.
    pub telemetry: Telemetry,
    /// Changes the running log filter.
    pub log: LogHandle,
    /// The relational database.
    pub database: Database,
    /// Redis, in cluster mode with `REDIS_URL`.
    pub redis: Option<RedisStore>,
    /// The cache (Redis or in-process).
    pub cache: Cache,
    /// The bus (Redis, PostgreSQL or in-process).
    pub bus: Bus,
    /// Shutdown coordination.
    pub shutdown: Shutdown,
    /// The admin bearer token, when configured. Never logged.
    pub admin_token: Option<AdminToken>,
    /// Health of this process: storage checks, checks from `[health]`.
    pub health: Health,
    /// Every settings document this process serves.
    pub settings: SettingsRegistry,
    /// The built-in `monitoring` document (capture toggle, live log level).
    pub monitoring: Settings<MonitoringSettings>,
    /// What this process is for.
    pub role: Role,
    /// Shutdown timing: the drain delay and the one budget.
    drain: DrainConfig,
    /// The agent-metadata service (batched writes, watches); the api's only.
    pub metadata: Option<AgentMetadata>,
    /// The entries service (write-behind).
    pub entries: Entries,
    /// Operator log capture, switched by `monitoring.enable_monitoring`.
    pub capture: Capture,
    /// Per-route HTTP figures for the stats documents.
    pub http_stats: HttpStats,
    /// The monitoring endpoints' logs, stats and event stream.
    pub operators: MonitoringService,
    /// The OTLP span exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[cfg(feature = "otlp")]
    pub trace_export: Option<std::sync::Arc<keel_telemetry::TraceExport>>,
}

/// What [`Services::prepare`] sets up before anything is reached over the
/// network: configuration, logging, metrics, and the (unconnected) stores.
pub struct Prepared {
    process: &'static str,
    args: CommonArgs,
    file: FileConfig,
    instance_id: String,
    capture: Capture,
    captured: Records,
    log: LogHandle,
    telemetry: Telemetry,
    database: Database,
    redis: Option<RedisStore>,
    mode: RunMode,
    #[cfg(feature = "otlp")]
    trace_export: Option<std::sync::Arc<keel_telemetry::TraceExport>>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared").field("process", &self.process).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Prepared {
    /// Shutdown timing from the `[http]` section.
    pub fn drain_config(&self) -> DrainConfig {
        drain_config(&self.file, &self.args)
    }

    /// Per-connection limits from `--max-connections` and `[http]`, with
    /// refused connections counted.
    pub fn connection_limits(&self) -> ConnectionLimits {
        let defaults = ConnectionLimits::default();
        let http = &self.file.http;
        ConnectionLimits {
            header_read_timeout: http.header_read_timeout.map_or(defaults.header_read_timeout, Duration::from),
            keep_alive_idle: http.keep_alive_idle.map_or(defaults.keep_alive_idle, Duration::from),
            max_connections: self.args.max_connections as usize,
            refused: Some(
                self.telemetry
                    .meter("keel-http")
                    .u64_counter(keel_telemetry::names::HTTP_CONNECTIONS_REFUSED)
                    .with_description("Connections closed at once for being over --max-connections")
                    .build(),
            ),
        }
    }
}

impl Services {
    /// Reads configuration, sets up logging and metrics, connects storage
    /// (waiting for it up to `--startup-timeout`) and runs migrations
    /// (unless `--no-migrate`).
    pub async fn start(process: &'static str, args: &CommonArgs) -> Result<Self, StartError> {
        let prepared = Self::prepare(process, args)?;
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals().map_err(|source| StartError::Os { what: "install signal handlers", source })?;
        Self::connect(prepared, shutdown, &Startup::default()).await
    }

    /// Everything that needs no network: configuration (a malformed URL is
    /// an error here, before anything is created on disk), logging, metrics.
    pub fn prepare(process: &'static str, args: &CommonArgs) -> Result<Prepared, StartError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let instance_id = args.instance_id.clone().unwrap_or_else(keel_core::default_instance_id);
        let database_url = non_empty(args.database_url.as_deref());
        let redis_url = non_empty(args.redis_url.as_deref());
        // Capture starts before anything logs, so start-up lines are kept too;
        // the settings document switches it once it is loaded.
        let redactor = Redactor::new(
            args.admin_token
                .iter()
                .cloned()
                .chain([database_url, redis_url].into_iter().flatten().filter_map(Redactor::url_password)),
        );
        let capture_config = CaptureConfig {
            buffer: file.monitoring.buffer.unwrap_or(10_000),
            ..CaptureConfig::new(process, instance_id.clone())
        };
        let (capture, captured) = Capture::new(capture_config, redactor);
        let format = args.log_format.unwrap_or_else(LogFormat::detect);
        #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
        let mut layers: Vec<keel_telemetry::ExtraLayer> = vec![Box::new(capture.layer())];
        #[cfg(feature = "otlp")]
        let trace_export = match keel_telemetry::otlp_layer(process)? {
            Some((layer, export)) => {
                layers.push(layer);
                Some(std::sync::Arc::new(export))
            }
            None => None,
        };
        if let Some(token) = args.admin_token.as_deref()
            && !token.is_empty()
            && token.trim() != token
        {
            // A presented token is trimmed by HTTP header parsing: this one
            // could never match.
            return Err(ConfigError::Invalid {
                key: "--admin-token",
                reason: "has leading or trailing whitespace (KEEL_ADMIN_TOKEN)".into(),
            }
            .into());
        }
        keel_telemetry::check_filter(&args.log_level)
            .map_err(|err| ConfigError::Invalid { key: "--log-level", reason: err.to_string() })?;
        let log = keel_telemetry::init_logging_with(format, &args.log_level, layers)?;
        let telemetry = Telemetry::new(process)?;
        let mode = if database_url.is_none() && redis_url.is_none() { RunMode::Embedded } else { RunMode::Cluster };
        // Redis first: its URL is checked before the embedded database
        // creates its directory.
        let redis = redis_url.map(|url| RedisStore::open(&RedisConfig::new(url), &telemetry)).transpose()?;
        let database = Database::open(
            &DbConfig { url: database_url.map(str::to_owned), data_dir: args.data_dir.clone(), ..DbConfig::default() },
            &telemetry,
        )?;
        Ok(Prepared {
            process,
            args: args.clone(),
            file,
            instance_id,
            capture,
            captured,
            log,
            telemetry,
            database,
            redis,
            mode,
            #[cfg(feature = "otlp")]
            trace_export,
        })
    }

    /// Waits for the stores (reporting what is missing to `startup`, up to
    /// `--startup-timeout`; `shutdown` ends the wait), runs migrations and
    /// starts every service.
    pub async fn connect(prepared: Prepared, shutdown: Shutdown, startup: &Startup) -> Result<Self, StartError> {
        let Prepared {
            process, args, file, instance_id, capture, captured, log, telemetry, database, redis, mode, ..
        } = prepared;
        #[cfg(feature = "otlp")]
        let trace_export = prepared.trace_export;
        let args = &args;
        let waiter = startup.waiter(args.startup_timeout.get(), &shutdown);
        let db_name = database.backend().as_str();
        waiter.until(db_name, || database.ping()).await?;
        if args.no_migrate {
            tracing::info!("migrations skipped (--no-migrate)");
        } else {
            let applied = waiter.until("migrations", || database.run_migrations()).await?;
            tracing::info!(applied, backend = db_name, "migrations up to date");
        }
        if let Some(redis) = &redis {
            waiter.until("redis", || redis.ping()).await?;
        }
        let cache = match &redis {
            Some(redis) => Cache::redis(redis.clone()),
            None => Cache::memory_bounded(args.cache_max_bytes),
        };
        let bus = match (&redis, database.backend()) {
            (Some(redis), _) => waiter.until("redis", || Bus::redis(redis, &telemetry)).await?,
            (None, keel_store::Backend::Postgres) => {
                waiter.until(db_name, || Bus::postgres(&database, &telemetry)).await?
            }
            (None, keel_store::Backend::Sqlite) => Bus::memory(&telemetry),
        };
        let admin_token = args.admin_token.as_deref().and_then(AdminToken::new);
        if admin_token.is_none() {
            tracing::warn!("admin endpoints are disabled (403); set KEEL_ADMIN_TOKEN or --admin-token to enable them");
        }
        tracing::info!(
            %mode,
            instance = %instance_id,
            database = database.backend().as_str(),
            cache = cache.backend(),
            bus = bus.backend().as_str(),
            "{process} starting in {mode} mode"
        );
        let settings_deps = SettingsDeps::new(
            std::sync::Arc::new(DbSettingsStore::new(database.clone())),
            cache.clone(),
            bus.clone(),
            telemetry.clone(),
        );
        let monitoring: Settings<MonitoringSettings> = Settings::open_validated(
            MonitoringSettings::NAME,
            settings_deps,
            SettingsConfig { namespace: args.namespace.clone(), ..SettingsConfig::default() },
            |m: &MonitoringSettings| keel_telemetry::check_filter(&m.log_level).map_err(|err| err.to_string()),
        )
        .await?;
        follow_monitoring_settings(&monitoring, &log, &capture, &shutdown);
        let mut settings = SettingsRegistry::new();
        settings.register(monitoring.clone());
        let role = Role::of(process);
        let metadata = match role {
            Role::Api => Some(
                start_metadata(&args.namespace, &telemetry, &database, redis.is_some(), &bus, shutdown.token()).await?,
            ),
            Role::Worker => None,
        };
        let entries = start_entries(
            role,
            &args.namespace,
            &instance_id,
            &telemetry,
            &database,
            redis.as_ref(),
            &cache,
            &shutdown,
            args.enqueue_timeout.or(file.write_behind.enqueue_timeout).map_or(DEFAULT_ENQUEUE_TIMEOUT, Duration::from),
        )
        .await?;
        let http_stats = HttpStats::new();
        let mut collector = Collector::new(process, instance_id.clone())
            .with_http(http_stats.clone())
            .with_section("capture", capture_section(capture.clone()))
            .with_section("write_behind", write_behind_section(&entries));
        if let Some(metadata) = &metadata {
            collector = collector.with_section("batcher", batcher_section(metadata.batcher().clone()));
        }
        let operators = start_monitoring(
            &MonitoringParts {
                namespace: &args.namespace,
                file: &file,
                telemetry: &telemetry,
                redis: redis.as_ref(),
                bus: &bus,
                admin_token: admin_token.clone(),
                shutdown: &shutdown,
            },
            captured,
            collector,
        );
        let health =
            start_health(&file, &telemetry, &database, redis.as_ref(), &settings, metadata.as_ref(), &entries)?;
        await_first_checks(&health, &file).await;
        let drain = drain_config(&file, args);
        Ok(Self {
            drain,
            process,
            instance_id,
            mode,
            file,
            telemetry,
            log,
            database,
            redis,
            cache,
            bus,
            shutdown,
            admin_token,
            health,
            settings,
            monitoring,
            role,
            metadata,
            entries,
            capture,
            http_stats,
            operators,
            #[cfg(feature = "otlp")]
            trace_export,
        })
    }

    /// Flushes what the process still holds (the metadata batcher) once the
    /// server has stopped accepting requests.
    pub async fn close(&self) {
        // What the server left of the one shutdown budget is all the
        // flushes get.
        let budget = self.drain_config().grace;
        if let EntrySink::Memory(queue) = self.entries.sink() {
            queue.shutdown_within(self.shutdown.remaining(budget)).await;
            let m = queue.metrics();
            tracing::info!(persisted = m.persisted, failed = m.failed, "entries queue drained");
        }
        if let Some(metadata) = &self.metadata {
            metadata.batcher().shutdown_within(self.shutdown.remaining(budget)).await;
            let stats = metadata.batcher().stats();
            tracing::info!(flushed = stats.flushed, dropped = stats.dropped(), "metadata batcher flushed");
        }
        #[cfg(feature = "otlp")]
        if let Some(export) = self.trace_export.clone() {
            // Blocks until the exporter thread has sent what it holds.
            let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
        }
    }

    /// Request limits from the `[http]` section.
    pub fn middleware_config(&self) -> MiddlewareConfig {
        let defaults = MiddlewareConfig::default();
        MiddlewareConfig {
            request_timeout: self.file.http.request_timeout.map_or(defaults.request_timeout, Duration::from),
            body_limit: self.file.http.body_limit.unwrap_or(defaults.body_limit),
        }
    }

    /// Shutdown timing from the `[http]` section.
    pub fn drain_config(&self) -> DrainConfig {
        self.drain
    }
}

fn drain_config(file: &FileConfig, args: &CommonArgs) -> DrainConfig {
    let defaults = DrainConfig::default();
    DrainConfig {
        drain_delay: file.http.drain_delay.map_or(defaults.drain_delay, Duration::from),
        grace: args.shutdown_grace.or(file.http.shutdown_grace).map_or(defaults.grace, Duration::from),
    }
}

/// The group that storage components join unless the configuration puts them
/// elsewhere.
pub const STORAGE_GROUP: &str = "storage";

fn invalid_health(reason: impl std::fmt::Display) -> StartError {
    StartError::Config(ConfigError::Invalid { key: "health", reason: reason.to_string() })
}

fn database_check(database: &Database) -> SharedCheck {
    let database = database.clone();
    std::sync::Arc::new(move || {
        let database = database.clone();
        async move { database.ping().await.into() }
    })
}

fn redis_check(redis: &RedisStore) -> SharedCheck {
    let redis = redis.clone();
    std::sync::Arc::new(move || {
        let redis = redis.clone();
        async move { redis.ping().await.into() }
    })
}

/// Applies the `monitoring` document now (if it was ever written) and on
/// every change, in this process: `log_level` replaces the log filter and
/// `enable_monitoring` switches the operator log capture.
fn follow_monitoring_settings(
    monitoring: &Settings<MonitoringSettings>,
    log: &LogHandle,
    capture: &Capture,
    shutdown: &Shutdown,
) {
    let apply = |log: &LogHandle, capture: &Capture, document: &MonitoringSettings| {
        match log.set_filter(&document.log_level) {
            Ok(()) => tracing::info!(log_level = document.log_level, "log level applied from the monitoring settings"),
            Err(err) => tracing::warn!(%err, "ignoring the monitoring settings' log level"),
        }
        if capture.is_enabled() != document.enable_monitoring {
            capture.set_enabled(document.enable_monitoring);
            let state = if document.enable_monitoring { "enabled" } else { "disabled" };
            tracing::info!(enable_monitoring = document.enable_monitoring, "monitoring log capture {state}");
        }
    };
    if monitoring.version() > 0 {
        apply(log, capture, &monitoring.get());
    }
    let mut changes = monitoring.subscribe();
    let (log, capture, token) = (log.clone(), capture.clone(), shutdown.token());
    shutdown.spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let document = changes.borrow_and_update().clone();
                    apply(&log, &capture, &document);
                }
                () = token.cancelled() => return,
            }
        }
    });
}

/// What [`start_monitoring`] builds on.
struct MonitoringParts<'a> {
    namespace: &'a str,
    file: &'a FileConfig,
    telemetry: &'a Telemetry,
    redis: Option<&'a RedisStore>,
    bus: &'a Bus,
    admin_token: Option<AdminToken>,
    shutdown: &'a Shutdown,
}

/// Log and stats stores (Redis in cluster mode, else this process), the
/// capture drain, and the stats collector; both stop with the process.
fn start_monitoring(parts: &MonitoringParts<'_>, captured: Records, collector: Collector) -> MonitoringService {
    let MonitoringParts { namespace, file, telemetry, redis, bus, shutdown, .. } = *parts;
    let section = &file.monitoring;
    let cap = section.log_cap.unwrap_or(1000);
    // Without Redis every process keeps its own logs and stats, so their
    // events stay in-process too (a PostgreSQL NOTIFY could not carry them).
    let (logs, stats, events) = match redis {
        Some(redis) => (
            LogStore::Redis(RedisLogs::new(redis.clone(), namespace, cap)),
            StatsStore::Redis(RedisStats::new(redis.clone(), namespace)),
            bus.clone(),
        ),
        None => {
            (LogStore::Memory(std::sync::Arc::new(MemoryLogs::new(cap))), StatsStore::memory(), Bus::memory(telemetry))
        }
    };
    let channel = MonitoringService::channel(namespace);
    let admin = parts.admin_token.clone();
    let service = MonitoringService::new(logs, stats.clone(), events, channel, admin, shutdown.token());
    let stop = shutdown.token().cancelled_owned();
    shutdown.spawn(Capture::drain_until(captured, service.log_sink(), 500, Duration::from_millis(50), stop));
    let interval = section.stats_interval.map_or(Duration::from_secs(5), Duration::from);
    let announcer = service.clone();
    let stop = shutdown.token().cancelled_owned();
    let (process, instance) = collector.identity();
    tracing::info!(
        process,
        instance,
        stats_interval = ?interval,
        store = if redis.is_some() { "redis" } else { "memory" },
        "monitoring started"
    );
    shutdown.spawn(collector.run(stats, interval, move |document| announcer.announce_stats(document), stop));
    service
}

/// The capture switch and counters for the stats document: records kept
/// and dropped because the buffer was full.
fn capture_section(capture: Capture) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
    move || {
        serde_json::json!({
            "enabled": capture.is_enabled(), "captured": capture.captured(), "dropped": capture.dropped(),
        })
    }
}

/// The batcher's counters for the stats document.
fn batcher_section<K, V>(batcher: Batcher<K, V>) -> impl Fn() -> serde_json::Value + Send + Sync + 'static
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    move || {
        let s = batcher.stats();
        serde_json::json!({
            "offered": s.offered, "flushed": s.flushed, "deduplicated": s.deduplicated, "dropped": s.dropped(),
            "pending": s.pending, "batches": s.batches,
            "queue_depth": batcher.queue_depth(), "queue_capacity": batcher.queue_capacity(),
        })
    }
}

/// The write-behind figures of whoever persists in this process: the
/// in-process queue, or the stream consumer (worker); `null` for a process
/// that only produces to the stream.
fn write_behind_section(entries: &Entries) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
    let (sink, consumer) = (entries.sink().clone(), entries.consumer().cloned());
    move || {
        let m = match (&sink, &consumer) {
            (EntrySink::Memory(queue), _) => queue.metrics(),
            (EntrySink::Durable(_), Some(consumer)) => consumer.metrics(),
            (EntrySink::Durable(_), None) => return serde_json::Value::Null,
        };
        serde_json::json!({
            "enqueued": m.enqueued, "persisted": m.persisted, "failed": m.failed, "retries": m.retries,
            "batches": m.batches, "queue_depth": m.queue_depth, "in_flight": m.in_flight,
            "oldest_age_ms": u64::try_from(m.oldest_age.as_millis()).unwrap_or(u64::MAX),
            "failing_for_s": m.failing_for.as_secs(),
        })
    }
}

/// WARN while any settings document cannot be confirmed against its store.
fn settings_check(registry: &SettingsRegistry) -> SharedCheck {
    let registry = registry.clone();
    std::sync::Arc::new(move || {
        let stale: Vec<String> = registry
            .iter()
            .filter_map(|doc| {
                let state = doc.sync_state();
                state.last_error.map(|err| format!("{} stale for {}s ({err})", doc.name(), state.staleness.as_secs()))
            })
            .collect();
        std::future::ready(if stale.is_empty() { Report::ok() } else { Report::warn(stale.join("; ")) })
    })
}

/// Built-in components confirm a recovery (and the start-up climb from KO)
/// quickly rather than a whole interval later.
fn builtin_spec(name: String) -> ComponentSpec {
    ComponentSpec { rise_interval: Some(Duration::from_millis(500)), ..ComponentSpec::new(name) }
}

/// The agent-metadata batcher writing to the database, announcing changes on
/// Redis (cluster), PostgreSQL NOTIFY (no Redis) or in-process (embedded),
/// flushed by [`Services::close`] within the shutdown grace period.
async fn start_metadata(
    namespace: &str,
    telemetry: &Telemetry,
    database: &Database,
    has_redis: bool,
    bus: &Bus,
    stop: tokio_util::sync::CancellationToken,
) -> Result<AgentMetadata, StartError> {
    let channel = MetadataNotifier::channel(namespace);
    let notifier = if !has_redis && database.backend() == keel_store::Backend::Postgres {
        MetadataNotifier::postgres(database.clone(), channel.clone())
    } else {
        MetadataNotifier::bus(bus.clone(), channel.clone())
    };
    // The final flush gets what is left of the shutdown budget (Services::close).
    let config = BatcherConfig::default();
    let sink = std::sync::Arc::new(DbMetadataSink::new(database.clone()));
    let batcher = Batcher::start_with(
        "agent_metadata",
        config,
        sink.clone(),
        Some(std::sync::Arc::new(notifier)),
        Some(telemetry),
    )
    .map_err(|err| StartError::Config(ConfigError::Invalid { key: "batcher", reason: err.to_string() }))?;
    Ok(AgentMetadata::new(batcher, sink, bus, &channel, stop).await?)
}

/// The entries service: with Redis, writes go to a Redis Stream (`api`
/// produces, `worker` consumes and persists); without, to an in-process
/// write-behind queue drained by [`Services::close`].
#[allow(clippy::too_many_arguments)]
async fn start_entries(
    role: Role,
    namespace: &str,
    instance_id: &str,
    telemetry: &Telemetry,
    database: &Database,
    redis: Option<&RedisStore>,
    cache: &Cache,
    shutdown: &Shutdown,
    enqueue_timeout: Duration,
) -> Result<Entries, StartError> {
    let store = DbEntries::new(database.clone());
    let dead_letters = std::sync::Arc::new(DbDeadLetters::new(database.clone(), "entries"));
    let mut consumer = None;
    let sink = match redis {
        Some(redis) => {
            let config = DurableConfig::new(format!("{namespace}:entries:stream"), "keel-entries", instance_id);
            if role == Role::Worker {
                let running = std::sync::Arc::new(
                    DurableConsumer::new(
                        redis.clone(),
                        config.clone(),
                        std::sync::Arc::new(store.clone()),
                        dead_letters,
                    )
                    .await
                    .map_err(|err| StartError::WriteBehind(err.to_string()))?,
                );
                running.instrument(telemetry, "entries");
                let (stop, task) = (shutdown.token(), running.clone());
                shutdown.spawn(async move { task.run(stop).await });
                tracing::info!(consumer = instance_id, "consuming the entries stream");
                consumer = Some(running);
            }
            EntrySink::Durable(DurableProducer::new(redis.clone(), config))
        }
        None => {
            // Bounded by bytes too: 10 000 writes of 64 KiB would be 640 MiB.
            let config = WriteBehindConfig { max_bytes: Some(ENTRIES_QUEUE_BYTES), ..WriteBehindConfig::default() };
            let queue = WriteBehind::start(config, std::sync::Arc::new(store.clone()), dead_letters)
                .map_err(|err| StartError::WriteBehind(err.to_string()))?;
            queue.instrument(telemetry, "entries");
            EntrySink::Memory(queue)
        }
    };
    let entries = Entries::new(cache.clone(), namespace, sink, store).with_enqueue_timeout(enqueue_timeout);
    entries.instrument(telemetry);
    Ok(match consumer {
        Some(consumer) => entries.with_consumer(consumer),
        None => entries,
    })
}

/// What the in-process entries queue may hold: 16 MiB.
const ENTRIES_QUEUE_BYTES: u64 = 16 << 20;

/// In-process queue: KO when its repository has failed for `ko_after`, WARN
/// above 80 % of capacity or after new dead letters in the last minute.
/// Redis Stream: WARN when the backlog is above 80 % of capacity.
fn entries_check(entries: &Entries, ko_after: Duration) -> SharedCheck {
    let (sink, consumer) = (entries.sink().clone(), entries.consumer().cloned());
    let last = std::sync::Arc::new(std::sync::Mutex::new((0u64, None::<tokio::time::Instant>)));
    std::sync::Arc::new(move || {
        let (sink, consumer, last) = (sink.clone(), consumer.clone(), last.clone());
        async move {
            // The figures of whoever persists here: the in-process queue, or
            // the stream consumer (worker); in cluster mode the stream backlog
            // stands in for the queue depth.
            let (persisting, held, capacity) = match &sink {
                EntrySink::Memory(queue) => {
                    let m = queue.metrics();
                    (Some(m), m.queue_depth + m.in_flight, m.capacity)
                }
                EntrySink::Durable(producer) => match producer.backlog().await {
                    Ok(backlog) => (consumer.map(|c| c.metrics()), backlog, 10_000),
                    Err(err) => return Report::fail(format!("cannot read the stream backlog: {err}")),
                },
            };
            let now = tokio::time::Instant::now();
            let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(m) = persisting {
                if m.failing_for >= ko_after {
                    return Report::fail(format!("repository failing for {}s", m.failing_for.as_secs()));
                }
                if m.failed > last.0 {
                    *last = (m.failed, Some(now));
                }
            }
            if held * 5 > capacity * 4 {
                Report::warn(format!("backlog {held}/{capacity} is more than 80% of capacity"))
            } else if last.1.is_some_and(|at| now.duration_since(at) < Duration::from_secs(60)) {
                Report::warn(format!("{} items dead-lettered, some in the last minute", last.0))
            } else {
                Report::ok()
            }
        }
    })
}

/// WARN while the batcher dropped items in the last minute or its channel is
/// more than 80 % full.
fn batcher_check<K, V>(batcher: Batcher<K, V>) -> SharedCheck
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let last = std::sync::Arc::new(std::sync::Mutex::new((0u64, None::<tokio::time::Instant>)));
    std::sync::Arc::new(move || {
        let stats = batcher.stats();
        let now = tokio::time::Instant::now();
        let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if stats.dropped() > last.0 {
            *last = (stats.dropped(), Some(now));
        }
        let recent_drops = last.1.is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
        let (depth, capacity) = (batcher.queue_depth(), batcher.queue_capacity());
        std::future::ready(if recent_drops {
            Report::warn(format!("{} items dropped in total, some in the last minute", stats.dropped()))
        } else if depth * 5 > capacity * 4 {
            Report::warn(format!("queue {depth}/{capacity} is more than 80% full"))
        } else {
            Report::ok()
        })
    })
}

/// Builds the health registry: the `[health]` groups plus a `storage` (Must)
/// group for the database and Redis, their checks, and every configured
/// check. Monitors run isolated so a stuck check still fails on time.
fn start_health(
    file: &FileConfig,
    telemetry: &Telemetry,
    database: &Database,
    redis: Option<&RedisStore>,
    settings: &SettingsRegistry,
    metadata: Option<&AgentMetadata>,
    entries: &Entries,
) -> Result<Health, StartError> {
    let mut groups = file.health.validate().map_err(invalid_health)?;
    let configured = |name: &str| file.health.checks.iter().any(|c| c.name == name);
    let mut builtins: Vec<(String, SharedCheck)> = Vec::new();
    let db_name = database.backend().as_str();
    if !configured(db_name) {
        builtins.push((db_name.to_owned(), database_check(database)));
    }
    if let Some(redis) = redis.filter(|_| !configured("redis")) {
        builtins.push(("redis".to_owned(), redis_check(redis)));
    }
    let unclaimed: Vec<String> =
        builtins.iter().map(|(n, _)| n.clone()).filter(|n| groups.group_of(n).is_none()).collect();
    if groups.group(STORAGE_GROUP).is_none() && !unclaimed.is_empty() {
        groups = groups.with(Mandatory::new(STORAGE_GROUP, Mode::Must, unclaimed)).map_err(invalid_health)?;
    }
    let options = HealthOptions { default_mode: file.health.default_mode, isolated: true, ..HealthOptions::default() };
    let health = Health::with_options(groups, options)
        .map_err(|source| StartError::Os { what: "start the health watchdog", source })?;
    health.instrument(telemetry);
    if !configured("settings") {
        // Not storage: a stale settings copy degrades (WARN), it does not stop service.
        builtins.push(("settings".to_owned(), settings_check(settings)));
    }
    if let Some(metadata) = metadata.filter(|_| !configured("batcher")) {
        builtins.push(("batcher".to_owned(), batcher_check(metadata.batcher().clone())));
    }
    if !configured("entries") {
        let ko_after = file.write_behind.ko_after.map_or(Duration::from_secs(60), Duration::from);
        builtins.push(("entries".to_owned(), entries_check(entries, ko_after)));
    }
    for (name, check) in builtins {
        health.register_shared(builtin_spec(name), check).map_err(invalid_health)?;
    }
    for config in &file.health.checks {
        let check = match config.kind {
            CheckKind::Tcp | CheckKind::Http => {
                keel_health_status::checks::from_config(config).map_err(invalid_health)?
            }
            CheckKind::Postgres if database.backend() == keel_store::Backend::Postgres => {
                Some(database_check(database))
            }
            CheckKind::Postgres => None,
            CheckKind::Redis => redis.map(redis_check),
        };
        let check = check.ok_or_else(|| {
            invalid_health(format!("checks.{}: a {:?} check needs that service configured", config.name, config.kind))
        })?;
        health.register_shared(config.spec(), check).map_err(invalid_health)?;
    }
    Ok(health)
}

/// Waits (at most the longest check timeout, plus slack) for every first
/// check, so readiness is truthful from the first request.
async fn await_first_checks(health: &Health, file: &FileConfig) {
    let longest = file.health.checks.iter().map(|c| c.timeout.get()).chain([ComponentSpec::new("").timeout]).max();
    let limit = longest.unwrap_or_default() + Duration::from_millis(500);
    if tokio::time::timeout(limit, health.first_checks()).await.is_err() {
        tracing::warn!("health checks still pending after {limit:?}; starting anyway");
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use keel_batcher::{BatchSink, Batcher, BatcherConfig, SinkFuture, Stamped};
    use keel_core::Status;

    #[derive(Clone)]
    struct Item;

    impl Stamped for Item {
        fn stamp(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH
        }
    }

    struct Stalled;

    impl BatchSink<u32, Item> for Stalled {
        fn write<'a>(&'a self, _batch: &'a [(u32, Item)]) -> SinkFuture<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batcher_health_warns_on_a_full_queue_and_on_recent_drops() {
        let config = BatcherConfig { max_batch_size: 2, channel_multiplier: 5, ..BatcherConfig::default() };
        let batcher: Batcher<u32, Item> = Batcher::start("t", config, Arc::new(Stalled)).unwrap();
        let check = super::batcher_check(batcher.clone());
        assert_eq!(check.check().await.status, Status::Ok);

        // Two keys reach the stalled sink; then 9 of 10 channel slots fill.
        batcher.add(0, Item).unwrap();
        batcher.add(1, Item).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        for key in 2..11 {
            batcher.add(key, Item).unwrap();
        }
        let report = check.check().await;
        assert_eq!(report.status, Status::Warn);
        assert!(report.message.contains("more than 80% full"), "{}", report.message);

        batcher.add(11, Item).unwrap();
        assert!(batcher.add(12, Item).is_err(), "the channel is full");
        let report = check.check().await;
        assert!(report.message.contains("dropped"), "{}", report.message);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(check.check().await.message.contains("full"), "drops age out; the queue is still full");
    }

    struct Down;

    impl keel_write_behind::Repository<keel_write_behind::EntryWrite> for Down {
        fn upsert_many<'a>(&'a self, _items: &'a [keel_write_behind::EntryWrite]) -> keel_write_behind::RepoFuture<'a> {
            Box::pin(async { Err(keel_write_behind::RepoError::transient("database down")) })
        }
    }

    impl keel_write_behind::DeadLetters<keel_write_behind::EntryWrite> for Down {
        fn store<'a>(
            &'a self,
            _letters: &'a [keel_write_behind::DeadLetter<keel_write_behind::EntryWrite>],
        ) -> keel_write_behind::RepoFuture<'a> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_health_is_ko_after_the_repository_failed_for_ko_after() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
        let config = keel_store::DbConfig { data_dir: dir.path().into(), ..keel_store::DbConfig::default() };
        let db = keel_store::Database::connect(&config, &telemetry).await.unwrap();
        let queue_config = keel_write_behind::WriteBehindConfig { max_retries: 1, jitter: 0.0, ..Default::default() };
        let down = Arc::new(Down);
        let queue = keel_write_behind::WriteBehind::start(queue_config, down.clone(), down).unwrap();
        let entries = crate::Entries::new(
            keel_store::Cache::memory(),
            "t",
            crate::EntrySink::Memory(queue.clone()),
            keel_write_behind::DbEntries::new(db),
        );
        let check = super::entries_check(&entries, Duration::from_secs(30));
        assert_eq!(check.check().await.status, Status::Ok);

        let write = |n: i64| keel_write_behind::EntryWrite {
            key: "k".into(),
            value: serde_json::json!(n),
            version: n,
            updated_at_us: n,
            deleted: false,
        };
        queue.enqueue(write(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await; // flushed; the store is unreachable
        let report = check.check().await;
        assert_eq!(report.status, Status::Ok, "not KO before ko_after: {}", report.message);
        assert_eq!(queue.metrics().failed, 0, "an unreachable store dead-letters nothing");
        queue.enqueue(write(2)).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        let failing = queue.metrics().failing_for;
        assert!(failing >= Duration::from_secs(30), "{failing:?}");
        let report = check.check().await;
        assert_eq!(report.status, Status::Ko, "{}", report.message);
        assert!(report.message.starts_with("repository failing for"), "{}", report.message);
    }
}
