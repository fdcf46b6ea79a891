//! keel-settings-sync against real PostgreSQL + Redis, and in embedded mode.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use keel_core::ManualClock;
use keel_settings_sync::{DbSettingsStore, Settings, SettingsConfig, SettingsDeps, UpdateError};
use keel_store::testing::{RedisServer, TempDatabase, postgres_admin_url, unique_prefix};
use keel_store::{Bus, Cache, Database, DbConfig, RedisConfig, RedisStore};
use keel_telemetry::Telemetry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Flags {
    dark_mode: bool,
    limit: u32,
}

fn flags(limit: u32) -> Flags {
    Flags { dark_mode: true, limit }
}

/// One "pod": its own connections to the shared database and Redis.
struct Pod {
    deps: SettingsDeps,
    telemetry: Telemetry,
    redis: Option<RedisStore>,
    database: Database,
}

impl Pod {
    /// A pod on `temp` (migrated) and `store`, its bus on the same Redis.
    async fn on_redis(temp: &TempDatabase, store: RedisStore, telemetry: Telemetry) -> Self {
        let database = temp.connect(&telemetry).await;
        database.run_migrations().await.unwrap();
        let bus = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
        let deps = SettingsDeps::new(
            Arc::new(DbSettingsStore::new(database.clone())),
            Cache::redis(store.clone()),
            bus,
            telemetry.clone(),
        );
        Pod { deps, telemetry, redis: Some(store), database }
    }
}

enum World {
    /// PostgreSQL and Redis at `redis_url` (standalone or a Redis Cluster).
    Cluster {
        temp: TempDatabase,
        redis_url: String,
    },
    Embedded {
        dir: tempfile::TempDir,
        cache: Cache,
        bus: Bus,
    },
}

impl World {
    async fn cluster(redis_url: String) -> Self {
        World::Cluster { temp: TempDatabase::create("settings").await, redis_url }
    }

    async fn embedded() -> Self {
        let telemetry = Telemetry::new("t").unwrap();
        World::Embedded { dir: tempfile::tempdir().unwrap(), cache: Cache::memory(), bus: Bus::memory(&telemetry) }
    }

    async fn pod(&self) -> Pod {
        let telemetry = Telemetry::new("t").unwrap();
        match self {
            World::Cluster { temp, redis_url } => {
                let store = keel_store::testing::redis_at(redis_url, &telemetry).await;
                Pod::on_redis(temp, store, telemetry).await
            }
            World::Embedded { dir, cache, bus } => {
                let config = DbConfig { data_dir: dir.path().into(), ..DbConfig::default() };
                let database = Database::connect(&config, &telemetry).await.unwrap();
                database.run_migrations().await.unwrap();
                let deps = SettingsDeps::new(
                    Arc::new(DbSettingsStore::new(database.clone())),
                    cache.clone(),
                    bus.clone(),
                    telemetry.clone(),
                );
                Pod { deps, telemetry, redis: None, database }
            }
        }
    }

    async fn finish(self) {
        if let World::Cluster { temp, .. } = self {
            temp.drop_database().await;
        }
    }
}

