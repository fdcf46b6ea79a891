//! Cost of the golden-signal metrics layer.
//!
//! - `router/*`: the same axum router through `oneshot`, bare, behind a
//!   pass-through layer (what any `Router::layer` costs: axum boxes it
//!   around every route) and behind [`keel_http::HttpMetrics::layer`].
//! - `service/*`: a handler that answers at once, called directly, with and
//!   without the metrics layer around it: the difference is what the
//!   metrics cost a request (timing, the active gauge, one record).
//!
//! Run with `cargo xtask bench -p keel-http --bench metrics_middleware`.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use keel_http::HttpMetrics;
use keel_telemetry::Telemetry;
use tower::{Layer as _, Service, ServiceExt as _};

fn routes() -> Router {
    Router::new().route("/x/{id}", get(|| async { "x" })).route("/y", get(|| async { "y" }))
}

fn through_router(c: &mut Criterion, telemetry: &Telemetry) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // `with_state` turns handlers into services once, as `axum::serve` does;
    // without it axum would apply the layers again on every request.
    let bare = routes().with_state(());
    let pass_through =
        routes().layer(tower::util::MapRequestLayer::new(|request: Request<Body>| request)).with_state(());
    let measured = routes().layer(HttpMetrics::new(telemetry).layer()).with_state(());

    let mut group = c.benchmark_group("metrics_middleware/router");
    for (name, router) in [("bare", bare), ("baseline", pass_through), ("metrics", measured)] {
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

fn handler() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(|_request: Request<()>| std::future::ready(Ok::<_, Infallible>(Response::new(()))))
}

fn call<S>(service: &mut S) -> u16
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let request = Request::get("/x/42").body(()).expect("request");
    let response = service.call(request).now_or_never().expect("ready").expect("infallible");
    response.status().as_u16()
}

fn around_a_service(c: &mut Criterion, telemetry: &Telemetry) {
    let mut plain = handler();
    let mut measured = HttpMetrics::new(telemetry).layer().layer(handler());
    let mut group = c.benchmark_group("metrics_middleware/service");
    group.bench_function("baseline", |b| b.iter(|| assert_eq!(call(&mut plain), 200)));
    group.bench_function("metrics", |b| b.iter(|| assert_eq!(call(&mut measured), 200)));
    group.finish();
}

fn bench(c: &mut Criterion) {
    let telemetry = Telemetry::new("bench").expect("telemetry");
    around_a_service(c, &telemetry);
    through_router(c, &telemetry);
}

criterion_group!(benches, bench);
criterion_main!(benches);
