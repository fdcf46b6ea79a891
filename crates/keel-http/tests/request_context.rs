//! With Keel's JSON logging installed, requests carry no `tracing` span:
//! the request (method, path, the id echoed to the client) is the thread's
//! current one while its handler runs, which is what the JSON formatter
//! writes into records (`keel_telemetry::request_log`). Its own test binary:
//! logging is process-wide state.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use keel_http::{HttpMetrics, MiddlewareConfig, middleware};
use keel_telemetry::request_log;
use keel_telemetry::{LogFormat, Telemetry};
use tower::ServiceExt as _;

/// What the handler saw: the current request, and whether a span was
/// entered.
fn seen() -> String {
    let request = request_log::with_current(|r| r.map(|r| format!("{} {} {}", r.method(), r.path(), r.id())));
    format!("{} span={}", request.unwrap_or_default(), !tracing::Span::current().is_none())
}

#[tokio::test(flavor = "current_thread")]
async fn handlers_run_with_the_request_current_and_no_span() {
    assert!(request_log::spans_needed(), "no Keel logging yet: requests get real spans");
    let _log = keel_telemetry::init_logging(LogFormat::Json, "info").unwrap();
    assert!(!request_log::spans_needed());

    let telemetry = Telemetry::new("t").unwrap();
    let routes = Router::new().route(
        "/items/{id}",
        get(|| async {
            // Across an await point too: each poll sets it again.
            tokio::task::yield_now().await;
            seen()
        }),
    );
    let app = middleware::apply(routes, &MiddlewareConfig::default(), &HttpMetrics::new(&telemetry));

    let sent = Request::get("/items/7?x=1").header("x-request-id", "req-1").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(sent).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-1");
    let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    assert_eq!(body, "GET /items/7 req-1 span=false");

    // A generated id is the one logged and the one answered.
    let response = app.clone().oneshot(Request::get("/items/8").body(Body::empty()).unwrap()).await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    assert_eq!(body, format!("GET /items/8 {id} span=false"));
    assert_eq!(seen(), " span=false", "nothing is current once the request is answered");

    // Trace export needs spans: from then on every request is one again.
    request_log::need_spans();
    assert!(request_log::spans_needed());
    let response = app.oneshot(Request::get("/items/9").body(Body::empty()).unwrap()).await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    assert_eq!(body, " span=true");
}
