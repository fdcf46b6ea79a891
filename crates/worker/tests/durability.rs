//! A worker killed with SIGKILL in the middle of a durable stream run loses
//! nothing and applies nothing out of order once restarted.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use keel_entries::{EntryLayout, EntryWrite};
use keel_http::testing::spawn_until_listening;
use keel_store::testing::{TempDatabase, redis, redis_url};
use keel_telemetry::Telemetry;
use keel_write_behind::{DurableConfig, DurableProducer};
use tokio::process::{Child, Command};

const KEYS: usize = 1000;
const VERSIONS: i64 = 5;

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(url: &str, sql: &str) -> i64 {
    let Ok(mut conn) = AsyncPgConnection::establish(url).await else { return 0 };
    let rows: Vec<Row> = diesel::sql_query(sql).load(&mut conn).await.unwrap_or_default();
    rows.into_iter().next().map_or(0, |r| r.n)
}

async fn start_worker(database_url: &str, namespace: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
    command
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("KEEL_NAMESPACE", namespace)
        .env("KEEL_INSTANCE_ID", "worker-1");
    spawn_until_listening(command, "worker admin endpoints").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_resumes_and_every_key_ends_at_its_latest_version() {
    let temp = TempDatabase::create("worker_kill").await;
    let namespace = temp.name().to_owned();
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis(&telemetry).await;
    // One partition: what the worker uses on one Redis by default.
    let stream = EntryLayout::new(&namespace, 1).stream(0);
    // What `api` does for every PUT, 5 versions of 1000 keys in order.
    let producer = DurableProducer::new(store.clone(), DurableConfig::new(&stream, "keel-entries", "api"));
    for version in 1..=VERSIONS {
        for key in 0..KEYS {
            let write = EntryWrite {
                key: format!("k{key}"),
                value: serde_json::json!({"v": version}),
                version,
                updated_at_us: keel_core::unix_micros(SystemTime::now()),
                deleted: false,
            };
            producer.enqueue(&write).await.unwrap();
        }
    }

    let mut first = start_worker(temp.url(), &namespace).await;
    // Kill it hard once it is part-way through.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(temp.url(), "SELECT count(*)::bigint AS n FROM entries").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the worker never started persisting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let _ = first.wait().await;
    let left = producer.backlog().await.unwrap();
    assert!(left > 0, "killed mid-run: {left} entries still in the stream");

    let mut second = start_worker(temp.url(), &namespace).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while producer.backlog().await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the restarted worker did not finish the stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = count(temp.url(), "SELECT count(*)::bigint AS n FROM entries").await;
    let latest =
        count(temp.url(), &format!("SELECT count(*)::bigint AS n FROM entries WHERE version = {VERSIONS}")).await;
    assert_eq!((rows, latest), (KEYS as i64, KEYS as i64), "every key once, at its latest version");
    let letters = count(temp.url(), "SELECT count(*)::bigint AS n FROM write_behind_dead_letters").await;
    assert_eq!(letters, 0);

    let pid = second.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(second.wait().await.unwrap().code(), Some(0));
    let _: i64 = fred::prelude::KeysInterface::del(store.client(), &stream).await.unwrap();
    temp.drop_database().await;
}

/// Entries an earlier release left in its single stream
/// (`<namespace>:entries:stream`) are persisted by an upgraded worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_worker_drains_the_stream_of_the_earlier_release() {
    let temp = TempDatabase::create("worker_upgrade").await;
    let namespace = temp.name().to_owned();
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis(&telemetry).await;
    let legacy = format!("{namespace}:entries:stream");
    let producer = DurableProducer::new(store.clone(), DurableConfig::new(&legacy, "keel-entries", "old-api"));
    for key in 0..100 {
        let write = EntryWrite {
            key: format!("old{key}"),
            value: serde_json::json!(key),
            version: 1,
            updated_at_us: keel_core::unix_micros(SystemTime::now()),
            deleted: false,
        };
        producer.enqueue(&write).await.unwrap();
    }
    let mut worker = start_worker(temp.url(), &namespace).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Drained: every entry persisted, then acknowledged and deleted from
    // the old stream (the consumer deletes a batch after it is persisted, so
    // the rows can be seen a moment before the stream is empty).
    while count(temp.url(), "SELECT count(*)::bigint AS n FROM entries").await < 100
        || producer.backlog().await.unwrap() > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the old stream was not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(temp.url(), "SELECT count(*)::bigint AS n FROM entries").await, 100);
    let pid = worker.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(worker.wait().await.unwrap().code(), Some(0));
    let _: i64 = fred::prelude::KeysInterface::del(store.client(), &legacy).await.unwrap();
    temp.drop_database().await;
}
