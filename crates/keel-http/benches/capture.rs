//! Request throughput with operator log capture on versus off, in one run.
//!
//! The router is Keel's full middleware stack (request id, trace span,
//! golden-signal metrics with per-route stats, error envelope, timeout, body
//! limit, panic catching) around a handler that logs one INFO line, as a
//! typical handler does. Logging goes through the same subscriber the
//! binaries install: the live filter, the capture layer and JSON lines (to a
//! discarding writer here instead of standard error). With capture on,
//! records are drained to a real Redis list (`KEEL_TEST_REDIS_URL`, default
//! the local server) on another thread, as in cluster mode.
//!
//! Two groups: `capture` calls the router in-process (`oneshot`), the worst
//! case since nothing else costs anything; `capture_http` sends real
//! HTTP/1.1 requests over a keep-alive loopback connection to the router
//! served by `axum::serve`, i.e. the api's request throughput.
//!
//! Run with `cargo xtask bench -p keel-http --bench capture`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::Request;
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keel_http::{HttpMetrics, MiddlewareConfig, middleware};
use keel_monitoring::{Capture, CaptureConfig, HttpStats, Redactor, RedisLogs};
use keel_telemetry::Telemetry;
use tower::ServiceExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

async fn handler(Path(id): Path<u64>) -> &'static str {
    tracing::info!(user = id, "profile served");
    "ok"
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let telemetry = Telemetry::new("bench").expect("telemetry");
    let metrics = HttpMetrics::with_stats(&telemetry, HttpStats::new());
    let router =
        middleware::apply(Router::new().route("/users/{id}", get(handler)), &MiddlewareConfig::default(), &metrics);

    let (capture, records) = Capture::new(CaptureConfig::new("api", "bench"), Redactor::new(["s3cret"]));
    let redis_url = std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = runtime
        .block_on(keel_store::RedisStore::connect(&keel_store::RedisConfig::new(redis_url), &telemetry))
        .expect("the capture benchmark needs Redis (KEEL_TEST_REDIS_URL)");
    let logs = RedisLogs::new(redis, format!("bench-{}", std::process::id()), 1000);
    let sink: Arc<dyn keel_monitoring::LogSink> = if std::env::var("KEEL_BENCH_SINK").as_deref() == Ok("memory") {
        Arc::new(keel_monitoring::MemoryLogs::new(1000))
    } else {
        Arc::new(logs.clone())
    };
    runtime.spawn(Capture::drain(records, sink, 500, Duration::from_millis(50)));
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(capture.layer())
        .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::sink));
    tracing::subscriber::set_global_default(subscriber).expect("subscriber");

    let mut group = c.benchmark_group("capture");
    group.throughput(Throughput::Elements(1));
    for (name, enabled) in [("off", false), ("on", true)] {
        capture.set_enabled(enabled);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move {
                    let request = Request::get("/users/42").body(Body::empty()).expect("request");
                    let response = router.oneshot(request).await.expect("infallible");
                    assert_eq!(response.status(), 200);
                }
            });
        });
    }
    group.finish();

    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("listener");
    let addr = listener.local_addr().expect("addr");
    let served = router.clone();
    runtime.spawn(async move { axum::serve(listener, served).await });
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}/users/42").parse().expect("uri");
    let mut group = c.benchmark_group("capture_http");
    group.throughput(Throughput::Elements(1));
    for (name, enabled) in [("off", false), ("on", true)] {
        capture.set_enabled(enabled);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let (client, uri) = (client.clone(), uri.clone());
                async move {
                    let response = client.get(uri).await.expect("request");
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.expect("body");
                }
            });
        });
    }
    group.finish();
    interleaved(&runtime, &capture, "capture", &Target::Router(&router), 20_000);
    interleaved(&runtime, &capture, "capture_http", &Target::Http(&client, &uri), 2_000);
    eprintln!("capture: {} records captured, {} dropped (buffer full)", capture.captured(), capture.dropped());
    let _ = runtime.block_on(logs.clear("api"));
}

/// Where the interleaved comparison sends its requests.
enum Target<'a> {
    /// The router, in-process.
    Router(&'a Router),
    /// The served router, over a keep-alive loopback connection.
    Http(&'a Client<HttpConnector, Empty<Bytes>>, &'a http::Uri),
}

/// Criterion measures `off` and `on` one after the other, so drift on a
/// shared machine lands in the comparison. This alternates them instead: 41
/// rounds of `requests` each way, the order swapped every round, and reports
/// the median of the per-round ratios and its middle half.
fn interleaved(runtime: &tokio::runtime::Runtime, capture: &Capture, name: &str, target: &Target<'_>, requests: u32) {
    const ROUNDS: usize = 41;
    let run = |enabled: bool| {
        capture.set_enabled(enabled);
        let started = std::time::Instant::now();
        runtime.block_on(async {
            for _ in 0..requests {
                let status = match target {
                    Target::Router(router) => {
                        let request = Request::get("/users/42").body(Body::empty()).expect("request");
                        Router::clone(router).oneshot(request).await.expect("infallible").status()
                    }
                    Target::Http(client, uri) => {
                        let response = client.get((*uri).clone()).await.expect("request");
                        let status = response.status();
                        response.into_body().collect().await.expect("body");
                        status
                    }
                };
                assert_eq!(status, 200);
            }
        });
        f64::from(requests) / started.elapsed().as_secs_f64()
    };
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut off_total, mut on_total) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let (off, on) = if round % 2 == 0 {
            let off = run(false);
            (off, run(true))
        } else {
            let on = run(true);
            (run(false), on)
        };
        off_total += off;
        on_total += on;
        ratios.push(on / off);
    }
    ratios.sort_by(f64::total_cmp);
    let n = ROUNDS as f64;
    eprintln!(
        "{name} interleaved: off {:.2}k req/s, on {:.2}k req/s (means); median on/off {:.3} \
         (loss {:.1} %), middle half {:.3}..{:.3}",
        off_total / n / 1000.0,
        on_total / n / 1000.0,
        ratios[ROUNDS / 2],
        (1.0 - ratios[ROUNDS / 2]) * 100.0,
        ratios[ROUNDS / 4],
        ratios[3 * ROUNDS / 4],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
