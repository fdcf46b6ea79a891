//! keel-store against the real PostgreSQL and Redis, and embedded SQLite.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use fred::prelude::*;
use keel_store::testing::{TempDatabase, postgres_admin_url, redis, unique_prefix};
use keel_store::{Backend, Bus, Cache, Database, DbConfig, StoreError, Subscription};
use keel_telemetry::Telemetry;

fn telemetry() -> Telemetry {
    Telemetry::new("test").unwrap()
}

async fn recv_within(sub: &mut Subscription, limit: Duration) -> Option<Bytes> {
    tokio::time::timeout(limit, sub.recv()).await.ok().flatten()
}

/// Two subscribers on one channel each get the message; a third on another
/// channel gets nothing.
async fn assert_fanout_without_cross_talk(bus: &Bus, prefix: &str) {
    let (a, b) = (format!("{prefix}.a"), format!("{prefix}.b"));
    let mut first = bus.subscribe(&a).await.unwrap();
    let mut second = bus.subscribe(&a).await.unwrap();
    let mut other = bus.subscribe(&b).await.unwrap();
    bus.publish(&a, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(recv_within(&mut first, Duration::from_secs(5)).await.unwrap(), "hello");
    assert_eq!(recv_within(&mut second, Duration::from_secs(5)).await.unwrap(), "hello");
    assert_eq!(recv_within(&mut other, Duration::from_millis(300)).await, None, "message leaked to another channel");
    bus.publish(&b, Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(recv_within(&mut other, Duration::from_secs(5)).await.unwrap(), "world");
}

/// A second bus (another "process") publishes until the subscriber, whose
/// connection was killed, receives again.
async fn assert_recovers(publisher: &Bus, sub: &mut Subscription, channel: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0u32;
    loop {
        n += 1;
        let _ = publisher.publish(channel, Bytes::from(format!("after-{n}"))).await;
        if let Some(msg) = recv_within(sub, Duration::from_millis(250)).await {
            assert!(msg.starts_with(b"after-"), "{msg:?}");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "subscriber did not recover after its connection was killed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_are_idempotent_and_pool_reports() {
    let temp = TempDatabase::create("store_mig").await;
    let telemetry = telemetry();
    let db = temp.connect(&telemetry).await;
    assert_eq!(db.backend(), Backend::Postgres);
    assert!(db.run_migrations().await.unwrap() >= 1);
    assert_eq!(db.run_migrations().await.unwrap(), 0, "second run must change nothing");

    let mut conn = db.postgres().unwrap().get().await.unwrap();
    let rows = diesel::sql_query("SELECT key FROM keel_meta").execute(&mut conn).await.unwrap();
    assert_eq!(rows, 1);
    let status = db.pool_status();
    assert_eq!(status.max, DbConfig::default().max_connections);
    assert_eq!(status.in_use, 1);
    drop(conn);
    assert_eq!(db.pool_status().in_use, 0);

    db.ping().await.unwrap();
    let text = telemetry.encode().unwrap();
    assert!(text.contains("db_client_operation_duration_seconds_bucket{db_collection_name=\"\",db_operation_name=\"ping\",db_system_name=\"postgres\""), "{text}");
    assert!(text.contains("db_client_connection_max{db_client_connection_pool_name=\"postgres\"} 16"), "{text}");
    assert!(text.contains("db_client_connection_count{db_client_connection_pool_name=\"postgres\",db_client_connection_state=\"idle\"}"), "{text}");
    drop(db);
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_the_default_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let config = DbConfig { data_dir: data_dir.clone(), ..DbConfig::default() };
    let telemetry = telemetry();
    let db = Database::connect(&config, &telemetry).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    assert!(data_dir.join("keel.sqlite").exists(), "data dir and file are created");
    assert!(db.run_migrations().await.unwrap() >= 1);
    assert_eq!(db.run_migrations().await.unwrap(), 0);
    let mut conn = db.sqlite().unwrap().get().await.unwrap();
    let rows = diesel::sql_query("SELECT key FROM keel_meta").execute(&mut conn).await.unwrap();
    assert_eq!(rows, 1);
    // Commits are synced (FULL = 2): what the entries queue persisted is on
    // disk before the local log lets its record go.
    #[derive(diesel::QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        synchronous: i32,
    }
    let mode = diesel::sql_query("PRAGMA synchronous").load::<Synchronous>(&mut conn).await.unwrap();
    assert_eq!(mode.iter().map(|m| m.synchronous).collect::<Vec<_>>(), [2]);
    drop(conn);

    // A second handle (a restart) sees the same migrated file.
    drop(db);
    let again = Database::connect(&config, &telemetry).await.unwrap();
    assert_eq!(again.run_migrations().await.unwrap(), 0);
}

#[tokio::test]
async fn bad_database_urls_are_typed_errors() {
    let telemetry = telemetry();
    let err = Database::connect(&DbConfig { url: Some("mysql://x/y".into()), ..DbConfig::default() }, &telemetry)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { what: "database", .. }), "{err}");
    assert!(err.to_string().contains("mysql"), "{err}");

    let unreachable = DbConfig {
        url: Some("postgres://postgres@127.0.0.1:1/none".into()),
        acquire_timeout: Duration::from_secs(2),
        ..DbConfig::default()
    };
    let err = Database::connect(&unreachable, &telemetry).await.unwrap_err();
    assert!(matches!(err, StoreError::Pool(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_round_trips_with_ttl_and_times_commands_by_name() {
    for url in keel_store::testing::redis_urls() {
        let telemetry = telemetry();
        let store = keel_store::testing::redis_at(&url, &telemetry).await;
        let cache = Cache::redis(store.clone());
        let key = format!("{}:greeting", unique_prefix("cache"));
        assert_eq!(cache.get(&key).await.unwrap(), None);
        cache.set(&key, Bytes::from_static(b"hi"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap().unwrap(), "hi");
        let ttl: i64 = store.client().pttl(&key).await.unwrap();
        assert!((1..=60_000).contains(&ttl), "{url}: ttl {ttl}");
        cache.delete(&key).await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap(), None);

        let text = telemetry.encode().unwrap();
        assert!(
            text.contains("redis_client_command_duration_seconds_count{db_operation_name=\"GET\",outcome=\"ok\"} 3"),
            "{url}: {text}"
        );
        assert!(!text.contains(&key), "keys must never become labels");
    }
}

/// The cluster form of the URL reaches every shard: keys spread over all
/// three masters are written and read through one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_reaches_every_shard() {
    let telemetry = telemetry();
    let store = keel_store::testing::redis_at(&keel_store::testing::redis_cluster_url(), &telemetry).await;
    assert!(store.client().is_clustered());
    let cache = Cache::redis(store.clone());
    let prefix = unique_prefix("shards");
    for i in 0..64 {
        cache.set(&format!("{prefix}:{i}"), Bytes::from(i.to_string()), Duration::from_secs(60)).await.unwrap();
    }
    for i in 0..64 {
        assert_eq!(cache.get(&format!("{prefix}:{i}")).await.unwrap().unwrap(), i.to_string());
    }
    let owners: std::collections::BTreeSet<u16> = (0..64)
        .map(|i| fred::util::redis_keyslot(format!("{prefix}:{i}").as_bytes()))
        .map(|slot| slot / 5462)
        .collect();
    assert_eq!(owners.len(), 3, "64 keys land in every third of the slot space");
    for i in 0..64 {
        cache.delete(&format!("{prefix}:{i}")).await.unwrap();
    }
}

#[tokio::test]
async fn redis_down_is_a_typed_error_not_a_hang() {
    let telemetry = telemetry();
    let mut config = keel_store::RedisConfig::new("redis://127.0.0.1:1");
    config.connect_timeout = Duration::from_millis(500);
    let err = keel_store::RedisStore::connect(&config, &telemetry).await.unwrap_err();
    assert!(matches!(err, StoreError::Connect { backend: "redis", .. }), "{err}");
    let err =
        keel_store::RedisStore::connect(&keel_store::RedisConfig::new("http://nope"), &telemetry).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { what: "redis", .. }), "{err}");
    assert!(err.to_string().contains("redis-cluster://"), "the message names every accepted scheme: {err}");
    // The cluster forms are accepted (nothing listens on port 1: the client keeps trying in the background).
    for url in ["redis-cluster://127.0.0.1:1?node=127.0.0.1:2", "redis-cluster://127.0.0.1:1"] {
        let store = keel_store::RedisStore::open(&keel_store::RedisConfig::new(url), &telemetry).unwrap();
        assert!(store.client().is_clustered(), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_fans_out_without_cross_talk() {
    // Standalone: PUBLISH/SUBSCRIBE; cluster: sharded SPUBLISH/SSUBSCRIBE.
    for url in keel_store::testing::redis_urls() {
        let telemetry = telemetry();
        let store = keel_store::testing::redis_at(&url, &telemetry).await;
        let bus = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
        assert_fanout_without_cross_talk(&bus, &unique_prefix("rbus")).await;

        // A second process's bus sees the first one's messages.
        let other = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
        let channel = unique_prefix("rbus2");
        let mut sub = other.subscribe(&channel).await.unwrap();
        bus.publish(&channel, Bytes::from_static(b"across")).await.unwrap();
        assert_eq!(recv_within(&mut sub, Duration::from_secs(5)).await.unwrap(), "across", "{url}");
        let command = if store.client().is_clustered() { "SPUBLISH" } else { "PUBLISH" };
        let text = telemetry.encode().unwrap();
        assert!(text.contains(&format!("db_operation_name=\"{command}\"")), "{url}: {command} is used");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_subscriber_recovers_after_client_kill() {
    let telemetry = telemetry();
    let store = redis(&telemetry).await;
    let subscriber_bus = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    let publisher = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    let channel = unique_prefix("rkill");
    let mut sub = subscriber_bus.subscribe(&channel).await.unwrap();
    publisher.publish(&channel, Bytes::from_static(b"before")).await.unwrap();
    assert_eq!(recv_within(&mut sub, Duration::from_secs(5)).await.unwrap(), "before");

    let name = subscriber_bus.connection_name().unwrap();
    let list: String = store
        .client()
        .custom(fred::cmd!("CLIENT"), vec!["LIST".to_owned(), "TYPE".to_owned(), "pubsub".to_owned()])
        .await
        .unwrap();
    let id = list
        .lines()
        .find(|line| line.contains(&format!(" name={name} ")))
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("subscriber {name} not in CLIENT LIST:\n{list}"))
        .to_owned();
    let mut reconnects = subscriber_bus.reconnects();
    let killed: i64 =
        store.client().custom(fred::cmd!("CLIENT"), vec!["KILL".to_owned(), "ID".to_owned(), id]).await.unwrap();
    assert_eq!(killed, 1);

    assert_recovers(&publisher, &mut sub, &channel).await;
    tokio::time::timeout(Duration::from_secs(5), reconnects.changed()).await.unwrap().unwrap();
    assert!(telemetry.encode().unwrap().contains("keel_bus_reconnects_total{backend=\"redis\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bus_fans_out_and_rejects_oversized_payloads() {
    let temp = TempDatabase::create("pbus").await;
    let telemetry = telemetry();
    let db = temp.connect(&telemetry).await;
    let bus = Bus::postgres(&db, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    assert_fanout_without_cross_talk(&bus, "pbus").await;

    let err = bus.publish("pbus.a", Bytes::from(vec![b'x'; 8000])).await.unwrap_err();
    assert!(matches!(err, StoreError::Payload { backend: "postgres", .. }), "{err}");
    let err = bus.publish("pbus.a", Bytes::from_static(&[0xff, 0xfe])).await.unwrap_err();
    assert!(matches!(err, StoreError::Payload { .. }), "{err}");
    let err = bus.publish("bad channel", Bytes::new()).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidChannel(_)), "{err}");
    drop((bus, db));
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bus_listener_recovers_after_pg_terminate_backend() {
    let temp = TempDatabase::create("pkill").await;
    let telemetry = telemetry();
    let db = temp.connect(&telemetry).await;
    let subscriber_bus = Bus::postgres(&db, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    let publisher = Bus::postgres(&db, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    let mut sub = subscriber_bus.subscribe("changes").await.unwrap();
    publisher.publish("changes", Bytes::from_static(b"before")).await.unwrap();
    assert_eq!(recv_within(&mut sub, Duration::from_secs(5)).await.unwrap(), "before");

    let name = subscriber_bus.connection_name().unwrap();
    let mut reconnects = subscriber_bus.reconnects();
    let mut admin = AsyncPgConnection::establish(&postgres_admin_url()).await.unwrap();
    let killed = diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, 1, "exactly the listener connection is killed");

    assert_recovers(&publisher, &mut sub, "changes").await;
    tokio::time::timeout(Duration::from_secs(5), reconnects.changed()).await.unwrap().unwrap();
    assert!(telemetry.encode().unwrap().contains("keel_bus_reconnects_total{backend=\"postgres\"}"));
    drop((sub, subscriber_bus, publisher, db));
    temp.drop_database().await;
}

async fn assert_set_if_newer(cache: &Cache, key: &str) {
    let ttl = Duration::from_secs(60);
    assert!(cache.set_if_newer(key, 5, Bytes::from_static(b"five"), ttl).await.unwrap());
    assert!(!cache.set_if_newer(key, 4, Bytes::from_static(b"four"), ttl).await.unwrap(), "older loses");
    assert!(!cache.set_if_newer(key, 5, Bytes::from_static(b"again"), ttl).await.unwrap(), "equal loses");
    assert_eq!(cache.get_versioned(key).await.unwrap(), Some((5, Bytes::from_static(b"five"))));
    assert!(cache.set_if_newer(key, 6, Bytes::from_static(b"six:with:colons"), ttl).await.unwrap());
    assert_eq!(cache.get_versioned(key).await.unwrap(), Some((6, Bytes::from_static(b"six:with:colons"))));
    cache.delete(key).await.unwrap();
    assert!(cache.set_if_newer(key, 1, Bytes::from_static(b"one"), ttl).await.unwrap(), "absent: stored");
    cache.delete(key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_cache_writes_never_go_backwards_on_redis_and_in_process() {
    let telemetry = telemetry();
    for url in keel_store::testing::redis_urls() {
        let store = keel_store::testing::redis_at(&url, &telemetry).await;
        assert_set_if_newer(&Cache::redis(store), &format!("{}:v", unique_prefix("cas"))).await;
    }
    assert_set_if_newer(&Cache::memory(), "v").await;
}

/// Scripts run by hash; a server that lost its script cache (a restart, a
/// failover, `SCRIPT FLUSH`) gets the body again and answers as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_survive_a_flushed_script_cache() {
    static ECHO_LEN: std::sync::LazyLock<keel_store::Script> = std::sync::LazyLock::new(|| {
        keel_store::Script::from_lua("return redis.call('SET', KEYS[1], ARGV[1]) and string.len(ARGV[1])")
    });
    let telemetry = telemetry();
    for url in keel_store::testing::redis_urls() {
        let store = keel_store::testing::redis_at(&url, &telemetry).await;
        let key = format!("{}:script", unique_prefix("script"));
        let n: i64 = store.run_script(&ECHO_LEN, vec![key.clone()], vec!["four".into()]).await.unwrap();
        assert_eq!(n, 4);
        if store.client().is_clustered() {
            let _: () = store.client().script_flush_cluster(false).await.unwrap();
        } else {
            let _: () = store.client().script_flush(false).await.unwrap();
        }
        let n: i64 = store.run_script(&ECHO_LEN, vec![key.clone()], vec!["seven!!".into()]).await.unwrap();
        assert_eq!(n, 7, "{url}");
        let stored: Option<String> = store.client().get(&key).await.unwrap();
        assert_eq!(stored.as_deref(), Some("seven!!"));
        let _: () = store.client().del(&key).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_migrating_an_empty_database_at_once_all_succeed() {
    let temp = TempDatabase::create("migrate_race").await;
    let telemetry = telemetry();
    // Four pools, as four processes would have: no connection is shared.
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(Database::connect(&temp.config(), &telemetry).await.unwrap());
    }
    let runs: Vec<_> = pools.iter().map(|db| db.run_migrations()).collect();
    let applied: Vec<usize> = futures_util::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
    let total: usize = applied.iter().sum();
    assert!(total >= 1 && applied.iter().filter(|&&n| n > 0).count() == 1, "one process migrated: {applied:?}");
    assert_eq!(pools[3].run_migrations().await.unwrap(), 0);
    drop(pools);
    temp.drop_database().await;
}

#[tokio::test]
async fn sqlite_processes_migrating_one_file_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = telemetry();
    let config = DbConfig { data_dir: dir.path().to_path_buf(), ..DbConfig::default() };
    let mut dbs = Vec::new();
    for _ in 0..4 {
        dbs.push(Database::connect(&config, &telemetry).await.unwrap());
    }
    let runs: Vec<_> = dbs.iter().map(|db| db.run_migrations()).collect();
    let applied: Vec<usize> = futures_util::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(applied.iter().filter(|&&n| n > 0).count(), 1, "{applied:?}");
}

/// Errors from a real PostgreSQL: refused data is permanent, an unreachable
/// or terminated server is transient.
#[tokio::test]
async fn postgres_errors_are_classified_from_the_real_server() {
    use keel_store::FailureKind;
    let temp = TempDatabase::create("classify").await;
    let telemetry = telemetry();
    let db = temp.connect(&telemetry).await;
    let mut conn = db.postgres_connection().await.unwrap().unwrap();
    diesel::sql_query("CREATE TABLE t (k text PRIMARY KEY, v jsonb, n int CHECK (n > 0))")
        .execute(&mut conn)
        .await
        .unwrap();
    let query = |sql: &'static str| {
        let db = db.clone();
        async move {
            let mut conn = db.postgres_connection().await?.unwrap();
            diesel::sql_query(sql).execute(&mut conn).await.map_err(StoreError::from)
        }
    };
    query("INSERT INTO t VALUES ('a', '1', 1)").await.unwrap();
    for (sql, what) in [
        ("INSERT INTO t VALUES ('a', '1', 1)", "unique violation"),
        ("INSERT INTO t VALUES ('b', '1', 0)", "check violation"),
        ("INSERT INTO t VALUES ('c', '\"a\\u0000b\"', 1)", "NUL in jsonb"),
        ("INSERT INTO t VALUES (E'd\\x01' || chr(0), '1', 1)", "NUL in text"),
        ("INSERT INTO t VALUES ('e', 'not json', 1)", "invalid input"),
    ] {
        let err = query(sql).await.unwrap_err();
        assert_eq!(err.kind(), FailureKind::Permanent, "{what}: {err}");
    }
    // The server ends this session (as a restart or an operator would).
    let mut victim = db.postgres_connection().await.unwrap().unwrap();
    let pid: Vec<Pid> = diesel::sql_query("SELECT pg_backend_pid() AS pid").load(&mut victim).await.unwrap();
    query_admin(&format!("SELECT pg_terminate_backend({})", pid[0].pid)).await;
    let err = diesel::sql_query("SELECT 1").execute(&mut victim).await.map_err(StoreError::from).unwrap_err();
    assert_eq!(err.kind(), FailureKind::Transient, "terminated session: {err}");
    drop((conn, victim));
    // Nothing listens: connecting is refused.
    let down = Database::connect(
        &DbConfig {
            url: Some("postgres://postgres@127.0.0.1:1/none".into()),
            acquire_timeout: Duration::from_millis(500),
            ..DbConfig::default()
        },
        &telemetry,
    )
    .await
    .unwrap_err();
    assert_eq!(down.kind(), FailureKind::Transient, "refused connection: {down}");
    temp.drop_database().await;
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

async fn query_admin(sql: &str) {
    let mut admin = AsyncPgConnection::establish(&postgres_admin_url()).await.unwrap();
    diesel::sql_query(sql).execute(&mut admin).await.unwrap();
}

const STAGED: keel_store::CopyMerge = keel_store::CopyMerge {
    stage: "it_stage",
    columns: "k text, v int",
    types: &[tokio_postgres::types::Type::TEXT, tokio_postgres::types::Type::INT4],
    merge: "INSERT INTO t (k, v) SELECT k, v FROM it_stage ON CONFLICT (k) DO UPDATE SET v = excluded.v",
};

fn staged_row(item: &(String, i32)) -> [&(dyn tokio_postgres::types::ToSql + Sync); 2] {
    [&item.0, &item.1]
}

fn rows(prefix: &str, n: usize, v: i32) -> Vec<(String, i32)> {
    (0..n).map(|i| (format!("{prefix}{i}"), v)).collect()
}

async fn count(db: &Database, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.postgres_connection().await.unwrap().unwrap();
    let found: Vec<N> = diesel::sql_query(sql).load(&mut conn).await.unwrap();
    found[0].n
}

/// The pids of sessions of the current database whose current or last
/// statement is the staged merge, and whether each waits for a lock.
async fn merging(db: &Database) -> Vec<(i32, bool)> {
    #[derive(diesel::QueryableByName)]
    struct Session {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        waiting: bool,
    }
    let mut conn = db.postgres_connection().await.unwrap().unwrap();
    let found: Vec<Session> = diesel::sql_query(
        "SELECT pid, coalesce(wait_event_type = 'Lock', false) AS waiting FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'INSERT INTO t (k, v) SELECT k, v FROM it_stage%'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    found.into_iter().map(|s| (s.pid, s.waiting)).collect()
}

/// `copy_merge` writes a whole batch or nothing of it, and a refused row is
/// a permanent error with the server's message. A batch whose caller gives
/// up while its merge waits for a lock still lands whole (its `COMMIT` went
/// with the merge), and its connection — the only bulk connection of a
/// pool of 4 — is closed, not handed to the next batch mid-transaction.
/// SQLite answers `false`: the caller writes another way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_merge_is_all_or_nothing_even_when_cancelled() {
    use keel_store::FailureKind;
    let temp = TempDatabase::create("copy_merge").await;
    let telemetry = telemetry();
    let db = Database::connect(&DbConfig { max_connections: 4, ..temp.config() }, &telemetry).await.unwrap();
    let mut conn = db.postgres_connection().await.unwrap().unwrap();
    diesel::sql_query("CREATE TABLE t (k text PRIMARY KEY, v int NOT NULL CHECK (v > 0))")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert!(db.copy_merge(&STAGED, &rows("a", 100, 1), staged_row).await.unwrap());
    assert_eq!(count(&db, "SELECT count(*) AS n FROM t").await, 100);

    let mut refused = rows("b", 100, 1);
    refused[57].1 = 0;
    let err = db.copy_merge(&STAGED, &refused, staged_row).await.unwrap_err();
    assert_eq!(err.kind(), FailureKind::Permanent, "{err}");
    assert!(err.to_string().contains("check constraint"), "the server's message is kept: {err}");
    assert_eq!(count(&db, "SELECT count(*) AS n FROM t WHERE k LIKE 'b%'").await, 0, "nothing of the batch");

    // Another session holds a0: the merge of a batch touching it waits.
    let (holder, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    holder.batch_execute("BEGIN; SELECT * FROM t WHERE k = 'a0' FOR UPDATE").await.unwrap();
    let mut waiting = rows("c", 100, 2);
    waiting.push(("a0".into(), 9));
    let mut batch = Box::pin(db.copy_merge(&STAGED, &waiting, staged_row));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        tokio::select! {
            done = &mut batch => panic!("the merge did not wait for the lock: {done:?}"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if let Some((pid, _)) = merging(&db).await.into_iter().find(|(_, waiting)| *waiting) {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "the merge never waited for the lock");
    };
    assert_eq!(count(&db, "SELECT count(*) AS n FROM t WHERE k LIKE 'c%'").await, 0, "not visible while merging");
    drop(batch); // the caller gives up
    let next_rows = rows("d", 100, 3);
    let next = tokio::time::timeout(Duration::from_secs(5), db.copy_merge(&STAGED, &next_rows, staged_row));
    assert!(next.await.expect("a fresh connection, not the blocked one").unwrap());
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) AS n FROM t WHERE k LIKE 'd%'").await, 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while merging(&db).await.iter().any(|(p, _)| *p == pid) {
        assert!(tokio::time::Instant::now() < deadline, "the abandoned connection was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&db, "SELECT count(*) AS n FROM t WHERE k LIKE 'c%' OR v = 9").await, 101, "whole");
    drop(holder);
    driver.await.unwrap().unwrap();
    drop(db);
    temp.drop_database().await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    assert!(!sqlite.copy_merge(&STAGED, &rows("e", 3, 1), staged_row).await.unwrap());
}
