//! Typed settings with keel-settings-sync, followed across two instances:
//! each has its own in-process cache (as two processes would), both share
//! the database of record and the invalidation bus. A write on one reaches
//! the other through the bus within milliseconds; reads never leave the
//! process. In a cluster, the database is PostgreSQL and the cache and bus
//! are Redis; here everything is embedded.
//!
//! Run it with `cargo run -p keel-settings-sync --example follow`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::sync::Arc;
use std::time::Duration;

use keel_settings_sync::{DbSettingsStore, Settings, SettingsConfig, SettingsDeps};
use keel_store::{Bus, Cache, Database, DbConfig};
use keel_telemetry::Telemetry;

// The schema derive through keel-settings-sync's re-export: no schemars
// dependency of your own.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, keel_settings_sync::schemars::JsonSchema,
)]
#[schemars(crate = "keel_settings_sync::schemars")]
struct Flags {
    dark_mode: bool,
    max_upload_mb: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::new("example")?;
    let data_dir = std::env::temp_dir().join(format!("keel-settings-example-{}", std::process::id()));
    let db = Database::connect(&DbConfig { data_dir: data_dir.clone(), ..DbConfig::default() }, &telemetry).await?;
    db.run_migrations().await?;
    let store = Arc::new(DbSettingsStore::new(db));
    let bus = Bus::memory(&telemetry);

    let deps = || SettingsDeps::new(store.clone(), Cache::memory(), bus.clone(), telemetry.clone());
    let writer: Settings<Flags> = Settings::open("flags", deps(), SettingsConfig::default()).await?;
    let follower: Settings<Flags> = Settings::open("flags", deps(), SettingsConfig::default()).await?;
    assert_eq!(*follower.get(), Flags::default());

    let mut changes = follower.subscribe();
    let written = writer.update(Flags { dark_mode: true, max_upload_mb: 64 }, Some(0), "ada").await?;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await??;
    println!("version {} by {} reached the follower in {:?}", written.version, written.updated_by, started.elapsed());

    assert_eq!(*follower.get(), Flags { dark_mode: true, max_upload_mb: 64 });
    assert_eq!(follower.version(), 1);

    // A stale writer is refused: the version it read is no longer current.
    let stale = follower.update(Flags::default(), Some(0), "bob").await;
    println!("stale write refused: {}", stale.as_ref().map(|_| "no").unwrap_or("yes"));
    assert!(stale.is_err());

    drop((writer, follower, store));
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
