//! Start-up shared by the binaries: configuration, logging, storage, and
//! every service a role runs.

use std::fmt;
use std::time::Duration;

use keel_batcher::AgentMetadata;
use keel_core::Shutdown;
use keel_entries::Entries;
use keel_health_status::Health;
use keel_http::{AdminToken, ConnectionLimits, DrainConfig, MiddlewareConfig};
use keel_monitoring::{Capture, Collector, HttpStats, MonitoringHub, Records};
use keel_settings_sync::{
    DbSettingsStore, MonitoringSettings, Settings, SettingsConfig, SettingsDeps, SettingsRegistry,
};
use keel_store::{Bus, Cache, Database, DbConfig, RedisConfig, RedisStore};
use keel_telemetry::{LogHandle, Telemetry};

use crate::checks::{await_first_checks, start_health};
use crate::components::{start_entries, start_metadata};
use crate::config::{CommonArgs, FileConfig};
use crate::core::Core;
use crate::operators::{
    batcher_section, capture_section, follow_monitoring_settings, start_monitoring, write_behind_section,
};
use crate::prepare::{admin_token, drain_config, non_empty, open_local_log, start_logging, stream_gate};
use crate::startup::Startup;
use crate::{Role, RunMode, StartError};

/// Everything a process runs once its stores answer; routers and the final
/// flush are built from it.
#[derive(Clone)]
pub struct Services {
    pub(crate) core: Core,
    pub(crate) mode: RunMode,
    pub(crate) admin_token: Option<AdminToken>,
    pub(crate) health: Health,
    pub(crate) settings: SettingsRegistry,
    pub(crate) metadata: Option<AgentMetadata>,
    pub(crate) entries: Entries,
    pub(crate) http_stats: HttpStats,
    pub(crate) operators: MonitoringHub,
    drain: DrainConfig,
    #[cfg(feature = "otlp")]
    trace_export: Option<std::sync::Arc<keel_telemetry::TraceExport>>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services").field("role", &self.core.role).field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// What [`Services::prepare`] sets up before anything is reached over the
/// network: configuration, logging, metrics, and the (unconnected) stores.
pub struct Prepared {
    role: Role,
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
    local_log: Option<keel_write_behind::LocalLog>,
    admin_token: Option<AdminToken>,
    /// One gate for every SSE stream the process serves.
    streams: keel_http::StreamGate,
    #[cfg(feature = "otlp")]
    trace_export: Option<std::sync::Arc<keel_telemetry::TraceExport>>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared").field("role", &self.role).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Prepared {
    /// Shutdown timing from `--shutdown-grace` and the `[http]` section.
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
            refused: Some(ConnectionLimits::refused_counter(&self.telemetry.meter("keel-http"))),
            streams: self.streams.clone(),
        }
    }

    /// Embedded or cluster.
    pub fn mode(&self) -> RunMode {
        self.mode
    }
}

