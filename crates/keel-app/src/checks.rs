//! The health policy: which components a process checks (database, Redis,
//! settings, batcher, entries, and every configured check), in which
//! groups, and what makes each WARN or KO.

use std::time::Duration;

use keel_batcher::{AgentMetadata, Batcher};
use keel_entries::Entries;
use keel_health_status::{CheckKind, ComponentSpec, Health, HealthOptions, Mandatory, Mode, Report, SharedCheck};
use keel_settings_sync::SettingsRegistry;
use keel_store::{Database, RedisStore};

use crate::StartError;
use crate::config::{ConfigError, FileConfig};
use crate::core::Core;

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

/// In-process queue: KO when its repository has failed for `ko_after`, WARN
/// above 80 % of capacity or after new dead letters in the last minute.
/// Redis Stream: WARN when the backlog is above 80 % of capacity.
fn entries_check(entries: &Entries, ko_after: Duration) -> SharedCheck {
    let entries = entries.clone();
    let dead_letters = std::sync::Arc::new(Rises::default());
    std::sync::Arc::new(move || {
        let (entries, dead_letters) = (entries.clone(), dead_letters.clone());
        async move {
            // The figures of whoever persists here: the in-process queue, or
            // the stream consumer (worker); in cluster mode the stream backlog
            // stands in for the queue depth.
            let (persisting, held, capacity) = match entries.backlog().await {
                Ok(backlog) => (backlog.persisting, backlog.held, backlog.capacity),
                Err(err) => return Report::fail(err.to_string()),
            };
            if let Some(m) = persisting.filter(|m| m.failing_for >= ko_after) {
                return Report::fail(format!("repository failing for {}s", m.failing_for.as_secs()));
            }
            let (failed, recent) = dead_letters.observe(persisting.map(|m| m.failed));
            if held * 5 > capacity * 4 {
                Report::warn(format!("backlog {held}/{capacity} is more than 80% of capacity"))
            } else if recent {
                Report::warn(format!("{failed} items dead-lettered, some in the last minute"))
            } else {
                Report::ok()
            }
        }
    })
}

/// When a running total (dead letters, drops) last went up: a check warns
/// while it rose within the last minute.
#[derive(Default)]
struct Rises(std::sync::Mutex<(u64, Option<tokio::time::Instant>)>);

impl Rises {
    /// Records `total` (when known) and answers the highest total seen and
    /// whether it rose within the last minute.
    fn observe(&self, total: Option<u64>) -> (u64, bool) {
        let now = tokio::time::Instant::now();
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(total) = total.filter(|t| *t > last.0) {
            *last = (total, Some(now));
        }
        (last.0, last.1.is_some_and(|at| now.duration_since(at) < Duration::from_secs(60)))
    }
}

/// The entries queue's local write-ahead log: KO while appends fail (every
/// write is answered 503), WARN above 80 % of its bound.
fn local_log_check(log: &keel_write_behind::LocalLog) -> SharedCheck {
    let log = log.clone();
    std::sync::Arc::new(move || {
        let stats = log.stats();
        std::future::ready(match stats.failing {
            Some(error) => Report::fail(error),
            None if stats.bytes * 5 > stats.max_bytes * 4 => {
                Report::warn(format!("{} of {} bytes: more than 80% of the bound", stats.bytes, stats.max_bytes))
            }
            None => Report::ok(),
        })
    })
}

/// WARN while the batcher dropped items in the last minute or its channel is
/// more than 80 % full.
fn batcher_check<K, V>(batcher: Batcher<K, V>) -> SharedCheck
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let drops = Rises::default();
    std::sync::Arc::new(move || {
        let (dropped, recent) = drops.observe(Some(batcher.stats().dropped()));
        let (depth, capacity) = (batcher.queue_depth(), batcher.queue_capacity());
        std::future::ready(if recent {
            Report::warn(format!("{dropped} items dropped in total, some in the last minute"))
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
pub(crate) fn start_health(
    core: &Core,
    settings: &SettingsRegistry,
    metadata: Option<&AgentMetadata>,
    entries: &Entries,
) -> Result<Health, StartError> {
    let (file, database, redis) = (&core.file, &core.database, core.redis.as_ref());
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
    let options = HealthOptions {
        default_mode: file.health.default_mode,
        isolated: true,
        history: file.health.history,
        ..HealthOptions::default()
    };
    let health = Health::with_options(groups, options)
        .map_err(|source| StartError::Os { what: "start the health watchdog", source })?;
    health.instrument(&core.meter());
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
    if let Some(log) = core.local_log.as_ref().filter(|_| !configured("local_log")) {
        builtins.push(("local_log".to_owned(), local_log_check(log)));
    }
    for (name, check) in builtins {
        let mut spec = builtin_spec(name);
        if spec.name == "local_log" {
            // Reads two atomics: checked every second, and a failing append
            // is confirmed KO within half a second more.
            spec.interval = Duration::from_secs(1);
            spec.fall_interval = Some(Duration::from_millis(250));
        }
        health.register_shared(spec, check).map_err(invalid_health)?;
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
pub(crate) async fn await_first_checks(health: &Health, file: &FileConfig) {
    let longest = file.health.checks.iter().map(|c| c.timeout.get()).chain([ComponentSpec::new("").timeout]).max();
    let limit = longest.unwrap_or_default() + Duration::from_millis(500);
    if tokio::time::timeout(limit, health.first_checks()).await.is_err() {
        tracing::warn!("health checks still pending after {limit:?}; starting anyway");
    }
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

    impl keel_write_behind::Repository<keel_entries::EntryWrite> for Down {
        fn upsert_many<'a>(&'a self, _items: &'a [keel_entries::EntryWrite]) -> keel_write_behind::RepoFuture<'a> {
            Box::pin(async { Err(keel_write_behind::RepoError::transient("database down")) })
        }
    }

    impl keel_write_behind::DeadLetters<keel_entries::EntryWrite> for Down {
        fn store<'a>(
            &'a self,
            _letters: &'a [keel_write_behind::DeadLetter<keel_entries::EntryWrite>],
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
        let entries = keel_entries::Entries::new(
            keel_store::Cache::memory(),
            "t",
            keel_entries::EntrySink::Memory(queue.clone()),
            keel_entries::DbEntries::new(db),
        );
        let check = super::entries_check(&entries, Duration::from_secs(30));
        assert_eq!(check.check().await.status, Status::Ok);

        let write = |n: i64| keel_entries::EntryWrite {
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