fn metric(telemetry: &Telemetry, prefix: &str) -> f64 {
    let text = telemetry.encode().unwrap();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

async fn open(pod: &Pod, name: &str) -> Settings<Flags> {
    Settings::open(name, pod.deps.clone(), SettingsConfig::default()).await.unwrap()
}

/// Waits (bounded) until `settings` holds `version`.
async fn until_version(settings: &Settings<Flags>, version: i64) {
    let mut changes = settings.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while settings.version() < version {
            let _ = changes.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("version {version} never arrived (have {})", settings.version()));
}

async fn behaviour(world: World) {
    let name = unique_prefix("flags");
    let a = world.pod().await;
    let b = world.pod().await;
    let sa = open(&a, &name).await;
    let sb = open(&b, &name).await;
    assert_eq!((sa.get().as_ref().clone(), sa.version()), (Flags::default(), 0), "never written: the default");

    // An update on one pod reaches the other without waiting for the poll.
    let v1 = sa.update(flags(1), Some(0), "ada").await.unwrap();
    assert_eq!((v1.version, v1.updated_by.as_str()), (1, "ada"));
    until_version(&sb, 1).await;
    assert_eq!(*sb.get(), flags(1));

    // A stale expected version is refused and changes nothing.
    let err = sb.update(flags(9), Some(0), "bob").await.unwrap_err();
    assert!(matches!(err, UpdateError::Conflict { expected: 0, current: 1, .. }), "{err}");
    assert_eq!(*sa.get(), flags(1));

    sb.update(flags(2), Some(1), "bob").await.unwrap();
    sa.update(flags(3), None, "cy").await.unwrap();
    until_version(&sb, 3).await;

    // Every change is audited with its actor, newest first.
    let history = sb.history(Some(10)).await.unwrap();
    let summary: Vec<(i64, &str, u64)> =
        history.iter().map(|c| (c.version, c.actor.as_str(), c.new["limit"].as_u64().unwrap())).collect();
    assert_eq!(summary, [(3, "cy", 3), (2, "bob", 2), (1, "ada", 1)]);
    assert_eq!(history[2].old, serde_json::Value::Null);
    assert_eq!(history[0].old["limit"], 2);

    // An older version never replaces a newer one: not from the bus...
    let stale = format!(r#"{{"name":"{name}","version":2}}"#);
    a.deps.bus.publish(&SettingsConfig::default().channel(), Bytes::from(stale)).await.unwrap();
    // ...nor from a cache entry rolled back behind our back.
    let old_entry = serde_json::json!({"version": 1, "value": flags(1), "updated_at_ms": 0, "updated_by": "ada"});
    b.deps
        .cache
        .set(&format!("keel:settings:{name}"), Bytes::from(old_entry.to_string()), Duration::from_secs(60))
        .await
        .unwrap();
    sb.reload().await;
    assert_eq!((sb.version(), sb.get().limit), (3, 3));

    // Listeners fire only on a real change of value; the version channel
    // on every new version, on the writer's pod and the other's.
    let mut changes = sa.subscribe();
    changes.mark_unchanged();
    let (mut versions_a, mut versions_b) = (sa.versions(), sb.versions());
    assert_eq!((*versions_a.borrow_and_update(), *versions_b.borrow_and_update()), (3, 3));
    sa.update(flags(3), None, "ada").await.unwrap();
    assert!(!changes.has_changed().unwrap(), "same value, new version: no change event");
    assert_eq!(sa.version(), 4);
    assert_eq!(*versions_a.borrow_and_update(), 4, "the writer's channel has the version when the update returns");
    tokio::time::timeout(Duration::from_secs(5), versions_b.wait_for(|v| *v == 4)).await.unwrap().unwrap();

    // A revert writes an earlier version's value as the next version, seen
    // by the other pod like any update; the audit trail names the version.
    let reverted = sb.revert(2, Some(4), "dee").await.unwrap();
    assert_eq!((reverted.version, reverted.value.limit, reverted.updated_by.as_str()), (5, 2, "dee"));
    until_version(&sa, 5).await;
    assert_eq!(*sa.get(), flags(2));
    let newest = sa.history(Some(2)).await.unwrap();
    assert_eq!((newest[0].version, newest[0].reverted_from, newest[1].reverted_from), (5, Some(2), None));
    let err = sa.revert(99, None, "dee").await.unwrap_err();
    assert!(matches!(err, UpdateError::UnknownVersion { version: 99, .. }), "{err}");
    let err = sa.revert(1, Some(4), "dee").await.unwrap_err();
    assert!(matches!(err, UpdateError::Conflict { expected: 4, current: 5, .. }), "{err}");

    // A timed value keeps its time in the record and the shared cache, so
    // the other pod arms the same timer; the next write clears it.
    let timed = sa.update_for(flags(4), None, "ada", Duration::from_secs(3600)).await.unwrap();
    until_version(&sb, timed.version).await;
    let due = timed.revert_at.map(keel_core::unix_millis);
    assert!(due.is_some());
    assert_eq!(sb.current().revert_at.map(keel_core::unix_millis), due);
    assert_eq!(a.deps.store.load(&name).await.unwrap().unwrap().revert_at_ms, due);
    let plain = sb.update(flags(5), None, "bob").await.unwrap();
    assert_eq!(plain.revert_at, None);
    assert_eq!(a.deps.store.load(&name).await.unwrap().unwrap().revert_at_ms, None);

    drop((sa, sb, a, b));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_behaviour() {
    behaviour(World::cluster(keel_store::testing::redis_url()).await).await;
}

/// The same on a Redis Cluster: the cache on its shards, invalidations over
/// sharded pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_behaviour() {
    behaviour(World::cluster(keel_store::testing::redis_cluster_url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_behaviour() {
    behaviour(World::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_through_fills_redis_with_a_ttl_and_one_db_read_serves_100_cold_readers() {
    let world = World::cluster(keel_store::testing::redis_url()).await;
    let name = unique_prefix("cold");
    let writer = world.pod().await;
    open(&writer, &name).await.update(flags(7), None, "ada").await.unwrap();
    let redis = writer.redis.as_ref().unwrap();
    let key = format!("keel:settings:{name}");
    let ttl: i64 = redis.client().pttl(&key).await.unwrap();
    assert!((1..=30 * 60 * 1000).contains(&ttl), "cache entry has the 30 min TTL: {ttl}");

    // A reader finds it in Redis: no database read.
    let reader = world.pod().await;
    let settings = open(&reader, &name).await;
    assert_eq!(settings.get().limit, 7);
    assert_eq!(metric(&reader.telemetry, "keel_settings_db_loads_total"), 0.0);
    assert!(metric(&reader.telemetry, "keel_settings_reads_total{name=\"") >= 1.0);

    // Cold cache: 100 concurrent refills share one database read.
    let _: i64 = redis.client().del(&key).await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let settings = settings.clone();
            tokio::spawn(async move { settings.reload().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(metric(&reader.telemetry, "keel_settings_db_loads_total"), 1.0);
    let refilled: Option<String> = redis.client().get(&key).await.unwrap();
    assert!(refilled.is_some(), "the database read refilled the cache");
    drop((settings, reader, writer));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cached_json_is_a_miss_and_is_rewritten() {
    let world = World::cluster(keel_store::testing::redis_url()).await;
    let name = unique_prefix("corrupt");
    let pod = world.pod().await;
    let settings = open(&pod, &name).await;
    settings.update(flags(5), None, "ada").await.unwrap();
    let redis = pod.redis.as_ref().unwrap();
    let key = format!("keel:settings:{name}");
    let _: () = redis.client().set(&key, "{not json", None, None, false).await.unwrap();

    let fresh = open(&world.pod().await, &name).await;
    assert_eq!(fresh.get().limit, 5, "the database answers when the cache is garbage");
    let repaired: String = redis.client().get(&key).await.unwrap();
    // `<version>:<entry>`, as written by the version-guarded cache write.
    let (version, repaired) = repaired.split_once(':').unwrap();
    assert_eq!(version, "1");
    let repaired: serde_json::Value = serde_json::from_str(repaired).unwrap();
    assert_eq!((repaired["version"].as_i64(), repaired["value"]["limit"].as_u64()), (Some(1), Some(5)));
    drop((settings, fresh, pod));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_survive_redis_going_down() {
    let temp = TempDatabase::create("settings_redis_down").await;
    let mut server = RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.unwrap();
    let mut config = RedisConfig::new(server.url());
    config.command_timeout = Duration::from_millis(300);
    let store = RedisStore::connect(&config, &telemetry).await.unwrap();
    let deps = SettingsDeps::new(
        Arc::new(DbSettingsStore::new(database.clone())),
        Cache::redis(store.clone()),
        Bus::postgres(&database, &keel_core::Shutdown::new(), &telemetry).await.unwrap(),
        telemetry.clone(),
    );
    let settings: Settings<Flags> = Settings::open("flags", deps, SettingsConfig::default()).await.unwrap();
    settings.update(flags(1), None, "ada").await.unwrap();

    server.stop();
    assert_eq!(settings.get().limit, 1, "reads never touch Redis");
    settings.reload().await;
    assert_eq!(settings.sync_state().last_error, None, "the database answered instead");
    settings.update(flags(2), Some(1), "ada").await.unwrap();
    assert_eq!(settings.get().limit, 2);
    assert!(metric(&telemetry, "keel_settings_sync_errors_total{name=\"flags\",stage=\"cache\"}") >= 1.0);
    drop(settings);
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_keeps_the_last_value_and_staleness_grows() {
    let temp = TempDatabase::create("settings_db_down").await;
    let telemetry = Telemetry::new("t").unwrap();
    let config =
        DbConfig { url: Some(temp.url().to_owned()), acquire_timeout: Duration::from_secs(1), ..DbConfig::default() };
    let database = Database::connect(&config, &telemetry).await.unwrap();
    database.run_migrations().await.unwrap();
    let clock = ManualClock::new();
    let cache = Cache::memory();
    let deps = SettingsDeps {
        clock: clock.shared(),
        ..SettingsDeps::new(
            Arc::new(DbSettingsStore::new(database.clone())),
            cache.clone(),
            Bus::memory(&telemetry),
            telemetry.clone(),
        )
    };
    let settings: Settings<Flags> = Settings::open("flags", deps, SettingsConfig::default()).await.unwrap();
    settings.update(flags(4), None, "ada").await.unwrap();
    // The last success was five minutes (one poll interval) ago.
    clock.advance(Duration::from_secs(300));

    let mut admin = cut_off(&temp).await;
    cache.delete("keel:settings:flags").await.unwrap();

    settings.reload().await;
    assert_eq!(settings.get().limit, 4, "the last known value is kept");
    let state = settings.sync_state();
    assert!(state.last_error.is_some(), "{state:?}");
    assert_eq!(
        state.staleness,
        Duration::ZERO,
        "counted from the first failed refresh, not the last success: {state:?}"
    );
    assert_eq!(metric(&telemetry, "keel_settings_staleness_seconds{name=\"flags\"}"), 0.0);
    clock.advance(Duration::from_secs(600));
    assert_eq!(settings.sync_state().staleness, Duration::from_secs(600));
    assert_eq!(metric(&telemetry, "keel_settings_staleness_seconds{name=\"flags\"}"), 600.0);
    clock.advance(Duration::from_secs(60));
    assert_eq!(metric(&telemetry, "keel_settings_staleness_seconds{name=\"flags\"}"), 660.0);

    let err = settings.update(flags(5), None, "ada").await.unwrap_err();
    assert!(matches!(err, UpdateError::Store { .. }), "{err}");

    use diesel_async::RunQueryDsl;
    diesel::sql_query(format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", temp.name()))
        .execute(&mut admin)
        .await
        .unwrap();
    settings.reload().await;
    assert_eq!(settings.sync_state().staleness, Duration::ZERO, "recovered");
    drop(settings);
    temp.drop_database().await;
}

/// With the database cut off but the shared cache answering with the
/// version held, no change can have been missed: the refresh failure is
/// reported, the staleness stays zero (KeelSettingsStale does not fire for
/// a database outage alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_with_the_shared_cache_answering_is_not_staleness() {
    let temp = TempDatabase::create("settings_db_down_cached").await;
    let server = RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let config =
        DbConfig { url: Some(temp.url().to_owned()), acquire_timeout: Duration::from_secs(1), ..DbConfig::default() };
    let database = Database::connect(&config, &telemetry).await.unwrap();
    database.run_migrations().await.unwrap();
    let store = RedisStore::connect(&RedisConfig::new(server.url()), &telemetry).await.unwrap();
    let clock = ManualClock::new();
    let deps = SettingsDeps {
        clock: clock.shared(),
        ..SettingsDeps::new(
            Arc::new(DbSettingsStore::new(database.clone())),
            Cache::redis(store),
            Bus::memory(&telemetry),
            telemetry.clone(),
        )
    };
    // Never written: the cache holds no entry, the database is the only
    // other source (the case that used to fire the alert).
    let settings: Settings<Flags> = Settings::open("flags", deps, SettingsConfig::default()).await.unwrap();
    let _admin = cut_off(&temp).await;
    settings.reload().await;
    clock.advance(Duration::from_secs(600));
    let state = settings.sync_state();
    assert!(state.last_error.is_some(), "the failure is reported: {state:?}");
    assert_eq!(state.staleness, Duration::ZERO, "{state:?}");
    drop(settings);
    let mut admin = diesel_admin().await;
    use diesel_async::RunQueryDsl;
    diesel::sql_query(format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", temp.name()))
        .execute(&mut admin)
        .await
        .unwrap();
    temp.drop_database().await;
}

/// Cuts `temp`'s database off: no new connections, existing ones
/// terminated. Returns the admin connection that did it.
async fn cut_off(temp: &TempDatabase) -> diesel_async::AsyncPgConnection {
    use diesel_async::RunQueryDsl;
    let mut admin = diesel_admin().await;
    diesel::sql_query(format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false", temp.name()))
        .execute(&mut admin)
        .await
        .unwrap();
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        temp.name()
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    admin
}

async fn diesel_admin() -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection;
    diesel_async::AsyncPgConnection::establish(&postgres_admin_url()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_polling_by_two_pods_reads_the_database_at_most_twice() {
    let world = World::embedded().await;
    let name = "flags";
    let a = world.pod().await;
    let b = world.pod().await;
    // Both pods share one telemetry view of the database reads.
    let deps_b = SettingsDeps { meter: a.deps.meter.clone(), ..b.deps.clone() };
    {
        let writer: Settings<Flags> = Settings::open(name, a.deps.clone(), SettingsConfig::default()).await.unwrap();
        writer.update(flags(1), None, "ada").await.unwrap();
    }
    a.deps.cache.delete("keel:settings:flags").await.unwrap();
    let before = metric(&a.telemetry, "keel_settings_db_loads_total");

    let sa: Settings<Flags> = Settings::open(name, a.deps.clone(), SettingsConfig::default()).await.unwrap();
    let sb: Settings<Flags> = Settings::open(name, deps_b, SettingsConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let reads = metric(&a.telemetry, "keel_settings_db_loads_total") - before;
    assert!((1.0..=2.0).contains(&reads), "{reads} database reads in an hour");
    let checks = metric(&a.telemetry, "keel_settings_version_checks_total");
    assert!(checks <= 2.0, "at most one version check per pod, at open: {checks}");
    assert_eq!((sa.get().limit, sb.get().limit), (1, 1));
    drop((sa, sb, a, b));
    world.finish().await;
}

#[tokio::test]
async fn invalid_names_and_documents_are_typed_errors() {
    let world = World::embedded().await;
    let pod = world.pod().await;
    let err = Settings::<Flags>::open("Bad Name", pod.deps.clone(), SettingsConfig::default()).await.unwrap_err();
    assert!(err.to_string().contains("invalid settings name"));
    let config = SettingsConfig { namespace: "Has Spaces".into(), ..SettingsConfig::default() };
    let err = Settings::<Flags>::open("ok", pod.deps.clone(), config).await.unwrap_err();
    assert!(err.to_string().contains("invalid settings namespace"));
    let validated: Settings<Flags> =
        Settings::open_validated("limits", pod.deps.clone(), SettingsConfig::default(), |f: &Flags| {
            if f.limit > 100 { Err("limit must be at most 100".into()) } else { Ok(()) }
        })
        .await
        .unwrap();
    let err = validated.update(flags(101), None, "ada").await.unwrap_err();
    assert!(matches!(err, UpdateError::Invalid { .. }) && err.to_string().contains("at most 100"), "{err}");
    let erased: &dyn keel_settings_sync::DynSettings = &validated;
    let err = erased.update_json(serde_json::json!({"dark_mode": "yes"}), None, "ada", None).await.unwrap_err();
    // Two violations of the schema, each by its pointer (`limit` is required).
    let UpdateError::Schema { violations, .. } = &err else { panic!("a schema refusal: {err}") };
    let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
    assert!(pointers.contains(&"/dark_mode") && pointers.contains(&""), "{err}");
    assert_eq!(validated.version(), 0);
    let _ = pod.database;
}

/// A pod on a private Redis whose commands time out after 300 ms.
async fn pod_on(temp: &TempDatabase, redis_url: &str) -> (Pod, Settings<Flags>) {
    let telemetry = Telemetry::new("t").unwrap();
    let mut config = RedisConfig::new(redis_url);
    config.command_timeout = Duration::from_millis(300);
    config.connect_timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&config, &telemetry).await.unwrap();
    let pod = Pod::on_redis(temp, store, telemetry).await;
    let settings = open(&pod, "flags").await;
    (pod, settings)
}

/// Updates committed while Redis is frozen (one of them by a caller that
/// gives up mid-way) reach every replica within 5 s of Redis answering
/// again, including one that starts during the outage; the cache never
/// keeps masking the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_converges_after_a_redis_outage_and_a_cancelled_update() {
    let temp = TempDatabase::create("settings_converge").await;
    let server = RedisServer::start().await;
    let (_a, sa) = pod_on(&temp, server.url()).await;
    let (_b, sb) = pod_on(&temp, server.url()).await;
    sa.update(flags(1), Some(0), "ada").await.unwrap();
    until_version(&sb, 1).await;

    server.pause();
    let v2 = sa.update(flags(2), Some(1), "ada").await.unwrap();
    assert_eq!(v2.version, 2, "the database took it although Redis did not");
    // A caller that goes away during the (slow) cache write: the update
    // still completes.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), sa.update(flags(3), Some(2), "ada")).await;
    assert!(cancelled.is_err(), "the update was still running when its caller left");
    // A replica starting now finishes its start once Redis answers.
    let starting = tokio::spawn({
        let url = server.url().to_owned();
        let temp_url = temp.url().to_owned();
        async move {
            loop {
                let telemetry = Telemetry::new("t").unwrap();
                let database =
                    Database::connect(&DbConfig { url: Some(temp_url.clone()), ..DbConfig::default() }, &telemetry)
                        .await
                        .unwrap();
                let mut config = RedisConfig::new(&url);
                config.command_timeout = Duration::from_millis(300);
                config.connect_timeout = Duration::from_millis(500);
                let opened = async {
                    let store = RedisStore::connect(&config, &telemetry).await.ok()?;
                    let bus = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.ok()?;
                    let deps = SettingsDeps::new(
                        Arc::new(DbSettingsStore::new(database.clone())),
                        Cache::redis(store),
                        bus,
                        telemetry.clone(),
                    );
                    Settings::<Flags>::open("flags", deps, SettingsConfig::default()).await.ok()
                };
                if let Some(settings) = opened.await {
                    return settings;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sb.version(), 1, "the other replica could not have heard yet");

    server.resume();
    let resumed = std::time::Instant::now();
    until_version(&sb, 3).await;
    until_version(&sa, 3).await;
    let sc = tokio::time::timeout(Duration::from_secs(5), starting).await.unwrap().unwrap();
    until_version(&sc, 3).await;
    assert!(resumed.elapsed() < Duration::from_secs(5), "converged {:?} after Redis returned", resumed.elapsed());
    assert_eq!((sb.get().limit, sc.get().limit), (3, 3));
    // The shared cache holds the newest version too: a replica opened now
    // reads it from there.
    let (_d, sd) = pod_on(&temp, server.url()).await;
    assert_eq!(sd.version(), 3);
    drop((sa, sb, sc, sd));
    temp.drop_database().await;
}

/// A copy filled from a stale shared cache (its writer could not update it)
/// is brought up to the database's version at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_opened_on_a_stale_cache_catches_up_with_the_database() {
    let temp = TempDatabase::create("settings_stale_cache").await;
    let server = RedisServer::start().await;
    let (a, sa) = pod_on(&temp, server.url()).await;
    sa.update(flags(1), None, "ada").await.unwrap();
    // Version 2 is committed by a writer whose cache write never happened.
    let store = DbSettingsStore::new(a.database.clone());
    keel_settings_sync::SettingsStore::save(&store, "flags", &serde_json::to_value(flags(2)).unwrap(), Some(1), "bob")
        .await
        .unwrap();
    let (_b, sb) = pod_on(&temp, server.url()).await;
    assert_eq!((sb.version(), sb.get().limit), (2, 2), "the database's version wins over the cached one");
    drop((sa, sb));
    temp.drop_database().await;
}

/// Two embedded pods sharing one clock that the test moves with tokio's.
async fn timed_pods(world: &World, clock: &ManualClock, name: &str) -> (Vec<Pod>, Settings<Flags>, Settings<Flags>) {
    let mut pods = Vec::new();
    for _ in 0..2 {
        let mut pod = world.pod().await;
        pod.deps.clock = clock.shared();
        pods.push(pod);
    }
    let sa = open(&pods[0], name).await;
    let sb = open(&pods[1], name).await;
    (pods, sa, sb)
}

/// Both clocks forward by `by`, then a moment for the tasks that woke.
async fn pass(clock: &ManualClock, by: Duration) {
    clock.advance(by);
    tokio::time::sleep(by).await;
}

/// A timed value returns to the value before it once, whichever pod gets
/// there first (both hold the timer); a later write cancels it; a first
/// write that was timed returns to the default; bounds are enforced.
#[tokio::test(start_paused = true)]
async fn a_timed_value_reverts_once_across_pods_and_a_later_write_cancels_it() {
    use keel_settings_sync::TIMED_REVERT_ACTOR;
    let world = World::embedded().await;
    let clock = ManualClock::new();
    let (_pods, sa, sb) = timed_pods(&world, &clock, "timed").await;
    sa.update(flags(1), None, "ada").await.unwrap();
    let timed = sa.update_for(flags(2), Some(1), "ada", Duration::from_secs(15 * 60)).await.unwrap();
    use keel_core::Clock as _;
    let due = keel_core::unix_millis(clock.now() + Duration::from_secs(15 * 60));
    assert_eq!(timed.revert_at.map(keel_core::unix_millis), Some(due));
    until_version(&sb, 2).await;
    assert_eq!(sb.current().revert_at, timed.revert_at, "the other pod knows the time too");

    pass(&clock, Duration::from_secs(14 * 60)).await;
    assert_eq!(sa.version(), 2, "not before its time");
    pass(&clock, Duration::from_secs(61)).await;
    until_version(&sa, 3).await;
    until_version(&sb, 3).await;
    let reverted = sb.current();
    assert_eq!(
        (reverted.value.as_ref().clone(), reverted.updated_by.as_str(), reverted.revert_at),
        (flags(1), TIMED_REVERT_ACTOR, None)
    );
    pass(&clock, Duration::from_secs(3600)).await;
    let history = sa.history(Some(10)).await.unwrap();
    let timed_reverts: Vec<_> = history.iter().filter(|c| c.actor == TIMED_REVERT_ACTOR).collect();
    assert_eq!(timed_reverts.len(), 1, "exactly one revert across both pods: {history:?}");
    assert_eq!((timed_reverts[0].version, timed_reverts[0].reverted_from), (3, Some(1)));
    assert_eq!(sa.version(), 3);

    // A later manual write cancels the timer.
    sa.update_for(flags(7), None, "ada", Duration::from_secs(3600)).await.unwrap();
    sb.update(flags(8), None, "bob").await.unwrap();
    until_version(&sa, 5).await;
    pass(&clock, Duration::from_secs(2 * 3600)).await;
    assert_eq!((sa.version(), sb.version(), sa.get().limit), (5, 5, 8), "the manual write stands");

    // Bounds: 1 s to the configured maximum (24 h by default).
    for bad in [Duration::from_millis(500), Duration::from_secs(25 * 3600)] {
        let err = sa.update_for(flags(9), None, "ada", bad).await.unwrap_err();
        assert!(matches!(err, UpdateError::RevertAfter { .. }), "{err}");
    }
    assert_eq!(sa.version(), 5, "nothing written");

    // A timed first write returns to the never-written default.
    let (_others, first, _) = timed_pods(&world, &clock, "timed-first").await;
    first.update_for(flags(3), Some(0), "ada", Duration::from_secs(60)).await.unwrap();
    pass(&clock, Duration::from_secs(61)).await;
    until_version(&first, 2).await;
    assert_eq!(*first.get(), Flags::default());
}

/// When no process was running at the time, the first one to open the
/// document reverts it at once.
#[tokio::test(start_paused = true)]
async fn a_timed_value_that_came_due_while_every_process_was_down_is_reverted_at_start() {
    use keel_settings_sync::TIMED_REVERT_ACTOR;
    let world = World::embedded().await;
    let clock = ManualClock::new();
    {
        let (_pods, sa, sb) = timed_pods(&world, &clock, "due").await;
        sa.update(flags(1), None, "ada").await.unwrap();
        sa.update_for(flags(2), None, "ada", Duration::from_secs(60)).await.unwrap();
        until_version(&sb, 2).await;
    }
    // Every process gone; the time passes on the wall clock only.
    clock.advance(Duration::from_secs(3600));
    let (_pods, sa, _sb) = timed_pods(&world, &clock, "due").await;
    until_version(&sa, 3).await;
    let current = sa.current();
    assert_eq!((current.value.as_ref().clone(), current.updated_by.as_str()), (flags(1), TIMED_REVERT_ACTOR));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reverts = sa.history(Some(10)).await.unwrap().into_iter().filter(|c| c.actor == TIMED_REVERT_ACTOR).count();
    assert_eq!((reverts, sa.version()), (1, 3), "once, though both new pods saw it due");
}

/// JSON objects shaped like a settings document: known and unknown keys,
/// values of every JSON type.
fn document_like() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e6f64..1e6).prop_map(serde_json::Value::from),
        prop_oneof![Just("info".to_owned()), Just("debug".to_owned()), "[a-z=,_]{0,12}"]
            .prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let key =
        prop_oneof![Just("enable_monitoring"), Just("log_level"), Just("limit"), Just("dark_mode"), Just("extra")];
    prop::collection::btree_map(key, value, 0..4)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// Every document's default conforms to its published schema, and a JSON
/// value is refused for its schema exactly when the `jsonschema` crate says
/// it breaks it (nothing written then); fuzzed with proptest on both the
/// built-in `monitoring` document and a test type.
#[test]
fn the_schema_accepts_each_default_and_the_service_refuses_what_it_refuses() {
    use keel_settings_sync::{DynSettings, MonitoringSettings};
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let world = runtime.block_on(World::embedded());
    let pod = runtime.block_on(world.pod());
    let monitoring: Settings<MonitoringSettings> =
        runtime.block_on(Settings::open("monitoring", pod.deps.clone(), SettingsConfig::default())).unwrap();
    let flags = runtime.block_on(open(&pod, "fuzzed-flags"));
    let documents: [(&dyn DynSettings, serde_json::Value); 2] = [
        (&monitoring, serde_json::to_value(MonitoringSettings::default()).unwrap()),
        (&flags, serde_json::to_value(Flags::default()).unwrap()),
    ];
    for (document, default) in documents {
        let schema = document.schema();
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&default), "{}: the default {default} breaks {schema}", document.name());
        let mut runner = TestRunner::new(Config { cases: 200, failure_persistence: None, ..Config::default() });
        let outcome = runner.run(&document_like(), |candidate| {
            let refused_by_schema = !validator.is_valid(&candidate);
            let before = document.version();
            let answer = runtime.block_on(document.update_json(candidate.clone(), None, "fuzz", None));
            let schema_refusal =
                matches!(&answer, Err(UpdateError::Schema { violations, .. }) if !violations.is_empty());
            // Keel's own check agrees with the jsonschema crate both ways.
            proptest::prop_assert_eq!(
                schema_refusal,
                refused_by_schema,
                "{} against {}: {:?}",
                candidate,
                schema,
                answer
            );
            if refused_by_schema {
                proptest::prop_assert_eq!(document.version(), before);
            }
            Ok(())
        });
        outcome.unwrap_or_else(|err| panic!("{}: {err}", document.name()));
    }
}

/// The revert one process makes reaches the others over the bus at once,
/// not at their own timer: the process whose clock is ahead finds the
/// value due when it opens the document and reverts it; the writer, whose
/// own timer is a second away, has the revert within half of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_revert_made_by_one_process_reaches_the_others_at_once() {
    let world = World::cluster(keel_store::testing::redis_url()).await;
    let name = unique_prefix("timed");
    let writer_pod = world.pod().await;
    let writer = open(&writer_pod, &name).await;
    writer.update(flags(1), None, "ada").await.unwrap();
    writer.update_for(flags(2), Some(1), "ada", Duration::from_secs(1)).await.unwrap();
    let ahead = ManualClock::new();
    ahead.advance(Duration::from_secs(5));
    let mut other_pod = world.pod().await;
    other_pod.deps.clock = ahead.shared();
    let other = open(&other_pod, &name).await;
    let mut versions = writer.versions();
    tokio::time::timeout(Duration::from_millis(500), versions.wait_for(|v| *v >= 3))
        .await
        .unwrap_or_else(|_| {
            panic!("the revert did not reach the writer before its own timer (at {})", writer.version())
        })
        .unwrap();
    let current = writer.current();
    assert_eq!((current.value.limit, current.updated_by.as_str()), (1, keel_settings_sync::TIMED_REVERT_ACTOR));
    until_version(&other, 3).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!((writer.version(), other.version()), (3, 3), "the writer's own timer found it done");
    drop((writer, other, writer_pod, other_pod));
    world.finish().await;
}
