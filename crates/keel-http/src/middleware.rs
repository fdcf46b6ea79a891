//! The middleware stack every Keel router gets.

use std::any::Any;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::{ApiError, HttpMetrics};

/// The request id header: kept when the client sends one, generated otherwise,
/// echoed on the response and recorded in the request span.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct MiddlewareConfig {
    /// A request still running after this long is answered 503.
    pub request_timeout: Duration,
    /// Larger request bodies are answered 413.
    pub body_limit: usize,
}

impl Default for MiddlewareConfig {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(30), body_limit: 1024 * 1024 }
    }
}

/// Wraps every route of `router` (add routes and fallback first) with, from
/// the outside in: request id, trace span, golden-signal metrics, JSON error
/// envelope, timeout, body limit, and panic catching.
///
/// Panics are caught innermost, so they are answered 500 JSON and counted in
/// the request metrics like any other response.
pub fn apply(router: Router, config: &MiddlewareConfig, metrics: &HttpMetrics) -> Router {
    let panic_metrics = metrics.clone();
    // One composed layer: axum boxes each `Router::layer` around every route
    // and clones that box per request, so one layer costs one clone, not
    // eight.
    let stack = tower::ServiceBuilder::new()
        .layer(crate::span::RequestSpanLayer)
        .layer(metrics.layer())
        .and_then(|response: Response| {
            futures_util::FutureExt::map(crate::error::json_errors(response), Ok::<_, std::convert::Infallible>)
        })
        .map_response(IntoResponse::into_response)
        .layer(crate::timeout::LazyTimeoutLayer::new(config.request_timeout))
        .map_response(IntoResponse::into_response)
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(CatchPanicLayer::custom(move |panic: Box<dyn Any + Send>| {
            panic_metrics.count_panic();
            panic_response(&panic)
        }));
    // Handlers added without state become services once, here: axum would
    // otherwise apply the whole stack to them again on every request.
    router.layer(stack).with_state(())
}

fn panic_response(panic: &Box<dyn Any + Send>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    tracing::error!(panic = %detail, "handler panicked");
    // The panic text may contain internals: log it, do not return it.
    ApiError::internal("internal error").into_response()
}
