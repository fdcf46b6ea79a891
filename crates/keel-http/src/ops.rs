//! `GET /metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_telemetry::{PROMETHEUS_CONTENT_TYPE, Telemetry};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiError;
use crate::openapi::ApiRouter;

/// `GET /metrics`: the Prometheus text exposition of `telemetry`.
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn metrics_api(telemetry: Telemetry) -> ApiRouter {
    OpenApiRouter::new().routes(routes!(metrics)).with_state(telemetry)
}

/// Every metric in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text exposition 0.0.4", body = String, content_type = "text/plain")))]
async fn metrics(State(telemetry): State<Telemetry>) -> Result<Response, ApiError> {
    let text = telemetry.encode().map_err(|err| ApiError::internal(format!("cannot encode metrics: {err}")))?;
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")], text).into_response())
}
