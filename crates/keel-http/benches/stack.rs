//! The whole middleware stack (`middleware::apply`: request id, span,
//! metrics, error envelope, timeout, body limit, panic catching) around a
//! `/livez`-like handler, against the same router bare, through `oneshot`,
//! with the subscriber the binaries install (JSON lines, live filter at
//! `info`; nothing is logged at that level per request).
//!
//! Run with `cargo xtask bench -p keel-http --bench stack`.

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_http::{HttpMetrics, MiddlewareConfig, middleware};
use keel_telemetry::{LogFormat, Telemetry};
use tower::ServiceExt as _;

fn routes() -> Router {
    Router::new().route("/livez", get(|| async { "ok" }))
}

fn bench(c: &mut Criterion) {
    let _log = keel_telemetry::init_logging(LogFormat::Json, "info").expect("logging");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let bare = routes().with_state(());
    let full = middleware::apply(routes(), &MiddlewareConfig::default(), &HttpMetrics::new(&telemetry));
    let mut group = c.benchmark_group("middleware_stack");
    for (name, router) in [("bare", bare), ("keel", full)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move {
                    let request = Request::get("/livez").body(Body::empty()).expect("request");
                    let response = router.oneshot(request).await.expect("infallible");
                    assert_eq!(response.status(), 200);
                    let body = axum::body::to_bytes(response.into_body(), 64).await.expect("body");
                    assert_eq!(&body[..], b"ok");
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
