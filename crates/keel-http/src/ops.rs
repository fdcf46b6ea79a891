//! `GET /metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_telemetry::{PROMETHEUS_CONTENT_TYPE, Telemetry};

use crate::ApiError;

/// `GET /metrics`: the Prometheus text exposition of `telemetry`.
pub fn metrics_router(telemetry: Telemetry) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(telemetry)
}

async fn metrics(State(telemetry): State<Telemetry>) -> Result<Response, ApiError> {
    let text = telemetry.encode().map_err(|err| ApiError::internal(format!("cannot encode metrics: {err}")))?;
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")], text).into_response())
}
