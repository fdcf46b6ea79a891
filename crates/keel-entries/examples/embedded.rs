//! The entries service (feature `entries`): versioned JSON values behind a
//! cache, acknowledged once they are in the cache and on the local
//! write-ahead log (fdatasync'd), persisted to the database behind the
//! caller's back. Here everything is embedded: SQLite, an in-process cache,
//! the local log in a temporary directory. With Redis, `EntrySink::Durable`
//! puts the queue on Redis Streams instead.
//!
//! Run it with `cargo run -p keel-write-behind --features entries,sqlite --example entries`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::sync::Arc;

use keel_store::{Cache, Database, DbConfig};
use keel_telemetry::Telemetry;
use keel_write_behind::{
    DbDeadLetters, DbEntries, Entries, EntrySink, LocalLog, LocalLogConfig, WriteBehind, WriteBehindConfig,
};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::new("example")?;
    let dir = std::env::temp_dir().join(format!("keel-entries-example-{}", std::process::id()));
    let db = Database::connect(&DbConfig { data_dir: dir.clone(), ..DbConfig::default() }, &telemetry).await?;
    db.run_migrations().await?;

    let store = DbEntries::new(db.clone());
    let log = LocalLog::open(LocalLogConfig::new(dir.join("log")))?;
    let queue = WriteBehind::start_logged(
        WriteBehindConfig::default(),
        Arc::new(store.clone()),
        Arc::new(DbDeadLetters::new(db.clone(), "entries")),
        log,
    )?;
    let entries = Entries::new(Cache::memory(), "example", EntrySink::Memory(queue.clone()), store.clone());

    let version = entries.put("user:42", json!({"name": "Ada", "plan": "pro"})).await?;
    let read = entries.get("user:42").await?.ok_or("the entry was just written")?;
    assert_eq!((read.version, &read.value["plan"]), (version, &json!("pro")));
    println!("user:42 acknowledged at version {version}, read back from the cache");

    // Shutdown persists everything acknowledged; a fresh service with an
    // empty cache reads it from the database.
    queue.shutdown().await;
    let cold = Entries::new(Cache::memory(), "example", EntrySink::Memory(queue), store);
    let stored = cold.get("user:42").await?.ok_or("the entry was persisted")?;
    assert_eq!(stored.version, version);
    println!("user:42 read from SQLite: {}", stored.value);

    drop((entries, cold, db));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
