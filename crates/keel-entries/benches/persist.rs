//! In-memory write-behind throughput into PostgreSQL with the default
//! batches of 500 (which go through binary `COPY` and one guarded merge),
//! against (a) the same batches as one `UNNEST` upsert statement each (the
//! path below the COPY threshold), (b) binary `COPY` into an unlogged table
//! of the same shape with no guard, and (c) one upsert statement per item.
//! (a), (b) and the write-behind alternate in five rounds of fresh keys; the
//! medians are reported.
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
use keel_store::Database;
use keel_store::testing::TempDatabase;
use keel_telemetry::Telemetry;
use keel_write_behind::{DbDeadLetters, WriteBehind, WriteBehindConfig};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

const ITEMS: usize = 20_000;
const PER_ROW_ITEMS: usize = 2_000;
const ROUNDS: usize = 5;
const BATCH: usize = 500;

fn item(i: usize, version: i64) -> EntryWrite {
    EntryWrite {
        key: format!("key-{i}"),
        value: serde_json::json!({"n": i, "tag": "bench"}),
        version,
        updated_at_us: keel_core::unix_micros(SystemTime::now()),
        deleted: false,
    }
}

fn rate(rows: usize, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn report(label: &str, rate: f64, write_behind: Option<f64>) {
    match write_behind {
        Some(base) => println!("{label:<50} {rate:>11.0} rows/s  (write-behind is {:.2}x this)", base / rate),
        None => println!("{label:<50} {rate:>11.0} rows/s"),
    }
}

/// The entries upsert below the COPY threshold, as one statement per batch.
const UNNEST: &str = "INSERT INTO entries (key, value, version, updated_at, deleted) \
    SELECT k, v::jsonb, ver, to_timestamp(t::double precision / 1000000), d \
    FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[]) AS u(k, v, ver, t, d) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, updated_at = excluded.updated_at, deleted = excluded.deleted \
    WHERE excluded.version > entries.version";

async fn write_behind(database: &Database, first: usize) -> f64 {
    let config = WriteBehindConfig { flush_interval: Duration::from_millis(20), ..WriteBehindConfig::default() };
    assert_eq!(config.batch_size, BATCH, "the default batch");
    let queue = WriteBehind::start(
        config,
        Arc::new(DbEntries::new(database.clone())),
        Arc::new(DbDeadLetters::new(database.clone(), "bench")),
    )
    .expect("queue");
    let started = Instant::now();
    for i in first..first + ITEMS {
        queue.enqueue(item(i, 1)).await.expect("enqueue");
    }
    queue.shutdown().await;
    assert_eq!(queue.metrics().persisted, ITEMS as u64);
    rate(ITEMS, started.elapsed())
}

async fn unnest(conn: &mut AsyncPgConnection, first: usize) -> f64 {
    use diesel::sql_types::Array;
    let started = Instant::now();
    for chunk in (first..first + ITEMS).collect::<Vec<_>>().chunks(BATCH) {
        let items: Vec<EntryWrite> = chunk.iter().map(|&i| item(i, 1)).collect();
        diesel::sql_query(UNNEST)
            .bind::<Array<Text>, _>(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(items.iter().map(|i| i.value.to_string()).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(items.iter().map(|i| i.version).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(items.iter().map(|i| i.updated_at_us).collect::<Vec<_>>())
            .bind::<Array<Bool>, _>(items.iter().map(|i| i.deleted).collect::<Vec<_>>())
            .execute(conn)
            .await
            .expect("unnest");
    }
    rate(ITEMS, started.elapsed())
}

async fn copy_unlogged(client: &tokio_postgres::Client, first: usize) -> f64 {
    let types = [Type::TEXT, Type::JSONB, Type::INT8, Type::TIMESTAMPTZ, Type::BOOL];
    let started = Instant::now();
    for chunk in (first..first + ITEMS).collect::<Vec<_>>().chunks(BATCH) {
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
    rate(ITEMS, started.elapsed())
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
    let mut conn = AsyncPgConnection::establish(temp.url()).await.expect("connect");
    conn.batch_execute(
        "CREATE UNLOGGED TABLE copy_target (key TEXT PRIMARY KEY, value JSONB NOT NULL, version BIGINT NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL, deleted BOOLEAN NOT NULL DEFAULT false)",
    )
    .await
    .expect("table");
    let (client, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    println!(
        "entries into PostgreSQL, {ITEMS} new keys per round, batches of {BATCH}, median of {ROUNDS} alternated rounds"
    );

    let (mut queued, mut unnested, mut copied) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let first = round * 3 * ITEMS;
        queued.push(write_behind(&database, first).await);
        unnested.push(unnest(&mut conn, first + ITEMS).await);
        copied.push(copy_unlogged(&client, first + 2 * ITEMS).await);
    }
    let queued = median(queued);
    report("write-behind (enqueue → persisted; COPY + merge)", queued, None);
    report("(a) one UNNEST upsert statement per batch", median(unnested), Some(queued));
    report("(b) binary COPY, unlogged table, no guard", median(copied), Some(queued));

    let started = Instant::now();
    for i in 0..PER_ROW_ITEMS {
        let e = item(ROUNDS * 3 * ITEMS + i, 1);
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
    report("(c) one upsert statement per item", rate(PER_ROW_ITEMS, started.elapsed()), Some(queued));
    drop((conn, client, database));
    temp.drop_database().await;
}
