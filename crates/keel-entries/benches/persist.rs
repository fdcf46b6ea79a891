//! In-memory write-behind throughput into PostgreSQL with 500-item batches,
//! against binary `COPY` into an unlogged table of the same shape and against
//! one upsert statement per item, in one run.
//!
//! Run with `cargo xtask bench -p keel-entries --bench persist` (needs
//! the local PostgreSQL, like the tests).

// The report printed to standard output is this benchmark's result.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::pin_mut;
use keel_entries::{DbEntries, EntryWrite};
use keel_store::testing::TempDatabase;
use keel_telemetry::Telemetry;
use keel_write_behind::{DbDeadLetters, WriteBehind, WriteBehindConfig};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

const ITEMS: usize = 20_000;
const PER_ROW_ITEMS: usize = 2_000;

fn item(i: usize, version: i64) -> EntryWrite {
    EntryWrite {
        key: format!("key-{i}"),
        value: serde_json::json!({"n": i, "tag": "bench"}),
        version,
        updated_at_us: keel_core::unix_micros(SystemTime::now()),
        deleted: false,
    }
}

fn report(label: &str, rows: usize, took: Duration, baseline: Option<f64>) -> f64 {
    let rate = rows as f64 / took.as_secs_f64();
    match baseline {
        Some(base) => println!("{label:<46} {rate:>11.0} rows/s  (write-behind is {:.2}x this)", base / rate),
        None => println!("{label:<46} {rate:>11.0} rows/s"),
    }
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench binary
    }
    let temp = TempDatabase::create("wb_bench").await;
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.expect("migrations");
    println!("entries into PostgreSQL, {ITEMS} new keys, batches of 500");

    let config = WriteBehindConfig {
        batch_size: 500,
        flush_interval: Duration::from_millis(20),
        ..WriteBehindConfig::default()
    };
    let queue = WriteBehind::start(
        config,
        Arc::new(DbEntries::new(database.clone())),
        Arc::new(DbDeadLetters::new(database.clone(), "bench")),
    )
    .expect("queue");
    let started = Instant::now();
    for i in 0..ITEMS {
        queue.enqueue(item(i, 1)).await.expect("enqueue");
    }
    queue.shutdown().await;
    assert_eq!(queue.metrics().persisted, ITEMS as u64);
    let write_behind = report("write-behind (enqueue → persisted)", ITEMS, started.elapsed(), None);

    let mut conn = AsyncPgConnection::establish(temp.url()).await.expect("connect");
    conn.batch_execute(
        "CREATE UNLOGGED TABLE copy_target (key TEXT PRIMARY KEY, value JSONB NOT NULL, version BIGINT NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL, deleted BOOLEAN NOT NULL DEFAULT false)",
    )
    .await
    .expect("table");
    let (client, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let types = [Type::TEXT, Type::JSONB, Type::INT8, Type::TIMESTAMPTZ, Type::BOOL];
    let started = Instant::now();
    for chunk in (0..ITEMS).collect::<Vec<_>>().chunks(500) {
        let sink = client
            .copy_in("COPY copy_target (key, value, version, updated_at, deleted) FROM STDIN BINARY")
            .await
            .expect("copy");
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for &i in chunk {
            let e = item(i, 1);
            let at = SystemTime::now();
            writer.as_mut().write(&[&e.key, &e.value, &e.version, &at, &e.deleted]).await.expect("row");
        }
        writer.finish().await.expect("finish");
    }
    report("binary COPY, unlogged table, same shape", ITEMS, started.elapsed(), Some(write_behind));

    let started = Instant::now();
    for i in 0..PER_ROW_ITEMS {
        let e = item(ITEMS + i, 1);
        diesel::sql_query(
            "INSERT INTO entries (key, value, version, updated_at, deleted) \
             VALUES ($1, $2::jsonb, $3, to_timestamp($4::double precision / 1000000), $5) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, \
             updated_at = excluded.updated_at, deleted = excluded.deleted WHERE excluded.version > entries.version",
        )
        .bind::<Text, _>(&e.key)
        .bind::<Text, _>(e.value.to_string())
        .bind::<BigInt, _>(e.version)
        .bind::<BigInt, _>(e.updated_at_us)
        .bind::<Bool, _>(e.deleted)
        .execute(&mut conn)
        .await
        .expect("row");
    }
    report("one upsert statement per item", PER_ROW_ITEMS, started.elapsed(), Some(write_behind));
    drop((conn, client, database));
    temp.drop_database().await;
}
