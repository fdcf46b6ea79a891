//! Request logging through a real `tracing` subscriber: records carry the
//! request span, every answer is logged at debug, server errors once at
//! error. Its own test binary: a subscriber is process-wide state.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use keel_http::{HttpMetrics, MiddlewareConfig, middleware};
use keel_telemetry::Telemetry;
use tower::ServiceExt as _;

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// A log buffer for one test's subscriber.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records written while a request is handled carry its span (method, path,
/// the request id echoed to the client); every answer is logged at `debug`
/// under `keel_http::request`, a server error once at `error`.
#[tokio::test(flavor = "current_thread")]
async fn records_carry_the_request_span_and_server_errors_are_logged() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(move || writer.clone()),
    );
    // The only test of this binary, so the only subscriber: a thread-local
    // one beside other tests' threads raced tracing's callsite interest
    // cache (the request span was sometimes never built).
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let telemetry = Telemetry::new("t").unwrap();
    let routes = Router::new()
        .route(
            "/logs/{id}",
            get(|| async {
                tracing::info!("inside the handler");
                "ok"
            }),
        )
        .route("/fails", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let app = middleware::apply(routes, &MiddlewareConfig::default(), &HttpMetrics::new(&telemetry));

    let mut request = get_req("/logs/7");
    request.headers_mut().insert("x-request-id", "req-42".parse().unwrap());
    let response = send(&app, request).await;
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(send(&app, get_req("/fails")).await.status(), StatusCode::SERVICE_UNAVAILABLE);

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let inside = records.iter().find(|r| r["message"] == "inside the handler").expect(&text);
    assert_eq!(inside["span"]["name"], "request", "{inside}");
    assert_eq!(inside["span"]["request_id"], "req-42", "{inside}");
    assert_eq!(inside["span"]["uri"], "/logs/7", "{inside}");
    assert_eq!(inside["span"]["method"], "GET", "{inside}");
    let answered: Vec<_> = records.iter().filter(|r| r["target"] == "keel_http::request").collect();
    assert_eq!(answered.len(), 2, "{text}");
    assert_eq!((answered[1]["level"].as_str(), answered[1]["status"].as_u64()), (Some("DEBUG"), Some(503)));
    assert_eq!(records.iter().filter(|r| r["level"] == "ERROR").count(), 1, "{text}");
}
