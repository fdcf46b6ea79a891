//! Durable mode end to end: producers `XADD` into a Redis Stream, one
//! consumer persists into PostgreSQL and acknowledges. Reports items/s and
//! the enqueue → persisted latency of every item.
//!
//! Run with `cargo xtask bench -p keel-write-behind --bench durable` (needs
//! the local PostgreSQL and Redis, like the tests).

// The report printed to standard output is this benchmark's result.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use keel_store::testing::{TempDatabase, redis, unique_prefix};
use keel_telemetry::Telemetry;
use keel_write_behind::{
    DbDeadLetters, DbEntries, DurableConfig, DurableConsumer, DurableProducer, EntryWrite, RepoFuture, Repository,
};
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
    let stream = unique_prefix("durable_bench");
    let config = DurableConfig {
        capacity: 100_000,
        idle_poll: Duration::from_millis(5),
        ..DurableConfig::new(&stream, "bench", "c1")
    };
    let repository = Arc::new(Timed { inner: DbEntries::new(database.clone()), latencies: Mutex::default() });
    let consumer = DurableConsumer::new(
        store.clone(),
        config.clone(),
        repository.clone(),
        Arc::new(DbDeadLetters::new(database.clone(), "bench")),
    )
    .await
    .expect("consumer");
    let stop = CancellationToken::new();
    let consuming = {
        let stop = stop.clone();
        tokio::spawn(async move {
            consumer.run(stop).await;
            consumer
        })
    };

    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let producer = DurableProducer::new(store.clone(), config.clone());
            tokio::spawn(async move {
                for i in (p..ITEMS).step_by(PRODUCERS) {
                    let write = EntryWrite {
                        key: format!("key-{i}"),
                        value: serde_json::json!({"n": i}),
                        version: 1,
                        updated_at_us: keel_core::unix_micros(SystemTime::now()),
                        deleted: false,
                    };
                    producer.enqueue(&write).await.expect("enqueue");
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
    let consumer = consuming.await.expect("consumer");
    assert_eq!(consumer.metrics().persisted, ITEMS as u64);

    let mut latencies = repository.latencies.lock().expect("lock").clone();
    latencies.sort();
    println!(
        "durable write-behind, {ITEMS} items, {PRODUCERS} producers, one consumer, Redis + PostgreSQL on loopback"
    );
    println!("  enqueue rate                 {:>10.0} items/s", ITEMS as f64 / produced.as_secs_f64());
    println!("  end to end (all persisted)   {:>10.0} items/s", ITEMS as f64 / total.as_secs_f64());
    println!(
        "  enqueue -> persisted latency p50 {:.1?}  p90 {:.1?}  p99 {:.1?}  max {:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    let _: i64 = store.client().del(&stream).await.expect("del");
    drop(database);
    temp.drop_database().await;
}
