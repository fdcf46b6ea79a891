//! Operational endpoints: `/metrics`, `/livez`, `/readyz`.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_core::Shutdown;
use keel_telemetry::{PROMETHEUS_CONTENT_TYPE, Telemetry};
use serde::Deserialize;

use crate::ApiError;

#[derive(Clone)]
struct OpsState {
    telemetry: Telemetry,
    shutdown: Shutdown,
}

/// `GET /metrics` (Prometheus text), `GET /livez` and `GET /readyz`.
///
/// `/readyz` answers 503 as soon as `shutdown` is triggered, so load balancers
/// stop sending traffic while in-flight requests finish.
pub fn ops_router(telemetry: Telemetry, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(OpsState { telemetry, shutdown })
}

async fn metrics(State(state): State<OpsState>) -> Result<Response, ApiError> {
    let text = state.telemetry.encode().map_err(|err| ApiError::internal(format!("cannot encode metrics: {err}")))?;
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")], text).into_response())
}

#[derive(Deserialize)]
struct Verbose {
    verbose: Option<String>,
}

fn no_store(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

async fn livez(Query(q): Query<Verbose>) -> Response {
    let body = if q.verbose.is_some() { "[+]ping ok\nlivez check passed\n" } else { "ok" };
    no_store(StatusCode::OK, body.to_owned())
}

async fn readyz(State(state): State<OpsState>, Query(q): Query<Verbose>) -> Response {
    let draining = state.shutdown.is_triggered();
    let (status, line) = if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "[-]shutdown failed: draining")
    } else {
        (StatusCode::OK, "[+]shutdown ok")
    };
    let body = match (q.verbose.is_some(), draining) {
        (true, false) => format!("{line}\nreadyz check passed\n"),
        (true, true) => format!("{line}\nreadyz check failed\n"),
        (false, false) => "ok".to_owned(),
        (false, true) => "draining".to_owned(),
    };
    no_store(status, body)
}
