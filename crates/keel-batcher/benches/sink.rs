//! PostgreSQL write throughput for 500-row batches of agent metadata:
//! the batcher's UNNEST upsert against (a) one upsert statement per row,
//! (b) binary `COPY` into an unlogged table of the same shape, and (c) binary
//! `COPY` into a staging table plus the same guarded merge
//! (`Database::copy_merge`, which the entries repository uses for its big
//! batches; for these plain-text rows it is not faster, so the sink keeps
//! UNNEST). The sink and (c) alternate in five rounds (medians).
//! Then the batcher's flush time (defaults: batches of 500, this sink) for
//! 500 and 5,000 unique keys added at once: from the first `add` to the
//! last row written.
//!
//! Run with `cargo xtask bench -p keel-batcher --bench sink` (needs the local
//! PostgreSQL, like the tests).

// The report printed to standard output is this benchmark's result.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::pin_mut;
use keel_batcher::{BatchSink, Batcher, BatcherConfig, DbMetadataSink, MetadataKey, MetadataValue};
use keel_store::CopyMerge;
use keel_store::testing::TempDatabase;
use keel_telemetry::Telemetry;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

const BATCH: usize = 500;
const BATCHES: usize = 20;
const ROUNDS: usize = 5;

/// The sink's guarded upsert as a merge from a `COPY` staging table.
const STAGED: CopyMerge = CopyMerge {
    stage: "bench_agent_metadata_stage",
    columns: "agent_id uuid, key text, value text, error text, collected_at timestamptz",
    types: &[Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ],
    merge: "INSERT INTO agent_metadata (agent_id, key, value, error, collected_at) \
        SELECT agent_id, key, value, error, collected_at FROM bench_agent_metadata_stage \
        ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value, error = excluded.error, collected_at = excluded.collected_at \
        WHERE excluded.collected_at >= agent_metadata.collected_at",
};

fn staged_row((k, v): &(MetadataKey, MetadataValue)) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
    [&k.agent_id, &k.key, &v.value, &v.error, &v.collected_at]
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn batch(round: usize, agents: &[Uuid]) -> Vec<(MetadataKey, MetadataValue)> {
    let at = SystemTime::now();
    (0..BATCH)
        .map(|i| {
            (
                MetadataKey { agent_id: agents[i % agents.len()], key: format!("key-{}", i / agents.len()) },
                MetadataValue { value: format!("value-{round}-{i}"), error: String::new(), collected_at: at },
            )
        })
        .collect()
}

fn report(label: &str, rows: usize, took: Duration, baseline: Option<f64>) -> f64 {
    let rate = rows as f64 / took.as_secs_f64();
    match baseline {
        Some(base) => println!("{label:<44} {rate:>12.0} rows/s  ({:.2}x the UNNEST sink)", rate / base),
        None => println!("{label:<44} {rate:>12.0} rows/s"),
    }
    rate
}

const PER_ROW: &str = "INSERT INTO agent_metadata (agent_id, key, value, error, collected_at) \
    VALUES ($1::uuid, $2, $3, $4, to_timestamp($5::double precision / 1000000)) \
    ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value, error = excluded.error, collected_at = excluded.collected_at \
    WHERE excluded.collected_at >= agent_metadata.collected_at";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench binary
    }
    let temp = TempDatabase::create("sink_bench").await;
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.expect("migrations");
    let agents: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let sink = DbMetadataSink::new(database.clone());
    println!("agent metadata, {BATCHES} batches of {BATCH} rows (upserts of the same keys after the first round)");

    sink.write(&batch(0, &agents)).await.expect("warm-up");
    let other: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let staged = |b: Vec<(MetadataKey, MetadataValue)>| {
        let database = database.clone();
        async move {
            assert!(database.copy_merge(&STAGED, &b, staged_row).await.expect("copy merge"));
        }
    };
    staged(batch(0, &other)).await;
    let (mut sunk, mut merged) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let started = Instant::now();
        for round in 1..=BATCHES {
            sink.write(&batch(r * BATCHES + round, &agents)).await.expect("write");
        }
        sunk.push(started.elapsed());
        let started = Instant::now();
        for round in 1..=BATCHES {
            staged(batch(r * BATCHES + round, &other)).await;
        }
        merged.push(started.elapsed());
    }
    let rows = BATCH * BATCHES;
    let rates = |took: Vec<Duration>| median(took.iter().map(|t| rows as f64 / t.as_secs_f64()).collect());
    let unnest = rates(sunk);
    println!("{:<44} {unnest:>12.0} rows/s", "UNNEST upsert, one statement per batch");
    let merged = rates(merged);
    println!(
        "{:<44} {merged:>12.0} rows/s  ({:.2}x the UNNEST sink)",
        "(c) COPY to a staging table + guarded merge",
        merged / unnest
    );

    let mut conn = AsyncPgConnection::establish(temp.url()).await.expect("connect");
    let started = Instant::now();
    for round in 1..=BATCHES {
        for (key, value) in batch(round, &agents) {
            diesel::sql_query(PER_ROW)
                .bind::<Text, _>(key.agent_id.to_string())
                .bind::<Text, _>(&key.key)
                .bind::<Text, _>(&value.value)
                .bind::<Text, _>(&value.error)
                .bind::<BigInt, _>(keel_core::unix_micros(value.collected_at))
                .execute(&mut conn)
                .await
                .expect("row");
        }
    }
    report("(a) one upsert statement per row", BATCH * BATCHES, started.elapsed(), Some(unnest));

    conn.batch_execute(
        "CREATE UNLOGGED TABLE copy_target (agent_id uuid, key text, value text, error text, collected_at timestamptz)",
    )
    .await
    .expect("table");
    let (client, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let types = [Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ];
    let started = Instant::now();
    for round in 1..=BATCHES {
        let sink = client
            .copy_in("COPY copy_target (agent_id, key, value, error, collected_at) FROM STDIN BINARY")
            .await
            .expect("copy");
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for (key, value) in batch(round, &agents) {
            let key_name = format!("{}-r{round}", key.key);
            writer
                .as_mut()
                .write(&[&key.agent_id, &key_name, &value.value, &value.error, &value.collected_at])
                .await
                .expect("copy row");
        }
        writer.finish().await.expect("copy finish");
    }
    report("(b) binary COPY, unlogged table, same shape", BATCH * BATCHES, started.elapsed(), Some(unnest));

    println!("\nbatcher flush, default configuration, unique keys added at once");
    println!("| unique keys | flush time | rows/s |");
    println!("|---|---|---|");
    for keys in [500, 5_000] {
        let batcher: Batcher<MetadataKey, MetadataValue> =
            Batcher::start("bench", BatcherConfig::default(), Arc::new(DbMetadataSink::new(database.clone())))
                .expect("batcher");
        let at = SystemTime::now();
        let agent = Uuid::new_v4();
        let started = Instant::now();
        for i in 0..keys {
            let key = MetadataKey { agent_id: agent, key: format!("flush-{i}") };
            let value = MetadataValue { value: format!("v{i}"), error: String::new(), collected_at: at };
            while batcher.add(key.clone(), value.clone()).is_err() {
                tokio::task::yield_now().await;
            }
        }
        while batcher.stats().flushed < keys as u64 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = started.elapsed();
        println!("| {keys} | {took:.1?} | {:.0} |", keys as f64 / took.as_secs_f64());
        batcher.shutdown().await;
    }
    drop((conn, client, sink, database));
    temp.drop_database().await;
}
