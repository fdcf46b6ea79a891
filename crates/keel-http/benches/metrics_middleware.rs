//! Cost of the golden-signal metrics layer: the same axum router through
//! `oneshot`, with and without [`keel_http::HttpMetrics::layer`].
//!
//! Run with `cargo xtask bench -p keel-http --bench metrics_middleware`.

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_http::HttpMetrics;
use keel_telemetry::Telemetry;
use tower::ServiceExt as _;

fn routes() -> Router {
    Router::new().route("/x/{id}", get(|| async { "x" })).route("/y", get(|| async { "y" }))
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let plain = routes();
    let measured = routes().layer(HttpMetrics::new(&telemetry).layer());

    let mut group = c.benchmark_group("metrics_middleware");
    for (name, router) in [("without", plain), ("with", measured)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move {
                    let request = Request::get("/x/42").body(Body::empty()).expect("request");
                    let response = router.oneshot(request).await.expect("infallible");
                    assert_eq!(response.status(), 200);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
