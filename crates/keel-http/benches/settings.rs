//! `GET /api/v1/settings/{name}` through `oneshot` with 1 and 100 documents
//! registered (embedded SQLite, in-process cache): the read is served from
//! the document's in-memory copy, so the count should not show.
//!
//! Run with `cargo xtask bench -p keel-http --bench settings`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_http::settings_api;
use keel_settings_sync::{
    DbSettingsStore, MonitoringSettings, Settings, SettingsConfig, SettingsDeps, SettingsRegistry,
};
use keel_store::{Bus, Cache, Database, DbConfig};
use keel_telemetry::Telemetry;
use tower::ServiceExt as _;

fn router(runtime: &tokio::runtime::Runtime, documents: usize, dir: &std::path::Path) -> axum::Router {
    runtime.block_on(async {
        let telemetry = Telemetry::new("bench").expect("telemetry");
        let db = Database::connect(&DbConfig { data_dir: dir.into(), ..DbConfig::default() }, &telemetry)
            .await
            .expect("database");
        db.run_migrations().await.expect("migrations");
        let deps =
            SettingsDeps::new(Arc::new(DbSettingsStore::new(db)), Cache::memory(), Bus::memory(&telemetry), telemetry);
        let mut registry = SettingsRegistry::new();
        for n in 0..documents {
            let settings: Settings<MonitoringSettings> =
                Settings::open(&format!("document-{n}"), deps.clone(), SettingsConfig::default()).await.expect("open");
            registry.register(settings);
        }
        axum::Router::from(settings_api(registry, None)).with_state(())
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("settings_get");
    for documents in [1, 100] {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = router(&runtime, documents, dir.path());
        group.bench_function(format!("{documents}_documents"), |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move {
                    let request = Request::get("/api/v1/settings/document-0").body(Body::empty()).expect("request");
                    let response = router.oneshot(request).await.expect("infallible");
                    assert_eq!(response.status(), 200);
                    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
                    assert!(!body.is_empty());
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
