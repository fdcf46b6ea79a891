//! Storage with keel-store and nothing installed: an embedded SQLite
//! database (migrated, pooled, timed into metrics), an in-process cache with
//! expiry and an in-process publish/subscribe bus. Give `DbConfig::url` a
//! `postgres://` URL, or build `Cache::redis` / `Bus::redis` on a
//! `RedisStore::connect`, and the same calls run against PostgreSQL and Redis.
//!
//! Run it with `cargo run -p keel-store --example embedded`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::time::Duration;

use bytes::Bytes;
use keel_store::{Backend, Bus, Cache, Database, DbConfig};
use keel_telemetry::Telemetry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::new("example")?;
    let data_dir = std::env::temp_dir().join(format!("keel-store-example-{}", std::process::id()));

    let db = Database::connect(&DbConfig { data_dir: data_dir.clone(), ..DbConfig::default() }, &telemetry).await?;
    assert_eq!(db.backend(), Backend::Sqlite);
    let applied = db.run_migrations().await?;
    db.ping().await?;
    let pool = db.pool_status();
    println!("SQLite at {}: {applied} migration(s) applied, pool {}/{}", db.url(), pool.in_use, pool.max);

    let cache = Cache::memory();
    cache.set("greeting", Bytes::from_static(b"hello"), Duration::from_secs(60)).await?;
    assert_eq!(cache.get("greeting").await?.as_deref(), Some(&b"hello"[..]));

    let bus = Bus::memory(&telemetry);
    let mut events = bus.subscribe("events").await?;
    bus.publish("events", Bytes::from_static(b"settings changed")).await?;
    let received = events.recv().await.ok_or("the bus closed")?;
    println!("bus delivered {:?}", String::from_utf8_lossy(&received));

    let text = telemetry.encode()?;
    assert!(text.contains("db_client_connection_max"), "pool gauges are exported");
    drop(db);
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
