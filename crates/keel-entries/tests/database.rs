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

    // A batch of the queue's default size (500, which PostgreSQL takes
    // through COPY and one merge) over 500 stored keys at version 5: the
    // older and equal writes change nothing, the newer ones and the newer
    // tombstones land, and 100 new keys are added.
    let batch_size = WriteBehindConfig::default().batch_size;
    let stored: Vec<EntryWrite> = (0..batch_size).map(|i| write(&format!("big-{i}"), 5, json!("stored"))).collect();
    entries.upsert_many(&stored).await.unwrap();
    let next: Vec<EntryWrite> = (100..batch_size + 100)
        .map(|i| match i % 4 {
            0 => write(&format!("big-{i}"), 4, json!("older")),
            1 => write(&format!("big-{i}"), 5, json!("equal")),
            2 => write(&format!("big-{i}"), 6, json!({"newer": i})),
            _ => EntryWrite { deleted: true, ..write(&format!("big-{i}"), 7, serde_json::Value::Null) },
        })
        .collect();
    entries.upsert_many(&next).await.unwrap();
    for i in 0..batch_size + 100 {
        let entry = entries.get(&format!("big-{i}")).await.unwrap().unwrap();
        let expected = match (i < 100, i >= batch_size, i % 4) {
            (true, _, _) | (_, false, 0 | 1) => (json!("stored"), 5, false),
            (_, true, 0) => (json!("older"), 4, false),
            (_, true, 1) => (json!("equal"), 5, false),
            (_, _, 2) => (json!({"newer": i}), 6, false),
            _ => (serde_json::Value::Null, 7, true),
        };
        assert_eq!((entry.value, entry.version, entry.deleted), expected, "big-{i}");
    }

    let letters = DbDeadLetters::new(database, "test");
    let letter = DeadLetter { item: write("x", 1, json!(1)), error: "boom".into(), attempts: 6, at: SystemTime::now() };
    letters.store(&[letter.clone(), letter]).await.unwrap();
    assert_eq!(letters.count().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_entries_are_version_guarded_and_dead_letters_stored() {
    let temp = TempDatabase::create("wb_repo").await;
    let database = temp.connect(&Telemetry::new("t").unwrap()).await;
    repository_semantics(database.clone()).await;
    assert_eq!(count(temp.url(), "SELECT count(*) FROM pg_class WHERE relname = 'keel_entries_stage'").await, 1);
    drop(database);
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

/// The single number `sql` answers on the database at `url`.
async fn count(url: &str, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
    drop(client);
    driver.await.unwrap().unwrap();
    n
}

/// One poison entry (PostgreSQL refuses U+0000 in jsonb) in a batch of the
/// default 500 that goes through COPY: the split isolates it, the other
/// 499 are stored, it alone is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_in_a_copy_batch_is_isolated_and_the_rest_stored() {
    let temp = TempDatabase::create("wb_copy_poison").await;
    let database = temp.connect(&Telemetry::new("t").unwrap()).await;
    database.run_migrations().await.unwrap();
    let entries = Arc::new(DbEntries::new(database.clone()));
    let letters = Arc::new(DbDeadLetters::new(database.clone(), "poison"));
    let config = WriteBehindConfig { backoff_max: Duration::from_millis(200), ..WriteBehindConfig::default() };
    let batch_size = config.batch_size;
    let queue = WriteBehind::start(config, entries.clone(), letters.clone()).unwrap();
    for i in 0..batch_size {
        let value = if i == 321 { json!({"bad": "nul \u{0} inside"}) } else { json!({"i": i}) };
        queue.enqueue(write(&format!("p{i}"), 1, value)).await.unwrap();
    }
    queue.shutdown().await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed), (batch_size as u64 - 1, 1), "{m:?}");
    assert_eq!(letters.count().await.unwrap(), 1);
    assert_eq!(entries.get("p321").await.unwrap(), None);
    assert_eq!(entries.get("p320").await.unwrap().unwrap().value, json!({"i": 320}));
    assert_eq!(count(temp.url(), "SELECT count(*) FROM entries").await, batch_size as i64 - 1);
    drop((queue, entries, letters, database));
    temp.drop_database().await;
}

/// The connection that writes a COPY batch dies while the merge waits for a
/// row lock: nothing of the batch is visible, the queue keeps the whole
/// batch (no item's attempt, no dead letter) and writes all of it once the
/// database answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_batch_cut_off_mid_merge_is_retried_whole_and_nothing_half_applied() {
    let temp = TempDatabase::create("wb_copy_cut").await;
    let database = temp.connect(&Telemetry::new("t").unwrap()).await;
    database.run_migrations().await.unwrap();
    let entries = Arc::new(DbEntries::new(database.clone()));
    let letters = Arc::new(DbDeadLetters::new(database.clone(), "cut"));
    entries.upsert_many(&[write("c7", 1, json!("old"))]).await.unwrap();
    // Another session holds c7's row: the merge will wait for it.
    let (holder, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.unwrap();
    let holder_driver = tokio::spawn(connection);
    holder.batch_execute("BEGIN; SELECT * FROM entries WHERE key = 'c7' FOR UPDATE").await.unwrap();

    let config = WriteBehindConfig {
        flush_interval: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..WriteBehindConfig::default()
    };
    let batch_size = config.batch_size;
    let queue = WriteBehind::start(config, entries.clone(), letters.clone()).unwrap();
    for i in 0..batch_size {
        queue.enqueue(write(&format!("c{i}"), 2, json!({"i": i}))).await.unwrap();
    }
    let waiting = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
        AND query LIKE 'INSERT INTO entries%keel_entries_stage%'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (admin_client, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.unwrap();
    let admin_driver = tokio::spawn(connection);
    let pid: i32 = loop {
        if let Some(row) = admin_client.query_opt(waiting, &[]).await.unwrap() {
            break row.get(0);
        }
        assert!(tokio::time::Instant::now() < deadline, "the COPY batch's merge never waited for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Staged and merging, not committed: nothing of the batch is visible.
    assert_eq!(count(temp.url(), "SELECT count(*) FROM entries WHERE version = 2").await, 0);
    admin_client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();
    queue.shutdown().await;

    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed, m.retries), (batch_size as u64, 0, 0), "{m:?}");
    assert_eq!(count(temp.url(), "SELECT count(*) FROM entries WHERE version = 2").await, batch_size as i64);
    assert_eq!(entries.get("c7").await.unwrap().unwrap().value, json!({"i": 7}));
    assert_eq!(letters.count().await.unwrap(), 0);
    drop((holder, admin_client));
    holder_driver.await.unwrap().unwrap();
    admin_driver.await.unwrap().unwrap();
    drop((queue, entries, letters, database));
    temp.drop_database().await;
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
