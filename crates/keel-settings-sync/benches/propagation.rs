//! Propagation latency of an update between two `Settings` instances with
//! their own connections (two "pods") on PostgreSQL + Redis over loopback,
//! against a Redis `GET` round trip measured in the same run.
//!
//! Run with `cargo xtask bench -p keel-settings-sync --bench propagation`
//! (needs the local PostgreSQL and Redis, like the tests).

// The report printed to standard output is this benchmark's result.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use keel_settings_sync::{DbSettingsStore, Settings, SettingsConfig, SettingsDeps};
use keel_store::testing::{TempDatabase, redis, unique_prefix};
use keel_store::{Bus, Cache};
use keel_telemetry::Telemetry;

const UPDATES: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Doc {
    n: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<34} n={:<4} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

async fn pod(temp: &TempDatabase, name: &str) -> (Settings<Doc>, keel_store::RedisStore) {
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.expect("migrations");
    let store = redis(&telemetry).await;
    let bus = Bus::redis(&store, &keel_core::Shutdown::new(), &telemetry).await.expect("bus");
    let deps = SettingsDeps::new(Arc::new(DbSettingsStore::new(database)), Cache::redis(store.clone()), bus, telemetry);
    let config = SettingsConfig { namespace: name.to_owned(), ..SettingsConfig::default() };
    (Settings::open("bench", deps, config).await.expect("open"), store)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench binary
    }
    let temp = TempDatabase::create("propagation").await;
    let namespace = unique_prefix("prop");
    let (writer, redis_store) = pod(&temp, &namespace).await;
    let (reader, _) = pod(&temp, &namespace).await;
    let mut changes = reader.subscribe();

    let key = format!("{namespace}:bench-rtt");
    let _: () = redis_store.client().set(&key, "x", None, None, false).await.expect("set");
    let mut rtt = Vec::with_capacity(UPDATES);
    for _ in 0..UPDATES {
        let start = Instant::now();
        let _: Option<String> = redis_store.client().get(&key).await.expect("get");
        rtt.push(start.elapsed());
    }

    let mut commit_to_visible = Vec::with_capacity(UPDATES);
    let mut update_call = Vec::with_capacity(UPDATES);
    for n in 1..=UPDATES as u64 {
        let start = Instant::now();
        writer.update(Doc { n }, None, "bench").await.expect("update");
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), async {
            while reader.get().n < n {
                changes.changed().await.expect("reader alive");
            }
        })
        .await
        .expect("update never reached the other instance");
        let visible = Instant::now();
        update_call.push(committed - start);
        commit_to_visible.push(visible - committed);
    }
    let _: i64 = redis_store.client().del(&key).await.expect("del");

    println!("settings propagation over loopback (PostgreSQL + Redis), {UPDATES} updates");
    report("redis GET round trip (baseline)", rtt);
    report("update() call (tx + cache + publish)", update_call);
    report("update returned -> visible on peer", commit_to_visible);
    drop((writer, reader));
    temp.drop_database().await;
}