impl Services {
    /// Everything that needs no network: configuration (a malformed URL is
    /// an error here, before anything is created on disk), logging, metrics.
    pub fn prepare(role: Role, args: &CommonArgs) -> Result<Prepared, StartError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let instance_id = args.instance_id.clone().unwrap_or_else(keel_core::default_instance_id);
        let admin = admin_token(args)?;
        let logging = start_logging(role, args, &file, &instance_id)?;
        if args.admin_token.as_deref().is_some_and(|t| !t.is_empty() && t.len() < keel_http::MIN_ADMIN_TOKEN) {
            tracing::warn!(
                "the admin token is shorter than {} bytes (--allow-weak-admin-token): it can be guessed",
                keel_http::MIN_ADMIN_TOKEN
            );
        }
        let telemetry = Telemetry::new(role.name())?;
        let (database_url, redis_url) = (non_empty(args.database_url.as_deref()), non_empty(args.redis_url.as_deref()));
        let mode = if database_url.is_none() && redis_url.is_none() { RunMode::Embedded } else { RunMode::Cluster };
        // Redis first: its URL is checked before the embedded database
        // creates its directory.
        let redis = redis_url.map(|url| RedisStore::open(&RedisConfig::new(url), &telemetry)).transpose()?;
        let db_config =
            DbConfig { url: database_url.map(str::to_owned), data_dir: args.data_dir.clone(), ..DbConfig::default() };
        let database = Database::open(&db_config, &telemetry)?;
        let local_log = match &redis {
            None if role == Role::Api => open_local_log(args, &file)?,
            _ => None,
        };
        let streams = stream_gate(args, &file, &telemetry);
        Ok(Prepared {
            role,
            args: args.clone(),
            file,
            instance_id,
            capture: logging.capture,
            captured: logging.captured,
            log: logging.log,
            telemetry,
            database,
            redis,
            mode,
            local_log,
            admin_token: admin,
            streams,
            #[cfg(feature = "otlp")]
            trace_export: logging.trace_export,
        })
    }

    /// Waits for the stores (reporting what is missing to `startup`, up to
    /// `--startup-timeout`; `shutdown` ends the wait), runs migrations and
    /// starts every service of the role.
    pub async fn connect(prepared: Prepared, shutdown: Shutdown, startup: &Startup) -> Result<Self, StartError> {
        let core = connect_stores(&prepared, shutdown, startup).await?;
        let Prepared { capture, captured, log, mode, admin_token, .. } = prepared;
        if admin_token.is_none() {
            tracing::warn!("admin endpoints are disabled (403); set KEEL_ADMIN_TOKEN or --admin-token to enable them");
        }
        let (process, cache, bus) = (core.role.name(), core.cache.backend(), core.bus.backend().as_str());
        let database = core.database.backend().as_str();
        tracing::info!(%mode, instance = %core.instance_id, database, cache, bus, "{process} starting in {mode} mode");
        let monitoring = open_monitoring_settings(&core).await?;
        follow_monitoring_settings(&monitoring, &log, &capture, &core.shutdown);
        let mut settings = SettingsRegistry::new();
        settings.register(monitoring);
        let metadata = match core.role {
            Role::Api => Some(start_metadata(&core).await?),
            Role::Worker => None,
        };
        let entries = start_entries(&core).await?;
        let http_stats = HttpStats::new();
        let mut collector = Collector::new(process, core.instance_id.clone())
            .with_http(http_stats.clone())
            .with_section("capture", capture_section(capture))
            .with_section("write_behind", write_behind_section(&entries));
        if let Some(metadata) = &metadata {
            collector = collector.with_section("batcher", batcher_section(metadata.batcher().clone()));
        }
        let operators = start_monitoring(&core, captured, collector);
        let health = start_health(&core, &settings, metadata.as_ref(), &entries)?;
        await_first_checks(&health, &core.file).await;
        Ok(Self {
            drain: drain_config(&core.file, &core.args),
            core,
            mode,
            admin_token,
            health,
            settings,
            metadata,
            entries,
            http_stats,
            operators,
            #[cfg(feature = "otlp")]
            trace_export: prepared.trace_export,
        })
    }

    /// Flushes what the process still holds (the entries queue, the
    /// metadata batcher) once the server has stopped accepting requests,
    /// within what is left of the one shutdown budget.
    pub async fn close(&self) {
        let (budget, shutdown) = (self.drain.grace, &self.core.shutdown);
        if let Some(m) = self.entries.close(shutdown.remaining(budget)).await {
            tracing::info!(
                persisted = m.persisted,
                failed = m.failed,
                left_in_log = m.queue_depth + m.in_flight,
                "entries queue drained"
            );
        }
        if let Some(metadata) = &self.metadata {
            metadata.batcher().shutdown_within(shutdown.remaining(budget)).await;
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
        let (defaults, http) = (MiddlewareConfig::default(), &self.core.file.http);
        MiddlewareConfig {
            request_timeout: http.request_timeout.map_or(defaults.request_timeout, Duration::from),
            body_limit: http.body_limit.unwrap_or(defaults.body_limit),
        }
    }

    /// Shutdown timing: the drain delay and the one budget.
    pub fn drain_config(&self) -> DrainConfig {
        self.drain
    }

    /// What this process is for.
    pub fn role(&self) -> Role {
        self.core.role
    }

    /// Embedded or cluster.
    pub fn mode(&self) -> RunMode {
        self.mode
    }

    /// Health of this process.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Every settings document this process serves.
    pub fn settings(&self) -> &SettingsRegistry {
        &self.settings
    }

    /// The entries service.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The metrics registry.
    pub fn telemetry(&self) -> &Telemetry {
        &self.core.telemetry
    }

    /// Shutdown coordination.
    pub fn shutdown(&self) -> &Shutdown {
        &self.core.shutdown
    }
}

