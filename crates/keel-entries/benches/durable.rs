//! Durable mode end to end: producers `XADD` into a Redis Stream, one or
//! three consumers (as one or three workers would run: one consumer group)
//! persist into PostgreSQL and acknowledge. Reports items/s and the enqueue
//! → persisted latency of every item, then the same rows written by binary
//! `COPY` into a table of the same shape (the fastest way PostgreSQL takes
//! rows: the ceiling for the consumers).
//!
//! Run with `cargo xtask bench -p keel-entries --bench durable` (needs
//! the local PostgreSQL and Redis, like the tests).

// The report printed to standard output is this benchmark's result.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use futures_util::pin_mut;
use keel_entries::{DbEntries, EntryWrite};
use keel_store::testing::{TempDatabase, redis, unique_prefix};
use keel_telemetry::Telemetry;
use keel_write_behind::{DbDeadLetters, DurableConfig, DurableConsumer, DurableProducer, RepoFuture, Repository};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use tokio_util::sync::CancellationToken;

const ITEMS: usize = 40_000;
const PRODUCERS: usize = 8;

/// The real repository, noting when each item became persistent.
struct Timed {
    inner: DbEntries,
    latencies: Mutex<Vec<Duration>>,
}

impl Repository<EntryWrite> for Timed {
    fn upsert_many<'a>(&'a self, items: &'a [EntryWrite]) -> RepoFuture<'a> {
        Box::pin(async move {
            self.inner.upsert_many(items).await?;
            let now = keel_core::unix_micros(SystemTime::now());
            let mut latencies = self.latencies.lock().expect("lock");
            latencies
                .extend(items.iter().map(|i| Duration::from_micros(u64::try_from(now - i.updated_at_us).unwrap_or(0))));
            Ok(())
        })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench binary
    }
    let temp = TempDatabase::create("durable_bench").await;
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.expect("migrations");
    let store = redis(&telemetry).await;
    println!("durable write-behind, {ITEMS} items, {PRODUCERS} producers, Redis + PostgreSQL on loopback");
    println!("| consumers | enqueue items/s | persisted items/s | latency p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    let mut persisted = Vec::new();
    for consumers in [1, 3] {
        pg(temp.url()).await.batch_execute("TRUNCATE entries").await.expect("truncate");
        persisted.push((consumers, run(&store, &database, consumers).await));
    }
    let copy = copy_baseline(&temp).await;
    println!("\nbinary COPY of the same {ITEMS} rows into a table of the same shape: {copy:.0} rows/s");
    for (consumers, rate) in persisted {
        println!("  {consumers} consumer(s): {:.2}x COPY", rate / copy);
    }
    drop(database);
    temp.drop_database().await;
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn write(i: usize) -> EntryWrite {
    EntryWrite {
        key: format!("key-{i}"),
        value: serde_json::json!({"n": i}),
        version: 1,
        updated_at_us: keel_core::unix_micros(SystemTime::now()),
        deleted: false,
    }
}

/// One run: producers enqueue every item while `consumers` persist them.
/// Prints a table row and returns the persisted items/s.
async fn run(store: &keel_store::RedisStore, database: &keel_store::Database, consumers: usize) -> f64 {
    let stream = unique_prefix("durable_bench");
    let config = DurableConfig {
        capacity: 100_000,
        idle_poll: Duration::from_millis(5),
        ..DurableConfig::new(&stream, "bench", "c0")
    };
    let repository = Arc::new(Timed { inner: DbEntries::new(database.clone()), latencies: Mutex::default() });
    let stop = CancellationToken::new();
    let mut consuming = Vec::new();
    for n in 0..consumers {
        let consumer = DurableConsumer::new(
            store.clone(),
            DurableConfig { consumer: format!("c{n}"), ..config.clone() },
            repository.clone(),
            Arc::new(DbDeadLetters::new(database.clone(), "bench")),
        )
        .await
        .expect("consumer");
        let stop = stop.clone();
        consuming.push(tokio::spawn(async move {
            consumer.run(stop).await;
            consumer.metrics().persisted
        }));
    }

    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let producer = DurableProducer::new(store.clone(), config.clone());
            tokio::spawn(async move {
                for i in (p..ITEMS).step_by(PRODUCERS) {
                    producer.enqueue(&write(i)).await.expect("enqueue");
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.expect("producer");
    }
    let produced = started.elapsed();
    while repository.latencies.lock().expect("lock").len() < ITEMS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    stop.cancel();
    let mut persisted = 0;
    for consumer in consuming {
        persisted += consumer.await.expect("consumer");
    }
    assert_eq!(persisted, ITEMS as u64);

    let mut latencies = repository.latencies.lock().expect("lock").clone();
    latencies.sort();
    let rate = ITEMS as f64 / total.as_secs_f64();
    println!(
        "| {consumers} | {:.0} | {rate:.0} | {:.1?} | {:.1?} | {:.1?} | {:.1?} |",
        ITEMS as f64 / produced.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    let _: i64 = store.client().del(&stream).await.expect("del");
    rate
}

/// The same rows by binary `COPY` (in batches of the consumer's size) into
/// a table like `entries`, with its primary key: rows/s.
async fn copy_baseline(temp: &TempDatabase) -> f64 {
    let client = pg(temp.url()).await;
    client.batch_execute("CREATE TABLE copy_target (LIKE entries INCLUDING ALL)").await.expect("table");
    let types = [Type::TEXT, Type::JSONB, Type::INT8, Type::TIMESTAMPTZ, Type::BOOL];
    let batch = DurableConfig::new("x", "x", "x").batch_size;
    let started = Instant::now();
    for first in (0..ITEMS).step_by(batch) {
        let sink = client
            .copy_in("COPY copy_target (key, value, version, updated_at, deleted) FROM STDIN BINARY")
            .await
            .expect("copy");
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for i in first..(first + batch).min(ITEMS) {
            let item = write(i);
            let at = SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(item.updated_at_us).unwrap_or(0));
            writer
                .as_mut()
                .write(&[&item.key, &Json(&item.value), &item.version, &at, &item.deleted])
                .await
                .expect("row");
        }
        writer.finish().await.expect("finish");
    }
    ITEMS as f64 / started.elapsed().as_secs_f64()
}
