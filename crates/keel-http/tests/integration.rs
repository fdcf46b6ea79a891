//! keel-http middleware and operational endpoints, through `oneshot`.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use keel_core::Shutdown;
use keel_http::{HttpMetrics, MiddlewareConfig, metrics_api, middleware};
use keel_telemetry::Telemetry;
use tower::ServiceExt as _;

fn app(telemetry: &Telemetry, config: &MiddlewareConfig) -> Router {
    let routes = Router::new()
        .route("/x/{id}", get(|| async { "x" }))
        .route("/echo", post(|body: String| async move { body }))
        .route("/json", post(|axum::Json(v): axum::Json<serde_json::Value>| async move { axum::Json(v) }))
        .route("/boom", get(boom))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .merge(axum::Router::from(metrics_api(telemetry.clone())));
    middleware::apply(routes, config, &HttpMetrics::new(telemetry))
}

async fn boom() -> &'static str {
    panic!("handler exploded with secret details")
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn json(response: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not json ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn series(text: &str, metric: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with(metric)).map(str::to_owned).collect()
}

#[tokio::test]
async fn route_template_is_the_label_and_request_id_is_echoed() {
    let telemetry = Telemetry::new("t").unwrap();
    let app = app(&telemetry, &MiddlewareConfig::default());
    let response = send(&app, get_req("/x/42")).await;
    assert_eq!(response.status(), 200);
    let generated = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a uuid is generated: {generated}");

    let kept = send(&app, Request::get("/x/7").header("x-request-id", "abc-123").body(Body::empty()).unwrap()).await;
    assert_eq!(kept.headers()["x-request-id"], "abc-123");

    let text = telemetry.encode().unwrap();
    assert!(
        text.contains("http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/x/{id}\"} 2"),
        "{text}"
    );
    assert!(!text.contains("/x/42"), "raw paths must never be labels");
}

#[tokio::test]
async fn unknown_paths_share_one_series_and_unknown_methods_are_other() {
    let telemetry = Telemetry::new("t").unwrap();
    let app = app(&telemetry, &MiddlewareConfig::default());
    send(&app, get_req("/x/1")).await;
    let before = series(&telemetry.encode().unwrap(), "http_server_request_duration_seconds_count").len();

    send(&app, get_req("/first-unknown")).await;
    let with_unmatched = series(&telemetry.encode().unwrap(), "http_server_request_duration_seconds_count").len();
    assert_eq!(with_unmatched, before + 1);
    for _ in 0..100 {
        let path = format!("/{:016x}/{:08x}", fastrand::u64(..), fastrand::u32(..));
        let response = send(&app, get_req(&path)).await;
        assert_eq!(response.status(), 404);
        assert_eq!(json(response).await["error"]["code"], "not_found");
    }
    let text = telemetry.encode().unwrap();
    assert_eq!(series(&text, "http_server_request_duration_seconds_count").len(), with_unmatched, "no new series");
    assert!(text.contains("http_route=\"unmatched\"} 101"), "{text}");

    let response = send(&app, Request::builder().method("FOO").uri("/x/1").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), 405);
    assert_eq!(json(response).await["error"]["code"], "method_not_allowed");
    let text = telemetry.encode().unwrap();
    assert!(text.contains("http_request_method=\"_OTHER\""), "{text}");
    assert!(!text.contains("FOO"), "{text}");
}

#[tokio::test]
async fn panics_answer_500_json_are_counted_and_active_requests_return_to_zero() {
    let telemetry = Telemetry::new("t").unwrap();
    let app = app(&telemetry, &MiddlewareConfig::default());
    let response = send(&app, get_req("/boom")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = json(response).await;
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("secret"), "panic text must not leak: {body}");

    let text = telemetry.encode().unwrap();
    assert!(text.contains("\nhttp_server_panics_total 1"), "{text}");
    assert!(
        text.contains("http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"500\",http_route=\"/boom\"} 1"),
        "{text}"
    );
    assert!(text.contains("http_server_active_requests{http_request_method=\"GET\"} 0"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn cancelled_and_timed_out_requests_release_the_active_gauge() {
    let telemetry = Telemetry::new("t").unwrap();
    let config = MiddlewareConfig { request_timeout: Duration::from_secs(2), ..MiddlewareConfig::default() };
    let app = app(&telemetry, &config);

    // A client that goes away mid-request.
    let pending = tokio::spawn({
        let app = app.clone();
        async move { app.oneshot(get_req("/slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(telemetry.encode().unwrap().contains("http_server_active_requests{http_request_method=\"GET\"} 1"));
    pending.abort();
    let _ = pending.await;
    assert!(telemetry.encode().unwrap().contains("http_server_active_requests{http_request_method=\"GET\"} 0"));

    // A request outliving the timeout.
    let response = send(&app, get_req("/slow")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(response).await["error"]["code"], "unavailable");
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_json_4xx() {
    let telemetry = Telemetry::new("t").unwrap();
    let config = MiddlewareConfig { body_limit: 16, ..MiddlewareConfig::default() };
    let app = app(&telemetry, &config);
    let ok = send(&app, Request::post("/echo").body(Body::from("small")).unwrap()).await;
    assert_eq!(ok.status(), 200);
    let big = send(&app, Request::post("/echo").body(Body::from("x".repeat(17))).unwrap()).await;
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(big).await["error"]["code"], "payload_too_large");

    let bad = send(
        &app,
        Request::post("/json").header("content-type", "application/json").body(Body::from("{nope")).unwrap(),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body = json(bad).await;
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().to_lowercase().contains("json"), "{body}");

    let no_type = send(&app, Request::post("/json").body(Body::from("{}")).unwrap()).await;
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(json(no_type).await["error"]["code"], "unsupported_media_type");
}

#[tokio::test]
async fn metrics_endpoint_serves_the_prometheus_text_format() {
    let telemetry = Telemetry::new("t").unwrap();
    let app = axum::Router::from(metrics_api(telemetry.clone()));
    let metrics = send(&app, get_req("/metrics")).await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    assert_eq!(metrics.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drops_readiness_first_and_lets_in_flight_requests_finish() {
    use keel_http::testing::http_get;
    use keel_http::{DrainConfig, serve};
    use std::sync::Arc;
    use tokio::sync::Notify;

    let telemetry = Telemetry::new("t").unwrap();
    let shutdown = Shutdown::new();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = {
        let (entered, release) = (entered.clone(), release.clone());
        get(move || async move {
            entered.notify_one();
            release.notified().await;
            "done"
        })
    };
    let health = keel_health_status::Health::new(Default::default(), keel_health_status::Mode::Must);
    let app = keel_http::AppInfo::build("t");
    let router = Router::new()
        .route("/slow", slow)
        .merge(axum::Router::from(metrics_api(telemetry.clone())))
        .merge(axum::Router::from(keel_http::health_api(health, app, Default::default(), shutdown.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let drain = DrainConfig { drain_delay: Duration::from_millis(500), grace: Duration::from_secs(5) };
    let server = tokio::spawn(serve(listener, router, shutdown.clone(), drain));

    let in_flight = tokio::spawn({
        let addr = addr.clone();
        async move { http_get(&addr, "/slow").await }
    });
    entered.notified().await;
    shutdown.trigger();

    // During the drain delay new connections are still served, and told to go away.
    assert_eq!(http_get(&addr, "/readyz").await.0, 503);
    release.notify_one();
    assert_eq!(in_flight.await.unwrap(), (200, "done".to_owned()), "the in-flight request completes");
    server.await.unwrap().expect("clean shutdown");
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "the listener is closed after draining");
}