/// Waits for the database (then migrates) and Redis, and opens the cache
/// and bus on them.
async fn connect_stores(prepared: &Prepared, shutdown: Shutdown, startup: &Startup) -> Result<Core, StartError> {
    let (args, database, redis) = (&prepared.args, &prepared.database, &prepared.redis);
    let waiter = startup.waiter(args.startup_timeout.get(), &shutdown);
    let db_name = database.backend().as_str();
    // Both stores are waited for at once, so readiness names every one that
    // is missing, whichever it is.
    let database_ready = async {
        waiter.until(db_name, || database.ping()).await?;
        if args.no_migrate {
            tracing::info!("migrations skipped (--no-migrate)");
        } else {
            let applied = waiter.until("migrations", || database.run_migrations()).await?;
            tracing::info!(applied, backend = db_name, "migrations up to date");
        }
        Ok::<_, StartError>(())
    };
    let redis_ready = async {
        if let Some(redis) = redis {
            waiter.until("redis", || redis.ping()).await?;
        }
        Ok::<_, StartError>(())
    };
    let (database_ready, redis_ready) = tokio::join!(database_ready, redis_ready);
    database_ready.and(redis_ready)?;
    let cache = match redis {
        Some(redis) => Cache::redis(redis.clone()),
        None => Cache::memory_bounded(args.cache_max_bytes),
    };
    let telemetry = &prepared.telemetry;
    let bus = match (redis, database.backend()) {
        (Some(redis), _) => waiter.until("redis", || Bus::redis(redis, &shutdown, telemetry)).await?,
        (None, keel_store::Backend::Postgres) => {
            waiter.until(db_name, || Bus::postgres(database, &shutdown, telemetry)).await?
        }
        (None, keel_store::Backend::Sqlite) => Bus::memory(telemetry),
    };
    Ok(Core {
        role: prepared.role,
        args: args.clone(),
        file: prepared.file.clone(),
        instance_id: prepared.instance_id.clone(),
        telemetry: telemetry.clone(),
        database: database.clone(),
        redis: redis.clone(),
        cache,
        bus,
        shutdown,
        local_log: prepared.local_log.clone(),
    })
}

/// The built-in `monitoring` document (capture toggle, live log level).
async fn open_monitoring_settings(core: &Core) -> Result<Settings<MonitoringSettings>, StartError> {
    let deps = SettingsDeps {
        tasks: Some(core.shutdown.clone()),
        ..SettingsDeps::new(
            std::sync::Arc::new(DbSettingsStore::new(core.database.clone())),
            core.cache.clone(),
            core.bus.clone(),
            core.telemetry.clone(),
        )
    };
    let defaults = SettingsConfig::default();
    let section = &core.file.settings;
    let config = SettingsConfig {
        namespace: core.args.namespace.clone(),
        poll_interval: section.poll_interval.map_or(defaults.poll_interval, |t| t.get()),
        retry_interval: section.retry_interval.map_or(defaults.retry_interval, |t| t.get()),
        max_revert_after: section.max_revert_after.map_or(defaults.max_revert_after, |t| t.get()),
        ..defaults
    };
    Ok(Settings::open_validated(MonitoringSettings::NAME, deps, config, |m: &MonitoringSettings| {
        keel_telemetry::check_filter(&m.log_level)
            .map_err(|err| format!("{}.log_level: {err}", MonitoringSettings::NAME))
    })
    .await?)
}
