//! `GET /status` (JSON) through `oneshot`, with 10, 100 and 1,000
//! components (a third of them in a `must` group, half in a `quorum` group,
//! the rest standalone), beside `GET /livez` on the same router: the whole
//! registry (served from its rendered copy while that is current), and
//! `?filter=*` (the same components, rendered on every request).
//!
//! Run with `cargo xtask bench -p keel-http --bench status`.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_core::Shutdown;
use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report, StatusCodes};
use keel_http::{AppInfo, health_api};
use tower::ServiceExt as _;

fn router(runtime: &tokio::runtime::Runtime, components: usize) -> axum::Router {
    let names: Vec<String> = (0..components).map(|i| format!("component-{i}")).collect();
    let (must, quorum) = (components * 3 / 10, components * 8 / 10);
    let groups = MandatoryList::new(vec![
        Mandatory::new("storage", Mode::Must, names[0..must].to_vec()),
        Mandatory::new("upstreams", Mode::Quorum, names[must..quorum].to_vec()),
    ])
    .expect("groups");
    runtime.block_on(async {
        let health = Health::new(groups, Mode::Must);
        for name in &names {
            health
                .register(ComponentSpec::new(name.clone()).interval(Duration::from_secs(3600)), || async {
                    Report::ok()
                })
                .expect("register");
        }
        health.first_checks().await;
        axum::Router::from(health_api(health, AppInfo::build("bench"), StatusCodes::default(), Shutdown::new()))
            .with_state(())
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("status_json");
    for components in [10, 100, 1_000] {
        let router = router(&runtime, components);
        for (label, path) in [("livez", "/livez"), ("status", "/status"), ("status_filtered", "/status?filter=*")] {
            let name = format!("{label}_{components}_components");
            group.bench_function(name, |b| {
                b.to_async(&runtime).iter(|| {
                    let router = router.clone();
                    async move {
                        let response = router
                            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
                            .await
                            .expect("infallible");
                        assert!(response.status().is_success(), "{path}: {}", response.status());
                        let body = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
                        assert!(!body.is_empty());
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
