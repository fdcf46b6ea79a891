//! `Settings::get` against a bare `ArcSwap` load in the same run.
//!
//! Run with `cargo xtask bench -p keel-settings-sync --bench settings`.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_settings_sync::{DbSettingsStore, MonitoringSettings, Settings, SettingsConfig, SettingsDeps};
use keel_store::{Bus, Cache, Database, DbConfig};
use keel_telemetry::Telemetry;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings: Settings<MonitoringSettings> = runtime.block_on(async {
        let telemetry = Telemetry::new("bench").expect("telemetry");
        let db = Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry)
            .await
            .expect("database");
        db.run_migrations().await.expect("migrations");
        let deps =
            SettingsDeps::new(Arc::new(DbSettingsStore::new(db)), Cache::memory(), Bus::memory(&telemetry), telemetry);
        Settings::open("monitoring", deps, SettingsConfig::default()).await.expect("open")
    });
    let baseline = ArcSwap::from_pointee(MonitoringSettings::default());

    let mut group = c.benchmark_group("settings_get");
    group.bench_function("bare_arcswap_load", |b| b.iter(|| black_box(black_box(&baseline).load().log_level.len())));
    group.bench_function("bare_arcswap_load_full", |b| b.iter(|| black_box(black_box(&baseline).load_full())));
    group.bench_function("settings_get", |b| b.iter(|| black_box(black_box(&settings).get())));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
