//! The entries service embedded: SQLite, an in-process cache, and the local
//! write-ahead log in a temporary directory. Each write is acknowledged once
//! it is cached and on the log (fdatasync'd), and persisted to the database
//! behind the caller's back. Give [`EntryStores::with_redis`] a Redis store
//! (feature `redis`) and the writes go to Redis Streams instead; nothing else
//! changes.
//!
//! Run it with `cargo run -p keel-entries --no-default-features --features sqlite --example embedded`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::time::Duration;

use keel_entries::{Entries, EntriesConfig, EntryError, EntryStores, LocalLog, LocalLogConfig};
use keel_store::{Cache, Database, DbConfig};
use keel_telemetry::Telemetry;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::new("example")?;
    let dir = std::env::temp_dir().join(format!("keel-entries-example-{}", std::process::id()));
    let database = Database::connect(&DbConfig { data_dir: dir.clone(), ..DbConfig::default() }, &telemetry).await?;
    database.run_migrations().await?;
    let shutdown = keel_core::Shutdown::new();
    let stores = |log| EntryStores::new(database.clone(), Cache::memory()).with_local_log(log);

    let log = LocalLog::open(LocalLogConfig::new(dir.join("log")))?;
    let config = EntriesConfig::new("example", "instance-1");
    let entries = Entries::start(config.clone(), stores(Some(log)), &shutdown, &telemetry).await?;
    let version = entries.put("user:42", json!({"name": "Ada", "plan": "pro"})).await?;
    let read = entries.get("user:42").await?.ok_or("the entry was just written")?;
    assert_eq!((read.version, &read.value["plan"]), (version, &json!("pro")));
    println!("user:42 acknowledged at version {version}, read back from the cache");

    // The rules hold for every caller: nothing the database would refuse is queued.
    let refused = entries.put("user:43", json!({"name": "nul\u{0}"})).await.err();
    assert_eq!(refused, Some(EntryError::Nul("value.name".into())));
    println!("a value holding U+0000 is refused: {}", refused.map(|e| e.to_string()).unwrap_or_default());

    // Closing persists everything acknowledged; a fresh service with an
    // empty cache reads it from the database.
    let drained = entries.close(Duration::from_secs(5)).await.ok_or("an in-process queue")?;
    assert_eq!(drained.persisted, 1);
    let cold = Entries::start(config, stores(None), &shutdown, &telemetry).await?;
    let stored = cold.get("user:42").await?.ok_or("the entry was persisted")?;
    assert_eq!(stored.version, version);
    println!("user:42 read from SQLite: {}", stored.value);

    cold.close(Duration::from_secs(1)).await;
    drop((entries, cold, database));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
