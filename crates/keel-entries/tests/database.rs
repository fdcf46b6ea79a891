//! The entries repository and dead letters on real PostgreSQL and SQLite,
//! and a queue riding out a database outage.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use keel_entries::{DbEntries, EntryWrite};
use keel_store::testing::{TempDatabase, postgres_admin_url};
use keel_store::{Database, DbConfig};
use keel_telemetry::Telemetry;
use keel_write_behind::{DbDeadLetters, DeadLetter, DeadLetters, Repository, WriteBehind, WriteBehindConfig};
use serde_json::json;

fn write(key: &str, version: i64, value: serde_json::Value) -> EntryWrite {
    EntryWrite {
        key: key.into(),
        value,
        version,
        updated_at_us: keel_core::unix_micros(SystemTime::now()),
        deleted: false,
    }
}

async fn repository_semantics(database: Database) {
    database.run_migrations().await.unwrap();
    let entries = DbEntries::new(database.clone());
    entries.upsert_many(&[write("a", 2, json!({"n": 2}))]).await.unwrap();
    // A replayed older write changes nothing; a newer one lands.
    entries.upsert_many(&[write("a", 1, json!({"n": 1}))]).await.unwrap();
    assert_eq!(entries.get("a").await.unwrap().unwrap().value, json!({"n": 2}));
    // Duplicates in one batch: the newest wins, in any order.
    entries.upsert_many(&[write("a", 4, json!(4)), write("a", 3, json!(3)), write("b", 1, json!("b"))]).await.unwrap();
    let a = entries.get("a").await.unwrap().unwrap();
    assert_eq!((a.value, a.version, a.deleted), (json!(4), 4, false));
    let tombstone = EntryWrite { deleted: true, ..write("b", 2, serde_json::Value::Null) };
    entries.upsert_many(&[tombstone]).await.unwrap();
    assert!(entries.get("b").await.unwrap().unwrap().deleted);
    assert_eq!(entries.get("missing").await.unwrap(), None);

    let letters = DbDeadLetters::new(database, "test");
    let letter = DeadLetter { item: write("x", 1, json!(1)), error: "boom".into(), attempts: 6, at: SystemTime::now() };
    letters.store(&[letter.clone(), letter]).await.unwrap();
    assert_eq!(letters.count().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_entries_are_version_guarded_and_dead_letters_stored() {
    let temp = TempDatabase::create("wb_repo").await;
    repository_semantics(temp.connect(&Telemetry::new("t").unwrap()).await).await;
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_entries_are_version_guarded_and_dead_letters_stored() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::new("t").unwrap();
    let db =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    repository_semantics(db).await;
}

async fn admin(sql: &str) {
    let mut conn = AsyncPgConnection::establish(&postgres_admin_url()).await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_writes_survive_a_postgres_outage_exactly_once_at_the_latest_version() {
    let temp = TempDatabase::create("wb_outage").await;
    let telemetry = Telemetry::new("t").unwrap();
    let config =
        DbConfig { url: Some(temp.url().into()), acquire_timeout: Duration::from_millis(500), ..DbConfig::default() };
    let database = Database::connect(&config, &telemetry).await.unwrap();
    database.run_migrations().await.unwrap();
    let entries = Arc::new(DbEntries::new(database.clone()));
    let letters = Arc::new(DbDeadLetters::new(database.clone(), "outage"));
    let queue_config = WriteBehindConfig {
        batch_size: 500,
        flush_interval: Duration::from_millis(50),
        max_retries: 30,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..WriteBehindConfig::default()
    };
    let queue = WriteBehind::start(queue_config, entries.clone(), letters.clone()).unwrap();

    const KEYS: i64 = 1000;
    const VERSIONS: i64 = 10;
    let enqueue_version = |version: i64| {
        let queue = queue.clone();
        async move {
            for key in 0..KEYS {
                queue.enqueue(write(&format!("k{key}"), version, json!({"v": version}))).await.unwrap();
            }
        }
    };
    // Version 1 lands while the database is up.
    enqueue_version(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while queue.metrics().persisted < KEYS as u64 {
        assert!(tokio::time::Instant::now() < deadline, "version 1 never persisted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cut the database off; versions 2..=10 (9,000 writes) arrive during the outage.
    admin(&format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false", temp.name())).await;
    admin(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'", temp.name())).await;
    for version in 2..=VERSIONS {
        enqueue_version(version).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = queue.metrics();
    assert!(during.failing_for > Duration::ZERO && during.persisted < 10_000, "the outage was felt: {during:?}");
    assert_eq!((during.retries, during.failed), (0, 0), "an unreachable store is nobody's attempt: {during:?}");
    admin(&format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", temp.name())).await;
    queue.shutdown().await;

    let m = queue.metrics();
    assert_eq!((m.enqueued, m.persisted, m.failed), (10_000, 10_000, 0), "{m:?}");
    for key in 0..KEYS {
        let entry = entries.get(&format!("k{key}")).await.unwrap().unwrap();
        assert_eq!((entry.version, entry.value.clone()), (VERSIONS, json!({"v": VERSIONS})), "k{key}");
    }
    let mut conn = AsyncPgConnection::establish(temp.url()).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let rows: Vec<N> = diesel::sql_query("SELECT count(*)::bigint AS n FROM entries").load(&mut conn).await.unwrap();
    assert_eq!(rows[0].n, KEYS, "exactly one row per key");
    assert_eq!(letters.count().await.unwrap(), 0);
    drop((conn, queue, entries, letters, database));
    temp.drop_database().await;
}
