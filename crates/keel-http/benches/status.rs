//! `GET /status` (JSON, 10 components) rendered through `oneshot`.
//!
//! Run with `cargo xtask bench -p keel-http --bench status`.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_core::Shutdown;
use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report, StatusCodes};
use keel_http::{AppInfo, health_router};
use tower::ServiceExt as _;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let names: Vec<String> = (0..10).map(|i| format!("component-{i}")).collect();
    let groups = MandatoryList::new(vec![
        Mandatory::new("storage", Mode::Must, names[0..3].to_vec()),
        Mandatory::new("upstreams", Mode::Quorum, names[3..8].to_vec()),
    ])
    .expect("groups");
    let router = runtime.block_on(async {
        let health = Health::new(groups, Mode::Must);
        for name in &names {
            health
                .register(ComponentSpec::new(name.clone()).interval(Duration::from_secs(3600)), || async {
                    Report::ok()
                })
                .expect("register");
        }
        health.first_checks().await;
        health_router(health, AppInfo::build("bench"), StatusCodes::default(), Shutdown::new())
    });

    c.bench_function("status_json_10_components", |b| {
        b.to_async(&runtime).iter(|| {
            let router = router.clone();
            async move {
                let response = router
                    .oneshot(Request::get("/status").body(Body::empty()).expect("request"))
                    .await
                    .expect("infallible");
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
                assert!(body.len() > 1000);
            }
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
